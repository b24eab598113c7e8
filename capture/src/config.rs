//! Static settings: flags, `CAPTURE_*` environment variables and an optional
//! YAML file, validated once at start.
//!
//! Precedence is flag, then environment, then file, then default. The file's
//! keys are the long flag names (`kafka-brokers: ...`; underscores work too),
//! so one table in `docs/configuration.md` documents all three spellings.
//! Everything here needs a restart to change; live settings arrive through the
//! runtime config document in a later layer.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::{NonZeroI32, NonZeroU32};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, ValueEnum};

use crate::policy::{
    FailureMode, PolicySettings, QuotaAction, RateAction, RedisPolicySettings, StoreSettings,
};
use crate::route::Topics;

/// A setting could not be loaded or makes no sense with the others.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Flags, environment or file values did not parse.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The YAML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML file is not a mapping of settings.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// Settings conflict.
    #[error("invalid settings: {0}")]
    Invalid(String),
    /// A credential file (`--*-file`) could not be read. Names the flag and
    /// the path, never the content.
    #[error("cannot read {flag} {path}: {source}")]
    CredentialFile {
        /// The flag, like `--redis-url-file`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Sets `value` from `file`, when given: its content without a trailing
/// newline. Refuses a value and a file together, and an unreadable file,
/// naming the `(value, file)` flags and the path (never the content).
pub(crate) fn read_credential(
    (flag, file_flag): (&'static str, &'static str),
    value: &mut Option<String>,
    file: Option<&std::path::Path>,
) -> Result<(), ConfigError> {
    let Some(path) = file else {
        return Ok(());
    };
    if value.is_some() {
        return Err(ConfigError::Invalid(format!(
            "`{flag}` and `{file_flag}` are both set; set one (the file, for a mounted Secret)"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::CredentialFile {
        flag: file_flag,
        path: path.to_owned(),
        source,
    })?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    *value = Some(text.to_owned());
    Ok(())
}

/// Largest `--max-message-bytes`: librdkafka's `message.max.bytes` ceiling
/// (1,000,000,000) less the room kept for key, headers and framing.
pub const MAX_MESSAGE_BYTES: usize = 1_000_000_000 - crate::sink::kafka::MESSAGE_OVERHEAD_BYTES;

/// Every static setting of the `capture` server.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "capture",
    version,
    about = "PostHog-compatible event capture to Kafka",
    args_override_self = true
)]
pub struct Config {
    /// YAML file of settings, keyed by long flag name. Flags and environment
    /// variables override it.
    #[arg(long, env = "CAPTURE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Runtime config document (token policies, restrictions, plugins,
    /// limits, routing; see docs/runtime-config.md). Refused at start-up
    /// when invalid.
    #[arg(long, env = "CAPTURE_RUNTIME_CONFIG", value_name = "PATH")]
    pub runtime_config: Option<PathBuf>,

    /// How often the runtime config file is checked for changes (SIGHUP
    /// checks at once).
    #[arg(long, env = "CAPTURE_RUNTIME_CONFIG_POLL", default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub runtime_config_poll: Duration,

    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub sink: SinkConfig,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    #[command(flatten)]
    pub spool: SpoolConfig,
    #[command(flatten)]
    pub topics: TopicsConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub memory: MemoryConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub policy: PolicyConfig,
    #[command(flatten)]
    pub log: LogConfig,
}

/// The HTTP listener.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpConfig {
    /// Address to listen on.
    #[arg(long, env = "CAPTURE_ADDRESS", default_value = "127.0.0.1:3000")]
    pub address: SocketAddr,
    /// Longest time a client may take to send request headers.
    #[arg(long, env = "CAPTURE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Longest time a client may take to send the whole request body,
    /// counted from its headers however the body is paced.
    #[arg(long, env = "CAPTURE_BODY_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// Most open client connections; more wait in the listen queue until
    /// one closes.
    #[arg(long, env = "CAPTURE_MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: NonZeroU32,
    /// Most requests being handled at once; more get 503 `overloaded` with
    /// Retry-After.
    #[arg(long, env = "CAPTURE_MAX_REQUESTS_IN_FLIGHT", default_value = "4096")]
    pub max_requests_in_flight: NonZeroU32,
    /// Largest request head (request line and headers); larger ones get 431.
    #[arg(long, env = "CAPTURE_MAX_HEADER_BYTES", default_value = "64KiB", value_parser = parse_bytes)]
    pub max_header_bytes: usize,
    /// Most concurrent streams per HTTP/2 connection.
    #[arg(long, env = "CAPTURE_HTTP2_MAX_STREAMS", default_value = "256")]
    pub http2_max_streams: NonZeroU32,
    /// How often an idle HTTP/2 connection is pinged; one that does not
    /// answer within the same time is closed.
    #[arg(long, env = "CAPTURE_HTTP2_KEEP_ALIVE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keep_alive: Duration,
    /// Async worker threads. Default: one less than the CPUs available to the
    /// process (at least 1), leaving a core to librdkafka's own threads.
    #[arg(long, env = "CAPTURE_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<std::num::NonZeroUsize>,
    /// On SIGTERM, how long to keep serving while readiness already fails, so
    /// load balancers stop sending traffic before the listener closes.
    #[arg(long, env = "CAPTURE_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,
    /// After the delay, the time budget shared by finishing in-flight requests and
    /// flushing the producer.
    #[arg(long, env = "CAPTURE_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// PEM certificate chain for HTTPS (leaf first; `tls.crt` of a Kubernetes
    /// TLS Secret). With `--tls-key`, the listener speaks only TLS, offering
    /// HTTP/2 and HTTP/1.1.
    #[arg(long, env = "CAPTURE_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert` (`tls.key`).
    #[arg(long, env = "CAPTURE_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// How often the certificate and key files are checked for a rotation.
    #[arg(long, env = "CAPTURE_TLS_POLL", default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub tls_poll: Duration,
}

impl HttpConfig {
    /// The certificate and key files, when TLS is on.
    pub fn tls(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

/// Which sink receives events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// Kafka via librdkafka (needs `--kafka-brokers`).
    Kafka,
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to `--sink-file`.
    File,
    /// Acknowledge and discard.
    Noop,
}

/// Sink selection.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sink")]
pub struct SinkConfig {
    /// Where events go. Default: `kafka` when brokers are set, else `stdout`.
    #[arg(long = "sink", env = "CAPTURE_SINK", value_enum)]
    pub kind: Option<SinkKind>,
    /// File for `--sink file`.
    #[arg(long, env = "CAPTURE_SINK_FILE", value_name = "PATH")]
    pub sink_file: Option<PathBuf>,
}

/// `acks` for the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acks {
    /// Every in-sync replica (required for idempotence).
    All,
    /// The partition leader only.
    #[value(name = "1")]
    Leader,
    /// No acknowledgement at all.
    #[value(name = "0")]
    None,
}

/// Producer compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KafkaCompression {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4.
    Lz4,
    /// zstd.
    Zstd,
}

