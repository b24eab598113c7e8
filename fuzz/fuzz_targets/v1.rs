//! The v1 request body: `capture::decode::decode_content` by the first
//! byte's `Content-Encoding`, then `capture::v1::parse` and `check`, the
//! v0 text of each kept event, and the rendered results.
//!
//! Whatever the bytes: no panic, a decoded body within its cap; a parsed
//! batch has events; every kept event's v0 text is a JSON object carrying
//! the event's uuid, name and distinct id, whose properties are an object
//! ending with the `$lib` the headers gave; the v0 batch of the kept events
//! parses back into as many events; and the results render as JSON with
//! one result per event.

#![no_main]

use capture::decode::{ContentEncoding, DecodeLimits, decode_content};
use capture::v1::{Checked, Headers, Outcome, check, parse, render, v0_batch};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const LIMITS: DecodeLimits = DecodeLimits {
    max_decompressed_bytes: 256 * 1024,
    max_json_depth: 64,
};

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let encoding = [
        ContentEncoding::Identity,
        ContentEncoding::Gzip,
        ContentEncoding::Deflate,
        ContentEncoding::Zstd,
    ][usize::from(first & 3)];
    let Ok(text) = decode_content(body, encoding, LIMITS, &mut |_| true) else {
        return;
    };
    assert!(text.len() <= LIMITS.max_decompressed_bytes);
    let Ok(batch) = parse(&text) else {
        return;
    };
    assert!(!batch.batch.is_empty());
    let lib = ("posthog-fuzz".to_owned(), "1.0".to_owned());
    let Ok(checked) = check(&batch, Some(&lib)) else {
        return;
    };
    assert_eq!(checked.len(), batch.batch.len());
    let mut kept = Vec::new();
    for ((uuid, outcome), event) in checked.iter().zip(&batch.batch) {
        let Checked::Keep(v0) = outcome else {
            continue;
        };
        let value: Value = serde_json::from_str(v0).unwrap_or_else(|e| panic!("{e}: {v0}"));
        assert_eq!(value["uuid"], uuid.to_string(), "{v0}");
        assert_eq!(value["event"], event.event.as_str(), "{v0}");
        assert_eq!(value["distinct_id"], event.distinct_id.trim(), "{v0}");
        let properties = value["properties"].as_object().expect("properties object");
        assert_eq!(properties["$lib"], "posthog-fuzz", "{v0}");
        assert_eq!(properties["$lib_version"], "1.0", "{v0}");
        kept.push(v0.as_str());
    }
    if !kept.is_empty() {
        let headers = Headers {
            token: "phc_fuzz".into(),
            lib: Some(lib),
            attempt: 1,
            request_id: uuid::Uuid::nil(),
            sent_at: chrono::DateTime::UNIX_EPOCH,
            encoding,
        };
        let text = v0_batch(&headers, batch.historical_migration == Some(true), &kept);
        let payload =
            capture::parse::parse(&text, usize::MAX).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(payload.events.len(), kept.len());
    }
    let results: Vec<(uuid::Uuid, Outcome)> = checked
        .iter()
        .map(|(uuid, c)| match c {
            Checked::Keep(_) => (*uuid, Outcome::Ok),
            Checked::Drop(why) => (*uuid, Outcome::Drop((*why).into())),
        })
        .collect();
    let (body, retry) = render(&results);
    assert!(!retry);
    let value: Value = serde_json::from_str(&body).expect("results are JSON");
    assert_eq!(
        value["results"].as_object().expect("results").len(),
        results.len()
    );
});
