//! The three payload shapes SDKs send, reduced to one [`Payload`].
//!
//! A body is a single event object, an array of events, or a batch object
//! `{api_key|token, batch: [...], sent_at, historical_migration}`. Events are
//! never rebuilt: each stays the exact JSON text the client sent (a slice of
//! the decoded body), which capture forwards as `data`, and only the handful
//! of fields capture needs are read out of it into [`EventFields`], in the
//! same pass that finds the event.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::CaptureError;
use crate::timestamp;
use crate::token::TokenError;

/// One event: the client's JSON text and the fields read from it.
#[derive(Debug)]
pub struct Event<'a> {
    /// The event object's JSON text exactly as sent.
    pub raw: &'a str,
    /// The fields capture reads.
    pub fields: EventFields<'a>,
}

/// The top-level event fields capture reads; everything else is only
/// carried along in the raw text. Values stay raw JSON so a field of an
/// unexpected type is judged by the rule for that field, not by the parser.
#[derive(Debug, Default, Deserialize)]
pub struct EventFields<'a> {
    /// Event name.
    #[serde(borrow, default)]
    pub event: Option<&'a RawValue>,
    /// Who did it.
    #[serde(borrow, default)]
    pub distinct_id: Option<&'a RawValue>,
    /// Who did it, in `/engage` bodies.
    #[serde(borrow, default, rename = "$distinct_id")]
    pub dollar_distinct_id: Option<&'a RawValue>,
    /// Client-made event id.
    #[serde(borrow, default)]
    pub uuid: Option<&'a RawValue>,
    /// Client event time.
    #[serde(borrow, default)]
    pub timestamp: Option<&'a RawValue>,
    /// Milliseconds between the event and sending.
    #[serde(borrow, default)]
    pub offset: Option<&'a RawValue>,
    /// Project token.
    #[serde(borrow, default)]
    pub token: Option<&'a RawValue>,
    /// Project token, `/engage` spelling.
    #[serde(borrow, default, rename = "$token")]
    pub dollar_token: Option<&'a RawValue>,
    /// Project token, old spelling.
    #[serde(borrow, default)]
    pub api_key: Option<&'a RawValue>,
    /// A batch body's events, as text (only read at the top level of a
    /// body, and only there counted and split into events).
    #[serde(borrow, default)]
    pub batch: Option<&'a RawValue>,
    /// A batch body's send time.
    #[serde(borrow, default)]
    pub sent_at: Option<&'a RawValue>,
    /// A batch body's request for the historical topic.
    #[serde(borrow, default)]
    pub historical_migration: Option<&'a RawValue>,
    /// A team id the client put in the event: never forwarded (see
    /// [`crate::process`]).
    #[serde(borrow, default)]
    pub team_id: Option<&'a RawValue>,
    /// The fields read from the event's properties; empty when there are
    /// none or `properties` is not an object. Read in the same pass as the
    /// event itself.
    #[serde(borrow, default, deserialize_with = "by_shape")]
    pub properties: PropertyFields<'a>,
}

/// The properties capture reads.
#[derive(Debug, Default, Deserialize)]
pub struct PropertyFields<'a> {
    /// Who did it, when not at the top level.
    #[serde(borrow, default)]
    pub distinct_id: Option<&'a RawValue>,
    /// Project token, when not at the top level.
    #[serde(borrow, default)]
    pub token: Option<&'a RawValue>,
    /// Key by IP rather than distinct id.
    #[serde(borrow, default, rename = "$cookieless_mode")]
    pub cookieless_mode: Option<&'a RawValue>,
    /// Trust `timestamp` as sent.
    #[serde(borrow, default, rename = "$ignore_sent_at")]
    pub ignore_sent_at: Option<&'a RawValue>,
    /// Recording session.
    #[serde(borrow, default, rename = "$session_id")]
    pub session_id: Option<&'a RawValue>,
    /// Recording window.
    #[serde(borrow, default, rename = "$window_id")]
    pub window_id: Option<&'a RawValue>,
    /// Recording source.
    #[serde(borrow, default, rename = "$snapshot_source")]
    pub snapshot_source: Option<&'a RawValue>,
    /// Recording snapshots.
    #[serde(borrow, default, rename = "$snapshot_data")]
    pub snapshot_data: Option<&'a RawValue>,
    /// SDK name.
    #[serde(borrow, default, rename = "$lib")]
    pub lib: Option<&'a RawValue>,
}

