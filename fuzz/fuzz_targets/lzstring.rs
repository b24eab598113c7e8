//! `capture::lzstring::decompress_from_base64`, the bounded lz-string
//! decompressor, against the `lz-str` crate it replaces.
//!
//! Checked: it never panics; its output never passes the cap; what it
//! asks of the memory budget stays within the cap's bytes (two per UTF-16
//! unit); and on text in lz-string's base64 alphabet it gives the crate's
//! answer (below: the one way the two differ by design). The crate has no
//! cap, so it only runs where ours stayed under it: past the cap ours
//! stops and the crate might take gigabytes.

#![no_main]

use capture::lzstring::{LzError, decompress_from_base64};
use libfuzzer_sys::fuzz_target;

/// Output cap in UTF-16 units. The real one is the 64 MB body cap; this
/// keeps each run fast while bombs of a few hundred bytes still cross it.
const MAX_UNITS: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let mut asked = 0usize;
    let ours = decompress_from_base64(data, MAX_UNITS, &mut |more| {
        asked += more;
        true
    });
    if let Ok(units) = &ours {
        assert!(units.len() <= MAX_UNITS, "{} units", units.len());
    }
    // The buffer starts from a guess within the cap and doubles up to it,
    // each step asked for: never more than the cap's bytes in all.
    assert!(asked <= 2 * MAX_UNITS, "asked for {asked} bytes");

    // The crate refuses characters outside the alphabet, which SDKs never
    // send; compare on the rest.
    let in_alphabet = data
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if !in_alphabet || data.is_empty() || ours == Err(LzError::TooLarge) {
        return;
    }
    let text = std::str::from_utf8(data).expect("the alphabet is ASCII");
    // The crate fails where a read runs past the last character; ours
    // reads zero bits there, as lz-string's JavaScript does (the fuzzer's
    // first find: "FF" is [138] to ours, nothing to the crate). So: what the crate decodes, ours decodes the
    // same; and what ours decodes, the crate decodes the same once zero
    // bits ("A") are written out past the end, more than the longest read
    // (16 bits of a literal after a code of under 30) needs.
    if let Some(reference) = lz_str::decompress_from_base64(text) {
        assert_eq!(ours, Ok(reference), "lz-str decodes it, ours does not");
    }
    if let Ok(units) = ours {
        let padded = format!("{text}AAAAAAAA");
        let reference = lz_str::decompress_from_base64(&padded);
        assert_eq!(
            Some(units),
            reference,
            "ours decodes it, lz-str (padded) does not"
        );
    }
});
