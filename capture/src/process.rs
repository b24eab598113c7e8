//! Validation and enrichment: from a [`Payload`] to the events' candidates
//! (see [`crate::verdict`]), each with the message to produce.
//!
//! Every event of a request is checked before any message is built, so a
//! request is either accepted whole or refused whole: a 400 never leaves half
//! a batch in Kafka. Enrichment adds what the server knows (its clock, the
//! client IP, a uuid when the client sent none) and never rewrites what the
//! client sent, which travels on untouched in `data`.

use std::sync::Arc;

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::CaptureError;
use crate::event::CapturedEvent;
use crate::parse::{EventFields, Payload, as_bool, as_i64, as_str, present, request_token};
use crate::plugins::{self, Event};
use crate::route::{DataType, Topics};
use crate::sink::Message;
use crate::timestamp::{self, ClientTime};
use crate::verdict::{Candidate, Candidates, DedupId, Verdict};

/// Longest distinct id kept, in characters; longer ones are truncated.
pub const MAX_DISTINCT_ID_CHARS: usize = 200;

/// What drops an event larger than `--max-message-bytes` on the v1
/// endpoint (its result's `details`).
pub const EVENT_TOO_BIG: &str = "event_too_big";

/// Which family of endpoint received the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/e`, `/capture`, `/track`, `/i/v0/e`.
    Event,
    /// `/batch`.
    Batch,
    /// `/engage`: events without a name are `$identify`.
    Engage,
    /// `/s`: session recordings.
    Recordings,
    /// `/i/v1/analytics/events`: PostHog's v1 protocol, answered per event
    /// (see [`crate::v1`]).
    V1,
}

impl Endpoint {
    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Event => "event",
            Endpoint::Batch => "batch",
            Endpoint::Engage => "engage",
            Endpoint::Recordings => "recordings",
            Endpoint::V1 => "v1",
        }
    }
}

/// What the server knows about the request, beyond its body.
#[derive(Debug, Clone)]
pub struct RequestContext<'a> {
    /// Which endpoint received it.
    pub endpoint: Endpoint,
    /// Server time at arrival.
    pub now: DateTime<Utc>,
    /// The client's IP address.
    pub ip: String,
    /// `sent_at` from the `_` query parameter, if any.
    pub query_sent_at: Option<DateTime<Utc>>,
    /// Topic names.
    pub topics: &'a Topics,
    /// Largest message value accepted, in bytes.
    pub max_message_bytes: usize,
    /// Whether to record each event's client id for deduplication (only
    /// when dedup is on: it costs a string per event).
    pub dedup_ids: bool,
    /// The runtime config in force for this request.
    pub runtime: &'a crate::live::Applied,
    /// Analytics events older than this go to the historical topic
    /// (`--historical-after`).
    pub historical_after: Option<chrono::Duration>,
    /// Where capture's own ingestion warnings go.
    pub warnings: &'a crate::warnings::Warnings,
}

