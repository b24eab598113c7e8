//! `capture::spool::scan`, the reader of spool segments at start-up and
//! replay.
//!
//! After a crash or a disk fault a segment holds whatever bytes it holds.
//! The first byte picks one of two checks:
//!
//! - even: the rest are a segment's bytes. The scan must not panic, and
//!   must account for every byte it keeps: whole frames and damaged
//!   stretches, in order and without gaps, cover exactly `0..keep`; every
//!   whole frame decodes; what is cut off as a torn tail holds no whole
//!   frame.
//! - odd: the rest are split into messages, encoded as the spool writes
//!   them, and cut at a point the next two bytes choose. The scan must give
//!   back exactly the messages whose frames end before the cut, as they
//!   were, cut the rest as a torn tail, and find no damage.

#![no_main]

use std::sync::Arc;

use capture::event::header;
use capture::route::DataType;
use capture::sink::Message;
use capture::spool::{record, scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        any_bytes(rest);
    } else {
        cut_messages(rest);
    }
});

fn any_bytes(bytes: &[u8]) {
    let scanned = scan(bytes, 0);
    assert!(scanned.keep <= bytes.len());
    let mut pieces: Vec<(usize, usize)> = scanned
        .frames
        .iter()
        .map(|(body, end)| (body.start - record::HEAD, *end))
        .chain(scanned.damaged.iter().map(|r| (r.start, r.end)))
        .collect();
    pieces.sort_unstable();
    let mut at = 0;
    for (start, end) in pieces {
        assert_eq!(start, at, "a gap or overlap at {at}");
        assert!(end > start);
        at = end;
    }
    assert_eq!(at, scanned.keep, "what is kept is all accounted for");
    for (body, _) in &scanned.frames {
        assert!(record::decode(&bytes[body.clone()]).is_some());
    }
    assert!(scan(&bytes[scanned.keep..], 0).frames.is_empty());
}

fn cut_messages(data: &[u8]) {
    let Some((cut, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let messages: Vec<Message> = rest
        .chunks(40)
        .enumerate()
        .map(|(n, chunk)| Message {
            kind: if n % 3 == 0 {
                DataType::Overflow
            } else {
                DataType::Events
            },
            topic: Arc::from("events"),
            key: (n % 2 == 0)
                .then(|| String::from_utf8_lossy(&chunk[..chunk.len() / 2]).into_owned()),
            headers: vec![(header::UUID, format!("u{n}"))],
            payload: String::from_utf8_lossy(chunk).into_owned(),
        })
        .collect();
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    for (seq, message) in (0u64..).zip(&messages) {
        record::encode(&mut bytes, seq, 7, message);
        ends.push(bytes.len());
    }
    let cut = usize::from(u16::from_le_bytes(*cut)) % (bytes.len() + 1);
    let scanned = scan(&bytes[..cut], 0);
    let kept = ends.iter().filter(|end| **end <= cut).count();
    assert!(scanned.damaged.is_empty(), "a cut is not damage");
    assert_eq!(scanned.frames.len(), kept);
    assert_eq!(scanned.keep, if kept == 0 { 0 } else { ends[kept - 1] });
    for ((body, _), (seq, message)) in scanned.frames.iter().zip((0u64..).zip(&messages)) {
        let read = record::decode(&bytes[body.clone()]).expect("a whole frame decodes");
        assert_eq!(
            (read.seq, read.written_ms, &read.message),
            (seq, 7, message)
        );
    }
}