/// Kafka producer settings.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port`.
    #[arg(
        long = "kafka-brokers",
        env = "CAPTURE_KAFKA_BROKERS",
        value_delimiter = ',',
        value_name = "HOST:PORT",
        // Replace, not append, so a flag overrides the file's list.
        action = clap::ArgAction::Set
    )]
    pub brokers: Vec<String>,
    /// Producer `acks`.
    #[arg(
        long = "kafka-acks",
        env = "CAPTURE_KAFKA_ACKS",
        value_enum,
        default_value = "all"
    )]
    pub acks: Acks,
    /// Idempotent producer (no duplicates from producer retries).
    #[arg(long = "kafka-idempotence", env = "CAPTURE_KAFKA_IDEMPOTENCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub idempotence: bool,
    /// Compression codec for produced batches.
    #[arg(
        long = "kafka-compression",
        env = "CAPTURE_KAFKA_COMPRESSION",
        value_enum,
        default_value = "lz4"
    )]
    pub compression: KafkaCompression,
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[arg(long = "kafka-linger", env = "CAPTURE_KAFKA_LINGER", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub linger: Duration,
    /// Most messages buffered in the producer before requests get 503.
    #[arg(
        long = "kafka-queue-messages",
        env = "CAPTURE_KAFKA_QUEUE_MESSAGES",
        default_value = "100000"
    )]
    pub queue_messages: NonZeroU32,
    /// Most kilobytes buffered in the producer before requests get 503.
    /// Default: 20% of the memory limit (`--memory-limit`).
    #[arg(long = "kafka-queue-kbytes", env = "CAPTURE_KAFKA_QUEUE_KBYTES")]
    pub queue_kbytes: Option<NonZeroU32>,
    /// How long a message may wait for its acknowledgement before the request gets 503.
    #[arg(long = "kafka-message-timeout", env = "CAPTURE_KAFKA_MESSAGE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub message_timeout: Duration,
    /// Timeout of one broker metadata request (start-up and health checks).
    #[arg(long = "kafka-metadata-timeout", env = "CAPTURE_KAFKA_METADATA_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub metadata_timeout: Duration,
    /// How often broker reachability is checked for readiness.
    #[arg(long = "kafka-health-interval", env = "CAPTURE_KAFKA_HEALTH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// How often librdkafka reports the statistics behind the `capture_kafka_*` metrics.
    #[arg(long = "kafka-statistics-interval", env = "CAPTURE_KAFKA_STATISTICS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub statistics_interval: Duration,
    /// How to talk to the brokers: `plaintext`, `ssl`, `sasl-plaintext` or
    /// `sasl-ssl` (TLS with the system's CA certificates).
    #[arg(
        long = "kafka-security-protocol",
        env = "CAPTURE_KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "plaintext"
    )]
    pub security_protocol: KafkaSecurityProtocol,
    /// SASL mechanism, with a `sasl-*` protocol.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "CAPTURE_KAFKA_SASL_MECHANISM",
        value_enum
    )]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[arg(long = "kafka-sasl-username", env = "CAPTURE_KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// A file holding the SASL user name (a mounted Secret key), read once
    /// at start; a trailing newline is dropped. Instead of
    /// `--kafka-sasl-username`.
    #[arg(
        long = "kafka-sasl-username-file",
        env = "CAPTURE_KAFKA_SASL_USERNAME_FILE",
        value_name = "PATH"
    )]
    pub sasl_username_file: Option<PathBuf>,
    /// SASL password. Prefer `--kafka-sasl-password-file`; it is never
    /// printed.
    #[arg(
        long = "kafka-sasl-password",
        env = "CAPTURE_KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<String>,
    /// A file holding the SASL password (a mounted Secret key), read once
    /// at start; a trailing newline is dropped. Instead of
    /// `--kafka-sasl-password`: the password is then in no environment
    /// variable of the process.
    #[arg(
        long = "kafka-sasl-password-file",
        env = "CAPTURE_KAFKA_SASL_PASSWORD_FILE",
        value_name = "PATH"
    )]
    pub sasl_password_file: Option<PathBuf>,
    /// Client id reported to the brokers.
    #[arg(
        long = "kafka-client-id",
        env = "CAPTURE_KAFKA_CLIENT_ID",
        default_value = "capture"
    )]
    pub client_id: String,
    /// Create missing topics at start (for standalone use; operators manage topics in production).
    #[arg(long, env = "CAPTURE_ENSURE_TOPICS")]
    pub ensure_topics: bool,
    /// Partitions of topics created by `--ensure-topics`.
    #[arg(long, env = "CAPTURE_ENSURE_TOPICS_PARTITIONS", default_value = "1")]
    pub ensure_topics_partitions: NonZeroI32,
    /// Replication factor of topics created by `--ensure-topics`.
    #[arg(long, env = "CAPTURE_ENSURE_TOPICS_REPLICATION", default_value = "1")]
    pub ensure_topics_replication: NonZeroI32,
}

/// `security.protocol` of the Kafka client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KafkaSecurityProtocol {
    /// No TLS, no SASL.
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

/// `sasl.mechanism` of the Kafka client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    /// `PLAIN`.
    #[value(name = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

