//! The Kafka sink, on librdkafka through `rdkafka`.
//!
//! Every message of a request is enqueued without blocking, each carrying
//! its place in one shared [`RequestAck`]; the delivery callback records
//! which messages were acknowledged and wakes the request once every
//! message has its report (or its deadline passed), so the request knows
//! exactly which events Kafka has. A full local queue stops enqueueing at
//! once with [`SinkError::QueueFull`] so clients back off instead of piling
//! up. A background task checks broker metadata so readiness follows the
//! cluster, and replaces a producer that hit a fatal error with a new one
//! (see [`health`]); readiness also fails, with the topic named, while
//! Kafka refuses a topic as unknown or forbidden. Topic management beyond
//! `--ensure-topics` belongs to the operator.

mod health;

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::statistics::Statistics;

use super::{Delivery, Health, Message, Sink, SinkError};
use crate::config::{Acks, KafkaCompression, KafkaConfig, KafkaSecurityProtocol, SaslMechanism};
use crate::event::header;
use crate::metrics as m;
use health::{STATE_REFUSED_REBUILD, SinkHealth, TopicFault, refuses_producer_state};

/// Room librdkafka needs beyond the value for key, headers and framing.
pub const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;

/// Builds the librdkafka configuration from typed settings.
pub fn client_config(config: &KafkaConfig, max_message_bytes: usize) -> ClientConfig {
    let mut client = ClientConfig::new();
    let acks = match config.acks {
        Acks::All => "all",
        Acks::Leader => "1",
        Acks::None => "0",
    };
    let compression = match config.compression {
        KafkaCompression::None => "none",
        KafkaCompression::Gzip => "gzip",
        KafkaCompression::Snappy => "snappy",
        KafkaCompression::Lz4 => "lz4",
        KafkaCompression::Zstd => "zstd",
    };
    client
        .set("bootstrap.servers", config.brokers.join(","))
        .set("client.id", &config.client_id)
        .set("acks", acks)
        .set("enable.idempotence", config.idempotence.to_string())
        .set("compression.type", compression)
        .set("linger.ms", config.linger.as_millis().to_string())
        .set(
            "queue.buffering.max.messages",
            config.queue_messages.to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            // Config::load sizes it from the memory limit; librdkafka's
            // default otherwise.
            config
                .queue_kbytes
                .map_or(1_048_576, NonZeroU32::get)
                .to_string(),
        )
        .set(
            "message.timeout.ms",
            config.message_timeout.as_millis().to_string(),
        )
        .set(
            "message.max.bytes",
            (max_message_bytes + MESSAGE_OVERHEAD_BYTES).to_string(),
        )
        .set(
            "statistics.interval.ms",
            config.statistics_interval.as_millis().to_string(),
        )
        .set("partitioner", "murmur2_random");
    let protocol = match config.security_protocol {
        KafkaSecurityProtocol::Plaintext => "plaintext",
        KafkaSecurityProtocol::Ssl => "ssl",
        KafkaSecurityProtocol::SaslPlaintext => "sasl_plaintext",
        KafkaSecurityProtocol::SaslSsl => "sasl_ssl",
    };
    client.set("security.protocol", protocol);
    if let Some(mechanism) = config.sasl_mechanism {
        let mechanism = match mechanism {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        };
        client.set("sasl.mechanism", mechanism);
    }
    if let Some(username) = &config.sasl_username {
        client.set("sasl.username", username);
    }
    if let Some(password) = &config.sasl_password {
        client.set("sasl.password", password);
    }
    client
}

/// Producer context: turns librdkafka statistics and errors into metrics
/// and logs, counts delivery reports down into each request's
/// [`RequestAck`], and tells the sink's [`SinkHealth`] about fatal errors
/// and refused topics.
#[derive(Debug, Default)]
pub struct KafkaContext {
    /// The sink's health, shared with the health check and readiness.
    health: Arc<SinkHealth>,
    /// When a client error was last logged.
    last_logged: Mutex<Option<Instant>>,
    /// Errors not logged since then.
    suppressed: AtomicU64,
}

