//! PostHog's v1 capture protocol: `POST /i/v1/analytics/events`.
//!
//! The SDKs' second wire protocol (posthog-python's `capture_mode="v1"`,
//! posthog-node's `POSTHOG_CAPTURE_MODE=v1`) sends a batch with its token
//! in `Authorization: Bearer`, describes itself in `PostHog-*` headers, and
//! reads a result per event: `ok`, `warning`, `drop`, or `retry` for the
//! events to send again. An SDK resends only those, with the same
//! `PostHog-Request-Id` and the next `PostHog-Attempt`, so a half-failed
//! batch no longer duplicates its other half.
//!
//! This module holds the protocol's own rules: the headers, the body's
//! strict schema and each event's checks, and the rendering of results. A
//! checked event becomes the v0 event PostHog's v1 capture makes of it
//! ([`Checked::v0_text`]: `session_id`, `window_id`, the options, `$lib` and
//! `$lib_version` moved into its properties), and from there it takes the
//! same path as every other event (plugins, policies, sink), whose
//! verdicts [`result_of`] turns into results.

use std::borrow::Cow;
use std::fmt::Write as _;

use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::decode::ContentEncoding;
use crate::error::CaptureError;
use crate::event::push_json_str;
use crate::verdict::Verdict;

/// The v1 analytics endpoint; also served with a trailing slash.
pub const PATH: &str = "/i/v1/analytics/events";

/// `PostHog-Sdk-Info`: `<$lib>/<$lib_version>`.
pub const SDK_INFO: &str = "posthog-sdk-info";
/// `PostHog-Attempt`: 1 for the first send, one more for each retry.
pub const ATTEMPT: &str = "posthog-attempt";
/// `PostHog-Request-Id`: the batch's UUID, the same on every attempt.
pub const REQUEST_ID: &str = "posthog-request-id";
/// `PostHog-Request-Timestamp`: the client's clock when it sent this
/// attempt (RFC 3339); the events' `sent_at`.
pub const REQUEST_TIMESTAMP: &str = "posthog-request-timestamp";

/// Longest event name and distinct id, in bytes, as PostHog's v1 capture
/// allows.
const MAX_NAME_BYTES: usize = 200;
/// Longest `PostHog-Sdk-Info` read for `$lib`.
const MAX_SDK_INFO_BYTES: usize = 200;

/// What a v1 request's headers say.
#[derive(Debug, Clone, PartialEq)]
pub struct Headers {
    /// The project token, from `Authorization: Bearer`.
    pub token: String,
    /// `$lib` and `$lib_version`, from `PostHog-Sdk-Info` when it is well
    /// formed (a malformed one is ignored, as PostHog does).
    pub lib: Option<(String, String)>,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The batch's id, the same on every attempt.
    pub request_id: Uuid,
    /// The client's send time.
    pub sent_at: DateTime<Utc>,
    /// How the body is compressed.
    pub encoding: ContentEncoding,
}

fn invalid_header(detail: String) -> CaptureError {
    CaptureError::Header {
        code: "invalid_header_value",
        detail,
    }
}

