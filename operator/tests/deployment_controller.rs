//! The CaptureDeployment reconciler, one scenario per branch: the scripted
//! API server checks every Kubernetes call, and a real Kafka-protocol broker
//! (tansu) gets the topics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::api::{Call, Reply, call, event, serve, status};
use common::{condition, path};
use kube::runtime::controller::Action;
use operator::crd::CaptureDeployment;
use operator::deployment_controller::{self, Context, Error};
use serde_json::{Value, json};

async fn run(cd: CaptureDeployment, calls: Vec<Call>) -> (Result<Action, Error>, Vec<Value>) {
    let (client, server) = serve(calls);
    let ctx = Arc::new(Context {
        events: operator::events::Events::new(client.clone()),
        client,
        backoff: Default::default(),
        kafka_timeout: Duration::from_secs(10),
    });
    let result = deployment_controller::reconcile(Arc::new(cd), ctx).await;
    let bodies = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("mock server finished")
        .expect("mock server assertions");
    (result, bodies)
}

fn cd(spec: Value, deleting: bool, status: Option<Value>) -> CaptureDeployment {
    let mut metadata = json!({
        "name": "capture",
        "namespace": "default",
        "uid": "00000000-0000-4000-8000-0000000000cd",
        "generation": 3,
        "finalizers": [deployment_controller::FINALIZER],
    });
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    let mut object = json!({"apiVersion": "capture.dev/v1alpha1", "kind": "CaptureDeployment", "metadata": metadata, "spec": spec});
    if let Some(status) = status {
        object["status"] = status;
    }
    serde_json::from_value(object).expect("a CaptureDeployment")
}

/// A spec on the shared broker with its own topic names.
fn spec(id: &str) -> Value {
    let topic = |kind: &str| json!({"name": format!("{kind}-{id}"), "partitions": 2, "replicationFactor": 1});
    json!({
        "image": "capture:dev",
        "kafka": {
            "brokers": [common::broker::broker().address.clone()],
            "topics": {
                "events": {"name": format!("events-{id}"), "partitions": 2, "replicationFactor": 1, "config": {"retention.ms": "3600000"}, "deleteOnRemoval": true},
                "recordings": topic("recordings"),
                "historical": topic("historical"),
                "clientWarnings": topic("warnings"),
                "exceptions": topic("exceptions"),
                "overflow": topic("overflow"),
                "heatmaps": topic("heatmaps"),
                "dlq": topic("dlq"),
            },
        },
        "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
        "policies": {"dedupTtl": "5m"},
        "runtimeConfig": {"dedup": {"ttl": "90s"}},
    })
}

fn secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": "default", "resourceVersion": "42"}, "data": {"url": "cmVkaXM6Ly9yZWRpczo2Mzc5"}})
}

/// The listing of the deployment's pods (none here: nothing runs them), to
/// see which runtime config they have in force.
fn pods() -> Call {
    call(
        "GET",
        "/api/v1/namespaces/default/pods",
        200,
        Reply::Json(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})),
    )
}

/// The status write that ends an apply pass.
fn status_write(object: &Value) -> Call {
    call(
        "PATCH",
        &path(
            "capture.dev/v1alpha1",
            "capturedeployments",
            "capture/status",
        ),
        200,
        Reply::Json(object.clone()),
    )
}

/// The calls of one apply pass, up to the status write; the ConfigMap is
/// written only when the runtime config is valid.
fn apply_calls(hpa_exists: bool, config_valid: bool) -> Vec<Call> {
    let mut calls = vec![
        call(
            "GET",
            &path("v1", "secrets", "redis"),
            200,
            Reply::Json(secret()),
        ),
        call(
            "PATCH",
            &path("v1", "serviceaccounts", "capture"),
            200,
            Reply::Echo,
        ),
    ];
    if config_valid {
        calls.push(call(
            "PATCH",
            &path("v1", "configmaps", "capture"),
            200,
            Reply::Echo,
        ));
    }
    calls.extend([
        call(
            "PATCH",
            &path("v1", "services", "capture"),
            200,
            Reply::Echo,
        ),
        call(
            "PATCH",
            &path("apps/v1", "deployments", "capture"),
            200,
            Reply::Echo,
        ),
        call(
            "PATCH",
            &path("policy/v1", "poddisruptionbudgets", "capture"),
            200,
            Reply::Echo,
        ),
        // No spec.networkPolicy: none may remain.
        call(
            "DELETE",
            &path("networking.k8s.io/v1", "networkpolicies", "capture"),
            404,
            Reply::Json(status(404, "NotFound", "not found")),
        ),
    ]);
    let hpa = path("autoscaling/v2", "horizontalpodautoscalers", "capture");
    if hpa_exists {
        calls.push(call("GET", &hpa, 200, Reply::Json(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "capture"}, "spec": {"maxReplicas": 3, "scaleTargetRef": {"kind": "Deployment", "name": "capture"}}}))));
        calls.push(call(
            "DELETE",
            &hpa,
            200,
            Reply::Json(status(200, "", "deleted")),
        ));
    } else {
        calls.push(call(
            "GET",
            &hpa,
            404,
            Reply::Json(status(404, "NotFound", "not found")),
        ));
    }
    calls
}

