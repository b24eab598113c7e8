//! Event restrictions, as PostHog has them: events of the listed tokens,
//! event names, distinct ids, session ids and uuids (an empty list matches
//! any) are dropped, sent to overflow, marked to skip person processing,
//! redirected to a topic, or sent to the dead-letter topic. They run
//! before the plugins; the first matching restriction decides.

use std::collections::HashSet;
use std::sync::Arc;

use super::drop::listed;
use super::{Event, Verdict};
use crate::runtime_config::{Restriction, RestrictionAction};

#[derive(Debug)]
struct Compiled {
    action: RestrictionAction,
    tokens: HashSet<String>,
    events: HashSet<String>,
    distinct_ids: HashSet<String>,
    session_ids: HashSet<String>,
    uuids: HashSet<uuid::Uuid>,
    topic: Option<Arc<str>>,
}

/// The restrictions of one runtime config version.
#[derive(Debug, Default)]
pub struct Restrictions(Vec<Compiled>);

impl Restrictions {
    /// From the runtime config's list (validated).
    pub fn new(list: &[Restriction]) -> Self {
        Restrictions(
            list.iter()
                .map(|r| Compiled {
                    action: r.action,
                    tokens: r.tokens.iter().cloned().collect(),
                    events: r.events.iter().cloned().collect(),
                    distinct_ids: r.distinct_ids.iter().cloned().collect(),
                    session_ids: r.session_ids.iter().cloned().collect(),
                    uuids: r
                        .event_uuids
                        .iter()
                        .filter_map(|id| uuid::Uuid::parse_str(id).ok())
                        .collect(),
                    topic: r.topic.as_deref().map(Arc::from),
                })
                .collect(),
        )
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The verdict of the first restriction matching `event`.
    pub fn apply(&self, event: &mut Event<'_, '_>) -> Verdict {
        let mut session: Option<Option<String>> = None;
        let mut hit = None;
        for r in &self.0 {
            let named = listed(&r.tokens, event.token)
                && listed(&r.events, event.name)
                && listed(&r.distinct_ids, event.distinct_id)
                && (r.uuids.is_empty() || event.uuid.is_some_and(|id| r.uuids.contains(&id)));
            if !named {
                continue;
            }
            if !r.session_ids.is_empty() {
                // Read from the properties once, and only when asked.
                let session = session.get_or_insert_with(|| {
                    event
                        .property("$session_id")
                        .and_then(|v| v.as_str().map(str::to_owned))
                });
                if !session
                    .as_ref()
                    .is_some_and(|id| r.session_ids.contains(id))
                {
                    continue;
                }
            }
            hit = Some(r);
            break;
        }
        let Some(hit) = hit else {
            return Verdict::Keep;
        };
        match hit.action {
            RestrictionAction::Drop => Verdict::Drop,
            RestrictionAction::ForceOverflow => Verdict::Overflow,
            RestrictionAction::RedirectToDlq => Verdict::DeadLetter,
            RestrictionAction::Redirect => match &hit.topic {
                Some(topic) => Verdict::Topic(Arc::clone(topic)),
                None => Verdict::Keep,
            },
            RestrictionAction::SkipPersonProcessing => Verdict::Personless,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::plugins::Verdict;
    use crate::plugins::testing::{pipeline, run};

    #[test]
    fn each_action_and_the_first_match_wins() {
        let p = pipeline(
            "version: 1
restrictions:
  - {action: drop, tokens: [phc_a], events: [spam]}
  - {action: forceOverflow, tokens: [phc_a]}
  - {action: redirect, events: [export], topic: exports}
  - {action: skipPersonProcessing, distinctIds: [anon]}
",
        );
        assert_eq!(run(&p, "phc_a", "spam", "d", json!({})).0, Verdict::Drop);
        assert_eq!(
            run(&p, "phc_a", "click", "d", json!({})).0,
            Verdict::Overflow
        );
        assert_eq!(
            run(&p, "phc_b", "export", "d", json!({})).0,
            Verdict::Topic("exports".into())
        );
        let (verdict, body, _) = run(
            &p,
            "phc_b",
            "click",
            "anon",
            json!({"properties": {"x": 1}}),
        );
        assert_eq!(verdict, Verdict::Personless);
        assert_eq!(body["properties"], json!({"x": 1}), "its text untouched");
        assert_eq!(run(&p, "phc_b", "click", "d", json!({})).0, Verdict::Keep);
    }

    #[test]
    fn session_ids_and_uuids_match_and_the_dead_letter_route_is_an_action() {
        let p = pipeline(
            "version: 1
restrictions:
  - {action: drop, sessionIds: [s-bad]}
  - {action: redirectToDlq, eventUuids: [0190B0E1-0000-7000-8000-000000000001]}
",
        );
        let props = |session: &str| json!({"properties": {"$session_id": session}});
        assert_eq!(run(&p, "t", "e", "d", props("s-bad")).0, Verdict::Drop);
        assert_eq!(run(&p, "t", "e", "d", props("s-good")).0, Verdict::Keep);
        assert_eq!(
            run(&p, "t", "e", "d", json!({"properties": 1})).0,
            Verdict::Keep
        );
        let id = uuid::Uuid::parse_str("0190b0e1-0000-7000-8000-000000000001").expect("uuid");
        assert_eq!(
            crate::plugins::testing::run_with_uuid(&p, id, props("s-good")).0,
            Verdict::DeadLetter
        );
        assert_eq!(
            crate::plugins::testing::run_with_uuid(&p, uuid::Uuid::nil(), props("s-good")).0,
            Verdict::Keep
        );
    }
}
