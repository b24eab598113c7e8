//! Where accepted events go. Sinks are capture's storage plugins: Kafka for
//! production, JSON lines on stdout or in a file for trying capture out and
//! for local pipelines, `noop` for load tests of the HTTP path, and an
//! in-memory sink for tests.
//!
//! A sink's `send` returns once it knows, for every message of the call,
//! whether it was acknowledged: the [`Delivery`] says which were, so the
//! request commits its policy effects for exactly those (see
//! [`crate::verdict`]) and answers 200 only when all were.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::route::DataType;

mod jsonl;
pub mod kafka;
mod memory;
mod noop;
pub mod spool;

pub use jsonl::JsonLinesSink;
pub use memory::MemorySink;
pub use noop::NoopSink;
pub use spool::{SpoolingSettings, SpoolingSink};

/// One message to produce. A sink takes a request's messages behind an
/// `Arc`, so a spooling sink can keep them while Kafka has them too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What kind of data it is (for metrics).
    pub kind: DataType,
    /// Destination topic.
    pub topic: Arc<str>,
    /// Partition key; `None` lets the producer spread messages.
    pub key: Option<String>,
    /// Kafka headers.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON value.
    pub payload: String,
}

/// Why a sink did not acknowledge messages.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The producer's local queue is full: back off.
    #[error("producer queue is full")]
    QueueFull,
    /// No acknowledgement arrived in time.
    #[error("timed out waiting for acknowledgement")]
    Timeout,
    /// A message exceeds what the broker accepts.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// Size of the message in bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The broker or client reported an error.
    #[error("kafka error: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// Writing to a file or stdout failed.
    #[error("write failed: {0}")]
    Io(#[source] std::io::Error),
}

impl SinkError {
    /// Bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            SinkError::QueueFull => "queue_full",
            SinkError::Timeout => "timeout",
            SinkError::MessageTooLarge { .. } => "too_large",
            SinkError::Kafka(_) => "kafka",
            SinkError::Io(_) => "io",
        }
    }
}

/// What a sink did with the messages of one `send`.
#[derive(Debug)]
pub struct Delivery {
    /// Per message, in the order given, whether it was acknowledged.
    pub acked: Vec<bool>,
    /// The first failure, when any message was not acknowledged.
    pub error: Option<SinkError>,
}

impl Delivery {
    /// All `count` messages acknowledged.
    pub fn all(count: usize) -> Self {
        Delivery {
            acked: vec![true; count],
            error: None,
        }
    }

    /// None of `count` messages acknowledged, for `error`.
    pub fn none(count: usize, error: SinkError) -> Self {
        Delivery {
            acked: vec![false; count],
            error: Some(error),
        }
    }

    /// Whether every message was acknowledged.
    pub fn is_complete(&self) -> bool {
        self.error.is_none() && self.acked.iter().all(|acked| *acked)
    }

    /// `Ok` when every message was acknowledged, else the first failure.
    pub fn into_result(self) -> Result<(), SinkError> {
        match self.error {
            None if self.acked.iter().all(|acked| *acked) => Ok(()),
            None => Err(SinkError::Timeout),
            Some(err) => Err(err),
        }
    }
}

/// Whether the sink can take traffic, and if not why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Ready for traffic.
    Ready,
    /// Ready for traffic, with Kafka's share going to (or coming back from)
    /// the durable spool, as the note says.
    Spooling(String),
    /// Not ready, with a reason for the readiness endpoint.
    NotReady(String),
}

/// A destination for captured events.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Short name for logs and metric labels.
    fn name(&self) -> &'static str;

    /// Produces every message and returns once each is acknowledged or
    /// known to have failed (or its deadline passed, which counts as not
    /// acknowledged).
    async fn send(&self, messages: Arc<Vec<Message>>) -> Delivery;

    /// Whether the sink is reachable.
    fn health(&self) -> Health {
        Health::Ready
    }

    /// Gives up on every message not acknowledged yet: the requests waiting
    /// for them hear at once that they were not (and answer 503). For a
    /// shutdown whose drain deadline is near.
    fn abandon(&self) {}

    /// Records waiting in a durable spool for Kafka (0 without one).
    fn spooled(&self) -> u64 {
        0
    }

    /// Delivers anything still buffered, waiting at most `timeout`.
    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let _ = timeout;
        Ok(())
    }
}