/// librdkafka reports a lost broker many times a second; one log line per
/// interval (with a count of the rest) is enough. The metric counts all.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl ClientContext for KafkaContext {
    fn stats(&self, stats: Statistics) {
        metrics::gauge!(m::KAFKA_QUEUE_MESSAGES).set(stats.msg_cnt as f64);
        metrics::gauge!(m::KAFKA_QUEUE_BYTES).set(stats.msg_size as f64);
        let up = stats.brokers.values().filter(|b| b.state == "UP").count();
        metrics::gauge!(m::KAFKA_BROKERS_UP).set(up as f64);
        metrics::counter!(m::KAFKA_TX_MESSAGES).absolute(u64::try_from(stats.txmsgs).unwrap_or(0));
        metrics::counter!(m::KAFKA_TX_BYTES)
            .absolute(u64::try_from(stats.txmsg_bytes).unwrap_or(0));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        metrics::counter!(m::KAFKA_CLIENT_ERRORS).increment(1);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            // The health check rebuilds the producer; wake it now.
            tracing::error!(error = %error, reason, "kafka producer hit a fatal error");
            self.health.wake.notify_one();
            return;
        }
        let now = Instant::now();
        let mut last = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < ERROR_LOG_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(error = %error, reason, suppressed, "kafka client error");
    }
}

impl ProducerContext for KafkaContext {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Box<Slot>) {
        match result {
            Ok(message) => {
                self.health.topic_delivered(message.topic());
                slot.ack.delivered(slot.index);
            }
            Err((err, message)) => {
                match err.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::MessageTimedOut) => {
                        self.health.topic_suspect(message.topic());
                    }
                    Some(code) if refuses_producer_state(code) => {
                        self.health.producer_state_refused(code);
                    }
                    code => {
                        if let Some(fault) = code.and_then(TopicFault::from_code) {
                            self.health.topic_failed(message.topic(), fault);
                        }
                    }
                }
                slot.ack.failed(err.clone(), message.payload_len());
            }
        }
    }
}

/// Which message of which request a delivery report is about.
#[derive(Debug)]
pub struct Slot {
    ack: Arc<RequestAck>,
    index: usize,
}

/// The acknowledgement state of one request's messages.
#[derive(Debug)]
pub struct RequestAck {
    /// Per message, whether Kafka acknowledged it.
    acked: Vec<AtomicBool>,
    /// Messages with no report yet.
    remaining: AtomicUsize,
    /// The first failure, with the size of its message.
    failure: Mutex<Option<(KafkaError, usize)>>,
    /// Woken once, when every message has its report.
    done: tokio::sync::Notify,
}

impl RequestAck {
    fn new(messages: usize) -> Self {
        RequestAck {
            acked: (0..messages).map(|_| AtomicBool::new(false)).collect(),
            remaining: AtomicUsize::new(messages),
            failure: Mutex::new(None),
            done: tokio::sync::Notify::new(),
        }
    }

    fn delivered(&self, index: usize) {
        if let Some(acked) = self.acked.get(index) {
            acked.store(true, Ordering::Release);
        }
        self.reported(1);
    }

    fn failed(&self, err: KafkaError, size: usize) {
        self.note_failure(err, size);
        self.reported(1);
    }

    /// `count` messages will get no report (they were never enqueued).
    fn not_enqueued(&self, count: usize, err: KafkaError, size: usize) {
        self.note_failure(err, size);
        self.reported(count);
    }

    fn note_failure(&self, err: KafkaError, size: usize) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            *failure = Some((err, size));
        }
    }

    fn reported(&self, count: usize) {
        if count > 0 && self.remaining.fetch_sub(count, Ordering::AcqRel) == count {
            self.done.notify_one();
        }
    }

    fn failure(&self) -> Option<(KafkaError, usize)> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Which messages were acknowledged so far.
    fn acked(&self) -> Vec<bool> {
        self.acked
            .iter()
            .map(|acked| acked.load(Ordering::Acquire))
            .collect()
    }
}

/// How long one `poll` of the producer's events lasts.
///
/// rdkafka hands librdkafka the time left of a poll in whole milliseconds,
/// so in the last millisecond of each poll it asks again and again with a
/// timeout of 0: a busy loop. rdkafka's `ThreadedProducer` polls in 100 ms
/// slices, so it spins 1% of the time, idle or not (about 7 µs of CPU per
/// `/e` request at 1,400 requests/s). One-second slices spin a tenth of
/// that; the price is that a dropped sink's polling thread ends up to a
/// second later.
const POLL_SLICE: Duration = Duration::from_secs(1);

type KafkaProducer = BaseProducer<KafkaContext>;

/// A producer and its polling thread, which ends when this goes.
struct Current {
    producer: Arc<KafkaProducer>,
    stop_polling: Arc<AtomicBool>,
}

