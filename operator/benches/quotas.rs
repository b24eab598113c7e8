//! Reconciling many CaptureQuotas: time, Kubernetes API calls and Redis
//! work to bring N quotas (default 1,000) from a cold start to synced, then
//! for one resync of all of them when nothing changed (target: no writes,
//! neither to the API nor to Redis).
//!
//! The quota reconciler runs as the controller would run it: each quota is
//! reconciled again after every write to it (the watch event the write
//! causes) until a reconcile leaves it unchanged. The Kubernetes API is the
//! in-memory one of the tests (no network latency: the time is the
//! operator's own work plus Redis round trips); Redis is a real
//! `redis-server`.
//!
//! Run: `cargo bench -p operator --bench quotas`
//! (`QUOTA_BENCH_COUNT`, `QUOTA_BENCH_CONCURRENCY` to change the shape).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::memory::MemoryApi;
use common::redis::RedisServer;
use futures::StreamExt;
use operator::crd::CaptureQuota;
use operator::quota_controller::{self, Context};
use serde_json::{Value, json};

const NAMESPACE: &str = "analytics";
const QUOTAS: &str = "/apis/capture.dev/v1alpha1/namespaces/analytics/capturequotas";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User plus system CPU seconds of a process, from `/proc/PID/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15; 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Redis's count of writes, and its commands by name.
fn redis_counts(redis: &RedisServer) -> (u64, BTreeMap<String, u64>) {
    let persistence = redis.cli(&["info", "persistence"]);
    let changes = persistence
        .lines()
        .find_map(|line| line.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let mut commands = BTreeMap::new();
    for line in redis.cli(&["info", "commandstats"]).lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, stats)) = rest.split_once(':') else {
            continue;
        };
        let calls = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        commands.insert(name.to_owned(), calls);
    }
    (changes, commands)
}

fn quota(i: usize) -> Value {
    json!({
        "apiVersion": "capture.dev/v1alpha1",
        "kind": "CaptureQuota",
        "metadata": {
            "name": format!("project-{i}"),
            "namespace": NAMESPACE,
            "uid": format!("00000000-0000-4000-8000-{i:012}"),
            "generation": 1,
        },
        "spec": {
            "deployment": "capture",
            "token": format!("phc_bench_project_{i:06}"),
            "action": "drop",
            "limits": [
                {"eventType": "events", "limit": 1_000_000, "window": "30d"},
                {"eventType": "recordings", "limit": 5000, "window": "30d"},
                {"eventType": "exceptions", "rate": 50, "burst": 500},
            ],
        },
    })
}

struct Pass {
    elapsed: Duration,
    cpu: f64,
    redis_cpu: f64,
    reconciles: u64,
    calls: BTreeMap<(String, String), u64>,
    redis_changes: u64,
    redis_commands: BTreeMap<String, u64>,
}

/// Reconciles every quota; with `until_unchanged`, again after each write
/// to it, as its watch would.
async fn pass(
    api: &MemoryApi,
    ctx: &Arc<Context>,
    redis: &RedisServer,
    count: usize,
    concurrency: usize,
    until_unchanged: bool,
) -> Pass {
    api.reset_calls();
    let (changes_before, commands_before) = redis_counts(redis);
    let redis_pid = redis.pid().to_string();
    let (cpu_before, redis_cpu_before) = (cpu_seconds("self"), cpu_seconds(&redis_pid));
    let reconciles = AtomicU64::new(0);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(concurrency, |i| {
            let path = format!("{QUOTAS}/project-{i}");
            let reconciles = &reconciles;
            async move {
                loop {
                    let object = api.get(&path).expect("quota");
                    let version = object["metadata"]["resourceVersion"].clone();
                    let quota: CaptureQuota = serde_json::from_value(object).expect("quota");
                    reconciles.fetch_add(1, Ordering::Relaxed);
                    quota_controller::reconcile(Arc::new(quota), Arc::clone(ctx))
                        .await
                        .unwrap_or_else(|err| panic!("{path}: {err}"));
                    let after = api.get(&path).expect("quota");
                    if !until_unchanged || after["metadata"]["resourceVersion"] == version {
                        break;
                    }
                }
            }
        })
        .await;
    let elapsed = started.elapsed();
    let (changes_after, commands_after) = redis_counts(redis);
    let redis_commands = commands_after
        .into_iter()
        .map(|(name, calls)| {
            let before = commands_before.get(&name).copied().unwrap_or(0);
            (name, calls - before)
        })
        .filter(|(name, calls)| *calls > 0 && name != "info")
        .collect();
    Pass {
        elapsed,
        cpu: cpu_seconds("self") - cpu_before,
        redis_cpu: cpu_seconds(&redis_pid) - redis_cpu_before,
        reconciles: reconciles.into_inner(),
        calls: api.calls(),
        redis_changes: changes_after - changes_before,
        redis_commands,
    }
}

fn report(title: &str, count: usize, pass: &Pass) {
    let total: u64 = pass.calls.values().sum();
    let writes: u64 = pass
        .calls
        .iter()
        .filter(|((method, _), _)| method != "GET")
        .map(|(_, n)| n)
        .sum();
    println!("{title}");
    println!(
        "  {:.2} s wall, {:.2} s operator CPU ({:.0} µs per quota), {:.2} s redis CPU",
        pass.elapsed.as_secs_f64(),
        pass.cpu,
        pass.cpu * 1e6 / count as f64,
        pass.redis_cpu
    );
    println!(
        "  {} reconciles; {total} API calls ({writes} writes):",
        pass.reconciles
    );
    for ((method, resource), n) in &pass.calls {
        println!("    {method:6} {resource:28} {n}");
    }
    let commands: u64 = pass.redis_commands.values().sum();
    println!(
        "  redis: {commands} commands, {} keys written:",
        pass.redis_changes
    );
    for (name, n) in &pass.redis_commands {
        println!("    {name:28} {n}");
    }
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let count = env_number("QUOTA_BENCH_COUNT", 1000);
    let concurrency = env_number("QUOTA_BENCH_CONCURRENCY", 16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis = RedisServer::start();
    let api = MemoryApi::default();
    api.insert(
        &format!("/apis/capture.dev/v1alpha1/namespaces/{NAMESPACE}/capturedeployments/capture"),
        json!({
            "apiVersion": "capture.dev/v1alpha1",
            "kind": "CaptureDeployment",
            "metadata": {"name": "capture", "namespace": NAMESPACE, "uid": "00000000-0000-4000-8000-0000000000cd"},
            "spec": {
                "image": "capture:0.1.0",
                "kafka": {"brokers": ["kafka:9092"]},
                "redis": {"urlSecretRef": {"name": "redis-capture", "key": "url"}, "keyPrefix": "capture:"},
            },
        }),
    );
    api.insert(
        &format!("/api/v1/namespaces/{NAMESPACE}/secrets/redis-capture"),
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "redis-capture", "namespace": NAMESPACE, "uid": "00000000-0000-4000-8000-00000000005e"},
            "data": {"url": base64::engine::general_purpose::STANDARD.encode(redis.url())},
        }),
    );
    for i in 0..count {
        api.insert(&format!("{QUOTAS}/project-{i}"), quota(i));
    }

    println!(
        "capture-operator quota bench: {count} CaptureQuotas, {concurrency} reconciles at a time"
    );
    runtime.block_on(async {
        let client = api.client();
        let ctx = Arc::new(Context {
            events: operator::events::Events::new(client.clone()),
            client,
            backoff: Default::default(),
            redis_timeout: Duration::from_secs(5),
            targets: Default::default(),
        });
        let cold = pass(&api, &ctx, &redis, count, concurrency, true).await;
        report(
            "cold start (finalizer, limits, status, then the no-op its watch event brings)",
            count,
            &cold,
        );
        let resync = pass(&api, &ctx, &redis, count, concurrency, false).await;
        report("resync with nothing changed", count, &resync);
        let synced = (0..count)
            .filter(|i| {
                let object = api.get(&format!("{QUOTAS}/project-{i}")).expect("quota");
                object["status"]["conditions"][0]["reason"] == "Synced"
            })
            .count();
        println!("{synced} of {count} quotas report Synced");
    });
}
