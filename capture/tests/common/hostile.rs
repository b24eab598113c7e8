//! Hostile clients for the connection-hygiene test (`tests/hostile.rs`) and
//! bench (`benches/hostile.rs`): idle TCP connections that never send a
//! byte, HTTP/2 "rapid reset" attackers (open a stream, cancel it at once,
//! over and over), and an honest client that times each of its requests
//! while the others run.
//!
//! Each party runs on its own OS thread and Tokio runtime, so the attackers
//! cannot starve the honest client inside this process: what it measures is
//! capture's answer time, not the load generator's.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to throw at capture.
#[derive(Debug, Clone, Copy)]
pub struct Attack {
    /// Idle TCP connections, opened before the rest starts and held silent
    /// until the honest client is done.
    pub idle: usize,
    /// Concurrent rapid-reset connections; each reconnects when closed.
    pub reset_connections: usize,
    /// Streams an attacker opens and resets before letting its connection
    /// flush them: capture reads a burst in one go, so more than its
    /// pending-reset limit (20) in a burst is what trips the limit.
    pub burst: usize,
    /// Pause between bursts. Zero only yields to the connection's task, so
    /// bursts may reach capture back to back; a pause lets capture accept
    /// each burst before the next (an attacker staying under the limit).
    pub pause: Duration,
    /// Sequential requests of the honest client (`/batch`, 10 events).
    pub honest_requests: usize,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Idle connections that were open when the honest client started.
    pub idle_opened: usize,
    /// Time of each honest request, from sending to the whole answer.
    pub latencies: Vec<Duration>,
    /// Honest requests not answered 200: the status or the error.
    pub failures: Vec<String>,
    /// How long the honest client took for all its requests.
    pub honest_elapsed: Duration,
    /// Streams the attackers opened and reset, in all.
    pub resets_sent: u64,
    /// Of those, the ones sent while the honest client ran.
    pub resets_during_honest: u64,
    /// Connections the attackers opened (completed HTTP/2 handshakes).
    pub attack_connections: u64,
    /// How attacker connections ended, by what the client saw (`GOAWAY
    /// ENHANCE_YOUR_CALM`, `closed`, an I/O error, ...).
    pub attack_ends: BTreeMap<String, u64>,
    /// Capture's `/metrics` read just after the honest client finished,
    /// while the idle connections were still open and the attack running.
    pub metrics_during: String,
}

impl Outcome {
    /// The nearest-rank `p`-quantile (0..=1) of the honest latencies.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    /// Attacker connections that ended with a GOAWAY of `reason` from
    /// capture.
    pub fn goaways(&self, reason: &str) -> u64 {
        self.attack_ends
            .get(&format!("GOAWAY {reason}"))
            .copied()
            .unwrap_or(0)
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        format!(
            "idle {} | honest {} requests in {:.2?}: p50 {:.1?} p99 {:.1?} max {:.1?}, {} failed | \
             attackers: {} connections, {} resets sent ({} during the honest run), ends {:?}",
            self.idle_opened,
            self.latencies.len(),
            self.honest_elapsed,
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(1.0),
            self.failures.len(),
            self.attack_connections,
            self.resets_sent,
            self.resets_during_honest,
            self.attack_ends,
        )
    }
}

/// How an attacker connection that was still open when the attack stopped
/// is counted in [`Outcome::attack_ends`].
pub const OPEN_AT_STOP: &str = "open when the attack stopped";

/// Counters the attackers share.
#[derive(Default)]
struct Tally {
    resets: AtomicU64,
    connections: AtomicU64,
    ends: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn end(&self, how: String) {
        *self
            .ends
            .lock()
            .expect("tally lock")
            .entry(how)
            .or_default() += 1;
    }
}

