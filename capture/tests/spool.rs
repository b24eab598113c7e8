//! The durable spool (`--spool-dir`) against real outages: a broker that
//! keeps its data across a SIGKILL ([`SqliteBroker`]), capture itself
//! SIGKILLed and started again on the same directory, a spool that fills
//! up (under paced load, and under one burst of concurrent requests whose
//! appends share a group commit), and `--drain-spool` on a directory a
//! dead process left behind.
//!
//! The promise under test: while Kafka is gone, a request capture answers
//! is answered 200 as long as the spool has room (503 once it is full),
//! and every event answered 200 reaches its topic once Kafka is back, even
//! when capture crashed in between. A request capture never answered (the
//! connection failed while it was dead) promises nothing. Duplicates are
//! allowed and printed, never asserted away.
//!
//! Capture runs with `--kafka-idempotence false` (tansu 0.6's sqlite engine
//! fails an idempotent producer session that continues across a broker
//! restart; see [`SqliteBroker`]), and the clients are paced so that a test
//! stays under about 10,000 messages, which that engine reads back in
//! reasonable time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ledger::{Ledger, Load, assert_none_lost, batch, count_on_topic_at, post, uuids};
use common::spooled::{
    SpoolMetrics, metric, segments, set_aside, sigkill, spool_open, wait_until_drained,
};
use common::sqlite_broker::SqliteBroker;
use common::{Capture, create_topics_at, free_port, unique};

const TOKEN: &str = "phc_spool_token";
const CLIENTS: usize = 16;
const PER_BATCH: usize = 5;
/// Between a client's batches: 16 clients send at most about 200 events a
/// second, so a test of about 40 s stays under 10,000 messages.
const PACE: Duration = Duration::from_millis(400);

