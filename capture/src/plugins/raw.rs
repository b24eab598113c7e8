//! Reading and editing an event's JSON text without building a tree: the
//! members of an object and the items of an array as borrowed slices of the
//! text, and splicing new values over old ones. Plugins that look at a few
//! properties, or mask a few values, cost a scan of the text instead of a
//! full parse and re-serialization of the event.
//!
//! The scanner does not validate: event texts were validated when the
//! request was parsed, and splicing keeps them valid. Malformed text gives
//! `None`, never a panic; strings are skipped with `memchr`, so most of an
//! event's bytes are passed over at memory speed.

use std::borrow::Cow;

/// Index just past the string starting with the quote at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        let found = at + memchr::memchr2(b'"', b'\\', bytes.get(at..)?)?;
        if bytes[found] == b'\\' {
            at = found + 2;
        } else {
            return Some(found + 1);
        }
    }
}

/// Index just past the value starting at `start`.
fn value_end(bytes: &[u8], start: usize) -> Option<usize> {
    match *bytes.get(start)? {
        b'"' => string_end(bytes, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut at = start;
            while let Some(&byte) = bytes.get(at) {
                match byte {
                    b'"' => {
                        at = string_end(bytes, at)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
            None
        }
        _ => {
            let rest = bytes.get(start..)?;
            let len = rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                .unwrap_or(rest.len());
            (len > 0).then_some(start + len)
        }
    }
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        at += 1;
    }
    at
}

/// A byte range of a text.
type Span = (usize, usize);

/// Walks the container opening with `open` at `start` of `text` (after any
/// whitespace). For each entry it calls `each` with the key's span (quotes
/// included; objects only) and where the value starts; `each` returns
/// where the value ends (so it may walk into it). Returns where the
/// container ends; `None` if `text` has no such container there.
fn walk(
    text: &str,
    start: usize,
    open: u8,
    mut each: impl FnMut(Option<Span>, usize) -> Option<usize>,
) -> Option<usize> {
    let bytes = text.as_bytes();
    let close = if open == b'{' { b'}' } else { b']' };
    let mut at = skip_space(bytes, start);
    if bytes.get(at) != Some(&open) {
        return None;
    }
    at = skip_space(bytes, at + 1);
    if bytes.get(at) == Some(&close) {
        return Some(at + 1);
    }
    loop {
        let key = if open == b'{' {
            if bytes.get(at) != Some(&b'"') {
                return None;
            }
            let end = string_end(bytes, at)?;
            let key = (at, end);
            at = skip_space(bytes, end);
            if bytes.get(at) != Some(&b':') {
                return None;
            }
            at = skip_space(bytes, at + 1);
            Some(key)
        } else {
            None
        };
        let end = each(key, at)?;
        at = skip_space(bytes, end);
        match bytes.get(at) {
            Some(b',') => at = skip_space(bytes, at + 1),
            Some(&b) if b == close => return Some(at + 1),
            _ => return None,
        }
    }
}

/// The text of a key (with its quotes) as a string, borrowed unless it has
/// escapes.
pub fn key_text(quoted: &str) -> Option<Cow<'_, str>> {
    let inner = quoted.get(1..quoted.len().checked_sub(1)?)?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// The members of the JSON object `text`, in order, as (key, value text).
/// `None` unless `text` is an object.
pub fn members(text: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(8);
    walk(text, 0, b'{', |key, start| {
        let (key_start, key_end) = key?;
        let end = value_end(bytes, start)?;
        out.push((
            key_text(text.get(key_start..key_end)?)?,
            text.get(start..end)?,
        ));
        Some(end)
    })?;
    Some(out)
}

/// The items of the JSON array `text`, as value texts. `None` unless
/// `text` is an array.
pub fn items(text: &str) -> Option<Vec<&str>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    walk(text, 0, b'[', |_, start| {
        let end = value_end(bytes, start)?;
        out.push(text.get(start..end)?);
        Some(end)
    })?;
    Some(out)
}

/// One member of an object, as spans of the event text.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    key: Span,
    value: Span,
}

impl Entry {
    /// Its key.
    pub fn key<'a>(&self, text: &'a str) -> Option<Cow<'a, str>> {
        key_text(self.quoted_key(text)?)
    }

    /// Whether its key is `key` (compared as written unless it has
    /// escapes, which are decoded first).
    pub fn key_is(&self, text: &str, key: &str) -> bool {
        let Some(quoted) = self.quoted_key(text) else {
            return false;
        };
        let inner = &quoted.as_bytes()[1..quoted.len() - 1];
        if !inner.contains(&b'\\') {
            return inner == key.as_bytes();
        }
        key_text(quoted).is_some_and(|k| k == key)
    }

    /// Its key as written, quotes and any escapes included.
    pub fn quoted_key<'a>(&self, text: &'a str) -> Option<&'a str> {
        text.get(self.key.0..self.key.1)
    }

    /// Its value's text.
    pub fn value<'a>(&self, text: &'a str) -> Option<&'a str> {
        text.get(self.value.0..self.value.1)
    }
}

