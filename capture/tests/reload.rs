//! The runtime config reloads while capture serves: through a ConfigMap-like
//! volume (the `..data` symlink swap kubelet does) and on SIGHUP; a broken
//! document changes nothing and is reported; and under concurrent requests
//! while the config flips, every request is processed wholly under one
//! version.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Capture;
use common::volume::Volume;
use serde_json::{Value, json};

/// The runtime config's ConfigMap volume, holding `runtime.yaml`.
struct ConfigMapVolume(Volume);

impl ConfigMapVolume {
    fn new(document: &str) -> ConfigMapVolume {
        ConfigMapVolume(Volume::new(&[("runtime.yaml", document)]))
    }

    fn path(&self) -> PathBuf {
        self.0.path("runtime.yaml")
    }

    fn update(&mut self, document: &str) {
        self.0.update(&[("runtime.yaml", document)]);
    }
}

async fn readiness(capture: &Capture) -> (u16, String) {
    let response = reqwest::get(capture.url("/_readiness")).await.expect("get");
    (
        response.status().as_u16(),
        response.text().await.expect("body"),
    )
}

/// The runtime config hash a pod reports in its readiness body.
async fn hash(capture: &Capture) -> String {
    let (status, body) = readiness(capture).await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix("runtime-config "))
        .unwrap_or_else(|| panic!("no hash in {body:?}"))
        .to_owned()
}

fn expected_hash(document: &str) -> String {
    capture::runtime_config::parse(document)
        .expect("valid")
        .hash()
}

