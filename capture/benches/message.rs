//! Capture's own work per event, without HTTP or Kafka, for realistic
//! `$pageview` events of about 1.2 KB, as posthog-js sends them:
//! - writing one message value (`CapturedEvent::to_json`, which escapes
//!   the event's JSON text into the `data` string);
//! - parsing a 100-event `/batch` body (`parse::parse`);
//! - parsing it and building every message (`parse` then
//!   `process::analytics_candidates`), as the request path does.
//!
//! Prints nanoseconds per event, the best of five rounds; asserts nothing
//! about timings.
//!
//! Run with `cargo bench -p capture --bench message`
//! (`MESSAGE_BENCH_EVENTS`, default 200000 per round).

use std::borrow::Cow;
use std::hint::black_box;
use std::time::Instant;

use capture::event::CapturedEvent;

#[path = "shared/pageview.rs"]
mod pageview;
use pageview::event;

fn main() {
    let count: usize = std::env::var("MESSAGE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let texts: Vec<String> = (0..1_000).map(event).collect();
    let mut best = f64::MAX;
    let mut bytes = 0;
    for _ in 0..5 {
        let started = Instant::now();
        for i in 0..count {
            let text = &texts[i % texts.len()];
            let event = CapturedEvent {
                uuid: uuid::Uuid::nil(),
                distinct_id: "user-1".into(),
                ip: "10.1.2.3".into(),
                data: Cow::Borrowed(text),
                now: "2024-06-01T12:00:00.123456+00:00".into(),
                sent_at: None,
                token: "phc_bench".into(),
                event: "$pageview".into(),
                timestamp: "2024-06-01T12:00:00.000000+00:00".into(),
                is_cookieless_mode: false,
                historical_migration: false,
                timestamp_millis: 1_717_243_200_000,
            };
            bytes = black_box(event.to_json()).len();
        }
        best = best.min(started.elapsed().as_nanos() as f64 / count as f64);
    }
    println!(
        "message value of a {bytes}-byte event: {best:.0} ns per event (best of 5 rounds of {count})"
    );

    let bodies: Vec<String> = (0..20)
        .map(|b| {
            let events: Vec<serde_json::Value> = (0..100)
                .map(|i| serde_json::from_str(&texts[(b * 100 + i) % texts.len()]).expect("JSON"))
                .collect();
            serde_json::json!({"api_key": "phc_bench", "batch": events, "sent_at": "2024-06-01T12:00:01.000Z"})
                .to_string()
        })
        .collect();
    let topics = capture::route::Topics::default();
    let ctx = capture::process::RequestContext {
        endpoint: capture::process::Endpoint::Batch,
        now: chrono::Utc::now(),
        ip: "10.1.2.3".into(),
        query_sent_at: None,
        topics: &topics,
        max_message_bytes: 1 << 20,
        dedup_ids: false,
        runtime: capture::live::Applied::empty(),
        historical_after: None,
        warnings: capture::warnings::Warnings::none(),
    };
    let requests = (count / 100).max(1);
    for (what, build) in [
        ("parse a 100-event /batch body", false),
        ("parse it and build the messages", true),
    ] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            for i in 0..requests {
                let payload =
                    capture::parse::parse(&bodies[i % bodies.len()], usize::MAX).expect("parses");
                if build {
                    let candidates =
                        capture::process::analytics_candidates(payload, &ctx).expect("messages");
                    black_box(candidates.events.len());
                } else {
                    black_box(payload.events.len());
                }
            }
            best = best.min(started.elapsed().as_nanos() as f64 / (requests * 100) as f64);
        }
        println!("{what}: {best:.0} ns per event (best of 5 rounds of {requests} bodies)");
    }
}
