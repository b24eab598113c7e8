//! `sample`: keeps a deterministic share of distinct ids, per event name.
//! The same distinct id is always kept or always dropped for a given rate,
//! in every pod and across restarts (FNV-1a of the distinct id).

use std::collections::HashMap;

use super::{Event, Plugin, Verdict};
use crate::runtime_config;

/// The `sample` plugin.
#[derive(Debug)]
pub struct Sample {
    rate: f64,
    events: HashMap<String, f64>,
}

impl Sample {
    /// From its settings.
    pub fn new(settings: &runtime_config::Sample) -> Self {
        Sample {
            rate: settings.rate,
            events: settings.events.clone().into_iter().collect(),
        }
    }
}

/// Where `distinct_id` falls in [0, 1), the same everywhere.
pub fn position(distinct_id: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in distinct_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The top 53 bits, as a fraction.
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

impl Plugin for Sample {
    fn name(&self) -> &'static str {
        "sample"
    }

    fn process(&self, event: &mut Event<'_, '_>) -> Verdict {
        let rate = self.events.get(event.name).copied().unwrap_or(self.rate);
        if position(event.distinct_id) < rate {
            Verdict::Keep
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::position;
    use crate::plugins::Verdict;
    use crate::plugins::testing::{pipeline, run};

    #[test]
    fn the_share_kept_follows_the_rate_and_each_id_is_decided_once() {
        let p = pipeline(
            "version: 1\nplugins: [{sample: {rate: 0.25, events: {$pageview: 1.0, noise: 0}}}]",
        );
        let kept = (0..10_000)
            .filter(|i| {
                run(&p, "phc_t", "click", &format!("user-{i}"), json!({})).0 == Verdict::Keep
            })
            .count();
        assert!(
            (2_200..2_800).contains(&kept),
            "{kept} of 10000 kept at 0.25"
        );
        for i in 0..100 {
            let id = format!("user-{i}");
            let first = run(&p, "phc_t", "click", &id, json!({})).0;
            assert_eq!(
                run(&p, "phc_t", "click", &id, json!({})).0,
                first,
                "deterministic"
            );
            assert_eq!(
                run(&p, "phc_t", "$pageview", &id, json!({})).0,
                Verdict::Keep
            );
            assert_eq!(run(&p, "phc_t", "noise", &id, json!({})).0, Verdict::Drop);
        }
        // Stable across versions: a fixed id has a fixed position.
        assert!((position("user-42") - position("user-42")).abs() < f64::EPSILON);
        assert!((0.0..1.0).contains(&position("")));
    }
}
