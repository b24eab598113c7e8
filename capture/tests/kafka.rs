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
        assert_eq!(record.headers.get(header).map(String::as_str), Some(value), "{header}");
    }
    assert_eq!(record.headers["now"], record.value["now"].as_str().expect("now"));
    assert_eq!(record.headers["timestamp"], record.value["timestamp"].as_str().expect("ts"));
}
