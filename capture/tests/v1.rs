//! The v1 endpoint, `POST /i/v1/analytics/events`, driven in process
//! through the router: headers, encodings, the body's checks, per-event
//! results, and what reaches the sink. The real SDKs speaking v1 against a
//! broker are in `sdk.rs`.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use capture::clock::SystemClock;
use capture::route::Topics;
use capture::router::{AppState, Limits, app};
use capture::sink::{Delivery, MemorySink, Message, Sink, SinkError};
use http::Request;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use uuid::Uuid;

const TOKEN: &str = "phc_v1_token";

struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

fn router(sink: Arc<dyn Sink>, limits: Limits) -> axum::Router {
    app(AppState::new(
        sink,
        Arc::new(SystemClock),
        Topics::default(),
        limits,
    ))
}

/// Headers an SDK sends, `Content-Encoding` aside.
fn sdk_headers(request_id: Uuid, attempt: u32) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", format!("Bearer {TOKEN}")),
        ("content-type", "application/json".into()),
        ("user-agent", "posthog-python/7.91.1".into()),
        ("posthog-sdk-info", "posthog-python/7.91.1".into()),
        ("posthog-attempt", attempt.to_string()),
        ("posthog-request-id", request_id.to_string()),
        ("posthog-request-timestamp", chrono::Utc::now().to_rfc3339()),
    ]
}

async fn send(router: &axum::Router, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
    let mut request = Request::post("/i/v1/analytics/events");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request.body(Body::from(body)).expect("request");
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("router answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        retry_after,
        body,
    }
}

/// A state producing to `sink` under the runtime config `document`.
fn configured(document: &str, sink: Arc<MemorySink>) -> AppState {
    let config = capture::runtime_config::parse(document).expect("runtime config");
    let live = capture::live::Live::new(capture::live::Applied::new(config, &Topics::default()));
    AppState::new(
        sink,
        Arc::new(SystemClock),
        Topics::default(),
        Limits::default(),
    )
    .with_live(Arc::new(live))
}

fn event(name: &str, extra: Value) -> Value {
    let mut event = json!({
        "event": name,
        "uuid": Uuid::now_v7().to_string(),
        "distinct_id": "user-1",
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "options": {},
        // A `$lib` of its own, as some clients leave it: the header's wins
        // (a fuzzing find: appended twice, the event was refused).
        "properties": {"$current_url": "https://example.com", "$set": {"plan": "pro"}, "$lib": "stale"},
    });
    for (key, value) in extra.as_object().expect("object") {
        event[key] = value.clone();
    }
    event
}

fn batch(events: &[Value]) -> Value {
    json!({"created_at": chrono::Utc::now().to_rfc3339(), "batch": events})
}

fn result(reply: &Reply, event: &Value) -> Value {
    reply.body["results"][event["uuid"].as_str().expect("uuid")].clone()
}

fn compress(encoding: &str, body: &[u8]) -> Vec<u8> {
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).expect("gzip");
            e.finish().expect("gzip")
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).expect("zlib");
            e.finish().expect("zlib")
        }
        "raw-deflate" => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).expect("deflate");
            e.finish().expect("deflate")
        }
        "zstd" => zstd::encode_all(body, 3).expect("zstd"),
        _ => body.to_vec(),
    }
}