#[tokio::test]
async fn a_new_deployment_gets_its_objects_topics_and_status() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let object = cd(spec(&id), false, None);
    let value = serde_json::to_value(&object).expect("json");
    let mut calls = apply_calls(true, true);
    calls.push(event());
    calls.push(pods());
    calls.push(status_write(&value));
    let (result, bodies) = run(object, calls).await;
    let topics_event = &bodies[bodies.len() - 3];
    assert_eq!(topics_event["reason"], "TopicsReconciled");
    assert!(
        topics_event["note"]
            .as_str()
            .expect("note")
            .contains(&format!("created events-{id}")),
        "{topics_event}"
    );
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(deployment_controller::RESYNC)
    );

    // The runtime config went into the ConfigMap, as capture reads it.
    let config_map = &bodies[2];
    assert_eq!(config_map["kind"], "ConfigMap");
    let document = config_map["data"]["runtime.yaml"]
        .as_str()
        .expect("document");
    let parsed = capture::runtime_config::parse(document).expect("capture reads it");
    assert_eq!(parsed.dedup.expect("dedup").ttl, "90s");
    let hash = config_map["metadata"]["annotations"]["capture.dev/config-hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    // The Deployment was applied with the Secret's version in its hash.
    let deployment = &bodies[4];
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["kind"],
        "CaptureDeployment"
    );
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["capture.dev/settings-hash"]
            .is_string()
    );

    // Status: topics created and in sync, pods not yet rolled out.
    let status = &bodies.last().expect("status patch")["status"];
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["topicsSummary"], "8/8");
    assert_eq!(status["configHash"], hash);
    let condition = |kind: &str| condition(status, kind);
    assert_eq!(
        (
            condition("Ready")["status"].as_str(),
            condition("Ready")["reason"].as_str()
        ),
        (Some("False"), Some("RollingOut"))
    );
    assert_eq!(condition("TopicsReady")["status"], "True");
    assert_eq!(condition("Degraded")["status"], "False");
    assert_eq!(condition("RuntimeConfigValid")["status"], "True");

    // The topics exist on the broker as asked.
    let admin = operator::topic::TopicAdmin::connect(
        &common::broker::broker().address,
        &Default::default(),
        Duration::from_secs(10),
    )
    .expect("admin");
    let events = admin
        .observe(&format!("events-{id}"))
        .await
        .expect("observe")
        .expect("created");
    assert_eq!(events.partitions, 2);
    assert_eq!(
        events.effective.get("retention.ms").map(String::as_str),
        Some("3600000")
    );

    // A resync with nothing changed: the same applies, no Event, no status
    // write.
    let synced = cd(spec(&id), false, Some(status.clone()));
    let mut calls = apply_calls(false, true);
    calls.push(pods());
    let (result, _) = run(synced, calls).await;
    result.expect("resynced");

    // Deleting removes only the topic marked deleteOnRemoval.
    let deleting = cd(spec(&id), true, None);
    let (result, deletion) = run(
        deleting,
        vec![
            call(
                "GET",
                &path("v1", "secrets", "redis"),
                200,
                Reply::Json(secret()),
            ),
            event(),
            call(
                "PATCH",
                &path("capture.dev/v1alpha1", "capturedeployments", "capture"),
                200,
                Reply::Json(value),
            ),
        ],
    )
    .await;
    result.expect("cleaned up");
    assert_eq!(deletion[1]["reason"], "TopicDeleted");
    assert_eq!(
        admin
            .observe(&format!("events-{id}"))
            .await
            .expect("observe"),
        None,
        "deleted on removal"
    );
    assert!(
        admin
            .observe(&format!("recordings-{id}"))
            .await
            .expect("observe")
            .is_some(),
        "data kept"
    );
}