/// Topic names.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Topics")]
pub struct TopicsConfig {
    /// Analytics events.
    #[arg(
        long,
        env = "CAPTURE_EVENTS_TOPIC",
        default_value = "clickhouse_events"
    )]
    pub events_topic: String,
    /// Session recordings (`/s`).
    #[arg(
        long,
        env = "CAPTURE_RECORDINGS_TOPIC",
        default_value = "clickhouse_session_recording_events"
    )]
    pub recordings_topic: String,
    /// Batches flagged `historical_migration`.
    #[arg(
        long,
        env = "CAPTURE_HISTORICAL_TOPIC",
        default_value = "historical_events"
    )]
    pub historical_topic: String,
    /// `$$client_ingestion_warning` events.
    #[arg(
        long,
        env = "CAPTURE_CLIENT_WARNINGS_TOPIC",
        default_value = "client_warnings"
    )]
    pub client_warnings_topic: String,
    /// `$exception` events.
    #[arg(long, env = "CAPTURE_EXCEPTIONS_TOPIC", default_value = "exceptions")]
    pub exceptions_topic: String,
    /// Events rerouted away from hot keys.
    #[arg(
        long,
        env = "CAPTURE_OVERFLOW_TOPIC",
        default_value = "events_plugin_ingestion_overflow"
    )]
    pub overflow_topic: String,
    /// `$$heatmap` events.
    #[arg(
        long,
        env = "CAPTURE_HEATMAPS_TOPIC",
        default_value = "heatmaps_ingestion"
    )]
    pub heatmaps_topic: String,
    /// Events a restriction sends to the dead-letter route
    /// (`redirectToDlq`).
    #[arg(
        long,
        env = "CAPTURE_DLQ_TOPIC",
        default_value = "events_plugin_ingestion_dlq"
    )]
    pub dlq_topic: String,
    /// At most one ingestion warning (capture's own `$$client_ingestion_warning`
    /// on the client-warnings topic, when it drops or limits a project's
    /// events) per token and kind in this interval; `0s` writes none.
    #[arg(long, env = "CAPTURE_INGESTION_WARNINGS_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ingestion_warnings_interval: Duration,
    /// Analytics events whose time (after skew correction) is older than
    /// this go to the historical topic, as PostHog's historical rerouting
    /// does (`1d` there); unset: only `historical_migration` batches do.
    #[arg(long, env = "CAPTURE_HISTORICAL_AFTER", value_parser = humantime::parse_duration)]
    pub historical_after: Option<Duration>,
}

/// Size and shape limits on requests.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitsConfig {
    /// Largest body for `/e`, `/capture`, `/track`, `/engage`, `/i/v0/e` (accepts KB, MB, KiB, MiB).
    #[arg(long, env = "CAPTURE_MAX_EVENT_BODY_BYTES", default_value = "2MB", value_parser = parse_bytes)]
    pub max_event_body_bytes: usize,
    /// Largest body for `/batch`.
    #[arg(long, env = "CAPTURE_MAX_BATCH_BODY_BYTES", default_value = "20MB", value_parser = parse_bytes)]
    pub max_batch_body_bytes: usize,
    /// Largest body for `/s`.
    #[arg(long, env = "CAPTURE_MAX_RECORDING_BODY_BYTES", default_value = "25MB", value_parser = parse_bytes)]
    pub max_recording_body_bytes: usize,
    /// Largest body for the v1 endpoint `/i/v1/analytics/events`, as sent
    /// (PostHog's v1 limit).
    #[arg(long, env = "CAPTURE_MAX_V1_BODY_BYTES", default_value = "10MiB", value_parser = parse_bytes)]
    pub max_v1_body_bytes: usize,
    /// Largest v1 body after decompression (PostHog's v1 limit).
    #[arg(long, env = "CAPTURE_MAX_V1_DECOMPRESSED_BYTES", default_value = "50MiB", value_parser = parse_bytes)]
    pub max_v1_decompressed_bytes: usize,
    /// Largest body after decompression and base64 decoding.
    #[arg(long, env = "CAPTURE_MAX_DECOMPRESSED_BYTES", default_value = "64MB", value_parser = parse_bytes)]
    pub max_decompressed_bytes: usize,
    /// Deepest JSON nesting accepted.
    #[arg(long, env = "CAPTURE_MAX_JSON_DEPTH", default_value = "64")]
    pub max_json_depth: NonZeroU32,
    /// Largest Kafka message value; bigger events get 413. The producer's
    /// `message.max.bytes` is set 64 KiB higher, leaving room for key and headers.
    #[arg(long, env = "CAPTURE_MAX_MESSAGE_BYTES", default_value = "1MB", value_parser = parse_bytes)]
    pub max_message_bytes: usize,
    /// Most events in one request; a request with more gets 413 naming the
    /// limit, found before the rest of the body is read.
    #[arg(long, env = "CAPTURE_MAX_EVENTS_PER_REQUEST", default_value = "10000")]
    pub max_events_per_request: NonZeroU32,
}

/// How much memory capture may use, and how it is shared out.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Memory")]
pub struct MemoryConfig {
    /// The memory this process may use; sizes the budgets below when they
    /// are not set. Default: the container's cgroup memory limit, else
    /// 512MiB. The operator sets it from the pod's memory limit.
    #[arg(long, env = "CAPTURE_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub memory_limit: Option<usize>,
    /// Bytes all requests together may hold at once (bodies, decoded
    /// bodies, parsed events, messages being built); a request that does
    /// not fit waits up to `--memory-wait`, then gets 503 with
    /// Retry-After. Default: 30% of the memory limit.
    #[arg(long, env = "CAPTURE_REQUEST_MEMORY_BUDGET", value_parser = parse_bytes)]
    pub request_memory_budget: Option<usize>,
    /// How long a request waits for room in the request memory budget.
    #[arg(long, env = "CAPTURE_MEMORY_WAIT", default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub memory_wait: Duration,
}

/// The memory limit assumed when neither `--memory-limit` nor a cgroup
/// sets one: the operator's default pod limit.
pub const DEFAULT_MEMORY_LIMIT: usize = 512 << 20;

/// The default request memory budget for a memory limit: 30% of it.
pub fn request_budget_of(limit: usize) -> usize {
    limit / 10 * 3
}

impl MemoryConfig {
    /// The memory limit, resolving the default.
    pub fn limit(&self) -> usize {
        self.memory_limit
            .or_else(crate::budget::cgroup_memory_limit)
            .unwrap_or(DEFAULT_MEMORY_LIMIT)
    }

    /// The request memory budget, resolving the default.
    pub fn request_budget(&self) -> usize {
        self.request_memory_budget
            .unwrap_or_else(|| request_budget_of(self.limit()))
    }

    /// The producer queue's default size in KiB: 20% of the memory limit.
    fn queue_kbytes(&self) -> NonZeroU32 {
        let kbytes = (self.limit() / 5 / 1024).clamp(1024, i32::MAX as usize);
        NonZeroU32::new(kbytes as u32).unwrap_or(NonZeroU32::MIN)
    }
}

