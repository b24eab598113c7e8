//! Plugin pipeline cost per event, without HTTP or Kafka: each pipeline
//! runs over the same realistic `$pageview` events (about 1.2 KB of JSON, as
//! posthog-js sends them) many times, and the bench prints nanoseconds per
//! event. It asserts nothing about timings.
//!
//! Run with `cargo bench -p capture --bench plugins`
//! (`PLUGIN_BENCH_EVENTS`, default 100000, sets how many events each
//! pipeline processes per round; the best of five interleaved rounds is
//! printed, which filters out the noise of a shared machine).

use std::borrow::Cow;
use std::hint::black_box;
use std::time::Instant;

use capture::plugins::{Event, Pipeline};

#[path = "shared/pageview.rs"]
mod pageview;
use pageview::event;

/// Measured rounds; the best of each pipeline is reported.
const ROUNDS: usize = 5;

fn main() {
    let count: usize = std::env::var("PLUGIN_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let events: Vec<String> = (0..1_000).map(event).collect();
    let pipelines = [
        ("none", "version: 1\n"),
        (
            "redact 5 keys (3 present)",
            "version: 1\nplugins: [{redact: {keys: [email, $ip, $raw_user_agent, $referrer, utm_campaign]}}]\n",
        ),
        (
            "redact 1 key (present)",
            "version: 1\nplugins: [{redact: {keys: [$raw_user_agent]}}]\n",
        ),
        (
            "redact 5 keys (none present)",
            "version: 1\nplugins: [{redact: {keys: [email, phone, name, address, ssn]}}]\n",
        ),
        (
            "drop on a property",
            "version: 1\nplugins: [{drop: {property: {key: $host, equals: internal.example.com}}}]\n",
        ),
        (
            "drop on an event name",
            "version: 1\nplugins: [{drop: {events: [$autocapture]}}]\n",
        ),
        (
            "sample",
            "version: 1\nplugins: [{sample: {rate: 0.5, events: {$pageview: 1.0}}}]\n",
        ),
        (
            "all three (the load bench's)",
            "version: 1\nplugins:\n  - redact: {keys: [email, $ip, $raw_user_agent, $referrer, utm_campaign]}\n  - drop: {property: {key: $host, equals: internal.example.com}}\n  - sample: {rate: 0.5, events: {$pageview: 1.0}}\n",
        ),
        (
            "limitProperties",
            "version: 1\nplugins: [{limitProperties: {maxStringLength: 100}}]\n",
        ),
    ];
    println!(
        "plugin pipeline cost, {count} events of ~{} B each per round; best of {ROUNDS} interleaved rounds",
        events[0].len()
    );
    let built: Vec<(&str, Pipeline)> = pipelines
        .iter()
        .map(|(label, document)| {
            let config = capture::runtime_config::parse(document).expect("valid document");
            (*label, Pipeline::new(&config))
        })
        .collect();
    let mut best = vec![f64::MAX; built.len()];
    let mut outcome = vec![(0usize, 0usize); built.len()];
    for _ in 0..ROUNDS {
        for (slot, (_, pipeline)) in built.iter().enumerate() {
            let mut kept = 0usize;
            let mut bytes = 0usize;
            let started = Instant::now();
            for i in 0..count {
                let raw = &events[i % events.len()];
                let mut ip = String::from("203.0.113.7");
                let distinct_id = format!("user-{}", i % 5000);
                let mut event = Event::new(
                    "phc_bench",
                    "$pageview",
                    &distinct_id,
                    &mut ip,
                    Cow::Borrowed(raw),
                );
                let (verdict, _) = pipeline.run(&mut event);
                if verdict == capture::plugins::Verdict::Keep {
                    kept += 1;
                }
                bytes += black_box(event.into_body()).len();
            }
            let per_event = started.elapsed().as_nanos() as f64 / count as f64;
            best[slot] = best[slot].min(per_event);
            outcome[slot] = (kept, bytes / count);
        }
    }
    for (slot, (label, _)) in built.iter().enumerate() {
        let (kept, out) = outcome[slot];
        println!(
            "  {label:<32} {:>8.0} ns/event  ({kept} kept, {out} B out per event)",
            best[slot]
        );
    }
}
