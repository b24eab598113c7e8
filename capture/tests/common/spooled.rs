//! For tests of capture's durable spool (`--spool-dir`): what a capture
//! process reports about its spool (the `capture_spool_*` metrics, its
//! "spool open" log line, readiness), what the directory holds, and a
//! crash of capture itself.

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Capture;

/// The sum of every series named exactly `name` on capture's `/metrics`
/// (`None`: no such series yet, as for a counter never incremented).
pub async fn metric(capture: &Capture, name: &str) -> Option<f64> {
    let text = reqwest::get(capture.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let values: Vec<f64> = text
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// What one capture process's `/metrics` says about its spool (counters
/// since that process started; a counter not yet incremented is 0).
#[derive(Debug, Clone, Copy, Default)]
pub struct SpoolMetrics {
    pub bytes: f64,
    pub records: f64,
    pub appended: f64,
    pub replayed: f64,
    pub full: f64,
    pub corrupt: f64,
    pub torn_tails: f64,
    pub late_acks: f64,
    pub duplicates_avoided: f64,
}

impl SpoolMetrics {
    /// Scrapes `capture`.
    pub async fn of(capture: &Capture) -> SpoolMetrics {
        let get = |name: &'static str| async move { metric(capture, name).await.unwrap_or(0.0) };
        SpoolMetrics {
            bytes: get("capture_spool_bytes").await,
            records: get("capture_spool_records").await,
            appended: get("capture_spool_appended_total").await,
            replayed: get("capture_spool_replayed_total").await,
            full: get("capture_spool_full_total").await,
            corrupt: get("capture_spool_corrupt_records_total").await,
            torn_tails: get("capture_spool_torn_tails_total").await,
            late_acks: get("capture_spool_late_acks_total").await,
            duplicates_avoided: get("capture_spool_duplicates_avoided_total").await,
        }
    }
}

impl std::fmt::Display for SpoolMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records {} ({} bytes), appended {}, replayed {}, late acks {}, duplicates avoided \
             {}, full {}, corrupt {}, torn tails {}",
            self.records,
            self.bytes,
            self.appended,
            self.replayed,
            self.late_acks,
            self.duplicates_avoided,
            self.full,
            self.corrupt,
            self.torn_tails,
        )
    }
}

/// SIGKILLs capture (`Child::kill` sends SIGKILL on Unix): no shutdown, no
/// flush, whatever its spool writer was doing is cut short. Returns its
/// log.
pub fn sigkill(mut capture: Capture) -> Vec<String> {
    if let Some(status) = capture.child.try_wait().expect("capture status") {
        panic!(
            "capture had already exited ({status}) before the kill; its log:\n{}",
            capture.logs().join("\n")
        );
    }
    capture.child.kill().expect("SIGKILL capture");
    let status = capture.child.wait().expect("reap capture");
    assert_eq!(
        status.signal(),
        Some(9),
        "capture ended by SIGKILL: {status}"
    );
    capture.logs()
}

/// The fields of capture's "spool open" log line (what it recovered from
/// the directory at start-up).
pub fn spool_open(capture: &Capture) -> serde_json::Value {
    let line = capture.wait_for_log("\"spool open\"");
    serde_json::from_str(&line).expect("JSON log line")
}

/// The spool's segment files (`*.seg`) and their sizes, by name.
pub fn segments(dir: &Path) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("read the spool dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "seg"))
        .map(|entry| {
            let size = entry.metadata().expect("segment metadata").len();
            (entry.file_name().to_string_lossy().into_owned(), size)
        })
        .collect();
    found.sort();
    found
}

/// What the spool set aside in `corrupt/` as damaged or rejected records
/// (`*.bin`; the cut-short writes a crash can leave, `*.torn`, were never
/// acknowledged and are not counted).
pub fn set_aside(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir.join("corrupt")) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().extension().is_some_and(|e| e == "bin"))
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until capture's spool is empty (`capture_spool_records` 0) and
/// readiness answers 200 without `spooling:`, failing after `within`.
/// Returns how long it took.
pub async fn wait_until_drained(capture: &Capture, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let records = metric(capture, "capture_spool_records").await;
        let (status, body) = capture.readiness().await;
        if records == Some(0.0) && status == 200 && !body.contains("spooling") {
            return started.elapsed();
        }
        if started.elapsed() > within {
            panic!(
                "the spool was not drained within {within:?}: {}; readiness {status} {body:?}; \
                 capture's log:\n{}",
                SpoolMetrics::of(capture).await,
                capture.logs().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
