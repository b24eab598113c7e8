//! The real operator binary against the API server stand-in, over HTTP as
//! in a cluster, with a real Kafka-protocol broker and a real Redis:
//! `kubectl apply` a CaptureDeployment and the operator renders its
//! objects, creates its topics and reports status; `kubectl delete` it and
//! the operator's finalizer lets go, the owned objects are collected, and
//! the topics (data) stay.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::kubectl::Kubectl;
use common::{binary, eventually};
use e2e::ApiServer;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::Value;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reconciles_a_capture_deployment_and_lets_go_of_it() {
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

    kubectl
        .run(&["apply", "--validate=false", "-f", "crds/"])
        .await;
    kubectl
        .run(&[
            "wait",
            "--for",
            "condition=Established",
            "--timeout=20s",
            "crd/capturedeployments.capture.dev",
        ])
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
             spec:\n  image: capture:e2e\n  replicas: 2\n\
             \x20 kafka:\n    brokers: ['{broker}']\n    topics:\n\
             \x20     events: {{name: {events_topic}, partitions: 2, replicationFactor: 1}}\n\
             \x20 redis: {{urlSecretRef: {{name: redis-capture, key: url}}}}\n\
             \x20 runtimeConfig:\n    plugins: [{{redact: {{keys: [email]}}}}]\n",
            redis = redis.url(),
            broker = broker.address,
        ),
    )
    .expect("write");
    kubectl
        .run(&[
            "apply",
            "--validate=false",
            "-f",
            manifest.to_str().expect("utf-8"),
        ])
        .await;

    let mut operator = tokio::process::Command::new(binary("operator"))
        .env("KUBECONFIG", &kubeconfig)
        .env("OPERATOR_LEASE_NAMESPACE", "capture-system")
        .env("OPERATOR_METRICS_ADDRESS", "127.0.0.1:0")
        .env("OPERATOR_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the operator");

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
    // No pods run here yet (no node stand-in), so it is not Ready.
    assert_eq!(
        condition(&status, "Ready").map(|c| c.0).as_deref(),
        Some("False")
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
    assert!(
        operator.try_wait().expect("operator status").is_none(),
        "the operator is still running"
    );
    let _ = operator.kill().await;
}