impl<'a> EventFields<'a> {
    /// The token the event carries itself: `token`, `$token`, `api_key`, or
    /// `properties.token`, the first that is a string.
    pub fn token(&self) -> Option<Cow<'a, str>> {
        [
            self.token,
            self.dollar_token,
            self.api_key,
            self.properties.token,
        ]
        .into_iter()
        .find_map(|raw| raw.and_then(as_str))
    }
}

/// Values read according to their JSON shape; any other shape is skipped.
trait Shaped<'de>: Sized {
    /// From a JSON object.
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
    /// From a JSON array.
    fn from_seq<A: SeqAccess<'de>>(seq: A) -> Result<Self, A::Error>;
    /// From a string, number or boolean.
    fn other() -> Self;
    /// From `null`.
    fn null() -> Self {
        Self::other()
    }
}

impl<'de> Shaped<'de> for PropertyFields<'de> {
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        PropertyFields::deserialize(MapAccessDeserializer::new(map))
    }

    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(PropertyFields::default())
    }

    /// `properties` that is not an object counts as none, rather than
    /// refusing the event.
    fn other() -> Self {
        PropertyFields::default()
    }
}

fn by_shape<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Shaped<'de>,
{
    struct ByShape<T>(std::marker::PhantomData<T>);

    impl<'de, T: Shaped<'de>> Visitor<'de> for ByShape<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::from_map(map)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
            T::from_seq(seq)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<T, E> {
            Ok(T::null())
        }

        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<T, E> {
            Ok(T::other())
        }

        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<T, E> {
            Ok(T::other())
        }

        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<T, E> {
            Ok(T::other())
        }

        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<T, E> {
            Ok(T::other())
        }

        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<T, E> {
            Ok(T::other())
        }
    }

    deserializer.deserialize_any(ByShape(std::marker::PhantomData))
}

/// The text of a JSON string value; `None` for any other JSON type.
pub fn as_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    if !text.contains('\\') {
        return Some(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// Whether the value is JSON `null`.
pub fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// The value of a JSON boolean; `None` for any other JSON type.
pub fn as_bool(raw: &RawValue) -> Option<bool> {
    match raw.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The value of a JSON integer that fits an `i64`.
pub fn as_i64(raw: &RawValue) -> Option<i64> {
    raw.get().parse().ok()
}

/// A present, non-null value.
pub fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|raw| !is_null(raw))
}

/// A decoded request body.
#[derive(Debug, Default)]
pub struct Payload<'a> {
    /// The events, in request order; never empty.
    pub events: Vec<Event<'a>>,
    /// The batch-level token (`api_key` or `token`), if any.
    pub token: Option<String>,
    /// The batch-level `sent_at`, if any and parseable.
    pub sent_at: Option<DateTime<Utc>>,
    /// The batch asked for the historical topic.
    pub historical_migration: bool,
}

/// Parses a decoded JSON body into a payload that borrows from it, refusing
/// a body of more than `max_events` events as soon as it finds one more
/// (before it reads the rest).
///
/// Arrays of events and batch objects whose envelope comes in the usual
/// shape are read by [`Cursor`], one pass over each event. Everything
/// else, including every body with a problem, goes through
/// [`parse_checked`], which names what is wrong; both give the same
/// payload for any body the cursor accepts.
pub fn parse(text: &str, max_events: usize) -> Result<Payload<'_>, CaptureError> {
    let mut cursor = Cursor::new(text, max_events);
    if let Some(payload) = cursor.payload() {
        return Ok(payload);
    }
    if cursor.too_many {
        return Err(too_many(max_events));
    }
    parse_checked(text, max_events)
}