impl Current {
    /// Creates a producer from `client` reporting to `health`, and its
    /// polling thread.
    fn start(client: &ClientConfig, health: &Arc<SinkHealth>) -> Result<Self, SinkError> {
        let context = KafkaContext {
            health: Arc::clone(health),
            ..KafkaContext::default()
        };
        let producer: Arc<KafkaProducer> = Arc::new(
            client
                .create_with_context(context)
                .map_err(SinkError::Kafka)?,
        );
        let stop_polling = Arc::new(AtomicBool::new(false));
        let (polled, stop) = (Arc::clone(&producer), Arc::clone(&stop_polling));
        std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    polled.poll(POLL_SLICE);
                }
            })
            .map_err(SinkError::Io)?;
        Ok(Current {
            producer,
            stop_polling,
        })
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        self.stop_polling.store(true, Ordering::Relaxed);
    }
}

/// What the sink and its health check share.
struct Shared {
    /// The producer in use; replaced whole after a fatal error.
    current: RwLock<Arc<Current>>,
    /// How to build another.
    client: ClientConfig,
    health: Arc<SinkHealth>,
}

impl Shared {
    fn current(&self) -> Arc<Current> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces a producer that hit a fatal error with a new one. The old
    /// one's queued and in-flight messages are purged, so their requests
    /// get their reports (not acknowledged: 503, sent again) at once, and
    /// it is kept polling long enough to deliver those reports.
    fn rebuild(&self, failed: &Arc<Current>, code: RDKafkaErrorCode, reason: &str) {
        metrics::counter!(m::KAFKA_PRODUCER_FATAL).increment(1);
        tracing::error!(error = %code, reason, "kafka producer unusable after a fatal error; building a new one");
        let fresh = match Current::start(&self.client, &self.health) {
            Ok(fresh) => Arc::new(fresh),
            Err(err) => {
                // Unready until the next health check builds one.
                tracing::error!(error = %err, "could not build a new kafka producer");
                self.health.set_fatal(Some(format!("{code}: {reason}")));
                return;
            }
        };
        {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            if Arc::ptr_eq(&current, failed) {
                *current = fresh;
            }
        }
        failed
            .producer
            .purge(PurgeConfig::default().queue().inflight());
        let old = Arc::clone(failed);
        tokio::spawn(async move {
            tokio::time::sleep(POLL_SLICE * 3).await;
            drop(old);
        });
        self.health.clear_state_refused();
        self.health.set_fatal(None);
        tracing::info!("new kafka producer in use");
    }
}

/// Produces to Kafka and reports broker reachability, fatal producer
/// errors and refused topics.
pub struct KafkaSink {
    shared: Arc<Shared>,
    max_message_bytes: usize,
    ack_timeout: Duration,
    /// Ends the health check when the sink goes.
    stop: Arc<tokio::sync::Notify>,
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("health", &self.shared.health)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Creates the producer, checks broker metadata once, and starts the
    /// background health check. A cluster that is down at start is not an
    /// error: the pod stays unready until it answers.
    pub async fn start(config: &KafkaConfig, max_message_bytes: usize) -> Result<Self, SinkError> {
        let client = client_config(config, max_message_bytes);
        let health = Arc::new(SinkHealth::default());
        let current = Current::start(&client, &health)?;
        let sink = KafkaSink {
            shared: Arc::new(Shared {
                current: RwLock::new(Arc::new(current)),
                client,
                health,
            }),
            max_message_bytes: max_message_bytes + MESSAGE_OVERHEAD_BYTES,
            ack_timeout: config.message_timeout + Duration::from_secs(5),
            stop: Arc::new(tokio::sync::Notify::new()),
        };
        match check(&sink.shared, config.metadata_timeout).await {
            Ok(brokers) => tracing::info!(brokers, "kafka cluster reachable"),
            Err(err) => {
                tracing::error!(error = %err, "kafka cluster not reachable at start; staying unready")
            }
        }
        sink.spawn_health_check(config.metadata_timeout, config.health_interval);
        Ok(sink)
    }

