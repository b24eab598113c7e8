//! The `operator` binary's lifecycle without a cluster: it starts its health
//! and metrics endpoints, keeps retrying an API server that is not there,
//! and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn help_lists_the_settings_with_their_variables() {
    let output = Command::new(env!("CARGO_BIN_EXE_operator"))
        .arg("--help")
        .output()
        .expect("run operator");
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--namespace",
        "--metrics-address",
        "--kafka-timeout",
        "OPERATOR_LOG_LEVEL",
        "OPERATOR_LEADER_ELECTION",
        "--lease-namespace",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn a_lease_shorter_than_two_seconds_is_refused_with_the_flag_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(["--lease-duration", "1s"])
        .output()
        .expect("run operator");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--lease-duration") && stderr.contains("at least 2s"),
        "{stderr}"
    );
}

#[test]
fn it_serves_health_while_the_api_is_away_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("operator-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n\
         users: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u, namespace: default}}]\n\
         current-context: x\n",
    )
    .expect("kubeconfig");
    let mut child = Guard(
        Command::new(env!("CARGO_BIN_EXE_operator"))
            .args(["--metrics-address", "127.0.0.1:0"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start operator"),
    );
    let stderr = BufReader::new(child.0.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut address = None;
    let mut logs = Vec::new();
    while address.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if entry["message"] == "health and metrics listening" {
                address = entry["address"].as_str().map(str::to_owned);
            }
            logs.push(line);
        }
    }
    let address =
        address.unwrap_or_else(|| panic!("no health listener; logs:\n{}", logs.join("\n")));
    let get = |path: &str| {
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        use std::io::{Read, Write};
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    };
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    assert!(get("/metrics").starts_with("HTTP/1.1 200"));
    // Not ready while the leader lease cannot be read.
    assert!(get("/readyz").starts_with("HTTP/1.1 503"));

    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "operator did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the operator if the test fails before it stops.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