/// The 413 for a request of more than `max_events` events.
pub fn too_many(max_events: usize) -> CaptureError {
    CaptureError::TooLarge(format!(
        "request has more than {max_events} events, the most one request may carry \
         (--max-events-per-request); send them in several requests"
    ))
}

/// [`parse`] the general way: the body in one pass, then each event of an
/// array or batch in a second pass over its text. Public only so the fuzz
/// targets can hold the one-pass reader to it.
#[doc(hidden)]
pub fn parse_checked(text: &str, max_events: usize) -> Result<Payload<'_>, CaptureError> {
    let invalid_json =
        |err: serde_json::Error| CaptureError::Payload(format!("invalid JSON: {err}"));
    // The items of an array, at most `max_events` of them.
    let items = |text| items_at_most(text, max_events);
    let first = text.bytes().find(|b| !b.is_ascii_whitespace());
    let payload = match first {
        Some(b'[') => Payload {
            events: events_from(items(text)?, "the array")?,
            ..Payload::default()
        },
        Some(b'{') => {
            // One pass reads a batch's envelope or a single event's fields:
            // the object is one or the other, and both share `token`.
            let top: EventFields<'_> = serde_json::from_str(text).map_err(invalid_json)?;
            match top.batch {
                Some(batch) if batch.get().starts_with('[') => {
                    batch_payload(events_from(items(batch.get())?, "`batch`")?, &top)?
                }
                Some(_) => {
                    return Err(CaptureError::Payload(
                        "`batch` must be an array of events".into(),
                    ));
                }
                None => Payload {
                    events: vec![Event {
                        raw: text.trim_ascii(),
                        fields: top,
                    }],
                    ..Payload::default()
                },
            }
        }
        _ => {
            // Let the parser name what is wrong with non-JSON input.
            serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(invalid_json)?;
            return Err(CaptureError::Payload(
                "body must be an event object, an array of events or a batch object".into(),
            ));
        }
    };
    if payload.events.is_empty() {
        return Err(CaptureError::Payload("request contains no events".into()));
    }
    Ok(payload)
}

/// The items of the JSON array `text`, at most `max_events` of them.
fn items_at_most(text: &str, max_events: usize) -> Result<Vec<&RawValue>, CaptureError> {
    let over = std::cell::Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let items = AtMost {
        max: max_events,
        over: &over,
    }
    .deserialize(&mut deserializer)
    .and_then(|items| deserializer.end().map(|()| items));
    match items {
        Err(_) if over.get() => Err(too_many(max_events)),
        items => items.map_err(|err| CaptureError::Payload(format!("invalid JSON: {err}"))),
    }
}

