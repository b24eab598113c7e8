//! `capture::parse::parse`, the payload parser, held to two readings.
//!
//! capture has two payload parsers: the one-pass cursor, which `parse`
//! tries first on arrays and batch objects, and `parse_checked`, the
//! general reader that words every error. They must agree: whatever the
//! cursor accepts, `parse_checked` accepts with the same payload, and a
//! body one refuses the other refuses too (a request's answer must not
//! depend on which path read it). So `parse` and `parse_checked` are
//! compared on every input, payload for payload.
//!
//! Both share serde_json's borrowing machinery, so they could share a
//! mistake. The third reading is independent: the body as a
//! `serde_json::Value`, with the payload rules written out again over it
//! (which events there are, the batch token, `historical_migration`, the
//! fields capture reads from each event and its properties). Where `parse`
//! accepts a body, its payload must be the one these rules give; where
//! the rules accept a body and no object repeats a key (capture refuses a
//! repeated field, a `Value` keeps the last), `parse` must accept it.
//!
//! The first byte sets `max_events` (1 to 16, or capture's default of
//! 10,000), so bodies cross the cap; the rest is the decoded body text.

#![no_main]

use std::cell::Cell;
use std::collections::HashSet;

use capture::parse::{Event, Payload, as_str, parse, parse_checked};
use libfuzzer_sys::fuzz_target;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Top-level event fields capture reads (`EventFields`).
const EVENT_FIELDS: [&str; 12] = [
    "event",
    "distinct_id",
    "$distinct_id",
    "uuid",
    "timestamp",
    "offset",
    "token",
    "$token",
    "api_key",
    "batch",
    "sent_at",
    "historical_migration",
];

/// Fields capture reads from `properties` (`PropertyFields`).
const PROPERTY_FIELDS: [&str; 9] = [
    "distinct_id",
    "token",
    "$cookieless_mode",
    "$ignore_sent_at",
    "$session_id",
    "$window_id",
    "$snapshot_source",
    "$snapshot_data",
    "$lib",
];

/// What the rules say a body holds.
struct Expected {
    events: Vec<Value>,
    token: Option<String>,
    sent_at: Option<String>,
    historical_migration: bool,
}

