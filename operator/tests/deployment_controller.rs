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
    // No spool: one look for volumes a spool may have left (none here).
    calls.push(claims(json!([])));
    calls
}

/// The listing of the deployment's spool volumes.
fn claims(items: Value) -> Call {
    call(
        "GET",
        "/api/v1/namespaces/default/persistentvolumeclaims",
        200,
        Reply::Json(
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {}, "items": items}),
        ),
    )
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

// --- The spool: a StatefulSet, and the drain of volumes no pod wants ------

/// `spec` with a spool.
fn spooled(id: &str) -> Value {
    let mut spec = spec(id);
    spec["spool"] = json!({"size": "10Gi"});
    spec
}

/// The calls of an apply pass before the pods' object: Secret,
/// ServiceAccount, ConfigMap, Service.
fn before_workload() -> Vec<Call> {
    apply_calls(false, true).into_iter().take(4).collect()
}

/// The calls after it: PodDisruptionBudget, NetworkPolicy, autoscaler.
fn after_workload() -> Vec<Call> {
    let calls = apply_calls(false, true);
    let n = calls.len();
    // Less the pods' object and the look for volumes.
    calls.into_iter().skip(5).take(n - 6).collect()
}

/// A StatefulSet as the API answers its apply: `replicas` wanted, `ready`
/// of them ready, its controller up to date.
fn stateful_set(replicas: i32, ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
           "metadata": {"name": "capture", "namespace": "default", "generation": 4},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app.kubernetes.io/instance": "capture"}},
                    "template": {"metadata": {"annotations": {"capture.dev/settings-hash": "0123"}}}},
           "status": {"observedGeneration": 4, "replicas": replicas, "readyReplicas": ready, "updatedReplicas": ready}})
}

/// A Deployment as the API answers its apply, with every pod ready.
fn serving_deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "capture", "namespace": "default", "generation": 2},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app.kubernetes.io/instance": "capture"}},
                    "template": {"metadata": {"annotations": {"capture.dev/settings-hash": "0123"}}}},
           "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}})
}

fn claim(ordinal: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": format!("spool-capture-{ordinal}"), "namespace": "default",
                        "labels": operator::spool::claim_labels("capture")},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}})
}

fn job(ordinal: u32, condition: Option<&str>) -> Value {
    let mut job = json!({"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": format!("spool-capture-{ordinal}-drain"), "namespace": "default",
                        "labels": operator::spool::drain_labels("capture")}});
    if let Some(kind) = condition {
        job["status"] = json!({"conditions": [{"type": kind, "status": "True"}]});
    }
    job
}

fn jobs(items: Value) -> Call {
    call(
        "GET",
        "/apis/batch/v1/namespaces/default/jobs",
        200,
        Reply::Json(
            json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": items}),
        ),
    )
}

/// The StatefulSet's pods that exist, by ordinal (the listing that asks
/// whether a volume's pod is gone).
fn pods_of(ordinals: &[u32]) -> Call {
    let items: Vec<Value> = ordinals
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("capture-{n}"), "namespace": "default"}}))
        .collect();
    call(
        "GET",
        "/api/v1/namespaces/default/pods",
        200,
        Reply::Json(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})),
    )
}

fn deleted(plural_path: &str) -> Call {
    call(
        "DELETE",
        plural_path,
        200,
        Reply::Json(status(200, "", "deleted")),
    )
}

fn not_there(plural_path: &str) -> Call {
    call(
        "DELETE",
        plural_path,
        404,
        Reply::Json(status(404, "NotFound", "not found")),
    )
}

/// Runs `calls` (then the rollout's pod listing and the status write) on
/// a CaptureDeployment of `spec`; returns the result, the request bodies
/// and the status written.
async fn reconciled(spec: Value, calls: Vec<Call>) -> (Result<Action, Error>, Vec<Value>, Value) {
    let object = cd(spec, false, None);
    let value = serde_json::to_value(&object).expect("json");
    let mut calls = calls;
    calls.push(pods());
    calls.push(status_write(&value));
    let (result, bodies) = run(object, calls).await;
    let status = bodies.last().expect("status patch")["status"].clone();
    (result, bodies, status)
}