/// Where Redis is, for quotas, dedup and cluster-wide rate limits.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisConfig {
    /// Redis URL (`redis://[:password@]host:port[/db]`, `rediss://` for TLS);
    /// with `--redis-cluster`, comma-separated seed nodes. Unset: no Redis,
    /// so quotas, dedup and cluster-wide rate limits are off. Pass the
    /// password through the environment from a Secret, never in a file.
    #[arg(
        long,
        env = "CAPTURE_REDIS_URL",
        value_delimiter = ',',
        value_name = "URL",
        action = clap::ArgAction::Set,
        hide_env_values = true
    )]
    pub redis_url: Vec<String>,
    /// A file holding the Redis URL (or comma-separated cluster seeds), such
    /// as a mounted Secret key, read once at start; a trailing newline is
    /// dropped. Instead of `--redis-url`: a password in the URL is then in
    /// no environment variable of the process.
    #[arg(long, env = "CAPTURE_REDIS_URL_FILE", value_name = "PATH")]
    pub redis_url_file: Option<PathBuf>,
    /// The URLs are Redis Cluster nodes.
    #[arg(long, env = "CAPTURE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// PEM file of the CA that signed the Redis servers' certificates, for
    /// `rediss://` URLs (a private CA, such as one from cert-manager).
    /// Unset: the system's trusted roots verify them.
    #[arg(long, env = "CAPTURE_REDIS_CA_FILE", value_name = "PATH")]
    pub redis_ca_file: Option<PathBuf>,
    /// Prefix of every key capture and the operator use (no braces).
    #[arg(long, env = "CAPTURE_REDIS_KEY_PREFIX", default_value = "")]
    pub redis_key_prefix: String,
    /// Longest a request waits for its policy check, reconnects included;
    /// past it the failure mode decides.
    #[arg(long, env = "CAPTURE_REDIS_TIMEOUT", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
    /// Longest wait to open a connection to Redis.
    #[arg(long, env = "CAPTURE_REDIS_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_connect_timeout: Duration,
    /// When Redis fails or is slow: `open` accepts events unchecked, `closed`
    /// answers 503 so clients retry.
    #[arg(
        long,
        env = "CAPTURE_REDIS_FAILURE_MODE",
        value_enum,
        default_value = "open"
    )]
    pub redis_failure_mode: FailureMode,
}

/// Quotas, deduplication, rate limits and overflow.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Policies")]
pub struct PolicyConfig {
    /// Enforce the quotas written in Redis (`quota-config:{token}`).
    #[arg(long, env = "CAPTURE_QUOTAS", default_value_t = true, action = clap::ArgAction::Set)]
    pub quotas: bool,
    /// Over-quota events: `drop` answers 200 with `quota_limited` (what
    /// PostHog SDKs expect), `reject` answers 429. A token's own `action`
    /// setting wins.
    #[arg(long, env = "CAPTURE_QUOTA_ACTION", value_enum, default_value = "drop")]
    pub quota_action: QuotaAction,
    /// How long a token found out of quota is answered from memory before
    /// Redis is asked again; a raised limit applies within this time.
    #[arg(long, env = "CAPTURE_QUOTA_RECHECK_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub quota_recheck_interval: Duration,
    /// Honour PostHog's billing limits (`@posthog/quota-limits/{resource}`).
    #[arg(long, env = "CAPTURE_BILLING_LIMITS", default_value_t = true, action = clap::ArgAction::Set)]
    pub billing_limits: bool,
    /// Key prefix of the billing limit sets.
    #[arg(
        long,
        env = "CAPTURE_BILLING_LIMITS_PREFIX",
        default_value = "@posthog/quota-limits/"
    )]
    pub billing_limits_prefix: String,
    /// How often the billing limit sets are read.
    #[arg(long, env = "CAPTURE_BILLING_LIMITS_REFRESH", default_value = "5s", value_parser = humantime::parse_duration)]
    pub billing_limits_refresh: Duration,
    /// Drop events whose uuid (else timestamp) was seen within `--dedup-ttl`.
    #[arg(long, env = "CAPTURE_DEDUP")]
    pub dedup: bool,
    /// How long a dedup marker lives.
    #[arg(long, env = "CAPTURE_DEDUP_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub dedup_ttl: Duration,
    /// Cluster-wide events per second per token and event type (0: off unless
    /// a token's settings set a rate).
    #[arg(long, env = "CAPTURE_RATE_LIMIT", default_value = "0")]
    pub rate_limit: f64,
    /// Events a token may send at once above its rate.
    #[arg(long, env = "CAPTURE_RATE_LIMIT_BURST", default_value = "1000")]
    pub rate_limit_burst: u64,
    /// Events over a rate limit (cluster-wide or hot key): `overflow` sends
    /// them to the overflow topic without a key, `reject` answers 429 with
    /// `Retry-After`.
    #[arg(
        long,
        env = "CAPTURE_RATE_LIMIT_ACTION",
        value_enum,
        default_value = "overflow"
    )]
    pub rate_limit_action: RateAction,
    /// Events per second one `token:distinct_id` may send through one replica
    /// before its events overflow (0: off).
    #[arg(long, env = "CAPTURE_HOT_KEY_RATE", default_value = "0")]
    pub hot_key_rate: f64,
    /// Burst of the per-`token:distinct_id` bucket.
    #[arg(long, env = "CAPTURE_HOT_KEY_BURST", default_value = "100")]
    pub hot_key_burst: NonZeroU32,
    /// Tokens, or `token:distinct_id` pairs, whose events always go to the
    /// overflow topic (comma-separated).
    #[arg(
        long,
        env = "CAPTURE_FORCE_OVERFLOW",
        value_delimiter = ',',
        value_name = "TOKEN[:DISTINCT_ID]",
        action = clap::ArgAction::Set,
        hide_env_values = true
    )]
    pub force_overflow: Vec<String>,
}

/// The durable spool in front of Kafka (see docs/reliability.md).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Spool")]
pub struct SpoolConfig {
    /// Directory of the durable spool: events Kafka cannot take are written
    /// here (and synced) before their request is answered 200, and replayed
    /// once Kafka is healthy. Off when unset. On the pod's own volume.
    #[arg(long, env = "CAPTURE_SPOOL_DIR", value_name = "PATH")]
    pub spool_dir: Option<PathBuf>,
    /// Most bytes the spool may hold; past it requests Kafka cannot take
    /// get 503 with Retry-After, as without a spool.
    #[arg(long, env = "CAPTURE_SPOOL_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub spool_max_bytes: usize,
    /// How long a request waits for Kafka's acknowledgements before the
    /// events not acknowledged go to the spool. Shorter than
    /// `--kafka-message-timeout`.
    #[arg(long, env = "CAPTURE_SPOOL_ACK_DEADLINE", default_value = "3s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub spool_ack_deadline: Duration,
    /// Most spooled events replayed to Kafka per second, so live traffic
    /// keeps priority.
    #[arg(long, env = "CAPTURE_SPOOL_REPLAY_RATE", default_value = "20000")]
    pub spool_replay_rate: NonZeroU32,
    /// Size at which a spool segment file is sealed and a new one started
    /// (replay reads a segment whole, so this bounds its memory).
    #[arg(long, env = "CAPTURE_SPOOL_SEGMENT_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub spool_segment_bytes: usize,
    /// Replay the spool to Kafka and exit once it is empty, without serving
    /// HTTP: how the operator drains the volume of a pod that is gone.
    #[arg(long, env = "CAPTURE_DRAIN_SPOOL", default_value_t = false)]
    pub drain_spool: bool,
}