/// Capture's flags: plain events to `topic` on `broker`, idempotence off,
/// listening on `port` (so a restart is where the clients send), spooling
/// to `spool` with timeouts short enough for a test, and `extra`.
fn capture_args(
    broker: &SqliteBroker,
    topic: &str,
    spool: &Path,
    port: u16,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--address",
        &format!("127.0.0.1:{port}"),
        "--kafka-brokers",
        &broker.address(),
        "--events-topic",
        topic,
        "--kafka-idempotence",
        "false",
        "--kafka-health-interval",
        "1s",
        "--kafka-metadata-timeout",
        "1s",
        "--kafka-message-timeout",
        "10s",
        "--spool-dir",
        spool.to_str().expect("utf-8 spool path"),
        "--spool-ack-deadline",
        "2s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Fails unless every request between two snapshots was answered with one
/// of `allowed` (0: no HTTP answer at all).
fn assert_statuses(what: &str, statuses: &BTreeMap<u16, usize>, allowed: &[u16]) {
    let seen: BTreeSet<u16> = statuses.keys().copied().collect();
    assert!(
        seen.is_subset(&allowed.iter().copied().collect()),
        "{what}: requests by status {statuses:?} (0: no HTTP answer), only {allowed:?} allowed"
    );
}

/// The test's clients: 16 posting paced batches to `/batch` until stopped.
fn clients(capture: &Capture) -> Load {
    Load::paced(
        &capture.url("/batch"),
        TOKEN,
        CLIENTS,
        PER_BATCH,
        usize::MAX,
        PACE,
    )
}

/// Uuids on the topic more than once, whether answered 200 or not.
fn repeated(counts: &BTreeMap<String, usize>) -> usize {
    counts.values().map(|n| n.saturating_sub(1)).sum()
}

/// Fails unless the spool directory holds no record: every segment file
/// gone (or empty), nothing set aside.
fn assert_spool_empty(what: &str, dir: &Path) {
    let left = segments(dir);
    assert!(
        left.iter().all(|(_, size)| *size == 0),
        "{what}: segments left in the spool: {left:?}"
    );
    let aside = set_aside(dir);
    assert!(aside.is_empty(), "{what}: set aside in corrupt/: {aside:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_outage_with_a_capture_crash_is_answered_200_and_loses_nothing() {
    const OUTAGE: Duration = Duration::from_secs(25);
    const SEGMENT: u64 = 256 << 10;
    let mut broker = SqliteBroker::start();
    let topic = unique("spool-events");
    create_topics_at(&broker.address(), &[&topic], 2).await;
    let spool = tempfile::tempdir().expect("spool dir");
    let args = capture_args(
        &broker,
        &topic,
        spool.path(),
        free_port(),
        &["--spool-segment-bytes", "256KiB"],
    );
    let capture = Capture::start(&args);
    let load = clients(&capture);

    tokio::time::sleep(Duration::from_secs(3)).await;
    let healthy = load.ledger();
    broker.sigkill();
    let killed = Instant::now();

    // Capture notices (its health check fails) and says it is spooling.
    loop {
        let (status, body) = capture.readiness().await;
        if status == 200 && body.contains("spooling") {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "readiness never said spooling after the broker's death: {status} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let noticed = killed.elapsed();
    // Crash once the spool spans several segments.
    loop {
        let bytes = metric(&capture, "capture_spool_bytes").await.unwrap_or(0.0);
        if bytes > (2 * SEGMENT + SEGMENT / 2) as f64 {
            break;
        }
        assert!(
            killed.elapsed() < OUTAGE - Duration::from_secs(5),
            "the spool held only {bytes} bytes {:.1?} into the outage",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = SpoolMetrics::of(&capture).await;
    let before_crash = load.ledger();
    let first_logs = sigkill(capture);
    let crashed_at = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let capture = Capture::start(&args);
    let open = spool_open(&capture);
    let recovered = open["left_by_previous_process"]
        .as_u64()
        .expect("left_by_previous_process");
    // Every record the dead process had reported durable is still there.
    assert!(
        recovered > 0 && recovered as f64 >= first.records,
        "the restarted capture recovered {recovered} records; the crashed one reported {first}; \
         spool open: {open}; the crashed one's log:\n{}",
        first_logs.join("\n")
    );
    assert!(
        open["segments"].as_u64().unwrap_or(0) >= 2,
        "several segments recovered: {open}"
    );
    // Requests that failed just before the restart are recorded a moment
    // later: the snapshot waits for them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let capture_back = load.ledger();

    let until_back = OUTAGE.saturating_sub(killed.elapsed());
    tokio::time::sleep(until_back).await;
    let before_broker_back = load.ledger();
    broker.spawn();
    let drained_in = wait_until_drained(&capture, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = load.finish().await;
    // The last requests' events may have gone to the spool too.
    wait_until_drained(&capture, Duration::from_secs(60)).await;
    let last = SpoolMetrics::of(&capture).await;

    let up = healthy.since(&Ledger::default());
    let down = before_crash.since(&healthy);
    let dead = capture_back.since(&before_crash);
    let down_again = before_broker_back.since(&capture_back);
    let back = ledger.since(&before_broker_back);
    println!(
        "[phases] kafka up {up:?}; kafka down {down:?} (noticed {noticed:.1?} after the kill); \
         capture dead {dead:?} (SIGKILLed {crashed_at:.1?} into the outage); capture back, kafka \
         still down {down_again:?}; kafka back {back:?} (spool drained {drained_in:.1?} after it)"
    );
    println!("[spool] crashed process at its last scrape: {first}");
    println!("[spool] restarted process recovered {recovered} records: {open}");
    println!("[spool] restarted process at the end: {last}");
    assert!(
        up.get(&200).is_some_and(|n| *n > 0),
        "no 200 before the outage: {up:?}"
    );
    assert!(
        down.get(&200).is_some_and(|n| *n > 0),
        "no 200 in the outage: {down:?}"
    );
    assert!(
        down_again.get(&200).is_some_and(|n| *n > 0),
        "no 200 from the restarted capture in the outage: {down_again:?}"
    );
    assert!(
        dead.get(&0).is_some_and(|n| *n > 0),
        "no client saw the crash: {dead:?}"
    );
    assert_statuses("kafka up", &up, &[200]);
    assert_statuses("kafka down", &down, &[200]);
    assert_statuses("capture dead", &dead, &[0, 200]);
    assert_statuses("capture back, kafka still down", &down_again, &[200]);
    assert_statuses("kafka back", &back, &[200]);
    assert!(
        last.replayed >= recovered as f64,
        "the restarted capture replayed {} records, recovered {recovered}",
        last.replayed
    );
    assert_spool_empty("after the drain", spool.path());

    let counts = count_on_topic_at(&broker.address(), &topic);
    let duplicates = assert_none_lost("kafka outage with a capture crash", &ledger, &counts);
    println!(
        "[duplicates] kafka outage with a capture crash: {duplicates} among events answered 200; \
         {} among all uuids on the topic ({} distinct)",
        repeated(&counts),
        counts.len()
    );
    let panics = broker.panics();
    if !panics.is_empty() {
        println!("[tansu] panics in the broker's log: {panics:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_answers_503_and_loses_nothing() {
    const MAX_BYTES: u64 = 64 << 10;
    let mut broker = SqliteBroker::start();
    let topic = unique("spool-full-events");
    create_topics_at(&broker.address(), &[&topic], 2).await;
    let spool = tempfile::tempdir().expect("spool dir");
    // The smallest spool there is: one segment of 64 KiB.
    let capture = Capture::start(&capture_args(
        &broker,
        &topic,
        spool.path(),
        free_port(),
        &[
            "--spool-max-bytes",
            "64KiB",
            "--spool-segment-bytes",
            "64KiB",
        ],
    ));
    let load = clients(&capture);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let healthy = load.ledger();
    broker.sigkill();
    let killed = Instant::now();
    while !load.ledger().since(&healthy).contains_key(&503) {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no 503 within 30 s of the broker's death: {:?}; spool {}",
            load.ledger().since(&healthy),
            SpoolMetrics::of(&capture).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let full_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let full = SpoolMetrics::of(&capture).await;
    let full_segments = segments(spool.path());
    let full_on_disk: u64 = full_segments.iter().map(|(_, size)| size).sum();
    let before_broker_back = load.ledger();
    broker.spawn();
    let drained_in = wait_until_drained(&capture, Duration::from_secs(60)).await;
    // Taking events again, from the same process.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !load.ledger().since(&before_broker_back).contains_key(&200) {
        assert!(
            Instant::now() < deadline,
            "no 200 after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = load.finish().await;
    wait_until_drained(&capture, Duration::from_secs(60)).await;
    let last = SpoolMetrics::of(&capture).await;

    println!(
        "[phases] kafka up {:?}; kafka down {:?} (first 503 {full_after:.1?} after the kill); \
         kafka back {:?} (spool drained {drained_in:.1?} after it)",
        healthy.since(&Ledger::default()),
        before_broker_back.since(&healthy),
        ledger.since(&before_broker_back),
    );
    println!("[spool] while full: {full}");
    println!("[spool] at the end: {last}");
    assert_statuses("full spool", &ledger.statuses, &[200, 503]);
    assert!(
        before_broker_back
            .since(&healthy)
            .get(&200)
            .is_some_and(|n| *n > 0),
        "nothing was spooled before it was full"
    );
    assert!(full.full > 0.0, "no append refused as full: {full}");
    assert_spool_empty("after the drain", spool.path());

    let counts = count_on_topic_at(&broker.address(), &topic);
    let duplicates = assert_none_lost("full spool", &ledger, &counts);
    println!(
        "[duplicates] full spool: {duplicates} among events answered 200; {} among all uuids on \
         the topic",
        repeated(&counts)
    );
    // The limit held, by capture's account and on disk.
    assert!(
        full.bytes <= MAX_BYTES as f64 && full_on_disk <= MAX_BYTES,
        "the spool held more than --spool-max-bytes ({MAX_BYTES}): {full}; segments on disk \
         {full_segments:?} ({full_on_disk} bytes)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_spool_empties_a_directory_left_behind_and_exits_0() {
    const BATCHES: usize = 20;
    let mut broker = SqliteBroker::start();
    let topic = unique("spool-drain-events");
    create_topics_at(&broker.address(), &[&topic], 2).await;
    broker.sigkill();
    let spool = tempfile::tempdir().expect("spool dir");
    let args = capture_args(&broker, &topic, spool.path(), free_port(), &[]);

    // With Kafka gone from the start, every event goes to the spool.
    let capture = Capture::start(&args);
    let client = reqwest::Client::new();
    let mut sent = Vec::new();
    for _ in 0..BATCHES {
        let ids = uuids(PER_BATCH);
        let (status, body) = post(&client, &capture.url("/batch"), &batch(TOKEN, &ids)).await;
        assert_eq!(status, 200, "spooled batch answered {status}: {body}");
        sent.extend(ids);
    }
    let spooled = SpoolMetrics::of(&capture).await;
    assert_eq!(spooled.appended, sent.len() as f64, "{spooled}");
    sigkill(capture);
    assert!(
        !segments(spool.path()).is_empty(),
        "the dead process left no segment"
    );

    broker.spawn();
    let mut drain_args = args;
    drain_args.extend([
        "--drain-spool".to_owned(),
        "--log-format".to_owned(),
        "json".to_owned(),
    ]);
    let log = tempfile::NamedTempFile::new().expect("drain log");
    let log_path = log.path().to_owned();
    let started = Instant::now();
    let mut drain = Command::new(env!("CARGO_BIN_EXE_capture"))
        .args(&drain_args)
        .env_remove("CAPTURE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("drain log"))
        .spawn()
        .expect("start capture --drain-spool");
    let status = loop {
        if let Some(status) = drain.try_wait().expect("drain status") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = drain.kill();
            let _ = drain.wait();
            panic!(
                "--drain-spool did not exit within 60 s; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("[drain] exited {status} after {took:.1?}");
    assert!(
        status.success(),
        "--drain-spool exited {status}; its log:\n{logs}"
    );
    let open: serde_json::Value = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| entry["message"] == "spool open")
        .unwrap_or_else(|| panic!("no \"spool open\" line; the drain's log:\n{logs}"));
    assert_eq!(
        open["left_by_previous_process"].as_u64(),
        Some(sent.len() as u64),
        "records recovered: {open}"
    );
    assert!(
        logs.contains("spool drained; exiting"),
        "the drain's log:\n{logs}"
    );
    assert_spool_empty("after --drain-spool", spool.path());

    let counts = count_on_topic_at(&broker.address(), &topic);
    let ledger = Ledger {
        acknowledged: sent.iter().cloned().collect(),
        statuses: BTreeMap::from([(200, BATCHES)]),
    };
    let duplicates = assert_none_lost("drain spool", &ledger, &counts);
    println!("[duplicates] drain spool: {duplicates}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_into_a_small_spool_never_takes_it_past_its_max_bytes() {
    const MAX_BYTES: u64 = 64 << 10;
    const REQUESTS: usize = 64;
    // Kafka is nowhere (nothing listens there): every event goes to the
    // spool, and many requests ask for room at the same moment.
    let nowhere = free_port();
    let spool = tempfile::tempdir().expect("spool dir");
    let capture = Capture::start(&[
        "--kafka-brokers",
        &format!("127.0.0.1:{nowhere}"),
        "--events-topic",
        "spool-burst-events",
        "--kafka-idempotence",
        "false",
        "--kafka-health-interval",
        "1s",
        "--kafka-metadata-timeout",
        "1s",
        "--kafka-message-timeout",
        "10s",
        "--spool-dir",
        spool.path().to_str().expect("utf-8 spool path"),
        "--spool-ack-deadline",
        "2s",
        "--spool-max-bytes",
        "64KiB",
        "--spool-segment-bytes",
        "64KiB",
    ]);
    let client = reqwest::Client::new();
    let url = capture.url("/batch");
    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let ids = uuids(20);
                post(&client, &url, &batch(TOKEN, &ids)).await.0
            })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for request in requests {
        *statuses
            .entry(request.await.expect("request"))
            .or_insert(0usize) += 1;
    }
    // The gauges are refreshed about once a second: wait until they show
    // what was appended.
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let metrics = SpoolMetrics::of(&capture).await;
        if metrics.records == metrics.appended || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let on_disk = segments(spool.path());
    let bytes: u64 = on_disk.iter().map(|(_, size)| size).sum();
    println!("[burst] requests by status {statuses:?}; spool {metrics}; segments {on_disk:?}");
    assert_statuses("burst into a small spool", &statuses, &[200, 503]);
    assert!(
        statuses.contains_key(&503),
        "the burst did not fill the spool: {statuses:?}"
    );
    assert!(
        metrics.bytes <= MAX_BYTES as f64 && bytes <= MAX_BYTES,
        "the spool took more than --spool-max-bytes ({MAX_BYTES}): {metrics}; segments on disk \
         {on_disk:?} ({bytes} bytes)"
    );
}

/// Pod deletion in the middle of an outage: SIGTERM while requests wait for
/// a Kafka that is gone. Without a spool they are answered 503 near the
/// drain deadline (`broker_faults.rs`); with one, their events go to the
/// spool and they are answered 200, the process exits within its budget,
/// and the next process on the directory produces them once Kafka is back.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_an_outage_answers_the_waiting_requests_200_from_the_spool() {
    const SHUTDOWN: Duration = Duration::from_secs(5);
    let mut broker = SqliteBroker::start();
    let topic = unique("spool-sigterm");
    create_topics_at(&broker.address(), &[&topic], 2).await;
    let spool = tempfile::tempdir().expect("spool dir");
    let port = free_port();
    // The health check does not notice the outage within the test, and the
    // deadline is longer than the drain: the requests in flight at SIGTERM
    // are still waiting for Kafka when the drain gives up on it.
    let args = capture_args(
        &broker,
        &topic,
        spool.path(),
        port,
        &[
            "--kafka-health-interval",
            "1h",
            "--spool-ack-deadline",
            "9s",
            "--shutdown-timeout",
            "5s",
        ],
    );
    let mut capture = Capture::start(&args);
    let load = clients(&capture);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let healthy = load.ledger();
    broker.sigkill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let terminated = Instant::now();
    capture.signal_term();
    let status = tokio::task::block_in_place(|| capture.wait_exit());
    let took = terminated.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ledger = load.finish().await;
    let logs = capture.logs();
    drop(capture);
    assert!(status.success(), "capture exited {status}");
    assert!(
        took < SHUTDOWN + Duration::from_secs(3),
        "shutdown took {took:.1?}"
    );
    let outage = ledger.since(&healthy);
    println!(
        "[phases] kafka up {:?}; from the kill to the exit {outage:?}; exit after {took:.1?}",
        healthy.since(&Ledger::default())
    );
    assert_statuses("kafka up", &healthy.since(&Ledger::default()), &[200]);
    assert_statuses("kafka down, then SIGTERM", &outage, &[0, 200]);
    assert!(
        outage.get(&200).is_some_and(|n| *n >= CLIENTS / 2),
        "the requests waiting at SIGTERM were answered: {outage:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("spool drained as far as the shutdown allows")),
        "capture's log:\n{}",
        logs.join("\n")
    );

    broker.spawn();
    let restart = capture_args(&broker, &topic, spool.path(), port, &[]);
    let capture = Capture::start(&restart);
    let open = spool_open(&capture);
    assert!(
        open["left_by_previous_process"].as_u64().unwrap_or(0) >= (CLIENTS * PER_BATCH / 2) as u64,
        "the terminated process left its waiting requests' events: {open}"
    );
    wait_until_drained(&capture, Duration::from_secs(60)).await;
    assert_spool_empty("after the restart", spool.path());
    let counts = count_on_topic_at(&broker.address(), &topic);
    let duplicates = assert_none_lost("sigterm with a spool", &ledger, &counts);
    println!("[duplicates] sigterm with a spool: {duplicates}; spool open: {open}");
}
