//! The real `kubectl` against the API server stand-in: it discovers the
//! built-in kinds, registers the repository's CRDs (and waits for them to
//! be established, through a watch), applies the examples, reads them back,
//! re-applies (unchanged), patches, watches and deletes them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::kubectl::Kubectl;
use common::repo;
use e2e::ApiServer;
use serde_json::Value;

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

    let applied = kubectl
        .run(&["apply", "--validate=false", "-f", "crds/"])
        .await;
    assert!(
        applied.contains("capturedeployments.capture.dev created"),
        "{applied}"
    );
    // `kubectl wait` watches the CRDs until they are Established.
    kubectl
        .run(&[
            "wait",
            "--for",
            "condition=Established",
            "--timeout=20s",
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
    kubectl
        .run(&[
            "apply",
            "--validate=false",
            "-f",
            namespace.to_str().expect("utf-8"),
        ])
        .await;
    let applied = kubectl
        .run(&["apply", "--validate=false", "-f", "examples/"])
        .await;
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
    assert_eq!(items[0]["spec"], example["spec"]);
    assert_eq!(items[0]["metadata"]["generation"], 1);

    let again = kubectl
        .run(&["apply", "--validate=false", "-f", "examples/"])
        .await;
    assert!(
        again.contains("capturedeployment.capture.dev/capture unchanged"),
        "{again}"
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
        .run(&[
            "patch",
            "capturedeployment",
            "capture",
            "-n",
            "analytics",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ])
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
            patched["spec"]["replicas"].as_i64(),
            patched["metadata"]["generation"].as_i64()
        ),
        (Some(3), Some(2))
    );

    let deleted = kubectl.run(&["delete", "-f", "examples/"]).await;
    assert!(deleted.contains("deleted"), "{deleted}");
    let left = kubectl
        .json(&["get", "capturedeployments,capturequotas", "-A"])
        .await;
    assert_eq!(left["items"].as_array().map(Vec::len), Some(0), "{left}");
}
