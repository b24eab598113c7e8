//! The user's journey, with real parts: the chart's RBAC applied with the
//! real `kubectl`, two real operator processes acting as the chart's
//! ServiceAccount, real capture pods, a real Kafka-protocol broker, a real
//! Redis, and the real PostHog SDKs as clients. Each step prints a
//! `[journey]` line as it passes, and fails with what it expected and what
//! it saw.
//!
//! Everything it does and reads goes through the Kubernetes API (`kubectl`,
//! `kubectl proxy` to reach pods and the Service), so the same test runs
//! on two kinds of cluster:
//! - by default, the stand-ins of this crate: the API server, and the node
//!   running the pods as local processes of the workspace's `capture`;
//! - a real cluster when `E2E_KUBECONFIG` is set, with `E2E_KAFKA_BROKERS`,
//!   `E2E_REDIS_URL` and `E2E_CAPTURE_IMAGE` (`e2e/README.md` has the
//!   commands for kind). Only the stand-ins are skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::kubectl::Kubectl;
use common::{binary, eventually};
use e2e::ApiServer;
use e2e::node::Node;
use rdkafka::Message as _;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};

/// The operator's ServiceAccount, as the chart names it.
const OPERATOR: &str = "system:serviceaccount:capture-system:capture-operator";

/// Where the journey runs, and the parts it points the cluster at.
struct Cluster {
    kubeconfig: PathBuf,
    /// Kafka bootstrap servers, for the pods, the operators and the test.
    broker: String,
    redis_url: String,
    capture_image: String,
    /// The stand-ins, when no real cluster was given: their own extra
    /// checks read it.
    stand_in: Option<ApiServer>,
    _keep: Vec<Box<dyn std::any::Any + Send>>,
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("E2E_KUBECONFIG is set, so {name} must be too (see e2e/README.md)")
    })
}

impl Cluster {
    /// The real cluster `E2E_KUBECONFIG` names, or else the stand-ins with
    /// a broker and a Redis of the test's own.
    async fn start(dir: &Path) -> Cluster {
        if let Some(kubeconfig) = std::env::var_os("E2E_KUBECONFIG") {
            return Cluster {
                kubeconfig: kubeconfig.into(),
                broker: required("E2E_KAFKA_BROKERS"),
                redis_url: required("E2E_REDIS_URL"),
                capture_image: required("E2E_CAPTURE_IMAGE"),
                stand_in: None,
                _keep: Vec::new(),
            };
        }
        let broker = common::broker::broker();
        let redis = common::redis::RedisServer::start();
        let server = ApiServer::default();
        let (address, task) = server
            .start(([127, 0, 0, 1], 0).into())
            .await
            .expect("start the API server stand-in");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, ApiServer::kubeconfig(address, "default")).expect("kubeconfig");
        let node = Node::new(
            server.clone(),
            dir.join("node"),
            vec![("capture".into(), binary("capture"))],
        )
        .spawn();
        Cluster {
            kubeconfig,
            broker: broker.address.clone(),
            redis_url: redis.url(),
            capture_image: "capture:e2e".into(),
            stand_in: Some(server),
            _keep: vec![
                Box::new(redis),
                Box::new(AbortOnDrop(task)),
                Box::new(AbortOnDrop(node)),
            ],
        }
    }
}

/// Stops a stand-in's task with the cluster.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A kubeconfig for the operators: the journey's own, acting as the
/// operator's ServiceAccount (as the chart's Deployment would run it).
async fn operator_kubeconfig(kubectl: &Kubectl, path: &Path) {
    let mut config = kubectl
        .json(&["config", "view", "--minify", "--flatten"])
        .await;
    config["users"][0]["user"]["as"] = json!(OPERATOR);
    config["contexts"][0]["context"]["namespace"] = json!("capture-system");
    std::fs::write(path, config.to_string()).expect("write the operator's kubeconfig");
}

/// `EXISTS key` in the Redis at `url`.
fn redis_exists(url: &str, key: &str) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-u", url, "EXISTS", key])
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A TCP listener that accepts connections and never answers: a broker
/// that hangs whoever asks it anything. Counts the connections.
async fn stalling_broker() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (address, accepted)
}

fn condition(object: &Value, kind: &str) -> Option<(String, String)> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// Topic names on the broker.
fn topics(broker: &str) -> Vec<String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .expect("admin client");
    admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(5))
        .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
        .unwrap_or_default()
}

/// The partition count of `topic` and the value of its config `key`, as
/// the broker describes them.
async fn topic_shape(broker: &str, topic: &str, key: &str) -> (usize, Option<String>) {
    use rdkafka::admin::{AdminOptions, ResourceSpecifier};
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .expect("admin client");
    let partitions = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
        .unwrap_or_default();
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(5))),
        )
        .await
        .expect("describe the topic's config");
    let value = described
        .into_iter()
        .flatten()
        .flat_map(|resource| resource.entries)
        .find(|entry| entry.name == key)
        .and_then(|entry| entry.value);
    (partitions, value)
}

/// The messages on `topic` (`key`, `headers`, and the event as `data`),
/// once `done` says they are all there or `timeout` passed.
fn read_until(
    broker: &str,
    topic: &str,
    done: impl Fn(&[Value]) -> bool,
    timeout: Duration,
) -> Vec<Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", format!("e2e-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::message::Headers as _;
            let value: Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).expect("JSON value");
            let headers: serde_json::Map<String, Value> = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                json!(String::from_utf8_lossy(h.value.unwrap_or_default())),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(json!({
                "key": message.key().map(String::from_utf8_lossy),
                "headers": headers,
                "data": serde_json::from_str::<Value>(value["data"].as_str().unwrap_or("null")).expect("JSON data"),
            }));
        }
    }
    out
}