/// Log output.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogConfig {
    /// Log line format.
    #[arg(long, env = "CAPTURE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` directive syntax (`info`, `capture=debug,info`).
    #[arg(long, env = "CAPTURE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

impl Config {
    /// Loads settings from `args` (the first being the program name), the
    /// environment and the `--config` file, then validates them.
    pub fn load<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let first = Config::try_parse_from(&args)?;
        let mut config = match &first.config {
            None => first,
            Some(path) => {
                let mut merged = vec![args.first().cloned().unwrap_or_else(|| "capture".into())];
                merged.extend(file_args(path)?);
                merged.extend(args.iter().skip(1).cloned());
                Config::try_parse_from(merged)?
            }
        };
        config.read_credential_files()?;
        config.validate()?;
        // The producer queue is sized with the rest of the memory.
        if config.kafka.queue_kbytes.is_none() {
            config.kafka.queue_kbytes = Some(config.memory.queue_kbytes());
        }
        Ok(config)
    }

    /// Async worker threads, resolving the default.
    pub fn worker_threads(&self) -> usize {
        self.http.worker_threads.map_or_else(
            || {
                std::thread::available_parallelism()
                    .map_or(1, |cpus| cpus.get().saturating_sub(1).max(1))
            },
            std::num::NonZeroUsize::get,
        )
    }

    /// The sink to use, resolving the default.
    pub fn sink_kind(&self) -> SinkKind {
        self.sink.kind.unwrap_or(if self.kafka.brokers.is_empty() {
            SinkKind::Stdout
        } else {
            SinkKind::Kafka
        })
    }

    /// The spool's settings, when it is on.
    pub fn spool(&self) -> Option<(crate::spool::SpoolSettings, crate::sink::SpoolingSettings)> {
        let s = &self.spool;
        let dir = s.spool_dir.clone()?;
        Some((
            crate::spool::SpoolSettings {
                dir,
                max_bytes: s.spool_max_bytes as u64,
                segment_bytes: s.spool_segment_bytes as u64,
            },
            crate::sink::SpoolingSettings {
                ack_deadline: s.spool_ack_deadline,
                replay_rate: s.spool_replay_rate.get(),
            },
        ))
    }

    /// Topic names as the router uses them.
    pub fn topics(&self) -> Topics {
        let t = &self.topics;
        Topics {
            events: t.events_topic.as_str().into(),
            recordings: t.recordings_topic.as_str().into(),
            historical: t.historical_topic.as_str().into(),
            client_warnings: t.client_warnings_topic.as_str().into(),
            exceptions: t.exceptions_topic.as_str().into(),
            overflow: t.overflow_topic.as_str().into(),
            heatmaps: t.heatmaps_topic.as_str().into(),
            dlq: t.dlq_topic.as_str().into(),
        }
    }

    /// Policy settings as the policy layer takes them.
    pub fn policy(&self) -> PolicySettings {
        let (r, p) = (&self.redis, &self.policy);
        let store = StoreSettings::from_urls(
            r.redis_url.iter().map(String::as_str),
            r.redis_cluster,
            r.redis_connect_timeout,
            r.redis_timeout,
        )
        .with_tls_ca(r.redis_ca_file.clone());
        PolicySettings {
            redis: (!store.urls.is_empty()).then(|| RedisPolicySettings {
                store,
                key_prefix: r.redis_key_prefix.clone(),
                timeout: r.redis_timeout,
                failure_mode: r.redis_failure_mode,
                quotas: p.quotas,
                quota_action: p.quota_action,
                quota_recheck: p.quota_recheck_interval,
                dedup_ttl: p.dedup.then_some(p.dedup_ttl),
                // The longest a request waits between its check and its
                // settle: the sink's deadline (message timeout and 5 s),
                // a round trip to Redis each way, and room to spare.
                hold: self.kafka.message_timeout + Duration::from_secs(10) + 2 * r.redis_timeout,
                rate_limit: p.rate_limit,
                rate_burst: p.rate_limit_burst,
                billing_prefix: (p.quotas && p.billing_limits)
                    .then(|| p.billing_limits_prefix.clone()),
                billing_refresh: p.billing_limits_refresh,
            }),
            rate_action: p.rate_limit_action,
            hot_key_rate: p.hot_key_rate,
            hot_key_burst: p.hot_key_burst.get(),
            force_overflow: p
                .force_overflow
                .iter()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
        }
    }

    /// Fills the Kafka SASL credentials and the Redis URL from their
    /// `--*-file` settings, read once here: on Kubernetes they are mounted
    /// Secret keys, so no credential travels in the environment. Setting a
    /// value and its file together is refused.
    fn read_credential_files(&mut self) -> Result<(), ConfigError> {
        let k = &mut self.kafka;
        read_credential(
            ("--kafka-sasl-username", "--kafka-sasl-username-file"),
            &mut k.sasl_username,
            k.sasl_username_file.as_deref(),
        )?;
        read_credential(
            ("--kafka-sasl-password", "--kafka-sasl-password-file"),
            &mut k.sasl_password,
            k.sasl_password_file.as_deref(),
        )?;
        let r = &mut self.redis;
        let mut url = r
            .redis_url
            .iter()
            .any(|u| !u.trim().is_empty())
            .then(|| r.redis_url.join(","));
        read_credential(
            ("--redis-url", "--redis-url-file"),
            &mut url,
            r.redis_url_file.as_deref(),
        )?;
        if r.redis_url_file.is_some() {
            r.redis_url = url
                .unwrap_or_default()
                .split(',')
                .map(|u| u.trim().to_owned())
                .collect();
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        self.validate_policy()?;
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return invalid(
                "`--tls-cert` and `--tls-key` (CAPTURE_TLS_CERT, CAPTURE_TLS_KEY) go together; set both or neither",
            );
        }
        // hyper's smallest read buffer.
        if self.http.max_header_bytes < 8192 || self.http.max_header_bytes > u32::MAX as usize {
            return invalid("`--max-header-bytes` must be between 8KiB and 4GiB");
        }
        if self.http.http2_keep_alive.is_zero() {
            return invalid("`--http2-keep-alive` must be longer than 0s");
        }
        if self.http.tls_poll.is_zero() {
            return invalid("`--tls-poll` must be longer than 0s");
        }
        if self.spool.spool_dir.is_some() || self.spool.drain_spool {
            if self.spool.spool_dir.is_none() {
                return invalid("`--drain-spool` needs `--spool-dir` (CAPTURE_SPOOL_DIR)");
            }
            if self.spool.spool_ack_deadline.is_zero()
                || self.spool.spool_ack_deadline >= self.kafka.message_timeout
            {
                return invalid(
                    "`--spool-ack-deadline` must be longer than 0s and shorter than `--kafka-message-timeout`",
                );
            }
            if self.spool.spool_segment_bytes < 64 << 10
                || self.spool.spool_max_bytes < self.spool.spool_segment_bytes
            {
                return invalid(
                    "`--spool-segment-bytes` must be at least 64KiB and at most `--spool-max-bytes`",
                );
            }
        }
        match self.sink_kind() {
            SinkKind::Kafka if self.kafka.brokers.iter().all(|b| b.trim().is_empty()) => {
                return invalid("`--sink kafka` needs `--kafka-brokers` (CAPTURE_KAFKA_BROKERS)");
            }
            SinkKind::File if self.sink.sink_file.is_none() => {
                return invalid("`--sink file` needs `--sink-file` (CAPTURE_SINK_FILE)");
            }
            _ => {}
        }
        let sasl = matches!(
            self.kafka.security_protocol,
            KafkaSecurityProtocol::SaslPlaintext | KafkaSecurityProtocol::SaslSsl
        );
        let credentials = [
            self.kafka.sasl_mechanism.is_some(),
            self.kafka.sasl_username.is_some(),
            self.kafka.sasl_password.is_some(),
        ];
        if sasl && !credentials.iter().all(|set| *set) {
            return invalid(
                "a `sasl-*` `--kafka-security-protocol` needs `--kafka-sasl-mechanism`, \
                 `--kafka-sasl-username` (or `--kafka-sasl-username-file`) and \
                 `--kafka-sasl-password-file` (or CAPTURE_KAFKA_SASL_PASSWORD)",
            );
        }
        if !sasl && credentials.iter().any(|set| *set) {
            return invalid(
                "SASL settings need `--kafka-security-protocol sasl-ssl` (or `sasl-plaintext`)",
            );
        }
        if self.kafka.idempotence && self.kafka.acks != Acks::All {
            return invalid(
                "`--kafka-idempotence true` requires `--kafka-acks all`; set one or the other",
            );
        }
        for topic in self.topics().all() {
            if topic.is_empty()
                || topic.len() > 249
                || !topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(ConfigError::Invalid(format!(
                    "topic name {topic:?} is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-])"
                )));
            }
        }
        let l = &self.limits;
        for (flag, body) in [
            ("--max-event-body-bytes", l.max_event_body_bytes),
            ("--max-batch-body-bytes", l.max_batch_body_bytes),
            ("--max-recording-body-bytes", l.max_recording_body_bytes),
        ] {
            if l.max_decompressed_bytes < body {
                return Err(ConfigError::Invalid(format!(
                    "`--max-decompressed-bytes` ({}) must be at least `{flag}` ({body}): \
                     an uncompressed body counts against both",
                    l.max_decompressed_bytes
                )));
            }
        }
        if l.max_v1_decompressed_bytes < l.max_v1_body_bytes {
            return Err(ConfigError::Invalid(format!(
                "`--max-v1-decompressed-bytes` ({}) must be at least `--max-v1-body-bytes` ({})",
                l.max_v1_decompressed_bytes, l.max_v1_body_bytes
            )));
        }
        if l.max_message_bytes == 0 || l.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(ConfigError::Invalid(format!(
                "`--max-message-bytes` must be between 1 and {MAX_MESSAGE_BYTES}"
            )));
        }
        if self.memory.request_budget() < 1 << 20 {
            return Err(ConfigError::Invalid(
                "`--request-memory-budget` (or 30% of `--memory-limit`) must be at least 1MiB"
                    .to_owned(),
            ));
        }
        // librdkafka keeps these in signed 32-bit integers.
        for (flag, value) in [
            ("--kafka-queue-messages", self.kafka.queue_messages.get()),
            (
                "--kafka-queue-kbytes",
                self.kafka.queue_kbytes.map_or(0, NonZeroU32::get),
            ),
        ] {
            if value > i32::MAX as u32 {
                return Err(ConfigError::Invalid(format!(
                    "`{flag}` must be at most {}",
                    i32::MAX
                )));
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_policy(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let p = &self.policy;
        let has_redis = self.redis.redis_url.iter().any(|u| !u.trim().is_empty());
        for url in &self.redis.redis_url {
            let url = url.trim();
            if !url.is_empty() && !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return invalid(format!(
                    "`--redis-url` {:?} must start with redis:// or rediss://",
                    crate::policy::store::redacted(url)
                ));
            }
        }
        if let Some(ca) = &self.redis.redis_ca_file {
            if !self
                .redis
                .redis_url
                .iter()
                .any(|u| u.trim().starts_with("rediss://"))
            {
                return invalid(
                    "`--redis-ca-file` (CAPTURE_REDIS_CA_FILE) applies to rediss:// URLs; `--redis-url` has none"
                        .into(),
                );
            }
            let pem = std::fs::read_to_string(ca).map_err(|err| {
                ConfigError::Invalid(format!(
                    "`--redis-ca-file` {}: cannot read it: {err}",
                    ca.display()
                ))
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return invalid(format!(
                    "`--redis-ca-file` {}: no PEM certificate in it",
                    ca.display()
                ));
            }
        }
        if let Err(reason) = crate::policy::Keys::new(&self.redis.redis_key_prefix) {
            return invalid(format!("`--redis-key-prefix`: {reason}"));
        }
        for (flag, rate) in [
            ("--rate-limit", p.rate_limit),
            ("--hot-key-rate", p.hot_key_rate),
        ] {
            if !rate.is_finite() || rate < 0.0 {
                return invalid(format!(
                    "`{flag}` must be a number of events per second >= 0"
                ));
            }
        }
        if p.rate_limit_burst == 0 {
            return invalid("`--rate-limit-burst` must be at least 1".into());
        }
        if self.redis.redis_timeout.is_zero() {
            return invalid("`--redis-timeout` must be more than 0".into());
        }
        if p.dedup && p.dedup_ttl < Duration::from_secs(1) {
            return invalid("`--dedup-ttl` must be at least 1s".into());
        }
        if !has_redis && (p.dedup || p.rate_limit > 0.0) {
            return invalid(
                "`--dedup` and `--rate-limit` keep their state in Redis: set `--redis-url` (CAPTURE_REDIS_URL)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Turns a YAML settings file into `--flag=value` arguments, skipping keys
/// whose environment variable is set (the environment beats the file).
fn file_args(path: &PathBuf) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let file_error = |reason: String| ConfigError::File {
        path: path.clone(),
        reason,
    };
    let mapping: serde_yaml::Mapping =
        match serde_yaml::from_str::<Option<serde_yaml::Mapping>>(&text) {
            Ok(mapping) => mapping.unwrap_or_default(),
            Err(err) => return Err(file_error(format!("not a YAML mapping of settings: {err}"))),
        };
    let command = Config::command();
    let known: Vec<_> = command
        .get_arguments()
        .filter(|a| {
            a.get_long()
                .is_some_and(|l| l != "config" && l != "help" && l != "version")
        })
        .collect();
    let mut out = Vec::new();
    for (key, value) in mapping {
        let key = key
            .as_str()
            .ok_or_else(|| file_error("keys must be strings".into()))?;
        let long = key.replace('_', "-");
        let Some(arg) = known.iter().find(|a| a.get_long() == Some(long.as_str())) else {
            let names: Vec<_> = known.iter().filter_map(|a| a.get_long()).collect();
            return Err(file_error(format!(
                "unknown setting `{key}`; known settings: {}",
                names.join(", ")
            )));
        };
        if arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
        {
            continue;
        }
        let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let text = match value {
            serde_yaml::Value::String(s) => s,
            serde_yaml::Value::Bool(b) if is_switch => {
                if b {
                    out.push(OsString::from(format!("--{long}")));
                }
                continue;
            }
            serde_yaml::Value::Bool(b) => b.to_string(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Sequence(items) => items
                .iter()
                .map(|i| match i {
                    serde_yaml::Value::String(s) => Ok(s.clone()),
                    serde_yaml::Value::Number(n) => Ok(n.to_string()),
                    _ => Err(file_error(format!("`{key}`: list items must be strings"))),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            _ => {
                return Err(file_error(format!(
                    "`{key}` must be a string, number, boolean or list"
                )));
            }
        };
        if is_switch {
            return Err(file_error(format!(
                "`{key}` is a switch: use true or false"
            )));
        }
        out.push(OsString::from(format!("--{long}={text}")));
    }
    Ok(out)
}

/// Parses a byte size: `1048576`, `512KB`, `2MB`, `1MiB`, `1GB`.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1048576, 512KB or 2MB"))?;
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "kib" => 1 << 10,
        "mb" | "m" => 1_000_000,
        "mib" => 1 << 20,
        "gb" | "g" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}; use B, KB, KiB, MB, MiB, GB or GiB"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        Config::load(std::iter::once("capture").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_run_on_stdout_without_kafka() {
        let config = load(&[]).expect("defaults are valid");
        assert_eq!(config.http.address.to_string(), "127.0.0.1:3000");
        assert_eq!(config.sink_kind(), SinkKind::Stdout);
        assert_eq!(config.limits.max_event_body_bytes, 2_000_000);
        assert_eq!(config.limits.max_batch_body_bytes, 20_000_000);
        assert_eq!(config.limits.max_recording_body_bytes, 25_000_000);
        assert_eq!(&*config.topics().events, "clickhouse_events");
        let with_brokers = load(&["--kafka-brokers", "a:9092,b:9092"]).expect("valid");
        assert_eq!(with_brokers.sink_kind(), SinkKind::Kafka);
        assert_eq!(with_brokers.kafka.brokers, ["a:9092", "b:9092"]);
    }

    #[test]
    fn conflicting_settings_say_what_to_do() {
        let err = load(&["--sink", "kafka"]).expect_err("no brokers");
        assert!(err.to_string().contains("--kafka-brokers"), "{err}");
        let err = load(&["--kafka-acks", "1"]).expect_err("idempotence needs acks=all");
        assert!(err.to_string().contains("--kafka-acks all"), "{err}");
        let err = load(&["--max-decompressed-bytes", "10MB"]).expect_err("below batch body");
        assert!(err.to_string().contains("--max-batch-body-bytes"), "{err}");
        let err = load(&["--max-message-bytes", "2GB"]).expect_err("above librdkafka's cap");
        assert!(err.to_string().contains("--max-message-bytes"), "{err}");
        let err = load(&["--kafka-queue-messages", "3000000000"]).expect_err("above i32");
        assert!(err.to_string().contains("--kafka-queue-messages"), "{err}");
        let err = load(&["--events-topic", "bad topic"]).expect_err("bad name");
        assert!(err.to_string().contains("bad topic"), "{err}");
        load(&["--kafka-acks", "1", "--kafka-idempotence", "false"]).expect("consistent");
    }

    #[test]
    fn spool_settings_are_checked_against_each_other_and_named() {
        assert!(
            load(&[]).expect("valid").spool().is_none(),
            "off by default"
        );
        let (spool, spooling) = load(&["--spool-dir", "/var/spool/capture"])
            .expect("valid")
            .spool()
            .expect("on");
        assert_eq!(spool.max_bytes, 1 << 30);
        assert_eq!(spool.segment_bytes, 16 << 20);
        assert_eq!(spooling.ack_deadline, Duration::from_secs(3));
        let err = load(&["--drain-spool"]).expect_err("nothing to drain");
        assert!(
            err.to_string()
                .contains("`--drain-spool` needs `--spool-dir`"),
            "{err}"
        );
        let err = load(&["--spool-dir", "/s", "--spool-ack-deadline", "20s"])
            .expect_err("not shorter than the message timeout");
        assert!(err.to_string().contains("--kafka-message-timeout"), "{err}");
        let err = load(&["--spool-dir", "/s", "--spool-max-bytes", "1MiB"])
            .expect_err("smaller than a segment");
        assert!(err.to_string().contains("--spool-segment-bytes"), "{err}");
        let err = load(&["--spool-dir", "/s", "--spool-replay-rate", "0"]).expect_err("zero");
        assert!(err.to_string().contains("--spool-replay-rate"), "{err}");
    }

    #[test]
    fn sasl_needs_its_protocol_and_all_three_settings() {
        let err = load(&[
            "--kafka-security-protocol",
            "sasl-ssl",
            "--kafka-sasl-mechanism",
            "PLAIN",
        ])
        .expect_err("no user or password");
        assert!(
            err.to_string().contains("CAPTURE_KAFKA_SASL_PASSWORD"),
            "{err}"
        );
        let err = load(&["--kafka-sasl-username", "u"]).expect_err("no sasl protocol");
        assert!(err.to_string().contains("sasl-ssl"), "{err}");
        let config = load(&[
            "--kafka-security-protocol",
            "sasl-ssl",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            "capture",
            "--kafka-sasl-password",
            "s3cret",
        ])
        .expect("complete");
        let client = crate::sink::kafka::client_config(&config.kafka, 1 << 20);
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("sasl.username"), Some("capture"));
        // librdkafka was built with TLS and SCRAM: the producer can be made
        // (it connects lazily, so no broker is needed).
        let producer: Result<rdkafka::producer::FutureProducer, _> = client.create();
        if let Err(err) = producer {
            panic!("a SASL_SSL producer cannot be created: {err}");
        }
    }

    /// A file holding `content`, as a mounted Secret key would.
    fn secret_file(content: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(content.as_bytes()).expect("write");
        file
    }

    #[test]
    fn credentials_are_read_from_files_without_their_trailing_newline() {
        let user = secret_file("capture\n");
        let password = secret_file("s3cr3t pass\r\n");
        let redis = secret_file("redis://:pw@redis-0:6379,redis://:pw@redis-1:6379\n");
        let config = load(&[
            "--kafka-brokers",
            "k:9092",
            "--kafka-security-protocol",
            "sasl-ssl",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username-file",
            user.path().to_str().expect("utf-8"),
            "--kafka-sasl-password-file",
            password.path().to_str().expect("utf-8"),
            "--redis-url-file",
            redis.path().to_str().expect("utf-8"),
            "--redis-cluster",
        ])
        .expect("valid");
        assert_eq!(config.kafka.sasl_username.as_deref(), Some("capture"));
        assert_eq!(config.kafka.sasl_password.as_deref(), Some("s3cr3t pass"));
        assert_eq!(
            config.redis.redis_url,
            ["redis://:pw@redis-0:6379", "redis://:pw@redis-1:6379"]
        );
        assert_eq!(config.policy().redis.expect("redis").store.urls.len(), 2);
    }

    #[test]
    fn a_credential_and_its_file_together_are_refused_by_name() {
        let file = secret_file("x");
        let path = file.path().to_str().expect("utf-8");
        for (args, flags) in [
            (
                vec![
                    "--kafka-sasl-password",
                    "p",
                    "--kafka-sasl-password-file",
                    path,
                ],
                "`--kafka-sasl-password` and `--kafka-sasl-password-file`",
            ),
            (
                vec![
                    "--kafka-sasl-username",
                    "u",
                    "--kafka-sasl-username-file",
                    path,
                ],
                "`--kafka-sasl-username` and `--kafka-sasl-username-file`",
            ),
            (
                vec!["--redis-url", "redis://r:6379", "--redis-url-file", path],
                "`--redis-url` and `--redis-url-file`",
            ),
        ] {
            let err = load(&args).expect_err("both set").to_string();
            assert!(err.contains(flags), "{args:?}: {err}");
        }
    }

    #[test]
    fn an_unreadable_credential_file_names_the_flag_and_the_path_not_a_value() {
        let missing = std::env::temp_dir().join(format!(
            "capture-no-such-secret-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let missing = missing.to_str().expect("utf-8");
        for flag in [
            "--kafka-sasl-username-file",
            "--kafka-sasl-password-file",
            "--redis-url-file",
        ] {
            let err = load(&[flag, missing]).expect_err("missing file");
            assert!(
                matches!(err, ConfigError::CredentialFile { .. }),
                "{flag}: {err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains(flag) && text.contains(missing),
                "{flag}: {text}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_flag_and_the_allowed_values() {
        let err = load(&["--kafka-compression", "brotli"])
            .expect_err("unknown codec")
            .to_string();
        assert!(
            err.contains("--kafka-compression") && err.contains("lz4"),
            "{err}"
        );
        let err = load(&["--max-batch-body-bytes", "lots"])
            .expect_err("bad size")
            .to_string();
        assert!(err.contains("--max-batch-body-bytes"), "{err}");
    }

    #[test]
    fn the_yaml_file_is_read_and_flags_override_it() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(
            file,
            "address: 0.0.0.0:8000\nkafka_brokers: [k1:9092, k2:9092]\nevents-topic: from_file\nensure-topics: true\nmax-batch-body-bytes: 5MiB"
        )
        .expect("write");
        let path = file.path().to_str().expect("utf-8 path");
        let config = load(&["--config", path, "--events-topic", "from_flag"]).expect("valid");
        assert_eq!(config.http.address.to_string(), "0.0.0.0:8000");
        assert_eq!(config.kafka.brokers, ["k1:9092", "k2:9092"]);
        assert_eq!(config.topics.events_topic, "from_flag");
        // A list from a flag replaces the file's list.
        let config = load(&["--config", path, "--kafka-brokers", "k3:9092"]).expect("valid");
        assert_eq!(config.kafka.brokers, ["k3:9092"]);
        assert!(config.kafka.ensure_topics);
        assert_eq!(config.limits.max_batch_body_bytes, 5 << 20);
    }

    #[test]
    fn unknown_keys_in_the_yaml_file_are_named() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "adress: 0.0.0.0:8000").expect("write");
        let path = file.path().to_str().expect("utf-8 path");
        let err = load(&["--config", path]).expect_err("typo").to_string();
        assert!(
            err.contains("unknown setting `adress`") && err.contains("address"),
            "{err}"
        );
    }

    #[test]
    fn worker_threads_default_to_one_less_than_the_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(
            load(&[]).expect("valid").worker_threads(),
            (cpus - 1).max(1)
        );
        let config = load(&["--worker-threads", "3"]).expect("valid");
        assert_eq!(config.worker_threads(), 3);
        let err = load(&["--worker-threads", "0"])
            .expect_err("zero")
            .to_string();
        assert!(err.contains("--worker-threads"), "{err}");
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1_048_576));
        assert_eq!(parse_bytes("512KB"), Ok(512_000));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert!(parse_bytes("1 parsec").is_err());
    }
}
