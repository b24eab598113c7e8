//! Harness for integration tests and the load benchmark: one real
//! Kafka-protocol broker (tansu) per test process, throwaway topics per
//! test, the `capture` binary as a child process, and a consumer that reads
//! back what capture produced.
//!
//! The broker binary is `$TANSU_BIN`, else `~/.cargo/bin/tansu`, else
//! `tansu` on `PATH` (`.ci/run` installs it).
#![allow(dead_code)] // every test binary uses a different part of it

pub mod broker;
pub mod hostile;
pub mod ledger;
pub mod python;
pub mod redis;
pub mod spooled;
pub mod sqlite_broker;
pub mod volume;

pub use broker::broker;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Offset, TopicPartitionList};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A fresh, unique name for a throwaway topic.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// One set of throwaway topics, one per data type.
#[derive(Debug, Clone)]
pub struct Topics {
    pub events: String,
    pub recordings: String,
    pub historical: String,
    pub client_warnings: String,
    pub exceptions: String,
    pub overflow: String,
    pub heatmaps: String,
    pub dlq: String,
}

impl Topics {
    /// Creates the eight topics on the shared broker with `partitions` each.
    pub async fn create(partitions: i32) -> Topics {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let topics = Topics {
            events: format!("events-{id}"),
            recordings: format!("recordings-{id}"),
            historical: format!("historical-{id}"),
            client_warnings: format!("warnings-{id}"),
            exceptions: format!("exceptions-{id}"),
            overflow: format!("overflow-{id}"),
            heatmaps: format!("heatmaps-{id}"),
            dlq: format!("dlq-{id}"),
        };
        create_topics(&topics.names(), partitions).await;
        topics
    }

    pub fn names(&self) -> [&str; 8] {
        [
            &self.events,
            &self.recordings,
            &self.historical,
            &self.client_warnings,
            &self.exceptions,
            &self.overflow,
            &self.heatmaps,
            &self.dlq,
        ]
    }

    /// Capture flags that point it at these topics.
    pub fn args(&self) -> Vec<String> {
        [
            ("--events-topic", &self.events),
            ("--recordings-topic", &self.recordings),
            ("--historical-topic", &self.historical),
            ("--client-warnings-topic", &self.client_warnings),
            ("--exceptions-topic", &self.exceptions),
            ("--overflow-topic", &self.overflow),
            ("--heatmaps-topic", &self.heatmaps),
            ("--dlq-topic", &self.dlq),
        ]
        .into_iter()
        .flat_map(|(flag, name)| [flag.to_owned(), name.clone()])
        .collect()
    }
}

/// Creates topics on the shared broker.
pub async fn create_topics(names: &[&str], partitions: i32) {
    create_topics_at(&broker().address, names, partitions).await;
}

/// Creates topics on the broker at `address` (a test's own broker).
pub async fn create_topics_at(address: &str, names: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", address)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .create_topics(&new, &options)
        .await
        .expect("create topics")
    {
        if let Err((topic, code)) = result {
            panic!("creating topic {topic} failed: {code}");
        }
    }
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub value: serde_json::Value,
}

impl Record {
    /// The event as the client sent it (the `data` field, parsed).
    pub fn data(&self) -> serde_json::Value {
        let text = self.value["data"].as_str().expect("data is a JSON string");
        serde_json::from_str(text).expect("data parses")
    }
}

/// Reads `topic` from the beginning until `count` distinct messages arrived
/// or `timeout` passed; returns what arrived, in (partition, offset) order.
pub fn read_topic(topic: &str, count: usize, timeout: Duration) -> Vec<Record> {
    read_topic_at(&broker().address, topic, count, timeout)
}

/// [`read_topic`] from the broker at `address` (a test's own broker).
pub fn read_topic_at(address: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Record> {
    let mut records = Vec::new();
    if count > 0 {
        consume_at(address, topic, Instant::now() + timeout, |record| {
            if let Some(record) = record {
                records.push(record);
            }
            records.len() < count
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// Reads `topic` on the broker at `address` from the beginning, handing
/// `next` each distinct message (`Some`) and `None` after each 100 ms
/// without one, until `next` returns false or `deadline` passes.
pub fn consume_at(
    address: &str,
    topic: &str,
    deadline: Instant,
    mut next: impl FnMut(Option<Record>) -> bool,
) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("group.id", unique("test-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .expect("assign partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut seen = HashSet::new();
    while Instant::now() < deadline {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            if !next(None) {
                return;
            }
            continue;
        };
        let message = result.expect("consume");
        // The broker may hand out an offset twice; each counts once.
        if !seen.insert((message.partition(), message.offset())) {
            continue;
        }
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let record = Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            value: serde_json::from_slice(message.payload().unwrap_or_default())
                .expect("message value is JSON"),
        };
        if !next(Some(record)) {
            return;
        }
    }
}

/// Reads exactly `count` messages, failing with what did arrive otherwise.
pub fn read_exactly(topic: &str, count: usize) -> Vec<Record> {
    let records = read_topic(topic, count, Duration::from_secs(20));
    assert_eq!(
        records.len(),
        count,
        "expected {count} messages on {topic}, got {records:#?}"
    );
    // Anything beyond `count` would be a duplicate or a stray event.
    let extra = read_topic(topic, count + 1, Duration::from_millis(500));
    assert_eq!(
        extra.len(),
        count,
        "more than {count} messages on {topic}: {extra:#?}"
    );
    records
}

/// The capture binary running as a child process.
pub struct Capture {
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Capture {
    /// Starts capture on an ephemeral port with JSON logs and `args`, and
    /// waits until it is listening.
    pub fn start<S: AsRef<str>>(args: &[S]) -> Capture {
        Capture::start_with_env(args, &[])
    }

    /// Like [`Capture::start`], with extra environment variables.
    pub fn start_with_env<S: AsRef<str>>(args: &[S], env: &[(&str, &str)]) -> Capture {
        let mut child = Command::new(env!("CARGO_BIN_EXE_capture"))
            .args(["--address", "127.0.0.1:0", "--log-format", "json"])
            .args(args.iter().map(AsRef::as_ref))
            .env_remove("CAPTURE_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn capture");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (listening, address) = mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_address(&line) {
                    let _ = listening.send(addr);
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let address = match address.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                let logs = logs.lock().expect("log lock").join("\n");
                panic!("capture did not start listening; its log:\n{logs}");
            }
        };
        Capture {
            child,
            address,
            logs,
        }
    }

    /// `http://address/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// `GET /_readiness`: its status and body.
    pub async fn readiness(&self) -> (u16, String) {
        let response = reqwest::get(self.url("/_readiness"))
            .await
            .expect("readiness");
        let status = response.status().as_u16();
        (status, response.text().await.expect("readiness text"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// The first log line containing `needle`, waiting up to 10 s for it
    /// (stderr is read by another thread, a little behind the process).
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line with {needle:?}; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits (up to 60 s) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for capture") {
                return status;
            }
            assert!(Instant::now() < deadline, "capture did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits (up to 60 s) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_term();
        self.wait_exit()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening_address(line: &str) -> Option<SocketAddr> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    if entry["message"] != "capture listening" {
        return None;
    }
    entry["address"].as_str()?.parse().ok()
}

/// Starts capture producing to `topics` on the shared broker.
pub fn capture_for(topics: &Topics, extra: &[&str]) -> Capture {
    let mut args = vec!["--kafka-brokers".to_owned(), broker().address.clone()];
    args.extend(topics.args());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Capture::start(&args)
}