/// The messages on `topic` sent with `token` as event `event`, once
/// `count` of them have arrived or `timeout` passed. (Topics may hold other
/// runs' messages: each run has tokens of its own.)
async fn read_sent(
    broker: &str,
    topic: &str,
    token: &str,
    event: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Value> {
    let (broker, topic, token, event) = (
        broker.to_owned(),
        topic.to_owned(),
        token.to_owned(),
        event.to_owned(),
    );
    let sent = move |m: &Value| {
        m["headers"]["token"] == token.as_str() && m["data"]["event"] == event.as_str()
    };
    tokio::task::spawn_blocking(move || {
        let all = read_until(
            &broker,
            &topic,
            |out| out.iter().filter(|m| sent(m)).count() >= count,
            timeout,
        );
        all.into_iter().filter(|m| sent(m)).collect()
    })
    .await
    .expect("read")
}

/// A PostHog SDK run as a client script: `<command> HOST TOKEN COUNT`.
struct Sdk {
    /// `$lib` its events carry.
    lib: &'static str,
    token: String,
    /// The event name the script sends.
    event: &'static str,
    count: usize,
}

impl Sdk {
    /// Runs the script against `host`, then reads `topic` until this SDK's
    /// events are there, and checks that each arrived once, keyed
    /// `token:distinct_id`, with the token header and redacted.
    async fn round_trip(
        &self,
        mut command: tokio::process::Command,
        host: &str,
        broker: &str,
        topic: &str,
    ) {
        let sent = command
            .args([host, &self.token, &self.count.to_string()])
            .output()
            .await
            .unwrap_or_else(|err| panic!("run the {} client: {err}", self.lib));
        assert!(
            sent.status.success(),
            "{} failed: {}{}",
            self.lib,
            String::from_utf8_lossy(&sent.stdout),
            String::from_utf8_lossy(&sent.stderr)
        );
        let mine = read_sent(
            broker,
            topic,
            &self.token,
            self.event,
            self.count,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            mine.len(),
            self.count,
            "every {} event once: {mine:?}",
            self.lib
        );
        let mut ids: Vec<&str> = mine
            .iter()
            .map(|m| m["data"]["distinct_id"].as_str().unwrap_or_default())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), self.count, "no event twice: {ids:?}");
        for message in &mine {
            let distinct_id = message["data"]["distinct_id"]
                .as_str()
                .expect("distinct_id");
            assert_eq!(
                message["key"],
                format!("{}:{distinct_id}", self.token).as_str()
            );
            assert_eq!(message["data"]["properties"]["email"], "[redacted]");
            assert_eq!(message["data"]["properties"]["$lib"], self.lib);
        }
    }
}

/// Prints a journey step as it passes (straight to stderr, so the summary
/// shows even when the test harness captures output).
fn step(label: &str, started: std::time::Instant, what: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "[{label}] {:>6.1} s  ok  {what}",
        started.elapsed().as_secs_f64()
    );
}

/// Reaching pods and the Service through `kubectl proxy`, as a user
/// outside the cluster would.
struct Proxy {
    http: reqwest::Client,
    base: String,
    _process: tokio::process::Child,
}

impl Proxy {
    async fn start(kubectl: &Kubectl) -> Proxy {
        let (process, base) = kubectl.proxy().await;
        Proxy {
            http: reqwest::Client::new(),
            base,
            _process: process,
        }
    }

    /// The URL of `path` on the capture Service.
    fn service(&self, path: &str) -> String {
        format!(
            "{}/api/v1/namespaces/analytics/services/capture:http/proxy{path}",
            self.base
        )
    }

    /// The URL of `path` on capture in pod `name`.
    fn pod(&self, name: &str, path: &str) -> String {
        format!(
            "{}/api/v1/namespaces/analytics/pods/{name}:3000/proxy{path}",
            self.base
        )
    }

    /// POSTs a JSON `body`: the status code and body answered.
    async fn post(&self, url: &str, body: &str) -> (u16, String) {
        match self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
        {
            Ok(answer) => (
                answer.status().as_u16(),
                answer.text().await.unwrap_or_default(),
            ),
            Err(err) => (0, err.to_string()),
        }
    }

    /// The runtime config hash the pod reports on `/_readiness`.
    async fn pod_hash(&self, name: &str) -> Option<String> {
        let text = self
            .http
            .get(self.pod(name, "/_readiness"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("runtime-config "))
            .map(str::to_owned)
    }
}

/// The capture pods not being deleted, by name, and whether each is Ready.
async fn capture_pods(kubectl: &Kubectl) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = kubectl
        .list("pods", "analytics")
        .await
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| {
            let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                ready,
            )
        })
        .collect();
    out.sort();
    out
}

/// The Ready capture pods, by name.
async fn ready_pods(kubectl: &Kubectl) -> Vec<String> {
    capture_pods(kubectl)
        .await
        .into_iter()
        .filter_map(|(name, ready)| ready.then_some(name))
        .collect()
}

/// Each running pod's name and the runtime config hash it reports.
async fn pod_hashes(kubectl: &Kubectl, proxy: &Proxy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, _) in capture_pods(kubectl).await {
        if let Some(hash) = proxy.pod_hash(&name).await {
            out.push((name, hash));
        }
    }
    out
}

/// The environment value `name` of the capture Deployment's container.
fn env_value(deployment: &Value, name: &str) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)?["value"]
        .as_str()
        .map(str::to_owned)
}

