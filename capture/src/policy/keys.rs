//! The Redis key schema: the one definition of every key and hash field that
//! capture reads and the operator (through [`super::admin`]) writes.
//!
//! Every key of a token carries the token as its hash tag (`{token}`), so all
//! of them live in one cluster slot and one Lua script may touch them all.
//! The braces in ARCHITECTURE.md's key shapes are exactly those hash tags.

use std::fmt;
use std::str::FromStr;

/// What a quota counts. Each has its own limit, window and counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaType {
    /// Analytics events (including client warnings and overflowed events).
    Events,
    /// Session recording requests (one snapshot message each).
    Recordings,
    /// `$exception` events.
    Exceptions,
    /// Events of `historical_migration` batches.
    Historical,
}

impl QuotaType {
    /// Every type, in a fixed order.
    pub const ALL: [QuotaType; 4] = [
        QuotaType::Events,
        QuotaType::Recordings,
        QuotaType::Exceptions,
        QuotaType::Historical,
    ];

    /// The name used in keys, hash fields, `quota_limited` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaType::Events => "events",
            QuotaType::Recordings => "recordings",
            QuotaType::Exceptions => "exceptions",
            QuotaType::Historical => "historical",
        }
    }

    /// The resource of PostHog's billing limits that covers this type.
    pub fn billing_resource(self) -> &'static str {
        match self {
            QuotaType::Events | QuotaType::Historical => "events",
            QuotaType::Recordings => "recordings",
            QuotaType::Exceptions => "exceptions",
        }
    }
}

impl fmt::Display for QuotaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QuotaType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        QuotaType::ALL
            .into_iter()
            .find(|t| t.as_str() == text)
            .ok_or_else(|| {
                format!("unknown event type {text:?}; expected one of events, recordings, exceptions, historical")
            })
    }
}

/// Fields of the `quota-config:{token}` hash.
pub mod field {
    use super::QuotaType;

    /// What to do with over-quota events: `drop` (200 with `quota_limited`)
    /// or `reject` (429). Absent: the server's `--quota-action`.
    pub const ACTION: &str = "action";

    /// Most events per window.
    pub fn limit(kind: QuotaType) -> String {
        format!("{kind}:limit")
    }

    /// Window length in seconds; the counter expires when it ends.
    pub fn window(kind: QuotaType) -> String {
        format!("{kind}:window")
    }

    /// Cluster-wide rate (events per second) overriding `--rate-limit`.
    pub fn rate(kind: QuotaType) -> String {
        format!("{kind}:rate")
    }

    /// Burst overriding `--rate-limit-burst`.
    pub fn burst(kind: QuotaType) -> String {
        format!("{kind}:burst")
    }
}

/// Window used when a limit is written without one: a day.
pub const DEFAULT_WINDOW_SECS: u64 = 86_400;

/// Builds keys under one prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`, which must not contain braces (they would move
    /// the hash tag off the token).
    pub fn new(prefix: &str) -> Result<Self, String> {
        if prefix.contains(['{', '}']) {
            return Err(format!(
                "redis key prefix {prefix:?} contains a brace; braces are reserved for the token's hash tag"
            ));
        }
        Ok(Keys {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `quota-config:{token}`: the limits the operator wrote (a hash).
    pub fn quota_config(&self, token: &str) -> String {
        self.quota_config_parts(token).concat()
    }

    /// `quota:{token}:{type}`: what remains of the window (a string).
    pub fn quota(&self, token: &str, kind: QuotaType) -> String {
        self.quota_parts(token, kind).concat()
    }

    /// `rate:{token}:{type}`: the rate limiter's state (a string).
    pub fn rate(&self, token: &str, kind: QuotaType) -> String {
        self.rate_parts(token, kind).concat()
    }

    /// `event:{token}:{distinct_id}:{event}:{id}`: a dedup marker.
    pub fn dedup(&self, token: &str, distinct_id: &str, event: &str, id: &str) -> String {
        self.dedup_parts(token, distinct_id, event, id).concat()
    }

    // The keys as pieces to join: every policy check writes several keys,
    // and it writes them piece by piece into the packed command instead of
    // building each as a string first.

    /// [`Keys::quota_config`] in pieces.
    pub fn quota_config_parts<'a>(&'a self, token: &'a str) -> [&'a str; 6] {
        self.tagged("quota-config:{", token, None)
    }

    /// [`Keys::quota`] in pieces.
    pub fn quota_parts<'a>(&'a self, token: &'a str, kind: QuotaType) -> [&'a str; 6] {
        self.tagged("quota:{", token, Some(kind))
    }

    /// [`Keys::rate`] in pieces.
    pub fn rate_parts<'a>(&'a self, token: &'a str, kind: QuotaType) -> [&'a str; 6] {
        self.tagged("rate:{", token, Some(kind))
    }

    /// [`Keys::dedup`] in pieces.
    pub fn dedup_parts<'a>(
        &'a self,
        token: &'a str,
        distinct_id: &'a str,
        event: &'a str,
        id: &'a str,
    ) -> [&'a str; 9] {
        [
            &self.prefix,
            "event:{",
            token,
            "}:",
            distinct_id,
            ":",
            event,
            ":",
            id,
        ]
    }

    /// `{prefix}{name}{token}}` and `:{kind}` if given.
    fn tagged<'a>(
        &'a self,
        name: &'static str,
        token: &'a str,
        kind: Option<QuotaType>,
    ) -> [&'a str; 6] {
        let (colon, kind) = kind.map_or(("", ""), |kind| (":", kind.as_str()));
        [&self.prefix, name, token, "}", colon, kind]
    }
}

/// The cluster slot of a key, as Redis computes it (CRC16 of the hash tag).
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn keys_follow_the_documented_shapes() {
        let keys = Keys::new("cap:").expect("prefix");
        assert_eq!(keys.quota_config("phc_1"), "cap:quota-config:{phc_1}");
        assert_eq!(
            keys.quota("phc_1", QuotaType::Events),
            "cap:quota:{phc_1}:events"
        );
        assert_eq!(
            keys.rate("phc_1", QuotaType::Recordings),
            "cap:rate:{phc_1}:recordings"
        );
        assert_eq!(
            keys.dedup("phc_1", "user 1", "$pageview", "0190-uuid"),
            "cap:event:{phc_1}:user 1:$pageview:0190-uuid"
        );
        assert!(Keys::new("a{b").is_err(), "brace in prefix");
    }

    #[test]
    fn slot_matches_redis_reference_values() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
    }

    #[test]
    fn quota_types_parse_and_name_the_allowed_values() {
        for kind in QuotaType::ALL {
            assert_eq!(kind.as_str().parse::<QuotaType>(), Ok(kind));
        }
        let err = "event".parse::<QuotaType>().expect_err("unknown");
        assert!(err.contains("events, recordings"), "{err}");
    }

    proptest! {
        /// Whatever the token and event look like, every key of a token hashes
        /// to the same slot, so one script may use them all on a cluster.
        #[test]
        fn a_tokens_keys_share_one_slot(
            token in "[!-z|~]{1,64}",
            distinct_id in "\\PC{0,30}",
            event in "\\PC{0,30}",
            id in "[0-9a-f-]{0,36}",
        ) {
            let keys = Keys::new("p:").expect("prefix");
            let home = slot(&keys.quota_config(&token));
            for kind in QuotaType::ALL {
                prop_assert_eq!(slot(&keys.quota(&token, kind)), home);
                prop_assert_eq!(slot(&keys.rate(&token, kind)), home);
            }
            prop_assert_eq!(slot(&keys.dedup(&token, &distinct_id, &event, &id)), home);
        }
    }
}