/// Where an event's properties are, found in one pass over its text: the
/// members of each `properties` object (normally one; JSON keeps the last
/// of duplicate keys, but a mask must cover them all), and the top-level
/// `$set` and `$set_once` of `$identify` events.
#[derive(Debug, Default)]
pub struct EventIndex {
    /// Members of each `properties` object, in order.
    pub properties: Vec<Vec<Entry>>,
    /// Top-level `$set` and `$set_once` members.
    pub sets: Vec<Entry>,
}

impl EventIndex {
    /// The value text of property `key` (the last one, as JSON reads it).
    pub fn property<'a>(&self, text: &'a str, key: &str) -> Option<&'a str> {
        self.properties
            .last()?
            .iter()
            .rev()
            .find(|entry| entry.key_is(text, key))
            .and_then(|entry| entry.value(text))
    }
}

/// Indexes the event object `text`; `None` unless it is an object.
pub fn index_event(text: &str) -> Option<EventIndex> {
    let bytes = text.as_bytes();
    let mut index = EventIndex::default();
    walk(text, 0, b'{', |key, start| {
        let (key_start, key_end) = key?;
        let key = key_text(text.get(key_start..key_end)?)?;
        match key.as_ref() {
            "properties" if bytes.get(start) == Some(&b'{') => {
                let mut entries = Vec::with_capacity(48);
                let end = walk(text, start, b'{', |key, start| {
                    let end = value_end(bytes, start)?;
                    entries.push(Entry {
                        key: key?,
                        value: (start, end),
                    });
                    Some(end)
                })?;
                index.properties.push(entries);
                Some(end)
            }
            "$set" | "$set_once" => {
                let end = value_end(bytes, start)?;
                index.sets.push(Entry {
                    key: (key_start, key_end),
                    value: (start, end),
                });
                Some(end)
            }
            _ => value_end(bytes, start),
        }
    })?;
    Some(index)
}

/// Whether the value text is an object or an array (worth looking into).
pub fn is_container(text: &str) -> bool {
    matches!(text.as_bytes().first(), Some(b'{' | b'['))
}

/// Where `part` (a slice of `base`) starts in `base`.
pub fn offset(base: &str, part: &str) -> usize {
    part.as_ptr() as usize - base.as_ptr() as usize
}

/// Byte ranges of a text to replace, all with one replacement.
#[derive(Debug, Default)]
pub struct Splices {
    ranges: Vec<(usize, usize)>,
}

impl Splices {
    /// Replaces `part`, a slice of `base`.
    pub fn replace(&mut self, base: &str, part: &str) {
        let start = offset(base, part);
        self.ranges.push((start, start + part.len()));
    }

    /// Whether nothing is to be replaced.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// `base` with every range replaced by `with` (a range inside another
    /// is covered by the outer one), and how positions moved.
    pub fn apply_tracked(mut self, base: &str, with: &str) -> (String, Shift) {
        self.ranges.sort_unstable();
        let mut out = String::with_capacity(base.len() + self.ranges.len() * with.len());
        let mut applied = Vec::with_capacity(self.ranges.len());
        let mut at = 0;
        for (start, end) in self.ranges {
            if start < at {
                continue; // inside the previous range
            }
            out.push_str(&base[at..start]);
            out.push_str(with);
            applied.push((start, end));
            at = end;
        }
        out.push_str(&base[at..]);
        let shift = Shift {
            applied,
            with: with.len(),
        };
        (out, shift)
    }
}

/// How positions of a text moved when [`Splices`] were applied to it.
#[derive(Debug)]
pub struct Shift {
    applied: Vec<Span>,
    with: usize,
}

impl Shift {
    /// Where `position` of the old text is in the new one; valid for
    /// positions not strictly inside a replaced range.
    fn map(&self, position: usize) -> usize {
        let mut moved = position;
        for &(start, end) in &self.applied {
            if end > position {
                break;
            }
            moved = moved + self.with - (end - start);
        }
        moved
    }

    fn span(&self, (start, end): Span) -> Span {
        (self.map(start), self.map(end))
    }
}

