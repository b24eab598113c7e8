//! Capture against a real Kafka-protocol broker: what each endpoint and
//! encoding produces, where it goes, and the error paths.

mod common;

use common::{Topics, capture_for, read_exactly};
use serde_json::json;

const TOKEN: &str = "phc_integration_token";

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_event_lands_on_the_events_topic_with_key_and_headers() {
    let topics = Topics::create(1).await;
    let capture = capture_for(&topics, &[]);
    let event = json!({
        "event": "$pageview",
        "distinct_id": "user-1",
        "token": TOKEN,
        "uuid": "01890d5a-6c84-7f5a-9a8c-51b2c1a8e1f0",
        "properties": {"$current_url": "https://example.com"},
    });
    let response = client()
        .post(capture.url("/e/"))
        .header("X-Forwarded-For", "203.0.113.9")
        .json(&event)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), r#"{"status":"Ok"}"#);

    let records = read_exactly(&topics.events, 1);
    let record = &records[0];
    assert_eq!(record.key.as_deref(), Some("phc_integration_token:user-1"));
    assert_eq!(record.value["uuid"], "01890d5a-6c84-7f5a-9a8c-51b2c1a8e1f0");
    assert_eq!(record.value["distinct_id"], "user-1");
    assert_eq!(record.value["ip"], "203.0.113.9");
    assert_eq!(record.value["token"], TOKEN);
    assert_eq!(record.value["event"], "$pageview");
    assert_eq!(record.data(), event);
    for (header, value) in [
        ("token", TOKEN),
        ("distinct_id", "user-1"),
        ("event", "$pageview"),
        ("uuid", "01890d5a-6c84-7f5a-9a8c-51b2c1a8e1f0"),
    ] {
        assert_eq!(
            record.headers.get(header).map(String::as_str),
            Some(value),
            "{header}"
        );
    }
    assert_eq!(
        record.headers["now"],
        record.value["now"].as_str().expect("now")
    );
    // The header is the value's time in Unix milliseconds, as PostHog's
    // capture writes it.
    let timestamp =
        chrono::DateTime::parse_from_rfc3339(record.value["timestamp"].as_str().expect("ts"))
            .expect("RFC 3339");
    assert_eq!(
        record.headers["timestamp"],
        timestamp.timestamp_millis().to_string()
    );
}