#[tokio::test]
async fn a_spool_runs_the_pods_as_a_stateful_set_and_the_deployment_goes_once_it_serves() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    // Just applied: its pods are not ready yet, so the Deployment stays.
    let mut calls = before_workload();
    calls.push(call(
        "PATCH",
        &path("apps/v1", "statefulsets", "capture"),
        200,
        Reply::Json(stateful_set(2, 0)),
    ));
    calls.extend(after_workload());
    calls.push(claims(json!([])));
    calls.push(jobs(json!([])));
    calls.push(event()); // topics created
    let (result, bodies, status) = reconciled(spooled(&id), calls).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(deployment_controller::RESYNC)
    );
    let set = &bodies[4];
    assert_eq!(set["kind"], "StatefulSet");
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "spool"
    );
    assert_eq!(status["spoolDrains"], 0);
    assert_eq!(condition(&status, "SpoolDrained")["status"], "True");
    assert_eq!(condition(&status, "Ready")["reason"], "RollingOut");

    // Every pod ready: the Deployment goes (a 404 once it is gone).
    let mut calls = before_workload();
    calls.push(call(
        "PATCH",
        &path("apps/v1", "statefulsets", "capture"),
        200,
        Reply::Json(stateful_set(2, 2)),
    ));
    calls.extend(after_workload());
    calls.push(claims(json!([claim(0), claim(1)])));
    calls.push(deleted(&path("apps/v1", "deployments", "capture")));
    calls.push(jobs(json!([])));
    let (result, bodies, status) = reconciled(spooled(&id), calls).await;
    result.expect("reconciled");
    assert_eq!(
        bodies[9]["propagationPolicy"], "Background",
        "its pods go with it"
    );
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(status["spoolDrains"], 0);
    assert_eq!(status["settingsHash"], "0123");
}