impl EventIndex {
    /// Moves the index onto the text after `shift`'s splices, which
    /// replaced only whole values of its entries or ranges within them.
    pub fn shift(&mut self, shift: &Shift) {
        for entry in self.properties.iter_mut().flatten().chain(&mut self.sets) {
            entry.key = shift.span(entry.key);
            entry.value = shift.span(entry.value);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The last member named `key` of the object `text` (JSON keeps the last
    /// of duplicates).
    fn member<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        members(text)?
            .into_iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value)
    }

    #[test]
    fn members_and_items_borrow_the_text() {
        let text = r#" {"a": 1, "b\u0021": {"c": [1, {"d": "x"}]}, "a": "last"} "#;
        let found = members(text).expect("object");
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "b!", "a"]);
        assert_eq!(member(text, "a"), Some(r#""last""#));
        let inner = member(text, "b!").expect("b!");
        assert_eq!(&text[offset(text, inner)..][..inner.len()], inner);
        let list = member(inner, "c").expect("c");
        assert_eq!(items(list), Some(vec!["1", r#"{"d": "x"}"#]));
        assert_eq!(members("[1]"), None);
        assert_eq!(items("{}"), None);
        assert_eq!(members("{broken"), None);
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<i32>().prop_map(|n| Value::from(f64::from(n) / 4.0)),
            any::<String>().prop_map(Value::String),
            "[\\\\\"a-z{}\\[\\],:]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_scanner_agrees_with_serde_json(value in json(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).expect("serializes")
            } else {
                value.to_string()
            };
            match &value {
                serde_json::Value::Object(object) => {
                    let found = members(&text).expect("an object");
                    prop_assert_eq!(found.len(), object.len());
                    for ((key, raw), (want_key, want)) in found.iter().zip(object) {
                        prop_assert_eq!(key.as_ref(), want_key.as_str());
                        let parsed: serde_json::Value = serde_json::from_str(raw).expect("a value");
                        prop_assert_eq!(&parsed, want);
                    }
                }
                serde_json::Value::Array(list) => {
                    let found = items(&text).expect("an array");
                    prop_assert_eq!(found.len(), list.len());
                    for (raw, want) in found.iter().zip(list) {
                        let parsed: serde_json::Value = serde_json::from_str(raw).expect("a value");
                        prop_assert_eq!(&parsed, want);
                    }
                }
                _ => prop_assert!(members(&text).is_none() && items(&text).is_none()),
            }
        }

        #[test]
        fn malformed_text_never_panics(text in any::<String>()) {
            let _ = members(&text);
            let _ = items(&text);
        }
    }

    #[test]
    fn the_index_finds_properties_and_sets_and_survives_splicing() {
        let text = r#"{"event":"$identify","properties":{"email":"a@b","n":{"email":"c"}},"$set":{"email":"d"},"prop\u0065rties":{"x":1}}"#;
        let index = index_event(text).expect("an object");
        assert_eq!(
            index.properties.len(),
            2,
            "both properties objects, escaped key too"
        );
        assert_eq!(
            index.property(text, "x"),
            Some("1"),
            "the last properties object counts"
        );
        assert_eq!(index.property(text, "email"), None);
        assert_eq!(index.sets.len(), 1);

        let mut splices = Splices::default();
        let first = &index.properties[0];
        splices.replace(text, first[0].value(text).expect("email"));
        let nested = first[1].value(text).expect("n");
        splices.replace(text, member(nested, "email").expect("nested email"));
        let (edited, shift) = splices.apply_tracked(text, "\"[redacted]\"");
        let mut moved = index_event(text).expect("an object");
        moved.shift(&shift);
        let again = index_event(&edited).expect("still an object");
        for (a, b) in moved
            .properties
            .iter()
            .flatten()
            .zip(again.properties.iter().flatten())
        {
            assert_eq!(a.key(&edited), b.key(&edited));
            assert_eq!(a.value(&edited), b.value(&edited));
        }
        assert_eq!(moved.sets[0].value(&edited), again.sets[0].value(&edited));
        assert_eq!(
            moved.properties[0][1].value(&edited),
            Some(r#"{"email":"[redacted]"}"#)
        );
    }

    #[test]
    fn splices_replace_ranges_and_outer_ranges_cover_inner_ones() {
        let text = r#"{"a":"x","b":{"a":"y"},"c":1}"#;
        let mut splices = Splices::default();
        let b = member(text, "b").expect("b");
        splices.replace(text, member(b, "a").expect("inner a"));
        splices.replace(text, b);
        splices.replace(text, member(text, "a").expect("a"));
        assert_eq!(
            splices.apply_tracked(text, "\"*\"").0,
            r#"{"a":"*","b":"*","c":1}"#
        );
    }
}