#[tokio::test]
async fn every_encoding_gives_a_result_per_event_and_v0_messages_with_lib_and_options() {
    for encoding in ["none", "gzip", "deflate", "raw-deflate", "zstd"] {
        let sink = Arc::new(MemorySink::default());
        let router = router(sink.clone(), Limits::default());
        let events = [
            event(
                "$pageview",
                json!({"session_id": "s-1", "window_id": "w-1"}),
            ),
            event(
                "signed_up",
                json!({"options": {"process_person_profile": false, "cookieless_mode": false}}),
            ),
        ];
        let mut headers = sdk_headers(Uuid::new_v4(), 1);
        if encoding != "none" {
            let name = if encoding == "raw-deflate" {
                "deflate"
            } else {
                encoding
            };
            headers.push(("content-encoding", name.into()));
        }
        let body = compress(encoding, batch(&events).to_string().as_bytes());
        let reply = send(&router, &headers, body).await;
        assert_eq!(reply.status, 200, "{encoding}: {}", reply.body);
        assert_eq!(reply.retry_after, None);
        let keys: Vec<&String> = reply.body["results"]
            .as_object()
            .expect("results")
            .keys()
            .collect();
        assert_eq!(keys.len(), 2, "{encoding}");
        for e in &events {
            assert_eq!(result(&reply, e), json!({"result": "ok"}), "{encoding}");
        }
        let produced = sink.take();
        assert_eq!(produced.len(), 2, "{encoding}");
        let value: Value = serde_json::from_str(&produced[0].payload).expect("value");
        assert_eq!(value["token"], TOKEN);
        assert_eq!(value["uuid"], events[0]["uuid"]);
        assert_eq!(produced[0].key.as_deref(), Some("phc_v1_token:user-1"));
        let data: Value =
            serde_json::from_str(value["data"].as_str().expect("data")).expect("data");
        assert_eq!(data["event"], "$pageview");
        assert_eq!(data["properties"]["$session_id"], "s-1");
        assert_eq!(data["properties"]["$window_id"], "w-1");
        assert_eq!(data["properties"]["$lib"], "posthog-python");
        assert_eq!(data["properties"]["$lib_version"], "7.91.1");
        assert_eq!(data["properties"]["$set"], json!({"plan": "pro"}));
        let second: Value = serde_json::from_str(&produced[1].payload).expect("value");
        let data: Value =
            serde_json::from_str(second["data"].as_str().expect("data")).expect("data");
        assert_eq!(data["properties"]["$process_person_profile"], false);
    }
}

