//! Hostile-clients bench: the full figures behind `tests/hostile.rs`.
//!
//! For each scenario it starts a fresh capture (noop sink, so only the HTTP
//! layer is measured), opens the idle connections, starts the rapid-reset
//! attackers, and once they are resetting streams runs an honest client
//! (sequential `/batch` requests of 10 events on one keep-alive HTTP/1.1
//! connection) and prints its latency percentiles beside what the attackers
//! managed: streams reset, connections opened, how capture ended them, what
//! capture counted (`capture_http2_reset_floods_total`), and capture's CPU
//! time and peak RSS over the scenario.
//!
//! Scenarios: `quiet` (honest client alone), `idle` (idle connections),
//! `resets` (rapid-reset attackers), `both`, and `slow-resets` (idle
//! connections and attackers that try to stay under the pending-reset limit
//! with small bursts and a pause after each, so capture can accept every
//! stream before it is reset: the attack hyper's limit does not close, bounded
//! only by how fast one connection can go).
//!
//! It prints numbers and asserts nothing about timings. Settings:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HOSTILE_BENCH_IDLE` | 5000 | idle connections |
//! | `HOSTILE_BENCH_RESET_CONNECTIONS` | 8 | concurrent rapid-reset connections |
//! | `HOSTILE_BENCH_BURST` | 100 | streams opened and reset per burst |
//! | `HOSTILE_BENCH_SLOW_BURST` | 10 | the same, for `slow-resets` |
//! | `HOSTILE_BENCH_SLOW_PAUSE_US` | 10000 | pause between bursts in `slow-resets`, µs |
//! | `HOSTILE_BENCH_REQUESTS` | 10000 | honest requests per scenario |
//! | `HOSTILE_BENCH_SCENARIOS` | all five | comma-separated |
//! | `HOSTILE_BENCH_CAPTURE_ARGS` | (none) | extra capture flags, space-separated |
//!
//! Run with `cargo bench -p capture --bench hostile`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/proc.rs"]
mod proc;
#[path = "shared/settings.rs"]
mod settings;

use proc::{clock_ticks, cpu_time_ticks, peak_rss_kib};
use settings::env_or;

use std::time::Duration;

use common::Capture;
use common::hostile::{self, Attack};

fn main() {
    let idle: usize = env_or("HOSTILE_BENCH_IDLE", 5000);
    let resets: usize = env_or("HOSTILE_BENCH_RESET_CONNECTIONS", 8);
    let burst: usize = env_or("HOSTILE_BENCH_BURST", 100);
    let slow_burst: usize = env_or("HOSTILE_BENCH_SLOW_BURST", 10);
    let slow_pause = Duration::from_micros(env_or("HOSTILE_BENCH_SLOW_PAUSE_US", 10_000));
    let requests: usize = env_or("HOSTILE_BENCH_REQUESTS", 10_000);
    let scenarios: String = env_or(
        "HOSTILE_BENCH_SCENARIOS",
        "quiet,idle,resets,both,slow-resets".to_owned(),
    );
    let extra: String = env_or("HOSTILE_BENCH_CAPTURE_ARGS", String::new());
    hostile::ensure_open_files(2 * idle as u64 + 1024);
    let ticks = clock_ticks();

    println!(
        "hostile bench: {idle} idle connections, {resets} rapid-reset connections (bursts of {burst}; slow: {slow_burst} every {slow_pause:?}), {requests} honest requests"
    );
    println!(
        "| scenario | honest p50 | p99 | max | failed | resets sent (during honest run) | attacker connections | GOAWAY ENHANCE_YOUR_CALM | capture counted | capture CPU s | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for scenario in scenarios.split(',').map(str::trim) {
        let attack = match scenario {
            "quiet" => Attack {
                idle: 0,
                reset_connections: 0,
                burst,
                pause: Duration::ZERO,
                honest_requests: requests,
            },
            "idle" => Attack {
                idle,
                reset_connections: 0,
                burst,
                pause: Duration::ZERO,
                honest_requests: requests,
            },
            "resets" => Attack {
                idle: 0,
                reset_connections: resets,
                burst,
                pause: Duration::ZERO,
                honest_requests: requests,
            },
            "both" => Attack {
                idle,
                reset_connections: resets,
                burst,
                pause: Duration::ZERO,
                honest_requests: requests,
            },
            "slow-resets" => Attack {
                idle,
                reset_connections: resets,
                burst: slow_burst,
                pause: slow_pause,
                honest_requests: requests,
            },
            other => panic!("unknown scenario {other:?}"),
        };
        let max_connections = (idle + resets + 64).to_string();
        let mut args = vec![
            "--sink",
            "noop",
            "--max-connections",
            &max_connections,
            "--header-read-timeout",
            "300s",
        ];
        args.extend(extra.split_whitespace());
        let capture = Capture::start(&args);
        let cpu_before = cpu_time_ticks(capture.pid());
        let outcome = hostile::run(capture.address, &attack);
        // Capture counts a flood when the connection's task ends, a moment
        // after the attacker saw the GOAWAY.
        std::thread::sleep(Duration::from_millis(500));
        let cpu = (cpu_time_ticks(capture.pid()) - cpu_before) as f64 / ticks;
        let (_, metrics) = hostile::get(capture.address, "/metrics");
        let counted = hostile::metric(&metrics, "capture_http2_reset_floods_total").unwrap_or(0.0);
        let rss = peak_rss_kib(capture.pid()).map_or(0.0, |kib| kib as f64 / 1024.0);
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {scenario} | {} | {} | {} | {} | {} ({}) | {} | {} | {counted} | {cpu:.2} | {rss:.0} |",
            ms(outcome.percentile(0.5)),
            ms(outcome.percentile(0.99)),
            ms(outcome.percentile(1.0)),
            outcome.failures.len(),
            outcome.resets_sent,
            outcome.resets_during_honest,
            outcome.attack_connections,
            outcome.goaways("ENHANCE_YOUR_CALM"),
        );
        eprintln!("{scenario}: {}", outcome.summary());
    }
}
