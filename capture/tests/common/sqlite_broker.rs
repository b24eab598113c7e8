//! A Kafka-protocol broker that keeps its data across a restart, for fault
//! tests: tansu with its sqlite storage in a temp dir of its own, run
//! directly (no wrapper shell) so a test can SIGKILL the broker itself and
//! start it again on the same file and port.
//!
//! Caveats of tansu 0.6's sqlite engine (the design's TESTING.md, "A broker
//! that keeps its data across a restart"): an idempotent producer session
//! that continues across a restart makes it panic and fail every request
//! from then on, so capture runs against it with `--kafka-idempotence
//! false`; and reading much more than about 10,000 messages back from
//! offset 0 has been seen to stall.

use std::fs::File;
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A tansu broker of one test, storing into `tansu.db` in its own temp
/// dir, on a port that stays the same across restarts.
pub struct SqliteBroker {
    dir: tempfile::TempDir,
    port: u16,
    /// The tansu process itself (no wrapper shell), while it runs.
    child: Option<Child>,
    /// How many times it was started (each start logs to its own file).
    starts: usize,
}

impl SqliteBroker {
    /// Starts a broker on a fresh database and a free port.
    pub fn start() -> SqliteBroker {
        let mut broker = SqliteBroker {
            dir: tempfile::tempdir().expect("temp dir for the broker"),
            port: free_port(),
            child: None,
            starts: 0,
        };
        broker.spawn();
        broker
    }

    /// `host:port` to bootstrap from.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts tansu (again) on the same port and database file, and waits
    /// until it accepts connections.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        self.starts += 1;
        let url = format!("tcp://{}", self.address());
        let log = self.dir.path().join(format!("tansu-{}.log", self.starts));
        let stdout = File::create(&log).expect("broker log file");
        let stderr = stdout.try_clone().expect("broker log file");
        let mut child = Command::new(super::broker::tansu_bin())
            // `sqlite://tansu.db` is relative to the working directory
            // (`sqlite:///abs/path` gets mangled).
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start tansu (set TANSU_BIN or run .ci/run)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.address()).is_err() {
            if let Some(status) = child.try_wait().expect("tansu status") {
                panic!(
                    "tansu exited ({status}) before listening; its log:\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tansu did not listen on {} within 30 s; its log:\n{}",
                    self.address(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// SIGKILLs the broker (`Child::kill` sends SIGKILL on Unix, to tansu's
    /// own pid): it gets no chance to flush or close anything.
    pub fn sigkill(&mut self) {
        let mut child = self.child.take().expect("the broker is running");
        if let Some(status) = child.try_wait().expect("tansu status") {
            panic!(
                "tansu had already exited ({status}) before the kill; its log:\n{}",
                self.logs()
            );
        }
        child.kill().expect("SIGKILL tansu");
        let status = child.wait().expect("reap tansu");
        assert_eq!(status.signal(), Some(9), "tansu ended by SIGKILL: {status}");
        assert!(
            TcpStream::connect(self.address()).is_err(),
            "nothing listens on the broker's port after the kill"
        );
    }

    /// Every start's log, in order.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let path = self.dir.path().join(format!("tansu-{n}.log"));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                format!("--- tansu start {n} ---\n{text}")
            })
            .collect()
    }

    /// Tansu log lines that report a panic (none expected with idempotence
    /// off; printed, as a broker fault rather than capture's).
    pub fn panics(&self) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|line| line.contains("panicked"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for SqliteBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
