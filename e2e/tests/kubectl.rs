//! The real `kubectl` against the API server stand-in: it discovers the
//! built-in kinds, registers the repository's CRDs (and waits for them to
//! be established, through a watch), applies the examples, reads them back,
//! re-applies (nothing stored changes), patches, watches and deletes them;
//! and custom resources are checked against their schema and CEL rules.

mod common;

use std::path::Path;
use std::time::Duration;

use common::kubectl::Kubectl;
use common::repo;
use e2e::ApiServer;
use serde_json::Value;

/// Whether every field of `part` is in `whole` with the same value.
fn subset(part: &Value, whole: &Value) -> bool {
    match (part, whole) {
        (Value::Object(part), Value::Object(whole)) => part
            .iter()
            .all(|(k, v)| whole.get(k).is_some_and(|w| subset(v, w))),
        (Value::Array(part), Value::Array(whole)) => {
            part.len() == whole.len() && part.iter().zip(whole).all(|(p, w)| subset(p, w))
        }
        _ => part == whole,
    }
}

async fn start(dir: &Path) -> (ApiServer, Kubectl) {
    let server = ApiServer::default();
    let (address, _task) = server
        .start(([127, 0, 0, 1], 0).into())
        .await
        .expect("start the stand-in");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, ApiServer::kubeconfig(address, "default")).expect("kubeconfig");
    (server, Kubectl::new(kubeconfig, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_registers_the_crds_and_manages_the_examples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, kubectl) = start(dir.path()).await;

    let applied = kubectl.apply("crds/").await;
    assert!(
        applied.contains("capturedeployments.capture.dev created"),
        "{applied}"
    );
    // `kubectl wait` watches the CRDs until they are Established.
    kubectl
        .wait_established(&[
            "crd/capturedeployments.capture.dev",
            "crd/capturequotas.capture.dev",
        ])
        .await;
    let kinds = kubectl
        .run(&["api-resources", "--api-group=capture.dev", "-o", "name"])
        .await;
    assert!(
        kinds.contains("capturedeployments.capture.dev")
            && kinds.contains("capturequotas.capture.dev"),
        "{kinds}"
    );

    // `kubectl create namespace` would send protobuf, which the stand-in
    // does not decode (e2e/README.md); apply sends JSON.
    let namespace = dir.path().join("namespace.yaml");
    std::fs::write(
        &namespace,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: analytics}\n",
    )
    .expect("write");
    kubectl.apply(namespace.to_str().expect("utf-8")).await;
    let applied = kubectl.apply("examples/").await;
    assert!(
        applied.contains("capturedeployment.capture.dev/capture created"),
        "{applied}"
    );
    assert!(
        applied.contains("capturequota.capture.dev/acme-web created"),
        "{applied}"
    );

    // Read back by short name, as users type it.
    let list = kubectl.json(&["get", "cdep", "-n", "analytics"]).await;
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{list}");
    let example: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("examples/capturedeployment.yaml")).expect("example"),
    )
    .expect("yaml");
    // What the example says is stored as it says; the schema's defaults
    // fill in the rest, as the API server's would.
    assert!(
        subset(&example["spec"], &items[0]["spec"]),
        "{}",
        items[0]["spec"]
    );
    assert_eq!(
        items[0]["spec"]["kafka"]["topics"]["historical"]["partitions"], 12,
        "defaulted"
    );
    assert_eq!(items[0]["metadata"]["generation"], 1);

    // Applying the same files again changes nothing stored. (kubectl may
    // still say "configured": its merge patch replaces lists whose items
    // the schema defaulted, and defaulting restores them, as on a real
    // API server.)
    let version =
        |object: Option<Value>| object.expect("stored")["metadata"]["resourceVersion"].clone();
    let before =
        version(server.object("capture.dev", "capturedeployments", "analytics", "capture"));
    kubectl.apply("examples/").await;
    let after = version(server.object("capture.dev", "capturedeployments", "analytics", "capture"));
    assert_eq!(
        before, after,
        "a re-apply of the same spec stores nothing new"
    );

    // A watch sees the next change.
    let mut watch = kubectl
        .command(&[
            "get",
            "capturedeployments",
            "-n",
            "analytics",
            "--watch-only",
            "-o",
            "name",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl get --watch");
    tokio::time::sleep(Duration::from_millis(500)).await;
    kubectl
        .merge_patch(
            "capturedeployment/capture",
            "analytics",
            r#"{"spec":{"autoscaling":{"maxReplicas":20}}}"#,
        )
        .await;
    let stdout = watch.stdout.take().expect("piped");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a watch event within 10 s")
        .expect("read")
        .expect("a line");
    // --watch-only: no initial list, so this is the patch.
    assert_eq!(line.trim(), "capturedeployment.capture.dev/capture");
    let _ = watch.kill().await;
    let patched = server
        .object("capture.dev", "capturedeployments", "analytics", "capture")
        .expect("stored");
    assert_eq!(
        (
            patched["spec"]["autoscaling"]["maxReplicas"].as_i64(),
            patched["metadata"]["generation"].as_i64()
        ),
        (Some(20), Some(2))
    );

    let deleted = kubectl.run(&["delete", "-f", "examples/"]).await;
    assert!(deleted.contains("deleted"), "{deleted}");
    let left = kubectl
        .json(&["get", "capturedeployments,capturequotas", "-A"])
        .await;
    assert_eq!(left["items"].as_array().map(Vec::len), Some(0), "{left}");
}

/// `kubectl apply --validate=false` of `document` (YAML): unknown fields
/// pruned rather than refused; its output, or its error text.
async fn apply(kubectl: &Kubectl, dir: &Path, document: &str) -> Result<String, String> {
    let file = dir.join("document.yaml");
    std::fs::write(&file, document).expect("write");
    let output = kubectl
        .command(&[
            "apply",
            "--validate=false",
            "-f",
            file.to_str().expect("utf-8"),
        ])
        .output()
        .await
        .expect("run kubectl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_validated_against_their_schema_and_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, kubectl) = start(dir.path()).await;
    kubectl.apply("crds/").await;
    let document = |spec: &str| {
        format!(
            "apiVersion: capture.dev/v1alpha1\nkind: CaptureDeployment\nmetadata: {{name: capture}}\n\
             spec:\n  image: capture:dev\n  kafka:\n    brokers: ['kafka:9092']\n    topics: {{events: {{replicationFactor: 3}}}}\n{spec}"
        )
    };
    for (spec, expected) in [
        (
            "  replicas: 2\n  autoscaling: {minReplicas: 1, maxReplicas: 3}\n",
            "set either replicas or autoscaling, not both",
        ),
        ("  replicas: two\n", "spec.replicas must be of type integer"),
        (
            "  replicas: -1\n",
            "spec.replicas should be greater than or equal to 0",
        ),
        (
            "  service: {type: ExternalName}\n",
            "service.type must be ClusterIP, NodePort or LoadBalancer",
        ),
    ] {
        let refused = apply(&kubectl, dir.path(), &document(spec))
            .await
            .expect_err(spec);
        assert!(refused.contains(expected), "{spec}: {refused}");
        assert!(refused.contains("is invalid"), "{refused}");
    }
    assert!(
        server
            .object("capture.dev", "capturedeployments", "default", "capture")
            .is_none()
    );

    // kubectl's default validation is strict, done by the server: an
    // unknown field is refused, naming it.
    let file = dir.path().join("strict.yaml");
    std::fs::write(&file, document("  replicas: 2\n  bogus: 1\n")).expect("write");
    let strict = kubectl
        .command(&["apply", "-f", file.to_str().expect("utf-8")])
        .output()
        .await
        .expect("run kubectl");
    let said = String::from_utf8_lossy(&strict.stderr).into_owned();
    assert!(
        !strict.status.success() && said.contains("spec.bogus: unknown field"),
        "{said}"
    );

    // With --validate=false, unknown fields are pruned; defaults are
    // filled in.
    apply(
        &kubectl,
        dir.path(),
        &document("  replicas: 2\n  bogus: 1\n"),
    )
    .await
    .expect("valid");
    let stored = server
        .object("capture.dev", "capturedeployments", "default", "capture")
        .expect("stored");
    assert!(stored["spec"].get("bogus").is_none(), "{stored}");
    assert_eq!(
        stored["spec"]["service"]["type"], "ClusterIP",
        "defaulted: {stored}"
    );

    // Transition rules see the old object.
    let changed =
        document("  replicas: 2\n").replace("replicationFactor: 3", "replicationFactor: 5");
    let refused = apply(&kubectl, dir.path(), &changed)
        .await
        .expect_err("immutable");
    assert!(
        refused.contains("replicationFactor cannot change once set"),
        "{refused}"
    );
}