#[tokio::test]
async fn bad_events_are_dropped_with_a_reason_and_the_rest_captured() {
    let sink = Arc::new(MemorySink::default());
    let big = "x".repeat(2_000);
    let events = [
        event("ok", json!({})),
        event("", json!({})),
        event("bad time", json!({"timestamp": "yesterday"})),
        event(
            "bad options",
            json!({"options": {"cookieless_mode": "perhaps"}}),
        ),
        event("too big", json!({"properties": {"big": big}})),
        event("ok too", json!({})),
    ];
    // Events over 1,500 bytes are too big for the broker.
    let router = router(
        sink.clone(),
        Limits {
            max_message_bytes: 1_500,
            ..Limits::default()
        },
    );
    let reply = send(
        &router,
        &sdk_headers(Uuid::new_v4(), 1),
        batch(&events).to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let results: Vec<Value> = events.iter().map(|e| result(&reply, e)).collect();
    assert_eq!(
        results,
        [
            json!({"result": "ok"}),
            json!({"result": "drop", "details": "missing_event_name"}),
            json!({"result": "drop", "details": "invalid_event_timestamp"}),
            json!({"result": "drop", "details": "invalid_options"}),
            json!({"result": "drop", "details": "event_too_big"}),
            json!({"result": "ok"}),
        ]
    );
    let names: Vec<String> = sink
        .take()
        .iter()
        .map(|m| {
            let value: Value = serde_json::from_str(&m.payload).expect("value");
            value["event"].as_str().expect("name").to_owned()
        })
        .collect();
    assert_eq!(names, ["ok", "ok too"]);
}

#[tokio::test]
async fn batch_level_failures_keep_their_status_and_say_why_in_v1_shape() {
    let sink = Arc::new(MemorySink::default());
    let router = router(sink.clone(), Limits::default());
    let good = || batch(&[event("e", json!({}))]).to_string().into_bytes();
    let without = |name: &str| {
        sdk_headers(Uuid::new_v4(), 1)
            .into_iter()
            .filter(|(n, _)| *n != name)
            .collect::<Vec<_>>()
    };
    let with = |name: &'static str, value: &str| {
        let mut headers = without(name);
        headers.push((name, value.to_owned()));
        headers
    };
    let twice = event("e", json!({}));
    // Headers, body, then the status, code and words of the answer.
    type Case<'a> = (Vec<(&'a str, String)>, Vec<u8>, u16, &'a str, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (without("authorization"), good(), 401, "missing_authorization", "Authorization"),
        (
            without("posthog-request-id"),
            good(),
            400,
            "missing_required_headers",
            "PostHog-Request-Id",
        ),
        (with("content-encoding", "br"), good(), 415, "unsupported_encoding", "allowed: gzip, deflate, zstd"),
        (with("content-type", "text/plain"), good(), 415, "unsupported_content_type", "application/json"),
        (with("authorization", "Bearer phx_personal"), good(), 401, "invalid_token", "personal API keys"),
        (with("content-encoding", "gzip"), good(), 400, "invalid_payload", "invalid gzip data"),
        (
            sdk_headers(Uuid::new_v4(), 1),
            batch(&[twice.clone(), twice]).to_string().into_bytes(),
            400,
            "invalid_event",
            "appears twice",
        ),
        (
            sdk_headers(Uuid::new_v4(), 1),
            json!({"created_at": "2026-12-03T10:00:00Z", "batch": [{"event": "e", "uuid": Uuid::now_v7(), "distinct_id": ["d"], "timestamp": "2026-12-03T10:00:00Z"}]}).to_string().into_bytes(),
            400,
            "invalid_payload",
            "at `batch[0].distinct_id`",
        ),
    ];
    for (headers, body, status, code, says) in cases {
        let reply = send(&router, &headers, body).await;
        assert_eq!(reply.status, status, "{code}: {}", reply.body);
        assert_eq!(reply.body["error"], code, "{}", reply.body);
        let description = reply.body["error_description"]
            .as_str()
            .expect("description");
        assert!(description.contains(says), "{code}: {description}");
        assert_eq!(reply.body["error_uri"], "https://posthog.com/docs/api");
    }
    assert!(sink.take().is_empty(), "nothing refused was produced");

    let small = self::router(
        sink.clone(),
        Limits {
            v1_body_bytes: 1_000,
            ..Limits::default()
        },
    );
    let events: Vec<Value> = (0..20).map(|_| event("e", json!({}))).collect();
    let reply = send(
        &small,
        &sdk_headers(Uuid::new_v4(), 1),
        batch(&events).to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(reply.body["error"], "payload_too_large");
}

/// A sink whose broker refuses one topic: what it would have taken, it
/// keeps; the rest it reports not acknowledged.
#[derive(Default)]
struct RefusingTopic {
    refused: Mutex<Option<String>>,
    kept: MemorySink,
}

#[async_trait]
impl Sink for RefusingTopic {
    fn name(&self) -> &'static str {
        "refusing"
    }

    async fn send(&self, messages: Arc<Vec<Message>>) -> Delivery {
        let refused = self.refused.lock().expect("lock").clone();
        let mut acked = Vec::with_capacity(messages.len());
        let mut kept = Vec::new();
        for message in messages.iter() {
            let ok = refused.as_deref() != Some(&*message.topic);
            acked.push(ok);
            if ok {
                kept.push(message.clone());
            }
        }
        let count = kept.len();
        self.kept.send(Arc::new(kept)).await;
        let error = (count < acked.len()).then_some(SinkError::Timeout);
        Delivery { acked, error }
    }
}

