//! Quotas, deduplication, rate limits, overflow and the Redis failure policy,
//! against real `redis-server` processes and the real `capture` binary.
//!
//! Capture writes to a file sink here (one file per process), so what was
//! accepted, dropped or rerouted is read back line by line; the Kafka path
//! itself is covered by `kafka.rs`. Every test uses its own tokens and key
//! prefix, so tests share one Redis and run in parallel.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Capture;
use common::redis::{RedisCluster, RedisServer, TlsFiles, shared};
use serde_json::{Value, json};

/// A capture process writing to its own file.
struct Node {
    capture: Capture,
    file: PathBuf,
}

impl Node {
    fn start(redis_url: &str, prefix: &str, extra: &[&str]) -> Node {
        let file =
            std::env::temp_dir().join(format!("policy-{}.jsonl", uuid::Uuid::new_v4().simple()));
        let mut args: Vec<String> = vec![
            "--sink".into(),
            "file".into(),
            "--sink-file".into(),
            file.display().to_string(),
            "--redis-url".into(),
            redis_url.into(),
            "--redis-key-prefix".into(),
            prefix.into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Node {
            capture: Capture::start(&args),
            file,
        }
    }

    /// Every line the sink wrote so far for the events sent (capture's
    /// own ingestion warnings, on their topic, left out).
    fn lines(&self) -> Vec<Value> {
        self.all_lines()
            .into_iter()
            .filter(|l| l["topic"] != "client_warnings")
            .collect()
    }

    /// The types of the ingestion warnings capture wrote so far.
    fn warnings(&self) -> Vec<String> {
        self.all_lines()
            .into_iter()
            .filter(|l| l["topic"] == "client_warnings")
            .map(|l| {
                let value: Value = serde_json::from_str(l["value"].as_str().unwrap_or(""))
                    .unwrap_or(l["value"].clone());
                let data: Value =
                    serde_json::from_str(value["data"].as_str().expect("data")).expect("data");
                data["properties"]["$$client_ingestion_warning_type"]
                    .as_str()
                    .expect("type")
                    .to_owned()
            })
            .collect()
    }

    fn all_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("sink line is JSON"))
            .collect()
    }

    /// The `/metrics` text.
    async fn metrics(&self) -> String {
        reqwest::get(self.capture.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    async fn batch(&self, token: &str, events: Vec<Value>) -> Reply {
        post(
            &self.capture.url("/batch"),
            json!({"api_key": token, "batch": events}),
        )
        .await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<String>,
    elapsed: Duration,
}

async fn post(url: &str, body: Value) -> Reply {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        body,
        retry_after,
        elapsed: started.elapsed(),
    }
}

fn unique(what: &str) -> String {
    format!("{what}_{}", uuid::Uuid::new_v4().simple())
}

/// `n` events named `name` for `distinct_id`, each with a fresh uuid.
fn events(n: usize, name: &str, distinct_id: &str) -> Vec<Value> {
    (0..n)
        .map(|_| json!({"event": name, "distinct_id": distinct_id, "uuid": uuid::Uuid::now_v7().to_string()}))
        .collect()
}

/// Runs `capture quota ...` and returns its stdout.
fn quota(redis_url: &str, prefix: &str, args: &[&str]) -> String {
    quota_trusting(None, redis_url, prefix, args)
}

/// [`quota`] against `rediss://` servers whose certificates `ca` signed.
fn quota_trusting(ca: Option<&TlsFiles>, redis_url: &str, prefix: &str, args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_capture"));
    if let Some(tls) = ca {
        command.env("CAPTURE_REDIS_CA_FILE", &tls.ca);
    }
    let output = command
        .args([
            "quota",
            "--redis-url",
            redis_url,
            "--redis-key-prefix",
            prefix,
        ])
        .args(args)
        .env_remove("CAPTURE_REDIS_URL")
        .output()
        .expect("run capture quota");
    assert!(
        output.status.success(),
        "capture quota {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sets `token`'s events quota with `capture quota set`.
fn set_events_limit(redis_url: &str, prefix: &str, token: &str, limit: u64, window: &str) {
    let (limit, window) = (format!("events={limit}"), format!("events={window}"));
    quota(
        redis_url,
        prefix,
        &[
            "set", "--token", token, "--limit", &limit, "--window", &window,
        ],
    );
}

fn usage(redis_url: &str, prefix: &str, token: &str) -> Value {
    serde_json::from_str(&quota(redis_url, prefix, &["get", "--token", token]))
        .expect("quota get prints JSON")
}

#[tokio::test]
async fn a_request_crossing_the_limit_is_cut_at_it_and_later_ones_are_dropped() {
    let redis = shared();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    set_events_limit(&redis.url(), &prefix, &token, 5, "1h");
    let node = Node::start(&redis.url(), &prefix, &[]);

    let first = node.batch(&token, events(3, "e", "u")).await;
    assert_eq!((first.status, &first.body), (200, &json!({"status": "Ok"})));
    let crossing = node.batch(&token, events(4, "e", "u")).await;
    assert_eq!(
        (crossing.status, &crossing.body),
        (200, &json!({"status": "Ok", "quota_limited": ["events"]}))
    );
    assert_eq!(
        node.lines().len(),
        5,
        "accepted up to the limit, not past it"
    );

    // Known exhausted: answered from memory, still 200 with quota_limited.
    let after = node.batch(&token, events(2, "e", "u")).await;
    assert_eq!(after.body["quota_limited"], json!(["events"]));
    assert_eq!(node.lines().len(), 5);

    // Other types and other tokens are not limited.
    let exception = node.batch(&token, events(1, "$exception", "u")).await;
    assert_eq!(exception.body, json!({"status": "Ok"}));
    let other = node.batch(&unique("phc"), events(2, "e", "u")).await;
    assert_eq!(other.body, json!({"status": "Ok"}));
    assert_eq!(node.lines().len(), 8);

    let status = usage(&redis.url(), &prefix, &token);
    assert_eq!(status["usage"]["events"]["used"], 5);
    assert_eq!(status["usage"]["events"]["remaining"], 0);
    let metrics = node.metrics().await;
    assert!(
        metrics.contains("capture_events_quota_limited_total{event_type=\"events\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("source=\"local\""),
        "exhausted token answered locally:\n{metrics}"
    );
}

#[tokio::test]
async fn racing_clients_on_several_instances_get_exactly_the_limit() {
    let redis = shared();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    let limit = 400;
    quota(
        &redis.url(),
        &prefix,
        &[
            "set",
            "--token",
            &token,
            "--limit",
            &format!("events={limit}"),
        ],
    );
    let nodes: Vec<Node> = (0..3)
        .map(|_| Node::start(&redis.url(), &prefix, &[]))
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.capture.url("/batch")).collect();

    let mut clients = Vec::new();
    for client in 0..12 {
        let url = urls[client % urls.len()].clone();
        let token = token.clone();
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..20 {
                let reply = post(
                    &url,
                    json!({"api_key": token, "batch": events(3, "e", &format!("u{client}"))}),
                )
                .await;
                statuses.push(reply.status);
            }
            statuses
        }));
    }
    for client in clients {
        let statuses = client.await.expect("client task");
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    // 12 clients x 20 requests x 3 events = 720 sent, well over the limit.
    let accepted: usize = nodes.iter().map(|n| n.lines().len()).sum();
    assert_eq!(accepted, limit, "exactly the limit, never more");
    assert_eq!(
        usage(&redis.url(), &prefix, &token)["usage"]["events"]["used"],
        limit
    );
}

