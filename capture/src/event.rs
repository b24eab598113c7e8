//! The Kafka message contract: value, key and headers of every message
//! capture produces.
//!
//! Downstream consumers (PostHog's ingestion pipeline or anything else that
//! reads these topics) depend on exactly this shape, so it is defined once
//! here and used by every sink.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::route::DataType;
use crate::sink::Message;

/// Header names set on every message.
pub mod header {
    /// Project token.
    pub const TOKEN: &str = "token";
    /// The event's distinct id.
    pub const DISTINCT_ID: &str = "distinct_id";
    /// Event name.
    pub const EVENT: &str = "event";
    /// Event uuid.
    pub const UUID: &str = "uuid";
    /// Resolved event time.
    pub const TIMESTAMP: &str = "timestamp";
    /// Server time when the request was received.
    pub const NOW: &str = "now";
    /// Session id, recordings only.
    pub const SESSION_ID: &str = "session_id";
}

/// The message value: one captured event as capture hands it downstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedEvent {
    /// The client's uuid for the event, or a UUIDv7 capture generated.
    pub uuid: Uuid,
    /// Who did it, as a string of at most 200 characters.
    pub distinct_id: String,
    /// The client's IP address.
    pub ip: String,
    /// The event exactly as the client sent it, as a JSON string.
    pub data: String,
    /// Server time when the request arrived.
    pub now: String,
    /// When the client says it sent the request; absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// Project token.
    pub token: String,
    /// Event name.
    pub event: String,
    /// Event time after clock-skew correction.
    pub timestamp: String,
    /// The event was sent in cookieless mode (keyed by IP, not distinct id).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_cookieless_mode: bool,
}

impl CapturedEvent {
    /// Partition key: `token:distinct_id`, or `token:ip` in cookieless mode.
    pub fn key(&self) -> String {
        let who = if self.is_cookieless_mode {
            &self.ip
        } else {
            &self.distinct_id
        };
        format!("{}:{who}", self.token)
    }

    /// Headers every message carries.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (header::TOKEN, self.token.clone()),
            (header::DISTINCT_ID, self.distinct_id.clone()),
            (header::EVENT, self.event.clone()),
            (header::UUID, self.uuid.to_string()),
            (header::TIMESTAMP, self.timestamp.clone()),
            (header::NOW, self.now.clone()),
        ]
    }

    /// Builds the message for `topic`, keyed by `key` (`None` spreads load).
    pub fn into_message(
        self,
        kind: DataType,
        topic: std::sync::Arc<str>,
        key: Option<String>,
    ) -> Message {
        let headers = self.headers();
        let payload = serde_json::to_string(&self).unwrap_or_default();
        Message {
            kind,
            topic,
            key,
            headers,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> CapturedEvent {
        CapturedEvent {
            uuid: Uuid::nil(),
            distinct_id: "user-1".into(),
            ip: "10.1.2.3".into(),
            data: "{}".into(),
            now: "2024-01-01T00:00:00.000000+00:00".into(),
            sent_at: None,
            token: "phc_abc".into(),
            event: "$pageview".into(),
            timestamp: "2024-01-01T00:00:00.000000+00:00".into(),
            is_cookieless_mode: false,
        }
    }

    #[test]
    fn key_is_token_and_distinct_id_or_ip_when_cookieless() {
        assert_eq!(event().key(), "phc_abc:user-1");
        let cookieless = CapturedEvent {
            is_cookieless_mode: true,
            ..event()
        };
        assert_eq!(cookieless.key(), "phc_abc:10.1.2.3");
    }

    #[test]
    fn absent_sent_at_and_cookieless_flag_are_omitted_from_the_value() {
        let value: serde_json::Value = serde_json::to_value(event()).expect("serializes");
        let object = value.as_object().expect("object");
        assert!(!object.contains_key("sent_at"));
        assert!(!object.contains_key("is_cookieless_mode"));
        for field in [
            "uuid",
            "distinct_id",
            "ip",
            "data",
            "now",
            "token",
            "event",
            "timestamp",
        ] {
            assert!(object.contains_key(field), "{field} missing");
        }
    }

    #[test]
    fn headers_carry_the_routing_fields() {
        let names: Vec<_> = event().headers().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            ["token", "distinct_id", "event", "uuid", "timestamp", "now"]
        );
    }
}