/// The point of v1: when Kafka takes part of a batch, the rest is answered
/// `retry` (with `Retry-After`) and the captured part `ok`; the SDK resends
/// only the retries, with the same request id and the next attempt, and
/// nothing is produced twice.
#[tokio::test]
async fn kafka_refusing_part_of_a_batch_gets_retry_for_that_part_only() {
    let sink = Arc::new(RefusingTopic::default());
    *sink.refused.lock().expect("lock") = Some("exceptions".into());
    let router = router(sink.clone(), Limits::default());
    let events = [
        event("$pageview", json!({})),
        event("$exception", json!({})),
        event("$pageview", json!({})),
    ];
    let request_id = Uuid::new_v4();
    let reply = send(
        &router,
        &sdk_headers(request_id, 1),
        batch(&events).to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.retry_after.as_deref(), Some("1"));
    assert_eq!(result(&reply, &events[0]), json!({"result": "ok"}));
    assert_eq!(
        result(&reply, &events[1]),
        json!({"result": "retry", "details": "not_persisted"})
    );
    assert_eq!(result(&reply, &events[2]), json!({"result": "ok"}));
    assert_eq!(sink.kept.take().len(), 2);

    // The topic is back; the SDK resends the one event told to retry.
    *sink.refused.lock().expect("lock") = None;
    let retry = [events[1].clone()];
    let reply = send(
        &router,
        &sdk_headers(request_id, 2),
        batch(&retry).to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.retry_after, None);
    assert_eq!(result(&reply, &events[1]), json!({"result": "ok"}));
    let produced = sink.kept.take();
    assert_eq!(produced.len(), 1);
    assert_eq!(&*produced[0].topic, "exceptions");
}

