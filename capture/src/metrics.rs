//! Metric names (the telemetry contract listed in `docs/telemetry.md`) and
//! the Prometheus recorder behind `/metrics`.
//!
//! Label values are always bounded: endpoint families, data types, status
//! codes and error codes. Tokens and distinct ids never become labels.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests by `endpoint` and `status`.
pub const HTTP_REQUESTS: &str = "capture_http_requests_total";
/// Request handling time by `endpoint`.
pub const HTTP_REQUEST_SECONDS: &str = "capture_http_request_duration_seconds";
/// Raw body size by `endpoint`.
pub const BODY_BYTES: &str = "capture_request_body_bytes";
/// Events received in accepted-for-processing requests, by `endpoint`.
pub const EVENTS_RECEIVED: &str = "capture_events_received_total";
/// Events acknowledged by the sink, by `data_type`.
pub const EVENTS_PRODUCED: &str = "capture_events_produced_total";
/// Events not produced, by `cause` (an error code).
pub const EVENTS_DROPPED: &str = "capture_events_dropped_total";
/// Time from enqueue to the last acknowledgement of a request, by `sink`.
pub const SINK_ACK_SECONDS: &str = "capture_sink_ack_duration_seconds";
/// Sink failures by `sink` and `error`.
pub const SINK_ERRORS: &str = "capture_sink_errors_total";
/// Messages waiting in the Kafka producer.
pub const KAFKA_QUEUE_MESSAGES: &str = "capture_kafka_queue_messages";
/// Bytes waiting in the Kafka producer.
pub const KAFKA_QUEUE_BYTES: &str = "capture_kafka_queue_bytes";
/// Brokers in state UP.
pub const KAFKA_BROKERS_UP: &str = "capture_kafka_brokers_up";
/// Messages the producer has transmitted.
pub const KAFKA_TX_MESSAGES: &str = "capture_kafka_tx_messages_total";
/// Message bytes the producer has transmitted.
pub const KAFKA_TX_BYTES: &str = "capture_kafka_tx_bytes_total";
/// Errors reported by the Kafka client.
pub const KAFKA_CLIENT_ERRORS: &str = "capture_kafka_client_errors_total";
/// Fatal producer errors (and producers whose state the broker kept
/// refusing for 10 s); each replaces the producer with a new one.
pub const KAFKA_PRODUCER_FATAL: &str = "capture_kafka_producer_fatal_errors_total";
/// Deliveries refused for their topic, by `error` (`unknown_topic`,
/// `not_authorized`).
pub const KAFKA_TOPIC_ERRORS: &str = "capture_kafka_topic_errors_total";
/// Topics Kafka currently refuses (readiness fails while above 0).
pub const KAFKA_TOPICS_FAILING: &str = "capture_kafka_topics_failing";
/// Tasks alive in the async runtime.
pub const RUNTIME_ALIVE_TASKS: &str = "capture_runtime_alive_tasks";
/// Quota checks by `event_type` and `source` (`redis`, or `local` for
/// tokens known to be limited).
pub const QUOTA_CHECKS: &str = "capture_quota_checks_total";
/// Events dropped for quota (or billing limits), by `event_type`.
pub const EVENTS_QUOTA_LIMITED: &str = "capture_events_quota_limited_total";
/// Events over a rate limit, by `event_type` and `action`.
pub const EVENTS_RATE_LIMITED: &str = "capture_events_rate_limited_total";
/// Events sent to the overflow topic, by `cause` (`rate`, `hot_key`, `forced`).
pub const EVENTS_OVERFLOWED: &str = "capture_events_overflowed_total";
/// Events dropped as duplicates.
pub const EVENTS_DUPLICATE: &str = "capture_events_duplicate_total";
/// Events of requests refused because another request held one of them
/// (its dedup marker pending while that request waited for Kafka).
pub const EVENTS_IN_FLIGHT: &str = "capture_events_in_flight_elsewhere_total";
/// Events whose policy reservations (marker, quota, rate) were given back
/// because the sink did not acknowledge them.
pub const POLICY_RELEASED_EVENTS: &str = "capture_policy_released_events_total";
/// Requests settled (commit delivered, give back the rest) by `result`
/// (`ok`, `error`), counted when Redis answered the call carrying them.
pub const POLICY_SETTLES: &str = "capture_policy_settles_total";
/// Open client connections.
pub const HTTP_CONNECTIONS: &str = "capture_http_connections";
/// Times the listener stopped accepting because `--max-connections` were
/// open.
pub const HTTP_CONNECTIONS_AT_CAP: &str = "capture_http_connections_at_cap_total";
/// Connections closed because they sent nothing within
/// `--header-read-timeout` of opening.
pub const HTTP_CONNECTIONS_SILENT: &str = "capture_http_connections_silent_total";
/// HTTP/2 connections closed with GOAWAY `ENHANCE_YOUR_CALM` for resetting
/// too many streams (rapid reset) or causing too many stream errors.
pub const HTTP2_RESET_FLOODS: &str = "capture_http2_reset_floods_total";
/// Lone UTF-16 surrogate escapes in request bodies replaced by `\ufffd`.
pub const LONE_SURROGATES_REPLACED: &str = "capture_lone_surrogates_replaced_total";
/// Ingestion warnings capture wrote, by kind.
pub const INGESTION_WARNINGS: &str = "capture_ingestion_warnings_total";
/// Ingestion warnings the sink did not take.
pub const INGESTION_WARNINGS_FAILED: &str = "capture_ingestion_warnings_failed_total";
/// Requests refused because `--max-requests-in-flight` were being handled.
pub const HTTP_OVERLOADED: &str = "capture_http_overloaded_total";
/// The request memory budget, bytes.
pub const MEMORY_BUDGET_BYTES: &str = "capture_memory_budget_bytes";
/// Bytes of the request memory budget held by requests now.
pub const MEMORY_BUDGET_HELD: &str = "capture_memory_budget_held_bytes";
/// Requests that waited for room in the memory budget.
pub const MEMORY_BUDGET_WAITS: &str = "capture_memory_budget_waits_total";
/// Requests refused by the memory budget, by `reason` (`busy`: 503 after
/// the wait; `too_large`: 413, more than the whole budget).
pub const MEMORY_BUDGET_REFUSED: &str = "capture_memory_budget_refused_total";
/// Pipelines of policy commands written to Redis: one round trip each,
/// shared by the checks and commits in it.
pub const REDIS_PIPELINES: &str = "capture_redis_pipelines_total";
/// Time of the policy round trip to Redis.
pub const REDIS_SECONDS: &str = "capture_redis_duration_seconds";
/// Failed policy round trips by `kind` (`error`, `timeout`).
pub const REDIS_ERRORS: &str = "capture_redis_errors_total";
/// 1 while the last policy round trip succeeded.
pub const REDIS_UP: &str = "capture_redis_up";
/// Requests decided without Redis, by `decision` (`open`, `closed`).
pub const POLICY_FALLBACK: &str = "capture_policy_fallback_total";
/// 1 while the server is ready for traffic.
pub const READY: &str = "capture_ready";
/// Events the runtime config's restrictions and plugins dropped or moved,
/// by `by` (`restriction` or the plugin's name) and `verdict` (`drop`,
/// `overflow`, `redirect`).
pub const EVENTS_FILTERED: &str = "capture_events_filtered_total";
/// Runtime config reloads by `result` (`applied`, `invalid`, `unreadable`).
pub const RUNTIME_CONFIG_RELOADS: &str = "capture_runtime_config_reloads_total";
/// `1` for the runtime config `hash` in force, `0` for the one it replaced.
pub const RUNTIME_CONFIG_INFO: &str = "capture_runtime_config_info";
/// TLS certificate reloads by `result` (`applied`, `refused`).
pub const TLS_RELOADS: &str = "capture_tls_reloads_total";
/// TLS handshakes that failed or timed out.
pub const TLS_HANDSHAKE_FAILURES: &str = "capture_tls_handshake_failures_total";
/// Bytes the spool's segments hold.
pub const SPOOL_BYTES: &str = "capture_spool_bytes";
/// Most bytes the spool may hold (`--spool-max-bytes`).
pub const SPOOL_MAX_BYTES: &str = "capture_spool_max_bytes";
/// Records in the spool not replayed yet.
pub const SPOOL_RECORDS: &str = "capture_spool_records";
/// Age of the oldest record in the spool (0 when empty).
pub const SPOOL_OLDEST_SECONDS: &str = "capture_spool_oldest_record_age_seconds";
/// Records made durable in the spool (Kafka could not take them).
pub const SPOOL_APPENDED: &str = "capture_spool_appended_total";
/// Records replayed from the spool and acknowledged by Kafka.
pub const SPOOL_REPLAYED: &str = "capture_spool_replayed_total";
/// Appends refused because the spool held `--spool-max-bytes` (answered 503).
pub const SPOOL_FULL: &str = "capture_spool_full_total";
/// Damaged records found in the spool and set aside in `corrupt/`.
pub const SPOOL_CORRUPT_RECORDS: &str = "capture_spool_corrupt_records_total";
/// Segments whose torn tail (a write a crash cut short) was truncated.
pub const SPOOL_TORN_TAILS: &str = "capture_spool_torn_tails_total";
/// Records Kafka refused for good on replay (too large), set aside.
pub const SPOOL_REJECTED_RECORDS: &str = "capture_spool_rejected_records_total";
/// Spooled records Kafka acknowledged after all (the request had stopped
/// waiting at `--spool-ack-deadline`): each could be produced twice.
pub const SPOOL_LATE_ACKS: &str = "capture_spool_late_acks_total";
/// Late-acknowledged records the replay skipped (not produced twice).
pub const SPOOL_DUPLICATES_AVOIDED: &str = "capture_spool_duplicates_avoided_total";