#[tokio::test]
async fn a_scaled_away_volume_is_drained_by_a_job_then_deleted_and_one_wanted_again_stays() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let set = |replicas: i32| {
        call(
            "PATCH",
            &path("apps/v1", "statefulsets", "capture"),
            200,
            Reply::Json(stateful_set(replicas, replicas)),
        )
    };
    // Scaled from 3 to 1: pod 2 still replays its spool on SIGTERM, pod 1
    // is gone, so its volume gets a drain Job.
    let mut calls = before_workload();
    calls.push(set(1));
    calls.extend(after_workload());
    calls.push(claims(json!([claim(0), claim(1), claim(2)])));
    calls.push(not_there(&path("apps/v1", "deployments", "capture")));
    calls.push(jobs(json!([])));
    calls.push(pods_of(&[0, 2]));
    calls.push(call(
        "PATCH",
        &path("batch/v1", "jobs", "spool-capture-1-drain"),
        200,
        Reply::Echo,
    ));
    calls.push(event()); // drain started
    calls.push(event()); // topics created
    let (result, bodies, status) = reconciled(spooled(&id), calls).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(deployment_controller::SPOOL_RECHECK),
        "pods are not watched: look again for pod 2"
    );
    let drain = &bodies[12];
    assert_eq!(drain["kind"], "Job");
    let pod = &drain["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "spool")
            .expect("the claim")["persistentVolumeClaim"]["claimName"],
        "spool-capture-1"
    );
    assert!(
        pod["containers"][0]["env"]
            .as_array()
            .expect("env")
            .contains(&json!({"name": "CAPTURE_DRAIN_SPOOL", "value": "true"}))
    );
    assert_eq!(bodies[13]["reason"], "SpoolDrainStarted");
    assert_eq!(status["spoolDrains"], 2);
    let drained = condition(&status, "SpoolDrained");
    assert_eq!(
        (drained["status"].as_str(), drained["reason"].as_str()),
        (Some("False"), Some("Draining"))
    );
    let message = drained["message"].as_str().expect("message");
    assert!(
        message.contains("spool-capture-1 (drain Job running)")
            && message.contains("spool-capture-2 (its pod is stopping)"),
        "{message}"
    );
    assert_eq!(
        condition(&status, "Ready")["status"],
        "True",
        "the pods serve"
    );

    // Volume 1 drained: the claim goes, then its Job. Volume 2's drain
    // failed (Kafka down past its deadline): the claim stays, the Job goes
    // to be made again.
    let mut calls = before_workload();
    calls.push(set(1));
    calls.extend(after_workload());
    calls.push(claims(json!([claim(0), claim(1), claim(2)])));
    calls.push(not_there(&path("apps/v1", "deployments", "capture")));
    calls.push(jobs(json!([
        job(1, Some("Complete")),
        job(2, Some("Failed"))
    ])));
    calls.push(pods_of(&[0]));
    calls.push(deleted(&path(
        "v1",
        "persistentvolumeclaims",
        "spool-capture-1",
    )));
    calls.push(deleted(&path("batch/v1", "jobs", "spool-capture-1-drain")));
    calls.push(deleted(&path("batch/v1", "jobs", "spool-capture-2-drain")));
    calls.push(event()); // drained
    calls.push(event()); // failed
    let mut calls_with_warning = calls;
    // (The Degraded warning comes after the rollout's listing.)
    let object = cd(spooled(&id), false, None);
    let value = serde_json::to_value(&object).expect("json");
    calls_with_warning.push(pods());
    calls_with_warning.push(event());
    calls_with_warning.push(status_write(&value));
    let (result, bodies) = run(object, calls_with_warning).await;
    result.expect("reconciled");
    for delete in &bodies[12..15] {
        assert_eq!(delete["propagationPolicy"], "Background", "{delete}");
    }
    assert_eq!(bodies[15]["reason"], "SpoolVolumeDrained");
    assert_eq!(
        (bodies[16]["type"].as_str(), bodies[16]["reason"].as_str()),
        (Some("Warning"), Some("SpoolDrainFailed"))
    );
    let status = &bodies.last().expect("status")["status"];
    assert_eq!(status["spoolDrains"], 1, "volume 2 still holds events");
    assert_eq!(condition(status, "SpoolDrained")["reason"], "DrainFailed");
    let degraded = condition(status, "Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("SpoolDrainFailed"))
    );
    assert_eq!(condition(status, "Ready")["status"], "True");

    // Scaled up to 3 again while volume 2's new drain runs: the volume is
    // pod 2's again, its Job goes.
    let mut calls = before_workload();
    calls.push(set(3));
    calls.extend(after_workload());
    calls.push(claims(json!([claim(0), claim(2)])));
    calls.push(not_there(&path("apps/v1", "deployments", "capture")));
    calls.push(jobs(json!([job(2, None)])));
    calls.push(deleted(&path("batch/v1", "jobs", "spool-capture-2-drain")));
    let (result, _, status) = reconciled(spooled(&id), calls).await;
    result.expect("reconciled");
    assert_eq!(status["spoolDrains"], 0);
    assert_eq!(condition(&status, "SpoolDrained")["status"], "True");
}

