//! Load benchmark: the real `capture` binary producing to a real
//! Kafka-protocol broker (tansu), next to a bare axum server that only reads
//! the body, under the same load.
//!
//! For each scenario (`/e` with one event per request, `/batch` with
//! `LOAD_BENCH_BATCH_SIZE` events per request) the bench starts a fresh
//! capture process on throwaway topics and a fresh bare server (this binary
//! re-executed with `LOAD_BENCH_ROLE=bare`), warms each up, then sends the
//! same bodies at the same concurrency to each and reports events/s, request
//! latency percentiles, the server process's CPU time per 1,000 events (from
//! `/proc/PID/stat`, read before and after the measured phase) and its peak
//! RSS (`VmHWM`). Finally it reads the topic back and checks that every
//! event capture acknowledged is there exactly once.
//!
//! It prints numbers and asserts nothing about timings. Settings, as
//! environment variables or as the flags they name after `--`
//! (`cargo bench -p capture --bench load -- --help` lists them;
//! `LOAD_BENCH_BATCH_REQUESTS` is `--batch-requests`):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LOAD_BENCH_REQUESTS` | 20000 | measured `/e` requests |
//! | `LOAD_BENCH_BATCH_REQUESTS` | 2000 | measured `/batch` requests |
//! | `LOAD_BENCH_WARMUP_PERCENT` | 10 | warm-up requests, as % of measured |
//! | `LOAD_BENCH_CONCURRENCY` | 32 | connections / in-flight requests |
//! | `LOAD_BENCH_BATCH_SIZE` | 100 | events per `/batch` request |
//! | `LOAD_BENCH_PARTITIONS` | 4 | partitions of the events topic |
//! | `LOAD_BENCH_SCENARIOS` | `e,batch` | which scenarios to run |
//! | `LOAD_BENCH_CAPTURE_ARGS` | (none) | extra capture flags, space-separated |
//! | `LOAD_BENCH_E_RATE` | 0 | pace `/e` to this many requests/s in total (0: as fast as the server answers) |
//! | `LOAD_BENCH_BATCH_RATE` | 0 | pace `/batch` likewise |
//! | `LOAD_BENCH_POLICIES` | 0 | 1: also run capture with quotas, rate limits, hot-key buckets and dedup on (a real `redis-server`), in the same run |
//! | `LOAD_BENCH_PLUGINS` | 0 | 1: also run capture with a realistic plugin pipeline (redact 5 keys, one drop rule, sampling), in the same run |
//! | `LOAD_BENCH_BARE_DELAY_MS` | 20 | also measure a bare server that answers this long after reading the body, as capture answers after the producer's linger (0: skip it) |
//! | `LOAD_BENCH_SLICES` | 10 | slices of the measured phase for the throughput spread |
//! | `LOAD_BENCH_IDLE_SECS` | 5 | seconds capture is watched idle first (0: skip it) |
//!
//! With `LOAD_BENCH_POLICIES=1` every event carries a client `uuid`, unique
//! per request sent (stamped into the body just before sending), so dedup
//! drops nothing; all three servers get the same stamped bodies. The quota
//! and rates are set far above the load, so every event is still produced
//! and checked in Kafka, while every check runs in full. The bench reports
//! the CPU overhead, the round trips per request (pipelines capture wrote,
//! from its `capture_redis_pipelines_total`) and the Redis commands per
//! request (from `INFO commandstats`).
//!
//! With `LOAD_BENCH_PLUGINS=1` capture also runs under a runtime config of
//! [`PIPELINE`]: `redact` of five keys (three present in every event, so
//! every event is rewritten), a `drop` rule on a property value, and
//! `sample` by distinct id. The rules are chosen so that every event is
//! kept (the sample rate of `$pageview` is 1, but each distinct id is still
//! hashed and compared), so the Kafka check still counts every event, and
//! the produced values must carry the redacted markers.
//!
//! Run with `cargo bench -p capture --bench load`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/proc.rs"]
mod proc;
#[path = "shared/settings.rs"]
mod settings;

use proc::{clock_ticks, cpu_time_ticks, peak_rss_kib};
use settings::env_or;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

const TOKEN: &str = "phc_LoadBench0123456789abcdefghijklmnopqrstu";
/// The plugin pipeline of `LOAD_BENCH_PLUGINS=1`.
const PIPELINE: &str = "version: 1
plugins:
  - redact: {keys: [email, $ip, $raw_user_agent, $referrer, utm_campaign]}
  - drop: {property: {key: $host, equals: internal.example.com}}
  - sample: {rate: 0.5, events: {$pageview: 1.0}}
";
/// The env var that turns this binary into the bare comparison server.
const ROLE_VAR: &str = "LOAD_BENCH_ROLE";

fn main() {
    if std::env::var(ROLE_VAR).as_deref() == Ok("bare") {
        bare::serve();
        return;
    }
    let settings = Settings::from(<Flags as clap::Parser>::parse());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(settings));
}

/// What to run, from [`Flags`].
#[derive(Debug, Clone)]
struct Settings {
    event_requests: usize,
    batch_requests: usize,
    warmup_percent: usize,
    concurrency: usize,
    batch_size: usize,
    partitions: i32,
    scenarios: Vec<String>,
    capture_args: Vec<String>,
    policies: bool,
    plugins: bool,
    event_rate: f64,
    batch_rate: f64,
    slices: usize,
    bare_delay: Duration,
    idle: Duration,
}

