//! The spool's on-disk record: one Kafka message, framed and checksummed.
//!
//! A frame is a 12-byte head and a body:
//!
//! ```text
//! magic u32 LE ("CSP1") | body length u32 LE | CRC-32 of the body u32 LE | body
//! ```
//!
//! and the body, all integers little-endian:
//!
//! ```text
//! seq u64 | written at (Unix ms) u64 | data type u8 | topic (u16 length, bytes)
//! | key (u8 0/1, then u32 length, bytes) | header count u16
//! | per header (u16 name length, name, u32 value length, value) | value (the rest)
//! ```
//!
//! The magic lets [`scan`] find the next frame after a damaged one, so one
//! bad record costs only itself.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use crate::event::header;
use crate::route::DataType;
use crate::sink::Message;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"CSP1";
/// Bytes of a frame before its body.
pub const HEAD: usize = 12;
/// The largest body a frame may declare; anything larger is damage (a
/// message is at most `--max-message-bytes`, far below this).
pub const MAX_BODY: usize = 256 << 20;

/// Data types in the order of their byte on disk: append only.
const KINDS: [DataType; 8] = [
    DataType::Events,
    DataType::Historical,
    DataType::Exceptions,
    DataType::ClientWarnings,
    DataType::Recordings,
    DataType::Overflow,
    DataType::Heatmaps,
    DataType::DeadLetter,
];

/// One message as the spool keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its number, unique within one spool directory.
    pub seq: u64,
    /// When it was spooled, in Unix milliseconds.
    pub written_ms: u64,
    /// The message to produce.
    pub message: Message,
}

