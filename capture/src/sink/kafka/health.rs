//! What the Kafka sink knows about its own health beyond "brokers answer":
//! a fatal producer error (being recovered from), and topics Kafka refuses
//! (unknown, or not authorised). Readiness reports each with its reason,
//! and metrics count them.
//!
//! A fatal error is one librdkafka cannot recover from (an idempotent
//! producer that lost its sequence with the broker): every later produce
//! fails. Deliveries that keep failing for the producer's own state
//! (fenced, epoch or sequence refused) for [`STATE_REFUSED_REBUILD`] are
//! treated the same way. The sink answers it by building a new producer in the same
//! process (see [`super::KafkaSink`]); the process keeps its HTTP server,
//! Redis connections and runtime config, and the pod does not restart.
//!
//! A topic fault is set by a delivery report that names the topic as
//! unknown or forbidden, or by the health check when a topic whose
//! messages timed out is missing from the broker's metadata (librdkafka
//! holds messages for a topic it has not seen until they time out, so a
//! missing topic mostly shows as timeouts). It is cleared by the next successful delivery to it,
//! by broker metadata that lists it again (unknown topics), or, for
//! authorisation, after [`AUTH_RETRY`] so a fixed ACL is tried again even
//! while the pod takes no traffic.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;

use crate::metrics as m;

/// How long a pod stays unready for a topic it may not write before trying
/// again.
pub const AUTH_RETRY: Duration = Duration::from_secs(30);

/// How long every delivery may fail for the producer's own state (fenced,
/// epoch or sequence refused) before the producer is replaced. librdkafka
/// recovers from these by itself against Kafka; a broker that keeps
/// refusing them (tansu 0.6 fences every epoch bump) would otherwise leave
/// a pod that looks ready and answers 503 to everything.
pub const STATE_REFUSED_REBUILD: Duration = Duration::from_secs(10);

/// Whether a delivery error says the broker refuses the producer's
/// idempotence state rather than the message.
pub fn refuses_producer_state(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::InvalidProducerIdMapping
    )
}

/// Why Kafka refuses a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicFault {
    /// The topic does not exist.
    Unknown,
    /// The client may not write to it (topic or cluster ACL).
    NotAuthorized,
}

impl TopicFault {
    /// The fault a delivery error code means, if any.
    pub fn from_code(code: RDKafkaErrorCode) -> Option<Self> {
        match code {
            RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition => {
                Some(TopicFault::Unknown)
            }
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed => Some(TopicFault::NotAuthorized),
            _ => None,
        }
    }

    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            TopicFault::Unknown => "unknown_topic",
            TopicFault::NotAuthorized => "not_authorized",
        }
    }
}

/// The sink's health, shared by the producer's callbacks (on librdkafka's
/// polling thread), the health check task and readiness.
#[derive(Debug, Default)]
pub struct SinkHealth {
    /// The last metadata request was answered.
    pub reachable: AtomicBool,
    /// The fatal error being recovered from, while it is.
    fatal: Mutex<Option<String>>,
    /// Topics Kafka refuses, with why and since when.
    topics: Mutex<HashMap<String, (TopicFault, Instant)>>,
    /// Whether `topics` may hold entries (so deliveries skip the lock).
    any_topic_fault: AtomicBool,
    /// Topics whose messages failed for no stated reason, for the health
    /// check to look up in the broker's metadata.
    suspects: Mutex<HashSet<String>>,
    /// Whether `suspects` may hold entries.
    any_suspect: AtomicBool,
    /// Since when, and why, every delivery failed for the producer's own
    /// state (cleared by any successful delivery).
    state_refused: Mutex<Option<(Instant, RDKafkaErrorCode)>>,
    /// Whether `state_refused` may be set.
    any_state_refused: AtomicBool,
    /// Wakes the health check at once (a fatal error was reported).
    pub wake: tokio::sync::Notify,
}

impl SinkHealth {
    /// Records that Kafka refused `topic`.
    pub fn topic_failed(&self, topic: &str, fault: TopicFault) {
        metrics::counter!(m::KAFKA_TOPIC_ERRORS, "error" => fault.label()).increment(1);
        let mut topics = self.lock_topics();
        if topics
            .insert(topic.to_owned(), (fault, Instant::now()))
            .is_none()
        {
            tracing::error!(
                topic,
                error = fault.label(),
                "kafka refuses a topic; not ready until it takes writes"
            );
        }
        self.any_topic_fault.store(true, Ordering::Relaxed);
        metrics::gauge!(m::KAFKA_TOPICS_FAILING).set(topics.len() as f64);
    }

