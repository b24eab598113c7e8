//! Capture when Kafka misbehaves, using librdkafka's mock cluster to take
//! the broker away, and graceful shutdown against the real broker.

mod common;

use std::time::{Duration, Instant};

use common::{Capture, Topics, capture_for, read_exactly};
use rdkafka::mocking::MockCluster;
use serde_json::json;

const TOKEN: &str = "phc_fault_token";

fn event(distinct_id: &str) -> String {
    json!({"event": "e", "distinct_id": distinct_id, "token": TOKEN}).to_string()
}

async fn send(url: String, body: String) -> (u16, Option<String>, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry_after, response.text().await.expect("body"))
}

/// Polls readiness until it answers `want` (or fails after 20 s).
async fn wait_for_readiness(capture: &Capture, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while capture.readiness().await.0 != want {
        assert!(Instant::now() < deadline, "readiness never became {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mock_capture(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    extra: &[&str],
) -> Capture {
    let topic = common::unique("mock-events");
    cluster.create_topic(&topic, 1, 1).expect("mock topic");
    let mut args = vec![
        "--kafka-brokers".to_owned(),
        cluster.bootstrap_servers(),
        "--events-topic".to_owned(),
        topic,
        "--kafka-health-interval".to_owned(),
        "300ms".to_owned(),
        "--kafka-metadata-timeout".to_owned(),
        "1s".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Capture::start(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_loss_turns_into_503_and_not_ready_and_recovers() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let capture = mock_capture(&cluster, &["--kafka-message-timeout", "2s"]);
    let (status, _, text) = send(capture.url("/e"), event("before")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(capture.readiness().await.0, 200);

    cluster.broker_down(1).expect("broker down");
    let uuid = "01890d5a-6c84-7f5a-9a8c-000000000503";
    let lost = json!({"event": "e", "distinct_id": "during", "token": TOKEN, "uuid": uuid});
    let (status, retry_after, text) = send(capture.url("/e"), lost.to_string()).await;
    assert_eq!(status, 503, "{text}");
    assert!(retry_after.is_some(), "503 carries Retry-After");
    let error: serde_json::Value = serde_json::from_str(&text).expect("JSON error");
    assert_eq!(error["type"], "server_error", "{text}");
    wait_for_readiness(&capture, 503).await;
    // The failure is logged as JSON with the event's uuid and the request id,
    // and the token only masked.
    let line = capture.wait_for_log("event not acknowledged");
    let entry: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(entry["uuid"], uuid, "{line}");
    assert_eq!(entry["level"], "WARN", "{line}");
    assert!(
        entry["span"]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{line}"
    );
    assert!(
        !capture.logs().join("\n").contains(TOKEN),
        "token in clear in the logs"
    );

    cluster.broker_up(1).expect("broker up");
    wait_for_readiness(&capture, 200).await;
    // The idempotent producer may need a moment after reconnecting (it
    // re-registers once its timed-out messages are settled); a client
    // retrying on 503, as SDKs do, gets through.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, text) = send(capture.url("/e"), event("after")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{text}");
        assert!(
            Instant::now() < deadline,
            "still failing after the broker came back"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_200_before_the_broker_acknowledges() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let capture = mock_capture(&cluster, &["--kafka-message-timeout", "60s"]);
    cluster.broker_down(1).expect("broker down");
    let request = tokio::spawn(send(
        capture.url("/batch"),
        json!({"api_key": TOKEN, "batch": [
        {"event": "a", "distinct_id": "held"}, {"event": "b", "distinct_id": "held"}]})
        .to_string(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !request.is_finished(),
        "capture answered while the broker was down"
    );
    cluster.broker_up(1).expect("broker up");
    let (status, _, text) = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("answered once the broker is back")
        .expect("request task");
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_requests_and_loses_nothing() {
    let topics = Topics::create(1).await;
    // A long linger keeps requests waiting for their acks when SIGTERM lands.
    let mut capture = capture_for(&topics, &["--kafka-linger", "2s"]);
    let url = capture.url("/batch");
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let batch: Vec<_> = (0..5)
                .map(|j| json!({"event": "e", "distinct_id": format!("user-{i}-{j}")}))
                .collect();
            tokio::spawn(send(
                url.clone(),
                json!({"api_key": TOKEN, "batch": batch}).to_string(),
            ))
        })
        .collect();
    // Every request has been decoded and handed to the producer...
    let metrics_url = capture.url("/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    while received_events(&metrics_url).await < 100.0 {
        assert!(Instant::now() < deadline, "requests never reached capture");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and none has been answered: they are in flight.
    assert!(
        requests.iter().all(|r| !r.is_finished()),
        "a request finished before SIGTERM"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = capture.terminate();
        (status, capture.logs())
    });
    let mut accepted = 0;
    for request in requests {
        let (status, _, text) = request.await.expect("request task");
        assert_eq!(status, 200, "in-flight request: {text}");
        accepted += 5;
    }
    let (exit, logs) = status.await.expect("terminate");
    assert!(
        exit.success(),
        "exit status {exit:?}; logs:\n{}",
        logs.join("\n")
    );
    assert!(
        logs.iter().any(|l| l.contains("shutdown requested")),
        "{logs:#?}"
    );
    let records = read_exactly(&topics.events, accepted);
    assert_eq!(records.len(), 100);
}

/// The sum of `capture_events_received_total` over its labels.
async fn received_events(metrics_url: &str) -> f64 {
    let text = reqwest::get(metrics_url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|line| line.starts_with("capture_events_received_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An idempotent producer that lost its sequence with the broker hits a
/// fatal error, after which librdkafka refuses every produce. Capture
/// notices, builds a new producer in the same process, and takes events
/// again; nothing answered 200 is missing from the topic.
#[tokio::test(flavor = "multi_thread")]
async fn a_fatal_producer_error_is_recovered_from_without_a_restart() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let cluster = MockCluster::new(1).expect("mock cluster");
    let capture = mock_capture(&cluster, &["--kafka-message-timeout", "3s"]);
    let pid = capture.pid();
    let (status, _, text) = send(capture.url("/e"), event("before")).await;
    assert_eq!(status, 200, "{text}");

    // The head-of-line produce request fails with a sequence error: fatal
    // for an idempotent producer.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let (status, _, text) = send(capture.url("/e"), event("fatal")).await;
    assert_eq!(status, 503, "{text}");
    capture.wait_for_log("kafka producer unusable after a fatal error");
    capture.wait_for_log("new kafka producer in use");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, text) = send(capture.url("/e"), event("after")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{text}");
        assert!(Instant::now() < deadline, "no 200 after the fatal error");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_readiness(&capture, 200).await;
    assert_eq!(capture.pid(), pid, "the same process");
    let metrics = reqwest::get(capture.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics
            .lines()
            .any(|l| l == "capture_kafka_producer_fatal_errors_total 1"),
        "{metrics}"
    );
}
