//! A bounded decompressor for lz-string's base64 form, which old posthog-js
//! versions send as `compression=lz64`.
//!
//! lz-string is an LZW variant: every code adds a dictionary entry one
//! character longer than an earlier one, so a few kilobytes of input can
//! expand quadratically into gigabytes. This decompressor stores entries as
//! (prefix entry, last character) links, so its dictionary grows with the
//! input, and it stops as soon as the output passes a caller-given cap.

/// The base64 alphabet lz-string uses; `=` decodes as zero bits.
const ALPHABET: &[u8; 65] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";

/// Value of each byte in [`ALPHABET`]; bytes outside it are worth zero.
const VALUES: [u8; 256] = {
    let mut values = [0u8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        values[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    values
};

/// Bits carried by one base64 character.
const BITS_PER_CHAR: u32 = 6;

/// Entry marker for "no prefix".
const NO_PREFIX: u32 = u32::MAX;

/// Why decompression stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LzError {
    /// The input is not lz-string data.
    Invalid,
    /// The output would exceed the cap.
    TooLarge,
    /// The memory budget had no room for more output.
    OverBudget,
}

/// One dictionary entry: `prefix` followed by `last`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    prefix: u32,
    last: u16,
    first: u16,
    len: u32,
}

/// Reads the input as a stream of bits, lowest bit of each character first
/// in lz-string's (reversed) order.
struct Bits<'a> {
    input: &'a [u8],
    index: usize,
    value: u32,
    mask: u32,
}

impl<'a> Bits<'a> {
    fn new(input: &'a [u8]) -> Self {
        let mut bits = Bits {
            input,
            index: 0,
            value: 0,
            mask: 0,
        };
        bits.next_char();
        bits
    }

    fn next_char(&mut self) {
        // Characters outside the alphabet, and reads past the end, count as
        // zero bits, as in the reference implementation.
        self.value = self
            .input
            .get(self.index)
            .map_or(0, |&c| u32::from(VALUES[c as usize]));
        self.index += 1;
        self.mask = 1 << (BITS_PER_CHAR - 1);
    }

    fn exhausted(&self) -> bool {
        self.index > self.input.len()
    }

    fn read(&mut self, count: u32) -> u32 {
        let mut out = 0;
        for bit in 0..count {
            if self.value & self.mask != 0 {
                out |= 1 << bit;
            }
            self.mask >>= 1;
            if self.mask == 0 {
                self.next_char();
            }
        }
        out
    }
}

/// Decompresses lz-string base64 text into UTF-16 code units, failing with
/// [`LzError::TooLarge`] once more than `max_units` would be produced. The
/// output buffer never holds room for more than `max_units`, and `grow` is
/// asked for the bytes of each enlargement first ([`LzError::OverBudget`]
/// when it says no).
pub fn decompress_from_base64(
    input: &[u8],
    max_units: usize,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u16>, LzError> {
    if input.is_empty() {
        return Err(LzError::Invalid);
    }
    let mut bits = Bits::new(input);
    // Codes 0, 1 and 2 are "literal 8-bit", "literal 16-bit" and "end".
    let mut dictionary: Vec<Entry> = Vec::with_capacity(input.len());
    for _ in 0..3 {
        dictionary.push(Entry {
            prefix: NO_PREFIX,
            last: 0,
            first: 0,
            len: 0,
        });
    }
    let first = input.len().saturating_mul(3).min(max_units);
    if !grow(first * 2) {
        return Err(LzError::OverBudget);
    }
    let mut out: Vec<u16> = Vec::with_capacity(first);
    let mut enlarge_in: u32 = 4;
    let mut num_bits: u32 = 3;

    let literal = |bits: &mut Bits<'_>, code: u32| -> Result<u16, LzError> {
        match code {
            0 => Ok(bits.read(8) as u16),
            1 => Ok(bits.read(16) as u16),
            _ => Err(LzError::Invalid),
        }
    };
    let first = match bits.read(2) {
        2 => return Ok(out),
        code => literal(&mut bits, code)?,
    };
    dictionary.push(Entry {
        prefix: NO_PREFIX,
        last: first,
        first,
        len: 1,
    });
    let mut previous = (dictionary.len() - 1) as u32;
    emit(&dictionary, previous, &mut out, max_units, grow)?;

    loop {
        if bits.exhausted() {
            // The reference returns an empty string for truncated input.
            return Err(LzError::Invalid);
        }
        let mut code = bits.read(num_bits);
        match code {
            0 | 1 => {
                let c = literal(&mut bits, code)?;
                dictionary.push(Entry {
                    prefix: NO_PREFIX,
                    last: c,
                    first: c,
                    len: 1,
                });
                code = (dictionary.len() - 1) as u32;
                enlarge_in -= 1;
            }
            2 => return Ok(out),
            _ => {}
        }
        if enlarge_in == 0 {
            enlarge_in = 1 << num_bits;
            num_bits += 1;
        }
        let prev = dictionary[previous as usize];
        let current = code as usize;
        if current < dictionary.len() {
            let entry_first = dictionary[current].first;
            dictionary.push(Entry {
                prefix: previous,
                last: entry_first,
                first: prev.first,
                len: prev.len + 1,
            });
        } else if current == dictionary.len() {
            // The code being defined right now: previous + previous's first.
            dictionary.push(Entry {
                prefix: previous,
                last: prev.first,
                first: prev.first,
                len: prev.len + 1,
            });
        } else {
            return Err(LzError::Invalid);
        }
        emit(&dictionary, code, &mut out, max_units, grow)?;
        enlarge_in -= 1;
        previous = code;
        if enlarge_in == 0 {
            enlarge_in = 1 << num_bits;
            num_bits += 1;
        }
        if num_bits >= 30 {
            // More codes than any input within the body limits can hold.
            return Err(LzError::Invalid);
        }
    }
}

