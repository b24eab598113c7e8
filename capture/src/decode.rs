//! Turns a request body (or a GET `?data=` value) into JSON text.
//!
//! Every route goes through [`decode`], so the rules for compression hints,
//! form bodies, base64 and size caps live in one place. PostHog SDKs are not
//! consistent about labelling what they send (posthog-js may say
//! `compression=gzip-js` for a form body, or send gzip without saying so), so
//! the bytes themselves win over the hints: gzip is recognised by its magic
//! bytes and JSON by its first character.
//!
//! This module does not parse the JSON; it only guarantees that what it returns
//! is valid UTF-8, no deeper than the configured nesting limit, and no larger
//! than the decompressed-size cap.

use std::borrow::Cow;
use std::io::Read;

use crate::lzstring::LzError;
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Neither the body nor `?data=` carried anything.
    #[error("request has no body and no `data` query parameter")]
    Empty,
    /// The compression hint names an algorithm capture does not know.
    #[error("unsupported compression `{0}`; allowed: gzip, gzip-js, lz64, lz-string, base64")]
    UnsupportedCompression(String),
    /// A form-encoded body had no `data` field.
    #[error("form body has no `data` field")]
    FormWithoutData,
    /// Gzip magic bytes were present but the stream is corrupt.
    #[error("invalid gzip data: {0}")]
    Gzip(#[source] std::io::Error),
    /// A v1 body does not decompress as its `Content-Encoding` says.
    #[error("invalid {encoding} data: {source}")]
    Corrupt {
        /// The `Content-Encoding`.
        encoding: &'static str,
        /// What the decoder found.
        #[source]
        source: std::io::Error,
    },
    /// The body was labelled lz64 but does not decompress.
    #[error("invalid lz64 data: not an lz-string base64 stream")]
    Lz64,
    /// The body is neither JSON nor base64.
    #[error("body is neither JSON nor valid base64: {0}")]
    Base64(#[source] base64::DecodeError),
    /// The decoded bytes are not UTF-8.
    #[error("body is not valid UTF-8 (invalid byte at offset {offset})")]
    Utf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The JSON nests deeper than allowed.
    #[error("JSON nesting deeper than {max} levels")]
    TooDeep {
        /// The configured maximum depth.
        max: usize,
    },
    /// Decompression produced more bytes than allowed.
    #[error("decompressed body exceeds {max} bytes")]
    DecompressedTooLarge {
        /// The configured cap in bytes.
        max: usize,
    },
    /// The memory budget had no room for the decoded bytes.
    #[error("no room in the request memory budget to decode the body")]
    OverBudget,
}

impl DecodeError {
    /// Whether this error means "too large" (413) rather than "malformed" (400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, DecodeError::DecompressedTooLarge { .. })
    }
}

/// A compression named by `?compression=`, a form field or `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No hint, or an explicit `none`.
    None,
    /// `gzip` or `gzip-js`.
    Gzip,
    /// `lz64` / `lz-string`: lz-string's `compressToBase64`.
    Lz64,
    /// Plain base64 of the JSON.
    Base64,
}

impl Compression {
    /// Parses a hint as SDKs spell it; empty means none.
    pub fn from_hint(hint: &str) -> Result<Self, DecodeError> {
        match hint.trim().to_ascii_lowercase().as_str() {
            "" | "none" | "identity" => Ok(Compression::None),
            "gzip" | "gzip-js" | "x-gzip" => Ok(Compression::Gzip),
            "lz64" | "lz-string" | "lzstring" => Ok(Compression::Lz64),
            "base64" | "b64" => Ok(Compression::Base64),
            other => Err(DecodeError::UnsupportedCompression(other.to_owned())),
        }
    }
}

/// Caps applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest decompressed body accepted, in bytes.
    pub max_decompressed_bytes: usize,
    /// Deepest JSON nesting accepted.
    pub max_json_depth: usize,
}