/// Reads and checks a v1 request's headers, in PostHog's order: a missing
/// `Authorization` is 401; every missing required header is named in one
/// 400; then each value is checked.
pub fn headers(map: &HeaderMap) -> Result<Headers, CaptureError> {
    if !map.contains_key(header::AUTHORIZATION) {
        return Err(CaptureError::MissingAuthorization);
    }
    let required = [
        ("PostHog-Sdk-Info", SDK_INFO),
        ("PostHog-Attempt", ATTEMPT),
        ("PostHog-Request-Id", REQUEST_ID),
        ("PostHog-Request-Timestamp", REQUEST_TIMESTAMP),
        ("Content-Type", "content-type"),
    ];
    let missing: Vec<&str> = required
        .iter()
        .filter(|(_, name)| !map.contains_key(*name))
        .map(|(shown, _)| *shown)
        .collect();
    if !missing.is_empty() {
        return Err(CaptureError::Header {
            code: "missing_required_headers",
            detail: format!(
                "request is missing required headers: {}",
                missing.join(", ")
            ),
        });
    }
    let text = |name: &str, shown: &str| -> Result<&str, CaptureError> {
        let value = map.get(name).map(|v| v.to_str()).transpose();
        match value {
            Ok(value) => Ok(value.unwrap_or("").trim()),
            Err(_) => Err(invalid_header(format!(
                "{shown} must be visible ASCII characters"
            ))),
        }
    };
    let authorization = text("authorization", "Authorization")?;
    let token = match authorization.split_at_checked(7) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer ") => token.trim(),
        _ => {
            return Err(invalid_header(
                "Authorization must use the Bearer scheme: `Authorization: Bearer <project token>`"
                    .into(),
            ));
        }
    };
    crate::token::validate(token)?;
    let content_type = text("content-type", "Content-Type")?;
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(CaptureError::Unsupported {
            code: "unsupported_content_type",
            detail: format!("Content-Type must be application/json, not {content_type:?}"),
        });
    }
    let encoding = match map.get(header::CONTENT_ENCODING) {
        None => ContentEncoding::Identity,
        Some(_) => {
            let named = text("content-encoding", "Content-Encoding")?;
            ContentEncoding::from_header(Some(named)).ok_or_else(|| CaptureError::Unsupported {
                code: "unsupported_encoding",
                detail: format!(
                    "Content-Encoding {named:?} is not supported; allowed: {}",
                    ContentEncoding::ALLOWED
                ),
            })?
        }
    };
    let request_id = text(REQUEST_ID, "PostHog-Request-Id")?;
    let request_id = Uuid::parse_str(request_id).map_err(|_| {
        invalid_header(format!(
            "PostHog-Request-Id must be a UUID, not {request_id:?}"
        ))
    })?;
    let attempt = text(ATTEMPT, "PostHog-Attempt")?;
    let attempt = attempt
        .parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            invalid_header(format!(
                "PostHog-Attempt must be a whole number from 1, not {attempt:?}"
            ))
        })?;
    let sent = text(REQUEST_TIMESTAMP, "PostHog-Request-Timestamp")?;
    let sent_at = DateTime::parse_from_rfc3339(sent)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            invalid_header(format!(
                "PostHog-Request-Timestamp must be an RFC 3339 time, not {sent:?}"
            ))
        })?;
    let lib = text(SDK_INFO, "PostHog-Sdk-Info")?;
    let lib = (lib.len() <= MAX_SDK_INFO_BYTES)
        .then(|| lib.rsplit_once('/'))
        .flatten()
        .map(|(name, version)| (name.trim(), version.trim()))
        .filter(|(name, version)| !name.is_empty() && !version.is_empty())
        .map(|(name, version)| (name.to_owned(), version.to_owned()));
    Ok(Headers {
        token: token.to_owned(),
        lib,
        attempt,
        request_id,
        sent_at,
        encoding,
    })
}

/// A v1 body: strict types; unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct Batch<'a> {
    /// When the SDK made the batch (RFC 3339); checked, not used.
    pub created_at: String,
    /// The batch goes to the historical topic.
    #[serde(default)]
    pub historical_migration: Option<bool>,
    /// The events; at least one.
    #[serde(borrow)]
    pub batch: Vec<Event<'a>>,
}

/// One event of a v1 batch.
#[derive(Debug, Deserialize)]
pub struct Event<'a> {
    /// Its name.
    pub event: String,
    /// Its id: the key of its result.
    pub uuid: String,
    /// Who did it.
    pub distinct_id: String,
    /// When (RFC 3339).
    pub timestamp: String,
    /// The session it belongs to.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The window (tab) it came from.
    #[serde(default)]
    pub window_id: Option<String>,
    /// `cookieless_mode`, `disable_skew_correction`, `product_tour_id`,
    /// `process_person_profile`.
    #[serde(default, borrow)]
    pub options: Option<&'a RawValue>,
    /// Its properties, an object (`$set` and `$set_once` among them),
    /// carried as sent.
    #[serde(default, borrow)]
    pub properties: Option<&'a RawValue>,
}

/// Parses a v1 body; an error names the field (`batch[2].distinct_id`)
/// and what it takes.
pub fn parse(text: &str) -> Result<Batch<'_>, CaptureError> {
    let mut reader = serde_json::Deserializer::from_str(text);
    let batch: Batch<'_> = serde_path_to_error::deserialize(&mut reader).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        CaptureError::Payload(if path == "." {
            format!("invalid v1 body: {inner}")
        } else {
            format!("invalid v1 body at `{path}`: {inner}")
        })
    })?;
    reader
        .end()
        .map_err(|err| CaptureError::Payload(format!("invalid v1 body: {err}")))?;
    if DateTime::parse_from_rfc3339(batch.created_at.trim()).is_err() {
        return Err(CaptureError::Payload(format!(
            "`created_at` must be an RFC 3339 time, not {:?}",
            batch.created_at
        )));
    }
    if batch.batch.is_empty() {
        return Err(CaptureError::Payload("`batch` is empty".into()));
    }
    Ok(batch)
}

