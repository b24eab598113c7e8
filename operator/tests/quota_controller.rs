//! The CaptureQuota reconciler, one scenario per branch: a mock API server
//! (tower_test) plays the Kubernetes side and checks every call, and a real
//! `redis-server` takes the settings.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::api::{Call, Reply, call, event, serve, status};
use common::redis::RedisServer;
use kube::runtime::controller::Action;
use operator::crd::CaptureQuota;
use operator::quota_controller::{self, Context, Error};
use serde_json::{Value, json};

const QUOTAS: &str = "/apis/capture.dev/v1alpha1/namespaces/default/capturequotas";
const DEPLOYMENT: &str = "/apis/capture.dev/v1alpha1/namespaces/default/capturedeployments/capture";
const SECRET: &str = "/api/v1/namespaces/default/secrets/redis";

/// Runs `reconcile` against the scripted API server; returns the result and
/// the request bodies. A `null` reply answers with the quota itself (what a
/// PATCH returns).
async fn run(quota: CaptureQuota, calls: Vec<Call>) -> (Result<Action, Error>, Vec<Value>) {
    let object = serde_json::to_value(&quota).expect("quota serializes");
    let calls = calls
        .into_iter()
        .map(|mut c| {
            if matches!(&c.reply, Reply::Json(Value::Null)) {
                c.reply = Reply::Json(object.clone());
            }
            c
        })
        .collect();
    let (client, server) = serve(calls);
    let ctx = Arc::new(Context {
        events: operator::events::Events::new(client.clone()),
        client,
        backoff: Default::default(),
        redis_timeout: Duration::from_secs(2),
        targets: Default::default(),
    });
    let result = quota_controller::reconcile(Arc::new(quota), ctx).await;
    // The client is dropped with the context: the server sees no more calls.
    let bodies = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("mock server finished")
        .expect("mock server assertions");
    (result, bodies)
}

fn j(value: Value) -> Reply {
    Reply::Json(value)
}

fn quota(spec: Value, status: Option<Value>, deleting: bool, annotations: Value) -> CaptureQuota {
    let mut metadata = json!({
        "name": "q",
        "namespace": "default",
        "uid": "00000000-0000-4000-8000-00000000000a",
        "generation": 1,
        "finalizers": [quota_controller::FINALIZER],
        "annotations": annotations,
    });
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    let mut object = json!({
        "apiVersion": "capture.dev/v1alpha1",
        "kind": "CaptureQuota",
        "metadata": metadata,
        "spec": spec,
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    serde_json::from_value(object).expect("a CaptureQuota")
}

fn spec(token: &str) -> Value {
    json!({
        "deployment": "capture",
        "token": token,
        "limits": [{"eventType": "events", "limit": 100, "window": "1h"}],
    })
}

fn deployment() -> Value {
    json!({
        "apiVersion": "capture.dev/v1alpha1",
        "kind": "CaptureDeployment",
        "metadata": {"name": "capture", "namespace": "default"},
        "spec": {
            "image": "capture:dev",
            "kafka": {"brokers": ["kafka:9092"]},
            "redis": {"urlSecretRef": {"name": "redis", "key": "url"}, "keyPrefix": "t:"},
        },
    })
}

fn secret(url: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "redis", "namespace": "default"},
        "data": {"url": base64::engine::general_purpose::STANDARD.encode(url)},
    })
}

fn not_found() -> Value {
    status(404, "NotFound", "not found")
}

fn ready(status_patch: &Value) -> (&str, &str) {
    let condition = &status_patch["status"]["conditions"][0];
    (
        condition["status"].as_str().expect("status"),
        condition["reason"].as_str().expect("reason"),
    )
}

#[tokio::test]
async fn a_missing_deployment_is_a_condition_not_an_error() {
    let (result, bodies) = run(
        quota(spec("phc_a"), None, false, json!({})),
        vec![
            call("GET", DEPLOYMENT, 404, j(not_found())),
            call("PATCH", &format!("{QUOTAS}/q/status"), 200, j(Value::Null)),
            event(),
        ],
    )
    .await;
    let action = result.expect("no error");
    assert_eq!(action, Action::requeue(quota_controller::UNRESOLVED_RETRY));
    assert_eq!(ready(&bodies[1]), ("False", "DeploymentNotFound"));
    assert_eq!(
        (bodies[2]["type"].as_str(), bodies[2]["reason"].as_str()),
        (Some("Warning"), Some("DeploymentNotFound"))
    );
}