/// The bench's settings as flags (`cargo bench -p capture --bench load --
/// --requests 5000`) or their `LOAD_BENCH_*` variables; the table above.
#[derive(Debug, clap::Parser)]
#[command(about = "Load bench: capture beside a bare server, same load, CPU per event")]
struct Flags {
    /// Measured `/e` requests.
    #[arg(long, env = "LOAD_BENCH_REQUESTS", default_value_t = 20_000)]
    requests: usize,
    /// Measured `/batch` requests.
    #[arg(long, env = "LOAD_BENCH_BATCH_REQUESTS", default_value_t = 2_000)]
    batch_requests: usize,
    /// Warm-up requests, as % of measured.
    #[arg(long, env = "LOAD_BENCH_WARMUP_PERCENT", default_value_t = 10)]
    warmup_percent: usize,
    /// Connections / in-flight requests.
    #[arg(long, env = "LOAD_BENCH_CONCURRENCY", default_value_t = 32, value_parser = at_least_one)]
    concurrency: usize,
    /// Events per `/batch` request.
    #[arg(long, env = "LOAD_BENCH_BATCH_SIZE", default_value_t = 100, value_parser = at_least_one)]
    batch_size: usize,
    /// Partitions of the events topic.
    #[arg(long, env = "LOAD_BENCH_PARTITIONS", default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    /// Which scenarios to run, comma-separated: `e`, `batch`.
    #[arg(
        long,
        env = "LOAD_BENCH_SCENARIOS",
        default_value = "e,batch",
        value_delimiter = ','
    )]
    scenarios: Vec<String>,
    /// Extra capture flags, space-separated.
    #[arg(
        long,
        env = "LOAD_BENCH_CAPTURE_ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    capture_args: String,
    /// Pace `/e` to this many requests/s in total (0: as fast as the server answers).
    #[arg(long, env = "LOAD_BENCH_E_RATE", default_value_t = 0.0)]
    e_rate: f64,
    /// Pace `/batch` likewise.
    #[arg(long, env = "LOAD_BENCH_BATCH_RATE", default_value_t = 0.0)]
    batch_rate: f64,
    /// Also run capture with quotas, rate limits, hot-key buckets and dedup
    /// on (`LOAD_BENCH_POLICIES=1`).
    #[arg(long, env = "LOAD_BENCH_POLICIES", value_parser = clap::builder::FalseyValueParser::new())]
    policies: bool,
    /// Also run capture with a realistic plugin pipeline
    /// (`LOAD_BENCH_PLUGINS=1`).
    #[arg(long, env = "LOAD_BENCH_PLUGINS", value_parser = clap::builder::FalseyValueParser::new())]
    plugins: bool,
    /// Slices the measured phase is cut into for the throughput spread.
    #[arg(long, env = "LOAD_BENCH_SLICES", default_value_t = 10, value_parser = at_least_one)]
    slices: usize,
    /// Also measure a bare server answering this many ms after reading the body (0: skip it).
    #[arg(long, env = "LOAD_BENCH_BARE_DELAY_MS", default_value_t = 20)]
    bare_delay_ms: u64,
    /// Seconds capture is watched idle before the scenarios.
    #[arg(long, env = "LOAD_BENCH_IDLE_SECS", default_value_t = 5)]
    idle_secs: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

impl From<Flags> for Settings {
    fn from(flags: Flags) -> Self {
        Settings {
            event_requests: flags.requests,
            batch_requests: flags.batch_requests,
            warmup_percent: flags.warmup_percent,
            concurrency: flags.concurrency,
            batch_size: flags.batch_size,
            partitions: flags.partitions,
            scenarios: flags
                .scenarios
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            capture_args: flags
                .capture_args
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            policies: flags.policies,
            plugins: flags.plugins,
            event_rate: flags.e_rate,
            batch_rate: flags.batch_rate,
            slices: flags.slices,
            bare_delay: Duration::from_millis(flags.bare_delay_ms),
            idle: Duration::from_secs(flags.idle_secs),
        }
    }
}

impl Settings {
    fn warmup(&self, measured: usize) -> usize {
        (measured * self.warmup_percent / 100).max(self.concurrency)
    }
}

/// One endpoint under test.
struct Scenario {
    label: &'static str,
    path: &'static str,
    events_per_request: usize,
    requests: usize,
    warmup: usize,
    /// CPU ms per 1,000 events this capture should stay under.
    target_ms: f64,
    /// PostHog's own capture on these machines, for comparison.
    posthog_ms: f64,
    bodies: Arc<Vec<Bytes>>,
    /// Stamp a fresh uuid into every event of every request.
    stamp: bool,
    /// Requests per second to pace to, if any.
    rate: Option<f64>,
}

/// What one measured phase against one server produced.
#[derive(Debug, Clone)]
struct Measurement {
    ok_requests: usize,
    failed_requests: usize,
    first_failure: Option<String>,
    events: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    cpu_ms: f64,
    client_cpu_ms: f64,
    peak_rss_kib: Option<u64>,
}

impl Measurement {
    fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_1000(&self) -> f64 {
        if self.events == 0 {
            return f64::NAN;
        }
        self.cpu_ms * 1000.0 / self.events as f64
    }
}

/// The outcome of reading the topic back.
#[derive(Debug)]
struct KafkaCheck {
    expected: usize,
    read_back: usize,
    distinct_uuids: usize,
    /// Whether a second read found more than `expected` messages.
    extra: bool,
    shape_ok: bool,
    /// Events whose `$raw_user_agent` no longer holds the sent value (the
    /// plugin run redacts it).
    redacted: usize,
    read_time: Duration,
}

impl KafkaCheck {
    fn ok(&self) -> bool {
        self.read_back == self.expected
            && self.distinct_uuids == self.expected
            && !self.extra
            && self.shape_ok
    }
}

struct ScenarioResult {
    label: &'static str,
    events_per_request: usize,
    target_ms: f64,
    posthog_ms: f64,
    capture: Measurement,
    bare: Measurement,
    /// The bare server answering `bare_delay` after reading the body.
    bare_delayed: Option<(Duration, Measurement)>,
    kafka: KafkaCheck,
    policies: Option<PolicyRun>,
    plugins: Option<(Measurement, KafkaCheck)>,
}

