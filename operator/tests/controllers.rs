//! The running operator (leader election, both controllers, their watches)
//! against the in-memory API: a deleted child comes back, a changed Secret
//! rolls the pods, and a runtime config change reaches only the ConfigMap.
//! Topics go to the shared tansu broker.

mod common;

use std::time::Duration;

use common::memory::MemoryApi;
use common::path;
use common::running::{start, wait_until};
use serde_json::{Value, json};

const NS: &str = "/namespaces/default";

/// A CaptureDeployment on the shared broker, with its own topics.
fn seed(api: &MemoryApi, runtime: Value) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = |kind: &str| json!({"name": format!("{kind}-{id}"), "partitions": 1, "replicationFactor": 1});
    let cd = path("capture.dev/v1alpha1", "capturedeployments", "capture");
    api.insert(
        &cd,
        json!({
            "apiVersion": "capture.dev/v1alpha1", "kind": "CaptureDeployment",
            "metadata": {"name": "capture", "namespace": "default", "uid": "00000000-0000-4000-8000-0000000000cd", "generation": 1},
            "spec": {
                "image": "capture:dev",
                "kafka": {
                    "brokers": [common::broker::broker().address.clone()],
                    "topics": {
                        "events": topic("events"), "recordings": topic("recordings"),
                        "historical": topic("historical"), "clientWarnings": topic("warnings"),
                        "exceptions": topic("exceptions"), "overflow": topic("overflow"),
                    "heatmaps": topic("heatmaps"), "dlq": topic("dlq"),
                    },
                },
                "runtimeConfig": runtime,
            },
        }),
    );
    cd
}

fn annotation(object: Option<Value>, pointer: &str) -> Option<String> {
    object?.pointer(pointer)?.as_str().map(str::to_owned)
}

const SETTINGS_HASH: &str = "/spec/template/metadata/annotations/capture.dev~1settings-hash";
const CONFIG_HASH: &str = "/metadata/annotations/capture.dev~1config-hash";