/// One journey at a time: two node stand-ins would give their pods the
/// same addresses.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The journey on the stand-ins in this process, or on the real cluster
/// `E2E_KUBECONFIG` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_journey_with_real_parts() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(dir.path()).await;
    journey(&cluster, dir.path(), "journey").await;
}

/// The journey as `E2E_KUBECONFIG` runs it, knowing the cluster only by
/// its kubeconfig, against a `kube-standin --node` process playing the
/// cluster: proof that nothing in it needs the in-process stand-ins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_journey_knowing_the_cluster_only_by_its_kubeconfig() {
    if std::env::var_os("E2E_KUBECONFIG").is_some() {
        eprintln!("skipped: E2E_KUBECONFIG is set, and the other test runs the journey on it");
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let standin = StandInProcess::start(dir.path()).await;
    let redis = common::redis::RedisServer::start();
    let cluster = Cluster {
        kubeconfig: standin.kubeconfig.clone(),
        broker: common::broker::broker().address.clone(),
        redis_url: redis.url(),
        capture_image: "capture:e2e".into(),
        stand_in: None,
        _keep: vec![Box::new(redis), Box::new(standin)],
    };
    journey(&cluster, dir.path(), "journey, E2E_KUBECONFIG").await;
}

/// `kube-standin --node capture=<capture>` as a process of its own.
struct StandInProcess {
    kubeconfig: PathBuf,
    process: std::process::Child,
}

impl StandInProcess {
    async fn start(dir: &Path) -> StandInProcess {
        let kubeconfig = dir.join("standin-kubeconfig");
        let log = std::fs::File::create(dir.join("kube-standin.log")).expect("log file");
        let mut process = std::process::Command::new(binary("kube-standin"))
            .arg("127.0.0.1:0")
            .arg("--node")
            .arg(format!("capture={}", binary("capture").display()))
            .arg("--node-dir")
            .arg(dir.join("standin-node"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start kube-standin");
        let stdout = process.stdout.take().expect("stdout");
        let text = tokio::task::spawn_blocking(move || {
            use std::io::BufRead as _;
            let mut text = String::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.expect("read kube-standin");
                text.push_str(&line);
                text.push('\n');
                if line.starts_with("current-context:") {
                    break;
                }
            }
            text
        })
        .await
        .expect("read");
        assert!(
            text.contains("current-context:"),
            "kube-standin printed no kubeconfig: {text}"
        );
        std::fs::write(&kubeconfig, text).expect("write the kubeconfig");
        StandInProcess {
            kubeconfig,
            process,
        }
    }
}

impl Drop for StandInProcess {
    /// SIGTERM, so it stops its pods before it exits.
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.process.id().to_string()])
            .status();
        let _ = self.process.wait();
    }
}