/// Posts `body` to `path` with extra headers; returns status and body text.
async fn post(
    capture: &common::Capture,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let mut request = client().post(capture.url(path)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn form(fields: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in fields {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

fn event_for(distinct_id: &str) -> serde_json::Value {
    json!({"event": "enc", "distinct_id": distinct_id, "token": TOKEN, "properties": {"n": 1}})
}

/// Messages by distinct id.
fn by_distinct_id(
    records: &[common::Record],
) -> std::collections::BTreeMap<String, serde_json::Value> {
    records
        .iter()
        .map(|r| {
            (
                r.value["distinct_id"]
                    .as_str()
                    .expect("distinct_id")
                    .to_owned(),
                r.data(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_with_and_without_trailing_slash_produces() {
    let topics = Topics::create(1).await;
    let capture = capture_for(&topics, &[]);
    let json_type = [("Content-Type", "application/json")];
    let mut expected = Vec::new();
    for path in ["/e", "/capture", "/track", "/i/v0/e", "/engage", "/batch"] {
        for slash in ["", "/"] {
            let distinct_id = format!("{path}{slash}");
            let body = if path == "/batch" {
                json!({"api_key": TOKEN, "batch": [{"event": "b", "distinct_id": distinct_id}]})
            } else if path == "/engage" {
                json!({"$set": {"plan": "pro"}, "distinct_id": distinct_id, "token": TOKEN})
            } else {
                json!({"event": "e", "distinct_id": distinct_id, "token": TOKEN})
            };
            let (status, text) = post(&capture, &distinct_id, &json_type, body.to_string()).await;
            assert_eq!(status, 200, "{distinct_id}: {text}");
            expected.push(distinct_id);
        }
        // GET with ?data= works on every analytics endpoint too.
        let distinct_id = format!("GET {path}");
        let data = b64(event_for(&distinct_id).to_string().as_bytes());
        let response = client()
            .get(capture.url(path))
            .query(&[("data", data.as_str())])
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{distinct_id}");
        expected.push(distinct_id);
    }
    let records = read_exactly(&topics.events, expected.len());
    let produced = by_distinct_id(&records);
    for distinct_id in &expected {
        assert!(
            produced.contains_key(distinct_id),
            "nothing for {distinct_id}: {produced:#?}"
        );
    }
    let engage = &produced["/engage"];
    assert_eq!(engage["event"], "$identify");
    assert_eq!(engage["$set"]["plan"], "pro");
}

/// Distinct id (also the case's name), path, headers, body.
type EncodingCase<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Vec<u8>);

#[tokio::test(flavor = "multi_thread")]
async fn every_encoding_decodes_to_the_same_event() {
    let topics = Topics::create(1).await;
    let capture = capture_for(&topics, &[]);
    let text = |id: &str| event_for(id).to_string();
    let plain = [("Content-Type", "text/plain")];
    let form_type = [("Content-Type", "application/x-www-form-urlencoded")];
    let cases: Vec<EncodingCase<'_>> = vec![
        (
            "plain",
            "/e".into(),
            vec![("Content-Type", "application/json")],
            text("plain").into(),
        ),
        (
            "content-encoding-gzip",
            "/e".into(),
            vec![("Content-Encoding", "gzip")],
            gzip(text("content-encoding-gzip").as_bytes()),
        ),
        (
            "gzip-js",
            "/e/?compression=gzip-js&ver=1.78.5&_=1700000000000".into(),
            plain.to_vec(),
            gzip(text("gzip-js").as_bytes()),
        ),
        (
            "gzip-magic",
            "/e/".into(),
            plain.to_vec(),
            gzip(text("gzip-magic").as_bytes()),
        ),
        (
            "base64",
            "/e/".into(),
            plain.to_vec(),
            b64(text("base64").as_bytes()).into(),
        ),
        (
            "form-base64",
            "/e/".into(),
            form_type.to_vec(),
            form(&[("data", &b64(text("form-base64").as_bytes()))]).into(),
        ),
        (
            "form-json",
            "/e/".into(),
            form_type.to_vec(),
            form(&[("data", &text("form-json"))]).into(),
        ),
        (
            "form-lz64",
            "/e/".into(),
            form_type.to_vec(),
            form(&[
                ("data", &lz_str::compress_to_base64(&text("form-lz64"))),
                ("compression", "lz64"),
            ])
            .into(),
        ),
        (
            "query-lz64",
            "/e/?compression=lz64".into(),
            plain.to_vec(),
            lz_str::compress_to_base64(&text("query-lz64")).into(),
        ),
        (
            "beacon",
            "/e/?ver=1.78.5&beacon=0".into(),
            plain.to_vec(),
            text("beacon").into(),
        ),
    ];
    for (name, path, headers, body) in &cases {
        let (status, answer) = post(&capture, path, headers, body.clone()).await;
        assert_eq!(status, 200, "{name}: {answer}");
    }
    let records = read_exactly(&topics.events, cases.len());
    let produced = by_distinct_id(&records);
    for (name, ..) in &cases {
        assert_eq!(produced.get(*name), Some(&event_for(name)), "{name}");
    }
    // `_` is the client's send time in ms: it becomes `sent_at`.
    let gzip_js = records
        .iter()
        .find(|r| r.value["distinct_id"] == "gzip-js")
        .expect("gzip-js");
    assert_eq!(gzip_js.value["sent_at"], "2023-11-14T22:13:20.000000+00:00");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_routed_to_their_data_type_topics() {
    let topics = Topics::create(1).await;
    let capture = capture_for(&topics, &[]);
    let json_type = [("Content-Type", "application/json")];
    let batch = json!({"api_key": TOKEN, "batch": [
        {"event": "$pageview", "distinct_id": "a"},
        {"event": "$exception", "distinct_id": "b", "properties": {"$exception_message": "boom"}},
        {"event": "$$client_ingestion_warning", "distinct_id": "c"},
    ]});
    let (status, text) = post(&capture, "/batch/", &json_type, batch.to_string()).await;
    assert_eq!(status, 200, "{text}");
    let historical = json!({"api_key": TOKEN, "historical_migration": true, "batch": [
        {"event": "$pageview", "distinct_id": "h1", "timestamp": "2020-01-01T00:00:00Z"},
        {"event": "$pageview", "distinct_id": "h2", "timestamp": "2020-01-02T00:00:00Z"},
    ]});
    let (status, text) = post(&capture, "/batch", &json_type, historical.to_string()).await;
    assert_eq!(status, 200, "{text}");
    let recording = json!([
        {"event": "$snapshot", "distinct_id": "r", "token": TOKEN, "properties": {
            "$session_id": "session-1", "$snapshot_data": [{"type": 2}, {"type": 3}]}},
        {"event": "$snapshot", "distinct_id": "r", "token": TOKEN, "properties": {
            "$session_id": "session-1", "$window_id": "w", "$snapshot_data": {"type": 4}}},
    ]);
    let (status, text) = post(&capture, "/s/", &json_type, recording.to_string()).await;
    assert_eq!(status, 200, "{text}");

    let events = read_exactly(&topics.events, 1);
    assert_eq!(events[0].value["distinct_id"], "a");
    let exceptions = read_exactly(&topics.exceptions, 1);
    assert_eq!(exceptions[0].value["event"], "$exception");
    assert_eq!(
        exceptions[0].key.as_deref(),
        Some("phc_integration_token:b")
    );
    let warnings = read_exactly(&topics.client_warnings, 1);
    assert_eq!(warnings[0].value["event"], "$$client_ingestion_warning");
    let historical = read_exactly(&topics.historical, 2);
    assert_eq!(historical[0].value["distinct_id"], "h1");
    assert_eq!(historical[1].value["distinct_id"], "h2");
    // Historical events keep their own time (no sent_at to correct against).
    assert_eq!(
        historical[0].value["timestamp"],
        "2020-01-01T00:00:00.000000+00:00"
    );

    let recordings = read_exactly(&topics.recordings, 1);
    let record = &recordings[0];
    assert_eq!(record.key.as_deref(), Some("session-1"));
    assert_eq!(record.headers["session_id"], "session-1");
    assert_eq!(record.value["event"], "$snapshot_items");
    let data = record.data();
    assert_eq!(data["properties"]["$session_id"], "session-1");
    assert_eq!(data["properties"]["$window_id"], "session-1");
    assert_eq!(
        data["properties"]["$snapshot_items"],
        json!([{"type": 2}, {"type": 3}, {"type": 4}])
    );
    common::read_topic(&topics.overflow, 1, std::time::Duration::from_millis(300))
        .is_empty()
        .then_some(())
        .expect("nothing goes to overflow");
}

#[tokio::test(flavor = "multi_thread")]
async fn cookieless_events_are_keyed_by_token_and_ip() {
    let topics = Topics::create(1).await;
    let capture = capture_for(&topics, &[]);
    let event = json!({"event": "e", "distinct_id": "$posthog_cookieless", "token": TOKEN,
                       "properties": {"$cookieless_mode": true}});
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Forwarded-For", "198.51.100.7, 10.0.0.1"),
    ];
    let (status, text) = post(&capture, "/i/v0/e/", &headers, event.to_string()).await;
    assert_eq!(status, 200, "{text}");
    let records = read_exactly(&topics.events, 1);
    assert_eq!(
        records[0].key.as_deref(),
        Some("phc_integration_token:198.51.100.7")
    );
    assert_eq!(records[0].value["ip"], "198.51.100.7");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_with_the_reason_and_produce_nothing() {
    let topics = Topics::create(1).await;
    let capture = capture_for(
        &topics,
        &[
            "--max-event-body-bytes",
            "10kB",
            "--max-message-bytes",
            "4kB",
        ],
    );
    let json_type = [("Content-Type", "application/json")];
    let big = "x".repeat(20_000);
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("not json", "/e", b"{not json".to_vec(), 400, "invalid"),
        ("bad gzip", "/e", vec![0x1f, 0x8b, 0x08, 0, 1, 2, 3], 400, "gzip"),
        ("bad base64", "/e", b"!!!!".to_vec(), 400, "base64"),
        ("no name", "/e", br#"{"distinct_id":"d","token":"phc_x"}"#.to_vec(), 400, "event"),
        ("blank distinct id", "/e", br#"{"event":"e","distinct_id":"  ","token":"phc_x"}"#.to_vec(), 400, "distinct_id"),
        ("no token", "/e", br#"{"event":"e","distinct_id":"d"}"#.to_vec(), 401, "token"),
        ("personal key", "/e", br#"{"event":"e","distinct_id":"d","token":"phx_secret"}"#.to_vec(), 401, "personal"),
        (
            "two tokens",
            "/batch",
            br#"{"batch":[{"event":"e","distinct_id":"d","token":"phc_a"},{"event":"e","distinct_id":"d","token":"phc_b"}]}"#.to_vec(),
            401,
            "token",
        ),
        ("body too large", "/e", format!(r#"{{"event":"e","distinct_id":"d","token":"phc_x","p":"{big}"}}"#).into_bytes(), 413, "limit"),
        (
            "message too large",
            "/batch",
            format!(r#"{{"api_key":"phc_x","batch":[{{"event":"ok","distinct_id":"d"}},{{"event":"e","distinct_id":"d","p":"{}"}}]}}"#, "y".repeat(6000)).into_bytes(),
            413,
            "message size",
        ),
        (
            "bad session id",
            "/s",
            br#"{"event":"$snapshot","distinct_id":"d","token":"phc_x","properties":{"$session_id":"no/slashes","$snapshot_data":[]}}"#.to_vec(),
            400,
            "session",
        ),
        (
            "no session id",
            "/s",
            br#"{"event":"$snapshot","distinct_id":"d","token":"phc_x","properties":{"$snapshot_data":[]}}"#.to_vec(),
            400,
            "$session_id",
        ),
    ];
    for (name, path, body, want, mentions) in cases {
        let (status, text) = post(&capture, path, &json_type, body).await;
        assert_eq!(status, want, "{name}: {text}");
        let error: serde_json::Value = serde_json::from_str(&text).expect("error body is JSON");
        let detail = error["detail"].as_str().unwrap_or_default().to_lowercase();
        assert!(detail.contains(&mentions.to_lowercase()), "{name}: {text}");
        assert!(
            error["type"].is_string() && error["code"].is_string(),
            "{name}: {text}"
        );
    }
    for topic in topics.names() {
        if topic == topics.client_warnings {
            continue;
        }
        let stray = common::read_topic(topic, 1, std::time::Duration::from_millis(300));
        assert!(stray.is_empty(), "{topic} got {stray:#?}");
    }
    // What the warnings topic holds is capture's own ingestion warnings
    // about the invalid and too large events, once per kind.
    let warnings = common::read_topic(
        &topics.client_warnings,
        10,
        std::time::Duration::from_millis(1500),
    );
    let mut kinds: Vec<String> = warnings
        .iter()
        .map(|record| {
            assert_eq!(record.value["event"], "$$client_ingestion_warning");
            let data = record.data();
            assert_eq!(
                data["properties"]["$$client_ingestion_warning_source"],
                "capture"
            );
            data["properties"]["$$client_ingestion_warning_type"]
                .as_str()
                .expect("type")
                .to_owned()
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["event_too_big", "invalid_event"], "{warnings:#?}");
    // Tokens never reach the logs in clear.
    let logs = capture.logs().join("\n");
    assert!(
        !logs.contains("phx_secret"),
        "personal key in logs:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_cover_requests_events_sink_kafka_and_the_process() {
    let topics = Topics::create(1).await;
    let capture = capture_for(&topics, &["--kafka-statistics-interval", "200ms"]);
    let json_type = [("Content-Type", "application/json")];
    let batch = json!({"api_key": TOKEN, "batch": [
        {"event": "a", "distinct_id": "secret-person"}, {"event": "$exception", "distinct_id": "d"}]});
    let (status, text) = post(&capture, "/batch", &json_type, batch.to_string()).await;
    assert_eq!(status, 200, "{text}");
    let (status, _) = post(
        &capture,
        "/e",
        &json_type,
        r#"{"event":"e","distinct_id":"d"}"#,
    )
    .await;
    assert_eq!(status, 401);
    read_exactly(&topics.events, 1);
    // Let one statistics report arrive.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    let text = client()
        .get(capture.url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    for expected in [
        r#"capture_http_requests_total{endpoint="batch",status="200"} 1"#,
        r#"capture_http_requests_total{endpoint="event",status="401"} 1"#,
        r#"capture_events_received_total{endpoint="batch"} 2"#,
        r#"capture_events_produced_total{data_type="events"} 1"#,
        r#"capture_events_produced_total{data_type="exceptions"} 1"#,
        r#"capture_events_dropped_total{cause="invalid_token"} 1"#,
        r#"capture_request_body_bytes_count{endpoint="batch"} 1"#,
        r#"capture_sink_ack_duration_seconds_count{sink="kafka"} 1"#,
        "capture_kafka_brokers_up 1",
        "capture_kafka_tx_messages_total",
        "capture_kafka_queue_messages",
        "capture_runtime_alive_tasks",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "capture_ready 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(
        !text.contains(TOKEN) && !text.contains("secret-person"),
        "unbounded label values:\n{text}"
    );
}
