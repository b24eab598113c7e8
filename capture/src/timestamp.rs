//! Event time: parsing what clients send, correcting their clock skew, and
//! the one timestamp format capture writes.
//!
//! A client's clock may be wrong, but the gap between when it says an event
//! happened (`timestamp`) and when it says it sent the batch (`sent_at`) is
//! trustworthy, so the event time is `now + (timestamp - sent_at)`. An
//! `offset` (milliseconds before sending) wins over both. Times far in the
//! future are clamped to `now`.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// How far in the future an event time may be before it is replaced by `now`.
const FUTURE_TOLERANCE: Duration = Duration::hours(23);

/// Parses an ISO-8601 / RFC 3339 time as SDKs send it. A time without an
/// offset is taken as UTC; a bare date is midnight UTC.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(ts) = DateTime::parse_from_rfc3339(text) {
        return Some(ts.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(ts) = DateTime::parse_from_str(text, format) {
            return Some(ts.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(ts) = NaiveDateTime::parse_from_str(text, format) {
            return Some(Utc.from_utc_datetime(&ts));
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| Utc.from_utc_datetime(&d))
}

/// A unix time in milliseconds, as in the `_` query parameter.
pub fn from_millis(millis: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(millis)
}

/// What a client said about an event's time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTime<'a> {
    /// The event's `timestamp` field.
    pub timestamp: Option<&'a str>,
    /// The event's `offset` field, in milliseconds before sending.
    pub offset: Option<i64>,
    /// When the client sent the request.
    pub sent_at: Option<DateTime<Utc>>,
    /// `$ignore_sent_at` was set: trust `timestamp` as it is.
    pub ignore_sent_at: bool,
}

/// The event time capture records, given the server's `now`.
pub fn resolve(client: ClientTime<'_>, now: DateTime<Utc>) -> DateTime<Utc> {
    let mut result = match client.timestamp.and_then(parse) {
        Some(ts) => match client.sent_at {
            Some(sent_at) if !client.ignore_sent_at => {
                now.checked_add_signed(ts - sent_at).unwrap_or(now)
            }
            _ => ts,
        },
        None => now,
    };
    if let Some(offset) = client.offset {
        result = Duration::try_milliseconds(offset)
            .and_then(|offset| now.checked_sub_signed(offset))
            .unwrap_or(now);
    }
    if result - now > FUTURE_TOLERANCE {
        result = now;
    }
    result
}

/// Formats a time the way capture writes all times: ISO-8601 with
/// microseconds and an explicit `+00:00`, which is what PostHog's original
/// capture wrote and what its consumers parse.
pub fn format(ts: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    // Written out rather than through a strftime pattern, which is parsed
    // anew on every call; this runs several times per event.
    let micros = (ts.nanosecond() / 1_000).min(999_999);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        ts.year(),
        ts.month(),
        ts.day(),
        ts.hour(),
        ts.minute(),
        ts.second(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        parse(text).expect("valid test time")
    }

    #[test]
    fn parses_the_spellings_sdks_use() {
        let expected = at("2023-09-15T09:15:02.325Z");
        assert_eq!(parse("2023-09-15T09:15:02.325+00:00"), Some(expected));
        assert_eq!(parse("2023-09-15T11:15:02.325+0200"), Some(expected));
        assert_eq!(parse("2023-09-15T09:15:02.325"), Some(expected));
        assert_eq!(parse("2023-09-15 09:15:02.325"), Some(expected));
        assert_eq!(parse("2023-09-15"), Some(at("2023-09-15T00:00:00Z")));
        assert_eq!(parse("yesterday"), None);
        assert_eq!(from_millis(1_694_769_302_325), Some(expected));
    }

    #[test]
    fn skew_between_timestamp_and_sent_at_is_applied_to_now() {
        let now = at("2024-01-01T12:00:00Z");
        let client = ClientTime {
            timestamp: Some("2020-01-01T00:00:00Z"),
            sent_at: Some(at("2020-01-01T00:00:05Z")),
            ..ClientTime::default()
        };
        assert_eq!(resolve(client, now), at("2024-01-01T11:59:55Z"));
        let ignore = ClientTime {
            ignore_sent_at: true,
            ..client
        };
        assert_eq!(resolve(ignore, now), at("2020-01-01T00:00:00Z"));
    }

    #[test]
    fn offset_wins_and_missing_times_mean_now() {
        let now = at("2024-01-01T12:00:00Z");
        let client = ClientTime {
            timestamp: Some("2020-01-01T00:00:00Z"),
            offset: Some(3026),
            ..ClientTime::default()
        };
        assert_eq!(resolve(client, now), at("2024-01-01T11:59:56.974Z"));
        assert_eq!(resolve(ClientTime::default(), now), now);
        let garbage = ClientTime {
            timestamp: Some("not a time"),
            ..ClientTime::default()
        };
        assert_eq!(resolve(garbage, now), now);
        let huge = ClientTime {
            offset: Some(i64::MAX),
            ..ClientTime::default()
        };
        assert_eq!(resolve(huge, now), now);
    }

    #[test]
    fn far_future_times_are_clamped_to_now() {
        let now = at("2024-01-01T12:00:00Z");
        let client = ClientTime {
            timestamp: Some("2024-01-03T00:00:00Z"),
            ..ClientTime::default()
        };
        assert_eq!(resolve(client, now), now);
        let near = ClientTime {
            timestamp: Some("2024-01-01T20:00:00Z"),
            ..ClientTime::default()
        };
        assert_eq!(resolve(near, now), at("2024-01-01T20:00:00Z"));
    }

    proptest::proptest! {
        #[test]
        fn format_agrees_with_strftime(secs in 0i64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let ts = DateTime::from_timestamp(secs, nanos).expect("in range");
            proptest::prop_assert_eq!(format(ts), ts.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string());
        }
    }

    #[test]
    fn format_matches_the_original_capture() {
        assert_eq!(
            format(at("2023-09-15T09:15:02.328551Z")),
            "2023-09-15T09:15:02.328551+00:00"
        );
    }
}