/// One event after the v1 checks: to capture, or dropped with the reason
/// its result gives.
#[derive(Debug)]
pub enum Checked {
    /// Goes on as this v0 event text.
    Keep(String),
    /// Dropped before capture: its result's `details`.
    Drop(&'static str),
}

/// Checks every event of `batch` and builds the v0 text of those kept. A
/// uuid missing, malformed or repeated refuses the whole batch (its result
/// would have no key); anything else wrong with an event drops that event.
pub fn check(
    batch: &Batch<'_>,
    lib: Option<&(String, String)>,
) -> Result<Vec<(Uuid, Checked)>, CaptureError> {
    let mut seen = std::collections::HashSet::with_capacity(batch.batch.len());
    let mut checked = Vec::with_capacity(batch.batch.len());
    for (index, event) in batch.batch.iter().enumerate() {
        let uuid = event.uuid.trim();
        if uuid.is_empty() {
            return Err(CaptureError::InvalidEvent {
                index,
                reason: "`uuid` is empty".into(),
            });
        }
        let uuid = Uuid::parse_str(uuid).map_err(|_| CaptureError::InvalidEvent {
            index,
            reason: format!("`uuid` is not a valid UUID: {:?}", event.uuid),
        })?;
        if !seen.insert(uuid) {
            return Err(CaptureError::InvalidEvent {
                index,
                reason: format!("`uuid` {uuid} appears twice in the batch"),
            });
        }
        let outcome = match v0_text(event, uuid, lib) {
            // What the shared pipeline reads of it must read: a key it
            // reads (`distinct_id`, `$lib`, ...) given twice in the
            // properties drops this event, not the whole batch.
            Ok(text) if serde_json::from_str::<crate::parse::EventFields<'_>>(&text).is_err() => {
                Checked::Drop("malformed_event_properties")
            }
            Ok(text) => Checked::Keep(text),
            Err(details) => Checked::Drop(details),
        };
        checked.push((uuid, outcome));
    }
    Ok(checked)
}

/// The v0 event PostHog's v1 capture makes of `event`: its name, distinct
/// id, uuid and timestamp, and its properties with `$session_id`,
/// `$window_id`, the options and `$lib`/`$lib_version` appended (last, so
/// they win for a reader that keeps the last of a repeated key). `Err` is
/// why the event is dropped.
fn v0_text(
    event: &Event<'_>,
    uuid: Uuid,
    lib: Option<&(String, String)>,
) -> Result<String, &'static str> {
    let name = event.event.as_str();
    if name.is_empty() {
        return Err("missing_event_name");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("event_name_too_long");
    }
    let distinct_id = event.distinct_id.trim();
    if distinct_id.is_empty() {
        return Err("missing_distinct_id");
    }
    if distinct_id.len() > MAX_NAME_BYTES {
        return Err("distinct_id_too_large");
    }
    if DateTime::parse_from_rfc3339(event.timestamp.trim()).is_err() {
        return Err("invalid_event_timestamp");
    }
    let properties = event.properties.map_or("{}", |raw| raw.get().trim());
    let Some(inside) = properties
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
    else {
        return Err("malformed_event_properties");
    };
    let options = Options::read(event.options).ok_or("invalid_options")?;

    // What is appended to the properties, each value as JSON text.
    let mut appended: Vec<(&'static str, String)> = Vec::with_capacity(8);
    let mut string = |key: &'static str, value: &str| {
        let mut json = String::with_capacity(value.len() + 2);
        push_json_str(&mut json, value);
        appended.push((key, json));
    };
    if let Some(id) = &event.session_id {
        string("$session_id", id);
    }
    if let Some(id) = &event.window_id {
        string("$window_id", id);
    }
    if let Some(id) = &options.product_tour_id {
        string("$product_tour_id", id);
    }
    if let Some((name, version)) = lib {
        string("$lib", name);
        string("$lib_version", version);
    }
    for (key, on) in [
        ("$cookieless_mode", options.cookieless_mode),
        ("$ignore_sent_at", options.disable_skew_correction),
        ("$process_person_profile", options.process_person_profile),
    ] {
        if let Some(on) = on {
            appended.push((key, on.to_string()));
        }
    }
    // A key given both ways keeps one copy, the appended one: readers that
    // refuse a repeated key (capture's own among them) read the event too.
    let inside: Cow<'_, str> = if appended
        .iter()
        .any(|(key, _)| inside.contains(&format!("\"{key}\"")))
    {
        let keys: Vec<&str> = appended.iter().map(|(key, _)| *key).collect();
        let Ok(kept) = crate::process::without_fields(properties, &keys) else {
            return Err("malformed_event_properties");
        };
        Cow::Owned(kept[1..kept.len() - 1].to_owned())
    } else {
        Cow::Borrowed(inside)
    };

    let mut text = String::with_capacity(properties.len() + 256);
    text.push_str("{\"event\":");
    push_json_str(&mut text, name);
    text.push_str(",\"distinct_id\":");
    push_json_str(&mut text, distinct_id);
    let _ = write!(text, ",\"uuid\":\"{uuid}\",\"timestamp\":");
    push_json_str(&mut text, event.timestamp.trim());
    text.push_str(",\"properties\":{");
    text.push_str(&inside);
    let mut first = inside.trim().is_empty();
    for (key, value) in &appended {
        if !first {
            text.push(',');
        }
        first = false;
        push_json_str(&mut text, key);
        text.push(':');
        text.push_str(value);
    }
    text.push_str("}}");
    Ok(text)
}