/// Installs the global recorder. Call once per process; later calls return
/// a handle to a fresh, uninstalled recorder so tests can build many apps.
pub fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(BODY_BYTES.into()),
                &[
                    256.0,
                    1024.0,
                    4096.0,
                    16384.0,
                    65536.0,
                    262_144.0,
                    1_048_576.0,
                    4_194_304.0,
                    16_777_216.0,
                ],
            )
        });
    let builder = match builder {
        Ok(builder) => builder,
        Err(err) => {
            tracing::warn!(error = %err, "histogram buckets rejected; using summaries");
            PrometheusBuilder::new()
        }
    };
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_ok() {
        describe();
        metrics_process::Collector::default().describe();
    }
    handle
}

/// Refreshes the process and runtime gauges; called on each scrape.
pub fn collect_process() {
    metrics_process::Collector::default().collect();
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        metrics::gauge!(RUNTIME_ALIVE_TASKS).set(handle.metrics().num_alive_tasks() as f64);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by endpoint family and status code"
    );
    describe_histogram!(HTTP_REQUEST_SECONDS, "Request handling time in seconds");
    describe_histogram!(BODY_BYTES, "Raw request body size in bytes");
    describe_counter!(EVENTS_RECEIVED, "Events in decoded requests");
    describe_counter!(
        EVENTS_PRODUCED,
        "Events acknowledged by the sink, by data type"
    );
    describe_counter!(EVENTS_DROPPED, "Events not produced, by cause");
    describe_counter!(
        KAFKA_PRODUCER_FATAL,
        "Fatal Kafka producer errors, each answered by a new producer"
    );
    describe_counter!(
        KAFKA_TOPIC_ERRORS,
        "Deliveries Kafka refused for their topic, by error"
    );
    describe_gauge!(
        KAFKA_TOPICS_FAILING,
        "Topics Kafka currently refuses; readiness fails while above 0"
    );
    describe_counter!(
        EVENTS_IN_FLIGHT,
        "Events refused because another request held them while waiting for Kafka"
    );
    describe_counter!(
        POLICY_RELEASED_EVENTS,
        "Events whose policy reservations were given back because the sink did not acknowledge them"
    );
    describe_counter!(
        POLICY_SETTLES,
        "Requests whose policy reservation was settled in Redis, by result"
    );
    describe_gauge!(HTTP_CONNECTIONS, "Open client connections");
    describe_counter!(
        HTTP_CONNECTIONS_AT_CAP,
        "Times the listener waited because --max-connections were open"
    );
    describe_counter!(
        HTTP_CONNECTIONS_SILENT,
        "Connections closed for sending nothing within --header-read-timeout"
    );
    describe_counter!(
        HTTP2_RESET_FLOODS,
        "HTTP/2 connections closed with GOAWAY ENHANCE_YOUR_CALM for resetting too many streams"
    );
    describe_counter!(
        INGESTION_WARNINGS,
        "Ingestion warnings capture wrote to the client-warnings topic, by kind"
    );
    describe_counter!(
        INGESTION_WARNINGS_FAILED,
        "Ingestion warnings the sink did not acknowledge"
    );
    describe_counter!(
        LONE_SURROGATES_REPLACED,
        "Lone UTF-16 surrogate escapes in request bodies replaced by \\ufffd (U+FFFD)"
    );
    describe_counter!(
        HTTP_OVERLOADED,
        "Requests refused 503 because --max-requests-in-flight were being handled"
    );
    describe_gauge!(MEMORY_BUDGET_BYTES, "The request memory budget in bytes");
    describe_gauge!(
        MEMORY_BUDGET_HELD,
        "Bytes of the request memory budget held by requests"
    );
    describe_counter!(
        MEMORY_BUDGET_WAITS,
        "Requests that waited for room in the memory budget"
    );
    describe_counter!(
        MEMORY_BUDGET_REFUSED,
        "Requests refused by the memory budget, by reason"
    );
    describe_counter!(
        REDIS_PIPELINES,
        "Pipelines of policy checks and commits written to Redis (one round trip each)"
    );
    describe_histogram!(
        SINK_ACK_SECONDS,
        "Time for a request's messages to be acknowledged"
    );
    describe_counter!(SINK_ERRORS, "Sink failures by error kind");
    describe_gauge!(
        KAFKA_QUEUE_MESSAGES,
        "Messages queued in the Kafka producer"
    );
    describe_gauge!(KAFKA_QUEUE_BYTES, "Bytes queued in the Kafka producer");
    describe_gauge!(KAFKA_BROKERS_UP, "Kafka brokers the producer sees as UP");
    describe_counter!(
        KAFKA_TX_MESSAGES,
        "Messages transmitted by the Kafka producer"
    );
    describe_counter!(
        KAFKA_TX_BYTES,
        "Message bytes transmitted by the Kafka producer"
    );
    describe_counter!(KAFKA_CLIENT_ERRORS, "Errors reported by librdkafka");
    describe_gauge!(RUNTIME_ALIVE_TASKS, "Tasks alive in the tokio runtime");
    describe_gauge!(READY, "1 when the server is ready for traffic");
    describe_counter!(QUOTA_CHECKS, "Quota checks by event type and source");
    describe_counter!(
        EVENTS_QUOTA_LIMITED,
        "Events dropped for quota, by event type"
    );
    describe_counter!(
        EVENTS_RATE_LIMITED,
        "Events over a rate limit, by event type and action"
    );
    describe_counter!(
        EVENTS_OVERFLOWED,
        "Events rerouted to the overflow topic, by cause"
    );
    describe_counter!(EVENTS_DUPLICATE, "Events dropped as duplicates");
    describe_histogram!(REDIS_SECONDS, "Policy round trip to Redis in seconds");
    describe_counter!(REDIS_ERRORS, "Failed policy round trips by kind");
    describe_gauge!(REDIS_UP, "1 while Redis answers policy checks");
    describe_counter!(
        POLICY_FALLBACK,
        "Requests decided without Redis, by decision"
    );
    describe_gauge!(SPOOL_BYTES, "Bytes the spool's segments hold");
    describe_gauge!(SPOOL_MAX_BYTES, "Most bytes the spool may hold");
    describe_gauge!(SPOOL_RECORDS, "Records in the spool not replayed yet");
    describe_gauge!(
        SPOOL_OLDEST_SECONDS,
        "Age of the oldest spooled record in seconds"
    );
    describe_counter!(SPOOL_APPENDED, "Records made durable in the spool");
    describe_counter!(SPOOL_REPLAYED, "Spooled records replayed to Kafka");
    describe_counter!(SPOOL_FULL, "Appends refused by a full spool");
    describe_counter!(SPOOL_CORRUPT_RECORDS, "Damaged spool records set aside");
    describe_counter!(
        SPOOL_TORN_TAILS,
        "Spool segments truncated after a cut-short write"
    );
    describe_counter!(
        SPOOL_REJECTED_RECORDS,
        "Spooled records Kafka refused for good, set aside"
    );
    describe_counter!(
        SPOOL_LATE_ACKS,
        "Spooled records Kafka acknowledged after all"
    );
    describe_counter!(
        SPOOL_DUPLICATES_AVOIDED,
        "Late-acknowledged spooled records not replayed"
    );
}
