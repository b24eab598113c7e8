//! `redact`: replaces property values by key. A pattern without a dot
//! (`email`) matches that key at any depth; a dotted one (`$set.phone`)
//! is a path from the properties, where `*` stands for any one key and
//! arrays are looked through. The top-level `$set` and `$set_once`
//! objects of `$identify` events are treated as `properties.$set` and
//! `properties.$set_once`.

use serde_json::{Map, Value};

use super::{Event, Plugin, Verdict};
use crate::runtime_config;

/// The `redact` plugin.
#[derive(Debug)]
pub struct Redact {
    anywhere: Vec<String>,
    paths: Vec<Vec<String>>,
    replacement: Value,
}

impl Redact {
    /// From its settings.
    pub fn new(settings: &runtime_config::Redact) -> Self {
        let (paths, anywhere): (Vec<&String>, Vec<&String>) =
            settings.keys.iter().partition(|key| key.contains('.'));
        Redact {
            anywhere: anywhere.into_iter().cloned().collect(),
            paths: paths
                .into_iter()
                .map(|path| path.split('.').map(str::to_owned).collect())
                .collect(),
            replacement: Value::String(settings.replacement.clone()),
        }
    }

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

    proptest! {
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
