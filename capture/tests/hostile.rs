//! Connection hygiene under attack, with small counts: a thousand idle
//! connections and HTTP/2 rapid-reset attackers at once must not slow an
//! honest client down, and capture must close the attackers' connections
//! and count it. `benches/hostile.rs` runs the same parties at full size and
//! prints the figures (`docs/performance.md`).
//!
//! The 200 ms bound on the honest client's p99 is the issue's, and generous
//! on purpose (a request takes a few milliseconds here even in a debug
//! build): it catches the attack crowding the honest client out, not noise.

mod common;

use std::time::{Duration, Instant};

use common::Capture;
use common::hostile::{self, Attack, OPEN_AT_STOP};

const IDLE: usize = 1000;

#[test]
fn idle_connections_and_rapid_resets_leave_the_honest_p99_under_200ms() {
    hostile::ensure_open_files(2 * IDLE as u64 + 256);
    let attack = Attack {
        idle: IDLE,
        reset_connections: 4,
        burst: 100,
        pause: Duration::ZERO,
        honest_requests: 300,
    };
    // Room for the idle connections, the attackers and the honest client;
    // the idle ones stay open for the whole test.
    let max_connections = (IDLE + 64).to_string();
    let capture = Capture::start(&[
        "--sink",
        "noop",
        "--max-connections",
        &max_connections,
        "--header-read-timeout",
        "60s",
    ]);
    let outcome = hostile::run(capture.address, &attack);
    println!("{}", outcome.summary());

    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(outcome.latencies.len(), attack.honest_requests);
    let p99 = outcome.percentile(0.99);
    assert!(
        p99 < Duration::from_millis(200),
        "honest p99 {p99:?}: {}",
        outcome.summary()
    );

    // The attack really ran beside the honest client: capture held every
    // idle connection, and the attackers kept resetting streams.
    let open = hostile::metric(&outcome.metrics_during, "capture_http_connections")
        .expect("capture_http_connections");
    assert!(open >= IDLE as f64, "only {open} connections open");
    assert!(
        outcome.resets_during_honest >= 1000,
        "only {} resets while the honest client ran",
        outcome.resets_during_honest
    );

    // Capture closed every attacker connection it saw a burst on: the
    // attacker saw the GOAWAY ENHANCE_YOUR_CALM, or (when it was still
    // writing its next burst as capture closed) a broken pipe or a reset;
    // only the connections open when the attack stopped escaped. So the
    // attackers had to reconnect again and again, and capture counted each
    // connection it closed.
    let open_at_stop = outcome.attack_ends.get(OPEN_AT_STOP).copied().unwrap_or(0);
    let closed = outcome.attack_connections - open_at_stop;
    for how in outcome.attack_ends.keys() {
        assert!(
            how == "GOAWAY ENHANCE_YOUR_CALM"
                || how.starts_with("i/o error")
                || how == OPEN_AT_STOP,
            "an attacker connection ended otherwise: {}",
            outcome.summary()
        );
    }
    assert!(
        outcome.goaways("ENHANCE_YOUR_CALM") >= 10,
        "{}",
        outcome.summary()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, metrics) = hostile::get(capture.address, "/metrics");
        assert_eq!(status, 200, "capture is still answering");
        let counted = hostile::metric(&metrics, "capture_http2_reset_floods_total").unwrap_or(0.0);
        if counted >= closed as f64 {
            println!(
                "capture counted {counted} reset floods; the attackers lost {closed} connections"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "capture counted {counted} reset floods, the attackers lost {closed} connections: {}",
            outcome.summary()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hostile::get(capture.address, "/_liveness").0, 200);
}