/// What the handler knows about the raw request, borrowed for decoding.
#[derive(Debug, Clone, Copy)]
pub struct Encoded<'a> {
    /// The raw body.
    pub body: &'a [u8],
    /// `?data=` from the query string, already percent-decoded.
    pub query_data: Option<&'a str>,
    /// `?compression=` or, failing that, `Content-Encoding`.
    pub compression_hint: Option<&'a str>,
    /// Whether `Content-Type` says `application/x-www-form-urlencoded`.
    pub form: bool,
}

/// Decodes a request into JSON text, checked as UTF-8 and for depth. See
/// the module docs for the rules.
///
/// `grow` is asked before each buffer is allocated or grown, with the
/// bytes it adds; when it answers `false` decoding stops with
/// [`DecodeError::OverBudget`].
pub fn decode<'a>(
    input: Encoded<'a>,
    limits: DecodeLimits,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<Cow<'a, str>, DecodeError> {
    let mut grow = asking(grow);
    let mut hint = Compression::from_hint(input.compression_hint.unwrap_or(""))?;
    let mut bytes: Cow<'a, [u8]> = if !input.body.is_empty() {
        Cow::Borrowed(input.body)
    } else if let Some(data) = input.query_data.filter(|d| !d.is_empty()) {
        Cow::Borrowed(data.as_bytes())
    } else {
        return Err(DecodeError::Empty);
    };

    if is_gzip(&bytes) {
        bytes = Cow::Owned(gunzip(&bytes, limits.max_decompressed_bytes, &mut grow)?);
        hint = Compression::None;
    }

    // A form encoder escapes `{` and `[`, so a "form" body that starts with
    // one is JSON sent with the wrong content type (`curl -d` does this).
    if (input.form && !looks_like_json(&bytes)) || bytes.starts_with(b"data=") {
        grow(bytes.len())?;
        let (data, form_hint) = form_data(&bytes)?;
        if let Some(form_hint) = form_hint {
            hint = Compression::from_hint(&form_hint)?;
        }
        bytes = Cow::Owned(data.into_bytes());
    }

    if hint == Compression::Lz64 && !looks_like_json(&bytes) {
        grow(bytes.len())?;
        bytes = Cow::Owned(lz64(&bytes, limits.max_decompressed_bytes, &mut grow)?);
    }
    if !is_gzip(&bytes) && !looks_like_json(&bytes) {
        // The cleaned copy, and the decoded bytes (three quarters of it).
        grow(bytes.len() * 2)?;
        bytes = Cow::Owned(base64(&bytes)?);
    }
    if is_gzip(&bytes) {
        bytes = Cow::Owned(gunzip(&bytes, limits.max_decompressed_bytes, &mut grow)?);
    }
    if bytes.len() > limits.max_decompressed_bytes {
        return Err(DecodeError::DecompressedTooLarge {
            max: limits.max_decompressed_bytes,
        });
    }

    into_text(bytes, limits)
}

/// How a v1 request says its body is compressed: `Content-Encoding` alone
/// decides (no sniffing, no query hints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncoding {
    /// No `Content-Encoding`.
    Identity,
    /// `gzip`.
    Gzip,
    /// `deflate`: zlib (RFC 1950) as the HTTP specification says, or a raw
    /// deflate stream (RFC 1951) as some clients send, told apart by the
    /// zlib header.
    Deflate,
    /// `zstd`.
    Zstd,
}

impl ContentEncoding {
    /// The encodings a v1 request may name.
    pub const ALLOWED: &'static str = "gzip, deflate, zstd (or no Content-Encoding)";

    /// Reads a `Content-Encoding` value (case-insensitive); `None` for one
    /// capture does not decode.
    pub fn from_header(value: Option<&str>) -> Option<Self> {
        let Some(value) = value.map(str::trim) else {
            return Some(ContentEncoding::Identity);
        };
        [
            ("gzip", ContentEncoding::Gzip),
            ("deflate", ContentEncoding::Deflate),
            ("zstd", ContentEncoding::Zstd),
        ]
        .into_iter()
        .find_map(|(name, encoding)| value.eq_ignore_ascii_case(name).then_some(encoding))
    }
}

