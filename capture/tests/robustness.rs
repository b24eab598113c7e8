//! Property test over the whole request pipeline: whatever arrives, on any
//! endpoint and in any encoding, capture answers with a client error or
//! success, never panics and never blames itself (5xx).

use std::sync::Arc;

use axum::body::Body;
use capture::clock::SystemClock;
use capture::route::Topics;
use capture::router::{AppState, Limits, app};
use capture::sink::MemorySink;
use http::Request;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt as _;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("$pageview"),
            Just("$exception"),
            Just("phc_tok"),
            Just("phx_personal"),
            Just("$session_id"),
            Just("2023-09-15T09:15:02.325Z"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("event".to_owned()),
            Just("distinct_id".to_owned()),
            Just("token".to_owned()),
            Just("api_key".to_owned()),
            Just("properties".to_owned()),
            Just("batch".to_owned()),
            Just("timestamp".to_owned()),
            Just("offset".to_owned()),
            Just("sent_at".to_owned()),
            Just("uuid".to_owned()),
            Just("$snapshot_data".to_owned()),
            Just("$session_id".to_owned()),
            Just("historical_migration".to_owned()),
            "[a-z$_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Events valid enough to be accepted, with arbitrary extras, so the
/// success path is explored as much as the refusals.
fn plausible_payload() -> impl Strategy<Value = Value> {
    let event = (
        prop_oneof![
            Just("$pageview".to_owned()),
            Just("$exception".to_owned()),
            Just("$snapshot".to_owned()),
            "[a-z]{1,8}"
        ],
        prop_oneof![
            "[a-zA-Z0-9-]{1,20}".prop_map(Value::String),
            any::<i64>().prop_map(|n| json!(n))
        ],
        json_value(),
        prop::option::of("[0-9a-z-]{1,20}"),
        prop::option::of(any::<i64>()),
    )
        .prop_map(|(name, distinct_id, extra, session, offset)| {
            let mut properties = json!({"extra": extra, "$snapshot_data": [{"type": 2}]});
            if let Some(session) = session {
                properties["$session_id"] = json!(session);
            }
            let mut event = json!({"event": name, "distinct_id": distinct_id, "token": "phc_tok",
                                   "properties": properties});
            if let Some(offset) = offset {
                event["offset"] = json!(offset);
            }
            event
        })
        .boxed();
    prop_oneof![
        event.clone(),
        prop::collection::vec(event.clone(), 1..4).prop_map(Value::Array),
        (prop::collection::vec(event, 1..4), any::<bool>(), json_value()).prop_map(
            |(batch, historical, sent_at)| json!({"batch": batch, "historical_migration": historical,
                                                  "sent_at": sent_at})
        ),
    ]
}

#[derive(Debug, Clone)]
enum Encoding {
    Plain,
    Gzip,
    Base64,
    Form,
    Lz64,
    Raw(Vec<u8>),
}

fn encode(value: &Value, encoding: &Encoding) -> (Vec<u8>, &'static str, Option<&'static str>) {
    use base64::Engine as _;
    use std::io::Write as _;
    let text = value.to_string();
    match encoding {
        Encoding::Plain => (text.into_bytes(), "application/json", None),
        Encoding::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(text.as_bytes()).expect("gzip");
            (gz.finish().expect("gzip"), "text/plain", Some("gzip-js"))
        }
        Encoding::Base64 => (
            base64::engine::general_purpose::STANDARD
                .encode(text)
                .into_bytes(),
            "text/plain",
            None,
        ),
        Encoding::Form => {
            let data = base64::engine::general_purpose::STANDARD.encode(text);
            let body = form_urlencoded::Serializer::new(String::new())
                .append_pair("data", &data)
                .finish();
            (body.into_bytes(), "application/x-www-form-urlencoded", None)
        }
        Encoding::Lz64 => (
            lz_str::compress_to_base64(&text).into_bytes(),
            "text/plain",
            Some("lz64"),
        ),
        Encoding::Raw(bytes) => (bytes.clone(), "application/json", None),
    }
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![
        Just(Encoding::Plain),
        Just(Encoding::Gzip),
        Just(Encoding::Base64),
        Just(Encoding::Form),
        Just(Encoding::Lz64),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(Encoding::Raw),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_request_gets_a_client_answer(
        value in prop_oneof![json_value(), plausible_payload()],
        encoding in encoding(),
        path in prop::sample::select(vec!["/e", "/batch/", "/engage", "/s/", "/i/v0/e/"]),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let sink = Arc::new(MemorySink::default());
        let limits = Limits { max_message_bytes: 4096, ..Limits::default() };
        let router = app(AppState::new(sink.clone(), Arc::new(SystemClock), Topics::default(), limits));
        let (body, content_type, compression) = encode(&value, &encoding);
        let uri = match compression {
            Some(hint) => format!("{path}?compression={hint}"),
            None => path.to_owned(),
        };
        let request = Request::post(uri)
            .header("Content-Type", content_type)
            .body(Body::from(body))
            .expect("request");
        let response = runtime.block_on(router.oneshot(request)).expect("router answers");
        let status = response.status().as_u16();
        prop_assert!(matches!(status, 200 | 400 | 401 | 413), "status {} for {}", status, value);
        let produced = sink.take();
        if status == 200 {
            prop_assert!(!produced.is_empty() || value.as_array().is_some_and(Vec::is_empty)
                || value.get("batch").is_some(), "200 with nothing produced for {}", value);
        } else {
            prop_assert!(produced.is_empty(), "refused request produced {:?}", produced);
        }
    }
}

/// A browser that cuts a string in the middle of an emoji sends half of its
/// surrogate pair. Every strict JSON decoder downstream refuses such a
/// string, so capture writes U+FFFD in its place (as PostHog's capture
/// does), in the fields it reads and in the event text it forwards, and
/// leaves whole pairs alone.
#[tokio::test]
async fn lone_surrogates_reach_kafka_as_the_replacement_character() {
    let sink = Arc::new(MemorySink::default());
    let router = app(AppState::new(
        sink.clone(),
        Arc::new(SystemClock),
        Topics::default(),
        Limits::default(),
    ));
    let body = r#"{"api_key":"phc_t","batch":[{"event":"cut \ud83d","distinct_id":"u\udc00",
        "properties":{"title":"Hello \ud83d\ude00 and \ud83d","$cut\ud83d":1}}]}"#;
    let request = Request::post("/batch/")
        .header("Content-Type", "application/json")
        .body(Body::from(body))
        .expect("request");
    let response = router.oneshot(request).await.expect("router answers");
    assert_eq!(response.status(), 200);
    let produced = sink.take();
    assert_eq!(produced.len(), 1);
    let value: Value = serde_json::from_str(&produced[0].payload).expect("the value is JSON");
    assert_eq!(value["distinct_id"], "u\u{fffd}");
    let data: Value = serde_json::from_str(value["data"].as_str().expect("data is a string"))
        .expect("a strict parser reads the forwarded event");
    assert_eq!(data["event"], "cut \u{fffd}");
    assert_eq!(data["properties"]["title"], "Hello \u{1f600} and \u{fffd}");
    assert_eq!(data["properties"]["$cut\u{fffd}"], 1);
    let header = |name: &str| {
        produced[0]
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("distinct_id").as_deref(), Some("u\u{fffd}"));
    assert_eq!(produced[0].key.as_deref(), Some("phc_t:u\u{fffd}"));
}
