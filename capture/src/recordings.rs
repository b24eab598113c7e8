//! Session recordings (`/s`): all snapshots of a request become one
//! `$snapshot_items` message, keyed by the session id so a session's data
//! stays in order on one partition.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::CaptureError;
use crate::event::{CapturedEvent, header};
use crate::parse::{Payload, as_str, request_token};
use crate::process::{RequestContext, check_size, distinct_id, event_time, event_uuid};
use crate::route::DataType;
use crate::timestamp;
use crate::verdict::{Candidate, Candidates};

/// Longest session id accepted.
pub const MAX_SESSION_ID_CHARS: usize = 70;

/// `data` of the one message: a `$snapshot_items` event.
#[derive(Serialize)]
struct SnapshotItems<'a> {
    event: &'static str,
    properties: SnapshotProperties<'a>,
}

#[derive(Serialize)]
struct SnapshotProperties<'a> {
    distinct_id: &'a str,
    #[serde(rename = "$session_id")]
    session_id: &'a str,
    #[serde(rename = "$window_id")]
    window_id: &'a str,
    #[serde(rename = "$snapshot_source")]
    snapshot_source: &'a str,
    #[serde(rename = "$lib", skip_serializing_if = "Option::is_none")]
    lib: Option<&'a str>,
    /// The snapshots, as the client sent them.
    #[serde(rename = "$snapshot_items")]
    items: Vec<&'a RawValue>,
}