/// Concurrent requests of several tokens share Redis round trips (their
/// checks go out as one pipeline); each must still get its own verdict.
#[tokio::test]
async fn concurrent_checks_of_different_tokens_each_get_their_own_answer() {
    let redis = shared();
    let prefix = unique("p") + ":";
    let tokens: Vec<(String, usize)> = (1..=6).map(|i| (unique("phc"), 5 * i)).collect();
    for (token, limit) in &tokens {
        set_events_limit(&redis.url(), &prefix, token, *limit as u64, "1h");
    }
    let node = Node::start(&redis.url(), &prefix, &["--dedup"]);
    let sent = 24;
    let node = &node;
    let requests = tokens.iter().flat_map(|(token, _)| {
        (0..sent).map(move |n| async move {
            // Every fourth request repeats the event before it: a duplicate.
            let uuid = uuid::Uuid::from_u128((n - n % 4 / 3) as u128 + 1);
            let event = json!({"event": "e", "distinct_id": "u", "uuid": uuid.to_string()});
            // A copy racing its original is told to retry (503 in_flight)
            // until the original settled, as an SDK would.
            send_until_answered(node, token, event).await
        })
    });
    let replies = futures::future::join_all(requests).await;
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    let lines = node.lines();
    for (token, limit) in &tokens {
        // 24 requests, 6 of them duplicates: 18 distinct events.
        let expected = (*limit).min(18);
        let kept = lines
            .iter()
            .filter(|l| l["headers"]["token"] == json!(token))
            .count();
        assert_eq!(kept, expected, "token {token} with limit {limit}");
        assert_eq!(
            usage(&redis.url(), &prefix, token)["usage"]["events"]["used"],
            expected,
            "token {token}"
        );
    }
}

