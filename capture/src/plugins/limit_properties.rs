//! `limitProperties`: keeps at most `maxCount` properties (the first by
//! key order) and truncates string values, at any depth, to
//! `maxStringLength` characters.

use serde_json::Value;

use super::{Event, Plugin, Verdict};
use crate::runtime_config;

/// The `limitProperties` plugin.
#[derive(Debug)]
pub struct LimitProperties {
    max_count: Option<usize>,
    max_chars: Option<usize>,
}

impl LimitProperties {
    /// From its settings.
    pub fn new(settings: &runtime_config::LimitProperties) -> Self {
        LimitProperties {
            max_count: settings.max_count.map(|n| n as usize),
            max_chars: settings.max_string_length.map(|n| n as usize),
        }
    }
}

fn truncate_strings(value: &mut Value, max: usize) {
    match value {
        Value::String(text) => {
            if let Some((cut, _)) = text.char_indices().nth(max) {
                text.truncate(cut);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| truncate_strings(item, max)),
        Value::Object(members) => members.values_mut().for_each(|v| truncate_strings(v, max)),
        _ => {}
    }
}

impl Plugin for LimitProperties {
    fn name(&self) -> &'static str {
        "limitProperties"
    }

    fn process(&self, event: &mut Event<'_, '_>) -> Verdict {
        let Some(properties) = event.properties_mut() else {
            return Verdict::Keep;
        };
        if let Some(max) = self.max_count
            && properties.len() > max
        {
            let extra: Vec<String> = properties.keys().skip(max).cloned().collect();
            for key in extra {
                properties.remove(&key);
            }
        }
        if let Some(max) = self.max_chars {
            properties
                .values_mut()
                .for_each(|v| truncate_strings(v, max));
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::plugins::testing::{pipeline, run};

    #[test]
    fn counts_and_lengths_are_bounded() {
        let p =
            pipeline("version: 1\nplugins: [{limitProperties: {maxCount: 2, maxStringLength: 3}}]");
        let (_, body, _) = run(
            &p,
            "phc_t",
            "e",
            "d",
            json!({"properties": {"a": "abcdef", "b": {"nested": ["héllo", 5]}, "c": "gone"}}),
        );
        assert_eq!(
            body["properties"],
            json!({"a": "abc", "b": {"nested": ["hél", 5]}})
        );
    }
}