#[tokio::test]
async fn removing_the_spool_brings_back_the_deployment_and_drains_every_volume() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let sets = |items: Value| {
        call(
            "GET",
            "/apis/apps/v1/namespaces/default/statefulsets",
            200,
            Reply::Json(
                json!({"apiVersion": "apps/v1", "kind": "StatefulSetList", "metadata": {}, "items": items}),
            ),
        )
    };
    // The Deployment is not serving yet: the StatefulSet keeps its pods
    // and their volumes.
    let mut calls = apply_calls(false, true);
    calls.pop();
    calls.push(claims(json!([claim(0), claim(1)])));
    calls.push(sets(json!([stateful_set(2, 2)])));
    calls.push(jobs(json!([])));
    calls.push(event()); // topics created
    let (result, _, status) = reconciled(spec(&id), calls).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(deployment_controller::RESYNC)
    );
    assert_eq!(status["spoolDrains"], 0);

    // It serves: the StatefulSet goes; its pods replay their spools as
    // they stop, then each volume is drained by a Job.
    let mut calls = apply_calls(false, true);
    calls.truncate(4);
    calls.push(call(
        "PATCH",
        &path("apps/v1", "deployments", "capture"),
        200,
        Reply::Json(serving_deployment()),
    ));
    calls.extend(after_workload());
    calls.push(claims(json!([claim(0), claim(1)])));
    calls.push(sets(json!([stateful_set(2, 2)])));
    calls.push(deleted(&path("apps/v1", "statefulsets", "capture")));
    calls.push(jobs(json!([])));
    calls.push(pods_of(&[0, 1]));
    let (result, _, status) = reconciled(spec(&id), calls).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(deployment_controller::SPOOL_RECHECK)
    );
    assert_eq!(status["spoolDrains"], 2);
    assert_eq!(condition(&status, "SpoolDrained")["reason"], "Draining");

    // The pods are gone: a Job each.
    let mut calls = apply_calls(false, true);
    calls.truncate(4);
    calls.push(call(
        "PATCH",
        &path("apps/v1", "deployments", "capture"),
        200,
        Reply::Json(serving_deployment()),
    ));
    calls.extend(after_workload());
    calls.push(claims(json!([claim(0), claim(1)])));
    calls.push(sets(json!([])));
    calls.push(jobs(json!([])));
    calls.push(pods_of(&[]));
    for n in 0..2 {
        calls.push(call(
            "PATCH",
            &path("batch/v1", "jobs", &format!("spool-capture-{n}-drain")),
            200,
            Reply::Echo,
        ));
    }
    calls.push(event());
    let (result, bodies, status) = reconciled(spec(&id), calls).await;
    result.expect("reconciled");
    // No spool in the spec: the Job's limit comes from the claim's size.
    let env = bodies[12]["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .clone();
    assert!(env.contains(&json!({"name": "CAPTURE_SPOOL_MAX_BYTES", "value": operator::spool::max_bytes(10 << 30).to_string()})), "{env:?}");
    assert_eq!(status["spoolDrains"], 2);

    // Every volume drained and gone: nothing more to say of the spool, and
    // what the status said of it is removed (a merge patch keeps what it
    // does not mention).
    let mut previous = status.clone();
    previous["conditions"] = json!([]);
    let object = cd(spec(&id), false, Some(previous));
    let value = serde_json::to_value(&object).expect("json");
    let mut calls = apply_calls(false, true);
    calls.truncate(4);
    calls.push(call(
        "PATCH",
        &path("apps/v1", "deployments", "capture"),
        200,
        Reply::Json(serving_deployment()),
    ));
    calls.extend(after_workload());
    calls.push(claims(json!([])));
    calls.push(pods());
    calls.push(status_write(&value));
    let (result, bodies) = run(object, calls).await;
    result.expect("reconciled");
    let status = &bodies.last().expect("status")["status"];
    assert_eq!(status["spoolDrains"], Value::Null);
    assert!(
        status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .all(|c| c["type"] != "SpoolDrained"),
        "{status}"
    );
    assert!(
        bodies.last().expect("status")["status"]
            .as_object()
            .expect("status")
            .contains_key("spoolDrains"),
        "removed with null"
    );
}

#[tokio::test]
async fn a_spool_the_schema_would_refuse_leaves_the_pods_alone_and_says_why() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut spec = spec(&id);
    spec["spool"] = json!({"size": "lots"});
    let mut calls = before_workload();
    calls.extend(after_workload());
    calls.push(event()); // topics created
    let object = cd(spec, false, None);
    let value = serde_json::to_value(&object).expect("json");
    calls.push(pods());
    calls.push(event()); // degraded
    calls.push(status_write(&value));
    let (result, bodies) = run(object, calls).await;
    result.expect("a condition, not an error");
    let status = &bodies.last().expect("status")["status"];
    let ready = condition(status, "Ready");
    assert_eq!(ready["reason"], "InvalidSpool");
    assert!(
        ready["message"]
            .as_str()
            .expect("message")
            .contains("spool.size \"lots\""),
        "{ready}"
    );
    assert_eq!(condition(status, "Degraded")["status"], "True");
}
