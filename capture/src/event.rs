//! The Kafka message contract: value, key and headers of every message
//! capture produces.
//!
//! Downstream consumers (PostHog's ingestion pipeline or anything else that
//! reads these topics) depend on exactly this shape, so it is defined once
//! here and used by every sink.

use std::borrow::Cow;

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
    /// `true` on events of a `historical_migration` batch (absent
    /// otherwise), as PostHog's capture writes it.
    pub const HISTORICAL_MIGRATION: &str = "historical_migration";
    /// `true` on analytics events produced without a partition key
    /// (overflow): their person updates may land on any partition, so
    /// ingestion must not process persons for them. Absent otherwise.
    pub const FORCE_DISABLE_PERSON_PROCESSING: &str = "force_disable_person_processing";
    /// Why an event is on the dead-letter topic (`event_restriction`).
    pub const DLQ_REASON: &str = "dlq_reason";
    /// Which step sent it there (`capture`).
    pub const DLQ_STEP: &str = "dlq_step";
    /// When (RFC 3339, milliseconds, `Z`).
    pub const DLQ_TIMESTAMP: &str = "dlq_timestamp";
}

/// Adds the headers that say why a message is on the dead-letter topic: a
/// restriction (`event_restriction`) in capture, at `now`.
pub fn mark_dead_letter(message: &mut Message, now: chrono::DateTime<chrono::Utc>) {
    message.headers.extend([
        (header::DLQ_REASON, "event_restriction".to_owned()),
        (header::DLQ_STEP, "capture".to_owned()),
        (
            header::DLQ_TIMESTAMP,
            now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
    ]);
}

/// Adds `force_disable_person_processing: true` to an unkeyed analytics
/// message (recordings are never keyed by person), once.
pub fn mark_personless(message: &mut Message) {
    let personless = message.key.is_none()
        && message.kind != DataType::Recordings
        && !message
            .headers
            .iter()
            .any(|(name, _)| *name == header::FORCE_DISABLE_PERSON_PROCESSING);
    if personless {
        message
            .headers
            .push((header::FORCE_DISABLE_PERSON_PROCESSING, "true".to_owned()));
    }
}

/// The message value: one captured event as capture hands it downstream.
/// `data` borrows the client's text while the message is built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedEvent<'a> {
    /// The client's uuid for the event, or a UUIDv7 capture generated.
    pub uuid: Uuid,
    /// Who did it, as a string of at most 200 characters.
    pub distinct_id: String,
    /// The client's IP address.
    pub ip: String,
    /// The event exactly as the client sent it, as a JSON string.
    pub data: Cow<'a, str>,
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
    /// The event came in a `historical_migration` batch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub historical_migration: bool,
    /// `timestamp` in Unix milliseconds, for the `timestamp` header (the
    /// form PostHog's capture writes there); not part of the value.
    #[serde(skip)]
    pub timestamp_millis: i64,
}