/// The runtime config's restrictions and plugins give their verdicts as
/// results: dropped by a restriction or a plugin (named), moved to the
/// overflow topic (`ok`, produced without a key and so without person
/// processing), or to the dead-letter topic (`ok`).
#[tokio::test]
async fn restrictions_and_plugins_answer_with_their_reasons() {
    let document = "version: 1
restrictions:
  - {action: drop, events: [blocked]}
  - {action: forceOverflow, distinctIds: [hot-user]}
  - {action: redirectToDlq, sessionIds: [s-poison]}
  - {action: skipPersonProcessing, events: [anonymous]}
plugins:
  - drop: {events: [$feature_flag_called]}
";
    let sink = Arc::new(MemorySink::default());
    let router = app(configured(document, sink.clone()));
    let events = [
        event("blocked", json!({})),
        event("$feature_flag_called", json!({})),
        event("click", json!({"distinct_id": "hot-user"})),
        event("kept", json!({})),
        event("poisoned", json!({"session_id": "s-poison"})),
        event("anonymous", json!({})),
    ];
    let reply = send(
        &router,
        &sdk_headers(Uuid::new_v4(), 1),
        batch(&events).to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let results: Vec<Value> = events.iter().map(|e| result(&reply, e)).collect();
    assert_eq!(
        results,
        [
            json!({"result": "drop", "details": "event_restriction_drop"}),
            json!({"result": "drop", "details": "dropped_by_plugin:drop"}),
            json!({"result": "ok"}),
            json!({"result": "ok"}),
            json!({"result": "ok"}),
            json!({"result": "ok"}),
        ]
    );
    let produced = sink.take();
    assert_eq!(produced.len(), 4);
    // Skipping person processing, as PostHog's capture does: its topic,
    // no key, the header, the text untouched.
    let personless = &produced[3];
    assert_eq!(&*personless.topic, "clickhouse_events");
    assert_eq!(personless.key, None);
    assert!(
        personless
            .headers
            .contains(&("force_disable_person_processing", "true".to_owned()))
    );
    assert!(!personless.payload.contains("process_person_profile"));
    // The session restriction matched the v1 `session_id`: dead letter,
    // keyed as before, with headers saying why.
    let dead = &produced[2];
    assert_eq!(&*dead.topic, "events_plugin_ingestion_dlq");
    assert_eq!(dead.key.as_deref(), Some("phc_v1_token:user-1"));
    let header = |name: &str| {
        dead.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("dlq_reason").as_deref(), Some("event_restriction"));
    assert_eq!(header("dlq_step").as_deref(), Some("capture"));
    let at = header("dlq_timestamp").expect("dlq_timestamp");
    assert!(
        chrono::DateTime::parse_from_rfc3339(&at).is_ok() && at.ends_with('Z'),
        "{at}"
    );
    assert_eq!(&*produced[0].topic, "events_plugin_ingestion_overflow");
    assert_eq!(produced[0].key, None);
    assert!(
        produced[0]
            .headers
            .iter()
            .any(|(n, v)| *n == "force_disable_person_processing" && v == "true"),
        "{:?}",
        produced[0].headers
    );
    assert_eq!(&*produced[1].topic, "clickhouse_events");
}

/// When capture drops a project's events it says so on the client-warnings
/// topic, as PostHog's ingestion expects: one `$$client_ingestion_warning`
/// per token and kind per interval, whatever the number of events.
#[tokio::test]
async fn dropped_events_leave_an_ingestion_warning_once_per_kind() {
    let document = "version: 1
restrictions:
  - {action: drop, events: [blocked]}
";
    let sink = Arc::new(MemorySink::default());
    let router = app(configured(document, sink.clone()).with_warnings(
        capture::warnings::Warnings::new(sink.clone(), std::time::Duration::from_secs(3600)),
    ));
    let events = [
        event("", json!({})),
        event("", json!({})),
        event("x", json!({"timestamp": "nope"})),
        event("blocked", json!({})),
        event("blocked", json!({})),
        event("fine", json!({})),
    ];
    for _ in 0..2 {
        let reply = send(
            &router,
            &sdk_headers(Uuid::new_v4(), 1),
            batch(&events).to_string().into_bytes(),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // A v0 request with an invalid event: refused whole, and warned about.
    let request = Request::post("/batch")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"api_key": TOKEN, "batch": [{"event": "e"}]}).to_string(),
        ))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("answer");
    assert_eq!(response.status(), 400);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut kinds: Vec<String> = sink
        .take()
        .iter()
        .filter(|m| &*m.topic == "client_warnings")
        .map(|m| {
            let value: Value = serde_json::from_str(&m.payload).expect("value");
            assert_eq!(value["distinct_id"], TOKEN);
            assert_eq!(m.key.as_deref(), Some(TOKEN));
            let data: Value =
                serde_json::from_str(value["data"].as_str().expect("data")).expect("data");
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
    assert_eq!(
        kinds,
        [
            "event_restricted",
            "invalid_event",
            "invalid_event_timestamp",
            "missing_event_name"
        ]
    );
}

/// What parsing a v1 body builds is asked of the memory budget before the
/// parse: a body of many tiny events is refused by the budget (413 naming
/// it), not parsed whole and only then found to have too many events.
#[tokio::test]
async fn many_tiny_events_are_weighed_by_the_budget_before_parsing() {
    let sink = Arc::new(MemorySink::default());
    let state = AppState::new(
        sink.clone(),
        Arc::new(SystemClock),
        Topics::default(),
        Limits::default(),
    )
    .with_budget(capture::budget::MemoryBudget::new(
        4 << 20,
        std::time::Duration::from_millis(100),
    ));
    let router = app(state);
    let tiny: Vec<Value> = (0..30_000)
        .map(|i| {
            json!({"event": "e", "uuid": Uuid::from_u128(i).to_string(), "distinct_id": "d",
                   "timestamp": "2026-12-03T10:00:00Z"})
        })
        .collect();
    let body = batch(&tiny).to_string().into_bytes();
    assert!(body.len() < 4 << 20, "the body alone fits the budget");
    let reply = send(&router, &sdk_headers(Uuid::new_v4(), 1), body).await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    let description = reply.body["error_description"].as_str().unwrap_or("");
    assert!(description.contains("memory budget"), "{description}");
    assert!(sink.take().is_empty());
}