/// Builds the one candidate of a recordings request: its one message.
pub fn recording_candidates(
    payload: Payload<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Candidates, CaptureError> {
    let token = request_token(&payload)?;
    ctx.runtime.check_token(&token)?;
    let first = payload
        .events
        .first()
        .ok_or_else(|| CaptureError::Recording("no snapshots".into()))?;
    let invalid = |index: usize| move |reason: String| CaptureError::InvalidEvent { index, reason };
    let properties = &first.fields.properties;
    let text = |raw: Option<&RawValue>| raw.and_then(as_str).map(Cow::into_owned);

    let session_id = text(properties.session_id).ok_or_else(|| {
        CaptureError::Recording("missing `$session_id` in the first event's properties".into())
    })?;
    validate_session_id(&session_id)?;
    let window_id = text(properties.window_id).unwrap_or_else(|| session_id.clone());
    let snapshot_source = text(properties.snapshot_source).unwrap_or_else(|| "web".to_owned());
    let lib = text(properties.lib);
    let distinct_id = distinct_id(&first.fields).map_err(invalid(0))?;
    let uuid = event_uuid(&first.fields).map_err(invalid(0))?;
    let sent_at = payload.sent_at.or(ctx.query_sent_at);
    let ts = event_time(&first.fields, sent_at, false, ctx.now);

    let mut items = Vec::with_capacity(payload.events.len());
    for (index, event) in payload.events.iter().enumerate() {
        let properties = &event.fields.properties;
        if properties
            .session_id
            .is_some_and(|raw| as_str(raw).as_deref() != Some(session_id.as_str()))
        {
            // One message is keyed by one session: mixing would misfile data.
            return Err(CaptureError::Recording(format!(
                "event {index}: `$session_id` differs from the first event's; \
                 send one session per request"
            )));
        }
        match properties.snapshot_data {
            Some(raw) if raw.get().starts_with('[') => {
                let snapshots: Vec<&RawValue> = serde_json::from_str(raw.get())
                    .map_err(|err| invalid(index)(err.to_string()))?;
                items.extend(snapshots);
            }
            Some(raw) if raw.get().starts_with('{') => items.push(raw),
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

    let data = serde_json::to_string(&SnapshotItems {
        event: "$snapshot_items",
        properties: SnapshotProperties {
            distinct_id: &distinct_id,
            session_id: &session_id,
            window_id: &window_id,
            snapshot_source: &snapshot_source,
            lib: lib.as_deref(),
            items,
        },
    })
    .map_err(|err| invalid(0)(err.to_string()))?;

    let captured = CapturedEvent {
        uuid,
        distinct_id: distinct_id.clone(),
        ip: ctx.ip.clone(),
        data: data.into(),
        now: timestamp::format(ctx.now),
        sent_at: sent_at.map(timestamp::format),
        token: token.clone(),
        event: "$snapshot_items".into(),
        timestamp: timestamp::format(ts),
        is_cookieless_mode: false,
        historical_migration: false,
        timestamp_millis: ts.timestamp_millis(),
    };
    let kind = DataType::Recordings;
    let mut topic = Arc::clone(ctx.topics.topic(kind));
    let mut dead_letter = false;
    // Restrictions apply to recordings too (the plugins do not): drop,
    // redirect and the dead-letter route; overflow and skipping person
    // processing mean nothing for a session's snapshots. Only the verdict
    // is taken: the message keeps its text.
    if !ctx.runtime.pipeline.is_empty() {
        let mut ip = ctx.ip.clone();
        let mut event = crate::plugins::Event::new(
            &token,
            "$snapshot_items",
            &distinct_id,
            &mut ip,
            Cow::Borrowed(&*captured.data),
        );
        event.uuid = Some(uuid);
        match ctx.runtime.pipeline.restrict(&mut event) {
            crate::plugins::Verdict::Drop => {
                metrics::counter!(crate::metrics::EVENTS_FILTERED, "by" => crate::plugins::RESTRICTION, "verdict" => "drop")
                    .increment(1);
                return Ok(Candidates {
                    token,
                    events: vec![Candidate::dropped(
                        kind,
                        distinct_id,
                        crate::plugins::RESTRICTION,
                    )],
                    retry: false,
                });
            }
            crate::plugins::Verdict::Topic(to) => topic = to,
            crate::plugins::Verdict::DeadLetter => {
                topic = Arc::clone(&ctx.topics.dlq);
                dead_letter = true;
            }
            crate::plugins::Verdict::Keep
            | crate::plugins::Verdict::Overflow
            | crate::plugins::Verdict::Personless => {}
        }
    }
    let mut message = captured.into_message(kind, topic, Some(session_id.clone()));
    message.headers.push((header::SESSION_ID, session_id));
    if dead_letter {
        crate::event::mark_dead_letter(&mut message, ctx.now);
    }
    check_size(&message, ctx.max_message_bytes)?;
    // Recordings are neither deduplicated nor moved by hot keys: one
    // message per request, keyed by session.
    Ok(Candidates {
        token,
        events: vec![Candidate::new(message, distinct_id, None)],
        retry: false,
    })
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
    use serde_json::{Value, json};

    /// Without a cap on events.
    fn parse(text: &str) -> Result<crate::parse::Payload<'_>, crate::error::CaptureError> {
        crate::parse::parse(text, usize::MAX)
    }
    use crate::process::Endpoint;
    use crate::route::Topics;
    use crate::sink::Message;

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
            dedup_ids: false,
            runtime: crate::live::Applied::empty(),
            historical_after: None,
            warnings: crate::warnings::Warnings::none(),
        };
        let mut candidates = recording_candidates(parse(&body.to_string())?, &ctx)?;
        Ok(candidates
            .events
            .pop()
            .and_then(|e| e.message)
            .expect("one message"))
    }

    #[test]
    fn restrictions_drop_redirect_and_dead_letter_recordings() {
        let document = "version: 1
restrictions:
  - {action: drop, sessionIds: [s-drop]}
  - {action: redirectToDlq, sessionIds: [s-dlq]}
  - {action: redirect, sessionIds: [s-moved], topic: replay_moved}
  - {action: skipPersonProcessing, sessionIds: [s-kept]}
";
        let config = crate::runtime_config::parse(document).expect("valid");
        let topics = Topics::default();
        let applied = crate::live::Applied::new(config, &topics);
        let ctx = RequestContext {
            endpoint: Endpoint::Recordings,
            now: timestamp::parse("2024-01-01T00:00:00Z").expect("time"),
            ip: "127.0.0.1".into(),
            query_sent_at: None,
            topics: &topics,
            max_message_bytes: 1 << 20,
            dedup_ids: false,
            runtime: &applied,
            historical_after: None,
            warnings: crate::warnings::Warnings::none(),
        };
        let one = |session: &str| {
            let body = json!([snapshot(session, json!([{"type": 2}]))]).to_string();
            let mut candidates =
                recording_candidates(parse(&body).expect("parse"), &ctx).expect("valid");
            candidates.events.pop().expect("one candidate")
        };
        let dropped = one("s-drop");
        assert_eq!(
            dropped.verdict,
            crate::verdict::Verdict::Dropped(crate::plugins::RESTRICTION)
        );
        assert!(dropped.message.is_none());
        let dead = one("s-dlq").message.expect("message");
        assert_eq!(&*dead.topic, "events_plugin_ingestion_dlq");
        assert_eq!(dead.key.as_deref(), Some("s-dlq"));
        assert!(
            dead.headers
                .contains(&("dlq_reason", "event_restriction".to_owned()))
        );
        assert_eq!(
            &*one("s-moved").message.expect("message").topic,
            "replay_moved"
        );
        // Person processing means nothing for snapshots: the message is
        // left as it was.
        let kept = one("s-kept").message.expect("message");
        assert_eq!(&*kept.topic, "clickhouse_session_recording_events");
        assert!(!kept.payload.contains("$process_person_profile"));
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
        let value: CapturedEvent<'_> = serde_json::from_str(&message.payload).expect("value");
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
