//! `capture::decode::decode`, the first thing every request body meets.
//!
//! The first byte chooses how the request looked: which compression hint
//! it carried (every spelling the SDKs use, none, and one capture does not
//! know), whether it was a form, and whether the bytes came as the body or
//! as GET's `?data=`. The rest is the body.
//!
//! Checked besides "never panics": the text returned is never longer than
//! the decompressed-size cap, and what decoding asks of the memory budget
//! stays linear in the input and the cap, so neither a gzip nor an
//! lz-string bomb can take memory the budget did not grant.

#![no_main]

use capture::decode::{DecodeLimits, Encoded, decode};
use libfuzzer_sys::fuzz_target;

/// Every hint spelling `Compression::from_hint` knows, plus one it refuses.
const HINTS: [Option<&str>; 16] = [
    None,
    Some(""),
    Some("none"),
    Some("identity"),
    Some("gzip"),
    Some("gzip-js"),
    Some("x-gzip"),
    Some("lz64"),
    Some("lz-string"),
    Some("lzstring"),
    Some("base64"),
    Some("b64"),
    Some(" GZIP-JS "),
    Some("LZ64"),
    Some("br"),
    Some("B64"),
];

/// The real cap is 64 MB; a fuzzer would spend its time filling buffers at
/// that size. 256 KiB keeps each run fast while inputs of up to 1 MiB
/// (`-max_len` in `.ci/fuzz`), and the bombs among them, still cross it.
const LIMITS: DecodeLimits = DecodeLimits {
    max_decompressed_bytes: 256 << 10,
    // capture's default `--max-json-depth`.
    max_json_depth: 64,
};

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let hint = HINTS[usize::from(shape & 0x0f)];
    let form = shape & 0x10 != 0;
    // GET carries its data percent-decoded in the query, so it is text.
    let in_query = shape & 0x20 != 0;
    let input = if in_query {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        Encoded {
            body: b"",
            query_data: Some(text),
            compression_hint: hint,
            form,
        }
    } else {
        Encoded {
            body: rest,
            query_data: None,
            compression_hint: hint,
            form,
        }
    };

    let mut asked = 0usize;
    let result = decode(input, LIMITS, &mut |more| {
        asked += more;
        true
    });
    if let Ok(text) = &result {
        assert!(
            text.len() <= LIMITS.max_decompressed_bytes,
            "decoded {} bytes, over the cap of {}",
            text.len(),
            LIMITS.max_decompressed_bytes
        );
    }
    // Each step may copy what it is given (form, base64, lz-string's
    // cleaned input) or fill up to the cap (gunzip twice, lz-string's
    // UTF-16 and its UTF-8): a handful of each, never more.
    let bound = 8 * (rest.len() + LIMITS.max_decompressed_bytes) + 2;
    assert!(
        asked <= bound,
        "asked the budget for {asked} bytes for {} input bytes",
        rest.len()
    );

    // A budget that grants nothing stops every decode that needs a new
    // buffer, with the budget error and nothing else.
    match decode(input, LIMITS, &mut |_| false) {
        Ok(text) => assert_eq!(Some(&text), result.as_ref().ok(), "with no budget"),
        Err(err) => {
            let same = matches!(&result, Err(e) if e.to_string() == err.to_string());
            assert!(
                same || matches!(err, capture::decode::DecodeError::OverBudget),
                "with no budget: {err}; with one: {result:?}"
            );
        }
    }
});