impl CapturedEvent<'_> {
    /// Partition key: `token:distinct_id`, or `token:ip` in cookieless mode.
    pub fn key(&self) -> String {
        let who = if self.is_cookieless_mode {
            &self.ip
        } else {
            &self.distinct_id
        };
        let mut key = String::with_capacity(self.token.len() + 1 + who.len());
        key.push_str(&self.token);
        key.push(':');
        key.push_str(who);
        key
    }

    /// The message value as JSON: the same document `serde_json` makes of
    /// this struct, written directly (see [`push_json_str`]).
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(self.data.len() + self.data.len() / 4 + 320);
        let mut uuid = Uuid::encode_buffer();
        out.push_str("{\"uuid\":\"");
        out.push_str(self.uuid.hyphenated().encode_lower(&mut uuid));
        out.push_str("\",\"distinct_id\":");
        push_json_str(&mut out, &self.distinct_id);
        out.push_str(",\"ip\":");
        push_json_str(&mut out, &self.ip);
        out.push_str(",\"data\":");
        push_json_str(&mut out, &self.data);
        out.push_str(",\"now\":");
        push_json_str(&mut out, &self.now);
        if let Some(sent_at) = &self.sent_at {
            out.push_str(",\"sent_at\":");
            push_json_str(&mut out, sent_at);
        }
        out.push_str(",\"token\":");
        push_json_str(&mut out, &self.token);
        out.push_str(",\"event\":");
        push_json_str(&mut out, &self.event);
        out.push_str(",\"timestamp\":");
        push_json_str(&mut out, &self.timestamp);
        if self.is_cookieless_mode {
            out.push_str(",\"is_cookieless_mode\":true");
        }
        if self.historical_migration {
            out.push_str(",\"historical_migration\":true");
        }
        out.push('}');
        out
    }

    /// Builds the message for `topic`, keyed by `key` (`None` spreads load);
    /// the headers take the value's fields without copying them again.
    pub fn into_message(
        self,
        kind: DataType,
        topic: std::sync::Arc<str>,
        key: Option<String>,
    ) -> Message {
        let payload = self.to_json();
        let mut headers = vec![
            (header::TOKEN, self.token),
            (header::DISTINCT_ID, self.distinct_id),
            (header::EVENT, self.event),
            (
                header::UUID,
                self.uuid
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer())
                    .to_owned(),
            ),
            (header::TIMESTAMP, self.timestamp_millis.to_string()),
            (header::NOW, self.now),
        ];
        if self.historical_migration {
            headers.push((header::HISTORICAL_MIGRATION, "true".to_owned()));
        }
        let mut message = Message {
            kind,
            topic,
            key,
            headers,
            payload,
        };
        mark_personless(&mut message);
        message
    }
}

/// A word with the high bit set in each byte of `word` that a JSON string
/// must escape (`"`, `\\`, or below 0x20), and no other bit. Exact per
/// byte: no carry crosses from one byte into the next.
fn escape_mask(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // 0x80 in each byte of `x` that is zero: adding 0x7f to the low seven
    // bits reaches the high bit unless they are all zero.
    let zero_bytes = |x: u64| !(((x & LOW7) + LOW7) | x | LOW7);
    zero_bytes(word ^ (ONES * u64::from(b'"')))
        | zero_bytes(word ^ (ONES * u64::from(b'\\')))
        | zero_bytes(word & (ONES * 0xe0))
}

/// Appends the escape of `byte` (one that [`escape_mask`] marks, found at
/// `at`) and returns where the text to copy resumes. A quote or backslash
/// only needs a backslash before it, and then is copied with the run that
/// follows, which saves a copy per quote: `data` is full of them.
fn push_escape(out: &mut String, byte: u8, at: usize) -> usize {
    let escape = match byte {
        b'"' | b'\\' => {
            out.push('\\');
            return at;
        }
        b'\n' => "\\n",
        b'\r' => "\\r",
        b'\t' => "\\t",
        0x08 => "\\b",
        0x0c => "\\f",
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
            return at + 1;
        }
    };
    out.push_str(escape);
    at + 1
}