/// Capture with every policy on, measured in the same run.
struct PolicyRun {
    capture: Measurement,
    kafka: KafkaCheck,
    /// Redis commands per request sent (warm-up included), by command.
    commands_per_request: Vec<(String, f64)>,
    /// redis-server CPU over warm-up and measured phase, per 1,000 events.
    redis_cpu_per_1000: f64,
    /// Socket reads redis-server made per request sent: every round trip
    /// needs at least one, and a pipeline longer than Redis's 16 KB read
    /// buffer several.
    reads_per_request: f64,
    /// Pipelines capture wrote to Redis per request sent: its round trips.
    pipelines_per_request: f64,
}

async fn run(settings: Settings) {
    let ticks = clock_ticks();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu_model = cpu_model();
    let stamp = settings.policies;
    let event_bodies = Arc::new(
        (0..1_000)
            .map(|n| single_event_body(n, stamp))
            .collect::<Vec<_>>(),
    );
    let batch_bodies = Arc::new(
        (0..20)
            .map(|i| batch_body(i, settings.batch_size, stamp))
            .collect::<Vec<_>>(),
    );
    let avg_event = event_bodies.iter().map(Bytes::len).sum::<usize>() / event_bodies.len();
    let avg_batch = batch_bodies.iter().map(Bytes::len).sum::<usize>() / batch_bodies.len();
    println!("capture load bench");
    println!(
        "  machine: {cpus} CPUs ({cpu_model}), CLK_TCK {ticks}, load average {}",
        load_average()
    );
    println!(
        "  load: {} connections, /e body ~{avg_event} B, /batch body ~{avg_batch} B ({} events), {} partitions",
        settings.concurrency, settings.batch_size, settings.partitions
    );
    if !settings.capture_args.is_empty() {
        println!("  extra capture flags: {}", settings.capture_args.join(" "));
    }
    for (label, rate) in [("/e", settings.event_rate), ("/batch", settings.batch_rate)] {
        if rate > 0.0 {
            println!("  {label} paced to {rate} requests/s");
        }
    }

    if !settings.idle.is_zero() {
        measure_idle(&settings, ticks).await;
    }
    let mut results = Vec::new();
    for name in &settings.scenarios {
        let scenario = match name.as_str() {
            "e" => Scenario {
                label: "/e",
                path: "/e",
                events_per_request: 1,
                requests: settings.event_requests,
                warmup: settings.warmup(settings.event_requests),
                target_ms: 25.0,
                posthog_ms: 75.0,
                bodies: Arc::clone(&event_bodies),
                stamp,
                rate: (settings.event_rate > 0.0).then_some(settings.event_rate),
            },
            "batch" => Scenario {
                label: "/batch",
                path: "/batch",
                events_per_request: settings.batch_size,
                requests: settings.batch_requests,
                warmup: settings.warmup(settings.batch_requests),
                target_ms: 8.0,
                posthog_ms: 23.0,
                bodies: Arc::clone(&batch_bodies),
                stamp,
                rate: (settings.batch_rate > 0.0).then_some(settings.batch_rate),
            },
            other => panic!("unknown scenario {other:?} in LOAD_BENCH_SCENARIOS (use e, batch)"),
        };
        results.push(run_scenario(&settings, &scenario, ticks).await);
    }
    report(&results);
    println!("load average at the end: {}", load_average());
}

async fn run_scenario(settings: &Settings, scenario: &Scenario, ticks: f64) -> ScenarioResult {
    println!(
        "\n[{}] {} warm-up + {} measured requests per server, {} event(s) each",
        scenario.label, scenario.warmup, scenario.requests, scenario.events_per_request
    );
    if settings.policies {
        println!(
            "  capture without and with policies run side by side, measured in {} alternating slices each",
            settings.slices
        );
    }
    let extra: Vec<String> = settings.capture_args.clone();
    let ((measured, kafka), policies) = if settings.policies {
        let (plain, policies) = run_with_policies(settings, scenario, ticks).await;
        (plain, Some(policies))
    } else {
        (
            run_capture("capture", settings, scenario, ticks, &extra).await,
            None,
        )
    };
    let plugins = if settings.plugins {
        let document = tempfile::NamedTempFile::new().expect("runtime config file");
        std::fs::write(document.path(), PIPELINE).expect("write the runtime config");
        let mut extra = settings.capture_args.clone();
        extra.push("--runtime-config".into());
        extra.push(document.path().display().to_string());
        Some(run_capture("plugins", settings, scenario, ticks, &extra).await)
    } else {
        None
    };

    let bare_measured = run_bare("bare", Duration::ZERO, scenario, settings, ticks).await;
    let bare_delayed = if settings.bare_delay.is_zero() {
        None
    } else {
        let measured = run_bare("bare+wait", settings.bare_delay, scenario, settings, ticks).await;
        Some((settings.bare_delay, measured))
    };
    ScenarioResult {
        label: scenario.label,
        events_per_request: scenario.events_per_request,
        target_ms: scenario.target_ms,
        posthog_ms: scenario.posthog_ms,
        capture: measured,
        bare: bare_measured,
        bare_delayed,
        kafka,
        policies,
        plugins,
    }
}

