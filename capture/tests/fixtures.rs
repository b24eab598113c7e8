//! Replays real SDK traffic recorded against PostHog's original capture
//! (`../shared/fixtures/posthog/requests_dump.jsonl`) through the router at
//! each request's recorded time, and checks every produced message against
//! what the original produced, after only the normalisations the fixture's
//! README allows.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use capture::clock::FixedClock;
use capture::route::Topics;
use capture::router::{AppState, Limits, app};
use capture::sink::{MemorySink, Message};
use chrono::{DateTime, Utc};
use http::Request;
use serde::Deserialize;
use serde_json::{Map, Value};
use tower::ServiceExt as _;

fn fixture_path() -> PathBuf {
    // `shared/` sits beside the clone, both here and in CI.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/posthog/requests_dump.jsonl")
}

#[derive(Debug, Deserialize)]
struct Recorded {
    path: String,
    method: String,
    content_encoding: String,
    content_type: String,
    ip: String,
    now: String,
    body: String,
    #[serde(default)]
    historical_migration: bool,
    output: Vec<Map<String, Value>>,
}

fn recorded_requests() -> Vec<(usize, Recorded)> {
    let path = fixture_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(n, line)| {
            let request = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("fixture line {}: {err}", n + 1));
            (n + 1, request)
        })
        .collect()
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|err| panic!("time {text:?}: {err}"))
        .with_timezone(&Utc)
}

/// The fields of an expected output message that must match, normalised
/// as the fixture README says: `sent_at` compared as a time with empty
/// meaning absent, `data` compared parsed and without the fields
/// posthog-node adds, `site_url` dropped.
fn normalise(message: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (field, value) in message {
        match field.as_str() {
            "site_url" => {}
            "sent_at" => {
                if let Some(text) = value.as_str().filter(|s| !s.is_empty()) {
                    out.insert(field.clone(), Value::String(time(text).to_rfc3339()));
                }
            }
            "data" => {
                let text = value.as_str().expect("data is a JSON string");
                let mut data: Map<String, Value> =
                    serde_json::from_str(text).expect("data parses as an object");
                for added in ["type", "library", "library_version"] {
                    data.remove(added);
                }
                out.insert(field.clone(), Value::Object(data));
            }
            _ => {
                out.insert(field.clone(), value.clone());
            }
        }
    }
    out
}

#[tokio::test]
async fn every_recorded_request_produces_what_posthog_capture_produced() {
    let requests = recorded_requests();
    assert!(
        requests.len() >= 16,
        "fixture has {} requests",
        requests.len()
    );
    let sink = Arc::new(MemorySink::default());
    let clock = Arc::new(FixedClock::new(Utc::now()));
    let topics = Topics::default();
    let state = AppState::new(
        sink.clone(),
        clock.clone(),
        topics.clone(),
        Limits::default(),
    );
    let router = app(state);

    let mut compared = 0;
    for (line, recorded) in requests {
        clock.set(time(&recorded.now));
        let mut request = Request::builder()
            .method(recorded.method.as_str())
            .uri(recorded.path.as_str())
            .header("X-Forwarded-For", recorded.ip.as_str());
        if !recorded.content_type.is_empty() {
            request = request.header("Content-Type", recorded.content_type.as_str());
        }
        if !recorded.content_encoding.is_empty() {
            request = request.header("Content-Encoding", recorded.content_encoding.as_str());
        }
        let body = STANDARD
            .decode(&recorded.body)
            .expect("fixture body is base64");
        let response = router
            .clone()
            .oneshot(request.body(Body::from(body)).expect("request"))
            .await
            .expect("router answers");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        assert_eq!(
            status,
            200,
            "line {line}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(&body[..], br#"{"status":"Ok"}"#, "line {line}");

        let produced = sink.take();
        assert_eq!(
            produced.len(),
            recorded.output.len(),
            "line {line}: message count"
        );
        for (index, (message, expected)) in produced.iter().zip(&recorded.output).enumerate() {
            check_message(line, index, message, expected, &recorded, &topics);
            compared += 1;
        }
    }
    assert!(compared >= 80, "compared only {compared} messages");
}

fn check_message(
    line: usize,
    index: usize,
    message: &Message,
    expected: &Map<String, Value>,
    recorded: &Recorded,
    topics: &Topics,
) {
    let at = format!("line {line}, message {index}");
    let value: Map<String, Value> =
        serde_json::from_str(&message.payload).expect("payload is JSON");
    let expected = normalise(expected);
    let actual = normalise(&value);
    for (field, want) in &expected {
        assert_eq!(actual.get(field), Some(want), "{at}: field {field}");
    }
    // Our value carries only the contract's extra fields beyond the original.
    let extra: Vec<&String> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    let mut allowed_extra: Vec<&str> = if expected.contains_key("sent_at") {
        vec!["event", "timestamp"]
    } else {
        vec!["event", "timestamp", "sent_at"]
    };
    // Today's PostHog capture flags historical events in the value; the
    // 2023 one recorded here did not.
    if recorded.historical_migration {
        allowed_extra.push("historical_migration");
    }
    for field in extra {
        assert!(
            allowed_extra.contains(&field.as_str()),
            "{at}: unexpected field {field}"
        );
    }
    if !expected.contains_key("sent_at") {
        assert!(
            !actual.contains_key("sent_at"),
            "{at}: sent_at should be absent"
        );
    }

    let data = &actual["data"];
    let event = data["event"].as_str().expect("event name");
    assert_eq!(value["event"], event, "{at}: event field");
    let topic = match (event, recorded.historical_migration) {
        ("$exception", _) => &topics.exceptions,
        ("$$client_ingestion_warning", _) => &topics.client_warnings,
        (_, true) => &topics.historical,
        _ => &topics.events,
    };
    assert_eq!(&message.topic, topic, "{at}: topic");
    let token = expected["token"].as_str().expect("token");
    let distinct_id = expected["distinct_id"].as_str().expect("distinct_id");
    assert_eq!(
        message.key.as_deref(),
        Some(format!("{token}:{distinct_id}").as_str()),
        "{at}: key"
    );
    let header = |name: &str| {
        message
            .headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(header("token"), Some(token), "{at}");
    assert_eq!(header("distinct_id"), Some(distinct_id), "{at}");
    assert_eq!(header("event"), Some(event), "{at}");
    assert_eq!(header("uuid"), expected["uuid"].as_str(), "{at}");
    assert_eq!(header("now"), expected["now"].as_str(), "{at}");
    let millis = value["timestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis().to_string());
    assert_eq!(header("timestamp"), millis.as_deref(), "{at}");
    let historical = recorded.historical_migration.then_some("true");
    assert_eq!(header("historical_migration"), historical, "{at}");
    assert_eq!(
        value.get("historical_migration").and_then(|v| v.as_bool()),
        recorded.historical_migration.then_some(true),
        "{at}"
    );
}