/// Appends entry `code`'s characters to `out` by walking its prefix links.
fn emit(
    dictionary: &[Entry],
    code: u32,
    out: &mut Vec<u16>,
    max: usize,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<(), LzError> {
    let len = dictionary[code as usize].len as usize;
    let start = out.len();
    if start + len > max {
        return Err(LzError::TooLarge);
    }
    if start + len > out.capacity() {
        // Double, as a Vec would, but never past the cap.
        let target = (start + len).max(out.capacity() * 2).min(max);
        if !grow((target - out.capacity()) * 2) {
            return Err(LzError::OverBudget);
        }
        out.reserve_exact(target - start);
    }
    out.resize(start + len, 0);
    let mut at = code;
    for slot in out[start..].iter_mut().rev() {
        let entry = dictionary[at as usize];
        *slot = entry.last;
        at = entry.prefix;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn round_trip(text: &str) -> Result<Vec<u16>, LzError> {
        let packed = lz_str::compress_to_base64(text);
        decompress_from_base64(packed.as_bytes(), usize::MAX, &mut |_| true)
    }

    #[test]
    fn decodes_what_lz_string_encodes() {
        for text in [
            "",
            "a",
            "aaaaaaaaaaaaaaaaaaaa",
            r#"{"event":"$pageview","n":[1,2,3]}"#,
            "ünïcödé ✓ 🎉",
        ] {
            let expected: Vec<u16> = text.encode_utf16().collect();
            assert_eq!(round_trip(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn garbage_and_truncation_are_invalid() {
        assert_eq!(
            decompress_from_base64(b"", 100, &mut |_| true),
            Err(LzError::Invalid)
        );
        let packed = lz_str::compress_to_base64(r#"{"event":"a long enough event name"}"#);
        let cut = &packed.as_bytes()[..packed.len() / 2];
        assert_eq!(
            decompress_from_base64(cut, usize::MAX, &mut |_| true),
            Err(LzError::Invalid)
        );
    }

    #[test]
    fn a_bomb_stops_at_the_cap_without_allocating_its_size() {
        // Repetitive text compresses quadratically well.
        let packed = lz_str::compress_to_base64(&"a".repeat(50_000));
        assert!(packed.len() < 1_000, "{}", packed.len());
        let capped = decompress_from_base64(packed.as_bytes(), 10_000, &mut |_| true);
        assert_eq!(capped, Err(LzError::TooLarge));
        let full =
            decompress_from_base64(packed.as_bytes(), 50_000, &mut |_| true).map(|v| v.len());
        assert_eq!(full, Ok(50_000));
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference_on_any_text(text in "\\PC{0,200}") {
            let expected: Vec<u16> = text.encode_utf16().collect();
            prop_assert_eq!(round_trip(&text), Ok(expected));
        }

        #[test]
        fn never_panics_on_any_input(input in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = decompress_from_base64(&input, 10_000, &mut |_| true);
        }

        #[test]
        fn agrees_with_the_reference_on_any_base64ish_input(input in "[A-Za-z0-9+/=]{1,60}") {
            let ours = decompress_from_base64(input.as_bytes(), usize::MAX, &mut |_| true).ok();
            let reference = lz_str::decompress_from_base64(&input);
            // Where the reference yields text, ours yields the same.
            if let (Some(ours), Some(reference)) = (ours, reference) {
                prop_assert_eq!(ours, reference);
            }
        }
    }
}
