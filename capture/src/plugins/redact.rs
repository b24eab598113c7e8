//! `redact`: replaces property values by key. A pattern without a dot
//! (`email`) matches that key at any depth; a dotted one (`$set.phone`)
//! is a path from the properties, where `*` stands for any one key and
//! arrays are looked through. The top-level `$set` and `$set_once`
//! objects of `$identify` events are treated as `properties.$set` and
//! `properties.$set_once`.

use serde_json::{Map, Value};

use super::raw::{self, Splices};
use super::{Event, Plugin, Verdict};
use crate::runtime_config;

/// The `redact` plugin.
#[derive(Debug)]
pub struct Redact {
    anywhere: Vec<String>,
    paths: Vec<Vec<String>>,
    replacement: Value,
    /// The replacement as JSON text, for editing the event text directly.
    replacement_json: String,
    /// `anywhere` as JSON strings, compared with keys as written.
    anywhere_quoted: Vec<String>,
}

impl Redact {
    /// From its settings.
    pub fn new(settings: &runtime_config::Redact) -> Self {
        let (paths, anywhere): (Vec<&String>, Vec<&String>) =
            settings.keys.iter().partition(|key| key.contains('.'));
        Redact {
            anywhere: anywhere.iter().map(|key| (*key).clone()).collect(),
            paths: paths
                .into_iter()
                .map(|path| path.split('.').map(str::to_owned).collect())
                .collect(),
            replacement: Value::String(settings.replacement.clone()),
            replacement_json: Value::String(settings.replacement.clone()).to_string(),
            anywhere_quoted: anywhere
                .iter()
                .map(|key| Value::String((*key).clone()).to_string())
                .collect(),
        }
    }

    /// One member of the properties.
    /// One member of the properties, its key as written (`quoted`).
    fn find_in_member(&self, base: &str, quoted: &str, value: &str, out: &mut Splices) {
        // Keys as written match their JSON form, unless written with
        // escapes of their own (rare), which are decoded first.
        let escaped = quoted.as_bytes().contains(&b'\\');
        let key = || raw::key_text(quoted).unwrap_or_default();
        let masked = self.anywhere_quoted.iter().any(|k| k == quoted)
            || (escaped && {
                let key = key();
                self.anywhere.iter().any(|k| *k == key)
            });
        if masked {
            out.replace(base, value);
        } else if !self.anywhere.is_empty() && raw::is_container(value) {
            find_anywhere(base, value, &self.anywhere, out);
        }
        if self.paths.is_empty() {
            return;
        }
        let key = key();
        for path in &self.paths {
            find_path_at(base, &key, value, path, out);
        }
    }
}

/// Values under any of `keys` at any depth of `text` (a slice of `base`).
fn find_anywhere(base: &str, text: &str, keys: &[String], out: &mut Splices) {
    if let Some(members) = raw::members(text) {
        for (key, value) in members {
            if keys.iter().any(|k| *k == key) {
                out.replace(base, value);
            } else if raw::is_container(value) {
                find_anywhere(base, value, keys, out);
            }
        }
    } else if let Some(items) = raw::items(text) {
        for item in items.into_iter().filter(|item| raw::is_container(item)) {
            find_anywhere(base, item, keys, out);
        }
    }
}

/// The member `key: value` against `path`: masks the value where the path
/// ends here, else follows the rest of the path into it.
fn find_path_at(base: &str, key: &str, value: &str, path: &[String], out: &mut Splices) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if first != "*" && first != key {
        return;
    }
    if rest.is_empty() {
        out.replace(base, value);
    } else {
        find_path(base, value, rest, out);
    }
}

/// Values at `path` from `text` (a slice of `base`), looking through arrays.
fn find_path(base: &str, text: &str, path: &[String], out: &mut Splices) {
    if let Some(members) = raw::members(text) {
        for (key, value) in members {
            find_path_at(base, &key, value, path, out);
        }
    } else if let Some(items) = raw::items(text) {
        for item in items {
            find_path(base, item, path, out);
        }
    }
}

