//! Shared by the e2e tests: the real broker and Redis helpers (capture's
//! own, by path), the workspace's binaries, and waiting.
#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub mod kubectl;

#[path = "../../../capture/tests/common/broker.rs"]
pub mod broker;
#[path = "../../../capture/tests/common/redis.rs"]
pub mod redis;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of the workspace (`operator`, `capture`), built beside this
/// test (`cargo test --workspace` builds them).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p {name}` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// Polls `check` every 100 ms until it gives a value; fails after
/// `timeout` with `what` and the last state `check` described.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
