//! Reading and writing quota settings and usage: the library the operator's
//! `CaptureQuota` controller and the `capture quota` subcommands share, so a
//! runbook and the operator change Redis the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{AsyncCommands, RedisResult, Script};
use serde::{Deserialize, Serialize};

use super::check::QuotaAction;
use super::keys::{DEFAULT_WINDOW_SECS, Keys, QuotaType, field};
use super::store::Store;

/// One event type's limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeLimit {
    /// Most events per window; `None` leaves the type unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Window length in seconds.
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// Cluster-wide rate override, events per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Burst override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

fn default_window() -> u64 {
    DEFAULT_WINDOW_SECS
}

impl Default for TypeLimit {
    fn default() -> Self {
        TypeLimit {
            limit: None,
            window_secs: DEFAULT_WINDOW_SECS,
            rate: None,
            burst: None,
        }
    }
}

/// A token's quota settings, as stored in `quota-config:{token}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// Over-quota action; `None` uses the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<QuotaAction>,
    /// Limits by event type.
    #[serde(default)]
    pub types: BTreeMap<QuotaType, TypeLimit>,
}

impl Serialize for QuotaType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for QuotaType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Usage of one type's open window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeUsage {
    /// The limit in force.
    pub limit: u64,
    /// Events counted in the open window (0 when none is open).
    pub used: u64,
    /// What is left (never below 0).
    pub remaining: u64,
    /// Time until the open window ends, if one is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_in_secs: Option<u64>,
}

/// Settings and usage of one token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaStatus {
    /// What is configured.
    pub settings: QuotaSettings,
    /// Usage per limited type.
    pub usage: BTreeMap<QuotaType, TypeUsage>,
}

/// Quota administration on one Redis.
#[derive(Clone)]
pub struct QuotaAdmin {
    store: Store,
    keys: Keys,
}

impl QuotaAdmin {
    /// Administers keys under `keys`' prefix on `store`.
    pub fn new(store: Store, keys: Keys) -> Self {
        QuotaAdmin { store, keys }
    }

    /// Replaces `token`'s settings. Open windows carry over: a raised limit
    /// adds to what remains, a lowered one takes away, a removed one resets.
    pub async fn set(&self, token: &str, settings: &QuotaSettings) -> RedisResult<()> {
        let script = Script::new(include_str!("set.lua"));
        let mut invocation = script.key(self.keys.quota_config(token));
        for kind in QuotaType::ALL {
            invocation.key(self.keys.quota(token, kind));
        }
        invocation
            .arg(settings.action.map_or("", QuotaAction::as_str))
            .arg(QuotaType::ALL.len());
        for kind in QuotaType::ALL {
            let limit = settings.types.get(&kind).cloned().unwrap_or_default();
            let text = |v: Option<String>| v.unwrap_or_default();
            invocation
                .arg(kind.as_str())
                .arg(text(limit.limit.map(|l| l.to_string())))
                .arg(limit.window_secs.max(1))
                .arg(text(limit.rate.map(|r| r.to_string())))
                .arg(text(limit.burst.map(|b| b.to_string())));
        }
        let _: i64 = invocation.invoke_async(&mut self.store.clone()).await?;
        Ok(())
    }

    /// Reads `token`'s settings and the usage of its open windows.
    pub async fn get(&self, token: &str) -> RedisResult<QuotaStatus> {
        let mut conn = self.store.clone();
        let hash: BTreeMap<String, String> = conn.hgetall(self.keys.quota_config(token)).await?;
        let settings = settings_from_hash(&hash);
        let mut usage = BTreeMap::new();
        for (kind, limit) in &settings.types {
            let Some(max) = limit.limit else { continue };
            let key = self.keys.quota(token, *kind);
            let remaining: Option<i64> = conn.get(&key).await?;
            let ttl_ms: i64 = conn.pttl(&key).await?;
            let left = remaining.unwrap_or(max as i64);
            usage.insert(
                *kind,
                TypeUsage {
                    limit: max,
                    used: (max as i64 - left).max(0) as u64,
                    remaining: left.max(0) as u64,
                    resets_in_secs: (ttl_ms >= 0)
                        .then(|| Duration::from_millis(ttl_ms as u64).as_secs()),
                },
            );
        }
        Ok(QuotaStatus { settings, usage })
    }

    /// Ends the open windows (all types, or one): the next event starts a
    /// fresh window with the whole limit.
    pub async fn reset(&self, token: &str, kind: Option<QuotaType>) -> RedisResult<()> {
        let keys: Vec<String> = match kind {
            Some(kind) => vec![self.keys.quota(token, kind)],
            None => QuotaType::ALL
                .iter()
                .map(|k| self.keys.quota(token, *k))
                .collect(),
        };
        // All keys share the token's slot, so one DEL works on a cluster.
        let _: i64 = self.store.clone().del(keys).await?;
        Ok(())
    }

    /// Removes everything capture keeps for `token`'s quotas and rates.
    /// Deleting what is already gone is not an error.
    pub async fn delete(&self, token: &str) -> RedisResult<()> {
        let mut keys = vec![self.keys.quota_config(token)];
        for kind in QuotaType::ALL {
            keys.push(self.keys.quota(token, kind));
            keys.push(self.keys.rate(token, kind));
        }
        let _: i64 = self.store.clone().del(keys).await?;
        Ok(())
    }
}

/// Settings from the hash's fields; unknown or malformed fields are skipped.
pub fn settings_from_hash(hash: &BTreeMap<String, String>) -> QuotaSettings {
    let mut settings = QuotaSettings {
        action: hash
            .get(field::ACTION)
            .and_then(|name| QuotaAction::from_name(name)),
        types: BTreeMap::new(),
    };
    for kind in QuotaType::ALL {
        let get = |name: String| hash.get(&name);
        let limit = get(field::limit(kind)).and_then(|v| v.parse().ok());
        let rate = get(field::rate(kind)).and_then(|v| v.parse().ok());
        let burst = get(field::burst(kind)).and_then(|v| v.parse().ok());
        if limit.is_none() && rate.is_none() && burst.is_none() {
            continue;
        }
        settings.types.insert(
            kind,
            TypeLimit {
                limit,
                window_secs: get(field::window(kind))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(DEFAULT_WINDOW_SECS),
                rate,
                burst,
            },
        );
    }
    settings
}