impl Redact {
    /// Masks what the patterns match in `properties`.
    pub fn apply(&self, properties: &mut Map<String, Value>) {
        for path in &self.paths {
            mask_path(properties, path, &self.replacement);
        }
        if !self.anywhere.is_empty() {
            mask_anywhere(properties, &self.anywhere, &self.replacement);
        }
    }
}

fn mask_anywhere(object: &mut Map<String, Value>, keys: &[String], replacement: &Value) {
    for (key, value) in object.iter_mut() {
        if keys.iter().any(|k| k == key) {
            *value = replacement.clone();
        } else {
            mask_anywhere_in(value, keys, replacement);
        }
    }
}

fn mask_anywhere_in(value: &mut Value, keys: &[String], replacement: &Value) {
    match value {
        Value::Object(object) => mask_anywhere(object, keys, replacement),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| mask_anywhere_in(item, keys, replacement)),
        _ => {}
    }
}

fn mask_path(object: &mut Map<String, Value>, path: &[String], replacement: &Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    for (key, value) in object.iter_mut() {
        if first != "*" && first != key {
            continue;
        }
        if rest.is_empty() {
            *value = replacement.clone();
        } else {
            mask_path_in(value, rest, replacement);
        }
    }
}

fn mask_path_in(value: &mut Value, path: &[String], replacement: &Value) {
    match value {
        Value::Object(object) => mask_path(object, path, replacement),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| mask_path_in(item, path, replacement)),
        _ => {}
    }
}