/// An event's `options`, each unset unless given.
#[derive(Debug, Default, PartialEq)]
struct Options {
    cookieless_mode: Option<bool>,
    disable_skew_correction: Option<bool>,
    product_tour_id: Option<String>,
    process_person_profile: Option<bool>,
}

impl Options {
    /// Reads `options`: absent or `null` is no options, an object gives
    /// them (unknown keys ignored, `null` values unset); `None` when they
    /// are not an object or a value is not what its option takes.
    fn read(raw: Option<&RawValue>) -> Option<Options> {
        let Some(raw) = raw.filter(|raw| raw.get().trim() != "null") else {
            return Some(Options::default());
        };
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(raw.get()).ok()?;
        let value = |key: &str| map.get(key).filter(|v| !v.is_null());
        let flag = |key: &str| match value(key) {
            None => Some(None),
            Some(v) => as_flag(v).map(Some),
        };
        Some(Options {
            cookieless_mode: flag("cookieless_mode")?,
            disable_skew_correction: flag("disable_skew_correction")?,
            product_tour_id: match value("product_tour_id") {
                None => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => {
                    Some(n.to_string())
                }
                Some(_) => return None,
            },
            process_person_profile: flag("process_person_profile")?,
        })
    }
}

/// A boolean option as SDKs send them: `true`/`false`, the strings
/// `"true"`, `"false"`, `"1"`, `"0"` (any case), or a number (non-zero is
/// true).
fn as_flag(value: &serde_json::Value) -> Option<bool> {
    match value {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::Number(n) => n.as_f64().map(|n| n != 0.0),
        serde_json::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// One event's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Captured (or already captured: a resend of a delivered event).
    Ok,
    /// Not captured and not to be sent again; why.
    Drop(Cow<'static, str>),
    /// Not captured; send it again.
    Retry(&'static str),
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Drop(_) => "drop",
            Outcome::Retry(_) => "retry",
        }
    }

    fn details(&self) -> Option<&str> {
        match self {
            Outcome::Ok => None,
            Outcome::Drop(details) => Some(details),
            Outcome::Retry(details) => Some(details),
        }
    }
}

/// What an event's final verdict tells its SDK.
pub fn result_of(verdict: Verdict) -> Outcome {
    match verdict {
        Verdict::Accepted | Verdict::Overflowed | Verdict::Rerouted | Verdict::Duplicate => {
            Outcome::Ok
        }
        Verdict::Dropped(crate::process::EVENT_TOO_BIG) => {
            Outcome::Drop(crate::process::EVENT_TOO_BIG.into())
        }
        Verdict::Dropped(crate::plugins::RESTRICTION) => {
            Outcome::Drop("event_restriction_drop".into())
        }
        Verdict::Dropped(plugin) => Outcome::Drop(format!("dropped_by_plugin:{plugin}").into()),
        Verdict::Limited(_) => Outcome::Drop("billing_limit_exceeded".into()),
        Verdict::Failed => Outcome::Retry("not_persisted"),
    }
}

/// The 200 body: `{"results": {uuid: {"result", "details"?}}}`, in batch
/// order, and whether any event is to be sent again (then the answer
/// carries `Retry-After`).
pub fn render(results: &[(Uuid, Outcome)]) -> (String, bool) {
    let mut body = String::with_capacity(16 + results.len() * 64);
    body.push_str("{\"results\":{");
    for (i, (uuid, outcome)) in results.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(body, "\"{uuid}\":{{\"result\":\"{}\"", outcome.name());
        if let Some(details) = outcome.details() {
            body.push_str(",\"details\":");
            push_json_str(&mut body, details);
        }
        body.push('}');
    }
    body.push_str("}}");
    let retry = results
        .iter()
        .any(|(_, outcome)| matches!(outcome, Outcome::Retry(_)));
    (body, retry)
}