/// Appends `message` as one frame to `out`.
pub fn encode(out: &mut Vec<u8>, seq: u64, written_ms: u64, message: &Message) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 8]);
    let body = out.len();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&written_ms.to_le_bytes());
    let kind = KINDS.iter().position(|k| *k == message.kind).unwrap_or(0);
    out.push(kind as u8);
    put_short(out, message.topic.as_bytes());
    match &message.key {
        Some(key) => {
            out.push(1);
            put_long(out, key.as_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(message.headers.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for (name, value) in message.headers.iter().take(u16::MAX as usize) {
        put_short(out, name.as_bytes());
        put_long(out, value.as_bytes());
    }
    out.extend_from_slice(message.payload.as_bytes());
    let length = (out.len() - body) as u32;
    let crc = crc32fast::hash(&out[body..]);
    out[start + 4..start + 8].copy_from_slice(&length.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_long(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// What lies at an offset of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole frame whose checksum holds: its body, and where the next
    /// frame starts.
    Whole {
        /// The body's byte range.
        body: std::ops::Range<usize>,
        /// The offset after it.
        next: usize,
    },
    /// The bytes end inside the frame's head, or before the end its head
    /// declares: a write cut short (a torn tail, if nothing follows).
    Short,
    /// No frame here: wrong magic, an impossible length, a checksum that
    /// fails, or a body that does not decode.
    Damaged,
}

/// Reads the frame at `at` of `bytes`.
pub fn frame_at(bytes: &[u8], at: usize) -> Frame {
    let rest = &bytes[at.min(bytes.len())..];
    let magic_seen = rest.len().min(4);
    if rest[..magic_seen] != MAGIC[..magic_seen] {
        return Frame::Damaged;
    }
    if rest.len() < HEAD {
        return Frame::Short;
    }
    let length = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(rest[8..12].try_into().unwrap_or_default());
    if length > MAX_BODY {
        return Frame::Damaged;
    }
    if rest.len() < HEAD + length {
        return Frame::Short;
    }
    let body = &rest[HEAD..HEAD + length];
    if crc32fast::hash(body) != crc || decode(body).is_none() {
        return Frame::Damaged;
    }
    Frame::Whole {
        body: at + HEAD..at + HEAD + length,
        next: at + HEAD + length,
    }
}

/// The offset of the next whole frame after `from`, if any.
pub fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at < bytes.len() {
        let found = memchr::memmem::find(&bytes[at..], &MAGIC)?;
        at += found;
        if matches!(frame_at(bytes, at), Frame::Whole { .. }) {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// Decodes a body whose checksum held; `None` when it is not a record
/// (which a checksum that holds makes a bug or a foreign file).
pub fn decode(body: &[u8]) -> Option<Record> {
    let mut reader = Reader(body);
    let seq = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
    let written_ms = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
    let kind = *KINDS.get(usize::from(reader.take(1)?[0]))?;
    let topic = reader.short_text()?;
    let key = match reader.take(1)?[0] {
        0 => None,
        1 => Some(reader.long_text()?.to_owned()),
        _ => return None,
    };
    let count = u16::from_le_bytes(reader.take(2)?.try_into().ok()?);
    let mut headers = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let name = intern(reader.short_text()?);
        headers.push((name, reader.long_text()?.to_owned()));
    }
    let payload = std::str::from_utf8(reader.0).ok()?.to_owned();
    Some(Record {
        seq,
        written_ms,
        message: Message {
            kind,
            topic: intern_topic(topic),
            key,
            headers,
            payload,
        },
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn short_text(&mut self) -> Option<&'a str> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        std::str::from_utf8(self.take(usize::from(n))?).ok()
    }

    fn long_text(&mut self) -> Option<&'a str> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        std::str::from_utf8(self.take(n as usize)?).ok()
    }
}

/// Header names capture writes, so a replayed message names them with the
/// same `&'static str` as a live one.
const KNOWN_HEADERS: [&str; 12] = [
    header::TOKEN,
    header::DISTINCT_ID,
    header::EVENT,
    header::UUID,
    header::TIMESTAMP,
    header::NOW,
    header::SESSION_ID,
    header::HISTORICAL_MIGRATION,
    header::FORCE_DISABLE_PERSON_PROCESSING,
    header::DLQ_REASON,
    header::DLQ_STEP,
    header::DLQ_TIMESTAMP,
];

/// A header name as a `&'static str`: one of capture's own, or (written by
/// another version of capture) a name kept for the life of the process,
/// once per distinct name.
fn intern(name: &str) -> &'static str {
    if let Some(known) = KNOWN_HEADERS.iter().find(|k| **k == name) {
        return known;
    }
    static OTHERS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut others = OTHERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(kept) = others.get(name) {
        return kept;
    }
    let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
    others.insert(kept);
    kept
}

/// Topic names shared by the records of one replay, so a segment of a
/// million records holds each name once.
fn intern_topic(name: &str) -> Arc<str> {
    static TOPICS: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
    let mut topics = TOPICS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(kept) = topics.get(name) {
        return Arc::clone(kept);
    }
    let kept: Arc<str> = Arc::from(name);
    topics.insert(Arc::clone(&kept));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> Message {
        Message {
            kind: if n.is_multiple_of(2) {
                DataType::Events
            } else {
                DataType::Overflow
            },
            topic: Arc::from(if n.is_multiple_of(2) {
                "events"
            } else {
                "overflow"
            }),
            key: (!n.is_multiple_of(3)).then(|| format!("phc_t:user-{n}")),
            headers: vec![
                (header::TOKEN, "phc_t".into()),
                (header::UUID, format!("0190-{n}")),
                ("x-from-elsewhere", "kept".into()),
            ],
            payload: format!("{{\"uuid\":\"0190-{n}\",\"data\":\"{}\"}}", "é".repeat(n)),
        }
    }

    #[test]
    fn a_record_reads_back_as_it_was_written() {
        let mut bytes = Vec::new();
        for n in 0..4 {
            encode(&mut bytes, n as u64 + 10, 1_700_000_000_000, &message(n));
        }
        let mut at = 0;
        let mut read = Vec::new();
        while let Frame::Whole { body, next } = frame_at(&bytes, at) {
            read.push(decode(&bytes[body]).expect("decodes"));
            at = next;
        }
        assert_eq!(at, bytes.len());
        let expected: Vec<Record> = (0..4)
            .map(|n| Record {
                seq: n as u64 + 10,
                written_ms: 1_700_000_000_000,
                message: message(n),
            })
            .collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn a_frame_cut_at_any_byte_is_short_never_whole_or_damaged() {
        let mut bytes = Vec::new();
        encode(&mut bytes, 1, 2, &message(5));
        for cut in 1..bytes.len() {
            assert_eq!(frame_at(&bytes[..cut], 0), Frame::Short, "cut at {cut}");
        }
        assert!(matches!(frame_at(&bytes, 0), Frame::Whole { .. }));
    }

    #[test]
    fn any_flipped_byte_damages_the_frame_and_the_next_one_is_found() {
        let mut bytes = Vec::new();
        encode(&mut bytes, 1, 2, &message(4));
        let second = bytes.len();
        encode(&mut bytes, 2, 2, &message(7));
        for at in 0..second {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x20;
            // A flipped length may claim more bytes than there are: that
            // reads as short, which only the tail of a segment may be.
            let frame = frame_at(&flipped, 0);
            assert!(
                matches!(frame, Frame::Damaged | Frame::Short),
                "byte {at}: {frame:?}"
            );
            assert_eq!(resync(&flipped, 1), Some(second), "byte {at}");
        }
    }
}