/// Reads a JSON array's items as raw text, failing (and setting `over`)
/// at item `max + 1`, so a huge array is not read to its end.
struct AtMost<'c> {
    max: usize,
    over: &'c std::cell::Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for AtMost<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for AtMost<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            if items.len() == self.max {
                self.over.set(true);
                return Err(serde::de::Error::custom("too many events"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// Reads arrays of events and batch objects from JSON text in one pass:
/// each event is deserialized where it starts, and its text is the span
/// the deserializer consumed. Any shape it does not expect, and any
/// invalid JSON, makes it give up (`None`) so that [`parse_checked`]
/// decides, and words the error.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
    max_events: usize,
    /// It gave up on finding more than `max_events` events.
    too_many: bool,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str, max_events: usize) -> Self {
        Cursor {
            text,
            at: 0,
            max_events,
            too_many: false,
        }
    }

    /// The whole body: an array of events or a batch object, and nothing
    /// after it.
    fn payload(&mut self) -> Option<Payload<'a>> {
        let payload = match self.peek()? {
            b'[' => Payload {
                events: self.events()?,
                ..Payload::default()
            },
            b'{' => self.batch()?,
            _ => return None,
        };
        (self.peek().is_none() && !payload.events.is_empty()).then_some(payload)
    }

    /// The next byte that is not JSON whitespace, left in place.
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = bytes.get(self.at) {
            self.at += 1;
        }
        bytes.get(self.at).copied()
    }

    /// Takes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        if next {
            self.at += 1;
        }
        next
    }

    /// The next value as `T`, and its text.
    fn value<T: Deserialize<'a>>(&mut self) -> Option<(T, &'a str)> {
        self.peek()?;
        let rest = &self.text[self.at..];
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<T>();
        let value = values.next()?.ok()?;
        let length = values.byte_offset();
        self.at += length;
        Some((value, &rest[..length]))
    }

    /// An array of event objects. An event is read like `parse_checked`
    /// reads it, by its own deserializer, so nesting counts from the event
    /// for serde_json's recursion limit as it does there.
    fn events(&mut self) -> Option<Vec<Event<'a>>> {
        if !self.eat(b'[') {
            return None;
        }
        let mut events = Vec::new();
        if self.eat(b']') {
            return Some(events);
        }
        loop {
            if self.peek()? != b'{' {
                return None;
            }
            if events.len() == self.max_events {
                self.too_many = true;
                return None;
            }
            let (fields, raw) = self.value::<EventFields<'a>>()?;
            events.push(Event { raw, fields });
            if self.eat(b']') {
                return Some(events);
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    /// A batch object: `batch` and the envelope fields, each at most once
    /// (as the derived `EventFields` requires). A key outside the envelope
    /// before `batch` means the body is more likely a single event, which
    /// `parse_checked` reads in one pass anyway; after `batch`, other keys
    /// are skipped as `EventFields` skips them.
    fn batch(&mut self) -> Option<Payload<'a>> {
        if !self.eat(b'{') {
            return None;
        }
        // Bits of `seen`, one per envelope field.
        const API_KEY: u8 = 1;
        const TOKEN: u8 = 2;
        const SENT_AT: u8 = 4;
        const HISTORICAL: u8 = 8;
        let mut top = EventFields::default();
        let mut events = None;
        let mut seen = 0u8;
        let mut more = !self.eat(b'}');
        while more {
            if self.peek()? != b'"' {
                return None;
            }
            // An escaped key fails to borrow and leaves it to parse_checked.
            let (key, _) = self.value::<&'a str>()?;
            if !self.eat(b':') {
                return None;
            }
            let (bit, slot) = match key {
                "batch" if events.is_none() => {
                    events = Some(self.events()?);
                    (0, None)
                }
                "api_key" => (API_KEY, Some(&mut top.api_key)),
                "token" => (TOKEN, Some(&mut top.token)),
                "sent_at" => (SENT_AT, Some(&mut top.sent_at)),
                "historical_migration" => (HISTORICAL, Some(&mut top.historical_migration)),
                // The other fields `EventFields` reads: at the top of a body
                // they mean a single event before `batch`, and after it a
                // repeated one is an error there, so neither is skipped.
                "batch" | "event" | "distinct_id" | "$distinct_id" | "uuid" | "timestamp"
                | "offset" | "$token" | "properties" => return None,
                _ if events.is_some() => {
                    self.value::<IgnoredAny>()?;
                    (0, None)
                }
                _ => return None,
            };
            if let Some(slot) = slot {
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                let (raw, _) = self.value::<&'a RawValue>()?;
                // As `Option` deserializes it: `null` is absent.
                *slot = (!is_null(raw)).then_some(raw);
            }
            more = self.eat(b',');
            if !more && !self.eat(b'}') {
                return None;
            }
        }
        batch_payload(events?, &top).ok()
    }
}

/// A batch body's payload: its events, and what its envelope (`top`) says
/// about all of them.
fn batch_payload<'a>(
    events: Vec<Event<'a>>,
    top: &EventFields<'_>,
) -> Result<Payload<'a>, CaptureError> {
    Ok(Payload {
        events,
        token: batch_token(top)?,
        sent_at: top
            .sent_at
            .and_then(as_str)
            .and_then(|text| timestamp::parse(&text)),
        historical_migration: top.historical_migration.and_then(as_bool).unwrap_or(false),
    })
}