/// Builds one candidate per analytics event of the payload: its message,
/// or, when a plugin dropped it, the reason.
pub fn analytics_candidates(
    payload: Payload<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Candidates, CaptureError> {
    let token = request_token(&payload)?;
    ctx.runtime.check_token(&token)?;
    let sent_at = payload.sent_at.or(ctx.query_sent_at);
    let now_text = timestamp::format(ctx.now);
    let sent_at_text = sent_at.map(timestamp::format);
    let mut events = Vec::with_capacity(payload.events.len());
    for (index, event) in payload.events.iter().enumerate() {
        let invalid = |reason: String| {
            let details = serde_json::json!({"index": index, "reason": reason});
            warn(ctx, &token, "invalid_event", details);
            CaptureError::InvalidEvent { index, reason }
        };
        let fields = &event.fields;
        let properties = &fields.properties;
        let (name, data) = match event_name(fields, ctx.endpoint).map_err(invalid)? {
            Some(name) => (name.into_owned(), Cow::Borrowed(event.raw)),
            None => (
                "$identify".to_owned(),
                Cow::Owned(named_identify(event.raw).map_err(invalid)?),
            ),
        };
        // PostHog's ingestion reads the team from `data` before the token:
        // a client must not pick another team's.
        let data = if fields.team_id.is_some() {
            Cow::Owned(without_fields(&data, &["team_id"]).map_err(invalid)?)
        } else {
            data
        };
        let distinct_id = distinct_id(fields).map_err(invalid)?;
        let uuid = event_uuid(fields).map_err(invalid)?;
        let flag = |raw: Option<&RawValue>| raw.and_then(as_bool) == Some(true);
        let ts = event_time(fields, sent_at, flag(properties.ignore_sent_at), ctx.now);
        let mut kind = DataType::for_event(&name, payload.historical_migration);
        if kind == DataType::Events && ctx.historical_after.is_some_and(|age| ts < ctx.now - age) {
            kind = DataType::Historical;
        }
        let mut topic = Arc::clone(ctx.topics.topic(kind));
        let mut keyed = true;
        let mut verdict = Verdict::Accepted;
        let mut ip = ctx.ip.clone();
        let data = if ctx.runtime.pipeline.is_empty() {
            data
        } else {
            let mut event = Event::new(&token, &name, &distinct_id, &mut ip, data);
            event.uuid = Some(uuid);
            let (decision, by) = ctx.runtime.pipeline.run(&mut event);
            let data = event.into_body();
            let dropped = decision == plugins::Verdict::Drop;
            let label = match decision {
                plugins::Verdict::Keep => None,
                plugins::Verdict::Drop => Some("drop"),
                plugins::Verdict::Overflow => {
                    kind = DataType::Overflow;
                    topic = Arc::clone(&ctx.topics.overflow);
                    keyed = false;
                    verdict = Verdict::Overflowed;
                    Some("overflow")
                }
                plugins::Verdict::Topic(to) => {
                    topic = to;
                    verdict = Verdict::Rerouted;
                    Some("redirect")
                }
                plugins::Verdict::Personless => {
                    keyed = false;
                    None
                }
                plugins::Verdict::DeadLetter => {
                    kind = DataType::DeadLetter;
                    topic = Arc::clone(&ctx.topics.dlq);
                    verdict = Verdict::Rerouted;
                    Some("dead_letter")
                }
            };
            if let Some(label) = label {
                metrics::counter!(crate::metrics::EVENTS_FILTERED, "by" => by, "verdict" => label)
                    .increment(1);
            }
            if dropped {
                if by == plugins::RESTRICTION {
                    warn(
                        ctx,
                        &token,
                        "event_restricted",
                        serde_json::json!({"event": name}),
                    );
                }
                events.push(Candidate::dropped(kind, distinct_id, by));
                continue;
            }
            data
        };
        let dedup = if !ctx.dedup_ids {
            None
        } else if present(fields.uuid).is_some() {
            Some(uuid.to_string())
        } else {
            fields.timestamp.and_then(as_str).map(Cow::into_owned)
        }
        .map(|id| DedupId {
            event: name.clone(),
            id,
        });
        let captured = CapturedEvent {
            uuid,
            distinct_id: distinct_id.clone(),
            ip,
            data,
            now: now_text.clone(),
            sent_at: sent_at_text.clone(),
            token: token.clone(),
            event: name,
            timestamp: timestamp::format(ts),
            is_cookieless_mode: flag(properties.cookieless_mode),
            historical_migration: payload.historical_migration,
            timestamp_millis: ts.timestamp_millis(),
        };
        let key = keyed.then(|| captured.key());
        let mut message = captured.into_message(kind, topic, key);
        if kind == DataType::DeadLetter {
            crate::event::mark_dead_letter(&mut message, ctx.now);
        }
        if let Err(err) = check_size(&message, ctx.max_message_bytes) {
            let details = serde_json::json!({"event": message_name(&message), "bytes": message.payload.len()});
            warn(ctx, &token, EVENT_TOO_BIG, details);
            // v1 answers per event: this one is dropped, the others go on.
            if ctx.endpoint != Endpoint::V1 {
                return Err(err);
            }
            events.push(Candidate::dropped(kind, distinct_id, EVENT_TOO_BIG));
            continue;
        }
        let mut candidate = Candidate::new(message, distinct_id, dedup);
        candidate.verdict = verdict;
        events.push(candidate);
    }
    Ok(Candidates {
        token,
        events,
        retry: false,
    })
}

/// Writes one of capture's ingestion warnings about `token`'s events.
fn warn(ctx: &RequestContext<'_>, token: &str, kind: &'static str, details: serde_json::Value) {
    let topic = &ctx.topics.client_warnings;
    ctx.warnings.warn(token, kind, details, topic, ctx.now);
}

/// The event name a message carries in its headers.
fn message_name(message: &Message) -> &str {
    message
        .headers
        .iter()
        .find(|(name, _)| *name == crate::event::header::EVENT)
        .map_or("", |(_, value)| value.as_str())
}

/// The event's time from its `timestamp` and `offset`, corrected by the
/// request's `sent_at` unless `ignore_sent_at`.
pub fn event_time(
    fields: &EventFields<'_>,
    sent_at: Option<DateTime<Utc>>,
    ignore_sent_at: bool,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let client_timestamp = fields.timestamp.and_then(as_str);
    let client = ClientTime {
        timestamp: client_timestamp.as_deref(),
        offset: fields.offset.and_then(as_i64),
        sent_at,
        ignore_sent_at,
    };
    timestamp::resolve(client, now)
}

/// Refuses a message the sink could not take anyway.
pub fn check_size(message: &Message, max: usize) -> Result<(), CaptureError> {
    if message.payload.len() > max {
        return Err(CaptureError::TooLarge(format!(
            "an event of {} bytes exceeds the maximum message size of {max} bytes",
            message.payload.len()
        )));
    }
    Ok(())
}

/// The event name, or `None` for an unnamed `/engage` event, which is
/// named `$identify`.
fn event_name<'a>(
    fields: &EventFields<'a>,
    endpoint: Endpoint,
) -> Result<Option<Cow<'a, str>>, String> {
    match present(fields.event) {
        Some(raw) => match as_str(raw) {
            Some(name) if name.is_empty() => Err("`event` name is empty".into()),
            Some(name) => Ok(Some(name)),
            None => Err("`event` name must be a string".into()),
        },
        None if endpoint == Endpoint::Engage => Ok(None),
        None => Err("missing `event` name".into()),
    }
}