#[tokio::test]
async fn limits_are_written_to_redis_and_the_status_says_so_once() {
    let redis = RedisServer::start();
    let calls = || {
        vec![
            call("GET", DEPLOYMENT, 200, j(deployment())),
            call("GET", SECRET, 200, j(secret(&redis.url()))),
        ]
    };
    let mut first = calls();
    first.push(call(
        "PATCH",
        &format!("{QUOTAS}/q/status"),
        200,
        j(Value::Null),
    ));
    first.push(event());
    let (result, bodies) = run(quota(spec("phc_b"), None, false, json!({})), first).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(quota_controller::USAGE_REFRESH)
    );
    let patch = &bodies[2];
    assert_eq!(ready(patch), ("True", "Synced"));
    assert_eq!(
        patch["status"]["usage"],
        json!([{"eventType": "events", "used": 0, "remaining": 100}])
    );
    assert_eq!(patch["status"]["observedGeneration"], 1);
    assert_eq!(
        (bodies[3]["type"].as_str(), bodies[3]["reason"].as_str()),
        (Some("Normal"), Some("Synced"))
    );
    let status = common::redis_admin(&redis, "t:")
        .get("phc_b")
        .await
        .expect("read back");
    assert_eq!(status.settings.types.len(), 1);

    // The next resync finds nothing changed: no status write, and no write
    // to Redis either (its count of changes stays put).
    let unchanged = quota(
        spec("phc_b"),
        Some(patch["status"].clone()),
        false,
        json!({}),
    );
    let changes = || redis_changes(&redis);
    let before = changes();
    let (result, _) = run(unchanged, calls()).await;
    result.expect("reconciled");
    assert_eq!(changes(), before, "a no-op resync wrote to Redis");
}

/// Redis's count of writes since the last save (never saved here).
fn redis_changes(redis: &RedisServer) -> u64 {
    let info = redis.cli(&["info", "persistence"]);
    info.lines()
        .find_map(|line| line.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no change count in {info}"))
}

#[tokio::test]
async fn the_reset_annotation_resets_usage_once() {
    let redis = RedisServer::start();
    let admin = common::redis_admin(&redis, "t:");
    admin
        .set(
            "phc_c",
            &operator::quota::settings(&serde_json::from_value(spec("phc_c")).expect("spec"))
                .expect("valid"),
        )
        .await
        .expect("set");
    redis.cli(&["set", "t:quota:{phc_c}:events", "40", "EX", "3600"]);
    let (result, bodies) = run(
        quota(
            spec("phc_c"),
            None,
            false,
            json!({quota_controller::RESET_ANNOTATION: "2026-11-26"}),
        ),
        vec![
            call("GET", DEPLOYMENT, 200, j(deployment())),
            call("GET", SECRET, 200, j(secret(&redis.url()))),
            event(),
            call("PATCH", &format!("{QUOTAS}/q/status"), 200, j(Value::Null)),
            event(),
        ],
    )
    .await;
    result.expect("reconciled");
    assert_eq!(bodies[2]["reason"], "UsageReset");
    assert_eq!(bodies[3]["status"]["lastReset"], "2026-11-26");
    assert_eq!(bodies[3]["status"]["usage"][0]["used"], 0, "window reset");
}

#[tokio::test]
async fn a_spec_the_schema_should_have_refused_is_reported() {
    let redis = RedisServer::start();
    let (result, bodies) = run(
        quota(spec("phx_personal"), None, false, json!({})),
        vec![
            call("GET", DEPLOYMENT, 200, j(deployment())),
            call("GET", SECRET, 200, j(secret(&redis.url()))),
            call("PATCH", &format!("{QUOTAS}/q/status"), 200, j(Value::Null)),
            event(),
        ],
    )
    .await;
    assert_eq!(result.expect("no error loop"), Action::await_change());
    assert_eq!(bodies[3]["reason"], "InvalidSpec");
    assert_eq!(ready(&bodies[2]), ("False", "InvalidSpec"));
    assert!(
        bodies[2]["status"]["conditions"][0]["message"]
            .as_str()
            .expect("message")
            .contains("spec.token")
    );
}

#[tokio::test]
async fn deletion_removes_the_settings_then_the_finalizer() {
    let redis = RedisServer::start();
    let admin = common::redis_admin(&redis, "t:");
    admin
        .set(
            "phc_d",
            &operator::quota::settings(&serde_json::from_value(spec("phc_d")).expect("spec"))
                .expect("valid"),
        )
        .await
        .expect("set");
    let (result, bodies) = run(
        quota(spec("phc_d"), None, true, json!({})),
        vec![
            call("GET", DEPLOYMENT, 200, j(deployment())),
            call("GET", SECRET, 200, j(secret(&redis.url()))),
            call("PATCH", &format!("{QUOTAS}/q"), 200, j(Value::Null)),
        ],
    )
    .await;
    result.expect("cleaned up");
    assert_eq!(redis.cli(&["dbsize"]), "0", "settings removed from Redis");
    let ops = bodies[2].as_array().expect("a JSON patch");
    assert!(
        ops.iter()
            .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
        "{ops:?}"
    );
}

#[tokio::test]
async fn deletion_with_the_deployment_gone_just_releases_the_finalizer() {
    let (result, bodies) = run(
        quota(spec("phc_e"), None, true, json!({})),
        vec![
            call("GET", DEPLOYMENT, 404, j(not_found())),
            call("PATCH", &format!("{QUOTAS}/q"), 200, j(Value::Null)),
        ],
    )
    .await;
    result.expect("released");
    assert!(
        bodies[1]
            .as_array()
            .expect("a JSON patch")
            .iter()
            .any(|op| op["op"] == "remove")
    );
}

#[tokio::test]
async fn api_errors_are_returned_for_backoff() {
    let (result, _) = run(
        quota(spec("phc_f"), None, false, json!({})),
        vec![call(
            "GET",
            DEPLOYMENT,
            500,
            j(status(500, "InternalError", "etcd is sad")),
        )],
    )
    .await;
    let err = result.expect_err("an API error");
    assert!(err.to_string().contains("etcd is sad"), "{err}");
}
