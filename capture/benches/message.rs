//! Cost of writing one message value (`CapturedEvent::to_json`, which
//! escapes the event's JSON text into the `data` string) for realistic
//! `$pageview` events of about 1.2 KB, as posthog-js sends them. Prints
//! nanoseconds per event, the best of five rounds; asserts nothing about
//! timings.
//!
//! Run with `cargo bench -p capture --bench message`
//! (`MESSAGE_BENCH_EVENTS`, default 200000 per round).

use std::borrow::Cow;
use std::hint::black_box;
use std::time::Instant;

use capture::event::CapturedEvent;
use serde_json::json;

fn event(n: u64) -> String {
    json!({
        "event": "$pageview",
        "distinct_id": format!("user-{}", n % 5000),
        "timestamp": "2024-06-01T12:00:00.000Z",
        "properties": {
            "$os": "Mac OS X", "$os_version": "14.5.0", "$browser": "Chrome",
            "$browser_version": 125, "$device_type": "Desktop",
            "$current_url": format!("https://app.example.com/project/1/insights?n={n}"),
            "$host": "app.example.com", "$pathname": "/project/1/insights",
            "$raw_user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
            "$screen_height": 1117, "$screen_width": 1728, "$viewport_height": 959, "$viewport_width": 1728,
            "$lib": "web", "$lib_version": "1.139.0", "$insert_id": format!("{n:016x}"),
            "$time": 1717243200.123, "$device_id": "0190b0e1-0000-7000-8000-000000000001",
            "$session_id": "0190b0e1-0000-7000-8000-000000000002",
            "$window_id": "0190b0e1-0000-7000-8000-000000000003",
            "$pageview_id": "0190b0e1-0000-7000-8000-000000000004",
            "$referrer": "https://www.google.com/", "$referring_domain": "www.google.com",
            "$active_feature_flags": ["new-onboarding", "insights-v2"],
            "$feature/new-onboarding": true, "$feature/insights-v2": "test",
            "utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "june-launch",
            "$is_identified": true, "$process_person_profile": true, "title": "Insights • PostHog",
        },
    })
    .to_string()
}

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
            };
            bytes = black_box(event.to_json()).len();
        }
        best = best.min(started.elapsed().as_nanos() as f64 / count as f64);
    }
    println!(
        "message value of a {bytes}-byte event: {best:.0} ns per event (best of 5 rounds of {count})"
    );
}