async fn journey(cluster: &Cluster, dir: &Path, label: &str) {
    let started = std::time::Instant::now();
    let broker = cluster.broker.as_str();
    let kubectl = Kubectl::new(cluster.kubeconfig.clone(), dir);

    // 1. `helm install`: the CRDs, the operator's ServiceAccount and RBAC,
    // and its Deployment, scaled to none: the two operators run here, as
    // that ServiceAccount, every request decided by the chart's rules.
    let helm = std::env::var_os("CAPTURE_TEST_HELM")
        .expect("set CAPTURE_TEST_HELM (run `. .ci/setup`) to a helm binary");
    // The operator manages `analytics` only (the chart's namespaced
    // default, with that namespace listed): its Role goes there, so the
    // namespace comes first, as the chart's notes say.
    if kubectl.get("namespace", "", "analytics").await.is_none() {
        kubectl.run(&["create", "namespace", "analytics"]).await;
    }
    let installed = tokio::process::Command::new(helm)
        .current_dir(common::repo())
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args([
            "upgrade",
            "--install",
            "capture-operator",
            "charts/capture-operator",
            "-n",
            "capture-system",
            "--create-namespace",
            "--set",
            "replicaCount=0",
            "--set",
            "watchNamespaces={analytics}",
        ])
        .output()
        .await
        .expect("run helm");
    let said = String::from_utf8_lossy(&installed.stdout);
    assert!(
        installed.status.success() && said.contains("STATUS: deployed"),
        "helm install: {said}{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    kubectl
        .wait_established(&[
            "crd/capturedeployments.capture.dev",
            "crd/capturequotas.capture.dev",
        ])
        .await;
    for kind in ["serviceaccount", "deployment"] {
        assert!(
            kubectl
                .get(kind, "capture-system", "capture-operator")
                .await
                .is_some(),
            "helm installed {kind}/capture-operator"
        );
    }
    let operator_config = dir.join("operator-kubeconfig");
    operator_kubeconfig(&kubectl, &operator_config).await;
    // Enforced: the ServiceAccount may not do what the chart does not grant.
    let refused = kubectl
        .command(&["get", "namespaces", &format!("--as={OPERATOR}")])
        .output()
        .await
        .expect("run kubectl");
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success() && said.contains("forbidden"),
        "listing namespaces as the operator: {}: {said}{}",
        refused.status,
        String::from_utf8_lossy(&refused.stdout)
    );
    // Least privilege: no Secret outside the managed namespace, none
    // cluster-wide.
    for args in [
        vec!["get", "secrets", "-n", "capture-system"],
        vec!["get", "secrets", "--all-namespaces"],
    ] {
        let mut args = args;
        let who = format!("--as={OPERATOR}");
        args.push(&who);
        let refused = kubectl.command(&args).output().await.expect("run kubectl");
        let said = String::from_utf8_lossy(&refused.stderr).into_owned();
        assert!(
            !refused.status.success() && said.contains("forbidden"),
            "kubectl {args:?} as the operator: {}: {said}",
            refused.status,
        );
    }
    // Each start appends to the identity's log, as a restarted container's
    // log goes on.
    let start_operator = |identity: &str| {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{identity}.log")))
            .expect("log file");
        tokio::process::Command::new(binary("operator"))
            .env("KUBECONFIG", &operator_config)
            .env("OPERATOR_NAMESPACE", "analytics")
            .env("OPERATOR_LEASE_NAMESPACE", "capture-system")
            .env("OPERATOR_LEASE_DURATION", "3s")
            .env("OPERATOR_IDENTITY", identity)
            .env("OPERATOR_METRICS_ADDRESS", "127.0.0.1:0")
            .env("OPERATOR_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the operator")
    };
    let log = |identity: &str| {
        std::fs::read_to_string(dir.join(format!("{identity}.log"))).unwrap_or_default()
    };
    let holder = async || {
        kubectl
            .get("lease", "capture-system", "capture-operator")
            .await
            .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    // Two operators, as a Deployment of two replicas runs them.
    let mut first = start_operator("operator-a");
    eventually(
        "operator-a holding the lease",
        Duration::from_secs(30),
        async || match holder().await {
            Some(holder) if holder == "operator-a" => Ok(()),
            other => Err(format!("holder {other:?}; log: {}", log("operator-a"))),
        },
    )
    .await;
    let mut operator = start_operator("operator-b");
    step(
        label,
        started,
        "helm install: CRDs, ServiceAccount, RBAC; two operators run as that ServiceAccount, RBAC enforced",
    );

    // 2. The namespace and the Redis URL Secret, made as the walkthrough
    // makes them, then `examples/quickstart/` with its two EDIT values set
    // for this cluster, as a user would.
    if kubectl.get("namespace", "", "analytics").await.is_none() {
        kubectl.run(&["create", "namespace", "analytics"]).await;
    }
    kubectl
        .run(&[
            "-n",
            "analytics",
            "delete",
            "secret",
            "redis-capture",
            "--ignore-not-found",
        ])
        .await;
    kubectl
        .run(&[
            "-n",
            "analytics",
            "create",
            "secret",
            "generic",
            "redis-capture",
            &format!("--from-literal=url={}", cluster.redis_url),
        ])
        .await;
    let quickstart = dir.join("quickstart");
    std::fs::create_dir_all(&quickstart).expect("mkdir");
    let example =
        std::fs::read_to_string(common::repo().join("examples/quickstart/capturedeployment.yaml"))
            .expect("examples/quickstart/capturedeployment.yaml");
    let mut edited = example.clone();
    for (placeholder, value) in [
        (
            "ghcr.io/example/capture:0.1.0",
            cluster.capture_image.as_str(),
        ),
        ("kafka.data.svc:9092", broker),
    ] {
        assert!(
            edited.contains(placeholder),
            "examples/quickstart/capturedeployment.yaml no longer has {placeholder:?} to edit"
        );
        edited = edited.replace(placeholder, value);
    }
    std::fs::write(quickstart.join("capturedeployment.yaml"), edited).expect("write");
    kubectl.apply(quickstart.to_str().expect("utf-8")).await;
    // Topics are shared by every run on one broker: each run sends with
    // tokens of its own, and reads back only those.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = format!(
        "{}_{}",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let token = format!("phc_e2e_{run}");
    let events_topic = "clickhouse_events".to_owned();
    let get_cd = async || {
        kubectl
            .get("capturedeployment", "analytics", "capture")
            .await
            .expect("the CaptureDeployment")
    };

    // The owned objects appear as rendered.
    let deployment = eventually(
        "the capture Deployment",
        Duration::from_secs(60),
        async || {
            kubectl
                .get("deployment", "analytics", "capture")
                .await
                .ok_or_else(|| "no Deployment yet".to_owned())
        },
    )
    .await;
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        env_value(&deployment, "CAPTURE_KAFKA_BROKERS").as_deref(),
        Some(broker)
    );
    let cd = get_cd().await;
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["uid"], cd["metadata"]["uid"],
        "owned by the CaptureDeployment"
    );
    for kind in ["configmap", "service", "serviceaccount"] {
        assert!(
            kubectl.get(kind, "analytics", "capture").await.is_some(),
            "{kind}/capture"
        );
    }
    let config_map = kubectl
        .get("configmap", "analytics", "capture")
        .await
        .expect("ConfigMap");
    assert!(
        config_map["data"]["runtime.yaml"]
            .as_str()
            .is_some_and(|d| d.contains("redact")),
        "{config_map}"
    );

    // Topics are created on the real broker, and status says so.
    let status = eventually("TopicsReady=True", Duration::from_secs(60), async || {
        let cd = get_cd().await;
        match condition(&cd, "TopicsReady") {
            Some((status, _)) if status == "True" => Ok(cd),
            other => Err(format!("TopicsReady {other:?}; status {}", cd["status"])),
        }
    })
    .await;
    assert!(
        topics(broker).contains(&events_topic),
        "{events_topic} on the broker"
    );
    assert_eq!(
        topic_shape(broker, &events_topic, "retention.ms").await,
        (2, Some("3600000".to_owned())),
        "{events_topic}: the partitions and retention.ms asked for"
    );
    assert_eq!(
        status["status"]["observedGeneration"],
        status["metadata"]["generation"]
    );
    assert!(
        status["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty()),
        "the operator holds a finalizer: {}",
        status["metadata"]
    );
    // The two pods turn ready and so does the CaptureDeployment, with
    // both pods on the desired config.
    let ready = eventually("Ready=True", Duration::from_secs(90), async || {
        let cd = get_cd().await;
        match condition(&cd, "Ready") {
            Some((status, _)) if status == "True" && cd["status"]["configPods"] == 2 => Ok(cd),
            other => Err(format!("Ready {other:?}; status {}", cd["status"])),
        }
    })
    .await;
    assert_eq!(ready["status"]["readyReplicas"], 2);
    let shown = kubectl
        .run(&["get", "capturedeployments", "-n", "analytics"])
        .await;
    let header: Vec<&str> = shown
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "REPLICAS", "TOPICS", "AGE"],
        "{shown}"
    );
    let row: Vec<&str> = shown
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["capture", "True", "2", "8/8"], "{shown}");
    step(
        label,
        started,
        "kubectl apply -f examples/quickstart/ (brokers and image set): the operator rendered the objects, created the topics with the asked partitions and config; two capture pods run; `kubectl get capturedeployments` shows Ready",
    );
    let first_hash = ready["status"]["configHash"]
        .as_str()
        .expect("configHash")
        .to_owned();
    let proxy = Proxy::start(&kubectl).await;
    let pods = pod_hashes(&kubectl, &proxy).await;
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(
        pods.iter().all(|(_, hash)| *hash == first_hash),
        "{pods:?} vs {first_hash}"
    );

    // 3. An event sent to one pod lands in the events topic, redacted.
    let event = json!({"token": token, "event": "signed up", "distinct_id": "user-1",
        "properties": {"email": "ann@example.com", "phone": "555-0100"}});
    let (code, body) = proxy
        .post(&proxy.pod(&pods[0].0, "/e/"), &event.to_string())
        .await;
    assert_eq!(code, 200, "POST /e/ to pod {}: {body}", pods[0].0);
    let produced = read_sent(
        broker,
        &events_topic,
        &token,
        "signed up",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(produced.len(), 1, "the event reached Kafka once");
    let data = &produced[0]["data"];
    assert_eq!(data["properties"]["email"], "[redacted]", "{data}");
    assert_eq!(data["properties"]["phone"], "555-0100");
    step(
        label,
        started,
        "an event posted to a pod landed in Kafka, redacted by the runtime config",
    );

    // The real Python SDK, through the Service: every event lands once,
    // keyed by token and distinct id, with the token header.
    let host = proxy.service("");
    let python = std::env::var("CAPTURE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = tokio::process::Command::new(&python);
    command.arg(common::repo().join("e2e/tests/sdk/journey.py"));
    let sdk = Sdk {
        lib: "posthog-python",
        token: format!("phc_e2e_sdk_{run}"),
        event: "journey step",
        count: 20,
    };
    sdk.round_trip(command, &host, broker, &events_topic).await;
    step(
        label,
        started,
        "20 events from the PostHog Python SDK through the Service landed once each, keyed, with headers",
    );

    // The real posthog-node SDK, the same way.
    let modules = std::env::var("CAPTURE_TEST_NODE_MODULES")
        .expect("set CAPTURE_TEST_NODE_MODULES (run `. .ci/setup`) to posthog-node's node_modules");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(common::repo().join("e2e/tests/sdk/node_client.js"))
        .env("NODE_PATH", &modules);
    let sdk = Sdk {
        lib: "posthog-node",
        token: format!("phc_e2e_node_{run}"),
        event: "journey step (node)",
        count: 15,
    };
    sdk.round_trip(command, &host, broker, &events_topic).await;
    step(
        label,
        started,
        "15 events from posthog-node through the Service landed once each, keyed, with headers",
    );

    // 4. A CaptureQuota with a small limit: events past it are dropped with
    // quota_limited; raising it restores the flow; deleting it removes its
    // settings from Redis.
    let quota_token = format!("phc_e2e_quota_{run}");
    let quota = |limit: u32| {
        format!(
            "apiVersion: capture.dev/v1alpha1\nkind: CaptureQuota\nmetadata: {{name: small, namespace: analytics}}\n\
             spec:\n  deployment: capture\n  token: {quota_token}\n  action: drop\n\
             \x20 limits: [{{eventType: events, limit: {limit}, window: 1h}}]\n"
        )
    };
    let quota_file = dir.join("quota.yaml");
    std::fs::write(&quota_file, quota(5)).expect("write");
    kubectl.apply(quota_file.to_str().expect("utf-8")).await;
    let batch = |n: usize, offset: usize| {
        json!({"api_key": quota_token, "batch": (0..n).map(|i| json!({
            "event": "quota step", "distinct_id": format!("q-{}", i + offset), "properties": {}
        })).collect::<Vec<_>>()})
        .to_string()
    };
    let batch_url = proxy.service("/batch/");
    let (code, body) = eventually("the quota in force", Duration::from_secs(30), async || {
        let (code, body) = proxy.post(&batch_url, &batch(8, 0)).await;
        if body.contains("quota_limited") {
            Ok((code, body))
        } else {
            Err(format!("{code} {body}"))
        }
    })
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""quota_limited":["events"]"#), "{body}");
    std::fs::write(&quota_file, quota(1000)).expect("write");
    kubectl.apply(quota_file.to_str().expect("utf-8")).await;
    eventually(
        "the raised limit in force",
        Duration::from_secs(30),
        async || {
            let (code, body) = proxy.post(&batch_url, &batch(3, 100)).await;
            if code == 200 && !body.contains("quota_limited") {
                Ok(())
            } else {
                Err(format!("{code} {body}"))
            }
        },
    )
    .await;
    let settings_key = format!("quota-config:{{{quota_token}}}");
    assert_eq!(redis_exists(&cluster.redis_url, &settings_key), "1");
    kubectl
        .run(&[
            "delete",
            "capturequota",
            "small",
            "-n",
            "analytics",
            "--timeout=30s",
        ])
        .await;
    eventually(
        "the quota settings gone from Redis",
        Duration::from_secs(30),
        async || match redis_exists(&cluster.redis_url, &settings_key).as_str() {
            "0" => Ok(()),
            other => Err(format!("EXISTS {settings_key}: {other}")),
        },
    )
    .await;
    step(
        label,
        started,
        "a CaptureQuota limited a token with quota_limited, a raised limit restored it, deleting it cleared Redis",
    );

    // 5. A GitOps-style edit of the runtime config: same pods, new hash on
    // all.
    let names: Vec<String> = pods.iter().map(|(name, _)| name.clone()).collect();
    kubectl
        .merge_patch(
            "capturedeployment/capture",
            "analytics",
            r#"{"spec":{"runtimeConfig":{"plugins":[{"redact":{"keys":["email","phone"]}}]}}}"#,
        )
        .await;
    let updated = eventually(
        "every pod on the new config",
        Duration::from_secs(60),
        async || {
            let cd = get_cd().await;
            let hash = cd["status"]["configHash"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let pods = pod_hashes(&kubectl, &proxy).await;
            if hash != first_hash
                && cd["status"]["configPods"] == 2
                && pods.iter().all(|(_, h)| *h == hash)
            {
                Ok(pods)
            } else {
                Err(format!(
                    "configHash {hash}, pods {pods:?}, status {}",
                    cd["status"]
                ))
            }
        },
    )
    .await;
    let same: Vec<String> = updated.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(same, names, "the same pods, not restarted ones");
    let event = json!({"token": token, "event": "after the edit", "distinct_id": "user-2",
        "properties": {"email": "bo@example.com", "phone": "555-0101"}});
    let (code, body) = proxy.post(&proxy.service("/e/"), &event.to_string()).await;
    assert_eq!(code, 200, "{body}");
    let edited = read_sent(
        broker,
        &events_topic,
        &token,
        "after the edit",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(edited.len(), 1, "the event sent after the edit");
    assert_eq!(edited[0]["data"]["properties"]["phone"], "[redacted]");
    step(
        label,
        started,
        "a GitOps edit of the runtime config reached the same pods; every pod reports the new hash and redacts by it",
    );

    // 6. Scale; a deleted pod comes back; a deleted Service is restored.
    kubectl
        .merge_patch(
            "capturedeployment/capture",
            "analytics",
            r#"{"spec":{"replicas":3}}"#,
        )
        .await;
    let three = eventually("three ready pods", Duration::from_secs(60), async || {
        let pods = ready_pods(&kubectl).await;
        if pods.len() == 3 {
            Ok(pods)
        } else {
            Err(format!("{pods:?}"))
        }
    })
    .await;
    kubectl
        .run(&["delete", "pod", &three[0], "-n", "analytics"])
        .await;
    eventually("a replacement pod", Duration::from_secs(60), async || {
        let pods = ready_pods(&kubectl).await;
        if pods.len() == 3 && !pods.contains(&three[0]) {
            Ok(())
        } else {
            Err(format!("{pods:?}"))
        }
    })
    .await;
    kubectl
        .run(&["delete", "service", "capture", "-n", "analytics"])
        .await;
    eventually(
        "the Service restored",
        Duration::from_secs(60),
        async || {
            kubectl
                .get("service", "analytics", "capture")
                .await
                .map(|_| ())
                .ok_or_else(|| "no Service".to_owned())
        },
    )
    .await;
    let (code, body) = eventually(
        "the restored Service answering",
        Duration::from_secs(30),
        async || match proxy.post(&proxy.service("/e/"), &event.to_string()).await {
            (200, body) => Ok((200, body)),
            (code, body) => Err(format!("{code} {body}")),
        },
    )
    .await;
    assert_eq!(code, 200, "{body}");
    step(
        label,
        started,
        "scaled to 3 pods; a deleted pod came back; a deleted Service was restored and answers",
    );

    // 7. A durable spool: the pods move to a StatefulSet with a volume
    // each, and the Deployment goes once they all serve. Scaled down, the
    // volumes of the pods gone are drained by Jobs (capture --drain-spool
    // on each) and deleted. The spool removed, the Deployment comes back
    // and the last volume is drained too.
    let capture_named = async || -> Vec<(String, bool)> {
        capture_pods(&kubectl)
            .await
            .into_iter()
            .filter(|(name, _)| name.starts_with("capture-"))
            .collect()
    };
    let names = |items: Vec<Value>| -> Vec<String> {
        let mut names: Vec<String> = items
            .iter()
            .filter(|o| o["metadata"].get("deletionTimestamp").is_none())
            .map(|o| {
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        names.sort();
        names
    };
    kubectl
        .merge_patch(
            "capturedeployment/capture",
            "analytics",
            r#"{"spec":{"spool":{"size":"256Mi"}}}"#,
        )
        .await;
    let set = eventually(
        "the pods moved to a StatefulSet",
        Duration::from_secs(120),
        async || {
            let set = kubectl.get("statefulset", "analytics", "capture").await;
            let deployment = kubectl.get("deployment", "analytics", "capture").await;
            let pods = capture_named().await;
            let claims = names(kubectl.list("persistentvolumeclaims", "analytics").await);
            let cd = get_cd().await;
            let ready = condition(&cd, "Ready");
            let all_ready = pods.len() == 3 && pods.iter().all(|(_, ready)| *ready);
            match set {
                Some(set)
                    if deployment.is_none()
                        && all_ready
                        && pods.iter().map(|(n, _)| n.as_str()).eq(["capture-0", "capture-1", "capture-2"])
                        && claims == ["spool-capture-0", "spool-capture-1", "spool-capture-2"]
                        && ready.as_ref().is_some_and(|(s, _)| s == "True")
                        && cd["status"]["spoolDrains"] == 0 =>
                {
                    Ok(set)
                }
                set => Err(format!(
                    "StatefulSet {}, Deployment {}, pods {pods:?}, claims {claims:?}, Ready {ready:?}, spoolDrains {}",
                    set.is_some(),
                    deployment.is_some(),
                    cd["status"]["spoolDrains"]
                )),
            }
        },
    )
    .await;
    assert_eq!(set["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(
        set["spec"]["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
    );
    assert_eq!(
        env_value(&set, "CAPTURE_SPOOL_DIR").as_deref(),
        Some("/var/lib/capture/spool")
    );
    let (code, body) = eventually(
        "the spooling pods answering through the Service",
        Duration::from_secs(30),
        async || match proxy.post(&proxy.service("/e/"), &event.to_string()).await {
            (200, body) => Ok((200, body)),
            (code, body) => Err(format!("{code} {body}")),
        },
    )
    .await;
    assert_eq!(code, 200, "{body}");
    step(
        label,
        started,
        "spec.spool: the pods moved to a StatefulSet with a volume each, the Deployment went once they served, and they answer",
    );

    kubectl
        .merge_patch(
            "capturedeployment/capture",
            "analytics",
            r#"{"spec":{"replicas":1}}"#,
        )
        .await;
    eventually(
        "the volumes of the pods scaled away drained and deleted",
        Duration::from_secs(120),
        async || {
            let pods = capture_named().await;
            let claims = names(kubectl.list("persistentvolumeclaims", "analytics").await);
            let jobs = names(kubectl.list("jobs", "analytics").await);
            let cd = get_cd().await;
            let drained = condition(&cd, "SpoolDrained");
            if pods.iter().map(|(n, _)| n.as_str()).eq(["capture-0"])
                && claims == ["spool-capture-0"]
                && jobs.is_empty()
                && cd["status"]["spoolDrains"] == 0
                && drained.as_ref().is_some_and(|(s, _)| s == "True")
            {
                Ok(())
            } else {
                Err(format!(
                    "pods {pods:?}, claims {claims:?}, jobs {jobs:?}, SpoolDrained {drained:?}, spoolDrains {}",
                    cd["status"]["spoolDrains"]
                ))
            }
        },
    )
    .await;
    let reasons: Vec<String> = kubectl
        .list("events.events.k8s.io", "analytics")
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    for reason in ["SpoolDrainStarted", "SpoolVolumeDrained"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} Event: {reasons:?}"
        );
    }
    assert!(
        !reasons.iter().any(|r| r == "SpoolDrainFailed"),
        "{reasons:?}"
    );
    step(
        label,
        started,
        "scaled to 1: the volumes of pods 1 and 2 were drained by Jobs running capture --drain-spool, then deleted with their Jobs",
    );

    kubectl
        .merge_patch(
            "capturedeployment/capture",
            "analytics",
            r#"{"spec":{"spool":null}}"#,
        )
        .await;
    eventually(
        "back to a Deployment, the last volume drained",
        Duration::from_secs(120),
        async || {
            let set = kubectl.get("statefulset", "analytics", "capture").await;
            let deployment = kubectl.get("deployment", "analytics", "capture").await;
            let pods = capture_named().await;
            let claims = names(kubectl.list("persistentvolumeclaims", "analytics").await);
            let jobs = names(kubectl.list("jobs", "analytics").await);
            let cd = get_cd().await;
            let ready = condition(&cd, "Ready");
            if set.is_none()
                && deployment.is_some()
                && pods.len() == 1
                && pods.iter().all(|(name, ready)| *ready && name != "capture-0")
                && claims.is_empty()
                && jobs.is_empty()
                && cd["status"].get("spoolDrains").is_none()
                && ready.as_ref().is_some_and(|(s, _)| s == "True")
            {
                Ok(())
            } else {
                Err(format!(
                    "StatefulSet {}, Deployment {}, pods {pods:?}, claims {claims:?}, jobs {jobs:?}, Ready {ready:?}, status {}",
                    set.is_some(),
                    deployment.is_some(),
                    cd["status"]
                ))
            }
        },
    )
    .await;
    step(
        label,
        started,
        "spec.spool removed: the Deployment came back, the StatefulSet went once it served, and its last volume was drained and deleted",
    );

    // 8. Only the leader acts.
    assert_eq!(holder().await.as_deref(), Some("operator-a"));
    assert!(
        log("operator-b").contains("standing by for the leader lease"),
        "{}",
        log("operator-b")
    );
    assert!(
        !log("operator-b").contains("controllers start"),
        "{}",
        log("operator-b")
    );
    // The leader killed mid-reconcile: a change whose brokers hang makes
    // it apply the objects, then wait on the topics; it dies there.
    let (stalling, asked) = stalling_broker().await;
    kubectl
        .merge_patch(
            "capturedeployment/capture",
            "analytics",
            &json!({"spec": {"replicas": 2, "kafka": {"brokers": [stalling]}}}).to_string(),
        )
        .await;
    eventually(
        "operator-a stuck on the topics of the change",
        Duration::from_secs(30),
        async || {
            let deployment = kubectl.get("deployment", "analytics", "capture").await;
            let brokers = deployment
                .as_ref()
                .and_then(|d| env_value(d, "CAPTURE_KAFKA_BROKERS"));
            let cd = get_cd().await;
            let connections = asked.load(std::sync::atomic::Ordering::SeqCst);
            if brokers.as_deref() == Some(stalling.as_str())
                && connections > 0
                && cd["status"]["observedGeneration"] != cd["metadata"]["generation"]
            {
                Ok(())
            } else {
                Err(format!(
                    "Deployment brokers {brokers:?}, {connections} connections to the stalling broker, \
                     generation {} observed {}",
                    cd["metadata"]["generation"], cd["status"]["observedGeneration"]
                ))
            }
        },
    )
    .await;
    first.kill().await.expect("kill operator-a");
    let starts_before = log("operator-a").matches("controllers start").count()
        + log("operator-b").matches("controllers start").count();
    // Started again, as its container would be, under the same identity.
    let mut first = start_operator("operator-a");
    // The user fixes the brokers; whichever takes the lease converges
    // everything the dead leader left half done.
    kubectl
        .merge_patch(
            "capturedeployment/capture",
            "analytics",
            &json!({"spec": {"kafka": {"brokers": [broker]}}}).to_string(),
        )
        .await;
    eventually(
        "a leader again, and converged",
        Duration::from_secs(90),
        async || {
            let holder = holder().await;
            let deployment = kubectl.get("deployment", "analytics", "capture").await;
            let brokers = deployment
                .as_ref()
                .and_then(|d| env_value(d, "CAPTURE_KAFKA_BROKERS"));
            let replicas = deployment.as_ref().map(|d| d["spec"]["replicas"].clone());
            let cd = get_cd().await;
            let ready = condition(&cd, "Ready");
            let pods = capture_pods(&kubectl).await;
            if matches!(holder.as_deref(), Some("operator-a" | "operator-b"))
                && brokers.as_deref() == Some(broker)
                && replicas == Some(json!(2))
                && cd["status"]["observedGeneration"] == cd["metadata"]["generation"]
                && ready.as_ref().is_some_and(|(s, _)| s == "True")
                && pods.len() == 2
                && pods.iter().all(|(_, ready)| *ready)
            {
                Ok(())
            } else {
                Err(format!(
                    "holder {holder:?}, Deployment brokers {brokers:?} replicas {replicas:?}, \
                     pods {pods:?}, Ready {ready:?}, status {}",
                    cd["status"]
                ))
            }
        },
    )
    .await;
    let starts_after = log("operator-a").matches("controllers start").count()
        + log("operator-b").matches("controllers start").count();
    assert_eq!(
        starts_after,
        starts_before + 1,
        "one new leader started its controllers after the kill:\noperator-a: {}\noperator-b: {}",
        log("operator-a"),
        log("operator-b")
    );
    step(
        label,
        started,
        "two operators: only the leader acted; killed mid-reconcile and started again, a new leader converged",
    );

    // 9. Deleting: the operator lets go, owned objects are collected,
    // topics stay.
    kubectl
        .run(&[
            "delete",
            "capturedeployment",
            "capture",
            "-n",
            "analytics",
            "--timeout=60s",
        ])
        .await;
    assert!(
        kubectl
            .get("capturedeployment", "analytics", "capture")
            .await
            .is_none()
    );
    eventually(
        "the owned objects and pods collected",
        Duration::from_secs(60),
        async || {
            let mut left = Vec::new();
            for kind in ["deployment", "configmap", "service", "serviceaccount"] {
                if kubectl.get(kind, "analytics", "capture").await.is_some() {
                    left.push(kind.to_owned());
                }
            }
            left.extend(
                capture_pods(&kubectl)
                    .await
                    .into_iter()
                    .map(|(name, _)| name),
            );
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {left:?}"))
            }
        },
    )
    .await;
    assert!(
        topics(broker).contains(&events_topic),
        "topics (data) are kept"
    );
    for (identity, process) in [("operator-a", &mut first), ("operator-b", &mut operator)] {
        assert!(
            process.try_wait().expect("operator status").is_none(),
            "{identity} is still running"
        );
    }
    step(
        label,
        started,
        "deleting the CaptureDeployment collected its objects and pods; its topics (data) stayed",
    );

    // Nothing the operators did was refused by the chart's RBAC.
    for identity in ["operator-a", "operator-b"] {
        let log = log(identity);
        assert!(
            !log.contains("forbidden") && !log.contains("Forbidden"),
            "{identity} was refused: {log}"
        );
    }
    if let Some(server) = &cluster.stand_in {
        // Only what the test itself tried as the operator: namespaces,
        // and Secrets outside `analytics`.
        let denials = server.denials();
        assert_eq!(denials.len(), 3, "the chart's RBAC refused: {denials:#?}");
        assert!(
            denials[0].contains("cannot list resource \"namespaces\""),
            "{denials:?}"
        );
        assert!(
            denials[1].contains("cannot list resource \"secrets\"")
                && denials[1].contains("\"capture-system\""),
            "{denials:?}"
        );
        assert!(
            denials[2].contains("cannot list resource \"secrets\"")
                && denials[2].contains("at the cluster scope"),
            "{denials:?}"
        );
    }
    step(
        label,
        started,
        "every request the operators made was allowed by the chart's RBAC",
    );
    let _ = operator.kill().await;
    let _ = first.kill().await;
}
