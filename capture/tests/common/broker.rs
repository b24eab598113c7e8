//! One real Kafka-protocol broker (tansu) per test process, started on
//! first use on a free port, stopped when the test process exits.
//!
//! The broker binary is `$TANSU_BIN`, else `~/.cargo/bin/tansu`, else
//! `tansu` on `PATH` (`.ci/run` installs it).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::free_port;

/// A broker shared by every test of one test binary.
pub struct Broker {
    /// `host:port` to bootstrap from.
    pub address: String,
    // The wrapper shell; its stdin pipe closing (when the test process
    // exits, however it exits) makes it stop the broker.
    _wrapper: Mutex<Child>,
}

static BROKER: OnceLock<Broker> = OnceLock::new();

/// The shared broker, started on first use.
pub fn broker() -> &'static Broker {
    BROKER.get_or_init(start_broker)
}

/// The tansu binary: `$TANSU_BIN`, else `~/.cargo/bin/tansu`, else `tansu`.
pub fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return bin.into();
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cargo_bin = PathBuf::from(home).join(".cargo/bin/tansu");
        if cargo_bin.exists() {
            return cargo_bin;
        }
    }
    PathBuf::from("tansu")
}

fn start_broker() -> Broker {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("tansu-{port}.log"));
    // The shell waits on its stdin; when the test process dies the pipe
    // closes, `cat` returns and the broker is killed with it.
    let script = r#""$0" broker --listener-url "$1" --advertised-listener-url "$1" \
        --storage-engine memory://tansu/ >"$2" 2>&1 & broker=$!
        cat >/dev/null
        kill $broker"#;
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(tansu_bin())
        .arg(&url)
        .arg(&log)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the tansu broker (set TANSU_BIN or run .ci/run)");
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&address).is_err() {
        if Instant::now() > deadline {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("tansu did not listen on {address} within 30s; its log:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker {
        address,
        _wrapper: Mutex::new(child),
    }
}
