//! Local token buckets per `token:distinct_id`: one replica's guard against a
//! single hot partition key, answered in memory with no Redis round trip.
//!
//! Buckets live in sharded maps; a shard that grows past its cap drops the
//! buckets that have refilled completely (they hold no state worth keeping),
//! so memory follows the number of keys that are actually hot. A bucket is
//! found by a seeded 64-bit hash of its key, not the key itself: no string
//! is built or kept per event, and two keys meet in one bucket only if
//! their hashes collide (about one pair in 2^32 with 2^16 hot keys alive).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Instant;

// Seeded per process: keys are client-chosen, so the hash must not be
// predictable, but it runs once per event and must be cheap.
use foldhash::fast::RandomState;

const SHARDS: usize = 16;
/// Buckets per shard before refilled ones are swept.
const SWEEP_AT: usize = 8192;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by partition key.
#[derive(Debug)]
pub struct HotKeys {
    rate: f64,
    burst: f64,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Debug)]
struct Shard {
    buckets: HashMap<u64, Bucket, RandomState>,
    /// Size at which the next sweep runs: doubled past what a sweep left,
    /// so a shard of keys that are all busy is not rescanned on every insert.
    sweep_at: usize,
}

impl HotKeys {
    /// Buckets refilling at `rate` events per second, holding at most `burst`.
    pub fn new(rate: f64, burst: u32) -> Self {
        let hasher = RandomState::default();
        HotKeys {
            rate,
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::with_hasher(hasher.clone()),
                        sweep_at: SWEEP_AT,
                    })
                })
                .collect(),
            hasher,
        }
    }

    /// Takes one event from the bucket of `token:distinct_id`; false when
    /// it is empty.
    pub fn take(&self, token: &str, distinct_id: &str, now: Instant) -> bool {
        let mut hasher = self.hasher.build_hasher();
        // `str`'s `Hash` ends each string, so the pair is unambiguous.
        token.hash(&mut hasher);
        distinct_id.hash(&mut hasher);
        let key = hasher.finish();
        // High bits pick the shard; the map inside hashes the key again.
        let shard = &self.shards[(key >> 60) as usize % SHARDS];
        let mut shard = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(bucket) = shard.buckets.get_mut(&key) {
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
            bucket.updated = now;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                return true;
            }
            return false;
        }
        if shard.buckets.len() >= shard.sweep_at {
            let (rate, burst) = (self.rate, self.burst);
            shard.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst
            });
            shard.sweep_at = (shard.buckets.len() * 2).max(SWEEP_AT);
        }
        shard.buckets.insert(
            key,
            Bucket {
                tokens: self.burst - 1.0,
                updated: now,
            },
        );
        true
    }

    /// Buckets currently held (for tests and memory checks).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |shard| shard.buckets.len()))
            .sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_hot_key_runs_dry_and_refills_while_others_pass() {
        let keys = HotKeys::new(10.0, 3);
        let start = Instant::now();
        assert!((0..3).all(|_| keys.take("t", "hot", start)));
        assert!(!keys.take("t", "hot", start));
        assert!(keys.take("t", "cold", start));
        // The pair, not the joined text, names the bucket.
        assert!(keys.take("t:", "hot", start));
        assert!(keys.take("t:h", "ot", start));
        // 10 per second: one more after 100 ms.
        let later = start + Duration::from_millis(100);
        assert!(keys.take("t", "hot", later));
        assert!(!keys.take("t", "hot", later));
    }

    #[test]
    fn refilled_buckets_are_swept_when_a_shard_fills() {
        let keys = HotKeys::new(1000.0, 2);
        let start = Instant::now();
        let busy = SWEEP_AT * SHARDS * 2;
        for i in 0..busy {
            keys.take("t", &i.to_string(), start);
        }
        // Busy buckets (not yet refilled) are all kept.
        assert_eq!(keys.len(), busy);
        // Much later every bucket is full again: new keys sweep them away.
        let later = start + Duration::from_secs(5);
        let mut inserted = 0;
        while keys.len() >= busy {
            keys.take("u", &inserted.to_string(), later);
            inserted += 1;
            assert!(inserted < busy, "no sweep after {inserted} new keys");
        }
    }
}
