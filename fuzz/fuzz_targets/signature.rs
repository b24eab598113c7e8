//! `capture::signing::parse_header`, the reader of `X-Capture-Signature:
//! t=<unix seconds>,v2=<64 hex digits>`.
//!
//! Checked against the format written out again here: parts split at
//! commas, trimmed, `t` an integer, `v2` exactly 64 hex digits, the last
//! of a repeated part counting. Whatever the parser accepts, this reading
//! accepts with the same time and MAC (and the other way round); and a
//! header written back from what was read parses to the same.

#![no_main]

use capture::signing::{Header, SignatureError, parse_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_header(text);
    let expected = reference(text);
    assert_eq!(parsed.as_ref().ok(), expected.as_ref(), "header {text:?}");
    match parsed {
        Ok(header) => {
            let hex: String = header.mac.iter().map(|b| format!("{b:02x}")).collect();
            let written = format!("t={},v2={hex}", header.time);
            assert_eq!(
                parse_header(&written),
                Ok(header),
                "written back: {written}"
            );
        }
        Err(err) => assert!(
            matches!(err, SignatureError::Malformed | SignatureError::OldFormat),
            "a header alone can only be malformed or old: {err}"
        ),
    }
});

/// The format, read independently of capture's parser.
fn reference(text: &str) -> Option<Header> {
    let (mut time, mut mac) = (None, None);
    for part in text.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            // `i64::from_str` takes a leading `+`; the HMAC covers the
            // number as capture prints it, so `+5` and `5` sign alike.
            "t" => time = value.parse::<i64>().ok(),
            "v2" => mac = hex32(value),
            _ => {}
        }
    }
    Some(Header {
        time: time?,
        mac: mac?,
    })
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut mac = [0u8; 32];
    for (byte, pair) in mac.iter_mut().zip(digits.chunks(2)) {
        let value = |d: u8| (d as char).to_digit(16).map(|v| v as u8);
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(mac)
}