    /// Checks the cluster every `interval`, and at once when a fatal error
    /// is reported; ends when the sink goes.
    fn spawn_health_check(&self, timeout: Duration, interval: Duration) {
        let shared = Arc::downgrade(&self.shared);
        let wake = Arc::clone(&self.shared.health);
        let stop = Arc::clone(&self.stop);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = wake.wake.notified() => {}
                    () = stop.notified() => return,
                }
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let was = shared.health.reachable.load(Ordering::Relaxed);
                let ok = check(&shared, timeout).await.is_ok();
                if was != ok {
                    if ok {
                        tracing::info!("kafka cluster reachable again");
                    } else {
                        tracing::error!("kafka cluster unreachable");
                    }
                }
            }
        });
    }

    fn map_error(&self, err: KafkaError, size: usize) -> SinkError {
        match err {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => SinkError::QueueFull,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
                SinkError::MessageTooLarge {
                    size,
                    max: self.max_message_bytes,
                }
            }
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) => SinkError::Timeout,
            other => SinkError::Kafka(other),
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn send(&self, messages: Arc<Vec<Message>>) -> Delivery {
        let count = messages.len();
        if count == 0 {
            return Delivery::all(0);
        }
        let ack = Arc::new(RequestAck::new(count));
        let current = self.shared.current();
        for (index, message) in messages.iter().enumerate() {
            let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
            for (key, value) in &message.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let slot = Box::new(Slot {
                ack: Arc::clone(&ack),
                index,
            });
            let mut record = BaseRecord::with_opaque_to(&message.topic, slot)
                .payload(message.payload.as_bytes())
                .headers(headers);
            if let Some(key) = &message.key {
                record = record.key(key.as_bytes());
            }
            if let Err((err, _)) = current.producer.send(record) {
                // The messages enqueued before this one still get their
                // reports: wait for them, so the request knows which of its
                // events Kafka has (their policy effects are committed).
                ack.not_enqueued(count - index, err, message.payload.len());
                break;
            }
        }
        let started = Instant::now();
        let reported = tokio::time::timeout(self.ack_timeout, ack.done.notified()).await;
        metrics::histogram!(m::SINK_ACK_SECONDS, "sink" => "kafka")
            .record(started.elapsed().as_secs_f64());
        let acked = ack.acked();
        let err = match (reported, ack.failure()) {
            (Ok(()), None) => {
                return Delivery { acked, error: None };
            }
            (_, Some((err, size))) => self.map_error(err, size),
            // Idempotent producers hold in-flight messages past their timeout
            // until the connection gives up; the request does not wait, and
            // counts what has no report yet as not acknowledged.
            (Err(_), None) => SinkError::Timeout,
        };
        let uuid = messages[0]
            .headers
            .iter()
            .find(|(name, _)| *name == header::UUID);
        tracing::warn!(
            uuid = uuid.map_or("", |(_, uuid)| uuid.as_str()),
            topic = %messages[0].topic,
            events = count,
            acknowledged = acked.iter().filter(|a| **a).count(),
            error = %err,
            "event not acknowledged by kafka"
        );
        Delivery {
            acked,
            error: Some(err),
        }
    }

    fn health(&self) -> Health {
        match self.shared.health.problem() {
            None => Health::Ready,
            Some(reason) => Health::NotReady(reason),
        }
    }

    fn abandon(&self) {
        // Messages already sent may still be written by the broker: their
        // requests get 503 and the retry may duplicate them, never lose them.
        self.shared
            .current()
            .producer
            .purge(PurgeConfig::default().queue().inflight());
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let producer = Arc::clone(&self.shared.current().producer);
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|err| SinkError::Io(std::io::Error::other(err)))?
            .map_err(SinkError::Kafka)
    }
}

/// One health check: rebuilds a producer that hit a fatal error, asks the
/// cluster for its metadata (off the async threads: the call blocks),
/// records whether it answered, clears the faults of topics it lists, and
/// returns how many brokers it has.
async fn check(shared: &Shared, timeout: Duration) -> Result<usize, SinkError> {
    let current = shared.current();
    if let Some((code, reason)) = current.producer.client().fatal_error() {
        shared.rebuild(&current, code, &reason);
    } else if let Some(code) = shared.health.state_refused_for(STATE_REFUSED_REBUILD) {
        let reason = format!(
            "every delivery refused for the producer's state for {}s",
            STATE_REFUSED_REBUILD.as_secs()
        );
        shared.rebuild(&current, code, &reason);
    }
    let producer = Arc::clone(&shared.current().producer);
    let topics_wanted = shared.health.wants_topics();
    let result = tokio::task::spawn_blocking(move || {
        producer.client().fetch_metadata(None, timeout).map(|md| {
            let topics: HashSet<String> = if topics_wanted {
                md.topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| t.name().to_owned())
                    .collect()
            } else {
                HashSet::new()
            };
            (md.brokers().len(), topics)
        })
    })
    .await
    .map_err(|err| SinkError::Io(std::io::Error::other(err)))?
    .map_err(SinkError::Kafka);
    shared
        .health
        .reachable
        .store(result.is_ok(), Ordering::Relaxed);
    let (brokers, topics) = result?;
    if topics_wanted {
        shared.health.recheck_topics(|name| topics.contains(name));
        shared.health.judge_suspects(|name| topics.contains(name));
    }
    Ok(brokers)
}