/// CPU of a capture process that has started and gets no requests: what a
/// replica costs before any traffic (the producer's polling thread, the
/// health checks, timers).
async fn measure_idle(settings: &Settings, ticks: f64) {
    let running = Running::start(settings, &settings.capture_args).await;
    let pid = running.capture.pid();
    // Past the start-up work (metadata, connections).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_time_ticks(pid);
    tokio::time::sleep(settings.idle).await;
    let used_ms = (cpu_time_ticks(pid) - before) as f64 * 1000.0 / ticks;
    println!(
        "  idle capture: {:.1} ms CPU per second with no requests ({used_ms:.0} ms in {} s)",
        used_ms / settings.idle.as_secs_f64(),
        settings.idle.as_secs()
    );
    let mut capture = running.capture;
    tokio::task::spawn_blocking(move || capture.terminate())
        .await
        .expect("terminate capture");
}

/// A fresh bare server answering `delay` after each body: warm-up and
/// measured phase.
async fn run_bare(
    label: &str,
    delay: Duration,
    scenario: &Scenario,
    settings: &Settings,
    ticks: f64,
) -> Measurement {
    let bare = bare::Bare::start(delay);
    let (_, measured) = warm_and_measure(
        &bare.url(scenario.path),
        scenario,
        bare.pid(),
        settings,
        ticks,
    )
    .await;
    print_line(label, &measured);
    measured
}

/// One capture process on fresh topics: warm-up, measured phase, stop, and
/// the Kafka read-back.
async fn run_capture(
    name: &str,
    settings: &Settings,
    scenario: &Scenario,
    ticks: f64,
    extra: &[String],
) -> (Measurement, KafkaCheck) {
    let running = Running::start(settings, extra).await;
    let (warm_ok, measured) = warm_and_measure(
        &running.capture.url(scenario.path),
        scenario,
        running.capture.pid(),
        settings,
        ticks,
    )
    .await;
    print_line(name, &measured);
    let kafka = running
        .stop(name, scenario, warm_ok + measured.ok_requests)
        .await;
    (measured, kafka)
}

/// A capture process on its own fresh topics.
struct Running {
    topics: common::Topics,
    capture: common::Capture,
}

impl Running {
    async fn start(settings: &Settings, extra: &[String]) -> Running {
        let topics = common::Topics::create(settings.partitions).await;
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let capture = common::capture_for(&topics, &extra);
        Running { topics, capture }
    }

    /// Stops capture (SIGTERM flushes the producer) and reads its events
    /// topic back, expecting the events of `ok_requests` requests.
    async fn stop(self, name: &str, scenario: &Scenario, ok_requests: usize) -> KafkaCheck {
        let Running {
            topics,
            mut capture,
        } = self;
        let status = tokio::task::spawn_blocking(move || capture.terminate())
            .await
            .expect("terminate capture");
        if !status.success() {
            println!("  {name} exited with {status}");
        }
        let expected = ok_requests * scenario.events_per_request;
        let topic = topics.events.clone();
        let kafka = tokio::task::spawn_blocking(move || check_topic(&topic, expected))
            .await
            .expect("read the topic back");
        println!(
            "  kafka ({name}): {} of {} acknowledged events read back in {:.1} s, {} distinct uuids, {}, values well-formed: {}: {}",
            kafka.read_back,
            kafka.expected,
            kafka.read_time.as_secs_f64(),
            kafka.distinct_uuids,
            if kafka.extra {
                "EXTRA messages found"
            } else {
                "no extra messages"
            },
            kafka.shape_ok,
            if kafka.ok() { "OK" } else { "MISMATCH" }
        );
        kafka
    }
}

/// Capture with no policy, and capture with quotas, cluster-wide rate
/// limits, hot-key buckets and dedup on against a fresh `redis-server`
/// (limits far above the load), both running at once and measured in
/// alternating slices.
async fn run_with_policies(
    settings: &Settings,
    scenario: &Scenario,
    ticks: f64,
) -> ((Measurement, KafkaCheck), PolicyRun) {
    let redis = common::redis::RedisServer::start();
    let status = Command::new(env!("CARGO_BIN_EXE_capture"))
        .args([
            "quota",
            "--redis-url",
            &redis.url(),
            "set",
            "--token",
            TOKEN,
        ])
        .args(["--limit", "events=1000000000000", "--window", "events=1d"])
        .status()
        .expect("run capture quota set");
    assert!(status.success(), "capture quota set failed");
    let mut extra = settings.capture_args.clone();
    extra.extend(
        [
            "--redis-url",
            &redis.url(),
            "--dedup",
            "--rate-limit",
            "100000000",
            "--rate-limit-burst",
            "100000000",
            "--hot-key-rate",
            "100000000",
            "--hot-key-burst",
            "1000000",
        ]
        .map(str::to_owned),
    );
    let commands_before = redis_commands(&redis);
    let reads_before = redis_reads(&redis);
    let (memory_before, keys_before) = redis_memory(&redis);
    let redis_cpu_before = cpu_time_ticks(redis.pid());
    let plain = Running::start(settings, &settings.capture_args).await;
    let policies = Running::start(settings, &extra).await;
    let servers = [
        (plain.capture.url(scenario.path), plain.capture.pid()),
        (policies.capture.url(scenario.path), policies.capture.pid()),
    ];
    let (warm_ok, measured) =
        measure_interleaved(&servers, scenario, settings, ticks, settings.slices).await;
    print_line("capture", &measured[0]);
    print_line("policies", &measured[1]);
    let redis_cpu = (cpu_time_ticks(redis.pid()) - redis_cpu_before) as f64 * 1000.0 / ticks;
    let commands_after = redis_commands(&redis);
    let reads = redis_reads(&redis).saturating_sub(reads_before);
    // Counted from the start, like the reads: warm-up included.
    let pipelines = counter(
        &policies.capture.url("/metrics"),
        "capture_redis_pipelines_total",
    )
    .await;
    // Every event left a dedup marker (their TTL outlasts the run); the
    // other keys (counter, rate state, settings) are a handful.
    let (memory_after, keys_after) = redis_memory(&redis);
    let markers = keys_after.saturating_sub(keys_before);
    let per_marker = memory_after.saturating_sub(memory_before) as f64 / markers.max(1) as f64;
    println!(
        "  redis: {markers} keys added, used_memory +{:.1} MiB: {per_marker:.0} bytes per dedup marker = {:.0} MB per million events within the TTL",
        memory_after.saturating_sub(memory_before) as f64 / 1_048_576.0,
        per_marker,
    );
    let plain_kafka = plain
        .stop("capture", scenario, warm_ok[0] + measured[0].ok_requests)
        .await;
    let kafka = policies
        .stop("policies", scenario, warm_ok[1] + measured[1].ok_requests)
        .await;
    let requests = kafka.expected / scenario.events_per_request;
    let mut commands_per_request: Vec<(String, f64)> = commands_after
        .iter()
        .map(|(name, after)| {
            let before = commands_before.get(name).copied().unwrap_or(0);
            (
                name.clone(),
                (after - before) as f64 / requests.max(1) as f64,
            )
        })
        .filter(|(name, per)| *per > 0.0 && name != "info")
        .collect();
    commands_per_request.sort_by(|a, b| b.1.total_cmp(&a.1));
    let listed: Vec<String> = commands_per_request
        .iter()
        .map(|(name, per)| format!("{name} {per:.4}"))
        .collect();
    println!(
        "  redis: commands per request (script-internal ones included): {}; redis-server CPU {:.2} ms/1k events",
        listed.join(", "),
        redis_cpu * 1000.0 / kafka.expected.max(1) as f64
    );
    let [plain_measured, policies_measured] = measured;
    (
        (plain_measured, plain_kafka),
        PolicyRun {
            capture: policies_measured,
            redis_cpu_per_1000: redis_cpu * 1000.0 / kafka.expected.max(1) as f64,
            reads_per_request: reads as f64 / requests.max(1) as f64,
            pipelines_per_request: pipelines as f64 / requests.max(1) as f64,
            kafka,
            commands_per_request,
        },
    )
}