impl Plugin for Redact {
    fn name(&self) -> &'static str {
        "redact"
    }

    fn process(&self, event: &mut Event<'_, '_>) -> Verdict {
        // Unparsed (the usual case): splice the mask over the values in
        // the text. `$set` and `$set_once` at the top count as properties.
        if let Some((text, index)) = event.indexed() {
            let mut splices = Splices::default();
            for entry in index.properties.iter().flatten().chain(&index.sets) {
                if let (Some(quoted), Some(value)) = (entry.quoted_key(text), entry.value(text)) {
                    self.find_in_member(text, quoted, value, &mut splices);
                }
            }
            if !splices.is_empty() {
                event.splice(splices, &self.replacement_json);
            }
            return Verdict::Keep;
        }
        // Another plugin parsed it: mask the tree.
        let Some(object) = event.object_mut() else {
            return Verdict::Keep;
        };
        // `$identify` puts `$set` beside `properties`: mask it as if inside.
        let mut top = Map::new();
        for key in ["$set", "$set_once"] {
            if let Some(value) = object.remove(key) {
                top.insert(key.to_owned(), value);
            }
        }
        if !top.is_empty() {
            self.apply(&mut top);
            object.extend(top);
        }
        if let Some(Value::Object(properties)) = object.get_mut("properties") {
            self.apply(properties);
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::Redact;
    use crate::plugins::testing::{pipeline, run};
    use crate::runtime_config;

    #[test]
    fn keys_anywhere_paths_and_wildcards() {
        let p = pipeline(
            "version: 1\nplugins: [{redact: {keys: [email, '$set.*.phone', 'card.number'], replacement: '***'}}]",
        );
        let (_, body, _) = run(
            &p,
            "phc_t",
            "$identify",
            "d",
            json!({
                "properties": {
                    "email": "a@b.c",
                    "deep": [{"email": "x@y.z", "keep": 1}],
                    "$set": {"home": {"phone": "555", "city": "Oslo"}},
                    "card": {"number": "4111", "brand": "visa"},
                    "number": "not a card",
                },
                "$set": {"work": {"phone": "556"}, "email": "top@level"},
            }),
        );
        assert_eq!(
            body,
            json!({
                "properties": {
                    "email": "***",
                    "deep": [{"email": "***", "keep": 1}],
                    "$set": {"home": {"phone": "***", "city": "Oslo"}},
                    "card": {"number": "***", "brand": "visa"},
                    "number": "not a card",
                },
                "$set": {"work": {"phone": "***"}, "email": "***"},
            })
        );
    }

    /// JSON trees whose keys come from a small set, so patterns hit often.
    fn tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("email"),
                        Just("phone"),
                        Just("name"),
                        Just("a"),
                        Just("b")
                    ]
                    .prop_map(str::to_owned),
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Puts a secret under every `email` key, anywhere.
    fn plant(value: &mut Value, secret: &str) {
        match value {
            Value::Object(object) => {
                for (key, child) in object.iter_mut() {
                    if key == "email" {
                        *child = json!({"nested": secret, "list": [secret]});
                    } else {
                        plant(child, secret);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| plant(item, secret)),
            _ => {}
        }
    }

    fn no_email_holds_anything_but_the_mask(value: &Value) -> bool {
        match value {
            Value::Object(object) => object.iter().all(|(key, child)| {
                (key != "email" || child == "[redacted]")
                    && no_email_holds_anything_but_the_mask(child)
            }),
            Value::Array(items) => items.iter().all(no_email_holds_anything_but_the_mask),
            _ => true,
        }
    }

    /// Runs `redact` on `body` through the text path or, with `parsed`,
    /// through the tree path (as after another plugin parsed the event).
    fn redacted(redact: &Redact, body: &Value, parsed: bool) -> Value {
        use crate::plugins::{Event, Plugin};
        let raw = body.to_string();
        let mut ip = String::new();
        let mut event = Event::new("phc_t", "e", "d", &mut ip, std::borrow::Cow::Borrowed(&raw));
        if parsed {
            event.object_mut();
        }
        redact.process(&mut event);
        serde_json::from_str(&event.into_body()).expect("still JSON")
    }

    proptest! {
        #[test]
        fn editing_the_text_masks_exactly_what_masking_the_tree_does(
            properties in tree(),
            set in tree(),
            keys in prop::sample::subsequence(vec!["email", "phone", "a.b", "*.name", "b.*.email", "$set.a"], 0..4),
        ) {
            let redact = Redact::new(&runtime_config::Redact {
                keys: keys.iter().map(|k| (*k).to_owned()).collect(),
                replacement: "[redacted]".into(),
            });
            let body = json!({"event": "e", "properties": properties, "$set": set});
            let by_text = redacted(&redact, &body, false);
            let by_tree = redacted(&redact, &body, true);
            prop_assert_eq!(&by_text, &by_tree);

            // Later plugins read properties through the index the splice
            // kept current: the same values as a fresh parse.
            use crate::plugins::{Event, Plugin};
            let raw = body.to_string();
            let mut ip = String::new();
            let mut event = Event::new("phc_t", "e", "d", &mut ip, std::borrow::Cow::Borrowed(&raw));
            redact.process(&mut event);
            for key in ["email", "phone", "name", "a", "b"] {
                let seen = event.property(key).map(|v| v.into_owned());
                prop_assert_eq!(seen.as_ref(), by_tree["properties"].get(key), "{}", key);
            }
        }

        #[test]
        fn a_masked_key_never_leaks_at_any_depth(tree in tree(), secret in "[A-Z]{12}") {
            // Under a root object, with an `email` at the top as well.
            let mut root = json!({"root": tree, "email": null});
            plant(&mut root, &secret);
            let Value::Object(mut properties) = root else { unreachable!("an object") };
            let redact = Redact::new(&runtime_config::Redact {
                keys: vec!["email".into()],
                replacement: "[redacted]".into(),
            });
            redact.apply(&mut properties);
            let text = Value::Object(properties.clone()).to_string();
            prop_assert!(!text.contains(&secret), "leaked: {}", text);
            prop_assert!(no_email_holds_anything_but_the_mask(&Value::Object(properties)));
        }
    }
}