#[tokio::test]
async fn a_window_ends_by_itself_and_a_raised_limit_applies_within_a_second() {
    let redis = shared();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    set_events_limit(&redis.url(), &prefix, &token, 2, "2s");
    let node = Node::start(&redis.url(), &prefix, &["--quota-recheck-interval", "1s"]);

    let reply = node.batch(&token, events(3, "e", "u")).await;
    assert_eq!(reply.body["quota_limited"], json!(["events"]));
    assert_eq!(node.lines().len(), 2);
    // The counter's TTL ends the window: a fresh window, the whole limit again.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let reply = node.batch(&token, events(2, "e", "u")).await;
    assert_eq!(reply.body, json!({"status": "Ok"}), "window expired");
    assert_eq!(node.lines().len(), 4);

    // Exhausted again; raising the limit carries the open window over.
    let reply = node.batch(&token, events(1, "e", "u")).await;
    assert_eq!(reply.body["quota_limited"], json!(["events"]));
    set_events_limit(&redis.url(), &prefix, &token, 5, "1h");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = node.batch(&token, events(4, "e", "u")).await;
    assert_eq!(
        reply.body["quota_limited"],
        json!(["events"]),
        "3 more fit, not 4"
    );
    assert_eq!(node.lines().len(), 7);
    assert_eq!(
        usage(&redis.url(), &prefix, &token)["usage"]["events"]["remaining"],
        0
    );

    // Reset gives the whole limit back at once (after the local recheck).
    quota(&redis.url(), &prefix, &["reset", "--token", &token]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = node.batch(&token, events(5, "e", "u")).await;
    assert_eq!(reply.body, json!({"status": "Ok"}));
    // Delete removes the limit altogether.
    quota(&redis.url(), &prefix, &["delete", "--token", &token]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = node.batch(&token, events(20, "e", "u")).await;
    assert_eq!(reply.body, json!({"status": "Ok"}));
    assert_eq!(node.lines().len(), 32);
    assert_eq!(
        usage(&redis.url(), &prefix, &token),
        json!({"settings": {"types": {}}, "usage": {}})
    );
}

#[tokio::test]
async fn reject_action_answers_429_with_retry_after_and_keeps_nothing() {
    let redis = shared();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    quota(
        &redis.url(),
        &prefix,
        &[
            "set",
            "--token",
            &token,
            "--limit",
            "events=3",
            "--window",
            "events=1h",
            "--action",
            "reject",
        ],
    );
    let node = Node::start(&redis.url(), &prefix, &[]);
    assert_eq!(node.batch(&token, events(2, "e", "u")).await.status, 200);
    let reply = node.batch(&token, events(2, "e", "u")).await;
    assert_eq!(reply.status, 429, "{:?}", reply.body);
    assert_eq!(reply.body["code"], "quota_exceeded");
    let retry: u64 = reply
        .retry_after
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(
        (3000..=3600).contains(&retry),
        "window ends within the hour: {retry}"
    );
    assert_eq!(node.lines().len(), 2, "a refused request keeps nothing");
    // One still fits: a request within the limit passes.
    assert_eq!(node.batch(&token, events(1, "e", "u")).await.status, 200);
    assert_eq!(node.lines().len(), 3);
}

#[tokio::test]
async fn posthog_billing_limits_limit_and_unlimit_a_token() {
    let redis = shared();
    let token = unique("phc");
    let prefix = unique("p") + ":";
    let billing = format!("{prefix}@posthog/quota-limits/");
    let node = Node::start(
        &redis.url(),
        &prefix,
        &[
            "--billing-limits-prefix",
            &billing,
            "--billing-limits-refresh",
            "100ms",
        ],
    );
    assert_eq!(
        node.batch(&token, events(1, "e", "u")).await.body,
        json!({"status": "Ok"})
    );

    let until = (chrono::Utc::now().timestamp() + 3600).to_string();
    redis.cli(&["zadd", &format!("{billing}events"), &until, &token]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = node.batch(&token, events(1, "e", "u")).await;
        if reply.body["quota_limited"] == json!(["events"]) {
            break;
        }
        assert!(Instant::now() < deadline, "billing limit never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Recordings are a separate resource.
    let recording = post(
        &node.capture.url("/s"),
        json!({"api_key": token, "batch": [{"event": "$snapshot", "distinct_id": "u", "properties": {"$session_id": "s1", "$snapshot_data": [{"type": 2}]}}]}),
    )
    .await;
    assert_eq!(recording.body, json!({"status": "Ok"}));

    // A score in the past, or removal, un-limits.
    let past = (chrono::Utc::now().timestamp() - 10).to_string();
    redis.cli(&["zadd", &format!("{billing}events"), &past, &token]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = node.batch(&token, events(1, "e", "u")).await;
        if reply.body == json!({"status": "Ok"}) {
            break;
        }
        assert!(Instant::now() < deadline, "billing limit never lifted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dedup_drops_a_resent_event_within_the_ttl_and_keeps_it_after() {
    let redis = shared();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    let node = Node::start(&redis.url(), &prefix, &["--dedup", "--dedup-ttl", "1s"]);
    let batch = events(3, "e", "u");
    let with_timestamp =
        json!({"event": "t", "distinct_id": "u", "timestamp": "2024-05-01T00:00:00Z"});
    let mut first = batch.clone();
    first.push(with_timestamp.clone());
    first.push(batch[0].clone()); // the same event twice in one request
    assert_eq!(
        node.batch(&token, first).await.body,
        json!({"status": "Ok"})
    );
    assert_eq!(node.lines().len(), 4);

    // A retry of the whole request: every event is a duplicate, still 200.
    let mut retry = batch.clone();
    retry.push(with_timestamp.clone());
    let reply = node.batch(&token, retry.clone()).await;
    assert_eq!(reply.body, json!({"status": "Ok"}));
    assert_eq!(node.lines().len(), 4, "duplicates dropped");
    // The same uuid under another distinct id or event name is not a duplicate.
    let mut other = batch[0].clone();
    other["distinct_id"] = json!("someone else");
    assert_eq!(node.batch(&token, vec![other]).await.status, 200);
    assert_eq!(node.lines().len(), 5);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    node.batch(&token, retry).await;
    assert_eq!(node.lines().len(), 9, "markers expired: kept again");
    let metrics = node.metrics().await;
    assert!(
        metrics.contains("capture_events_duplicate_total 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn over_the_rate_events_overflow_without_a_key() {
    let redis = shared();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    let node = Node::start(
        &redis.url(),
        &prefix,
        &[
            "--rate-limit",
            "1",
            "--rate-limit-burst",
            "5",
            "--overflow-topic",
            "overflow",
        ],
    );
    node.batch(&token, events(8, "e", "u")).await;
    let lines = node.lines();
    let topics: Vec<&str> = lines
        .iter()
        .map(|l| l["topic"].as_str().expect("topic"))
        .collect();
    assert_eq!(
        topics.iter().filter(|t| **t == "clickhouse_events").count(),
        5
    );
    assert_eq!(topics.iter().filter(|t| **t == "overflow").count(), 3);
    for line in lines.iter().filter(|l| l["topic"] == "overflow") {
        assert_eq!(line["key"], Value::Null, "overflow spreads load: no key");
    }
    // Another token has its own bucket.
    node.batch(&unique("phc"), events(5, "e", "u")).await;
    assert_eq!(
        node.lines()
            .iter()
            .filter(|l| l["topic"] == "overflow")
            .count(),
        3
    );
}

#[tokio::test]
async fn reject_mode_rate_limits_answer_429_with_retry_after() {
    let redis = shared();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    let node = Node::start(
        &redis.url(),
        &prefix,
        &[
            "--rate-limit",
            "2",
            "--rate-limit-burst",
            "4",
            "--rate-limit-action",
            "reject",
        ],
    );
    assert_eq!(node.batch(&token, events(4, "e", "u")).await.status, 200);
    let reply = node.batch(&token, events(2, "e", "u")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.body["code"], "rate_limited");
    assert_eq!(reply.retry_after.as_deref(), Some("1"));
    assert_eq!(node.lines().len(), 4);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(node.batch(&token, events(2, "e", "u")).await.status, 200);
}

#[tokio::test]
async fn per_token_rates_from_redis_override_the_default() {
    let redis = shared();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    quota(
        &redis.url(),
        &prefix,
        &[
            "set", "--token", &token, "--rate", "events=1", "--burst", "events=2",
        ],
    );
    let node = Node::start(&redis.url(), &prefix, &[]);
    node.batch(&token, events(5, "e", "u")).await;
    let overflow = node
        .lines()
        .iter()
        .filter(|l| l["topic"] == "events_plugin_ingestion_overflow")
        .count();
    assert_eq!(overflow, 3);
}

#[tokio::test]
async fn a_hot_distinct_id_overflows_while_others_do_not() {
    let redis = shared();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    let node = Node::start(
        &redis.url(),
        &prefix,
        &[
            "--hot-key-rate",
            "1",
            "--hot-key-burst",
            "3",
            "--force-overflow",
            &format!("{token}:forced"),
        ],
    );
    let mut batch = events(10, "e", "hot");
    batch.extend(events(2, "e", "cold"));
    batch.extend(events(1, "e", "forced"));
    node.batch(&token, batch).await;
    let lines = node.lines();
    let overflowed: Vec<&str> = lines
        .iter()
        .filter(|l| l["topic"] == "events_plugin_ingestion_overflow")
        .map(|l| l["headers"]["distinct_id"].as_str().expect("distinct_id"))
        .collect();
    assert_eq!(overflowed.iter().filter(|d| **d == "hot").count(), 7);
    assert_eq!(overflowed.iter().filter(|d| **d == "forced").count(), 1);
    assert!(!overflowed.contains(&"cold"));
}

#[tokio::test]
async fn redis_down_fails_open_by_default_and_enforcement_resumes_by_itself() {
    let redis = RedisServer::start();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    set_events_limit(&redis.url(), &prefix, &token, 2, "1h");
    let node = Node::start(
        &redis.url(),
        &prefix,
        &[
            "--redis-timeout",
            "200ms",
            "--quota-recheck-interval",
            "100ms",
        ],
    );
    assert_eq!(
        node.batch(&token, events(3, "e", "u")).await.body["quota_limited"],
        json!(["events"])
    );

    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let reply = node.batch(&token, events(2, "e", "u")).await;
        assert_eq!(reply.body, json!({"status": "Ok"}), "fail open");
        assert!(
            reply.elapsed < Duration::from_secs(2),
            "never blocked past the timeout: {:?}",
            reply.elapsed
        );
    }
    assert_eq!(node.lines().len(), 8);
    node.capture
        .wait_for_log("redis is not answering; policies fail open");

    // Back, empty (nothing persisted): write the quota again, enforcement resumes.
    redis.restart();
    set_events_limit(&redis.url(), &prefix, &token, 1, "1h");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = node.batch(&token, events(2, "e", "u")).await;
        if reply.body["quota_limited"] == json!(["events"]) {
            break;
        }
        assert!(Instant::now() < deadline, "enforcement never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.capture.wait_for_log("redis answers again");
    let logs = node.capture.logs();
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("redis is not answering"))
            .count(),
        1,
        "logged once per outage"
    );
    let metrics = node.metrics().await;
    assert!(
        metrics.contains("capture_policy_fallback_total{decision=\"open\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn redis_down_fails_closed_when_configured() {
    let redis = RedisServer::start();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    let node = Node::start(
        &redis.url(),
        &prefix,
        &["--redis-timeout", "200ms", "--redis-failure-mode", "closed"],
    );
    assert_eq!(node.batch(&token, events(1, "e", "u")).await.status, 200);
    redis.kill();
    let reply = node.batch(&token, events(1, "e", "u")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body["code"], "policy_unavailable");
    assert!(
        reply.elapsed < Duration::from_secs(2),
        "{:?}",
        reply.elapsed
    );
    assert_eq!(node.lines().len(), 1);
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.batch(&token, events(1, "e", "u")).await.status != 200 {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_slow_redis_never_holds_a_request_past_the_timeout() {
    // Redis 7 refuses DEBUG unless allowed; `local` allows it from loopback.
    let redis = RedisServer::start_with(common::free_port(), &["--enable-debug-command", "local"]);
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    set_events_limit(&redis.url(), &prefix, &token, 3, "1h");
    let node = Node::start(&redis.url(), &prefix, &["--redis-timeout", "100ms"]);
    assert_eq!(node.batch(&token, events(1, "e", "u")).await.status, 200);
    // DEBUG SLEEP blocks the whole server, as an overloaded Redis would.
    let sleeper = std::thread::spawn({
        let port = redis.port;
        move || common::redis::redis_cli(port, &["debug", "sleep", "3"])
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reply = node.batch(&token, events(1, "e", "u")).await;
    assert_eq!(reply.status, 200, "failed open");
    assert!(
        reply.elapsed < Duration::from_secs(1),
        "held for {:?}",
        reply.elapsed
    );
    assert_eq!(sleeper.join().expect("debug sleep"), "OK", "redis slept");
    // Redis may still run the check that timed out once it wakes (its
    // event was accepted, failing open, so counting it is right); either
    // way no late reply answers a later check: the next request gets
    // exactly what remains.
    let remaining = usage(&redis.url(), &prefix, &token)["usage"]["events"]["remaining"]
        .as_u64()
        .expect("remaining is a number");
    assert!((1..=2).contains(&remaining), "remaining {remaining}");
    let reply = node.batch(&token, events(3, "e", "u")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["quota_limited"], json!(["events"]), "{reply:?}");
    assert_eq!(node.lines().len(), 2 + remaining as usize);
    let reply = node.batch(&token, events(1, "e", "u")).await;
    assert_eq!(reply.body["quota_limited"], json!(["events"]), "{reply:?}");
    assert_eq!(node.lines().len(), 2 + remaining as usize);
}

/// A password and a database number in the URL reach every connection
/// capture opens (the checks have one of their own), a server that lost
/// the script gets it again, and a wrong password fails open without
/// showing the password.
#[tokio::test]
async fn password_database_and_a_flushed_script_on_a_standalone_server() {
    let redis = RedisServer::start_with(common::free_port(), &["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", redis.port);
    let cli = |args: &[&str]| {
        let mut all = vec!["-a", "s3cret", "--no-auth-warning", "-n", "3"];
        all.extend_from_slice(args);
        redis.cli(&all)
    };
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    set_events_limit(&url, &prefix, &token, 2, "1h");
    assert_eq!(
        cli(&["exists", &format!("{prefix}quota-config:{{{token}}}")]).trim(),
        "1",
        "the limit is in database 3"
    );
    let node = Node::start(&url, &prefix, &["--quota-recheck-interval", "100ms"]);
    assert_eq!(
        node.batch(&token, events(3, "e", "u")).await.body["quota_limited"],
        json!(["events"]),
        "checked against database 3 after AUTH"
    );
    assert_eq!(node.lines().len(), 2);

    assert_eq!(cli(&["script", "flush"]).trim(), "OK");
    let scripts = || {
        cli(&["info", "memory"])
            .lines()
            .find_map(|line| line.strip_prefix("number_of_cached_scripts:"))
            .map(|n| n.trim().to_owned())
    };
    assert_eq!(scripts().as_deref(), Some("0"));
    // Past the local recheck interval, so Redis is asked.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..2 {
        let reply = node.batch(&token, events(1, "e", "u")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.body["quota_limited"],
            json!(["events"]),
            "enforced by the reloaded script: {:?}",
            reply.body
        );
    }
    assert_eq!(scripts().as_deref(), Some("1"), "loaded again");
    let metrics = node.metrics().await;
    assert!(
        !metrics.contains("capture_policy_fallback_total"),
        "no check failed open: {metrics}"
    );

    let wrong = format!("redis://:wrong-pw@127.0.0.1:{}/3", redis.port);
    let refused = Node::start(&wrong, &prefix, &["--redis-timeout", "300ms"]);
    let reply = refused.batch(&token, events(1, "e", "u")).await;
    assert_eq!(reply.body, json!({"status": "Ok"}), "failed open");
    let log = refused
        .capture
        .wait_for_log("redis is not answering; policies fail open");
    assert!(!log.contains("wrong-pw"), "{log}");
}

/// `capture quota --redis-url-file`: the URL, password included, comes
/// from a mounted-Secret-like file (its trailing newline dropped); a URL
/// given both ways is refused, naming both flags.
#[test]
fn the_quota_command_reads_the_redis_url_from_a_file() {
    let redis = RedisServer::start_with(common::free_port(), &["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/2", redis.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("redis-url");
    std::fs::write(&file, format!("{url}\n")).expect("write the URL file");
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_capture"))
            .arg("quota")
            .args(args)
            .args(["--redis-key-prefix", &prefix])
            .env_remove("CAPTURE_REDIS_URL")
            .env_remove("CAPTURE_REDIS_URL_FILE")
            .output()
            .expect("run capture quota")
    };
    let file_arg = file.display().to_string();
    let set = run(&[
        "--redis-url-file",
        &file_arg,
        "set",
        "--token",
        &token,
        "--limit",
        "events=7",
    ]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let status: Value =
        serde_json::from_str(&quota(&url, &prefix, &["get", "--token", &token])).expect("JSON");
    assert_eq!(
        status["settings"]["types"]["events"]["limit"], 7,
        "{status}"
    );

    let both = run(&[
        "--redis-url",
        &url,
        "--redis-url-file",
        &file_arg,
        "get",
        "--token",
        &token,
    ]);
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert_eq!(both.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`--redis-url` and `--redis-url-file` are both set")
            && !stderr.contains("s3cret"),
        "{stderr}"
    );
}

#[tokio::test]
async fn quotas_dedup_and_rates_work_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let prefix = unique("p") + ":";
    // Three tokens whose hash tags land on each master.
    let mut by_owner: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
    for _ in 0..500 {
        let token = unique("phc");
        let owner = cluster.owner(&format!("{prefix}quota-config:{{{token}}}"));
        let owned = by_owner.entry(owner).or_default();
        if owned.len() < 3 {
            owned.push(token);
        }
        if by_owner.len() == 3 && by_owner.values().all(|t| t.len() == 3) {
            break;
        }
    }
    let tokens: Vec<String> = by_owner.into_values().flatten().collect();
    assert_eq!(tokens.len(), 9, "three tokens on each of the three masters");
    for token in &tokens {
        quota(
            &urls,
            &prefix,
            &[
                "set",
                "--token",
                token,
                "--limit",
                "events=3",
                "--window",
                "events=1h",
            ],
        );
    }
    let node = Node::start(
        &urls,
        &prefix,
        &["--redis-cluster", "--dedup", "--rate-limit", "100"],
    );
    // Every token's requests go at once, so checks of tokens on different
    // masters meet in one batch and must be split by slot.
    let send_all = |batches: Vec<Vec<Value>>| {
        futures::future::join_all(
            tokens
                .iter()
                .zip(batches)
                .map(|(token, batch)| node.batch(token, batch)),
        )
    };
    let batches: Vec<Vec<Value>> = tokens.iter().map(|_| events(2, "e", "u")).collect();
    let first = send_all(batches.clone()).await;
    // The same events again: duplicates, dropped without using quota.
    let again = send_all(batches).await;
    let over = send_all(tokens.iter().map(|_| events(2, "e", "u")).collect()).await;
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(first[i].body, json!({"status": "Ok"}), "token {token}");
        assert_eq!(again[i].body, json!({"status": "Ok"}), "token {token}");
        assert_eq!(
            over[i].body["quota_limited"],
            json!(["events"]),
            "token {token}"
        );
        assert_eq!(usage(&urls, &prefix, token)["usage"]["events"]["used"], 3);
    }
    assert_eq!(node.lines().len(), 3 * tokens.len());
}

#[test]
fn bad_quota_flags_name_the_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_capture"))
        .args([
            "quota",
            "--redis-url",
            "redis://127.0.0.1:1",
            "set",
            "--token",
            "phc_x",
            "--limit",
            "event=1",
        ])
        .output()
        .expect("run capture quota");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--limit") && stderr.contains("expected one of events"),
        "{stderr}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_capture"))
        .args(["--redis-url", "http://x", "--redis-key-prefix", "a"])
        .output()
        .expect("run capture");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--redis-url") && stderr.contains("redis://"),
        "{stderr}"
    );
}

/// The runtime config's `dedup` and `rateLimit` override the static
/// settings while capture runs: turned on here by a reload, with no flags.
#[tokio::test]
async fn runtime_config_turns_dedup_and_a_rate_limit_on_without_a_restart() {
    let redis = shared();
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = dir.path().join("runtime.yaml");
    std::fs::write(&runtime, "version: 1\n").expect("write");
    let runtime_arg = runtime.display().to_string();
    let node = Node::start(
        &redis.url(),
        &prefix,
        &[
            "--runtime-config",
            &runtime_arg,
            "--runtime-config-poll",
            "50ms",
        ],
    );
    let batch = events(3, "e", "u");
    node.batch(&token, batch.clone()).await;
    node.batch(&token, batch.clone()).await;
    assert_eq!(node.lines().len(), 6, "no dedup yet");

    std::fs::write(
        &runtime,
        "version: 1\ndedup: {ttl: 1m}\nrateLimit: {perSecond: 1, burst: 8, action: reject}\n",
    )
    .expect("write");
    node.capture.wait_for_log("runtime config applied");
    let fresh = events(3, "e", "v");
    assert_eq!(node.batch(&token, fresh.clone()).await.status, 200);
    assert_eq!(node.batch(&token, fresh).await.status, 200);
    assert_eq!(node.lines().len(), 9, "the resend was a duplicate");
    // Burst 8, 3 used: a request of 6 more is over the limit and refused.
    let reply = node.batch(&token, events(6, "e", "w")).await;
    assert_eq!(reply.status, 429, "{:?}", reply.body);
    assert!(reply.retry_after.is_some());
    assert_eq!(node.lines().len(), 9);
}

/// Two replicas get copies of the same events at the same moment (a retry
/// racing its original on another pod): each event is produced exactly
/// once between them, and no copy is dropped before the other is sure. A
/// copy refused `in_flight` is sent again, as SDKs do, and then answered
/// 200 as a duplicate.
#[tokio::test]
async fn two_replicas_racing_the_same_events_produce_each_once() {
    let redis = shared();
    let prefix = unique("p") + ":";
    let token = unique("phc");
    let first = Node::start(&redis.url(), &prefix, &["--dedup"]);
    let second = Node::start(&redis.url(), &prefix, &["--dedup"]);
    let sent = events(40, "e", "u");
    let races = sent.iter().map(|event| {
        let (a, b) = (
            send_until_answered(&first, &token, event.clone()),
            send_until_answered(&second, &token, event.clone()),
        );
        async move { futures::join!(a, b) }
    });
    for (a, b) in futures::future::join_all(races).await {
        assert_eq!((a.status, b.status), (200, 200), "{a:?} {b:?}");
    }
    let mut produced: Vec<String> = first
        .lines()
        .into_iter()
        .chain(second.lines())
        .map(|l| {
            l["headers"]["uuid"]
                .as_str()
                .expect("uuid header")
                .to_owned()
        })
        .collect();
    produced.sort();
    let mut expected: Vec<String> = sent
        .iter()
        .map(|e| e["uuid"].as_str().expect("uuid").to_owned())
        .collect();
    expected.sort();
    assert_eq!(produced, expected, "each event exactly once across both");
}

/// A fully delivered request is answered without waiting for its dedup
/// markers' commit, which rides the next request's check; with no next
/// request it still reaches Redis within a moment, so another replica finds
/// the event delivered, not pending.
#[tokio::test]
async fn an_answered_requests_markers_are_committed_without_further_traffic() {
    let redis = shared();
    let prefix = unique("p") + ":";
    let token = unique("phc");
    let first = Node::start(&redis.url(), &prefix, &["--dedup", "--dedup-ttl", "1h"]);
    let second = Node::start(&redis.url(), &prefix, &["--dedup", "--dedup-ttl", "1h"]);
    let sent = events(3, "e", "u");
    assert_eq!(first.batch(&token, sent.clone()).await.status, 200);
    let key = |event: &Value| {
        format!(
            "{prefix}event:{{{token}}}:u:e:{}",
            event["uuid"].as_str().expect("uuid")
        )
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let values: Vec<String> = sent.iter().map(|e| redis.cli(&["GET", &key(e)])).collect();
        if values.iter().all(|v| v == "1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "markers still not committed: {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ttl: u64 = redis.cli(&["TTL", &key(&sent[0])]).parse().expect("ttl");
    assert!(
        (3500..=3600).contains(&ttl),
        "committed with the dedup ttl: {ttl}"
    );

    let copy = second.batch(&token, sent.clone()).await;
    assert_eq!(copy.status, 200, "a duplicate, not in flight: {copy:?}");
    assert!(second.lines().is_empty(), "nothing produced twice");
    assert_eq!(first.lines().len(), 3);
}

/// Sends `event` to `node` until it is not refused `in_flight`.
async fn send_until_answered(node: &Node, token: &str, event: Value) -> Reply {
    for _ in 0..100 {
        let reply = node.batch(token, vec![event.clone()]).await;
        if reply.status != 503 || reply.body["code"] != "in_flight" {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a copy was held for over a second");
}

/// A CA and a certificate for 127.0.0.1 that it signed, written to a fresh
/// directory (removed with the returned guard), for servers that speak only
/// TLS.
fn redis_certificates() -> (tempfile::TempDir, TlsFiles) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().expect("certificate dir");
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "redis test CA");
    let ca =
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
    let key = KeyPair::generate().expect("server key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    let files = TlsFiles {
        ca: dir.path().join("ca.crt"),
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::write(&files.ca, ca.pem()).expect("write ca");
    std::fs::write(&files.cert, leaf.pem()).expect("write certificate");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    (dir, files)
}

/// Sends three batches of two events for `token`, whose quota is three:
/// the quota is enforced (so capture reached Redis) and the resent batch
/// is a duplicate (dedup markers too).
async fn quota_and_dedup_hold(node: &Node, token: &str) {
    let batch = events(2, "e", "u");
    assert_eq!(
        node.batch(token, batch.clone()).await.body,
        json!({"status": "Ok"})
    );
    assert_eq!(node.batch(token, batch).await.body, json!({"status": "Ok"}));
    let over = node.batch(token, events(2, "e", "u")).await;
    assert_eq!(over.body["quota_limited"], json!(["events"]), "{over:?}");
    assert_eq!(node.lines().len(), 3);
}

#[tokio::test]
async fn quotas_and_dedup_work_over_tls_on_a_standalone_server() {
    let (_dir, tls) = redis_certificates();
    let server = RedisServer::start_tls(&tls, &[]);
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    let ca = tls.ca.display().to_string();
    quota_trusting(
        Some(&tls),
        &server.url(),
        &prefix,
        &[
            "set",
            "--token",
            &token,
            "--limit",
            "events=3",
            "--window",
            "events=1h",
        ],
    );
    let node = Node::start(&server.url(), &prefix, &["--dedup", "--redis-ca-file", &ca]);
    quota_and_dedup_hold(&node, &token).await;
    let status = quota_trusting(
        Some(&tls),
        &server.url(),
        &prefix,
        &["get", "--token", &token],
    );
    let status: Value = serde_json::from_str(&status).expect("quota get prints JSON");
    assert_eq!(status["usage"]["events"]["used"], 3);
}

#[tokio::test]
async fn quotas_and_dedup_work_over_tls_on_a_redis_cluster() {
    let (_dir, tls) = redis_certificates();
    let cluster = RedisCluster::start_tls(&tls);
    let urls = cluster.urls();
    assert!(urls.starts_with("rediss://"), "{urls}");
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    let ca = tls.ca.display().to_string();
    quota_trusting(
        Some(&tls),
        &urls,
        &prefix,
        &[
            "set",
            "--token",
            &token,
            "--limit",
            "events=3",
            "--window",
            "events=1h",
        ],
    );
    let node = Node::start(
        &urls,
        &prefix,
        &["--redis-cluster", "--dedup", "--redis-ca-file", &ca],
    );
    quota_and_dedup_hold(&node, &token).await;
}

/// Certificates are verified: without the CA that signed the server's
/// certificate, capture cannot reach Redis, and with the closed failure
/// mode says so with a 503 rather than accepting unchecked events.
#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let (_dir, tls) = redis_certificates();
    let server = RedisServer::start_tls(&tls, &[]);
    let (_other_dir, other) = redis_certificates();
    let other_ca = other.ca.display().to_string();
    let prefix = unique("p") + ":";
    let node = Node::start(
        &server.url(),
        &prefix,
        &[
            "--dedup",
            "--redis-failure-mode",
            "closed",
            "--redis-ca-file",
            &other_ca,
        ],
    );
    let reply = node.batch(&unique("phc"), events(1, "e", "u")).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(node.lines().is_empty());
}

#[test]
fn a_redis_ca_file_is_checked_at_start() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_capture"))
            .args(args)
            .env_remove("CAPTURE_REDIS_URL")
            .output()
            .expect("run capture");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&[
        "--redis-url",
        "redis://127.0.0.1:1",
        "--redis-ca-file",
        "/etc/hostname",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--redis-ca-file") && stderr.contains("rediss://"),
        "{stderr}"
    );
    let (code, stderr) = run(&[
        "--redis-url",
        "rediss://127.0.0.1:1",
        "--redis-ca-file",
        "/no/such/ca.pem",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/no/such/ca.pem"), "{stderr}");
    let (code, stderr) = run(&[
        "--redis-url",
        "rediss://127.0.0.1:1",
        "--redis-ca-file",
        "/etc/hostname",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no PEM certificate"), "{stderr}");
}

/// Posts a v1 batch of `events` (each `(name, uuid)`) as attempt `attempt`
/// of request `request_id`; returns the status and the body.
async fn post_v1(
    node: &Node,
    token: &str,
    request_id: uuid::Uuid,
    attempt: u32,
    events: &[(&str, String)],
) -> (u16, Value) {
    let batch: Vec<Value> = events
        .iter()
        .map(|(name, uuid)| {
            json!({"event": name, "uuid": uuid, "distinct_id": "u",
                   "timestamp": chrono::Utc::now().to_rfc3339(), "properties": {}})
        })
        .collect();
    let response = reqwest::Client::new()
        .post(node.capture.url("/i/v1/analytics/events"))
        .header("Authorization", format!("Bearer {token}"))
        .header("PostHog-Sdk-Info", "posthog-python/7.91.1")
        .header("PostHog-Attempt", attempt.to_string())
        .header("PostHog-Request-Id", request_id.to_string())
        .header("PostHog-Request-Timestamp", chrono::Utc::now().to_rfc3339())
        .json(&json!({"created_at": chrono::Utc::now().to_rfc3339(), "batch": batch}))
        .send()
        .await
        .expect("v1 request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// v1 with the Redis policies: an event over quota is `drop`
/// `billing_limit_exceeded` while the others are `ok`, and a whole batch
/// sent again (an SDK whose answer was lost retries it, same request id,
/// next attempt) is answered `ok` throughout without producing anything
/// twice: deduplication knows what was delivered.
#[tokio::test]
async fn v1_results_carry_quota_drops_and_a_resent_batch_is_produced_once() {
    let (prefix, token) = (unique("p") + ":", unique("phc"));
    set_events_limit(&shared().url(), &prefix, &token, 2, "1h");
    let node = Node::start(&shared().url(), &prefix, &["--dedup"]);
    let events: Vec<(&str, String)> = (0..3)
        .map(|_| ("e", uuid::Uuid::now_v7().to_string()))
        .collect();
    let request_id = uuid::Uuid::new_v4();
    let (status, body) = post_v1(&node, &token, request_id, 1, &events).await;
    assert_eq!(status, 200, "{body}");
    let results: Vec<&Value> = events.iter().map(|(_, u)| &body["results"][u]).collect();
    assert_eq!(
        results,
        [
            &json!({"result": "ok"}),
            &json!({"result": "ok"}),
            &json!({"result": "drop", "details": "billing_limit_exceeded"})
        ]
    );
    assert_eq!(node.lines().len(), 2);

    // The first two again, as attempt 2: delivered already, so ok and not
    // produced again.
    let (status, body) = post_v1(&node, &token, request_id, 2, &events[..2]).await;
    assert_eq!(status, 200, "{body}");
    for (_, uuid) in &events[..2] {
        assert_eq!(body["results"][uuid], json!({"result": "ok"}), "{body}");
    }
    assert_eq!(node.lines().len(), 2, "nothing produced twice");
    // The project hears once why its third event is missing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(node.warnings(), ["quota_limited"]);
}