/// `used_memory` and the number of keys.
fn redis_memory(redis: &common::redis::RedisServer) -> (u64, u64) {
    let used = redis
        .cli(&["info", "memory"])
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let keys = redis.cli(&["dbsize"]).trim().parse().unwrap_or(0);
    (used, keys)
}

/// The value of the unlabelled counter `name` on the `/metrics` page at
/// `url` (0 when absent).
async fn counter(url: &str, name: &str) -> u64 {
    let page = reqwest::get(url)
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("metrics text");
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// `total_reads_processed` of `INFO stats`: socket reads, all clients.
fn redis_reads(redis: &common::redis::RedisServer) -> u64 {
    redis
        .cli(&["info", "stats"])
        .lines()
        .find_map(|line| line.strip_prefix("total_reads_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `INFO commandstats` call counts by command.
fn redis_commands(redis: &common::redis::RedisServer) -> std::collections::BTreeMap<String, u64> {
    redis
        .cli(&["info", "commandstats"])
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn http_client(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// The measured phase: CPU and wall time around one run of the load.
/// Warms the server at `url` up, then measures it in one slice; returns the
/// warm-up's successful requests and the measurement.
async fn warm_and_measure(
    url: &str,
    scenario: &Scenario,
    pid: u32,
    settings: &Settings,
    ticks: f64,
) -> (usize, Measurement) {
    let ([warm_ok], [measured]) =
        measure_interleaved(&[(url.to_owned(), pid)], scenario, settings, ticks, 1).await;
    (warm_ok, measured)
}

/// Warms each of `servers` (url, pid) up, then measures them in `slices`
/// rounds: each round sends a slice of the measured
/// requests to each server in turn, the order reversed every other round
/// (A B, B A, ...), so a change in the machine's speed during the run
/// weighs on both alike. Returns each server's warm-up successes and its
/// slices summed into one measurement.
async fn measure_interleaved<const N: usize>(
    servers: &[(String, u32); N],
    scenario: &Scenario,
    settings: &Settings,
    ticks: f64,
    slices: usize,
) -> ([usize; N], [Measurement; N]) {
    let clients: Vec<reqwest::Client> = servers
        .iter()
        .map(|_| http_client(settings.concurrency))
        .collect();
    let mut warm_ok = [0; N];
    for (i, (url, _)) in servers.iter().enumerate() {
        let warm = drive(
            &clients[i],
            url,
            scenario,
            scenario.warmup,
            settings.concurrency,
        )
        .await;
        warm_ok[i] = warm.ok;
    }
    let own_pid = std::process::id();
    let mut totals: [(Load, Duration, u64, u64); N] = std::array::from_fn(|_| {
        (
            Load {
                ok: 0,
                failed: 0,
                first_failure: None,
                latencies: Vec::with_capacity(scenario.requests),
            },
            Duration::ZERO,
            0,
            0,
        )
    });
    let slices = slices.min(scenario.requests).max(1);
    for round in 0..slices {
        let requests =
            scenario.requests * (round + 1) / slices - scenario.requests * round / slices;
        let mut order: Vec<usize> = (0..N).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (url, pid) = &servers[i];
            let cpu_before = cpu_time_ticks(*pid);
            let own_before = cpu_time_ticks(own_pid);
            let started = Instant::now();
            let load = drive(&clients[i], url, scenario, requests, settings.concurrency).await;
            let (total, elapsed, cpu, own) = &mut totals[i];
            *elapsed += started.elapsed();
            *cpu += cpu_time_ticks(*pid) - cpu_before;
            *own += cpu_time_ticks(own_pid) - own_before;
            total.ok += load.ok;
            total.failed += load.failed;
            total.first_failure = total.first_failure.take().or(load.first_failure);
            total.latencies.extend(load.latencies);
        }
    }
    let measured = std::array::from_fn(|i| {
        let (load, elapsed, cpu, own) = &mut totals[i];
        load.latencies.sort_unstable();
        Measurement {
            ok_requests: load.ok,
            failed_requests: load.failed,
            first_failure: load.first_failure.take(),
            events: load.ok * scenario.events_per_request,
            elapsed: *elapsed,
            p50: percentile(&load.latencies, 50.0),
            p99: percentile(&load.latencies, 99.0),
            cpu_ms: *cpu as f64 * 1000.0 / ticks,
            client_cpu_ms: *own as f64 * 1000.0 / ticks,
            peak_rss_kib: peak_rss_kib(servers[i].1),
        }
    });
    (warm_ok, measured)
}

/// What one run of the load produced.
struct Load {
    ok: usize,
    failed: usize,
    first_failure: Option<String>,
    latencies: Vec<Duration>,
}

/// Sends `requests` requests to `url` from `concurrency` workers, each with
/// one request in flight at a time, cycling through the scenario's bodies.
async fn drive(
    client: &reqwest::Client,
    url: &str,
    scenario: &Scenario,
    requests: usize,
    concurrency: usize,
) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let next = Arc::clone(&next);
        let client = client.clone();
        let url = url.to_owned();
        let bodies = Arc::clone(&scenario.bodies);
        let (stamp, per_request, rate) =
            (scenario.stamp, scenario.events_per_request, scenario.rate);
        workers.push(tokio::spawn(async move {
            let mut load = Load {
                ok: 0,
                failed: 0,
                first_failure: None,
                latencies: Vec::with_capacity(requests / concurrency + 1),
            };
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= requests {
                    break;
                }
                if let Some(rate) = rate {
                    tokio::time::sleep_until(start + Duration::from_secs_f64(index as f64 / rate))
                        .await;
                }
                let mut body = bodies[index % bodies.len()].clone();
                if stamp {
                    body = stamp_uuids(&body, per_request);
                }
                let started = Instant::now();
                let outcome = send(&client, &url, body).await;
                load.latencies.push(started.elapsed());
                match outcome {
                    Ok(()) => load.ok += 1,
                    Err(failure) => {
                        load.failed += 1;
                        load.first_failure.get_or_insert(failure);
                    }
                }
            }
            load
        }));
    }
    let mut total = Load {
        ok: 0,
        failed: 0,
        first_failure: None,
        latencies: Vec::with_capacity(requests),
    };
    for worker in workers {
        let load = worker.await.expect("load worker");
        total.ok += load.ok;
        total.failed += load.failed;
        total.first_failure = total.first_failure.or(load.first_failure);
        total.latencies.extend(load.latencies);
    }
    total
}

async fn send(client: &reqwest::Client, url: &str, body: Bytes) -> Result<(), String> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|err| format!("request failed: {err}"))?;
    let status = response.status();
    let text = response
        .bytes()
        .await
        .map_err(|err| format!("reading the response failed: {err}"))?;
    if status == reqwest::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&text)))
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages: how busy the shared
/// machine was, for reading the numbers.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Reads the topic back and checks every acknowledged event is there once:
/// a first read waits for `expected` messages, a second one looks for more
/// (a duplicate or a stray message) for as long as the first read took.
fn check_topic(topic: &str, expected: usize) -> KafkaCheck {
    let started = Instant::now();
    let timeout = Duration::from_secs(60 + (expected / 1_000) as u64);
    let records = common::read_topic(topic, expected, timeout);
    let read_time = started.elapsed();
    let mut uuids: Vec<&str> = records
        .iter()
        .filter_map(|r| r.value["uuid"].as_str())
        .collect();
    uuids.sort_unstable();
    uuids.dedup();
    let shape_ok = records.iter().all(|r| {
        r.value["token"] == TOKEN
            && r.value["event"] == "$pageview"
            && r.headers.get("token").map(String::as_str) == Some(TOKEN)
            && r.key.as_deref().is_some_and(|k| k.starts_with(TOKEN))
    });
    let redacted = records
        .iter()
        .filter(|r| {
            r.data()["properties"]["$raw_user_agent"]
                .as_str()
                .is_none_or(|ua| !ua.starts_with("Mozilla/5.0"))
        })
        .count();
    let extra = records.len() == expected
        && common::read_topic(topic, expected + 1, read_time * 2 + Duration::from_secs(2)).len()
            > expected;
    KafkaCheck {
        expected,
        read_back: records.len(),
        distinct_uuids: uuids.len(),
        extra,
        shape_ok,
        redacted,
        read_time,
    }
}

