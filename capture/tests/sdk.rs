//! The real PostHog Python SDK against the real capture binary and a real
//! Kafka-protocol broker.
//!
//! `tests/sdk/python_client.py` uses the SDK's public API (`capture`, `set`,
//! `set_once`, `alias`, `group_identify`, `capture_exception`) to send events
//! to capture, records every HTTP exchange the SDK made, and prints a JSON
//! summary. The tests then read the topics back and check that every event
//! arrived exactly once, on the right topic, carrying exactly what the SDK put
//! on the wire, with the routing fields, key, headers and times capture adds.
//!
//! The interpreter is `$CAPTURE_TEST_PYTHON`, else `python3`; it must be able
//! to `import posthog` (see `tests/sdk/requirements.txt`), and the tests fail
//! when it cannot.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::python::{posthog_version, python};
use common::{Capture, Record, Topics, capture_for, read_exactly};
use serde_json::{Value, json};

const TOKEN: &str = "phc_sdk_integration_token";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/python_client.py");
/// Events per request the SDK is told to send, so that a run takes several.
const FLUSH_AT: usize = 4;
/// The most the Python script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the SDK is configured for one run.
#[derive(Debug, Clone, Copy, Default)]
struct Mode {
    /// `gzip=True`: bodies are gzipped, with `Content-Encoding: gzip`.
    gzip: bool,
    /// `historical_migration=True`: the batch asks for the historical topic.
    historical: bool,
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_events_arrive_once_each_as_the_sdk_sent_them() {
    sdk_round_trip(Mode::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_gzipped_batches_arrive_the_same() {
    sdk_round_trip(Mode {
        gzip: true,
        ..Mode::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_historical_migration_goes_to_the_historical_topic() {
    sdk_round_trip(Mode {
        historical: true,
        ..Mode::default()
    })
    .await;
}

/// Runs the script against a fresh capture and checks everything it sent.
async fn sdk_round_trip(mode: Mode) {
    let python = python();
    let version = posthog_version(&python).await;
    let topics = Topics::create(1).await;
    let capture = capture_for(&topics, &[]);

    let started = Utc::now();
    let summary = run_script(&python, &capture, mode).await;
    let finished = Utc::now();

    assert_eq!(summary["posthog_version"], version.as_str(), "SDK version");
    let sent = summary["sent"].as_array().expect("`sent` is an array");
    assert!(sent.len() >= 10, "the script sent too little: {sent:#?}");
    let wire = check_exchanges(&summary, mode, sent.len());

    // Every event the SDK put on the wire, by the topic it must land on.
    let mut expected: BTreeMap<&str, usize> = topics.names().iter().map(|t| (*t, 0)).collect();
    for event in wire.values() {
        *expected
            .get_mut(expected_topic(&topics, &event.name, mode))
            .expect("a topic of this run") += 1;
    }
    assert!(
        expected[topics.exceptions.as_str()] >= 1,
        "no $exception was sent"
    );
    let mut arrived = Vec::new();
    for (topic, count) in &expected {
        for record in read_exactly(topic, *count) {
            arrived.push(((*topic).to_owned(), record));
        }
    }

    // Each record matches one wire event, and each wire event one record.
    let mut unmatched = wire.clone();
    let mut by_uuid = BTreeMap::new();
    for (topic, record) in &arrived {
        let uuid = record.value["uuid"].as_str().expect("uuid is a string");
        let event = unmatched.remove(uuid).unwrap_or_else(|| {
            panic!("record {uuid} on {topic} is not one sent, or arrived twice: {record:#?}")
        });
        assert_eq!(
            topic,
            expected_topic(&topics, &event.name, mode),
            "topic of {record:#?}"
        );
        check_record(record, &event, &version, mode, (started, finished));
        by_uuid.insert(uuid.to_owned(), record);
    }
    assert!(
        unmatched.is_empty(),
        "sent but never arrived: {unmatched:#?}"
    );

    // What the script asked for is what arrived.
    for entry in sent {
        let uuid = entry["uuid"].as_str().expect("the script passed a uuid");
        let record = by_uuid
            .get(uuid)
            .unwrap_or_else(|| panic!("{entry:#?} never arrived"));
        check_call(entry, record);
    }
}

/// One event as the SDK sent it, with the `sent_at` of its request.
#[derive(Debug, Clone)]
struct WireEvent {
    name: String,
    event: Value,
    sent_at: DateTime<Utc>,
}

/// Checks the HTTP exchanges the SDK made and returns the events they
/// carried, by uuid.
fn check_exchanges(summary: &Value, mode: Mode, sent: usize) -> BTreeMap<String, WireEvent> {
    let exchanges = summary["exchanges"]
        .as_array()
        .expect("`exchanges` is an array");
    assert!(
        exchanges.len() >= sent.div_ceil(FLUSH_AT),
        "{sent} events at most {FLUSH_AT} a request took only {} requests",
        exchanges.len()
    );
    let mut wire = BTreeMap::new();
    for exchange in exchanges {
        let what = format!("{} {}", exchange["method"], exchange["url"]);
        assert_eq!(exchange["method"], "POST", "{what}");
        assert!(
            exchange["url"]
                .as_str()
                .is_some_and(|url| url.ends_with("/batch/")),
            "{what}: the SDK should only post to /batch/"
        );
        assert_eq!(exchange["status"], 200, "{what}: {exchange:#}");
        let response: Value = serde_json::from_str(exchange["response"].as_str().unwrap_or(""))
            .unwrap_or_else(|err| panic!("{what}: response is not JSON ({err}): {exchange:#}"));
        assert_eq!(response, json!({"status": "Ok"}), "{what}");
        let headers = &exchange["request_headers"];
        let encoding = if mode.gzip {
            json!("gzip")
        } else {
            Value::Null
        };
        assert_eq!(headers["Content-Encoding"], encoding, "{what}");
        assert_eq!(headers["Content-Type"], "application/json", "{what}");
        let agent = headers["User-Agent"].as_str().unwrap_or("");
        assert!(
            agent.starts_with("posthog-python/"),
            "{what}: user agent {agent:?}"
        );

        let body = &exchange["body"];
        assert_eq!(body["api_key"], TOKEN, "{what}");
        assert_eq!(body["historical_migration"], mode.historical, "{what}");
        let sent_at = time(&body["sent_at"], "request sent_at");
        let batch = body["batch"].as_array().expect("`batch` is an array");
        assert!(
            !batch.is_empty() && batch.len() <= FLUSH_AT,
            "{what}: {} events",
            batch.len()
        );
        for event in batch {
            let uuid = event["uuid"]
                .as_str()
                .expect("the SDK sends a uuid")
                .to_owned();
            let name = event["event"].as_str().expect("event name").to_owned();
            let wire_event = WireEvent {
                name,
                event: event.clone(),
                sent_at,
            };
            assert!(
                wire.insert(uuid, wire_event).is_none(),
                "{what}: uuid sent twice"
            );
        }
    }
    assert_eq!(wire.len(), sent, "events on the wire vs events sent");
    wire
}

/// What capture made of one event the SDK sent.
fn check_record(
    record: &Record,
    sent: &WireEvent,
    version: &str,
    mode: Mode,
    (started, finished): (DateTime<Utc>, DateTime<Utc>),
) {
    let value = &record.value;
    let event = &sent.event;
    let context = format!("{record:#?}\nsent as {event:#}");

    // Capture forwards the event exactly as the SDK sent it.
    assert_eq!(
        record.data(),
        *event,
        "data differs from what was sent: {context}"
    );

    let mut fields: Vec<&str> = value
        .as_object()
        .expect("value is an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    let mut expected = vec![
        "data",
        "distinct_id",
        "event",
        "ip",
        "now",
        "sent_at",
        "timestamp",
        "token",
        "uuid",
    ];
    // A historical batch's events say so, in the value and a header.
    if mode.historical {
        expected.push("historical_migration");
        expected.sort_unstable();
        assert_eq!(value["historical_migration"], true, "{context}");
    }
    assert_eq!(fields, expected, "value fields: {context}");
    assert_eq!(
        record
            .headers
            .get("historical_migration")
            .map(String::as_str),
        mode.historical.then_some("true"),
        "{context}"
    );
    let distinct_id = event["distinct_id"]
        .as_str()
        .expect("the SDK sends a string distinct id");
    let uuid = event["uuid"].as_str().expect("uuid");
    assert_eq!(value["uuid"], uuid, "{context}");
    assert_eq!(value["distinct_id"], distinct_id, "{context}");
    assert_eq!(value["event"], sent.name.as_str(), "{context}");
    assert_eq!(value["token"], TOKEN, "{context}");
    assert_eq!(value["ip"], "127.0.0.1", "{context}");
    assert_eq!(
        record.key.as_deref(),
        Some(format!("{TOKEN}:{distinct_id}").as_str()),
        "key: {context}"
    );
    let millis = time(&value["timestamp"], "timestamp")
        .timestamp_millis()
        .to_string();
    for (header, expected) in [
        ("token", TOKEN),
        ("distinct_id", distinct_id),
        ("event", sent.name.as_str()),
        ("uuid", uuid),
        ("now", value["now"].as_str().expect("now")),
        ("timestamp", millis.as_str()),
    ] {
        assert_eq!(
            record.headers.get(header).map(String::as_str),
            Some(expected),
            "header {header}: {context}"
        );
    }

    // Times: capture's clock, the SDK's sent_at, and the skew-corrected
    // event time now + (timestamp - sent_at), all in capture's format.
    let now = capture_time(&value["now"], "now");
    let sent_at = capture_time(&value["sent_at"], "sent_at");
    let timestamp = capture_time(&value["timestamp"], "timestamp");
    let slack = TimeDelta::seconds(1);
    assert!(
        started - slack <= now && now <= finished + slack,
        "now {now} is not within the run ({started} to {finished}): {context}"
    );
    assert_eq!(sent_at, sent.sent_at, "sent_at of the request: {context}");
    let client_time = time(&event["timestamp"], "event timestamp");
    assert_eq!(
        timestamp,
        now + (client_time - sent_at),
        "skew-corrected timestamp: {context}"
    );
    let age = now - timestamp;
    let intended = if sent.name == "backdated" {
        TimeDelta::hours(1)
    } else {
        TimeDelta::zero()
    };
    assert!(
        (age - intended).abs() < TimeDelta::seconds(30),
        "timestamp {timestamp} is {age} before now {now}, expected about {intended}: {context}"
    );

    let properties = &event["properties"];
    assert_eq!(properties["$lib"], "posthog-python", "{context}");
    assert_eq!(properties["$lib_version"], version, "{context}");
}

/// What the script asked the SDK for, against what arrived.
fn check_call(entry: &Value, record: &Record) {
    let data = record.data();
    let properties = &data["properties"];
    let context = format!("{entry:#}\narrived as {record:#?}");
    assert_eq!(data["event"], entry["event"], "{context}");
    assert_eq!(record.value["event"], entry["event"], "{context}");
    assert_eq!(
        record.headers["uuid"],
        entry["uuid"].as_str().expect("uuid"),
        "{context}"
    );
    match entry["distinct_id"].as_str() {
        Some(distinct_id) => assert_eq!(record.value["distinct_id"], distinct_id, "{context}"),
        None => {
            // Personless: the SDK made the id up and said so.
            let made_up = record.value["distinct_id"].as_str().expect("distinct id");
            assert!(
                uuid::Uuid::parse_str(made_up).is_ok(),
                "made-up id {made_up:?}: {context}"
            );
            assert_eq!(properties["$process_person_profile"], false, "{context}");
        }
    }
    if let Some(expected) = entry["properties"].as_object() {
        for (name, value) in expected {
            assert_eq!(&properties[name], value, "property {name}: {context}");
        }
    }
    if let Some(groups) = entry.get("groups") {
        assert_eq!(&properties["$groups"], groups, "{context}");
    }
    if let Some(timestamp) = entry.get("timestamp") {
        assert_eq!(
            time(&data["timestamp"], "timestamp"),
            time(timestamp, "timestamp"),
            "{context}"
        );
    }
    match entry["call"].as_str().expect("call") {
        "capture" if entry["event"] == "$identify" => {
            let set = &entry["properties"]["$set"];
            assert!(set.is_object(), "{context}");
            assert_eq!(&properties["$set"], set, "{context}");
        }
        "capture" => {}
        "set" => assert_eq!(data["$set"], entry["set"], "{context}"),
        "set_once" => assert_eq!(data["$set_once"], entry["set_once"], "{context}"),
        "alias" => {
            assert_eq!(properties["alias"], entry["alias"], "{context}");
            assert_eq!(properties["distinct_id"], entry["distinct_id"], "{context}");
        }
        "group_identify" => {
            assert_eq!(properties["$group_type"], entry["group_type"], "{context}");
            assert_eq!(properties["$group_key"], entry["group_key"], "{context}");
            assert_eq!(properties["$group_set"], entry["group_set"], "{context}");
        }
        "capture_exception" => {
            let first = &properties["$exception_list"][0];
            assert_eq!(first["type"], entry["exception_type"], "{context}");
            assert_eq!(first["value"], entry["exception_message"], "{context}");
        }
        other => panic!("unknown call {other:?}"),
    }
}

/// The topic an event must land on.
fn expected_topic<'a>(topics: &'a Topics, name: &str, mode: Mode) -> &'a str {
    match name {
        "$exception" => &topics.exceptions,
        _ if mode.historical => &topics.historical,
        _ => &topics.events,
    }
}

/// A time as a client writes it (RFC 3339).
fn time(value: &Value, what: &str) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|err| panic!("{what} {text:?} is not RFC 3339: {err}"))
        .with_timezone(&Utc)
}

/// A time as capture writes it: microseconds and an explicit `+00:00`.
fn capture_time(value: &Value, what: &str) -> DateTime<Utc> {
    let parsed = time(value, what);
    let canonical = parsed.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
    assert_eq!(
        value.as_str(),
        Some(canonical.as_str()),
        "{what} is not in capture's format"
    );
    parsed
}

/// Runs the script and returns its summary; fails with everything known
/// when the script fails.
async fn run_script(python: &str, capture: &Capture, mode: Mode) -> Value {
    let mut command = tokio::process::Command::new(python);
    command
        .arg(SCRIPT)
        .args(["--host", &capture.url(""), "--token", TOKEN])
        .args(["--flush-at", &FLUSH_AT.to_string()])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .env_remove("POSTHOG_CAPTURE_MODE")
        .env_remove("POSTHOG_CAPTURE_COMPRESSION")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if mode.gzip {
        command.arg("--gzip");
    }
    if mode.historical {
        command.arg("--historical");
    }
    let output = match tokio::time::timeout(SCRIPT_TIMEOUT, command.output()).await {
        Ok(result) => result.unwrap_or_else(|err| panic!("run `{python} {SCRIPT}`: {err}")),
        Err(_) => panic!(
            "`{python} {SCRIPT}` did not finish within {SCRIPT_TIMEOUT:?}; capture's log:\n{}",
            capture.logs().join("\n")
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failure = |why: String| -> ! {
        panic!(
            "{why}\n--- script stdout:\n{stdout}\n--- script stderr:\n{stderr}\n\
             --- capture log:\n{}",
            capture.logs().join("\n")
        )
    };
    if !output.status.success() {
        failure(format!("the SDK script failed ({})", output.status));
    }
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| failure(format!("the script's summary is not JSON: {err}")));
    if summary["errors"] != json!([]) || summary["problems"] != json!([]) {
        failure("the script reported errors".to_owned());
    }
    summary
}
