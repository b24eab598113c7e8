//! The operator as its binary runs it (leader election, then both
//! controllers), started on a client, and waiting for what it does.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// The Lease namespace of the tests.
pub const OPERATOR_NAMESPACE: &str = "capture-system";

/// A running operator; [`Running::stop`] shuts it down as SIGTERM would.
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the operator on `client`, managing every namespace.
pub fn start(client: kube::Client) -> Running {
    start_in(client, Vec::new())
}

/// Starts the operator on `client`, managing `namespaces` (empty: every
/// namespace).
pub fn start_in(client: kube::Client, namespaces: Vec<String>) -> Running {
    let settings = operator::runtime::Settings {
        namespaces,
        kafka_timeout: Duration::from_secs(10),
        redis_timeout: Duration::from_secs(5),
    };
    let election = operator::leader::Election {
        lease_name: "capture-operator".into(),
        namespace: OPERATOR_NAMESPACE.into(),
        identity: "operator-0".into(),
        duration: Duration::from_secs(15),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let ready = Arc::new(AtomicBool::new(false));
        let shutdown = async move {
            let _ = stopped.await;
        };
        operator::leader::lead(client.clone(), &election, ready, shutdown, |stop| {
            operator::runtime::run_controllers(client.clone(), &settings, stop)
        })
        .await;
    });
    Running { stop, task }
}

impl Running {
    /// Stops it and waits until it has.
    pub async fn stop(self) {
        self.stop.send(()).expect("operator running");
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("operator stopped")
            .expect("operator task");
    }
}

/// Polls `done` until it holds; fails with `what` and `state()` after
/// `timeout`.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; {}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The reason of an object's `Ready` condition, if it has one.
pub fn ready_reason(object: Option<serde_json::Value>) -> Option<String> {
    object?["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
}
