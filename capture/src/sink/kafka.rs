//! The Kafka sink, on librdkafka through `rdkafka`.
//!
//! Every message of a request is enqueued without blocking, carrying one
//! shared [`RequestAck`]; the delivery callback counts it down and wakes the
//! request once, when the last message is acknowledged or the first one
//! fails. A full local queue answers at once with
//! [`SinkError::QueueFull`] so clients back off instead of piling up. A
//! background task checks broker metadata so readiness follows the cluster.
//! Topic management beyond `--ensure-topics` belongs to the operator.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;

use super::{Health, Message, Sink, SinkError};
use crate::config::{Acks, KafkaCompression, KafkaConfig, KafkaSecurityProtocol, SaslMechanism};
use crate::event::header;
use crate::metrics as m;

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
            config.queue_kbytes.to_string(),
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
/// and logs, and counts delivery reports down into each request's
/// [`RequestAck`].
#[derive(Debug, Default)]
pub struct KafkaContext {
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
    type DeliveryOpaque = Arc<RequestAck>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<RequestAck>) {
        match result {
            Ok(_) => ack.delivered(),
            Err((err, message)) => ack.failed(err.clone(), message.payload_len()),
        }
    }
}

/// The acknowledgement state of one request's messages.
#[derive(Debug)]
pub struct RequestAck {
    /// Messages not yet acknowledged.
    remaining: AtomicUsize,
    /// The first failure, with the size of its message.
    failure: Mutex<Option<(KafkaError, usize)>>,
    /// Woken once: all acknowledged, or a failure.
    done: tokio::sync::Notify,
}

impl RequestAck {
    fn new(messages: usize) -> Self {
        RequestAck {
            remaining: AtomicUsize::new(messages),
            failure: Mutex::new(None),
            done: tokio::sync::Notify::new(),
        }
    }

    fn delivered(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    fn failed(&self, err: KafkaError, size: usize) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            *failure = Some((err, size));
            self.done.notify_one();
        }
    }

    fn failure(&self) -> Option<(KafkaError, usize)> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
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

/// Serves the producer's events (delivery reports, errors) on a thread of
/// its own until `stop` is set; the producer goes when the last handle
/// does.
fn spawn_poller(producer: Arc<KafkaProducer>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("kafka-poll".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                producer.poll(POLL_SLICE);
            }
        })
        .map(drop)
}

/// Produces to Kafka and reports broker reachability.
pub struct KafkaSink {
    producer: Arc<KafkaProducer>,
    /// Ends the polling thread when the sink goes.
    stop_polling: Arc<AtomicBool>,
    reachable: Arc<AtomicBool>,
    max_message_bytes: usize,
    ack_timeout: Duration,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("reachable", &self.reachable)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Creates the producer, checks broker metadata once, and starts the
    /// background health check. A cluster that is down at start is not an
    /// error: the pod stays unready until it answers.
    pub async fn start(config: &KafkaConfig, max_message_bytes: usize) -> Result<Self, SinkError> {
        let client = client_config(config, max_message_bytes);
        let producer: Arc<KafkaProducer> = Arc::new(
            client
                .create_with_context(KafkaContext::default())
                .map_err(SinkError::Kafka)?,
        );
        let stop_polling = Arc::new(AtomicBool::new(false));
        spawn_poller(Arc::clone(&producer), Arc::clone(&stop_polling)).map_err(SinkError::Io)?;
        let reachable = Arc::new(AtomicBool::new(false));
        let sink = KafkaSink {
            producer,
            stop_polling,
            reachable,
            max_message_bytes: max_message_bytes + MESSAGE_OVERHEAD_BYTES,
            ack_timeout: config.message_timeout + Duration::from_secs(5),
        };
        match sink.check_metadata(config.metadata_timeout).await {
            Ok(brokers) => tracing::info!(brokers, "kafka cluster reachable"),
            Err(err) => {
                tracing::error!(error = %err, "kafka cluster not reachable at start; staying unready")
            }
        }
        sink.spawn_health_check(config.metadata_timeout, config.health_interval);
        Ok(sink)
    }