fn print_line(server: &str, m: &Measurement) {
    println!(
        "  {server:<9} {:>9.0} events/s  p50 {:>7.2} ms  p99 {:>7.2} ms  CPU {:>7.0} ms = {:>6.2} ms/1k events  peak RSS {}  (load generator CPU {:.0} ms)",
        m.events_per_second(),
        millis(m.p50),
        millis(m.p99),
        m.cpu_ms,
        m.cpu_per_1000(),
        rss_text(m.peak_rss_kib),
        m.client_cpu_ms,
    );
    if m.cpu_ms < 200.0 {
        println!(
            "  {server:<9} note: CPU time is counted in clock ticks (10 ms at CLK_TCK 100); under 200 ms it is imprecise, raise the request counts"
        );
    }
    if m.failed_requests > 0 {
        println!(
            "  {server:<9} {} of {} requests failed; first: {}",
            m.failed_requests,
            m.failed_requests + m.ok_requests,
            m.first_failure.as_deref().unwrap_or("?")
        );
    }
}

/// `cpu` (ms per 1,000 events) as a multiple of `base`'s.
fn cpu_ratio(cpu: f64, base: &Measurement) -> String {
    if base.cpu_ms > 0.0 {
        format!("{:.1}x", cpu / base.cpu_per_1000())
    } else {
        "n/a (CPU below one clock tick)".into()
    }
}