/// The v0 batch body of the kept events, for the shared pipeline: the
/// token, `sent_at` from `PostHog-Request-Timestamp`, and the batch's
/// `historical_migration`.
pub fn v0_batch(headers: &Headers, historical: bool, events: &[&str]) -> String {
    let size = events.iter().map(|e| e.len() + 1).sum::<usize>() + 160;
    let mut text = String::with_capacity(size);
    text.push_str("{\"token\":");
    push_json_str(&mut text, &headers.token);
    text.push_str(",\"sent_at\":");
    push_json_str(
        &mut text,
        &headers
            .sent_at
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    );
    let _ = write!(text, ",\"historical_migration\":{historical},\"batch\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(event);
    }
    text.push_str("]}");
    text
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::{Value, json};

    use super::*;

    fn good_headers() -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer phc_token"),
            ("content-type", "application/json; charset=utf-8"),
            (SDK_INFO, "posthog-python/7.91.1"),
            (ATTEMPT, "2"),
            (REQUEST_ID, "0190b0e1-0000-7000-8000-000000000001"),
            (REQUEST_TIMESTAMP, "2026-12-03T10:00:00.123456+00:00"),
            ("content-encoding", "GZIP"),
        ] {
            map.insert(name, HeaderValue::from_static(value));
        }
        map
    }

    fn error(map: &HeaderMap) -> (u16, String, String) {
        let err = headers(map).expect_err("refused");
        (
            err.status().as_u16(),
            err.code().to_owned(),
            err.to_string(),
        )
    }

    #[test]
    fn good_headers_are_read() {
        let read = headers(&good_headers()).expect("good");
        assert_eq!(read.token, "phc_token");
        assert_eq!(
            read.lib,
            Some(("posthog-python".to_owned(), "7.91.1".to_owned()))
        );
        assert_eq!(read.attempt, 2);
        assert_eq!(read.encoding, ContentEncoding::Gzip);
        assert_eq!(
            read.sent_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "2026-12-03T10:00:00.123456Z"
        );
    }

    #[test]
    fn each_bad_header_is_named_with_what_it_takes() {
        let mut map = good_headers();
        map.remove("authorization");
        assert_eq!(error(&map).0, 401);

        let mut map = good_headers();
        map.remove(SDK_INFO);
        map.remove(REQUEST_ID);
        let (status, code, detail) = error(&map);
        assert_eq!((status, code.as_str()), (400, "missing_required_headers"));
        assert_eq!(
            detail,
            "request is missing required headers: PostHog-Sdk-Info, PostHog-Request-Id"
        );

        let cases: [(&str, &str, u16, &str); 8] = [
            ("authorization", "Basic abc", 400, "Bearer scheme"),
            (
                "authorization",
                "Bearer phx_personal",
                401,
                "personal API keys",
            ),
            (
                "content-type",
                "text/plain",
                415,
                "must be application/json",
            ),
            (
                "content-encoding",
                "br",
                415,
                "allowed: gzip, deflate, zstd",
            ),
            (REQUEST_ID, "42", 400, "PostHog-Request-Id must be a UUID"),
            (
                ATTEMPT,
                "0",
                400,
                "PostHog-Attempt must be a whole number from 1",
            ),
            (REQUEST_TIMESTAMP, "yesterday", 400, "RFC 3339"),
            (ATTEMPT, "-1", 400, "not \"-1\""),
        ];
        for (name, value, status, says) in cases {
            let mut map = good_headers();
            map.insert(name, HeaderValue::from_static(value));
            let (got, _, detail) = error(&map);
            assert_eq!(got, status, "{name}: {value}: {detail}");
            assert!(detail.contains(says), "{name}: {value}: {detail}");
        }
    }

    #[test]
    fn a_malformed_sdk_info_only_leaves_lib_unset() {
        for info in ["no-slash", "/1.0", "posthog-rs/", " "] {
            let mut map = good_headers();
            map.insert(SDK_INFO, HeaderValue::from_static(info));
            assert_eq!(headers(&map).expect("accepted").lib, None, "{info}");
        }
        let mut map = good_headers();
        map.insert(
            SDK_INFO,
            HeaderValue::from_static(" posthog/sub-sdk / 2.3.4 "),
        );
        assert_eq!(
            headers(&map).expect("accepted").lib,
            Some(("posthog/sub-sdk".to_owned(), "2.3.4".to_owned()))
        );
    }

    #[test]
    fn body_errors_name_the_field() {
        let cases = [
            (json!({"batch": []}), "missing field `created_at`"),
            (
                json!({"created_at": "2026-12-03T10:00:00Z", "batch": [{"event": "e", "uuid": "u", "distinct_id": 5, "timestamp": "t"}]}),
                "at `batch[0].distinct_id`: invalid type: integer `5`, expected a string",
            ),
            (
                json!({"created_at": "2026-12-03T10:00:00Z", "batch": [{"event": "e", "distinct_id": "d", "timestamp": "t"}]}),
                "missing field `uuid`",
            ),
            (
                json!({"created_at": "now", "batch": [{"event": "e", "uuid": "u", "distinct_id": "d", "timestamp": "t"}]}),
                "`created_at` must be an RFC 3339 time",
            ),
            (
                json!({"created_at": "2026-12-03T10:00:00Z", "batch": []}),
                "`batch` is empty",
            ),
        ];
        for (body, says) in cases {
            let text = body.to_string();
            let err = parse(&text).expect_err("refused");
            assert_eq!(err.status().as_u16(), 400);
            assert!(err.to_string().contains(says), "{err} / {says}");
        }
    }

    fn batch_of(events: Value) -> String {
        json!({"created_at": "2026-12-03T10:00:00Z", "batch": events}).to_string()
    }

    fn event(extra: Value) -> Value {
        let mut event = json!({"event": "$pageview", "uuid": Uuid::now_v7().to_string(),
            "distinct_id": "u1", "timestamp": "2026-12-03T09:59:59.5Z"});
        for (k, v) in extra.as_object().expect("object") {
            event[k] = v.clone();
        }
        event
    }

    #[test]
    fn checked_events_become_v0_events_with_options_and_lib_in_properties() {
        let text = batch_of(json!([event(json!({
            "session_id": "s1", "window_id": "w1",
            "options": {"cookieless_mode": "TRUE", "disable_skew_correction": 1,
                        "product_tour_id": 42, "process_person_profile": false, "other": [1]},
            "properties": {"$set": {"plan": "pro"}, "n": 1.5}
        }))]))
        .replace(r#""n":1.5"#, r#""n":1.50"#);
        let batch = parse(&text).expect("parse");
        let lib = ("posthog-python".to_owned(), "7.91.1".to_owned());
        let checked = check(&batch, Some(&lib)).expect("valid");
        let Checked::Keep(v0) = &checked[0].1 else {
            panic!("kept: {checked:?}")
        };
        assert!(
            v0.contains(r#""n":1.50"#),
            "properties travel as sent: {v0}"
        );
        let v0: Value = serde_json::from_str(v0).expect("JSON");
        assert_eq!(v0["event"], "$pageview");
        assert_eq!(v0["uuid"], checked[0].0.to_string());
        assert_eq!(
            v0["properties"],
            json!({"$set": {"plan": "pro"}, "n": 1.5, "$session_id": "s1", "$window_id": "w1",
                   "$cookieless_mode": true, "$ignore_sent_at": true, "$product_tour_id": "42",
                   "$process_person_profile": false, "$lib": "posthog-python",
                   "$lib_version": "7.91.1"})
        );
        // Keys the properties already have are kept once, as appended.
        let text = batch_of(json!([event(json!({
            "session_id": "s2",
            "properties": {"$lib": "old", "$session_id": "s0", "a": 1, "$lib": "older"}
        }))]));
        let checked = check(&parse(&text).expect("parse"), Some(&lib)).expect("valid");
        let Checked::Keep(v0) = &checked[0].1 else {
            panic!("kept")
        };
        assert_eq!(v0.matches("\"$lib\"").count(), 1, "one $lib: {v0}");
        let v0: Value = serde_json::from_str(v0).expect("JSON");
        assert_eq!(
            v0["properties"],
            json!({"a": 1, "$session_id": "s2", "$lib": "posthog-python", "$lib_version": "7.91.1"})
        );
        // No properties and no options: only `$lib` is added.
        let text = batch_of(json!([event(json!({}))]));
        let checked = check(&parse(&text).expect("parse"), Some(&lib)).expect("valid");
        let Checked::Keep(v0) = &checked[0].1 else {
            panic!("kept")
        };
        let v0: Value = serde_json::from_str(v0).expect("JSON");
        assert_eq!(
            v0["properties"],
            json!({"$lib": "posthog-python", "$lib_version": "7.91.1"})
        );
    }

    #[test]
    fn a_bad_event_is_dropped_with_its_reason_and_a_bad_uuid_refuses_the_batch() {
        let long = "x".repeat(201);
        let text = batch_of(json!([
            event(json!({"event": ""})),
            event(json!({"event": long})),
            event(json!({"distinct_id": "  "})),
            event(json!({"distinct_id": long})),
            event(json!({"timestamp": "2026-12-03 10:00"})),
            event(json!({"properties": [1]})),
            event(json!({"properties": null})),
            event(json!({"options": "yes"})),
            event(json!({"options": {"cookieless_mode": "maybe"}})),
            event(json!({"options": null, "properties": {}})),
        ]))
        // A key capture reads, twice in the properties (a fuzzing find:
        // it refused the whole batch).
        .replace(
            r#""properties":{}"#,
            r#""properties":{"distinct_id":"a","distinct_id":"b"}"#,
        );
        let checked = check(&parse(&text).expect("parse"), None).expect("valid");
        let details: Vec<&str> = checked
            .iter()
            .map(|(_, c)| match c {
                Checked::Keep(_) => "kept",
                Checked::Drop(why) => why,
            })
            .collect();
        assert_eq!(
            details,
            [
                "missing_event_name",
                "event_name_too_long",
                "missing_distinct_id",
                "distinct_id_too_large",
                "invalid_event_timestamp",
                "malformed_event_properties",
                // `null` is no properties, as for every optional field.
                "kept",
                "invalid_options",
                "invalid_options",
                "malformed_event_properties"
            ]
        );

        let twice = event(json!({}));
        for (events, says) in [
            (json!([twice.clone(), twice]), "appears twice"),
            (json!([event(json!({"uuid": " "}))]), "`uuid` is empty"),
            (json!([event(json!({"uuid": "nope"}))]), "not a valid UUID"),
        ] {
            let text = batch_of(events);
            let err = check(&parse(&text).expect("parse"), None).expect_err("refused");
            assert_eq!(err.status().as_u16(), 400);
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn results_are_rendered_in_order_with_details_only_when_there_are_some() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let (body, retry) = render(&[
            (ids[0], result_of(Verdict::Duplicate)),
            (ids[1], result_of(Verdict::Failed)),
            (
                ids[2],
                result_of(Verdict::Limited(crate::policy::QuotaType::Events)),
            ),
        ]);
        assert!(retry);
        assert_eq!(
            body,
            format!(
                r#"{{"results":{{"{}":{{"result":"ok"}},"{}":{{"result":"retry","details":"not_persisted"}},"{}":{{"result":"drop","details":"billing_limit_exceeded"}}}}}}"#,
                ids[0], ids[1], ids[2]
            )
        );
        assert!(!render(&[(ids[0], Outcome::Ok)]).1);
        assert_eq!(
            result_of(Verdict::Dropped(crate::plugins::RESTRICTION)),
            Outcome::Drop("event_restriction_drop".into())
        );
        assert_eq!(
            result_of(Verdict::Dropped("sample")),
            Outcome::Drop("dropped_by_plugin:sample".into())
        );
    }
}
