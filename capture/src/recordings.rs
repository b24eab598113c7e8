//! Session recordings (`/s`): all snapshots of a request become one
//! `$snapshot_items` message, keyed by the session id so a session's data
//! stays in order on one partition.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::error::CaptureError;
use crate::event::{CapturedEvent, header};
use crate::parse::{Payload, request_token};
use crate::process::{RequestContext, check_size, distinct_id, event_uuid};
use crate::route::DataType;
use crate::sink::Message;
use crate::timestamp::{self, ClientTime};

/// Longest session id accepted.
pub const MAX_SESSION_ID_CHARS: usize = 70;

/// Builds the one message for a recordings request.
pub fn recording_message(
    payload: Payload,
    ctx: &RequestContext<'_>,
) -> Result<Message, CaptureError> {
    let token = request_token(&payload)?;
    let first = payload
        .events
        .first()
        .ok_or_else(|| CaptureError::Recording("no snapshots".into()))?;
    let properties = first.get("properties").and_then(Value::as_object);
    let text = |key: &str| properties.and_then(|p| p.get(key)).and_then(Value::as_str);

    let session_id = text("$session_id")
        .ok_or_else(|| {
            CaptureError::Recording("missing `$session_id` in the first event's properties".into())
        })?
        .to_owned();
    validate_session_id(&session_id)?;
    let window_id = text("$window_id").unwrap_or(&session_id).to_owned();
    let snapshot_source = text("$snapshot_source").unwrap_or("web").to_owned();
    let lib = text("$lib").map(str::to_owned);
    let distinct_id =
        distinct_id(first).map_err(|reason| CaptureError::InvalidEvent { index: 0, reason })?;
    let uuid =
        event_uuid(first).map_err(|reason| CaptureError::InvalidEvent { index: 0, reason })?;
    let sent_at = payload.sent_at.or(ctx.query_sent_at);
    let ts = timestamp::resolve(
        ClientTime {
            timestamp: first.get("timestamp").and_then(Value::as_str),
            offset: first.get("offset").and_then(Value::as_i64),
            sent_at,
            ignore_sent_at: false,
        },
        ctx.now,
    );

    let mut items = Vec::with_capacity(payload.events.len());
    for (index, mut event) in payload.events.into_iter().enumerate() {
        let properties = event.get_mut("properties").and_then(Value::as_object_mut);
        let session = properties.as_ref().and_then(|p| p.get("$session_id"));
        if session.is_some_and(|s| s.as_str() != Some(&session_id)) {
            // One message is keyed by one session: mixing would misfile data.
            return Err(CaptureError::Recording(format!(
                "event {index}: `$session_id` differs from the first event's; \
                 send one session per request"
            )));
        }
        let data = properties.and_then(|p| p.remove("$snapshot_data"));
        match data {
            Some(Value::Array(snapshots)) => items.extend(snapshots),
            Some(snapshot @ Value::Object(_)) => items.push(snapshot),
            _ => {
                return Err(CaptureError::Recording(format!(
                    "event {index}: missing `$snapshot_data` (an array or object of snapshots)"
                )));
            }
        }
    }

    if items.is_empty() {
        return Err(CaptureError::Recording(
            "`$snapshot_data` holds no snapshots".into(),
        ));
    }

    let mut properties = Map::new();
    properties.insert("distinct_id".into(), Value::String(distinct_id.clone()));
    properties.insert("$session_id".into(), Value::String(session_id.clone()));
    properties.insert("$window_id".into(), Value::String(window_id));
    properties.insert("$snapshot_source".into(), Value::String(snapshot_source));
    if let Some(lib) = lib {
        properties.insert("$lib".into(), Value::String(lib));
    }
    properties.insert("$snapshot_items".into(), Value::Array(items));
    let data = json!({"event": "$snapshot_items", "properties": properties}).to_string();

    let captured = CapturedEvent {
        uuid,
        distinct_id,
        ip: ctx.ip.clone(),
        data,
        now: timestamp::format(ctx.now),
        sent_at: sent_at.map(timestamp::format),
        token,
        event: "$snapshot_items".into(),
        timestamp: timestamp::format(ts),
        is_cookieless_mode: false,
    };
    let kind = DataType::Recordings;
    let mut message = captured.into_message(
        kind,
        Arc::clone(ctx.topics.topic(kind)),
        Some(session_id.clone()),
    );
    message.headers.push((header::SESSION_ID, session_id));
    check_size(&message, ctx.max_message_bytes)?;
    Ok(message)
}

