//! What happens to each event of a request, from parsing to Kafka's answer.
//!
//! [`crate::process`] (and [`crate::recordings`]) turn a request into
//! [`Candidates`]: the request's token and, per event, one [`Candidate`]
//! holding what the later steps need to know about it (its data type,
//! distinct id, the id deduplication keys on) and the message to produce.
//! Each candidate carries a [`Verdict`]: plugins and policies set it, the
//! sink's [`Delivery`] marks what Kafka did not acknowledge as
//! [`Verdict::Failed`], and the policies then commit their Redis effects
//! (dedup markers, quota, rate) for exactly the events delivered and
//! release the rest (see [`crate::policy`]). The HTTP answer renders the
//! verdicts: [`Candidates::answer`] for PostHog's v0 endpoints, one status
//! for the whole request; the v1 protocol's per-event results render the
//! same verdicts one by one.
//!
//! This module holds no Redis or Kafka detail: it is the record the stages
//! hand each other, in place of vectors aligned by index.

use crate::policy::{Held, QuotaType};
use crate::route::DataType;
use crate::sink::{Delivery, Message};

/// What happens to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// To be produced to its topic; once the sink answered, produced.
    Accepted,
    /// To be produced (once the sink answered: produced) to the overflow
    /// topic, unkeyed: a plugin, forced overflow, a hot key or a rate limit
    /// moved it there.
    Overflowed,
    /// To be produced (once the sink answered: produced) to a topic a
    /// plugin chose.
    Rerouted,
    /// Dropped by the runtime config's restrictions or plugins (named
    /// here); the answer stays 200.
    Dropped(&'static str),
    /// Already captured within the dedup window; not produced again.
    Duplicate,
    /// Over its type's quota: dropped, and named in the answer's
    /// `quota_limited`.
    Limited(QuotaType),
    /// Handed to the sink and not acknowledged: the client must send it
    /// again (the request is answered 503).
    Failed,
}

impl Verdict {
    /// Whether the event goes to the sink (or went, and was acknowledged).
    pub fn produces(self) -> bool {
        matches!(
            self,
            Verdict::Accepted | Verdict::Overflowed | Verdict::Rerouted
        )
    }
}

/// What deduplication keys an event on, besides its token and distinct id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupId {
    /// The event name.
    pub event: String,
    /// The client's id for the event: its `uuid`, else its `timestamp`
    /// text.
    pub id: String,
}

/// One event of a request on its way through capture.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its data type as built (a plugin's overflow makes it
    /// [`DataType::Overflow`]); quotas count it by this.
    pub kind: DataType,
    /// Its distinct id (hot keys and dedup markers are per distinct id).
    pub distinct_id: String,
    /// What dedup keys it on; `None` when dedup is off, for recordings, or
    /// when the client sent neither a uuid nor a timestamp (a uuid capture
    /// made up never repeats).
    pub dedup: Option<DedupId>,
    /// The message to produce; `None` once dropped or handed to the sink.
    pub message: Option<Message>,
    /// What happens to it.
    pub verdict: Verdict,
    /// What the policies reserved in Redis for it, to commit once it is
    /// delivered or release if it is not.
    pub held: Held,
}

impl Candidate {
    /// An event to produce as `message`.
    pub fn new(message: Message, distinct_id: String, dedup: Option<DedupId>) -> Self {
        Candidate {
            kind: message.kind,
            distinct_id,
            dedup,
            message: Some(message),
            verdict: Verdict::Accepted,
            held: Held::default(),
        }
    }

    /// An event a plugin or restriction dropped before its message was
    /// built.
    pub fn dropped(kind: DataType, distinct_id: String, by: &'static str) -> Self {
        Candidate {
            kind,
            distinct_id,
            dedup: None,
            message: None,
            verdict: Verdict::Dropped(by),
            held: Held::default(),
        }
    }

    /// Sets `verdict`; an event no longer produced gives up its message.
    pub fn decide(&mut self, verdict: Verdict) {
        self.verdict = verdict;
        if !verdict.produces() {
            self.message = None;
        }
    }
}

/// A request's events, all of one token.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    /// The request's project token.
    pub token: String,
    /// One per event, in request order.
    pub events: Vec<Candidate>,
    /// The client says it sends these events again (v1's `PostHog-Attempt`
    /// above 1): some may be in Kafka already, so deduplication is asked
    /// before any quota known locally drops them.
    pub retry: bool,
}

/// The v0 answer to a request whose events all have a final verdict and
/// none failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// Types with events dropped for quota, in a fixed order.
    pub quota_limited: Vec<QuotaType>,
}

impl Candidates {
    /// Whether any event is to be produced.
    pub fn any_to_produce(&self) -> bool {
        self.events.iter().any(|e| e.verdict.produces())
    }