/// The reasons of the Events posted about the CaptureDeployment.
fn event_reasons(api: &MemoryApi) -> Vec<String> {
    api.under(&format!("/apis/events.k8s.io/v1{NS}/events/"))
        .iter()
        .map(|event| event["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A pod's readiness endpoint: answers `runtime-config <hash>` with the
/// hash it is given; returns its port and the hash to change.
async fn readiness_stand_in(hash: &str) -> (u16, std::sync::Arc<std::sync::Mutex<String>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let in_force = std::sync::Arc::new(std::sync::Mutex::new(hash.to_owned()));
    let shared = std::sync::Arc::clone(&in_force);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let hash = shared.lock().expect("hash").clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let body = format!("ready\nruntime-config {hash}\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, in_force)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_come_back_secrets_roll_pods_and_config_only_reloads() {
    let api = MemoryApi::default();
    let cd = seed(&api, json!({"dedup": {"ttl": "1m"}}));
    let service = path("v1", "services", "capture");
    let deployment = path("apps/v1", "deployments", "capture");
    let config_map = path("v1", "configmaps", "capture");
    let running = start(api.client());
    let long = Duration::from_secs(60);
    wait_until(
        "the children",
        long,
        || {
            api.get(&service).is_some()
                && api.get(&config_map).is_some()
                && common::running::ready_reason(api.get(&cd)).is_some()
        },
        || format!("status {:?}", api.get(&cd).map(|o| o["status"].clone())),
    )
    .await;

    // A deleted Service comes back: its watch brings the owner back.
    api.delete(&service);
    wait_until(
        "the Service to come back",
        long,
        || api.get(&service).is_some(),
        || "still gone".into(),
    )
    .await;

    // A ready pod, served by a stand-in that answers readiness with the
    // runtime config hash it has in force (the old one, for now).
    let config = annotation(api.get(&config_map), CONFIG_HASH).expect("config hash");
    let (port, in_force) = readiness_stand_in(&config).await;
    api.insert(
        &path("v1", "pods", "capture-0"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "capture-0", "namespace": "default",
                         "labels": {"app.kubernetes.io/name": "capture", "app.kubernetes.io/instance": "capture"}},
            "spec": {"containers": [{"name": "capture", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }),
    );

    // A runtime config change rewrites the ConfigMap and leaves the pods.
    let settings = annotation(api.get(&deployment), SETTINGS_HASH).expect("settings hash");
    api.update(&cd, |object| {
        object["spec"]["runtimeConfig"] = json!({"dedup": {"ttl": "2m"}});
        object["metadata"]["generation"] = json!(2);
    });
    wait_until(
        "the new runtime config",
        long,
        || annotation(api.get(&config_map), CONFIG_HASH).is_some_and(|now| now != config),
        || "old hash".into(),
    )
    .await;
    let document = api.get(&config_map).expect("ConfigMap")["data"]["runtime.yaml"]
        .as_str()
        .expect("document")
        .to_owned();
    assert!(document.contains("ttl: 2m"), "{document}");
    assert_eq!(
        annotation(api.get(&deployment), SETTINGS_HASH).as_deref(),
        Some(settings.as_str()),
        "no roll for a runtime config change"
    );
    let new_config = annotation(api.get(&config_map), CONFIG_HASH).expect("hash");
    wait_until(
        "the status to show the new config",
        long,
        || api.get(&cd).expect("cd")["status"]["configHash"].as_str() == Some(new_config.as_str()),
        || {
            format!(
                "{:?}",
                api.get(&cd).map(|o| o["status"]["configHash"].clone())
            )
        },
    )
    .await;
    // The pod still runs the old config: 0 of 1 until it reloads.
    let applied = |api: &MemoryApi| {
        let status = api.get(&cd).expect("cd")["status"].clone();
        let condition = status["conditions"].as_array().and_then(|c| {
            c.iter()
                .find(|c| c["type"] == "RuntimeConfigApplied")
                .cloned()
        });
        (
            status["configPods"].as_i64(),
            condition.map(|c| c["reason"].clone()),
        )
    };
    wait_until(
        "the status to count the pod still on the old config",
        long,
        || applied(&api) == (Some(0), Some(json!("Propagating"))),
        || format!("{:?}", applied(&api)),
    )
    .await;
    *in_force.lock().expect("hash") = new_config.clone();
    wait_until(
        "the status to see the pod reload",
        long,
        || applied(&api) == (Some(1), Some(json!("AllPods"))),
        || format!("{:?}", applied(&api)),
    )
    .await;

    // A Secret it reads appears and changes: the pods roll each time.
    api.update(&cd, |object| {
        object["spec"]["redis"] = json!({"urlSecretRef": {"name": "redis", "key": "url"}});
        object["metadata"]["generation"] = json!(3);
    });
    let secret = path("v1", "secrets", "redis");
    api.insert(
        &secret,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": "default"},
               "data": {"url": "cmVkaXM6Ly9yZWRpcy0xOjYzNzk="}}),
    );
    let current = || annotation(api.get(&deployment), SETTINGS_HASH);
    wait_until(
        "a roll for the SASL settings",
        long,
        || current().is_some_and(|now| now != settings),
        || "same hash".into(),
    )
    .await;
    // Let the reconcile of the new Secret settle before rotating it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = current().expect("hash");
    api.update(&secret, |object| {
        object["data"]["url"] = json!("cmVkaXM6Ly9yZWRpcy0yOjYzNzk=");
    });
    wait_until(
        "a roll for the rotated Secret",
        long,
        || current().is_some_and(|now| now != before),
        || "same hash".into(),
    )
    .await;
    running.stop().await;

    let reasons = event_reasons(&api);
    for wanted in ["TopicsReconciled", "RuntimeConfigUpdated", "RollingPods"] {
        assert!(
            reasons.iter().any(|r| r == wanted),
            "no {wanted} Event in {reasons:?}; status {:?}; events {:?}",
            api.get(&cd).map(|o| o["status"].clone()),
            api.requests()
                .iter()
                .filter(|r| r.path.contains("events"))
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
        );
    }
}