    async fn check_metadata(&self, timeout: Duration) -> Result<usize, SinkError> {
        let result = broker_count(&self.producer, timeout).await;
        self.reachable.store(result.is_ok(), Ordering::Relaxed);
        result
    }

    fn spawn_health_check(&self, timeout: Duration, interval: Duration) {
        let producer = Arc::clone(&self.producer);
        let reachable = Arc::clone(&self.reachable);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let ok = broker_count(&producer, timeout).await.is_ok();
                if reachable.swap(ok, Ordering::Relaxed) != ok {
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

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.stop_polling.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn send(&self, messages: Vec<Message>) -> Result<(), SinkError> {
        if messages.is_empty() {
            return Ok(());
        }
        let ack = Arc::new(RequestAck::new(messages.len()));
        for message in &messages {
            let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
            for (key, value) in &message.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record = BaseRecord::with_opaque_to(&message.topic, Arc::clone(&ack))
                .payload(message.payload.as_bytes())
                .headers(headers);
            if let Some(key) = &message.key {
                record = record.key(key.as_bytes());
            }
            if let Err((err, _)) = self.producer.send(record) {
                // Messages enqueued before this one still go out; the client
                // retries the request (at-least-once).
                return Err(self.map_error(err, message.payload.len()));
            }
        }
        let started = Instant::now();
        let acknowledged = tokio::time::timeout(self.ack_timeout, ack.done.notified()).await;
        metrics::histogram!(m::SINK_ACK_SECONDS, "sink" => "kafka")
            .record(started.elapsed().as_secs_f64());
        let err = match (acknowledged, ack.failure()) {
            (Ok(()), None) => return Ok(()),
            (_, Some((err, size))) => self.map_error(err, size),
            // Idempotent producers hold in-flight messages past their timeout
            // until the connection gives up; the request does not wait.
            (Err(_), None) => SinkError::Timeout,
        };
        let uuid = messages[0]
            .headers
            .iter()
            .find(|(name, _)| *name == header::UUID);
        tracing::warn!(
            uuid = uuid.map_or("", |(_, uuid)| uuid.as_str()),
            topic = %messages[0].topic,
            events = messages.len(),
            error = %err,
            "event not acknowledged by kafka"
        );
        Err(err)
    }

    fn health(&self) -> Health {
        if self.reachable.load(Ordering::Relaxed) {
            Health::Ready
        } else {
            Health::NotReady("kafka brokers unreachable".into())
        }
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let producer = Arc::clone(&self.producer);
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|err| SinkError::Io(std::io::Error::other(err)))?
            .map_err(SinkError::Kafka)
    }
}

/// Asks the cluster for its metadata (off the async threads: the call
/// blocks) and returns how many brokers it lists.
async fn broker_count(
    producer: &Arc<KafkaProducer>,
    timeout: Duration,
) -> Result<usize, SinkError> {
    let producer = Arc::clone(producer);
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, timeout)
            .map(|md| md.brokers().len())
    })
    .await
    .map_err(|err| SinkError::Io(std::io::Error::other(err)))?
    .map_err(SinkError::Kafka)
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
    async fn a_request_is_woken_when_its_last_message_is_acknowledged() {
        let ack = RequestAck::new(3);
        ack.delivered();
        ack.delivered();
        let waiting = tokio::time::timeout(Duration::from_millis(50), ack.done.notified()).await;
        assert!(waiting.is_err(), "woken with a message outstanding");
        ack.delivered();
        ack.done.notified().await;
        assert!(ack.failure().is_none());
    }

    #[tokio::test]
    async fn the_first_failure_wakes_the_request_and_is_kept() {
        let ack = RequestAck::new(3);
        ack.delivered();
        ack.failed(
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            10,
        );
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