fn report(results: &[ScenarioResult]) {
    println!("\nsummary (CPU = utime+stime of the server process during the measured phase)");
    println!(
        "{:<16} {:>10} {:>9} {:>9} {:>12} {:>9} {:>10} {:>8}",
        "server", "events/s", "p50 ms", "p99 ms", "CPU ms/1k ev", "peak RSS", "target", "PostHog"
    );
    for r in results {
        let mut rows: Vec<(String, &Measurement, bool)> =
            vec![("capture".into(), &r.capture, true)];
        if let Some(p) = &r.policies {
            rows.push(("+policies".into(), &p.capture, true));
        }
        if let Some((m, _)) = &r.plugins {
            rows.push(("+plugins".into(), m, true));
        }
        rows.push(("bare axum".into(), &r.bare, false));
        if let Some((delay, m)) = &r.bare_delayed {
            rows.push((format!("bare +{}ms", delay.as_millis()), m, false));
        }
        for (server, m, is_capture) in rows {
            let (target, posthog) = if is_capture {
                (
                    format!("<= {:.0}", r.target_ms),
                    format!("{:.0}", r.posthog_ms),
                )
            } else {
                (String::new(), String::new())
            };
            println!(
                "{:<16} {:>10.0} {:>9.2} {:>9.2} {:>12.2} {:>9} {:>10} {:>8}",
                format!("{server} {}", r.label),
                m.events_per_second(),
                millis(m.p50),
                millis(m.p99),
                m.cpu_per_1000(),
                rss_text(m.peak_rss_kib),
                target,
                posthog,
            );
        }
    }
    println!();
    for r in results {
        let cpu = r.capture.cpu_per_1000();
        let verdict = if cpu <= r.target_ms { "MET" } else { "NOT MET" };
        println!(
            "{:<7} capture {cpu:.2} ms CPU per 1k events vs target {:.0}: {verdict}; capture/bare CPU ratio {}{}; {} event(s)/request; kafka check {}",
            r.label,
            r.target_ms,
            cpu_ratio(cpu, &r.bare),
            match &r.bare_delayed {
                Some((delay, m)) => format!(
                    ", to bare answering after {} ms {}",
                    delay.as_millis(),
                    cpu_ratio(cpu, m)
                ),
                None => String::new(),
            },
            r.events_per_request,
            if r.kafka.ok() { "OK" } else { "MISMATCH" },
        );
        if let Some(p) = &r.policies {
            let on = p.capture.cpu_per_1000();
            let overhead = (on / cpu - 1.0) * 100.0;
            let per = |names: &[&str]| -> f64 {
                p.commands_per_request
                    .iter()
                    .filter(|(name, _)| names.contains(&name.as_str()))
                    .map(|(_, per)| per)
                    .sum()
            };
            // Round trips are the pipelines capture wrote (one pipeline of
            // several requests' checks and commits is one round trip);
            // redis-server's socket reads are printed beside them (a
            // pipeline longer than its 16 KB buffer takes several). Script
            // calls per request too: one check per request, commits of
            // many requests in one call, SCRIPT LOAD once per server that
            // meets NOSCRIPT.
            println!(
                "{:<7} policies on: {on:.2} ms CPU per 1k events, {overhead:+.1}% vs off (target <= +20%: {}); {:.3} Redis round trips per request (pipelines; target <= 1: {}), {:.3} socket reads; {:.3} script calls per request ({:.3} of them SCRIPT LOAD on first use); redis-server {:.2} ms/1k events; kafka check {}",
                r.label,
                if overhead <= 20.0 { "MET" } else { "NOT MET" },
                p.pipelines_per_request,
                if p.pipelines_per_request <= 1.0 {
                    "MET"
                } else {
                    "NOT MET"
                },
                p.reads_per_request,
                per(&["evalsha", "eval", "script|load"]),
                per(&["script|load"]),
                p.redis_cpu_per_1000,
                if p.kafka.ok() { "OK" } else { "MISMATCH" },
            );
        }
        if let Some((m, kafka)) = &r.plugins {
            let on = m.cpu_per_1000();
            let overhead = (on / cpu - 1.0) * 100.0;
            println!(
                "{:<7} plugins on (redact 5 keys, 1 drop rule, sampling): {on:.2} ms CPU per 1k events, {overhead:+.1}% vs none (target <= +15%: {}); kafka check {}, {} of {} values redacted",
                r.label,
                if overhead <= 15.0 { "MET" } else { "NOT MET" },
                if kafka.ok() { "OK" } else { "MISMATCH" },
                kafka.redacted,
                kafka.read_back,
            );
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rss_text(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "?".into(),
        |kib| format!("{:.0} MiB", kib as f64 / 1024.0),
    )
}

/// A small deterministic generator, so every run sends the same bodies.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn pseudo_uuid(seed: u64) -> String {
    let high = u128::from(mix(seed));
    let low = u128::from(mix(seed ^ 0xDEAD_BEEF));
    uuid::Uuid::from_u128((high << 64) | low).to_string()
}

/// One `$pageview` as posthog-js sends it: about 1.2 KB of JSON.
/// `with_token` puts the project token in the event (single-event bodies).
fn event(n: u64, with_token: bool) -> Value {
    let r = mix(n);
    let user = r % 5_000;
    let pages = [
        "/project/1/insights/abc123",
        "/project/1/dashboard/42",
        "/project/1/persons",
        "/project/1/replay/recent",
        "/pricing",
        "/docs/libraries/js",
    ];
    let path = pages[(r >> 8) as usize % pages.len()];
    let browsers = [
        ("Chrome", 125),
        ("Firefox", 126),
        ("Safari", 17),
        ("Edge", 124),
    ];
    let (browser, version) = browsers[(r >> 16) as usize % browsers.len()];
    let millis = 1_717_243_200_000 + (n % 86_400_000);
    let timestamp = chrono::DateTime::from_timestamp_millis(millis as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut event = json!({
        "event": "$pageview",
        "distinct_id": format!("user-{user}"),
        "timestamp": timestamp,
        "properties": {
            "$os": "Mac OS X",
            "$os_version": "14.5.0",
            "$browser": browser,
            "$browser_version": version,
            "$device_type": "Desktop",
            "$current_url": format!("https://app.example.com{path}?tab=trends&n={n}"),
            "$host": "app.example.com",
            "$pathname": path,
            "$raw_user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
            "$screen_height": 1117,
            "$screen_width": 1728,
            "$viewport_height": 959,
            "$viewport_width": 1728,
            "$lib": "web",
            "$lib_version": "1.139.0",
            "$insert_id": format!("{:016x}", mix(n ^ 7)),
            "$time": millis as f64 / 1000.0,
            "$device_id": pseudo_uuid(user),
            "$session_id": pseudo_uuid(user ^ 0xABCD),
            "$window_id": pseudo_uuid(user ^ 0x1234),
            "$pageview_id": pseudo_uuid(n),
            "$referrer": "https://www.google.com/",
            "$referring_domain": "www.google.com",
            "$active_feature_flags": ["new-onboarding", "insights-v2"],
            "$feature/new-onboarding": true,
            "$feature/insights-v2": "test",
            "utm_source": "newsletter",
            "utm_medium": "email",
            "utm_campaign": "june-launch",
            "$is_identified": true,
            "$process_person_profile": true,
            "title": "Insights • PostHog",
        },
    });
    if with_token {
        event["token"] = Value::from(TOKEN);
    }
    event
}

/// The uuid every event carries when stamping; its last 12 hex digits are
/// replaced per request.
const UUID_TEMPLATE: &str = "0190b0e1-0000-7000-8000-000000000000";

fn with_uuid(mut event: Value, stamp: bool) -> Value {
    if stamp {
        event["uuid"] = Value::from(UUID_TEMPLATE);
    }
    event
}

fn single_event_body(n: u64, stamp: bool) -> Bytes {
    Bytes::from(with_uuid(event(n, true), stamp).to_string())
}

fn batch_body(index: u64, size: usize, stamp: bool) -> Bytes {
    let first = 1_000_000 + index * size as u64;
    let batch: Vec<Value> = (first..first + size as u64)
        .map(|n| with_uuid(event(n, false), stamp))
        .collect();
    let body = json!({
        "api_key": TOKEN,
        "batch": batch,
        "sent_at": "2024-06-01T12:00:00.000Z",
    });
    Bytes::from(body.to_string())
}

/// Next id to stamp; process-wide so no two events sent ever share a uuid.
static NEXT_UUID: AtomicUsize = AtomicUsize::new(1);

/// A copy of `body` with each event's template uuid made unique.
fn stamp_uuids(body: &Bytes, events: usize) -> Bytes {
    let prefix = &UUID_TEMPLATE.as_bytes()[..24];
    let mut out = body.to_vec();
    let first = NEXT_UUID.fetch_add(events, Ordering::Relaxed);
    let mut stamped = 0;
    for (id, at) in (first..).zip(memchr::memmem::find_iter(body, prefix)) {
        let digits = format!("{id:012x}");
        out[at + 24..at + 36].copy_from_slice(digits.as_bytes());
        stamped += 1;
    }
    assert_eq!(stamped, events, "every event carries the template uuid");
    Bytes::from(out)
}

/// The comparison server: axum that reads the body and answers 200, in its
/// own process so its CPU is measured the same way as capture's. Started
/// with a delay, it answers that long after reading the body: the same
/// load shape as capture waiting for Kafka, with none of the work.
mod bare {
    use super::*;

    use axum::Router;
    use axum::extract::{DefaultBodyLimit, State};
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use axum::serve::ListenerExt;

    /// The env var that carries the delay to the child, in milliseconds.
    const DELAY_VAR: &str = "LOAD_BENCH_BARE_ANSWER_AFTER_MS";

    /// Runs the server; prints its address on stdout, exits when stdin closes.
    pub fn serve() {
        let delay = Duration::from_millis(env_or(DELAY_VAR, 0));
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the bare server");
            println!("{}", listener.local_addr().expect("local address"));
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let app = Router::new()
                .route("/e", post(read_body))
                .route("/batch", post(read_body))
                .layer(DefaultBodyLimit::max(20_000_000))
                .with_state(delay);
            axum::serve(listener, app).await.expect("serve");
        });
    }

    async fn read_body(State(delay): State<Duration>, body: Bytes) -> impl IntoResponse {
        std::hint::black_box(body.len());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"status":"Ok"}"#,
        )
    }

    /// The bare server as a child process of the bench.
    pub struct Bare {
        child: Child,
        address: SocketAddr,
        _lifeline: ChildStdin,
    }

    impl Bare {
        /// Starts it; it answers `delay` after reading each body.
        pub fn start(delay: Duration) -> Bare {
            let exe = std::env::current_exe().expect("path of the bench binary");
            let mut child = Command::new(exe)
                .env(ROLE_VAR, "bare")
                .env(DELAY_VAR, delay.as_millis().to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn the bare server");
            let lifeline = child.stdin.take().expect("piped stdin");
            let stdout = child.stdout.take().expect("piped stdout");
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .expect("read the bare server's address");
            let address = line
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bare server printed {line:?}, not an address"));
            Bare {
                child,
                address,
                _lifeline: lifeline,
            }
        }

        pub fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.address)
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }
    }

    impl Drop for Bare {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
