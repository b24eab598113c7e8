//! The three payload shapes SDKs send, reduced to one [`Payload`].
//!
//! A body is a single event object, an array of events, or a batch object
//! `{api_key|token, batch: [...], sent_at, historical_migration}`. Events stay
//! as JSON objects: capture forwards them as the client sent them, so nothing
//! here drops a field it does not know.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::CaptureError;
use crate::timestamp;
use crate::token::TokenError;

/// One event as the client sent it.
pub type RawEvent = Map<String, Value>;

/// A decoded request body.
#[derive(Debug, Default)]
pub struct Payload {
    /// The events, in request order; never empty.
    pub events: Vec<RawEvent>,
    /// The batch-level token (`api_key` or `token`), if any.
    pub token: Option<String>,
    /// The batch-level `sent_at`, if any and parseable.
    pub sent_at: Option<DateTime<Utc>>,
    /// The batch asked for the historical topic.
    pub historical_migration: bool,
}

/// Parses decoded JSON bytes into a payload.
pub fn parse(bytes: &[u8]) -> Result<Payload, CaptureError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|err| CaptureError::Payload(format!("invalid JSON: {err}")))?;
    let payload = match value {
        Value::Array(items) => Payload {
            events: events_from(items, "the array")?,
            ..Payload::default()
        },
        Value::Object(mut object) => match object.remove("batch") {
            Some(Value::Array(items)) => Payload {
                events: events_from(items, "`batch`")?,
                token: batch_token(&object)?,
                sent_at: object
                    .get("sent_at")
                    .and_then(Value::as_str)
                    .and_then(timestamp::parse),
                historical_migration: object
                    .get("historical_migration")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
            Some(_) => {
                return Err(CaptureError::Payload(
                    "`batch` must be an array of events".into(),
                ));
            }
            None => Payload {
                events: vec![object],
                ..Payload::default()
            },
        },
        _ => {
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

fn events_from(items: Vec<Value>, container: &str) -> Result<Vec<RawEvent>, CaptureError> {
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::Object(event) => Ok(event),
            _ => Err(CaptureError::Payload(format!(
                "element {index} of {container} is not an event object"
            ))),
        })
        .collect()
}

fn batch_token(object: &Map<String, Value>) -> Result<Option<String>, CaptureError> {
    let field = ["api_key", "token"]
        .iter()
        .find_map(|name| object.get(*name).filter(|v| !v.is_null()));
    match field {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(token)) => Ok(Some(token.clone())),
        Some(_) => Err(TokenError::NotAscii.into()),
    }
}

/// The token an event carries itself: `token`, `$token`, `api_key`, or
/// `properties.token`, in that order.
pub fn event_token(event: &RawEvent) -> Option<&str> {
    ["token", "$token", "api_key"]
        .iter()
        .find_map(|field| event.get(*field).and_then(Value::as_str))
        .or_else(|| {
            event
                .get("properties")
                .and_then(|p| p.get("token"))
                .and_then(Value::as_str)
        })
}

/// The one token for the whole request, validated.
pub fn request_token(payload: &Payload) -> Result<String, CaptureError> {
    let token = match &payload.token {
        Some(token) => token.clone(),
        None => {
            let mut tokens = payload.events.iter().map(event_token);
            let first = tokens.next().flatten().ok_or(TokenError::Missing)?;
            if tokens.any(|t| t != Some(first)) {
                return Err(TokenError::Mixed.into());
            }
            first.to_owned()
        }
    };
    crate::token::validate(&token)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_shapes_give_the_same_events() {
        let single = parse(br#"{"event":"a","token":"t"}"#).expect("single");
        let array = parse(br#"[{"event":"a","token":"t"}]"#).expect("array");
        let batch =
            parse(br#"{"api_key":"t","batch":[{"event":"a"}],"sent_at":"2024-01-01T00:00:00Z"}"#)
                .expect("batch");
        assert_eq!(single.events.len(), 1);
        assert_eq!(array.events.len(), 1);
        assert_eq!(batch.events[0]["event"], "a");
        assert_eq!(batch.token.as_deref(), Some("t"));
        assert!(batch.sent_at.is_some());
        assert!(!batch.historical_migration);
    }

    #[test]
    fn historical_migration_is_read_from_the_batch() {
        let batch = parse(br#"{"token":"t","historical_migration":true,"batch":[{"event":"a"}]}"#)
            .expect("batch");
        assert!(batch.historical_migration);
    }

    #[test]
    fn wrong_shapes_name_the_problem() {
        let cases: [(&[u8], &str); 5] = [
            (b"[]", "no events"),
            (b"42", "must be an event object"),
            (br#"{"batch":{}}"#, "`batch` must be an array"),
            (br#"[{"event":"a"}, 3]"#, "element 1 of the array"),
            (b"{\"event\":", "invalid JSON"),
        ];
        for (body, expected) in cases {
            let err = parse(body).expect_err("invalid");
            assert!(
                err.to_string().contains(expected),
                "{err} should mention {expected}"
            );
        }
    }

    #[test]
    fn tokens_come_from_the_batch_the_event_or_its_properties() {
        let from_props =
            parse(br#"[{"event":"a","properties":{"token":"phc_p"}}]"#).expect("parse");
        assert_eq!(request_token(&from_props).expect("token"), "phc_p");
        let from_dollar = parse(br#"{"event":"a","$token":"phc_d"}"#).expect("parse");
        assert_eq!(request_token(&from_dollar).expect("token"), "phc_d");
        let mixed =
            parse(br#"[{"event":"a","token":"x"},{"event":"b","token":"y"}]"#).expect("parse");
        assert!(matches!(
            request_token(&mixed),
            Err(CaptureError::Token(TokenError::Mixed))
        ));
        let null_key =
            parse(br#"{"api_key":null,"token":"phc_t","batch":[{"event":"a"}]}"#).expect("parse");
        assert_eq!(request_token(&null_key).expect("token"), "phc_t");
        let missing = parse(br#"[{"event":"a"}]"#).expect("parse");
        assert!(matches!(
            request_token(&missing),
            Err(CaptureError::Token(TokenError::Missing))
        ));
        let personal = parse(br#"{"api_key":"phx_1","batch":[{"event":"a"}]}"#).expect("parse");
        assert!(matches!(
            request_token(&personal),
            Err(CaptureError::Token(TokenError::PersonalKey))
        ));
    }
}
