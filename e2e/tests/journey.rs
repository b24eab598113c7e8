//! The real operator binary against the API server stand-in, over HTTP as
//! in a cluster, with the node stand-in running the real capture binary as
//! pods, a real Kafka-protocol broker and a real Redis:
//! `kubectl apply` a CaptureDeployment and the operator renders its
//! objects, creates its topics and reports status; its pods run and turn
//! Ready; an event sent to a pod, and the Python SDK's events sent through
//! the Service, land in Kafka with the runtime config's plugins applied; a GitOps edit of the runtime config reaches the same
//! pod processes and every pod reports the new hash; `kubectl delete` it
//! and the operator's finalizer lets go, the owned objects (pods too) are
//! collected, and the topics (data) stay.

mod common;

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

/// The messages on `topic` (`key`, `headers`, and the event as `data`),
/// once `count` have arrived or `timeout` passed.
fn read(broker: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Value> {
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
    while out.len() < count && std::time::Instant::now() < deadline {
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

/// One HTTP/1.1 exchange with `address`: the status code and body.
async fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("send");
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response)
        .await
        .expect("response");
    let code = response
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Pods of the CaptureDeployment that are Ready, by name.
fn ready_pods(server: &ApiServer) -> Vec<String> {
    let mut names: Vec<String> = server
        .mutate(|store| store.list("", "pods", Some("analytics")))
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

/// A PostHog SDK run as a client script: `<command> HOST TOKEN COUNT`.
struct Sdk {
    /// `$lib` its events carry.
    lib: &'static str,
    token: &'static str,
    /// The event name the script sends.
    event: &'static str,
    count: usize,
}

impl Sdk {
    /// Runs the script against `host`, then reads `topic` until `total`
    /// messages are there, and checks that each of this SDK's events
    /// arrived once, keyed `token:distinct_id`, with the token header and
    /// redacted.
    async fn round_trip(
        &self,
        mut command: tokio::process::Command,
        host: &str,
        broker: &str,
        topic: &str,
        total: usize,
    ) {
        let sent = command
            .args([host, self.token, &self.count.to_string()])
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
        let (broker, topic) = (broker.to_owned(), topic.to_owned());
        let produced = tokio::task::spawn_blocking(move || {
            read(&broker, &topic, total, Duration::from_secs(30))
        })
        .await
        .expect("read");
        let mine: Vec<&Value> = produced
            .iter()
            .filter(|m| m["data"]["event"] == self.event)
            .collect();
        assert_eq!(
            mine.len(),
            self.count,
            "every {} event once: {produced:?}",
            self.lib
        );
        for message in &mine {
            let distinct_id = message["data"]["distinct_id"]
                .as_str()
                .expect("distinct_id");
            assert_eq!(
                message["key"],
                format!("{}:{distinct_id}", self.token).as_str()
            );
            assert_eq!(message["headers"]["token"], self.token);
            assert_eq!(message["data"]["properties"]["email"], "[redacted]");
            assert_eq!(message["data"]["properties"]["$lib"], self.lib);
        }
    }
}

/// Prints a journey step as it passes (straight to stderr, so the summary
/// shows even when the test harness captures output).
fn step(started: std::time::Instant, what: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "[journey] {:>6.1} s  ok  {what}",
        started.elapsed().as_secs_f64()
    );
}

/// `GET /_readiness` of the pod at `ip`: the runtime config hash it reports.
async fn pod_hash(ip: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect((ip, 3000)).await.ok()?;
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /_readiness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .ok()?;
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut text)
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("runtime-config "))
        .map(str::to_owned)
}