/// Creates the topics that do not exist yet; existing ones are left as they
/// are. For standalone use: in Kubernetes the operator owns topics.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[&str]) -> Result<(), SinkError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config, 1 << 20)
        .create()
        .map_err(SinkError::Kafka)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                config.ensure_topics_partitions.get(),
                TopicReplication::Fixed(config.ensure_topics_replication.get()),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(config.metadata_timeout))
        .request_timeout(Some(config.metadata_timeout));
    let created = tokio::time::timeout(
        config.metadata_timeout * 2,
        admin.create_topics(&new, &options),
    )
    .await
    .map_err(|_| SinkError::Timeout)?
    .map_err(SinkError::Kafka)?;
    for result in created {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(SinkError::Kafka(KafkaError::AdminOp(code))).inspect_err(|_| {
                    tracing::error!(topic = %name, error = %code, "could not create topic");
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;
    use rdkafka::producer::BaseProducer;

    use super::*;
    use crate::config::Config;

    #[tokio::test]
    async fn a_request_is_woken_when_its_last_message_has_its_report() {
        let ack = RequestAck::new(3);
        ack.delivered(0);
        ack.delivered(2);
        let waiting = tokio::time::timeout(Duration::from_millis(50), ack.done.notified()).await;
        assert!(waiting.is_err(), "woken with a message outstanding");
        ack.delivered(1);
        ack.done.notified().await;
        assert!(ack.failure().is_none());
        assert_eq!(ack.acked(), [true, true, true]);
    }

    #[tokio::test]
    async fn a_failure_waits_for_the_other_reports_and_keeps_the_first_error() {
        let ack = RequestAck::new(3);
        ack.delivered(0);
        ack.failed(
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            10,
        );
        let waiting = tokio::time::timeout(Duration::from_millis(50), ack.done.notified()).await;
        assert!(waiting.is_err(), "woken before the last report");
        ack.failed(
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
            20,
        );
        ack.done.notified().await;
        let (err, size) = ack.failure().expect("a failure");
        assert_eq!(size, 10);
        assert!(matches!(
            err,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
        ));
        assert_eq!(ack.acked(), [true, false, false]);
    }

    #[tokio::test]
    async fn messages_never_enqueued_count_as_reported_and_not_acknowledged() {
        let ack = RequestAck::new(4);
        ack.not_enqueued(
            2,
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
            5,
        );
        ack.delivered(1);
        let waiting = tokio::time::timeout(Duration::from_millis(50), ack.done.notified()).await;
        assert!(waiting.is_err(), "woken before the enqueued ones reported");
        ack.delivered(0);
        ack.done.notified().await;
        assert_eq!(ack.acked(), [true, true, false, false]);
    }

    #[tokio::test]
    async fn the_health_check_ends_when_the_sink_goes() {
        let config = Config::load([
            "capture",
            "--kafka-brokers",
            "127.0.0.1:1",
            "--kafka-metadata-timeout",
            "100ms",
            "--kafka-health-interval",
            "1h",
        ])
        .expect("valid settings");
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = alive();
        let sink = KafkaSink::start(&config.kafka, 1 << 20)
            .await
            .expect("starts unready");
        assert_eq!(alive(), before + 1, "the health check runs");
        drop(sink);
        tokio::time::timeout(Duration::from_secs(2), async {
            while alive() > before {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the health check ended with the sink, not an hour later");
    }

    #[test]
    fn every_offered_compression_codec_is_built_in() {
        for codec in KafkaCompression::value_variants() {
            let name = codec
                .to_possible_value()
                .expect("named")
                .get_name()
                .to_owned();
            let args = [
                "capture",
                "--kafka-brokers",
                "127.0.0.1:1",
                "--kafka-compression",
                &name,
            ];
            let config = Config::load(args).expect("valid settings");
            let producer = client_config(&config.kafka, 1 << 20).create::<BaseProducer>();
            assert!(producer.is_ok(), "{name}: {:?}", producer.err());
        }
    }
}
