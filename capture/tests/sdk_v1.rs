//! The real PostHog Python SDK in its v1 capture mode (`capture_mode="v1"`)
//! against the real capture binary and a real Kafka-protocol broker: every
//! compression the SDK offers, and the partial retry the protocol exists
//! for, with one topic missing until the SDK's retries find it.
//!
//! `tests/sdk/python_v1_client.py` sends a mix of `$pageview` and
//! `$exception` events (their own topic), records every HTTP exchange and
//! prints a summary; these tests check the exchanges and read the topics
//! back: every event exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use common::python::{posthog_version, python};
use common::{Capture, Topics, capture_for, create_topics, read_exactly, unique};
use serde_json::{Value, json};

const TOKEN: &str = "phc_sdk_v1_token";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/python_v1_client.py");
/// Events per run: two batches of six, four of them `$exception`s.
const COUNT: usize = 12;

#[tokio::test(flavor = "multi_thread")]
async fn python_v1_uncompressed_events_arrive_once_each() {
    round_trip("none").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_v1_gzip_events_arrive_once_each() {
    round_trip("gzip").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_v1_deflate_events_arrive_once_each() {
    round_trip("deflate").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_v1_zstd_events_arrive_once_each() {
    round_trip("zstd").await;
}

/// One exchange of the SDK with capture, as the script recorded it.
struct Exchange<'a> {
    raw: &'a Value,
    attempt: u32,
    request_id: &'a str,
    results: BTreeMap<String, Value>,
    sent: Vec<String>,
}

fn exchanges(summary: &Value) -> Vec<Exchange<'_>> {
    summary["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .map(|raw| {
            let what = format!("{raw:#}");
            assert!(
                raw["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("/i/v1/analytics/events")),
                "the SDK posts to the v1 endpoint: {what}"
            );
            assert_eq!(raw["status"], 200, "{what}");
            let response: Value =
                serde_json::from_str(raw["response"].as_str().unwrap_or("")).expect("JSON answer");
            let results = response["results"]
                .as_object()
                .unwrap_or_else(|| panic!("no results: {what}"))
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let sent = raw["body"]["batch"]
                .as_array()
                .expect("batch")
                .iter()
                .map(|e| e["uuid"].as_str().expect("uuid").to_owned())
                .collect();
            let headers = &raw["request_headers"];
            Exchange {
                raw,
                attempt: headers["PostHog-Attempt"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("PostHog-Attempt"),
                request_id: headers["PostHog-Request-Id"].as_str().expect("request id"),
                results,
                sent,
            }
        })
        .collect()
}

/// The uuids the script sent, by event name.
fn sent_by_name(summary: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_name: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in summary["sent"].as_array().expect("sent") {
        assert_eq!(entry["uuid"], entry["returned_uuid"], "{entry}");
        by_name
            .entry(entry["event"].as_str().expect("name").to_owned())
            .or_default()
            .insert(entry["uuid"].as_str().expect("uuid").to_owned());
    }
    by_name
}

/// Reads `topic` and checks it holds exactly `expected`, each once, as
/// capture makes a v1 event: the token from the header, `$lib` from
/// `PostHog-Sdk-Info`, the data without a token.
fn check_topic(topic: &str, expected: &BTreeSet<String>, version: &str) {
    let records = read_exactly(topic, expected.len());
    let arrived: BTreeSet<String> = records
        .iter()
        .map(|r| r.value["uuid"].as_str().expect("uuid").to_owned())
        .collect();
    assert_eq!(&arrived, expected, "{topic}");
    for record in &records {
        let context = format!("{record:#?}");
        assert_eq!(record.value["token"], TOKEN, "{context}");
        let data = record.data();
        assert_eq!(data["uuid"], record.value["uuid"], "{context}");
        assert_eq!(data["properties"]["$lib"], "posthog-python", "{context}");
        assert_eq!(data["properties"]["$lib_version"], version, "{context}");
        assert!(data.get("token").is_none(), "{context}");
        assert_eq!(
            record.headers.get("uuid").map(String::as_str),
            record.value["uuid"].as_str(),
            "{context}"
        );
    }
}

async fn round_trip(compression: &str) {
    let python = python();
    let version = posthog_version(&python).await;
    let topics = Topics::create(1).await;
    let capture = capture_for(&topics, &[]);
    let summary = run_script(&python, &capture, compression, 0, Duration::from_secs(60)).await;
    assert_eq!(summary["errors"], json!([]), "the SDK reported errors");
    let exchanges = exchanges(&summary);
    assert_eq!(exchanges.len(), COUNT.div_ceil(6), "one request per batch");
    for exchange in &exchanges {
        let headers = &exchange.raw["request_headers"];
        let encoding = match compression {
            "none" => Value::Null,
            other => json!(other),
        };
        assert_eq!(headers["Content-Encoding"], encoding);
        assert_eq!(
            headers["PostHog-Sdk-Info"],
            format!("posthog-python/{version}")
        );
        assert_eq!(exchange.attempt, 1);
        assert_eq!(exchange.raw["retry_after"], Value::Null);
        assert_eq!(
            exchange.results.keys().cloned().collect::<BTreeSet<_>>(),
            exchange.sent.iter().cloned().collect::<BTreeSet<_>>(),
            "a result for every event"
        );
        for (uuid, result) in &exchange.results {
            assert_eq!(result, &json!({"result": "ok"}), "{uuid}");
        }
    }
    let sent = sent_by_name(&summary);
    check_topic(&topics.events, &sent["$pageview"], &version);
    check_topic(&topics.exceptions, &sent["$exception"], &version);
}

/// The partial retry: the exceptions topic does not exist at first, so
/// capture answers the `$exception` events `retry` (`not_persisted`) and
/// the pageviews `ok` in the same 200. The SDK resends only the
/// exceptions, with the same request id and the next attempt, until the
/// topic exists; every event lands once, none twice.
#[tokio::test(flavor = "multi_thread")]
async fn python_v1_resends_only_the_events_kafka_did_not_take() {
    let python = python();
    let version = posthog_version(&python).await;
    let mut topics = Topics::create(1).await;
    topics.exceptions = unique("late-exceptions");
    // A message waits for its topic at most a second: then it is `retry`.
    let capture = capture_for(
        &topics,
        &[
            "--kafka-message-timeout",
            "1s",
            "--kafka-health-interval",
            "300ms",
        ],
    );
    let late = topics.exceptions.clone();
    let creator = tokio::spawn(async move {
        // After the SDK's first attempts were answered.
        tokio::time::sleep(Duration::from_secs(4)).await;
        create_topics(&[&late], 1).await;
    });
    let summary = run_script(&python, &capture, "gzip", 10, Duration::from_secs(150)).await;
    creator.await.expect("topic created");
    assert_eq!(summary["errors"], json!([]), "the SDK reported errors");
    let sent = sent_by_name(&summary);
    let exceptions = &sent["$exception"];
    let exchanges = exchanges(&summary);

    // The first attempt of each batch: pageviews ok, exceptions retry.
    let firsts: Vec<&Exchange<'_>> = exchanges.iter().filter(|e| e.attempt == 1).collect();
    assert_eq!(firsts.len(), COUNT.div_ceil(6));
    let first = firsts[0];
    assert_eq!(first.raw["retry_after"], "1", "{:#}", first.raw);
    for (uuid, result) in &first.results {
        let expected = if exceptions.contains(uuid) {
            json!({"result": "retry", "details": "not_persisted"})
        } else {
            json!({"result": "ok"})
        };
        assert_eq!(result, &expected, "{uuid}");
    }
    // Its retries carry only what was told to retry, under the same id.
    let retries: Vec<&Exchange<'_>> = exchanges
        .iter()
        .filter(|e| e.request_id == first.request_id && e.attempt > 1)
        .collect();
    assert!(!retries.is_empty(), "the SDK never retried");
    for retry in &retries {
        assert!(
            retry.sent.iter().all(|uuid| exceptions.contains(uuid)),
            "a retry resent an event already captured: {:#}",
            retry.raw
        );
    }
    let last = retries.last().expect("a retry");
    assert!(
        last.results.values().all(|r| r == &json!({"result": "ok"})),
        "{:#}",
        last.raw
    );
    check_topic(&topics.events, &sent["$pageview"], &version);
    check_topic(&topics.exceptions, exceptions, &version);
}

/// posthog-node with `POSTHOG_CAPTURE_MODE=v1`: the same endpoint, its own
/// `PostHog-Sdk-Info`, every event once.
#[tokio::test(flavor = "multi_thread")]
async fn node_v1_events_arrive_once_each() {
    const NODE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/node_v1_client.js");
    let modules = std::env::var("CAPTURE_TEST_NODE_MODULES")
        .expect("set CAPTURE_TEST_NODE_MODULES (run `. .ci/setup`) to posthog-node's node_modules");
    let topics = Topics::create(1).await;
    let capture = capture_for(&topics, &[]);
    let count = 12;
    let output = tokio::process::Command::new("node")
        .arg(NODE_SCRIPT)
        .args([&capture.url(""), TOKEN, &count.to_string()])
        .env("NODE_PATH", &modules)
        .env("POSTHOG_CAPTURE_MODE", "v1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the node script ran past a minute")
        .expect("run node");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "node script failed: {stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("summary is not JSON ({err}); stderr: {stderr}"));
    assert_eq!(summary["errors"], json!([]), "the SDK reported errors");
    let exchanges = summary["exchanges"].as_array().expect("exchanges");
    assert!(!exchanges.is_empty());
    let mut answered = BTreeSet::new();
    let mut version = None;
    for exchange in exchanges {
        assert!(
            exchange["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("/i/v1/analytics/events")),
            "{exchange:#}"
        );
        assert_eq!(exchange["status"], 200, "{exchange:#}");
        let info = exchange["request_headers"]["PostHog-Sdk-Info"]
            .as_str()
            .expect("PostHog-Sdk-Info");
        let (lib, lib_version) = info.rsplit_once('/').expect("lib/version");
        assert_eq!(lib, "posthog-node");
        version = Some(lib_version.to_owned());
        let response: Value =
            serde_json::from_str(exchange["response"].as_str().unwrap_or("")).expect("JSON");
        for (uuid, result) in response["results"].as_object().expect("results") {
            assert_eq!(result, &json!({"result": "ok"}), "{uuid}");
            answered.insert(uuid.clone());
        }
    }
    let sent: BTreeSet<String> = summary["sent"]
        .as_array()
        .expect("sent")
        .iter()
        .map(|e| e["uuid"].as_str().expect("uuid").to_owned())
        .collect();
    assert_eq!(answered, sent, "a result for every event");
    let records = read_exactly(&topics.events, count);
    let arrived: BTreeSet<String> = records
        .iter()
        .map(|r| r.value["uuid"].as_str().expect("uuid").to_owned())
        .collect();
    assert_eq!(arrived, sent);
    for record in &records {
        let data = record.data();
        assert_eq!(data["properties"]["$lib"], "posthog-node", "{record:#?}");
        assert_eq!(
            data["properties"]["$lib_version"].as_str(),
            version.as_deref(),
            "{record:#?}"
        );
    }
}

async fn run_script(
    python: &str,
    capture: &Capture,
    compression: &str,
    max_retries: u32,
    timeout: Duration,
) -> Value {
    let output = tokio::process::Command::new(python)
        .arg(SCRIPT)
        .args(["--host", &capture.url(""), "--token", TOKEN])
        .args(["--compression", compression, "--count", &COUNT.to_string()])
        .args(["--max-retries", &max_retries.to_string()])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("POSTHOG_CAPTURE_MODE")
        .env_remove("POSTHOG_CAPTURE_COMPRESSION")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, output)
        .await
        .unwrap_or_else(|_| panic!("the v1 script ran past {timeout:?}"))
        .expect("run the v1 script");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "v1 script failed: {stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("summary is not JSON ({err}); stderr: {stderr}"))
}