/// Appends `text` as a JSON string literal, escaped exactly as `serde_json`
/// escapes it. `data` is itself JSON, so a quote comes every few bytes:
/// each eight-byte word yields the exact positions to escape as a bit
/// mask, and the runs between them are copied whole.
pub fn push_json_str(out: &mut String, text: &str) {
    let bytes = text.as_bytes();
    out.push('"');
    let mut start = 0;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let mut mask = escape_mask(u64::from_le_bytes(word));
        while mask != 0 {
            // Little-endian: the lowest set bit is the first byte.
            let escaped = at + (mask.trailing_zeros() / 8) as usize;
            // An escaped byte is ASCII, so both ends are char boundaries.
            out.push_str(&text[start..escaped]);
            start = push_escape(out, bytes[escaped], escaped);
            mask &= mask - 1;
        }
        at += 8;
    }
    for (offset, &byte) in bytes[at..].iter().enumerate() {
        if byte == b'"' || byte == b'\\' || byte < 0x20 {
            let escaped = at + offset;
            out.push_str(&text[start..escaped]);
            start = push_escape(out, byte, escaped);
        }
    }
    out.push_str(&text[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> CapturedEvent<'static> {
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
            historical_migration: false,
            timestamp_millis: 1_704_067_200_000,
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
        let value: serde_json::Value = serde_json::from_str(&event().to_json()).expect("JSON");
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
    fn headers_carry_the_routing_fields_as_posthog_writes_them() {
        let message = event().into_message(DataType::Events, "t".into(), Some("k".into()));
        let names: Vec<_> = message.headers.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            ["token", "distinct_id", "event", "uuid", "timestamp", "now"]
        );
        assert_eq!(message.headers[3].1, Uuid::nil().to_string());
        assert_eq!(message.headers[4].1, "1704067200000", "milliseconds");

        // Historical, and unkeyed: two more headers, and the flag in the
        // value.
        let historical = CapturedEvent {
            historical_migration: true,
            ..event()
        };
        let message = historical.into_message(DataType::Historical, "t".into(), None);
        let extra: Vec<_> = message.headers[6..]
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        assert_eq!(
            extra,
            [
                ("historical_migration", "true"),
                ("force_disable_person_processing", "true")
            ]
        );
        let value: serde_json::Value = serde_json::from_str(&message.payload).expect("JSON");
        assert_eq!(value["historical_migration"], true);
        // Recordings are keyed by session, never by person: no flag.
        let mut recording = event().into_message(DataType::Recordings, "t".into(), None);
        mark_personless(&mut recording);
        assert_eq!(recording.headers.len(), 6);
    }

    #[test]
    fn the_value_is_what_serde_makes_of_the_struct() {
        let full = CapturedEvent {
            sent_at: Some("2024-01-01T00:00:00.000000+00:00".into()),
            is_cookieless_mode: true,
            historical_migration: true,
            data: r#"{"event":"a \"q\" \\ é","n":[1, 2]}"#.into(),
            distinct_id: "tab\there\u{1}\u{7f}".into(),
            ..event()
        };
        for value in [event(), full] {
            let expected = serde_json::to_string(&value).expect("serializes");
            assert_eq!(value.to_json(), expected);
        }
    }

    fn tricky_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let tricky = prop_oneof![
            any::<char>(),
            (0u8..0x20).prop_map(char::from),
            Just('"'),
            Just('\\'),
            Just('\u{7f}'),
        ];
        prop::collection::vec(tricky, 0..40).prop_map(String::from_iter)
    }

    proptest::proptest! {
        #[test]
        fn the_escape_mask_marks_exactly_the_bytes_to_escape(
            bytes in proptest::array::uniform8(proptest::prop_oneof![
                proptest::prelude::any::<u8>(),
                proptest::strategy::Just(b'"'),
                proptest::strategy::Just(b'\\'),
                0u8..0x21,
                // Each differs from '"' (0x22) or '\\' (0x5c) in one bit.
                proptest::strategy::Just(0xa2u8),
                proptest::strategy::Just(0xdcu8),
                proptest::strategy::Just(0x23u8),
                proptest::strategy::Just(0x5du8),
            ])
        ) {
            let expected = bytes.iter().enumerate().fold(0u64, |mask, (i, &b)| {
                if b == b'"' || b == b'\\' || b < 0x20 { mask | 0x80 << (8 * i) } else { mask }
            });
            proptest::prop_assert_eq!(escape_mask(u64::from_le_bytes(bytes)), expected);
        }

        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(text in tricky_text()) {
            let mut ours = String::new();
            push_json_str(&mut ours, &text);
            proptest::prop_assert_eq!(ours, serde_json::to_string(&text).expect("serializes"));
        }
    }
}
