//! Ingestion warnings capture writes itself: when it drops or limits a
//! project's events (over quota, rate limited, restricted, too big,
//! invalid), a PostHog-shaped `$$client_ingestion_warning` event goes to
//! the client-warnings topic, so the project's owners can see why data is
//! missing. PostHog's ingestion reads them from that topic as it reads the
//! ones SDKs send.
//!
//! At most one per token and kind per `--ingestion-warnings-interval` in
//! each process (the first occurrence, with its details), produced on a
//! task of its own: a warning never delays or fails the request it is
//! about.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::event::CapturedEvent;
use crate::metrics as m;
use crate::route::DataType;
use crate::sink::Sink;
use crate::timestamp;

/// The event name PostHog gives ingestion warnings.
pub const EVENT: &str = "$$client_ingestion_warning";

/// Most (token, kind) pairs remembered; past it, expired ones are forgotten
/// and, if none has expired, the warning is not written.
const MAX_REMEMBERED: usize = 100_000;

/// Writes ingestion warnings, rate limited per token and kind.
pub struct Warnings {
    sink: Option<Arc<dyn Sink>>,
    interval: Duration,
    last: Mutex<HashMap<(String, &'static str), Instant>>,
}

impl std::fmt::Debug for Warnings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warnings")
            .field("on", &self.sink.is_some())
            .field("interval", &self.interval)
            .finish()
    }
}

impl Warnings {
    /// Warnings produced to `sink`, at most one per token and kind every
    /// `interval` (zero: none at all).
    pub fn new(sink: Arc<dyn Sink>, interval: Duration) -> Self {
        Warnings {
            sink: (!interval.is_zero()).then_some(sink),
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// No warnings.
    pub fn off() -> Self {
        Warnings {
            sink: None,
            interval: Duration::ZERO,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// No warnings, shared (for contexts built without a server).
    pub fn none() -> &'static Warnings {
        static OFF: std::sync::LazyLock<Warnings> = std::sync::LazyLock::new(Warnings::off);
        &OFF
    }

    /// Whether this token and kind may have a warning now; remembers that
    /// it had one.
    fn admit(&self, token: &str, kind: &'static str) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = last.get(&(token.to_owned(), kind))
            && now.duration_since(*at) < self.interval
        {
            return false;
        }
        if last.len() >= MAX_REMEMBERED {
            last.retain(|_, at| now.duration_since(*at) < self.interval);
            if last.len() >= MAX_REMEMBERED {
                return false;
            }
        }
        last.insert((token.to_owned(), kind), now);
        true
    }

    /// Writes a warning of `kind` for `token`, with `details`, to `topic`,
    /// unless one was written within the interval.
    pub fn warn(
        &self,
        token: &str,
        kind: &'static str,
        details: Value,
        topic: &Arc<str>,
        now: DateTime<Utc>,
    ) {
        let Some(sink) = &self.sink else {
            return;
        };
        if !self.admit(token, kind) {
            return;
        }
        let message = message(token, kind, details, Arc::clone(topic), now);
        let sink = Arc::clone(sink);
        metrics::counter!(m::INGESTION_WARNINGS, "kind" => kind).increment(1);
        tokio::spawn(async move {
            let delivery = sink.send(Arc::new(vec![message])).await;
            if let Err(err) = delivery.into_result() {
                metrics::counter!(m::INGESTION_WARNINGS_FAILED).increment(1);
                tracing::debug!(error = %err, kind, "ingestion warning not produced");
            }
        });
    }
}

/// The warning's message: a `$$client_ingestion_warning` event of the
/// token, as PostHog's capture writes them (its distinct id is the token;
/// its properties say the type, that capture is the source, and the
/// details), keyed by the token.
pub fn message(
    token: &str,
    kind: &str,
    details: Value,
    topic: Arc<str>,
    now: DateTime<Utc>,
) -> crate::sink::Message {
    let uuid = uuid::Uuid::now_v7();
    let time = timestamp::format(now);
    let data = json!({
        "event": EVENT,
        "distinct_id": token,
        "uuid": uuid,
        "timestamp": time,
        "properties": {
            "$$client_ingestion_warning_type": kind,
            "$$client_ingestion_warning_source": "capture",
            "$$client_ingestion_warning_details": details,
        },
    })
    .to_string();
    let captured = CapturedEvent {
        uuid,
        distinct_id: token.to_owned(),
        ip: String::new(),
        data: data.into(),
        now: time.clone(),
        sent_at: None,
        token: token.to_owned(),
        event: EVENT.to_owned(),
        timestamp: time,
        is_cookieless_mode: false,
        historical_migration: false,
        timestamp_millis: now.timestamp_millis(),
    };
    captured.into_message(DataType::ClientWarnings, topic, Some(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemorySink;

    #[tokio::test]
    async fn one_warning_per_token_and_kind_per_interval() {
        let sink = Arc::new(MemorySink::default());
        let warnings = Warnings::new(sink.clone(), Duration::from_secs(3600));
        let topic: Arc<str> = Arc::from("client_warnings");
        let now = Utc::now();
        for _ in 0..3 {
            warnings.warn("phc_a", "quota_limited", json!({"count": 1}), &topic, now);
        }
        warnings.warn("phc_a", "event_restricted", json!({}), &topic, now);
        warnings.warn("phc_b", "quota_limited", json!({}), &topic, now);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let produced = sink.take();
        assert_eq!(produced.len(), 3);
        let value: Value = serde_json::from_str(&produced[0].payload).expect("JSON");
        assert_eq!(value["event"], EVENT);
        assert_eq!(value["distinct_id"], "phc_a");
        assert_eq!(value["token"], "phc_a");
        assert_eq!(produced[0].key.as_deref(), Some("phc_a"));
        assert_eq!(&*produced[0].topic, "client_warnings");
        let data: Value =
            serde_json::from_str(value["data"].as_str().expect("data")).expect("data");
        assert_eq!(
            data["properties"],
            json!({"$$client_ingestion_warning_type": "quota_limited",
                   "$$client_ingestion_warning_source": "capture",
                   "$$client_ingestion_warning_details": {"count": 1}})
        );

        let off = Warnings::new(sink.clone(), Duration::ZERO);
        off.warn("phc_c", "quota_limited", json!({}), &topic, now);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(sink.take().is_empty(), "a zero interval writes none");
    }
}