fn validate_session_id(session_id: &str) -> Result<(), CaptureError> {
    if session_id.is_empty() || session_id.len() > MAX_SESSION_ID_CHARS {
        return Err(CaptureError::Recording(format!(
            "`$session_id` must be 1 to {MAX_SESSION_ID_CHARS} characters long"
        )));
    }
    if !session_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(CaptureError::Recording(
            "`$session_id` may only contain letters, digits and '-'".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::parse::parse;
    use crate::process::Endpoint;
    use crate::route::Topics;

    use super::*;

    fn run(body: Value, max_message_bytes: usize) -> Result<Message, CaptureError> {
        let topics = Topics::default();
        let ctx = RequestContext {
            endpoint: Endpoint::Recordings,
            now: timestamp::parse("2024-01-01T00:00:00Z").expect("time"),
            ip: "127.0.0.1".into(),
            query_sent_at: None,
            topics: &topics,
            max_message_bytes,
        };
        recording_message(parse(body.to_string().as_bytes())?, &ctx)
    }

    fn snapshot(session: &str, data: Value) -> Value {
        json!({"event": "$snapshot", "distinct_id": "u", "token": "phc_t",
               "properties": {"$session_id": session, "$snapshot_data": data}})
    }

    #[test]
    fn snapshots_of_a_request_become_one_message_keyed_by_session() {
        let message = run(
            json!([
                snapshot("s-1", json!([{"type": 2}, {"type": 3}])),
                snapshot("s-1", json!({"type": 4}))
            ]),
            1 << 20,
        )
        .expect("valid");
        assert_eq!(&*message.topic, "clickhouse_session_recording_events");
        assert_eq!(message.key.as_deref(), Some("s-1"));
        assert!(message.headers.contains(&("session_id", "s-1".to_owned())));
        let value: CapturedEvent = serde_json::from_str(&message.payload).expect("value");
        let data: Value = serde_json::from_str(&value.data).expect("data");
        assert_eq!(data["event"], "$snapshot_items");
        assert_eq!(
            data["properties"]["$snapshot_items"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
        assert_eq!(data["properties"]["$window_id"], "s-1");
    }

    #[test]
    fn missing_or_invalid_session_ids_are_refused() {
        let missing = json!({"event": "$snapshot", "distinct_id": "u", "token": "phc_t",
                             "properties": {"$snapshot_data": []}});
        assert!(
            run(missing, 1 << 20)
                .expect_err("missing")
                .to_string()
                .contains("$session_id")
        );
        for bad in ["has space", "semi;colon", &"a".repeat(71)] {
            let err = run(snapshot(bad, json!([])), 1 << 20).expect_err("invalid");
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
        let no_data = json!({"event": "$snapshot", "distinct_id": "u", "token": "phc_t",
                             "properties": {"$session_id": "s"}});
        assert!(
            run(no_data, 1 << 20)
                .expect_err("no data")
                .to_string()
                .contains("$snapshot_data")
        );
    }

    #[test]
    fn one_session_per_request_with_at_least_one_snapshot() {
        let mixed = json!([
            snapshot("s-1", json!([{"type": 2}])),
            snapshot("s-2", json!([{"type": 3}]))
        ]);
        let err = run(mixed, 1 << 20).expect_err("two sessions");
        assert!(err.to_string().contains("event 1"), "{err}");
        let empty = run(snapshot("s-1", json!([])), 1 << 20).expect_err("nothing to store");
        assert!(empty.to_string().contains("no snapshots"), "{empty}");
    }

    #[test]
    fn recordings_over_the_message_limit_are_too_large() {
        let err = run(snapshot("s", json!([{"blob": "x".repeat(5000)}])), 1000).expect_err("big");
        assert_eq!(err.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    }
}
