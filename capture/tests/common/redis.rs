//! Real `redis-server` processes for tests: a standalone server per test
//! binary (or per test when it must be killed), and a three-master cluster
//! made the way an operator would, with `redis-cli --cluster create`. Either
//! can serve TLS only (`rediss://`), with certificates the test made.
//!
//! Servers run without persistence, on free ports, under a shell whose stdin
//! is this process's pipe: when the test process exits, however it exits,
//! the pipe closes and the shell stops the server.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::free_port;

/// PEM files for a server that speaks only TLS: the CA clients trust, and
/// the server's certificate (for 127.0.0.1) and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `redis-server` arguments: TLS on `port`, no plain port, clients not
    /// asked for certificates.
    fn server_args(&self, port: u16) -> Vec<String> {
        let mut args: Vec<String> = ["--port", "0", "--tls-port"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        args.push(port.to_string());
        for (flag, path) in [
            ("--tls-cert-file", &self.cert),
            ("--tls-key-file", &self.key),
            ("--tls-ca-cert-file", &self.ca),
        ] {
            args.push(flag.to_owned());
            args.push(path.display().to_string());
        }
        args.extend(["--tls-auth-clients".to_owned(), "no".to_owned()]);
        args
    }

    /// `redis-cli` arguments to reach such a server.
    fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".to_owned(),
            "--cacert".to_owned(),
            self.ca.display().to_string(),
        ]
    }
}

/// One `redis-server`.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    /// Set when it serves TLS only.
    tls: Option<TlsFiles>,
    wrapper: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts a standalone server on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_with(free_port(), &[])
    }

    /// Starts a server on `port` with extra arguments.
    pub fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        RedisServer::start_as(port, extra, None)
    }

    /// Starts a server on a free port that speaks only TLS, with `tls`.
    pub fn start_tls(tls: &TlsFiles, extra: &[&str]) -> RedisServer {
        RedisServer::start_as(free_port(), extra, Some(tls.clone()))
    }

    fn start_as(port: u16, extra: &[&str], tls: Option<TlsFiles>) -> RedisServer {
        let dir =
            std::env::temp_dir().join(format!("redis-{port}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis work dir");
        let server = RedisServer {
            port,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            tls,
            wrapper: Mutex::new(None),
        };
        server.launch();
        server
    }

    fn launch(&self) {
        let script = r#"redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no \
            --dir "$2" --pidfile "$2/redis.pid" --logfile "$2/redis.log" "${@:3}" & server=$!
            cat >/dev/null
            kill -9 $server 2>/dev/null"#;
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("redis-wrapper")
            .arg(self.port.to_string())
            .arg(&self.dir)
            .args(&self.extra)
            // Later arguments win: these turn the plain port off.
            .args(self.tls.iter().flat_map(|tls| tls.server_args(self.port)))
            .stdin(Stdio::piped())
            // The server logs to its file; the shell would only report the kill.
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (install it, or run .ci/run)");
        *self.wrapper.lock().expect("wrapper lock") = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&address).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                panic!("redis-server did not listen on {address}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:port`, or `rediss://` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("redis.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            let _ = std::fs::remove_file(self.dir.join("redis.pid"));
        }
        if let Some(mut wrapper) = self.wrapper.lock().expect("wrapper lock").take() {
            drop(wrapper.stdin.take());
            let _ = wrapper.wait();
        }
        let address = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&address).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port (empty: nothing persisted).
    pub fn restart(&self) {
        self.kill();
        self.launch();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(pid) = std::fs::read_to_string(self.dir.join("redis.pid"))
                .ok()
                .and_then(|text| text.trim().parse().ok())
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "redis-server wrote no pid file");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let tls = self.tls.iter().flat_map(TlsFiles::cli_args);
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(tls)
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `redis-cli -p port args...`.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The standalone server shared by the tests of one binary.
pub fn shared() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(RedisServer::start)
}

/// A three-master Redis Cluster.
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with
    /// `redis-cli --cluster create`, then waits for the cluster to be `ok`.
    pub fn start() -> RedisCluster {
        RedisCluster::start_as(None)
    }

    /// A cluster whose clients and bus speak only TLS.
    pub fn start_tls(tls: &TlsFiles) -> RedisCluster {
        RedisCluster::start_as(Some(tls))
    }

    fn start_as(tls: Option<&TlsFiles>) -> RedisCluster {
        let mut flags = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ];
        if tls.is_some() {
            flags.extend(["--tls-cluster", "yes"]);
        }
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_as(free_port(), &flags, tls.cloned()))
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(tls.iter().flat_map(|tls| tls.cli_args()))
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            while !node.cli(&["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not become ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes }
    }

    /// Every node's URL, comma-separated, for `--redis-url`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of the master owning `key`'s slot.
    pub fn owner(&self, key: &str) -> u16 {
        let slot: u16 = self.nodes[0]
            .cli(&["cluster", "keyslot", key])
            .parse()
            .expect("keyslot");
        let slots = self.nodes[0].cli(&["cluster", "slots"]);
        // Lines come in groups: start, end, ip, port, id, ...
        let lines: Vec<&str> = slots.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                && lines[i + 2] == "127.0.0.1"
                && (start..=end).contains(&slot)
            {
                return lines[i + 3].parse().expect("port");
            }
            i += 1;
        }
        panic!("no owner for slot {slot} in:\n{slots}");
    }
}
