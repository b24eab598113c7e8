//! `drop`: drops the events that match every given condition (tokens,
//! event names, distinct ids, one property's value).

use std::collections::HashSet;

use serde_json::Value;

use super::{Event, Plugin, Verdict};
use crate::runtime_config::{DropMatcher, PropertyMatch};

/// The `drop` plugin.
#[derive(Debug)]
pub struct DropMatching {
    tokens: HashSet<String>,
    events: HashSet<String>,
    distinct_ids: HashSet<String>,
    property: Option<PropertyMatch>,
}

impl DropMatching {
    /// From its settings.
    pub fn new(settings: &DropMatcher) -> Self {
        DropMatching {
            tokens: settings.tokens.iter().cloned().collect(),
            events: settings.events.iter().cloned().collect(),
            distinct_ids: settings.distinct_ids.iter().cloned().collect(),
            property: settings.property.clone(),
        }
    }
}

/// An empty list matches anything.
pub(crate) fn listed(list: &HashSet<String>, value: &str) -> bool {
    list.is_empty() || list.contains(value)
}

/// A property value as the text `equals` compares with: strings as they
/// are, anything else as its JSON.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

impl Plugin for DropMatching {
    fn name(&self) -> &'static str {
        "drop"
    }

    fn process(&self, event: &mut Event<'_, '_>) -> Verdict {
        if !listed(&self.tokens, event.token)
            || !listed(&self.events, event.name)
            || !listed(&self.distinct_ids, event.distinct_id)
        {
            return Verdict::Keep;
        }
        if let Some(wanted) = &self.property {
            let matches = event
                .property(&wanted.key)
                .is_some_and(|value| as_text(&value) == wanted.equals);
            if !matches {
                return Verdict::Keep;
            }
        }
        Verdict::Drop
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::plugins::Verdict;
    use crate::plugins::testing::{pipeline, run};

    #[test]
    fn every_given_condition_must_match() {
        let p = pipeline(
            "version: 1\nplugins: [{drop: {tokens: [phc_a], events: [e], property: {key: internal, equals: 'true'}}}]",
        );
        let internal = json!({"properties": {"internal": true}});
        let external = json!({"properties": {"internal": false}});
        assert_eq!(
            run(&p, "phc_a", "e", "d", internal.clone()).0,
            Verdict::Drop
        );
        assert_eq!(run(&p, "phc_a", "e", "d", external).0, Verdict::Keep);
        assert_eq!(
            run(&p, "phc_b", "e", "d", internal.clone()).0,
            Verdict::Keep
        );
        assert_eq!(run(&p, "phc_a", "other", "d", internal).0, Verdict::Keep);
        assert_eq!(run(&p, "phc_a", "e", "d", json!({})).0, Verdict::Keep);
        let by_id = pipeline("version: 1\nplugins: [{drop: {distinctIds: [bot]}}]");
        assert_eq!(run(&by_id, "phc_a", "e", "bot", json!({})).0, Verdict::Drop);
        assert_eq!(
            run(&by_id, "phc_a", "e", "human", json!({})).0,
            Verdict::Keep
        );
    }
}