    /// Records that messages to `topic` failed without saying why (timed
    /// out): the health check looks the topic up, woken now.
    pub fn topic_suspect(&self, topic: &str) {
        let mut suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        if suspects.insert(topic.to_owned()) {
            self.any_suspect.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Whether the health check should read the topics in the metadata.
    pub fn wants_topics(&self) -> bool {
        self.any_topic_fault.load(Ordering::Relaxed) || self.any_suspect.load(Ordering::Relaxed)
    }

    /// Judges the suspect topics by the broker's metadata: one it does not
    /// list is unknown.
    pub fn judge_suspects(&self, exists: impl Fn(&str) -> bool) {
        if !self.any_suspect.swap(false, Ordering::Relaxed) {
            return;
        }
        let suspects =
            std::mem::take(&mut *self.suspects.lock().unwrap_or_else(|e| e.into_inner()));
        for topic in suspects {
            if !exists(&topic) {
                self.topic_failed(&topic, TopicFault::Unknown);
            }
        }
    }

    /// Records a delivery refused for the producer's own state.
    pub fn producer_state_refused(&self, code: RDKafkaErrorCode) {
        let mut refused = self.state_refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.is_none() {
            *refused = Some((Instant::now(), code));
            self.any_state_refused.store(true, Ordering::Relaxed);
        }
    }

    /// The refusal, when deliveries have failed for the producer's state
    /// for at least `at_least`.
    pub fn state_refused_for(&self, at_least: Duration) -> Option<RDKafkaErrorCode> {
        if !self.any_state_refused.load(Ordering::Relaxed) {
            return None;
        }
        let refused = self.state_refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.and_then(|(since, code)| (since.elapsed() >= at_least).then_some(code))
    }

    /// Forgets a refusal (a new producer starts clean).
    pub fn clear_state_refused(&self) {
        if self.any_state_refused.swap(false, Ordering::Relaxed) {
            *self.state_refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Records a delivery to `topic`: whatever was wrong with it is not.
    pub fn topic_delivered(&self, topic: &str) {
        self.clear_state_refused();
        if self.any_topic_fault.load(Ordering::Relaxed) {
            self.clear_topics(|name, _, _| name == topic);
        }
    }

    /// Clears the faults of topics `exists` says exist, and authorisation
    /// faults older than [`AUTH_RETRY`].
    pub fn recheck_topics(&self, exists: impl Fn(&str) -> bool) {
        if self.any_topic_fault.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.clear_topics(|name, fault, since| match fault {
                TopicFault::Unknown => exists(name),
                TopicFault::NotAuthorized => now.duration_since(since) >= AUTH_RETRY,
            });
        }
    }

    /// Whether any topic is refused.
    pub fn any_topic_fault(&self) -> bool {
        self.any_topic_fault.load(Ordering::Relaxed)
    }

    fn clear_topics(&self, clear: impl Fn(&str, TopicFault, Instant) -> bool) {
        let mut topics = self.lock_topics();
        topics.retain(|name, (fault, since)| {
            let cleared = clear(name, *fault, *since);
            if cleared {
                tracing::info!(topic = %name, "kafka takes writes to the topic again");
            }
            !cleared
        });
        if topics.is_empty() {
            self.any_topic_fault.store(false, Ordering::Relaxed);
        }
        metrics::gauge!(m::KAFKA_TOPICS_FAILING).set(topics.len() as f64);
    }

    fn lock_topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, (TopicFault, Instant)>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (`Some`) or clears the fatal error being recovered from.
    pub fn set_fatal(&self, reason: Option<String>) {
        *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// Why the sink should not take traffic, if it should not.
    pub fn problem(&self) -> Option<String> {
        if let Some(reason) = &*self.fatal.lock().unwrap_or_else(|e| e.into_inner()) {
            return Some(format!(
                "kafka producer hit a fatal error and is being rebuilt: {reason}"
            ));
        }
        if !self.reachable.load(Ordering::Relaxed) {
            return Some("kafka brokers unreachable".into());
        }
        if let Some(code) = self.state_refused_for(Duration::ZERO) {
            return Some(format!(
                "kafka refuses the producer's state ({code}); replaced if it lasts"
            ));
        }
        if self.any_topic_fault() {
            let topics = self.lock_topics();
            let mut faults: Vec<String> = topics
                .iter()
                .map(|(name, (fault, _))| format!("{name} ({})", fault.label()))
                .collect();
            faults.sort();
            if !faults.is_empty() {
                return Some(format!("kafka refuses topics: {}", faults.join(", ")));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> SinkHealth {
        let health = SinkHealth::default();
        health.reachable.store(true, Ordering::Relaxed);
        health
    }

    #[test]
    fn a_refused_topic_makes_the_sink_unready_until_a_delivery_to_it() {
        let health = ready();
        assert_eq!(health.problem(), None);
        health.topic_failed("events", TopicFault::Unknown);
        health.topic_failed("exceptions", TopicFault::NotAuthorized);
        assert_eq!(
            health.problem().as_deref(),
            Some("kafka refuses topics: events (unknown_topic), exceptions (not_authorized)")
        );
        health.topic_delivered("other");
        health.topic_delivered("exceptions");
        assert_eq!(
            health.problem().as_deref(),
            Some("kafka refuses topics: events (unknown_topic)")
        );
        health.recheck_topics(|name| name == "events");
        assert_eq!(health.problem(), None);
        assert!(!health.any_topic_fault());
    }

    #[test]
    fn a_timed_out_topic_missing_from_metadata_is_unknown() {
        let health = ready();
        health.topic_suspect("events");
        health.topic_suspect("slow");
        assert!(health.wants_topics());
        assert_eq!(health.problem(), None, "a timeout alone proves nothing");
        health.judge_suspects(|name| name == "slow");
        assert_eq!(
            health.problem().as_deref(),
            Some("kafka refuses topics: events (unknown_topic)")
        );
        health.recheck_topics(|_| true);
        assert!(!health.wants_topics());
    }

    #[test]
    fn metadata_clears_unknown_topics_but_not_forbidden_ones() {
        let health = ready();
        health.topic_failed("events", TopicFault::NotAuthorized);
        health.recheck_topics(|_| true);
        assert!(health.any_topic_fault(), "an ACL is not fixed by existing");
    }

    #[test]
    fn a_fatal_error_is_reported_first_until_cleared() {
        let health = ready();
        health.topic_failed("events", TopicFault::Unknown);
        health.set_fatal(Some("sequence desynchronization".into()));
        assert!(
            health
                .problem()
                .expect("unready")
                .starts_with("kafka producer hit a fatal error")
        );
        health.set_fatal(None);
        assert!(
            health
                .problem()
                .expect("unready")
                .starts_with("kafka refuses topics")
        );
    }

    #[test]
    fn a_refused_producer_state_is_unready_until_a_delivery() {
        let health = ready();
        health.producer_state_refused(RDKafkaErrorCode::ProducerFenced);
        assert!(
            health
                .problem()
                .expect("unready")
                .contains("producer's state")
        );
        assert_eq!(
            health.state_refused_for(Duration::ZERO),
            Some(RDKafkaErrorCode::ProducerFenced)
        );
        assert_eq!(health.state_refused_for(Duration::from_secs(60)), None);
        health.topic_delivered("events");
        assert_eq!(health.problem(), None);
        assert!(refuses_producer_state(
            RDKafkaErrorCode::InvalidProducerEpoch
        ));
        assert!(!refuses_producer_state(RDKafkaErrorCode::MessageTimedOut));
    }

    #[test]
    fn only_topic_errors_are_topic_faults() {
        assert_eq!(
            TopicFault::from_code(RDKafkaErrorCode::UnknownTopicOrPartition),
            Some(TopicFault::Unknown)
        );
        assert_eq!(
            TopicFault::from_code(RDKafkaErrorCode::TopicAuthorizationFailed),
            Some(TopicFault::NotAuthorized)
        );
        assert_eq!(
            TopicFault::from_code(RDKafkaErrorCode::MessageTimedOut),
            None
        );
    }
}