fuzz_target!(|data: &[u8]| {
    let Some((&cap, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let max_events = if cap >= 0xf0 {
        10_000
    } else {
        usize::from(cap % 16) + 1
    };

    let payload = parse(text, max_events);
    let checked = parse_checked(text, max_events);
    match (&payload, &checked) {
        (Ok(fast), Ok(general)) => assert_eq!(
            format!("{fast:?}"),
            format!("{general:?}"),
            "the two parsers read different payloads"
        ),
        (Err(_), Err(_)) => {}
        (fast, general) => panic!(
            "the parsers disagree: parse {:?}, parse_checked {:?}",
            fast.as_ref().map(|p| p.events.len()),
            general.as_ref().map(|p| p.events.len()),
        ),
    }

    let Some(expected) = reference(text, max_events) else {
        return;
    };
    match (&payload, expected) {
        (Ok(payload), Ok(expected)) => same_payload(payload, &expected),
        (Ok(payload), Err(why)) => panic!(
            "parse accepted {} events that the rules refuse: {why}",
            payload.events.len()
        ),
        (Err(err), Ok(_)) => assert!(
            repeats_a_key(text),
            "parse refused a body the rules accept: {err}"
        ),
        (Err(_), Err(_)) => {}
    }
});

/// The payload rules over a `serde_json::Value`; `None` where `Value` is
/// stricter than capture's raw reading and cannot judge: numbers beyond
/// `f64`, lone UTF-16 surrogates in escapes (both kept verbatim in raw
/// text), and nesting past serde_json's recursion limit (decoding caps
/// depth before parsing ever sees it).
fn reference(text: &str, max_events: usize) -> Option<Result<Expected, String>> {
    let value = match serde_json::from_str::<Value>(text) {
        Ok(value) => value,
        Err(err) => {
            let message = err.to_string();
            let cannot_judge = [
                "number out of range",
                "lone leading surrogate",
                "unexpected end of hex escape",
                "invalid unicode code point",
                "recursion limit exceeded",
            ]
            .iter()
            .any(|known| message.contains(known));
            return (!cannot_judge).then(|| Err(format!("not JSON: {message}")));
        }
    };
    Some(expected_payload(value, max_events))
}

fn expected_payload(value: Value, max_events: usize) -> Result<Expected, String> {
    let events = |items: Vec<Value>| {
        if items.is_empty() {
            return Err("no events".to_owned());
        }
        if items.len() > max_events {
            return Err(format!("{} events, over {max_events}", items.len()));
        }
        if items.iter().any(|item| !item.is_object()) {
            return Err("an element is not an object".to_owned());
        }
        Ok(items)
    };
    match value {
        Value::Array(items) => Ok(Expected {
            events: events(items)?,
            token: None,
            sent_at: None,
            historical_migration: false,
        }),
        Value::Object(mut top) => match top.remove("batch") {
            // A single event (its `batch: null`, if any, is left out here
            // and allowed for in `same_event`).
            None | Some(Value::Null) => Ok(Expected {
                events: vec![Value::Object(top)],
                token: None,
                sent_at: None,
                historical_migration: false,
            }),
            Some(Value::Array(items)) => {
                let present = |key: &str| top.get(key).filter(|v| !v.is_null());
                let token = match present("api_key").or(present("token")) {
                    None => None,
                    Some(Value::String(token)) => Some(token.clone()),
                    Some(_) => return Err("the batch token is not a string".to_owned()),
                };
                Ok(Expected {
                    events: events(items)?,
                    token,
                    sent_at: top
                        .get("sent_at")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    historical_migration: top
                        .get("historical_migration")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                })
            }
            Some(_) => Err("`batch` is not an array".to_owned()),
        },
        _ => Err("neither an array nor an object".to_owned()),
    }
}

fn same_payload(payload: &Payload<'_>, expected: &Expected) {
    assert_eq!(payload.events.len(), expected.events.len(), "event count");
    assert_eq!(payload.token, expected.token, "batch token");
    assert_eq!(
        payload.sent_at,
        expected
            .sent_at
            .as_deref()
            .and_then(capture::timestamp::parse),
        "sent_at"
    );
    assert_eq!(
        payload.historical_migration, expected.historical_migration,
        "historical_migration"
    );
    for (event, value) in payload.events.iter().zip(&expected.events) {
        same_event(event, value);
    }
}

fn same_event(event: &Event<'_>, value: &Value) {
    let raw: Value = serde_json::from_str(event.raw).expect("an event's text is JSON");
    // A single event's `batch: null` is in its text but not in `value`.
    let mut without_batch = raw.clone();
    if let Value::Object(map) = &mut without_batch {
        if map.get("batch") == Some(&Value::Null) {
            map.remove("batch");
        }
    }
    assert!(
        &raw == value || &without_batch == value,
        "an event's text is not the event"
    );
    let fields = &event.fields;
    let read = [
        fields.event,
        fields.distinct_id,
        fields.dollar_distinct_id,
        fields.uuid,
        fields.timestamp,
        fields.offset,
        fields.token,
        fields.dollar_token,
        fields.api_key,
        fields.batch,
        fields.sent_at,
        fields.historical_migration,
    ];
    same_fields(&EVENT_FIELDS, &read, &raw);

    let props = &fields.properties;
    let read = [
        props.distinct_id,
        props.token,
        props.cookieless_mode,
        props.ignore_sent_at,
        props.session_id,
        props.window_id,
        props.snapshot_source,
        props.snapshot_data,
        props.lib,
    ];
    let empty = Value::Object(Map::new());
    let properties = raw.get("properties").filter(|p| p.is_object());
    same_fields(&PROPERTY_FIELDS, &read, properties.unwrap_or(&empty));

    // The event's own token: the first of these that is a string.
    let token = [
        raw.get("token"),
        raw.get("$token"),
        raw.get("api_key"),
        properties.and_then(|p| p.get("token")),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_str);
    assert_eq!(fields.token().as_deref(), token, "the event's token");
}

/// Each field read is the object's value under its name, `null` and
/// absent alike being `None`.
fn same_fields(names: &[&str], read: &[Option<&serde_json::value::RawValue>], object: &Value) {
    for (name, raw) in names.iter().zip(read) {
        let expected = object.get(*name).filter(|v| !v.is_null());
        let got = raw
            .map(|raw| serde_json::from_str::<Value>(raw.get()).expect("a field's text is JSON"));
        assert_eq!(got.as_ref(), expected, "field {name}");
        if let (Some(raw), Some(Value::String(text))) = (raw, expected) {
            assert_eq!(
                as_str(raw).as_deref(),
                Some(text.as_str()),
                "{name} as text"
            );
        }
    }
}

/// Whether any object in the document repeats a key.
fn repeats_a_key(text: &str) -> bool {
    let seen = Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    // The document parsed as a `Value` already, so it walks to the end.
    let _ = Walk(&seen).deserialize(&mut deserializer);
    seen.get()
}

/// Walks a document, noting repeated keys.
struct Walk<'a>(&'a Cell<bool>);

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Walk(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key) {
                self.0.set(true);
            }
            map.next_value_seed(Walk(self.0))?;
        }
        Ok(())
    }
}
