//! The real `kubectl`, run against a kubeconfig from the repository root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::repo;

/// The kubectl binary `.ci/setup` installs (`CAPTURE_TEST_KUBECTL`).
fn kubectl_binary() -> PathBuf {
    std::env::var_os("CAPTURE_TEST_KUBECTL")
        .map(PathBuf::from)
        .expect("set CAPTURE_TEST_KUBECTL (run `. .ci/setup`) to a kubectl binary")
}

/// kubectl with one kubeconfig and cache directory.
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    /// kubectl for `kubeconfig`, caching discovery under `dir`.
    pub fn new(kubeconfig: PathBuf, dir: &Path) -> Kubectl {
        Kubectl {
            binary: kubectl_binary(),
            kubeconfig,
            cache: dir.join("cache"),
        }
    }

    /// The command for `args`, ready to run or spawn.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .current_dir(repo())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--request-timeout=10s")
            .args(args)
            .kill_on_drop(true);
        command
    }

    /// Runs kubectl; its stdout, or a panic with what it said.
    pub async fn run(&self, args: &[&str]) -> String {
        let output = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} took over 60 s"))
            .expect("run kubectl");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "kubectl {args:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// `kubectl apply -f <path>` (a file or directory), with kubectl's
    /// default validation (strict, done by the server).
    pub async fn apply(&self, path: &str) -> String {
        self.run(&["apply", "-f", path]).await
    }

    /// `kubectl wait` (a watch) until each of the `crds` is Established.
    pub async fn wait_established(&self, crds: &[&str]) -> String {
        let mut args = vec!["wait", "--for", "condition=Established", "--timeout=20s"];
        args.extend(crds);
        self.run(&args).await
    }

    /// `kubectl patch <resource> -n <namespace> --type merge -p <patch>`.
    pub async fn merge_patch(&self, resource: &str, namespace: &str, patch: &str) -> String {
        let (kind, name) = resource.split_once('/').expect("kind/name");
        self.run(&[
            "patch", kind, name, "-n", namespace, "--type", "merge", "-p", patch,
        ])
        .await
    }

    /// Runs kubectl with `-o json` and parses what it printed.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.run(&all).await).expect("kubectl printed JSON")
    }

    /// `kubectl get <kind> <name> -n <namespace> -o json` (no `-n` for an
    /// empty namespace), or `None` when there is no such object.
    pub async fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut args = vec!["get", kind, name, "--ignore-not-found", "-o", "json"];
        if !namespace.is_empty() {
            args.extend(["-n", namespace]);
        }
        let text = self.run(&args).await;
        (!text.trim().is_empty())
            .then(|| serde_json::from_str(&text).expect("kubectl printed JSON"))
    }

    /// The items of `kubectl get <kind> -n <namespace> -o json`.
    pub async fn list(&self, kind: &str, namespace: &str) -> Vec<Value> {
        match self.json(&["get", kind, "-n", namespace]).await["items"].take() {
            Value::Array(items) => items,
            other => panic!("kubectl get {kind} printed no items: {other}"),
        }
    }

    /// Starts `kubectl proxy` on a free local port: the process, and the
    /// `http://127.0.0.1:<port>` it serves the API on.
    pub async fn proxy(&self) -> (tokio::process::Child, String) {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = self
            .command(&["proxy", "--port=0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start kubectl proxy");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("kubectl proxy started within 20 s")
            .expect("read kubectl proxy")
            .expect("kubectl proxy said where it serves");
        // "Starting to serve on 127.0.0.1:PORT"
        let address = line
            .rsplit(' ')
            .next()
            .filter(|a| a.contains(':'))
            .unwrap_or_else(|| panic!("kubectl proxy said {line:?}"));
        (child, format!("http://{address}"))
    }
}