/// Decodes a body compressed as `encoding` into JSON text, with the same
/// caps, budget and checks as [`decode`].
pub fn decode_content<'a>(
    body: &'a [u8],
    encoding: ContentEncoding,
    limits: DecodeLimits,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<Cow<'a, str>, DecodeError> {
    let mut grow = asking(grow);
    if body.is_empty() {
        return Err(DecodeError::Empty);
    }
    let max = limits.max_decompressed_bytes;
    // Compressed JSON rarely shrinks past 1:32: memory beyond that waits
    // for the data to show it is needed.
    let guess = body.len().saturating_mul(32).max(64 * 1024);
    let corrupt = |encoding: &'static str| move |source| DecodeError::Corrupt { encoding, source };
    let bytes = match encoding {
        ContentEncoding::Identity => Cow::Borrowed(body),
        ContentEncoding::Gzip => Cow::Owned(gunzip(body, max, &mut grow)?),
        ContentEncoding::Deflate if is_zlib(body) => Cow::Owned(read_capped(
            flate2::read::ZlibDecoder::new(body),
            guess,
            max,
            &mut grow,
            corrupt("deflate"),
        )?),
        ContentEncoding::Deflate => Cow::Owned(read_capped(
            flate2::read::DeflateDecoder::new(body),
            guess,
            max,
            &mut grow,
            corrupt("deflate"),
        )?),
        ContentEncoding::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(body).map_err(corrupt("zstd"))?;
            Cow::Owned(read_capped(
                decoder,
                guess,
                max,
                &mut grow,
                corrupt("zstd"),
            )?)
        }
    };
    if bytes.len() > max {
        return Err(DecodeError::DecompressedTooLarge { max });
    }
    into_text(bytes, limits)
}

/// `grow` as the decoders ask it: a refusal is [`DecodeError::OverBudget`].
fn asking(
    grow: &mut dyn FnMut(usize) -> bool,
) -> impl FnMut(usize) -> Result<(), DecodeError> + '_ {
    move |bytes| {
        if grow(bytes) {
            Ok(())
        } else {
            Err(DecodeError::OverBudget)
        }
    }
}

/// A zlib header: deflate with a window of at most 32 KiB, and the check
/// bits that make the first two bytes a multiple of 31.
fn is_zlib(bytes: &[u8]) -> bool {
    matches!(bytes, [cmf, flg, ..] if cmf & 0x0f == 8 && cmf >> 4 <= 7
        && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0)
}

/// The decoded bytes as checked JSON text: UTF-8, nested within the limit,
/// with lone surrogate escapes repaired.
fn into_text(bytes: Cow<'_, [u8]>, limits: DecodeLimits) -> Result<Cow<'_, str>, DecodeError> {
    let utf8 = |err: std::str::Utf8Error| DecodeError::Utf8 {
        offset: err.valid_up_to(),
    };
    let text = match bytes {
        Cow::Borrowed(bytes) => Cow::Borrowed(std::str::from_utf8(bytes).map_err(utf8)?),
        Cow::Owned(bytes) => {
            Cow::Owned(String::from_utf8(bytes).map_err(|err| utf8(err.utf8_error()))?)
        }
    };
    let lone = check_text(text.as_bytes(), limits.max_json_depth)?;
    Ok(replace_lone_surrogates(text, &lone))
}

/// `\ufffd`: what a lone surrogate escape becomes (the same length).
const REPLACEMENT_ESCAPE: &str = "fffd";

/// Rewrites the lone UTF-16 surrogate escapes found at `at` (each the
/// offset of its backslash) as `\ufffd`, U+FFFD, as PostHog's capture
/// does. A browser cuts a string in the middle of an emoji and sends half
/// of its pair (`"\ud83d"`); passed on, it breaks consumers that decode the
/// JSON strictly. The escape keeps its length, so nothing moves.
fn replace_lone_surrogates<'a>(text: Cow<'a, str>, at: &[usize]) -> Cow<'a, str> {
    if at.is_empty() {
        return text;
    }
    metrics::counter!(crate::metrics::LONE_SURROGATES_REPLACED).increment(at.len() as u64);
    let mut text = text.into_owned();
    for &backslash in at {
        text.replace_range(backslash + 2..backslash + 6, REPLACEMENT_ESCAPE);
    }
    Cow::Owned(text)
}