/// `data` for an unnamed `/engage` event: the event with `"event":
/// "$identify"` added. The only path that rebuilds the client's JSON.
fn named_identify(raw: &str) -> Result<String, String> {
    let mut event: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(raw).map_err(|err| err.to_string())?;
    event.insert("event".into(), "$identify".into());
    serde_json::to_string(&event).map_err(|err| err.to_string())
}

/// The JSON object `raw` without its top-level members named in `fields`
/// (every copy of each); the other members keep their text and order.
pub fn without_fields(raw: &str, fields: &[&str]) -> Result<String, String> {
    struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);
    impl<'de> serde::Deserialize<'de> for Members<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Members<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an event object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Self::Value, A::Error> {
                    let mut members = Vec::new();
                    while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                        members.push((key, map.next_value::<&'de RawValue>()?));
                    }
                    Ok(Members(members))
                }
            }
            deserializer.deserialize_map(Visit)
        }
    }
    let Members(members) = serde_json::from_str(raw).map_err(|err| err.to_string())?;
    let mut out = String::with_capacity(raw.len());
    out.push('{');
    for (key, value) in members.iter().filter(|(key, _)| !fields.contains(&&**key)) {
        if out.len() > 1 {
            out.push(',');
        }
        crate::event::push_json_str(&mut out, key);
        out.push(':');
        out.push_str(value.get());
    }
    out.push('}');
    Ok(out)
}