/// Runs `attack` against capture at `address` and reports what happened.
/// The attack starts first (idle connections open, attackers resetting);
/// the honest client runs while it goes on.
pub fn run(address: SocketAddr, attack: &Attack) -> Outcome {
    let mut outcome = Outcome::default();
    let idle: Vec<TcpStream> = (0..attack.idle)
        .map(|n| {
            TcpStream::connect(address).unwrap_or_else(|err| panic!("idle connection {n}: {err}"))
        })
        .collect();
    outcome.idle_opened = idle.len();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let attackers = (attack.reset_connections > 0).then(|| {
        let stop = Arc::clone(&stop);
        let tally = Arc::clone(&tally);
        let attack = *attack;
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("attacker runtime");
            runtime.block_on(async move {
                let tasks: Vec<_> = (0..attack.reset_connections)
                    .map(|_| {
                        tokio::spawn(rapid_reset(
                            address,
                            (attack.burst, attack.pause),
                            Arc::clone(&stop),
                            Arc::clone(&tally),
                        ))
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("attacker task");
                }
            });
        })
    });
    if attackers.is_some() {
        // The honest client starts only once the attack is under way.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tally.resets.load(Ordering::Relaxed) < (attack.burst * 4) as u64 {
            assert!(
                Instant::now() < deadline,
                "the attackers sent only {} resets in 10 s",
                tally.resets.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    let resets_before = tally.resets.load(Ordering::Relaxed);
    let requests = attack.honest_requests;
    let honest = std::thread::spawn(move || honest_client(address, requests));
    let (latencies, failures, elapsed) = honest.join().expect("honest client");
    outcome.resets_during_honest = tally.resets.load(Ordering::Relaxed) - resets_before;
    outcome.latencies = latencies;
    outcome.failures = failures;
    outcome.honest_elapsed = elapsed;
    outcome.metrics_during = get(address, "/metrics").1;

    stop.store(true, Ordering::Relaxed);
    if let Some(attackers) = attackers {
        attackers.join().expect("attackers");
    }
    drop(idle);
    outcome.resets_sent = tally.resets.load(Ordering::Relaxed);
    outcome.attack_connections = tally.connections.load(Ordering::Relaxed);
    outcome.attack_ends = tally.ends.lock().expect("tally lock").clone();
    outcome
}

/// One rapid-reset attacker: connects, opens streams (`POST /e`, headers
/// only) and resets each at once, `burst` at a time with `pause` between
/// bursts, until capture closes the connection; then connects again, until
/// `stop`.
async fn rapid_reset(
    address: SocketAddr,
    (burst, pause): (usize, Duration),
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    while !stop.load(Ordering::Relaxed) {
        let tcp = match tokio::net::TcpStream::connect(address).await {
            Ok(tcp) => tcp,
            Err(err) => {
                tally.end(format!("connect failed: {}", err.kind()));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (mut client, connection) = match h2::client::handshake(tcp).await {
            Ok(handshake) => handshake,
            Err(err) => {
                tally.end(describe(&err));
                continue;
            }
        };
        tally.connections.fetch_add(1, Ordering::Relaxed);
        let driver = tokio::spawn(connection);
        'connection: while !stop.load(Ordering::Relaxed) {
            for _ in 0..burst {
                if std::future::poll_fn(|cx| client.poll_ready(cx))
                    .await
                    .is_err()
                {
                    break 'connection;
                }
                let request = http::Request::post(format!("http://{address}/e"))
                    .header("content-type", "application/json")
                    .body(())
                    .expect("request");
                match client.send_request(request, false) {
                    Ok((_response, mut stream)) => {
                        stream.send_reset(h2::Reason::CANCEL);
                        tally.resets.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break 'connection,
                }
            }
            // Lets the connection task write the burst out.
            if pause.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pause).await;
            }
        }
        let stopped = stop.load(Ordering::Relaxed);
        drop(client);
        let end = match tokio::time::timeout(Duration::from_secs(5), driver).await {
            _ if stopped => OPEN_AT_STOP.to_owned(),
            Ok(Ok(Ok(()))) => "closed".to_owned(),
            Ok(Ok(Err(err))) => describe(&err),
            Ok(Err(_)) => "connection task failed".to_owned(),
            Err(_) => "not closed 5 s after its last stream".to_owned(),
        };
        tally.end(end);
    }
}

/// A bounded description of how an HTTP/2 connection ended.
fn describe(err: &h2::Error) -> String {
    match (err.is_go_away(), err.reason(), err.get_io()) {
        (true, Some(reason), _) => format!("GOAWAY {reason:?}"),
        (false, Some(reason), _) => format!("reset {reason:?}"),
        (_, _, Some(io)) => format!("i/o error: {}", io.kind()),
        _ => "other error".to_owned(),
    }
}

/// Sends `requests` `/batch` requests one after the other on one keep-alive
/// HTTP/1.1 connection; returns each one's time, the failures, and the
/// total time.
fn honest_client(address: SocketAddr, requests: usize) -> (Vec<Duration>, Vec<String>, Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("honest runtime");
    runtime.block_on(async move {
        let client = reqwest::Client::builder()
            .http1_only()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let url = format!("http://{address}/batch");
        let events: Vec<serde_json::Value> = (0..10)
            .map(|n| serde_json::json!({"event": "$pageview", "distinct_id": format!("honest-{n}"), "properties": {"$current_url": "https://example.com/"}}))
            .collect();
        let body = serde_json::json!({"api_key": "phc_honest", "batch": events}).to_string();
        let mut latencies = Vec::with_capacity(requests);
        let mut failures = Vec::new();
        let started = Instant::now();
        for _ in 0..requests {
            let sent = Instant::now();
            let answer = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let outcome = match answer {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(_) if status == 200 => None,
                        Ok(_) => Some(format!("status {status}")),
                        Err(err) => Some(format!("reading the answer: {err}")),
                    }
                }
                Err(err) => Some(format!("sending: {err}")),
            };
            latencies.push(sent.elapsed());
            failures.extend(outcome);
        }
        (latencies, failures, started.elapsed())
    })
}

/// `GET path` on a new connection: the status and the body.
pub fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: capture\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    (status, body)
}

/// The value of an unlabelled metric in Prometheus text, if present.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Makes sure this process (and the capture it starts, which inherits the
/// limit) may open `needed` files, raising the soft limit to the hard one
/// with `prlimit` if it is lower.
pub fn ensure_open_files(needed: u64) {
    let soft = || {
        let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("a Max open files line")
            .to_owned();
        let mut fields = line
            .split_whitespace()
            .skip(3)
            .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
        (
            fields.next().unwrap_or(0),
            fields.next().unwrap_or(u64::MAX),
        )
    };
    let (current, hard) = soft();
    if current >= needed {
        return;
    }
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
    let (raised, _) = soft();
    assert!(
        raised >= needed,
        "this needs {needed} open files but the limit is {raised} (hard {hard}); raise `ulimit -n`"
    );
}