fn events_from<'a>(
    items: Vec<&'a RawValue>,
    container: &str,
) -> Result<Vec<Event<'a>>, CaptureError> {
    items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            if !raw.get().starts_with('{') {
                return Err(CaptureError::Payload(format!(
                    "element {index} of {container} is not an event object"
                )));
            }
            let fields =
                serde_json::from_str(raw.get()).map_err(|err| CaptureError::InvalidEvent {
                    index,
                    reason: err.to_string(),
                })?;
            Ok(Event {
                raw: raw.get(),
                fields,
            })
        })
        .collect()
}

fn batch_token(top: &EventFields<'_>) -> Result<Option<String>, CaptureError> {
    match present(top.api_key).or(present(top.token)) {
        None => Ok(None),
        Some(raw) => match as_str(raw) {
            Some(token) => Ok(Some(token.into_owned())),
            None => Err(TokenError::NotAscii.into()),
        },
    }
}

/// The one token for the whole request, validated.
pub fn request_token(payload: &Payload<'_>) -> Result<String, CaptureError> {
    let token = match &payload.token {
        Some(token) => token.clone(),
        None => {
            let mut tokens = payload.events.iter().map(|e| e.fields.token());
            let first = tokens.next().flatten().ok_or(TokenError::Missing)?;
            if tokens.any(|t| t.as_deref() != Some(&*first)) {
                return Err(TokenError::Mixed.into());
            }
            first.into_owned()
        }
    };
    crate::token::validate(&token)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a cap on events.
    fn parse(text: &str) -> Result<Payload<'_>, CaptureError> {
        super::parse(text, usize::MAX)
    }

    fn parse_checked(text: &str) -> Result<Payload<'_>, CaptureError> {
        super::parse_checked(text, usize::MAX)
    }

    #[test]
    fn more_events_than_the_cap_are_refused_naming_it_in_every_shape() {
        let events = |n: usize| vec![r#"{"event":"a"}"#; n].join(",");
        for max in [1, 3] {
            let bodies = [
                format!("[{}]", events(max + 1)),
                format!(r#"{{"api_key":"t","batch":[{}]}}"#, events(max + 1)),
                // Shapes the one-pass reader leaves to the general one.
                format!(
                    r#"{{"batch":[{}],"sent_at":null,"batch":[]}}"#,
                    events(max + 1)
                ),
                format!(r#"[{}, 3]"#, events(max + 1)),
            ];
            for body in &bodies {
                let err = super::parse(body, max).expect_err("over the cap");
                assert_eq!(
                    err.status(),
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "{body}"
                );
                let text = err.to_string();
                assert!(
                    text.contains(&format!("more than {max} events"))
                        && text.contains("--max-events-per-request"),
                    "{text}"
                );
            }
            let at_cap = format!("[{}]", events(max));
            assert_eq!(
                super::parse(&at_cap, max).expect("at the cap").events.len(),
                max
            );
            let at_cap = format!(r#"{{"batch":[{}],"x":1,"batch":[]}}"#, events(max));
            assert!(
                !super::parse(&at_cap, max)
                    .expect_err("a repeated key")
                    .to_string()
                    .contains("more than"),
                "not a count problem"
            );
        }
    }

    #[test]
    fn the_count_stops_reading_a_huge_array_at_the_cap() {
        // The body is cut off long after the cap: refusing it for its count
        // shows the reader never went on to find the broken end.
        let body = format!("[{}", vec![r#"{"event":"a"}"#; 10_000].join(","));
        for reader in [super::parse, super::parse_checked] {
            let err = reader(&body, 10).expect_err("refused");
            assert!(err.to_string().contains("more than 10 events"), "{err}");
        }
    }

    #[test]
    fn the_three_shapes_give_the_same_events() {
        let single = parse(r#"{"event":"a","token":"t"}"#).expect("single");
        let array = parse(r#"[{"event":"a","token":"t"}]"#).expect("array");
        let batch =
            parse(r#"{"api_key":"t","batch":[{"event":"a"}],"sent_at":"2024-01-01T00:00:00Z"}"#)
                .expect("batch");
        assert_eq!(single.events.len(), 1);
        assert_eq!(array.events.len(), 1);
        assert_eq!(batch.events[0].raw, r#"{"event":"a"}"#);
        assert_eq!(single.events[0].raw, r#"{"event":"a","token":"t"}"#);
        assert_eq!(batch.token.as_deref(), Some("t"));
        assert!(batch.sent_at.is_some());
        assert!(!batch.historical_migration);
    }

    #[test]
    fn events_keep_their_exact_text_and_expose_their_fields() {
        let body = r#"{"batch": [ {"uuid":"x", "n": 12345678901234567890123, "b": {"z":1,"a":2},
            "properties": {"token": "phc_\u0041", "$cookieless_mode": true}} ]}"#;
        let payload = parse(body).expect("batch");
        let event = &payload.events[0];
        assert!(event.raw.contains("12345678901234567890123"));
        assert!(event.raw.contains(r#"{"z":1,"a":2}"#));
        assert_eq!(event.fields.uuid.and_then(as_str).as_deref(), Some("x"));
        assert_eq!(event.fields.token().as_deref(), Some("phc_A"));
        let properties = &event.fields.properties;
        assert_eq!(properties.cookieless_mode.and_then(as_bool), Some(true));
    }

    #[test]
    fn properties_that_are_not_an_object_count_as_none() {
        for properties in ["null", "\"x\"", "[1,{\"token\":\"t\"}]", "3", "true", "1.5"] {
            let body = format!(r#"{{"event":"a","properties":{properties},"distinct_id":"d"}}"#);
            let payload = parse(&body).expect("parse");
            let fields = &payload.events[0].fields;
            assert!(fields.properties.token.is_none(), "{properties}");
            assert_eq!(fields.distinct_id.and_then(as_str).as_deref(), Some("d"));
        }
    }

    #[test]
    fn an_event_may_carry_a_batch_field_of_its_own() {
        let body = r#"{"batch":[{"event":"a","batch":"not mine","distinct_id":"d"}]}"#;
        let payload = parse(body).expect("parse");
        assert_eq!(payload.events.len(), 1);
        assert!(payload.events[0].raw.contains("not mine"));
    }

    #[test]
    fn historical_migration_is_read_from_the_batch() {
        let batch = parse(r#"{"token":"t","historical_migration":true,"batch":[{"event":"a"}]}"#)
            .expect("batch");
        assert!(batch.historical_migration);
    }

    #[test]
    fn wrong_shapes_name_the_problem() {
        let cases: [(&str, &str); 6] = [
            ("[]", "no events"),
            ("42", "must be an event object"),
            (r#"{"batch":{}}"#, "`batch` must be an array"),
            (r#"{"batch":"x"}"#, "`batch` must be an array"),
            (r#"[{"event":"a"}, 3]"#, "element 1 of the array"),
            ("{\"event\":", "invalid JSON"),
        ];
        for (body, expected) in cases {
            let err = parse(body).expect_err("invalid");
            assert!(
                err.to_string().contains(expected),
                "{err} should mention {expected}"
            );
        }
    }

    /// The cursor's payload for `body`, checked against `parse_checked`'s.
    fn one_pass(body: &str) -> Option<Payload<'_>> {
        let payload = Cursor::new(body, usize::MAX).payload();
        if let Some(fast) = &payload {
            let checked = parse_checked(body).expect("parse_checked accepts it too");
            assert_eq!(format!("{fast:?}"), format!("{checked:?}"), "{body}");
        }
        payload
    }

    #[test]
    fn arrays_and_batch_objects_are_read_in_one_pass_with_the_same_result() {
        let bodies = [
            r#"[{"event":"a","token":"t"}, {"event":"b","properties":{"token":"t","x":[1]}}]"#,
            r#"{"api_key":"phc_x","batch":[{"event":"a","uuid":"u"}],"sent_at":"2024-01-01T00:00:00Z"}"#,
            r#" { "batch" : [ {"event":"a"} ,{"event":"b"} ] , "historical_migration" : true , "sent_at" : null , "api_key" : "t" } "#,
            r#"{"token":null,"api_key":"t","batch":[{"event":"a","batch":"its own"}],"extra":{"n":1}}"#,
            "[{\"event\":\"caf\u{e9} \\\" \\ud83d\\ude00\"}]",
        ];
        for body in bodies {
            let payload = one_pass(body).unwrap_or_else(|| panic!("one pass: {body}"));
            assert!(!payload.events.is_empty());
        }
        let batch = one_pass(bodies[2]).expect("batch");
        assert_eq!(batch.events[1].raw, r#"{"event":"b"}"#);
        assert_eq!(batch.token.as_deref(), Some("t"));
        assert!(batch.historical_migration);
    }

    #[test]
    fn other_bodies_are_left_to_the_general_parser() {
        for body in [
            r#"{"event":"a","token":"t"}"#,
            r#"{"batch":null,"event":"a"}"#,
            r#"{"api\u005fkey":"t","batch":[{"event":"a"}]}"#,
            r#"{"api_key":"t","api_key":null,"batch":[{"event":"a"}]}"#,
            r#"{"batch":[{"event":"a"}],"batch":[{"event":"b"}]}"#,
            r#"{"batch":[{"event":"a"}],"properties":{}}"#,
            r#"[{"event":"a"},]"#,
            r#"[{"event":"a"}, 3]"#,
            r#"[{"event":"a"}] x"#,
            r#"[{"event":"a","event":"b"}]"#,
            r#"[{"event":"a"}"#,
            "[]",
            r#"{"batch":[]}"#,
            r#"{"api_key":1,"batch":[{"event":"a"}]}"#,
        ] {
            assert!(one_pass(body).is_none(), "{body}");
            // And `parse` answers what `parse_checked` answers.
            let (ours, general) = (parse(body), parse_checked(body));
            match (ours, general) {
                (Ok(ours), Ok(general)) => assert_eq!(format!("{ours:?}"), format!("{general:?}")),
                (Err(ours), Err(general)) => assert_eq!(ours.to_string(), general.to_string()),
                (ours, general) => panic!("{body}: {ours:?} vs {general:?}"),
            }
        }
    }

    fn json_value() -> proptest::strategy::BoxedStrategy<String> {
        one_of(&[
            r#""s""#,
            "null",
            "1",
            "-2.5e3",
            "true",
            "{}",
            r#"{"a":[1,{"b":null}]}"#,
            r#""q\"u\u0041\\""#,
            "[]",
            r#""é""#,
            r#""\ud800""#,
            r#"{"token":"t","distinct_id":"d","$session_id":[1]}"#,
        ])
    }

    fn whitespace() -> proptest::strategy::BoxedStrategy<&'static str> {
        proptest::strategy::Strategy::boxed(proptest::sample::select(vec![
            "", "", " ", "\n", "\t ",
        ]))
    }

    /// One of `values`, or now and then an invalid value.
    fn one_of(values: &[&'static str]) -> proptest::strategy::BoxedStrategy<String> {
        use proptest::prelude::*;
        let invalid = proptest::sample::select(vec![r#""bad\x""#, "{", "tru", "01"]);
        prop_oneof![150 => proptest::sample::select(values.to_vec()), 1 => invalid]
            .prop_map(str::to_owned)
            .boxed()
    }

    /// An object of some of `entries`, in any order, each at most once
    /// except now and then the first one again.
    fn object(
        entries: Vec<(&'static str, proptest::strategy::BoxedStrategy<String>)>,
    ) -> proptest::strategy::BoxedStrategy<String> {
        use proptest::prelude::*;
        let count = entries.len();
        let entry = |(key, value): (&'static str, BoxedStrategy<String>)| {
            (Just(key), value, whitespace(), whitespace()).prop_map(
                |(key, value, before, after)| {
                    format!("{before}\"{key}\"{after}:{before}{value}{after}")
                },
            )
        };
        (
            proptest::sample::subsequence(entries, 0..=count).prop_shuffle(),
            proptest::bool::weighted(0.05),
        )
            .prop_flat_map(move |(mut entries, repeat)| {
                if repeat && !entries.is_empty() {
                    entries.push(entries[0].clone());
                }
                entries.into_iter().map(entry).collect::<Vec<_>>()
            })
            .prop_map(|entries| format!("{{{}}}", entries.join(",")))
            .boxed()
    }

    const TOKENS: &[&str] = &[r#""phc_a""#, r#""phc_b""#, r#""phc_\u0062""#, "null"];

    fn event() -> proptest::strategy::BoxedStrategy<String> {
        use proptest::prelude::*;
        let properties = object(vec![
            ("token", one_of(TOKENS)),
            ("distinct_id", json_value()),
            ("$session_id", json_value()),
            ("y", json_value()),
        ]);
        let entries = vec![
            (
                "event",
                one_of(&[r#""$pageview""#, r#""$exception""#, "null", "1"]),
            ),
            ("distinct_id", json_value()),
            ("$distinct_id", json_value()),
            ("uuid", json_value()),
            (
                "properties",
                prop_oneof![4 => properties, 1 => json_value()].boxed(),
            ),
            ("token", one_of(TOKENS)),
            ("$token", one_of(TOKENS)),
            ("batch", json_value()),
            ("x", json_value()),
        ];
        prop_oneof![20 => object(entries), 1 => json_value()].boxed()
    }

    fn events() -> proptest::strategy::BoxedStrategy<String> {
        use proptest::prelude::*;
        (
            prop::collection::vec(event(), 1..4),
            whitespace(),
            proptest::bool::weighted(0.02),
        )
            .prop_map(|(events, space, trailing_comma)| {
                let comma = if trailing_comma { "," } else { "" };
                format!(
                    "[{space}{}{comma}{space}]",
                    events.join(&format!("{space},"))
                )
            })
            .boxed()
    }

    fn body() -> proptest::strategy::BoxedStrategy<String> {
        use proptest::prelude::*;
        let envelope = object(vec![
            ("api_key", one_of(TOKENS)),
            ("token", one_of(TOKENS)),
            ("t\\u006fken", one_of(TOKENS)),
            (
                "sent_at",
                one_of(&[r#""2024-01-01T00:00:00Z""#, "null", r#""x""#]),
            ),
            (
                "historical_migration",
                one_of(&["true", "false", "null", r#""yes""#]),
            ),
            (
                "batch",
                prop_oneof![10 => events(), 1 => json_value()].boxed(),
            ),
            ("extra", json_value()),
        ]);
        let tail = prop_oneof![20 => Just(""), 1 => Just(" x"), 1 => Just(",")];
        (prop_oneof![events(), envelope], whitespace(), tail)
            .prop_map(|(body, space, tail)| format!("{space}{body}{space}{tail}"))
            .boxed()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        #[test]
        fn one_pass_agrees_with_the_general_parser(body in body()) {
            // `one_pass` asserts agreement whenever the cursor accepts.
            let _ = one_pass(&body);
        }
    }

    #[test]
    fn tokens_come_from_the_batch_the_event_or_its_properties() {
        let from_props = parse(r#"[{"event":"a","properties":{"token":"phc_p"}}]"#).expect("parse");
        assert_eq!(request_token(&from_props).expect("token"), "phc_p");
        let from_dollar = parse(r#"{"event":"a","$token":"phc_d"}"#).expect("parse");
        assert_eq!(request_token(&from_dollar).expect("token"), "phc_d");
        let mixed =
            parse(r#"[{"event":"a","token":"x"},{"event":"b","token":"y"}]"#).expect("parse");
        assert!(matches!(
            request_token(&mixed),
            Err(CaptureError::Token(TokenError::Mixed))
        ));
        let null_key =
            parse(r#"{"api_key":null,"token":"phc_t","batch":[{"event":"a"}]}"#).expect("parse");
        assert_eq!(request_token(&null_key).expect("token"), "phc_t");
        let missing = parse(r#"[{"event":"a"}]"#).expect("parse");
        assert!(matches!(
            request_token(&missing),
            Err(CaptureError::Token(TokenError::Missing))
        ));
        let personal = parse(r#"{"api_key":"phx_1","batch":[{"event":"a"}]}"#).expect("parse");
        assert!(matches!(
            request_token(&personal),
            Err(CaptureError::Token(TokenError::PersonalKey))
        ));
    }
}