/// Each running pod's name and the runtime config hash it reports.
async fn pod_hashes(server: &ApiServer) -> Vec<(String, String)> {
    let pods = server.mutate(|store| store.list("", "pods", Some("analytics")));
    let mut out = Vec::new();
    for pod in pods {
        let Some(ip) = pod["status"]["podIP"].as_str() else {
            continue;
        };
        if let Some(hash) = pod_hash(ip).await {
            out.push((
                pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                hash,
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_journey_with_real_parts() {
    let started = std::time::Instant::now();
    let broker = common::broker::broker();
    let redis = common::redis::RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ApiServer::default();
    let (address, _task) = server
        .start(([127, 0, 0, 1], 0).into())
        .await
        .expect("start");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, ApiServer::kubeconfig(address, "default")).expect("kubeconfig");
    let kubectl = Kubectl::new(kubeconfig.clone(), dir.path());

    kubectl.apply("crds/").await;
    kubectl
        .wait_established(&["crd/capturedeployments.capture.dev"])
        .await;
    let id = std::process::id();
    let events_topic = format!("e2e-events-{id}");
    let manifest = dir.path().join("capture.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: analytics}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {{name: capture-system}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: redis-capture, namespace: analytics}}\n\
             stringData: {{url: '{redis}'}}\n---\n\
             apiVersion: capture.dev/v1alpha1\nkind: CaptureDeployment\n\
             metadata: {{name: capture, namespace: analytics}}\n\
             spec:\n  image: capture:e2e\n  replicas: 2\n  service: {{port: 8080}}\n\
             \x20 kafka:\n    brokers: ['{broker}']\n    topics:\n\
             \x20     events: {{name: {events_topic}, partitions: 2, replicationFactor: 1}}\n\
             \x20 redis: {{urlSecretRef: {{name: redis-capture, key: url}}}}\n\
             \x20 runtimeConfig:\n    plugins: [{{redact: {{keys: [email]}}}}]\n",
            redis = redis.url(),
            broker = broker.address,
        ),
    )
    .expect("write");
    kubectl.apply(manifest.to_str().expect("utf-8")).await;

    // The operator's RBAC, as the chart renders it; the operators then run
    // as its ServiceAccount, every request decided by those rules.
    let helm = std::env::var_os("CAPTURE_TEST_HELM")
        .expect("set CAPTURE_TEST_HELM (run `. .ci/setup`) to a helm binary");
    let rendered = tokio::process::Command::new(helm)
        .current_dir(common::repo())
        .args([
            "template",
            "capture-operator",
            "charts/capture-operator",
            "-n",
            "capture-system",
        ])
        .output()
        .await
        .expect("run helm");
    assert!(
        rendered.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let mut rbac = String::new();
    for document in serde_yaml::Deserializer::from_slice(&rendered.stdout) {
        let object = <Value as serde::Deserialize>::deserialize(document).expect("YAML");
        if [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ]
        .contains(&object["kind"].as_str().unwrap_or_default())
        {
            rbac.push_str(&serde_yaml::to_string(&object).expect("YAML"));
            rbac.push_str("---\n");
        }
    }
    let rbac_file = dir.path().join("rbac.yaml");
    std::fs::write(&rbac_file, rbac).expect("write");
    kubectl.apply(rbac_file.to_str().expect("utf-8")).await;
    let (operator_address, _operator_listener) = server
        .start_for(
            ([127, 0, 0, 1], 0).into(),
            "system:serviceaccount:capture-system:capture-operator",
        )
        .await
        .expect("listen for the operator");
    let operator_kubeconfig = dir.path().join("operator-kubeconfig");
    std::fs::write(
        &operator_kubeconfig,
        ApiServer::kubeconfig(operator_address, "capture-system"),
    )
    .expect("kubeconfig");
    // Enforced: the ServiceAccount may not do what the chart does not grant.
    let as_operator = Kubectl::new(operator_kubeconfig.clone(), &dir.path().join("as-operator"));
    let refused = as_operator
        .command(&["delete", "namespace", "analytics"])
        .output()
        .await
        .expect("run kubectl");
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success() && said.contains("forbidden"),
        "{}: {said}{}",
        refused.status,
        String::from_utf8_lossy(&refused.stdout)
    );
    assert_eq!(server.denials().len(), 1, "{:?}", server.denials());
    step(
        started,
        "helm template rendered the operator's RBAC; applied, the operators run as its ServiceAccount",
    );

    // Two operators, as a Deployment of two replicas would run them.
    let start_operator = |identity: &str| {
        let log =
            std::fs::File::create(dir.path().join(format!("{identity}.log"))).expect("log file");
        tokio::process::Command::new(binary("operator"))
            .env("KUBECONFIG", &operator_kubeconfig)
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
        std::fs::read_to_string(dir.path().join(format!("{identity}.log"))).unwrap_or_default()
    };
    let holder = || {
        server
            .object(
                "coordination.k8s.io",
                "leases",
                "capture-system",
                "capture-operator",
            )
            .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    let mut first = start_operator("operator-a");
    eventually(
        "operator-a holding the lease",
        Duration::from_secs(30),
        async || {
            if holder().as_deref() == Some("operator-a") {
                Ok(())
            } else {
                Err(format!("{:?}", holder()))
            }
        },
    )
    .await;
    let mut operator = start_operator("operator-b");
    let _node = Node::new(
        server.clone(),
        dir.path().join("node"),
        vec![("capture".into(), binary("capture"))],
    )
    .spawn();

    // The owned objects appear as rendered.
    let deployment = eventually(
        "the capture Deployment",
        Duration::from_secs(60),
        async || {
            server
                .object("apps", "deployments", "analytics", "capture")
                .ok_or_else(|| "no Deployment yet".to_owned())
        },
    )
    .await;
    assert_eq!(deployment["spec"]["replicas"], 2);
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let brokers = env
        .as_array()
        .expect("env")
        .iter()
        .find(|v| v["name"] == "CAPTURE_KAFKA_BROKERS")
        .expect("brokers set");
    assert_eq!(brokers["value"], broker.address.as_str());
    let cd = server
        .object("capture.dev", "capturedeployments", "analytics", "capture")
        .expect("stored");
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["uid"], cd["metadata"]["uid"],
        "owned by the CaptureDeployment"
    );
    for (plural, name) in [
        ("configmaps", "capture"),
        ("services", "capture"),
        ("serviceaccounts", "capture"),
    ] {
        assert!(
            server.object("", plural, "analytics", name).is_some(),
            "{plural}/{name}"
        );
    }
    let config_map = server
        .object("", "configmaps", "analytics", "capture")
        .expect("ConfigMap");
    assert!(
        config_map["data"]["runtime.yaml"]
            .as_str()
            .is_some_and(|d| d.contains("redact")),
        "{config_map}"
    );

    // Topics are created on the real broker, and status says so.
    let status = eventually("TopicsReady=True", Duration::from_secs(60), async || {
        let cd = server
            .object("capture.dev", "capturedeployments", "analytics", "capture")
            .expect("stored");
        match condition(&cd, "TopicsReady") {
            Some((status, _)) if status == "True" => Ok(cd),
            other => Err(format!("TopicsReady {other:?}; status {}", cd["status"])),
        }
    })
    .await;
    assert!(
        topics(&broker.address).contains(&events_topic),
        "{events_topic} on the broker"
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
    // The node runs the two pods; they turn ready and so does the
    // CaptureDeployment, with both pods on the desired config.
    let ready = eventually("Ready=True", Duration::from_secs(90), async || {
        let cd = server
            .object("capture.dev", "capturedeployments", "analytics", "capture")
            .expect("stored");
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
    assert_eq!(&row[..4], ["capture", "True", "2", "6/6"], "{shown}");
    step(
        started,
        "the operator rendered the objects, created the topics; two capture pods run; `kubectl get capturedeployments` shows Ready",
    );
    let first_hash = ready["status"]["configHash"]
        .as_str()
        .expect("configHash")
        .to_owned();
    let pods = pod_hashes(&server).await;
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(
        pods.iter().all(|(_, hash)| *hash == first_hash),
        "{pods:?} vs {first_hash}"
    );

    // An event sent to a pod lands in the events topic, redacted.
    let pod = server.mutate(|store| store.list("", "pods", Some("analytics")))[0].clone();
    let ip = pod["status"]["podIP"].as_str().expect("pod IP").to_owned();
    let event = json!({"token": "phc_e2e", "event": "signed up", "distinct_id": "user-1",
        "properties": {"email": "ann@example.com", "phone": "555-0100"}});
    let body = event.to_string();
    let request = format!(
        "POST /e/ HTTP/1.1\r\nHost: {ip}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect((ip.as_str(), 3000))
        .await
        .expect("connect to the pod");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("send");
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response)
        .await
        .expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let topic = events_topic.clone();
    let address = broker.address.clone();
    let produced =
        tokio::task::spawn_blocking(move || read(&address, &topic, 1, Duration::from_secs(20)))
            .await
            .expect("read");
    assert_eq!(produced.len(), 1, "the event reached Kafka");
    let data = &produced[0]["data"];
    assert_eq!(data["properties"]["email"], "[redacted]", "{data}");
    assert_eq!(data["properties"]["phone"], "555-0100");
    step(
        started,
        "an event posted to a pod landed in Kafka, redacted by the runtime config",
    );

    // The real Python SDK, through the Service (the node's proxy on its
    // cluster IP, spreading connections over the ready pods): every event
    // lands once, keyed by token and distinct id, with the token header.
    let service = server
        .object("", "services", "analytics", "capture")
        .expect("Service");
    let host = format!(
        "http://{}:{}",
        service["spec"]["clusterIP"].as_str().expect("cluster IP"),
        8080
    );
    let python = std::env::var("CAPTURE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = tokio::process::Command::new(&python);
    command.arg(common::repo().join("e2e/tests/sdk/journey.py"));
    let sdk = Sdk {
        lib: "posthog-python",
        token: "phc_e2e_sdk",
        event: "journey step",
        count: 20,
    };
    sdk.round_trip(command, &host, &broker.address, &events_topic, 21)
        .await;
    step(
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
        token: "phc_e2e_node",
        event: "journey step (node)",
        count: 15,
    };
    sdk.round_trip(command, &host, &broker.address, &events_topic, 36)
        .await;
    step(
        started,
        "15 events from posthog-node through the Service landed once each, keyed, with headers",
    );

    // A GitOps-style edit of the runtime config: same pods, new hash on all.
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
            let cd = server
                .object("capture.dev", "capturedeployments", "analytics", "capture")
                .expect("stored");
            let hash = cd["status"]["configHash"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let pods = pod_hashes(&server).await;
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
    step(
        started,
        "a GitOps edit of the runtime config reached the same pods, every pod reports the new hash",
    );

    // A CaptureQuota with a small limit: events past it are dropped with
    // quota_limited; raising it restores the flow; deleting it removes its
    // settings from Redis.
    let quota = |limit: u32| {
        format!(
            "apiVersion: capture.dev/v1alpha1\nkind: CaptureQuota\nmetadata: {{name: small, namespace: analytics}}\n\
             spec:\n  deployment: capture\n  token: phc_e2e_quota\n  action: drop\n\
             \x20 limits: [{{eventType: events, limit: {limit}, window: 1h}}]\n"
        )
    };
    let quota_file = dir.path().join("quota.yaml");
    std::fs::write(&quota_file, quota(5)).expect("write");
    kubectl.apply(quota_file.to_str().expect("utf-8")).await;
    let batch = |n: usize, offset: usize| {
        json!({"api_key": "phc_e2e_quota", "batch": (0..n).map(|i| json!({
            "event": "quota step", "distinct_id": format!("q-{}", i + offset), "properties": {}
        })).collect::<Vec<_>>()})
        .to_string()
    };
    let service_address = format!(
        "{}:8080",
        service["spec"]["clusterIP"].as_str().expect("cluster IP")
    );
    let (code, body) = eventually("the quota in force", Duration::from_secs(30), async || {
        let (code, body) = http(&service_address, "POST", "/batch/", &batch(8, 0)).await;
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
            let (code, body) = http(&service_address, "POST", "/batch/", &batch(3, 100)).await;
            if code == 200 && !body.contains("quota_limited") {
                Ok(())
            } else {
                Err(format!("{code} {body}"))
            }
        },
    )
    .await;
    let settings_key = "quota-config:{phc_e2e_quota}";
    assert_eq!(redis.cli(&["EXISTS", settings_key]).trim(), "1");
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
        async || {
            let exists = redis.cli(&["EXISTS", settings_key]);
            if exists.trim() == "0" {
                Ok(())
            } else {
                Err(exists)
            }
        },
    )
    .await;
    step(
        started,
        "a CaptureQuota limited a token with quota_limited, a raised limit restored it, deleting it cleared Redis",
    );

    // Scale; a deleted pod comes back; a deleted Service is restored.
    kubectl
        .merge_patch(
            "capturedeployment/capture",
            "analytics",
            r#"{"spec":{"replicas":3}}"#,
        )
        .await;
    let three = eventually("three ready pods", Duration::from_secs(60), async || {
        let pods = ready_pods(&server);
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
        let pods = ready_pods(&server);
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
            server
                .object("", "services", "analytics", "capture")
                .map(|_| ())
                .ok_or_else(|| "no Service".to_owned())
        },
    )
    .await;
    step(
        started,
        "scaled to 3 pods; a deleted pod came back; a deleted Service was restored",
    );

    // Only the leader acts; killed mid-run, the standby takes over and
    // converges what changed meanwhile.
    assert_eq!(holder().as_deref(), Some("operator-a"));
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
    first.kill().await.expect("kill operator-a");
    kubectl
        .merge_patch(
            "capturedeployment/capture",
            "analytics",
            r#"{"spec":{"replicas":2}}"#,
        )
        .await;
    eventually(
        "operator-b leading and converged",
        Duration::from_secs(30),
        async || {
            let replicas = server
                .object("apps", "deployments", "analytics", "capture")
                .map(|d| d["spec"]["replicas"].clone());
            if holder().as_deref() == Some("operator-b") && replicas == Some(json!(2)) {
                Ok(())
            } else {
                Err(format!(
                    "holder {:?}, Deployment replicas {replicas:?}",
                    holder()
                ))
            }
        },
    )
    .await;
    assert!(
        log("operator-b").contains("controllers start"),
        "{}",
        log("operator-b")
    );
    step(
        started,
        "two operators: only the leader acted; the leader killed, the standby took over and converged",
    );

    // Deleting: the operator lets go, owned objects are collected, topics stay.
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
        server
            .object("capture.dev", "capturedeployments", "analytics", "capture")
            .is_none()
    );
    for (group, plural) in [
        ("apps", "deployments"),
        ("", "configmaps"),
        ("", "services"),
    ] {
        assert!(
            server
                .object(group, plural, "analytics", "capture")
                .is_none(),
            "{plural} collected"
        );
    }
    assert!(
        topics(&broker.address).contains(&events_topic),
        "topics (data) are kept"
    );
    let pods = server.mutate(|store| store.list("", "pods", Some("analytics")));
    assert!(
        pods.is_empty(),
        "pods collected with their Deployment: {pods:?}"
    );
    assert!(
        operator.try_wait().expect("operator status").is_none(),
        "the operator is still running"
    );
    step(
        started,
        "deleting the CaptureDeployment collected its objects and pods; its topics (data) stayed",
    );
    let denials = server.denials();
    assert_eq!(
        denials.len(),
        1,
        "the chart's RBAC refused the operator: {denials:#?}"
    );
    assert!(
        denials[0].contains("cannot delete resource \"namespaces\""),
        "{denials:?}"
    );
    step(
        started,
        "every request the operators made was allowed by the chart's RBAC",
    );
    let _ = operator.kill().await;
}