/// The distinct id from the event or its properties, as a clean string.
pub fn distinct_id(fields: &EventFields<'_>) -> Result<String, String> {
    let raw = present(fields.distinct_id)
        .or(present(fields.dollar_distinct_id))
        .or(present(fields.properties.distinct_id))
        .ok_or("missing `distinct_id` (in the event or its properties)")?;
    // Any other JSON value is kept as its JSON text (42, true, {"a":1}).
    let text = as_str(raw).unwrap_or(Cow::Borrowed(raw.get()));
    if text.trim().is_empty() {
        return Err("`distinct_id` is empty".into());
    }
    let end = text
        .char_indices()
        .nth(MAX_DISTINCT_ID_CHARS)
        .map_or(text.len(), |(cut, _)| cut);
    Ok(text[..end].replace('\0', "\u{FFFD}"))
}

/// The client's uuid, or a new UUIDv7.
pub fn event_uuid(fields: &EventFields<'_>) -> Result<Uuid, String> {
    match present(fields.uuid) {
        None => Ok(Uuid::now_v7()),
        Some(raw) => match as_str(raw) {
            Some(text) => {
                Uuid::parse_str(&text).map_err(|_| format!("`uuid` is not a valid UUID: {text:?}"))
            }
            None => Err("`uuid` must be a string".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Without a cap on events.
    fn parse(text: &str) -> Result<crate::parse::Payload<'_>, crate::error::CaptureError> {
        crate::parse::parse(text, usize::MAX)
    }

    fn ctx(topics: &Topics, endpoint: Endpoint) -> RequestContext<'_> {
        RequestContext {
            endpoint,
            now: timestamp::parse("2024-01-01T12:00:00Z").expect("time"),
            ip: "10.0.0.1".into(),
            query_sent_at: None,
            topics,
            max_message_bytes: 1 << 20,
            dedup_ids: true,
            runtime: crate::live::Applied::empty(),
            historical_after: None,
            warnings: crate::warnings::Warnings::none(),
        }
    }

    fn run(body: serde_json::Value, endpoint: Endpoint) -> Result<Vec<Message>, CaptureError> {
        let topics = Topics::default();
        let text = body.to_string();
        analytics_candidates(parse(&text)?, &ctx(&topics, endpoint)).map(messages)
    }

    fn messages(candidates: Candidates) -> Vec<Message> {
        candidates
            .events
            .into_iter()
            .filter_map(|e| e.message)
            .collect()
    }

    fn value(message: &Message) -> CapturedEvent<'static> {
        serde_json::from_str(&message.payload).expect("message value parses")
    }

    #[test]
    fn events_are_routed_by_name_and_keyed_by_token_and_distinct_id() {
        let messages = run(
            json!({"api_key": "phc_t", "batch": [
                {"event": "$pageview", "distinct_id": "u1"},
                {"event": "$exception", "distinct_id": "u1"},
                {"event": "$$client_ingestion_warning", "distinct_id": "u1"},
                {"event": "$$heatmap", "distinct_id": "u1"},
            ]}),
            Endpoint::Batch,
        )
        .expect("valid");
        let topics: Vec<_> = messages.iter().map(|m| m.topic.to_string()).collect();
        assert_eq!(
            topics,
            [
                "clickhouse_events",
                "exceptions",
                "client_warnings",
                "heatmaps_ingestion"
            ]
        );
        assert_eq!(messages[3].key.as_deref(), Some("phc_t:u1"));
        assert_eq!(messages[0].key.as_deref(), Some("phc_t:u1"));
    }

    #[test]
    fn distinct_ids_are_stringified_cleaned_and_truncated() {
        let long = "x".repeat(300);
        let cases = [
            (json!({"distinct_id": 42}), "42".to_owned()),
            (json!({"distinct_id": true}), "true".to_owned()),
            (json!({"$distinct_id": "d"}), "d".to_owned()),
            (json!({"properties": {"distinct_id": "p"}}), "p".to_owned()),
            (json!({"distinct_id": "a\u{0}b"}), "a\u{FFFD}b".to_owned()),
            (json!({"distinct_id": long}), "x".repeat(200)),
        ];
        let distinct = |event: serde_json::Value| {
            let text = event.to_string();
            let fields: EventFields<'_> = serde_json::from_str(&text).expect("fields");
            distinct_id(&fields)
        };
        for (event, expected) in cases {
            assert_eq!(distinct(event).expect("valid"), expected);
        }
        for bad in [
            json!({}),
            json!({"distinct_id": null}),
            json!({"distinct_id": "  "}),
        ] {
            assert!(distinct(bad).is_err());
        }
    }

    #[test]
    fn data_is_the_events_text_exactly_as_sent() {
        let topics = Topics::default();
        let event = r#"{ "z": 1, "event":"e" ,"distinct_id":"d","n":12345678901234567890123,"s":"\u00e9\/","token":"phc_t"}"#;
        let body = format!("[{event} ]");
        let messages = messages(
            analytics_candidates(parse(&body).expect("parse"), &ctx(&topics, Endpoint::Event))
                .expect("valid"),
        );
        assert_eq!(value(&messages[0]).data, event);
    }

    #[test]
    fn dedup_ids_are_the_clients_uuid_else_its_timestamp() {
        let topics = Topics::default();
        let uuid = "0190b0e1-0000-7000-8000-000000000001";
        let body = json!({"api_key": "phc_t", "batch": [
            {"event": "a", "distinct_id": "u", "uuid": uuid, "timestamp": "2024-01-01T00:00:00Z"},
            {"event": "b", "distinct_id": "u", "timestamp": "2024-01-01T00:00:01Z"},
            {"event": "c", "distinct_id": "u"},
        ]})
        .to_string();
        let ids = |candidates: Candidates| -> Vec<Option<(String, String)>> {
            candidates
                .events
                .into_iter()
                .map(|e| e.dedup.map(|d| (d.event, d.id)))
                .collect()
        };
        let prepared =
            analytics_candidates(parse(&body).expect("parse"), &ctx(&topics, Endpoint::Batch))
                .expect("valid");
        assert_eq!(
            ids(prepared),
            [
                Some(("a".to_owned(), uuid.to_owned())),
                Some(("b".to_owned(), "2024-01-01T00:00:01Z".to_owned())),
                None
            ]
        );
        let without = RequestContext {
            dedup_ids: false,
            ..ctx(&topics, Endpoint::Batch)
        };
        let prepared = analytics_candidates(parse(&body).expect("parse"), &without).expect("valid");
        assert_eq!(
            ids(prepared),
            [None, None, None],
            "no ids collected when dedup is off"
        );
    }

    #[test]
    fn a_bad_event_refuses_the_whole_request_and_names_its_position() {
        let err = run(
            json!({"api_key": "phc_t", "batch": [
                {"event": "ok", "distinct_id": "u"},
                {"event": "no id"},
            ]}),
            Endpoint::Batch,
        )
        .expect_err("second event invalid");
        assert_eq!(
            err.to_string(),
            "event 1: missing `distinct_id` (in the event or its properties)"
        );
    }

    #[test]
    fn a_team_id_in_the_event_never_reaches_data_and_the_rest_keeps_its_text() {
        let messages = run(
            json!({"api_key": "phc_t", "batch": [
                {"event": "e", "distinct_id": "u", "team_id": 1, "properties": {"team_id": 7}},
                {"event": "f", "distinct_id": "u"},
            ]}),
            Endpoint::Batch,
        )
        .expect("valid");
        let data: serde_json::Value =
            serde_json::from_str(&value(&messages[0]).data).expect("data");
        assert_eq!(
            data,
            json!({"event": "e", "distinct_id": "u", "properties": {"team_id": 7}}),
            "only the top-level team_id goes"
        );
        let text = r#"{"n":12345678901234567890123, "team_id":2,"s":"\u00e9","team_id":3}"#;
        assert_eq!(
            without_fields(text, &["team_id"]).expect("object"),
            r#"{"n":12345678901234567890123,"s":"\u00e9"}"#
        );
    }

    #[test]
    fn engage_names_unnamed_events_identify_in_the_value_and_data() {
        let messages = run(
            json!({"$token": "phc_t", "$distinct_id": "u", "$set": {"a": 1}}),
            Endpoint::Engage,
        )
        .expect("valid");
        let captured = value(&messages[0]);
        assert_eq!(captured.event, "$identify");
        let data: serde_json::Value = serde_json::from_str(&captured.data).expect("data");
        assert_eq!(data["event"], "$identify");
        let err = run(
            json!({"$token": "phc_t", "$distinct_id": "u"}),
            Endpoint::Event,
        )
        .expect_err("no name");
        assert!(err.to_string().contains("missing `event`"));
    }

    #[test]
    fn client_uuid_is_kept_and_a_v7_is_made_otherwise() {
        let id = "018a981f-4b35-7c66-825e-8b0eeae65714";
        let messages = run(json!([{"event": "e", "distinct_id": "u", "token": "phc_t", "uuid": id}, {"event": "e", "distinct_id": "u", "token": "phc_t"}]), Endpoint::Event)
            .expect("valid");
        assert_eq!(value(&messages[0]).uuid.to_string(), id);
        assert_eq!(value(&messages[1]).uuid.get_version_num(), 7);
        let err = run(
            json!({"event": "e", "distinct_id": "u", "token": "phc_t", "uuid": "nope"}),
            Endpoint::Event,
        )
        .expect_err("bad uuid");
        assert!(err.to_string().contains("not a valid UUID"));
    }

    #[test]
    fn cookieless_events_are_keyed_by_ip() {
        let messages = run(
            json!({"event": "e", "distinct_id": "$posthog_cookieless", "token": "phc_t", "properties": {"$cookieless_mode": true}}),
            Endpoint::Event,
        )
        .expect("valid");
        assert_eq!(messages[0].key.as_deref(), Some("phc_t:10.0.0.1"));
        assert!(value(&messages[0]).is_cookieless_mode);
    }

    #[test]
    fn historical_batches_go_to_the_historical_topic() {
        let messages = run(
            json!({"api_key": "phc_t", "historical_migration": true, "batch": [{"event": "e", "distinct_id": "u"}]}),
            Endpoint::Batch,
        )
        .expect("valid");
        assert_eq!(&*messages[0].topic, "historical_events");
    }

    #[test]
    fn old_events_go_to_the_historical_topic_when_asked() {
        let topics = Topics::default();
        let body = json!({"api_key": "phc_t", "batch": [
            {"event": "old", "distinct_id": "u", "timestamp": "2023-12-30T11:59:59Z"},
            {"event": "recent", "distinct_id": "u", "timestamp": "2024-01-01T11:00:00Z"},
            {"event": "$exception", "distinct_id": "u", "timestamp": "2023-01-01T00:00:00Z"},
        ]})
        .to_string();
        let routed = |after: Option<chrono::Duration>| -> Vec<String> {
            let ctx = RequestContext {
                historical_after: after,
                ..ctx(&topics, Endpoint::Batch)
            };
            messages(analytics_candidates(parse(&body).expect("parse"), &ctx).expect("valid"))
                .iter()
                .map(|m| m.topic.to_string())
                .collect()
        };
        assert_eq!(
            routed(Some(chrono::Duration::days(1))),
            ["historical_events", "clickhouse_events", "exceptions"],
            "older than a day: historical; exceptions keep their topic"
        );
        assert_eq!(
            routed(None),
            ["clickhouse_events", "clickhouse_events", "exceptions"]
        );
    }

    #[test]
    fn oversized_events_are_refused_as_too_large() {
        let topics = Topics::default();
        let big = "x".repeat(2000);
        let text =
            json!({"event": "e", "distinct_id": "u", "token": "phc_t", "properties": {"big": big}})
                .to_string();
        let payload = parse(&text).expect("parse");
        let small = RequestContext {
            max_message_bytes: 1000,
            ..ctx(&topics, Endpoint::Event)
        };
        let err = analytics_candidates(payload, &small).expect_err("too large");
        assert_eq!(err.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    }
}