#[tokio::test]
async fn a_shrunk_topic_and_a_missing_secret_are_conditions_not_errors() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    // First pass creates the topics.
    let object = cd(spec(&id), false, None);
    let value = serde_json::to_value(&object).expect("json");
    let mut calls = apply_calls(false, true);
    calls.push(event());
    calls.push(pods());
    calls.push(status_write(&value));
    run(object, calls).await.0.expect("reconciled");

    let mut shrunk = spec(&id);
    shrunk["kafka"]["topics"]["events"]["partitions"] = json!(1);
    let object = cd(shrunk, false, None);
    let mut calls = vec![call(
        "GET",
        &path("v1", "secrets", "redis"),
        404,
        Reply::Json(status(404, "NotFound", "not found")),
    )];
    calls.extend(apply_calls(false, true).into_iter().skip(1));
    calls.push(pods());
    calls.push(event());
    calls.push(status_write(&value));
    let (result, bodies) = run(object, calls).await;
    let warning = &bodies[bodies.len() - 2];
    assert_eq!(
        (warning["type"].as_str(), warning["reason"].as_str()),
        (Some("Warning"), Some("SecretNotFound"))
    );
    result.expect("no error loop");
    let status = &bodies.last().expect("status patch")["status"];
    let ready = condition(status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("SecretNotFound"))
    );
    let events = status["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .find(|t| t["name"] == format!("events-{id}"))
        .expect("events topic")
        .clone();
    assert_eq!(events["state"], "NotSupported");
    assert_eq!(events["partitions"], 2, "left as it was");
    assert!(
        events["message"]
            .as_str()
            .expect("message")
            .contains("cannot remove partitions")
    );
}

#[tokio::test]
async fn an_invalid_runtime_config_keeps_the_last_good_config_map() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut bad = spec(&id);
    // The schema allows `10ms`; capture refuses a TTL under a second.
    bad["runtimeConfig"] = json!({"dedup": {"ttl": "10ms"}});
    let previous = json!({"configHash": "0123456789abcdef"});
    let object = cd(bad, false, Some(previous));
    let value = serde_json::to_value(&object).expect("json");
    let mut calls = apply_calls(false, false);
    calls.push(event()); // topics created
    calls.push(pods()); // which config they run: the last good one
    calls.push(event()); // the warning
    calls.push(status_write(&value));
    let (result, bodies) = run(object, calls).await;
    result.expect("a condition, not an error");
    let warning = &bodies[bodies.len() - 2];
    assert_eq!(
        (warning["type"].as_str(), warning["reason"].as_str()),
        (Some("Warning"), Some("InvalidRuntimeConfig"))
    );
    let status = &bodies.last().expect("status patch")["status"];
    assert_eq!(
        status["configHash"], "0123456789abcdef",
        "the last good one"
    );
    let condition = |kind: &str| condition(status, kind);
    assert_eq!(condition("Ready")["reason"], "InvalidRuntimeConfig");
    assert_eq!(condition("Degraded")["status"], "True");
    let valid = condition("RuntimeConfigValid");
    assert_eq!(valid["status"], "False");
    assert!(
        valid["message"]
            .as_str()
            .expect("message")
            .contains("dedup.ttl: \"10ms\" is under a second"),
        "{valid}"
    );
}

#[tokio::test]
async fn api_errors_are_returned_for_backoff() {
    let object = cd(spec("unused"), false, None);
    let (result, _) = run(
        object,
        vec![call(
            "GET",
            &path("v1", "secrets", "redis"),
            500,
            Reply::Json(status(500, "InternalError", "etcd is sad")),
        )],
    )
    .await;
    let err = result.expect_err("an API error");
    assert!(err.to_string().contains("etcd is sad"));
    use operator::runtime::ErrorReason as _;
    assert_eq!(err.reason(), "kubernetes", "counted by its cause");
}
