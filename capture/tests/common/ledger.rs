//! Accounting for fault tests: clients that send batches while something
//! breaks, a ledger of every uuid answered 200, and a count of what the
//! topic holds, so a test can say "every acknowledged event is there, this
//! many twice".

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::consume_at;

/// What the clients were told.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Uuids of events whose request was answered 200.
    pub acknowledged: HashSet<String>,
    /// Requests by status (0: no answer, the connection failed).
    pub statuses: BTreeMap<u16, usize>,
}

impl Ledger {
    /// Requests answered with `status`.
    pub fn answered(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Requests answered since `earlier` (a snapshot of the same ledger),
    /// by status; statuses with none left out.
    pub fn since(&self, earlier: &Ledger) -> BTreeMap<u16, usize> {
        self.statuses
            .iter()
            .map(|(status, n)| (*status, n - earlier.answered(*status)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn record(&mut self, status: u16, uuids: &[String]) {
        *self.statuses.entry(status).or_insert(0) += 1;
        if status == 200 {
            self.acknowledged.extend(uuids.iter().cloned());
        }
    }
}

/// A `/batch` body of one event per uuid, for `token`.
pub fn batch(token: &str, uuids: &[String]) -> Value {
    let events: Vec<Value> = uuids
        .iter()
        .map(|uuid| json!({"event": "e", "distinct_id": format!("user-{}", &uuid[30..]), "uuid": uuid}))
        .collect();
    json!({"api_key": token, "batch": events})
}

/// `n` fresh uuids.
pub fn uuids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect()
}

/// Sends `body` to `url`; the status, or 0 when no answer came.
pub async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    match client.post(url).json(body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Load for a fault test: `clients` concurrent clients, each sending
/// batches of `per_batch` new events to `url` until `stop` is set, at most
/// `rounds` batches each. A refused batch is not sent again (its events
/// are simply not acknowledged): the test counts what was answered 200.
pub struct Load {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the clients, each sending its next batch as soon as the last
    /// was answered.
    pub fn start(url: &str, token: &str, clients: usize, per_batch: usize, rounds: usize) -> Load {
        Load::paced(url, token, clients, per_batch, rounds, Duration::ZERO)
    }

    /// Starts the clients, each waiting `pace` between its batches (so a
    /// test of several seconds stays within what it can read back).
    pub fn paced(
        url: &str,
        token: &str,
        clients: usize,
        per_batch: usize,
        rounds: usize,
        pace: Duration,
    ) -> Load {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let tasks = (0..clients)
            .map(|_| {
                let (ledger, stop, client) =
                    (Arc::clone(&ledger), Arc::clone(&stop), client.clone());
                let (url, token) = (url.to_owned(), token.to_owned());
                tokio::spawn(async move {
                    for _ in 0..rounds {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let sent = uuids(per_batch);
                        let (status, _) = post(&client, &url, &batch(&token, &sent)).await;
                        ledger.lock().expect("ledger").record(status, &sent);
                        if status != 200 {
                            // As SDKs back off after a failure.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        } else if !pace.is_zero() {
                            tokio::time::sleep(pace).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            ledger,
            stop,
            tasks,
        }
    }

    /// What the clients were told so far.
    pub fn ledger(&self) -> Ledger {
        self.ledger.lock().expect("ledger").clone()
    }

    /// Stops the clients, waits for their last requests, and returns the
    /// ledger.
    pub async fn finish(self) -> Ledger {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("client task");
        }
        self.ledger.lock().expect("ledger").clone()
    }
}

/// How often each uuid is on `topic` (by its `uuid` header), on the
/// shared broker: see [`count_on_topic_at`].
pub fn count_on_topic(topic: &str) -> BTreeMap<String, usize> {
    count_on_topic_at(&super::broker().address, topic)
}

/// How often each uuid is on `topic` at `address`, reading every message
/// the broker holds: up to each partition's high watermark, so the count
/// is exact and needs no quiet period. The deadline is generous: tansu's
/// sqlite engine serves only a couple of hundred messages a second.
pub fn count_on_topic_at(address: &str, topic: &str) -> BTreeMap<String, usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("group.id", super::unique("watermarks"))
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    // Per partition: its low and high watermark, and how many offsets
    // below the high one were read. Messages past it (written while this
    // reads) are counted too, but not waited for.
    let mut partitions: BTreeMap<i32, (i64, i64, i64)> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .expect("watermarks");
            (partition.id(), (low, high, 0))
        })
        .collect();
    let mut missing: i64 = partitions.values().map(|(low, high, _)| high - low).sum();
    let mut counts = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    // Past the watermarks, on until nothing new came for two seconds: a
    // broker's watermarks may lag what it serves.
    let mut quiet_since: Option<std::time::Instant> = None;
    consume_at(address, topic, deadline, |record| match record {
        Some(record) => {
            quiet_since = None;
            if let Some((_, high, read)) = partitions.get_mut(&record.partition)
                && record.offset < *high
            {
                *read += 1;
                missing -= 1;
            }
            let uuid = record.headers.get("uuid").cloned().unwrap_or_default();
            *counts.entry(uuid).or_insert(0usize) += 1;
            true
        }
        None if missing > 0 => true,
        None => {
            quiet_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                < Duration::from_secs(2)
        }
    });
    assert_eq!(
        missing, 0,
        "every message below the high watermarks of {topic} is read back: {partitions:?}"
    );
    counts
}

/// Checks that every acknowledged uuid is on the topic (`counts` from
/// [`count_on_topic`]), prints the accounting line, and returns the number
/// of duplicates among them.
pub fn assert_none_lost(what: &str, ledger: &Ledger, counts: &BTreeMap<String, usize>) -> usize {
    let lost: Vec<&String> = ledger
        .acknowledged
        .iter()
        .filter(|u| !counts.contains_key(*u))
        .collect();
    let duplicates: usize = ledger
        .acknowledged
        .iter()
        .map(|u| counts.get(u).copied().unwrap_or(0).saturating_sub(1))
        .sum();
    let on_topic: usize = counts.values().sum();
    println!(
        "[accounting] {what}: requests {:?}; {} events answered 200, {} lost, \
         {duplicates} duplicates ({:.3}%); {on_topic} messages on the topic",
        ledger.statuses,
        ledger.acknowledged.len(),
        lost.len(),
        100.0 * duplicates as f64 / ledger.acknowledged.len().max(1) as f64,
    );
    assert!(
        lost.is_empty(),
        "{what}: {} events answered 200 are not on the topic, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    duplicates
}