/// The UTF-16 unit of the `\uXXXX` escape whose backslash is at `at`.
fn escaped_unit(bytes: &[u8], at: usize) -> Option<u16> {
    let escape = bytes.get(at..at + 6)?;
    if &escape[..2] != b"\\u" {
        return None;
    }
    let hex = std::str::from_utf8(&escape[2..]).ok()?;
    u16::from_str_radix(hex, 16).ok()
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

fn looks_like_json(bytes: &[u8]) -> bool {
    matches!(
        bytes.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// Decompresses gzip (one member or several) into a buffer that never
/// holds more than `max + 1` bytes: sized at first from the trailer's
/// declared size (within reason for the input's length), then doubled as
/// needed, each step asked of `grow` first.
fn gunzip(
    bytes: &[u8],
    max: usize,
    grow: &mut dyn FnMut(usize) -> Result<(), DecodeError>,
) -> Result<Vec<u8>, DecodeError> {
    // ISIZE, the last member's size mod 2^32: right for what SDKs send,
    // and only a first guess for anything else.
    let declared = bytes
        .len()
        .checked_sub(4)
        .and_then(|at| bytes[at..].try_into().ok())
        .map_or(0, |size: [u8; 4]| u32::from_le_bytes(size) as usize);
    // JSON rarely compresses past 1:32; a claim beyond that waits to be
    // shown by the data before memory is given to it.
    let first = declared.min(bytes.len().saturating_mul(32).max(64 * 1024));
    read_capped(
        flate2::read::MultiGzDecoder::new(bytes),
        first,
        max,
        grow,
        DecodeError::Gzip,
    )
}

/// Reads `decoder` to its end into a buffer that never holds more than
/// `max + 1` bytes: `first` bytes at first, then doubled as needed, each
/// step asked of `grow` before it is taken.
fn read_capped(
    mut decoder: impl Read,
    first: usize,
    max: usize,
    grow: &mut dyn FnMut(usize) -> Result<(), DecodeError>,
    corrupt: impl Fn(std::io::Error) -> DecodeError,
) -> Result<Vec<u8>, DecodeError> {
    let too_large = DecodeError::DecompressedTooLarge { max };
    let first = first.min(max) + 1;
    let mut out: Vec<u8> = Vec::new();
    let mut filled = 0;
    loop {
        if filled == out.len() {
            if filled > max {
                return Err(too_large);
            }
            let target = if out.is_empty() {
                first
            } else {
                out.len().saturating_mul(2).min(max + 1)
            };
            let more = target - out.len();
            grow(more)?;
            out.reserve_exact(more);
            out.resize(target, 0);
        }
        match decoder.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(corrupt(err)),
        }
    }
    if filled > max {
        return Err(too_large);
    }
    out.truncate(filled);
    Ok(out)
}

/// Extracts `data` (and an optional `compression`) from a form body.
fn form_data(bytes: &[u8]) -> Result<(String, Option<String>), DecodeError> {
    let mut data = None;
    let mut compression = None;
    for (key, value) in form_urlencoded::parse(bytes) {
        match key.as_ref() {
            "data" => data = Some(value.into_owned()),
            "compression" => compression = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok((data.ok_or(DecodeError::FormWithoutData)?, compression))
}

/// Decodes base64 as SDKs send it: padded or not, standard or URL-safe, with
/// form decoding having turned `+` into spaces and line breaks left in.
fn base64(bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let cleaned: Vec<u8> = bytes
        .iter()
        .filter(|b| !matches!(b, b'\n' | b'\r' | b'\t'))
        .map(|&b| if b == b' ' { b'+' } else { b })
        .collect();
    let cleaned = cleaned.trim_ascii();
    STANDARD_ANY_PADDING
        .decode(cleaned)
        .or_else(|_| URL_SAFE_ANY_PADDING.decode(cleaned))
        .or_else(|_| general_purpose::STANDARD.decode(cleaned))
        .map_err(DecodeError::Base64)
}

fn lz64(
    bytes: &[u8],
    max: usize,
    grow: &mut dyn FnMut(usize) -> Result<(), DecodeError>,
) -> Result<Vec<u8>, DecodeError> {
    let text: Vec<u8> = bytes
        .trim_ascii()
        .iter()
        .map(|&b| if b == b' ' { b'+' } else { b })
        .collect();
    let utf16 = crate::lzstring::decompress_from_base64(&text, max, &mut |more| grow(more).is_ok())
        .map_err(|err| match err {
            LzError::TooLarge => DecodeError::DecompressedTooLarge { max },
            LzError::Invalid => DecodeError::Lz64,
            LzError::OverBudget => DecodeError::OverBudget,
        })?;
    // UTF-8 takes at most three bytes per UTF-16 unit.
    grow(utf16.len() * 3)?;
    let out = String::from_utf16(&utf16)
        .map_err(|_| DecodeError::Lz64)?
        .into_bytes();
    // lz-string has no checksum: garbage in often decodes to garbage out
    // rather than failing, and what SDKs compress is always JSON.
    if looks_like_json(&out) {
        Ok(out)
    } else {
        Err(DecodeError::Lz64)
    }
}

/// Rejects JSON nested deeper than `max` without parsing it.
/// Checks the nesting depth and finds the lone surrogate escapes (their
/// backslashes' offsets), in one pass that jumps from quote to backslash
/// through the strings, which are most of a JSON body.
fn check_text(bytes: &[u8], max: usize) -> Result<Vec<usize>, DecodeError> {
    let mut lone = Vec::new();
    let mut depth = 0usize;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                at += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[at..]) {
                        Some(found) if bytes[at + found] == b'\\' => {
                            at += found;
                            at += match escaped_unit(bytes, at) {
                                Some(0xD800..=0xDBFF) => match escaped_unit(bytes, at + 6) {
                                    // A pair: both halves are passed.
                                    Some(0xDC00..=0xDFFF) => 12,
                                    _ => {
                                        lone.push(at);
                                        6
                                    }
                                },
                                Some(0xDC00..=0xDFFF) => {
                                    lone.push(at);
                                    6
                                }
                                _ => 2,
                            };
                        }
                        Some(found) => {
                            at += found;
                            break;
                        }
                        None => return Ok(lone),
                    }
                    if at >= bytes.len() {
                        return Ok(lone);
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(DecodeError::TooDeep { max });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    Ok(lone)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_decompressed_bytes: 1 << 20,
        max_json_depth: 8,
    };

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).expect("write to vec");
        enc.finish().expect("finish gzip")
    }

    /// With no memory budget.
    fn decode(input: Encoded<'_>, limits: DecodeLimits) -> Result<Cow<'_, str>, DecodeError> {
        super::decode(input, limits, &mut |_| true)
    }

    /// Decodes `input` and returns what it asked of the budget in all.
    fn asked(input: Encoded<'_>, limits: DecodeLimits) -> (Result<usize, DecodeError>, usize) {
        let mut total = 0;
        let out = super::decode(input, limits, &mut |more| {
            total += more;
            true
        });
        (out.map(|text| text.len()), total)
    }

    #[test]
    fn honest_gzip_is_decompressed_into_one_buffer_of_its_size() {
        // Events like an SDK's, with ids that compress as poorly as real ones.
        let json = format!(
            "[{}]",
            (0..2000)
                .map(|n| format!(r#"{{"event":"e{n}","uuid":"{}"}}"#, uuid::Uuid::new_v4()))
                .collect::<Vec<_>>()
                .join(",")
        );
        let (len, total) = asked(body(&gzip(json.as_bytes())), LIMITS);
        assert_eq!(len.expect("decodes"), json.len());
        assert_eq!(
            total,
            json.len() + 1,
            "one allocation, the declared size and one byte"
        );
    }

    #[test]
    fn a_gzip_bomb_never_takes_more_than_the_cap() {
        let bomb = gzip(&vec![b' '; 8 << 20]);
        let (out, total) = asked(body(&bomb), LIMITS);
        assert!(out.expect_err("over the cap").is_too_large());
        let cap = LIMITS.max_decompressed_bytes;
        assert!(
            total <= cap + 1,
            "asked for {total} bytes with a cap of {cap}"
        );
        // A trailer that lies low costs doublings, still within the cap.
        let mut liar = bomb.clone();
        let at = liar.len() - 4;
        liar[at..].copy_from_slice(&10u32.to_le_bytes());
        let (out, total) = asked(body(&liar), LIMITS);
        assert!(out.expect_err("over the cap").is_too_large());
        assert!(
            total <= cap + 1,
            "asked for {total} bytes with a cap of {cap}"
        );
    }

    #[test]
    fn an_lz_string_bomb_never_asks_for_more_than_the_cap() {
        let limits = DecodeLimits {
            max_decompressed_bytes: 64 << 10,
            max_json_depth: 8,
        };
        let bomb = lz_str::compress_to_base64(&"a".repeat(256 << 10));
        let input = Encoded {
            compression_hint: Some("lz64"),
            ..body(bomb.as_bytes())
        };
        let (out, total) = asked(input, limits);
        assert!(out.expect_err("over the cap").is_too_large());
        // The cleaned input, then UTF-16 output room up to the cap.
        let bound = bomb.len() + 2 * limits.max_decompressed_bytes;
        assert!(total <= bound, "asked for {total} bytes, bound {bound}");
        let err = super::decode(input, limits, &mut |more| more < 10_000).expect_err("no room");
        assert!(matches!(err, DecodeError::OverBudget), "{err}");
    }

    #[test]
    fn a_budget_with_no_room_stops_decoding() {
        let packed = gzip(br#"{"event":"a"}"#);
        let err = super::decode(body(&packed), LIMITS, &mut |_| false).expect_err("no room");
        assert!(matches!(err, DecodeError::OverBudget), "{err}");
        // Plain JSON needs no new buffer, so no room is asked for.
        super::decode(body(br#"{"event":"a"}"#), LIMITS, &mut |_| false).expect("borrowed");
    }

    fn body(body: &[u8]) -> Encoded<'_> {
        Encoded {
            body,
            query_data: None,
            compression_hint: None,
            form: false,
        }
    }

    #[test]
    fn plain_json_passes_through_untouched() {
        let out = decode(body(br#"{"event":"a"}"#), LIMITS).expect("decodes");
        assert_eq!(out.as_bytes(), br#"{"event":"a"}"#);
        assert!(matches!(out, Cow::Borrowed(_)));
    }

    #[test]
    fn gzip_is_detected_by_magic_bytes_whatever_the_hint_says() {
        let compressed = gzip(br#"[{"event":"a"}]"#);
        for hint in [None, Some("gzip-js"), Some("base64")] {
            let input = Encoded {
                compression_hint: hint,
                ..body(&compressed)
            };
            assert_eq!(
                decode(input, LIMITS).expect("decodes").as_bytes(),
                br#"[{"event":"a"}]"#
            );
        }
    }

    #[test]
    fn a_gzip_hint_on_a_form_body_falls_back_to_the_form() {
        let b64 = general_purpose::STANDARD.encode(br#"{"event":"a"}"#);
        let form = format!("data={}", b64.replace('=', "%3D"));
        let input = Encoded {
            compression_hint: Some("gzip-js"),
            form: true,
            ..body(form.as_bytes())
        };
        assert_eq!(
            decode(input, LIMITS).expect("decodes").as_bytes(),
            br#"{"event":"a"}"#
        );
    }

    #[test]
    fn form_base64_survives_plus_signs_turned_into_spaces() {
        // "~~~>" encodes to "fn5+Pg==", whose '+' a form decoder turns into a space.
        let json = br#"{"event":"~~~>"}"#;
        let b64 = general_purpose::STANDARD.encode(json);
        assert!(b64.contains('+'));
        let form = format!("data={b64}");
        let input = Encoded {
            form: true,
            ..body(form.as_bytes())
        };
        assert_eq!(decode(input, LIMITS).expect("decodes").as_bytes(), json);
    }

    #[test]
    fn form_urlencoded_json_is_accepted() {
        let form = "data=%7B%22event%22%3A%22a%22%7D";
        let input = Encoded {
            form: true,
            ..body(form.as_bytes())
        };
        assert_eq!(
            decode(input, LIMITS).expect("decodes").as_bytes(),
            br#"{"event":"a"}"#
        );
    }

    #[test]
    fn lz64_from_the_query_hint_or_the_form_field() {
        let json = r#"[{"event":"lz","properties":{"a":1}}]"#;
        let packed = lz_str::compress_to_base64(json);
        let input = Encoded {
            compression_hint: Some("lz64"),
            ..body(packed.as_bytes())
        };
        assert_eq!(
            decode(input, LIMITS).expect("decodes").as_bytes(),
            json.as_bytes()
        );

        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("data", &packed)
            .append_pair("compression", "lz64")
            .finish();
        let input = Encoded {
            form: true,
            ..body(form.as_bytes())
        };
        assert_eq!(
            decode(input, LIMITS).expect("decodes").as_bytes(),
            json.as_bytes()
        );
    }

    #[test]
    fn json_sent_with_a_form_content_type_is_read_as_json() {
        let input = Encoded {
            form: true,
            ..body(br#"{"event":"a"}"#)
        };
        assert_eq!(
            decode(input, LIMITS).expect("decodes").as_bytes(),
            br#"{"event":"a"}"#
        );
    }

    #[test]
    fn get_data_query_parameter_is_used_when_there_is_no_body() {
        let b64 = general_purpose::STANDARD.encode(br#"{"event":"a"}"#);
        let input = Encoded {
            query_data: Some(&b64),
            ..body(b"")
        };
        assert_eq!(
            decode(input, LIMITS).expect("decodes").as_bytes(),
            br#"{"event":"a"}"#
        );
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        assert!(matches!(decode(body(b""), LIMITS), Err(DecodeError::Empty)));
        let corrupt = [0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad];
        assert!(matches!(
            decode(body(&corrupt), LIMITS),
            Err(DecodeError::Gzip(_))
        ));
        assert!(matches!(
            decode(body(b"not json!"), LIMITS),
            Err(DecodeError::Base64(_))
        ));
        let input = Encoded {
            compression_hint: Some("brotli"),
            ..body(b"{}")
        };
        let err = decode(input, LIMITS).expect_err("unknown hint");
        assert!(err.to_string().contains("brotli"), "{err}");
        assert!(matches!(
            decode(body(b"{\"a\":\"\xff\"}"), LIMITS),
            Err(DecodeError::Utf8 { offset: 6 })
        ));
        let input = Encoded {
            form: true,
            ..body(b"other=1")
        };
        assert!(matches!(
            decode(input, LIMITS),
            Err(DecodeError::FormWithoutData)
        ));
        let input = Encoded {
            compression_hint: Some("lz64"),
            ..body(b"!!!!")
        };
        assert!(matches!(decode(input, LIMITS), Err(DecodeError::Lz64)));
    }

    #[test]
    fn nesting_beyond_the_cap_is_rejected_but_brackets_in_strings_do_not_count() {
        let deep = "[".repeat(9) + &"]".repeat(9);
        assert!(matches!(
            decode(body(deep.as_bytes()), LIMITS),
            Err(DecodeError::TooDeep { max: 8 })
        ));
        let shallow = format!(r#"{{"a":"{}"}}"#, "[[[[[[[[[[\\\"[[[[");
        decode(body(shallow.as_bytes()), LIMITS).expect("brackets inside strings are text");
    }

    #[test]
    fn lone_surrogate_escapes_become_the_replacement_character_and_pairs_stay() {
        let cases = [
            // A high half cut from its pair, at the end and in the middle.
            (r#"{"e":"a\ud83d"}"#, r#"{"e":"a\ufffd"}"#),
            (
                r#"{"e":"\uD83Dx\ud83d\ude00"}"#,
                r#"{"e":"\ufffdx\ud83d\ude00"}"#,
            ),
            // A low half alone, and two high halves in a row.
            (
                r#"{"e":"\ude00\ud83d\ud83d\ude00"}"#,
                r#"{"e":"\ufffd\ufffd\ud83d\ude00"}"#,
            ),
            // A high half before another escape, and before a `\u` escape
            // that is not a low half.
            (
                r#"{"e":"\ud83d\n","f":"\ud83d\u00e9"}"#,
                r#"{"e":"\ufffd\n","f":"\ufffd\u00e9"}"#,
            ),
            // Not escapes: an escaped backslash before `u`, and keys too.
            (
                r#"{"\ud800":"\\ud83d","k":"\\\ud83d"}"#,
                r#"{"\ufffd":"\\ud83d","k":"\\\ufffd"}"#,
            ),
            // Nothing to repair: the text is returned as it came.
            (
                r#"{"e":"\ud83d\ude00 \u00e9 \\ud83d"}"#,
                r#"{"e":"\ud83d\ude00 \u00e9 \\ud83d"}"#,
            ),
        ];
        for (sent, repaired) in cases {
            let text = decode(body(sent.as_bytes()), LIMITS).expect(sent);
            assert_eq!(text, repaired, "{sent}");
            assert_eq!(matches!(text, Cow::Borrowed(_)), sent == repaired, "{sent}");
            let value: serde_json::Value =
                serde_json::from_str(&text).expect("a strict parser reads the repaired text");
            let strings = value.to_string();
            assert_eq!(strings.contains('\u{fffd}'), sent != repaired, "{strings}");
        }
        // Compressed bodies are repaired too.
        let compressed = gzip(br#"["\udc00"]"#);
        let text = decode(body(&compressed), LIMITS).expect("gzip");
        assert_eq!(text, r#"["\ufffd"]"#);
    }

    #[test]
    fn a_strict_parser_refuses_what_is_repaired() {
        // Why the repair: serde_json (like most strict decoders) refuses a
        // lone surrogate in a string it decodes.
        assert!(serde_json::from_str::<String>(r#""\ud83d""#).is_err());
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_cap() {
        let bomb = gzip(&vec![b' '; 4 << 20]);
        let limits = DecodeLimits {
            max_decompressed_bytes: 1 << 20,
            max_json_depth: 8,
        };
        let err = decode(body(&bomb), limits).expect_err("over the cap");
        assert!(err.is_too_large());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            form in proptest::prelude::any::<bool>(),
            hint in proptest::sample::select(vec![None, Some("gzip"), Some("lz64"), Some("base64"), Some("zz")]),
        ) {
            let _ = decode(Encoded { body: &bytes, query_data: None, compression_hint: hint, form }, LIMITS);
        }

        #[test]
        fn decode_never_panics_on_gzip_or_base64_wrapped_garbage(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let _ = decode(body(&gzip(&bytes)), LIMITS);
            let b64 = general_purpose::STANDARD.encode(&bytes);
            let _ = decode(body(b64.as_bytes()), LIMITS);
            let lz = lz_str::compress_to_base64(String::from_utf8_lossy(&bytes).as_ref());
            let _ = decode(Encoded { compression_hint: Some("lz64"), ..body(lz.as_bytes()) }, LIMITS);
        }
    }
}