async fn wait_for_hash(capture: &Capture, wanted: &str) -> Duration {
    let started = Instant::now();
    while hash(capture).await != wanted {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "config {wanted} not applied; logs:\n{}",
            capture.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn send(capture: &Capture, token: &str) -> u16 {
    reqwest::Client::new()
        .post(capture.url("/e"))
        .body(json!({"event": "e", "distinct_id": "d", "token": token}).to_string())
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

async fn metric(capture: &Capture, needle: &str) -> Option<f64> {
    let text = reqwest::get(capture.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .find(|line| line.starts_with(needle))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn start(path: &Path, poll: &str, out: &Path) -> Capture {
    Capture::start(&[
        "--sink",
        "file",
        "--sink-file",
        out.to_str().expect("utf-8"),
        "--runtime-config",
        path.to_str().expect("utf-8"),
        "--runtime-config-poll",
        poll,
    ])
}

#[tokio::test]
async fn a_config_map_swap_applies_without_a_restart_and_a_broken_one_changes_nothing() {
    let out = tempfile::NamedTempFile::new().expect("out");
    let open = "version: 1\n";
    let mut volume = ConfigMapVolume::new(open);
    let capture = start(&volume.path(), "100ms", out.path());
    assert_eq!(hash(&capture).await, expected_hash(open));
    assert_eq!(send(&capture, "phc_retired").await, 200);

    let deny = "version: 1\ntokens: {deny: [phc_retired]}\n";
    volume.update(deny);
    let took = wait_for_hash(&capture, &expected_hash(deny)).await;
    eprintln!("applied {took:?} after the swap");
    assert_eq!(send(&capture, "phc_retired").await, 401);
    assert_eq!(send(&capture, "phc_current").await, 200);
    let info = format!(
        "capture_runtime_config_info{{hash=\"{}\"}}",
        expected_hash(deny)
    );
    assert_eq!(metric(&capture, &info).await, Some(1.0));

    // A broken document: the last good one stays, the pod stays ready, the
    // error names the field and is counted.
    volume.update("version: 1\ntokens: {deny: [phc_retired]}\nplugins: [{sample: {rate: 7}}]\n");
    capture.wait_for_log("plugins[0].sample.rate");
    assert_eq!(hash(&capture).await, expected_hash(deny));
    assert_eq!(send(&capture, "phc_retired").await, 401);
    assert_eq!(
        metric(
            &capture,
            "capture_runtime_config_reloads_total{result=\"invalid\"}"
        )
        .await,
        Some(1.0)
    );

    // Fixed again: applied.
    volume.update(open);
    wait_for_hash(&capture, &expected_hash(open)).await;
    assert_eq!(send(&capture, "phc_retired").await, 200);
}

#[tokio::test]
async fn sighup_reloads_at_once() {
    let out = tempfile::NamedTempFile::new().expect("out");
    let first = "version: 1\n";
    let mut volume = ConfigMapVolume::new(first);
    // Polling effectively off: only the signal can reload.
    let capture = start(&volume.path(), "1h", out.path());
    let second = "version: 1\nrouting: {events: from-sighup}\n";
    volume.update(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hash(&capture).await, expected_hash(first), "no poll yet");
    let status = Command::new("kill")
        .args(["-HUP", &capture.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_for_hash(&capture, &expected_hash(second)).await;
}

#[tokio::test]
async fn each_request_is_processed_under_one_version_while_the_config_flips() {
    let out = tempfile::NamedTempFile::new().expect("out");
    let doc = |topic: &str| format!("version: 1\nrouting: {{events: {topic}}}\n");
    let mut volume = ConfigMapVolume::new(&doc("flip-a"));
    let capture = start(&volume.path(), "10ms", out.path());
    let url = capture.url("/batch");

    let clients = 8;
    let batches_each = 40;
    let senders: Vec<_> = (0..clients)
        .map(|client| {
            let url = url.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for batch in 0..batches_each {
                    let id = format!("{client}-{batch}");
                    let events: Vec<Value> = (0..25)
                        .map(|i| json!({"event": "e", "distinct_id": format!("{id}-{i}"), "properties": {"batch": id}}))
                        .collect();
                    let body = json!({"api_key": "phc_flip", "batch": events}).to_string();
                    let status = http.post(&url).body(body).send().await.expect("post").status();
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    // Flip the routing back and forth while the batches go.
    let flipper = tokio::spawn(async move {
        for i in 0..60 {
            volume.update(&doc(if i % 2 == 0 { "flip-b" } else { "flip-a" }));
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        volume
    });
    for sender in senders {
        sender.await.expect("sender");
    }
    let _volume = flipper.await.expect("flipper");

    // Every batch's 25 events went to one topic, and both topics were used.
    let text = std::fs::read_to_string(out.path()).expect("output");
    let mut topics_by_batch: std::collections::BTreeMap<
        String,
        std::collections::BTreeSet<String>,
    > = Default::default();
    let mut lines = 0;
    for line in text.lines() {
        let record: Value = serde_json::from_str(line).expect("json line");
        let data: Value =
            serde_json::from_str(record["value"]["data"].as_str().expect("data")).expect("event");
        let batch = data["properties"]["batch"]
            .as_str()
            .expect("batch")
            .to_owned();
        topics_by_batch
            .entry(batch)
            .or_default()
            .insert(record["topic"].as_str().expect("topic").to_owned());
        lines += 1;
    }
    assert_eq!(lines, clients * batches_each * 25);
    let mixed: Vec<_> = topics_by_batch
        .iter()
        .filter(|(_, t)| t.len() > 1)
        .collect();
    assert!(mixed.is_empty(), "batches split across versions: {mixed:?}");
    let used: std::collections::BTreeSet<_> = topics_by_batch.values().flatten().collect();
    assert_eq!(used.len(), 2, "the flips were seen: {used:?}");
}

#[tokio::test]
async fn restrictions_and_plugins_shape_what_is_produced() {
    let out = tempfile::NamedTempFile::new().expect("out");
    let document = "version: 1
restrictions:
  - {action: redirect, events: [export_row], topic: exports}
  - {action: forceOverflow, distinctIds: [hot-user]}
plugins:
  - redact: {keys: [email]}
  - drop: {events: [$feature_flag_called]}
  - anonymizeIp: {}
";
    let volume = ConfigMapVolume::new(document);
    let capture = start(&volume.path(), "1h", out.path());
    let events = json!([
        {"event": "signup", "distinct_id": "u1", "properties": {"email": "a@b.c", "plan": "pro", "$ip": "198.51.100.7"}},
        {"event": "$feature_flag_called", "distinct_id": "u1"},
        {"event": "export_row", "distinct_id": "u1"},
        {"event": "click", "distinct_id": "hot-user"},
    ]);
    let status = reqwest::Client::new()
        .post(capture.url("/batch"))
        .header("X-Forwarded-For", "203.0.113.99")
        .body(json!({"api_key": "phc_shape", "batch": events}).to_string())
        .send()
        .await
        .expect("post")
        .status();
    assert_eq!(status, 200);
    let text = std::fs::read_to_string(out.path()).expect("output");
    let records: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect();
    assert_eq!(records.len(), 3, "the flag event was dropped: {text}");
    let data = |record: &Value| -> Value {
        serde_json::from_str(record["value"]["data"].as_str().expect("data")).expect("event")
    };
    let signup = &records[0];
    assert_eq!(signup["topic"], "clickhouse_events");
    assert_eq!(data(signup)["properties"]["email"], "[redacted]");
    assert_eq!(data(signup)["properties"]["plan"], "pro");
    assert_eq!(data(signup)["properties"]["$ip"], "198.51.100.0");
    assert_eq!(signup["value"]["ip"], "203.0.113.0");
    assert!(!text.contains("a@b.c"), "the email left: {text}");
    assert_eq!(records[1]["topic"], "exports");
    assert_eq!(records[1]["key"], "phc_shape:u1");
    assert_eq!(records[2]["topic"], "events_plugin_ingestion_overflow");
    assert_eq!(records[2]["key"], Value::Null, "overflow spreads load");
    let filtered = metric(
        &capture,
        "capture_events_filtered_total{by=\"drop\",verdict=\"drop\"}",
    )
    .await;
    assert_eq!(filtered, Some(1.0));
}

#[tokio::test]
async fn signed_tokens_need_a_valid_fresh_unused_signature_and_rotated_secrets_apply() {
    let out = tempfile::NamedTempFile::new().expect("out");
    let secrets_dir = tempfile::tempdir().expect("secrets");
    let secrets = secrets_dir.path().join("secrets.yaml");
    std::fs::write(&secrets, "phc_signed: first-secret\n").expect("write");
    let document = format!(
        "version: 1\nsignatures: {{tokens: [phc_signed], secretsFile: {}, window: 1m}}\n",
        secrets.display()
    );
    let volume = ConfigMapVolume::new(&document);
    let capture = start(&volume.path(), "50ms", out.path());
    let body = json!({"event": "e", "distinct_id": "d", "token": "phc_signed"}).to_string();
    let post = |signature: Option<String>, body: String| {
        let url = capture.url("/e");
        async move {
            let mut request = reqwest::Client::new().post(url).body(body);
            if let Some(signature) = signature {
                request = request.header("X-Capture-Signature", signature);
            }
            let response = request.send().await.expect("post");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let now = chrono::Utc::now().timestamp();
    let signed = |secret: &[u8], time: i64, body: &str| {
        let request = capture::signing::Signed {
            method: "POST",
            path: "/e",
            query: "",
            body: body.as_bytes(),
        };
        format!(
            "t={time},v2={}",
            capture::signing::sign(secret, time, &request)
        )
    };

    let (status, reply) = post(None, body.clone()).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (401, Some("invalid_signature"))
    );
    assert!(
        reply["detail"]
            .as_str()
            .expect("detail")
            .contains("requires signed requests")
    );
    assert_eq!(
        post(Some(signed(b"first-secret", now, &body)), body.clone())
            .await
            .0,
        200
    );
    // The same signed request again is a replay.
    let (status, reply) = post(Some(signed(b"first-secret", now, &body)), body.clone()).await;
    assert_eq!(status, 401);
    assert!(
        reply["detail"]
            .as_str()
            .expect("detail")
            .contains("already used"),
        "{reply}"
    );
    // A signed request that fails (no event name: 400) is forgotten, so its
    // retry is answered on its merits, not refused as a replay.
    let nameless = json!({"distinct_id": "d", "token": "phc_signed"}).to_string();
    for _ in 0..2 {
        let (status, reply) = post(
            Some(signed(b"first-secret", now, &nameless)),
            nameless.clone(),
        )
        .await;
        assert_eq!(status, 400, "{reply}");
    }
    let stale = signed(b"first-secret", now - 120, &body);
    let (status, reply) = post(Some(stale), body.clone()).await;
    assert_eq!(status, 401);
    assert!(
        reply["detail"]
            .as_str()
            .expect("detail")
            .contains("more than 60s")
    );
    let tampered = body.replace("\"e\"", "\"f\"");
    assert_eq!(
        post(Some(signed(b"first-secret", now, &body)), tampered)
            .await
            .0,
        401
    );
    // A GET carrying its event in `?data=`, with no body: the signature
    // covers the query, so another event in it is refused.
    let get = |query: &str, signature: String| {
        let url = format!("{}?{query}", capture.url("/e"));
        async move {
            reqwest::Client::new()
                .get(url)
                .header("X-Capture-Signature", signature)
                .send()
                .await
                .expect("get")
                .status()
                .as_u16()
        }
    };
    let query = |event: &str| {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD
            .encode(json!({"event": event, "distinct_id": "d", "token": "phc_signed"}).to_string());
        format!("data={}", data.replace('=', "%3D").replace('+', "%2B"))
    };
    let signed_get = |query: &str| {
        let request = capture::signing::Signed {
            method: "GET",
            path: "/e",
            query,
            body: b"",
        };
        format!(
            "t={now},v2={}",
            capture::signing::sign(b"first-secret", now, &request)
        )
    };
    assert_eq!(get(&query("g"), signed_get(&query("g"))).await, 200);
    assert_eq!(
        get(&query("other"), signed_get(&query("g2"))).await,
        401,
        "the query is signed"
    );
    // A body-only v1 signature is refused by name.
    let old = format!("t={now},v1={}", "0".repeat(64));
    let (status, reply) = post(Some(old), body.clone()).await;
    assert_eq!(status, 401);
    assert!(
        reply["detail"]
            .as_str()
            .expect("detail")
            .contains("v1 signatures"),
        "{reply}"
    );
    // Other tokens need no signature.
    let other = json!({"event": "e", "distinct_id": "d", "token": "phc_free"}).to_string();
    assert_eq!(post(None, other).await.0, 200);

    // The secret rotates in its file: applied without a restart.
    std::fs::write(&secrets, "phc_signed: second-secret\n").expect("rotate");
    capture.wait_for_log("signing secrets reloaded");
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(Some(signed(b"second-secret", now, &body)), body.clone())
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "rotated secret not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        post(Some(signed(b"first-secret", now, &body)), body.clone())
            .await
            .0,
        401
    );
    // No secret or signature ever reaches the logs.
    let logs = capture.logs().join("\n");
    assert!(
        !logs.contains("first-secret") && !logs.contains("second-secret"),
        "{logs}"
    );
}
