//! Hostile request shapes against the memory budget: a burst of the worst
//! bodies a client can send must leave the process alive, within its
//! memory, and answering every request with a status.

mod common;

use std::io::Write;
use std::time::Instant;

use common::Capture;

/// The pod limit the budget is sized for in these tests.
const LIMIT: usize = 512 << 20;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
}

/// About 1.9 million tiny events in ~100 KB of gzip.
fn many_tiny_events() -> Vec<u8> {
    let mut json = Vec::with_capacity(28 << 20);
    json.extend_from_slice(br#"{"api_key":"phc_memory","batch":["#);
    for n in 0..1_900_000 {
        if n > 0 {
            json.push(b',');
        }
        json.extend_from_slice(br#"{"event":"a"}"#);
    }
    json.extend_from_slice(b"]}");
    gzip(&json)
}

/// 200 MB of spaces inside a JSON string: a few hundred KB of gzip.
fn decompression_bomb() -> Vec<u8> {
    let mut json = Vec::with_capacity(200 << 20);
    json.extend_from_slice(br#"{"api_key":"phc_memory","event":"x","properties":{"p":""#);
    json.resize(json.len() + (200 << 20), b' ');
    json.extend_from_slice(br#""}}"#);
    gzip(&json)
}

/// A batch at the event cap (10,000) of 1.9 KB events: about 19 MB, just
/// under the 20 MB `/batch` body limit, plain JSON.
fn largest_batch() -> Vec<u8> {
    let padding = "x".repeat(1800);
    let events: Vec<String> = (0..10_000)
        .map(|n| {
            format!(
                r#"{{"event":"e","distinct_id":"u{n}","uuid":"{}","properties":{{"p":"{padding}"}}}}"#,
                uuid::Uuid::new_v4()
            )
        })
        .collect();
    format!(
        r#"{{"api_key":"phc_memory","batch":[{}]}}"#,
        events.join(",")
    )
    .into_bytes()
}

/// Peak resident memory of `pid` (`VmHWM`), bytes.
fn peak_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .expect("VmHWM")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_worst_case_requests_leave_the_process_alive_and_within_its_budget() {
    // As the image and the operator run it: the allocator returns freed
    // memory after 1 ms (docs/reliability.md, "Memory").
    let capture = Capture::start_with_env(
        &["--sink", "noop", "--memory-limit", &LIMIT.to_string()],
        &[("MIMALLOC_PURGE_DELAY", "1")],
    );
    let shapes: [(&str, &str, Vec<u8>); 3] = [
        ("tiny events", "gzip", many_tiny_events()),
        ("bomb", "gzip", decompression_bomb()),
        ("largest batch", "", largest_batch()),
    ];
    for (name, _, body) in &shapes {
        println!("{name}: {} KB on the wire", body.len() / 1024);
    }
    let client = reqwest::Client::new();
    let started = Instant::now();
    let requests = (0..16).map(|n| {
        let (name, encoding, body) = &shapes[n % shapes.len()];
        let mut request = client
            .post(capture.url("/batch"))
            .header("content-type", "application/json")
            .body(body.clone());
        if !encoding.is_empty() {
            request = request.header("content-encoding", *encoding);
        }
        async move {
            let response = request.send().await;
            (
                *name,
                response
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string()),
            )
        }
    });
    let answers = futures::future::join_all(requests).await;
    let took = started.elapsed();
    let peak = peak_rss(capture.pid());
    println!(
        "[memory] 16 requests in {:.1} s; peak RSS {} MiB of a {} MiB limit; answers: {answers:?}",
        took.as_secs_f64(),
        peak >> 20,
        LIMIT >> 20
    );
    for (name, answer) in &answers {
        let status = answer
            .as_ref()
            .unwrap_or_else(|err| panic!("{name}: no answer: {err}"));
        assert!(
            [200, 413, 503].contains(status),
            "{name}: answered {status}"
        );
    }
    // Each shape's own verdict: the tiny events exceed the event cap, the
    // bomb the decompressed-size cap; the largest batch fits or waits.
    for (name, answer) in &answers {
        let status = *answer.as_ref().expect("answered");
        match *name {
            "tiny events" | "bomb" => assert!([413, 503].contains(&status), "{name}: {status}"),
            _ => assert!([200, 503].contains(&status), "{name}: {status}"),
        }
    }
    assert!(
        answers
            .iter()
            .any(|(name, a)| *name == "largest batch" && a.as_ref().ok() == Some(&200)),
        "some of the largest batches got through: {answers:?}"
    );
    assert!(
        peak < LIMIT / 10 * 6,
        "peak RSS {} MiB is over 60% of the {} MiB limit",
        peak >> 20,
        LIMIT >> 20
    );
    // Alive, and with the budget given back: an ordinary request goes
    // through.
    let live = client
        .get(capture.url("/_liveness"))
        .send()
        .await
        .expect("alive");
    assert_eq!(live.status(), 200);
    let ordinary = client
        .post(capture.url("/e"))
        .json(&serde_json::json!({"api_key": "phc_memory", "event": "e", "distinct_id": "u"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(ordinary.status(), 200);
    let metrics = client
        .get(capture.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let held = metrics
        .lines()
        .find_map(|l| l.strip_prefix("capture_memory_budget_held_bytes "))
        .map(|v| v.trim().parse::<f64>().expect("number"));
    assert_eq!(held, Some(0.0), "every lease given back");
}

#[tokio::test]
async fn more_events_than_the_cap_get_413_naming_it() {
    let capture = Capture::start(&["--sink", "noop", "--max-events-per-request", "100"]);
    let events: Vec<serde_json::Value> = (0..101)
        .map(|_| serde_json::json!({"event": "e", "distinct_id": "u"}))
        .collect();
    let response = reqwest::Client::new()
        .post(capture.url("/batch"))
        .json(&serde_json::json!({"api_key": "phc_memory", "batch": events}))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.expect("json");
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("more than 100 events") && detail.contains("--max-events-per-request"),
        "{detail}"
    );
}