    /// Moves out the messages of the events to produce, in request order,
    /// for the sink; [`Candidates::delivered`] takes the sink's answer
    /// about them in the same order.
    pub fn take_messages(&mut self) -> Vec<Message> {
        self.events
            .iter_mut()
            .filter(|e| e.verdict.produces())
            .filter_map(|e| e.message.take())
            .collect()
    }

    /// Records the sink's answer about the messages
    /// [`Candidates::take_messages`] handed it: what was not acknowledged
    /// failed.
    pub fn delivered(&mut self, delivery: &Delivery) {
        let mut acked = delivery.acked.iter();
        for event in self.events.iter_mut().filter(|e| e.verdict.produces()) {
            if acked.next() != Some(&true) {
                event.verdict = Verdict::Failed;
            }
        }
    }

    /// Events whose verdict is `verdict`.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.events.iter().filter(|e| e.verdict == verdict).count()
    }

    /// How many of the events to produce are not in Kafka: once the sink
    /// answered, those it did not acknowledge; before (the request was
    /// refused earlier), all of them.
    pub fn not_produced(&self) -> usize {
        match self.count(Verdict::Failed) {
            0 => self.events.iter().filter(|e| e.verdict.produces()).count(),
            failed => failed,
        }
    }

    /// The v0 answer: `None` when an event failed (the request is answered
    /// 503 and sent again whole), else the types limited by quota.
    pub fn answer(&self) -> Option<Answer> {
        let mut answer = Answer::default();
        for event in &self.events {
            match event.verdict {
                Verdict::Failed => return None,
                Verdict::Limited(kind) if !answer.quota_limited.contains(&kind) => {
                    answer.quota_limited.push(kind);
                }
                _ => {}
            }
        }
        answer.quota_limited.sort();
        Some(answer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sink::SinkError;

    fn message(kind: DataType, payload: &str) -> Message {
        Message {
            kind,
            topic: Arc::from("clickhouse_events"),
            key: None,
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    fn candidates(verdicts: &[Verdict]) -> Candidates {
        let events = verdicts
            .iter()
            .enumerate()
            .map(|(i, verdict)| {
                let mut event =
                    Candidate::new(message(DataType::Events, &i.to_string()), "u".into(), None);
                event.decide(*verdict);
                event
            })
            .collect();
        Candidates {
            token: "phc_t".into(),
            events,
            retry: false,
        }
    }

    #[test]
    fn only_events_to_produce_reach_the_sink_and_in_request_order() {
        let mut request = candidates(&[
            Verdict::Accepted,
            Verdict::Duplicate,
            Verdict::Overflowed,
            Verdict::Limited(QuotaType::Events),
            Verdict::Rerouted,
        ]);
        let payloads: Vec<String> = request
            .take_messages()
            .into_iter()
            .map(|m| m.payload)
            .collect();
        assert_eq!(payloads, ["0", "2", "4"]);
        assert!(request.events.iter().all(|e| e.message.is_none()));
    }

    #[test]
    fn what_the_sink_did_not_acknowledge_fails_and_refuses_the_answer() {
        let mut request = candidates(&[
            Verdict::Accepted,
            Verdict::Duplicate,
            Verdict::Accepted,
            Verdict::Overflowed,
        ]);
        let sent = request.take_messages();
        assert_eq!(sent.len(), 3);
        request.delivered(&Delivery {
            acked: vec![true, false, true],
            error: Some(SinkError::Timeout),
        });
        let verdicts: Vec<Verdict> = request.events.iter().map(|e| e.verdict).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Accepted,
                Verdict::Duplicate,
                Verdict::Failed,
                Verdict::Overflowed
            ]
        );
        assert_eq!(request.answer(), None);
        assert_eq!(
            request.not_produced(),
            1,
            "the acknowledged ones were produced"
        );
    }

    #[test]
    fn a_request_refused_before_the_sink_produced_none_of_its_events() {
        let request = candidates(&[Verdict::Accepted, Verdict::Duplicate, Verdict::Overflowed]);
        assert_eq!(request.not_produced(), 2);
    }

    #[test]
    fn a_short_delivery_fails_the_events_it_does_not_mention() {
        let mut request = candidates(&[Verdict::Accepted, Verdict::Accepted]);
        request.take_messages();
        request.delivered(&Delivery {
            acked: vec![true],
            error: None,
        });
        assert_eq!(request.count(Verdict::Failed), 1);
    }

    #[test]
    fn the_answer_names_each_limited_type_once_in_a_fixed_order() {
        let mut request = candidates(&[
            Verdict::Limited(QuotaType::Historical),
            Verdict::Accepted,
            Verdict::Limited(QuotaType::Exceptions),
            Verdict::Limited(QuotaType::Historical),
            Verdict::Dropped("sample"),
        ]);
        request.take_messages();
        request.delivered(&Delivery::all(1));
        assert_eq!(
            request.answer(),
            Some(Answer {
                quota_limited: vec![QuotaType::Exceptions, QuotaType::Historical]
            })
        );
    }
}
