//! Request policies backed by Redis and by local state: quotas (with PostHog's
//! billing limits), deduplication, cluster-wide rate limits, hot-key buckets
//! and forced overflow.
//!
//! [`Policy::apply`] runs between building a request's messages and handing
//! them to the sink. It answers from memory what it can (forced overflow, hot
//! keys, billing limits, tokens known to be out of quota) and asks Redis the
//! rest in one script call. When Redis is slow or down it fails open (or
//! closed, if configured) within `--redis-timeout`, logging once per outage.

pub mod admin;
mod billing;
pub mod check;
pub mod cli;
mod coalesce;
mod hot_keys;
pub mod keys;
mod pipe;
mod resp;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

pub use billing::BillingLimits;
pub use check::{Decision, QuotaAction, RateAction, Verdict};
pub use hot_keys::HotKeys;
pub use keys::{Keys, QuotaType};
pub use store::{Store, StoreSettings};

use crate::error::CaptureError;
use crate::event::header;
use crate::metrics as m;
use crate::route::{DataType, Topics};
use crate::sink::Message;
use check::{CheckRequest, CheckedEvent, Marker, TypeCheck};

/// What to do when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailureMode {
    /// Accept the events unchecked.
    Open,
    /// Refuse the request with 503.
    Closed,
}

/// Settings of the Redis-backed policies.
#[derive(Debug, Clone)]
pub struct RedisPolicySettings {
    /// Where Redis is.
    pub store: StoreSettings,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Longest wait for the policy check, connection included.
    pub timeout: Duration,
    /// Open or closed when Redis fails.
    pub failure_mode: FailureMode,
    /// Enforce quotas.
    pub quotas: bool,
    /// Default over-quota action.
    pub quota_action: QuotaAction,
    /// How long an exhausted token is answered locally before Redis is asked
    /// again (so raised limits apply within this time).
    pub quota_recheck: Duration,
    /// Dedup marker TTL; `None` turns dedup off.
    pub dedup_ttl: Option<Duration>,
    /// Cluster-wide rate per token and type, events per second (0: off
    /// unless a token's settings set one).
    pub rate_limit: f64,
    /// Cluster-wide burst.
    pub rate_burst: u64,
    /// Read PostHog's billing limits from sets under this prefix.
    pub billing_prefix: Option<String>,
    /// How often billing limits are read.
    pub billing_refresh: Duration,
}

/// Settings of the whole policy layer.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// Redis-backed policies, when Redis is configured.
    pub redis: Option<RedisPolicySettings>,
    /// What to do with rate-limited and hot-key events.
    pub rate_action: RateAction,
    /// Local per `token:distinct_id` rate, events per second (0: off).
    pub hot_key_rate: f64,
    /// Local per `token:distinct_id` burst.
    pub hot_key_burst: u32,
    /// Tokens, or `token:distinct_id` pairs, always sent to overflow.
    pub force_overflow: Vec<String>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            redis: None,
            rate_action: RateAction::Overflow,
            hot_key_rate: 0.0,
            hot_key_burst: 1,
            force_overflow: Vec::new(),
        }
    }
}

/// What a request's policies decided, for the response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Types with events dropped for quota, in a fixed order.
    pub quota_limited: Vec<QuotaType>,
}

/// The policy layer shared by all requests.
pub struct Policy {
    redis: Option<RedisPolicy>,
    rate_action: RateAction,
    hot_keys: Option<HotKeys>,
    force_overflow: HashSet<String>,
}

struct RedisPolicy {
    settings: RedisPolicySettings,
    store: Store,
    keys: Keys,
    checks: coalesce::Coalescer,
    billing: Option<Arc<BillingLimits>>,
    exhausted: Mutex<HashMap<(String, QuotaType), (Instant, QuotaAction)>>,
    /// Whether `exhausted` may hold entries (so the common case skips the lock).
    any_exhausted: AtomicBool,
    /// Whether the last round trip failed (or none happened yet).
    failing: AtomicBool,
    /// Whether the current outage was logged (so it is logged once).
    outage_logged: AtomicBool,
    meters: Meters,
}

/// Metric handles touched on every request, registered once.
struct Meters {
    checks: [metrics::Counter; 4],
    round_trip: metrics::Histogram,
    up: metrics::Gauge,
}

impl Meters {
    fn new() -> Self {
        Meters {
            checks: QuotaType::ALL.map(|kind| {
                metrics::counter!(m::QUOTA_CHECKS, "event_type" => kind.as_str(), "source" => "redis")
            }),
            round_trip: metrics::histogram!(m::REDIS_SECONDS),
            up: metrics::gauge!(m::REDIS_UP),
        }
    }

    fn check(&self, kind: QuotaType) -> &metrics::Counter {
        &self.checks[kind as usize]
    }
}

/// The quota type an event of `kind` counts against.
pub fn quota_type(kind: DataType) -> QuotaType {
    match kind {
        DataType::Events | DataType::ClientWarnings | DataType::Overflow => QuotaType::Events,
        DataType::Historical => QuotaType::Historical,
        DataType::Exceptions => QuotaType::Exceptions,
        DataType::Recordings => QuotaType::Recordings,
    }
}

fn header_value<'a>(message: &'a Message, name: &str) -> &'a str {
    message
        .headers
        .iter()
        .find(|(key, _)| *key == name)
        .map_or("", |(_, value)| value.as_str())
}

/// The runtime config's changes to the static policy settings; `None`
/// keeps the static value. They take effect only where Redis policies are
/// on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Rate per second and burst.
    pub rate: Option<(f64, u64)>,
    /// Over the rate limit: overflow or reject.
    pub rate_action: Option<RateAction>,
    /// Dedup TTL; `Some(None)` turns dedup off.
    pub dedup_ttl: Option<Option<Duration>>,
}

impl Overrides {
    /// From a validated runtime config.
    pub fn new(config: &crate::runtime_config::RuntimeConfig) -> Self {
        use crate::runtime_config::RateLimitAction;
        Overrides {
            rate: config.rate_limit.as_ref().map(|rate| {
                let per_second = u64::from(rate.per_second);
                (per_second as f64, rate.burst.map_or(per_second, u64::from))
            }),
            rate_action: config
                .rate_limit
                .as_ref()
                .and_then(|rate| rate.action)
                .map(|action| match action {
                    RateLimitAction::Overflow => RateAction::Overflow,
                    RateLimitAction::Reject => RateAction::Reject,
                }),
            dedup_ttl: config.dedup.as_ref().map(|dedup| {
                crate::runtime_config::dedup_ttl(&dedup.ttl)
                    .ok()
                    .filter(|ttl| !ttl.is_zero())
            }),
        }
    }
}

impl Policy {
    /// A policy layer that does nothing.
    pub fn disabled() -> Self {
        Policy {
            redis: None,
            rate_action: RateAction::Overflow,
            hot_keys: None,
            force_overflow: HashSet::new(),
        }
    }

    /// Builds the layer; Redis connects lazily, so this succeeds while Redis
    /// is down.
    pub fn new(settings: &PolicySettings) -> Result<Self, String> {
        let redis = match &settings.redis {
            None => None,
            Some(redis) => {
                let keys = Keys::new(&redis.key_prefix)?;
                let store = Store::open(&redis.store).map_err(|err| {
                    format!(
                        "invalid redis settings: {}",
                        store::redacted(&err.to_string())
                    )
                })?;
                Some(RedisPolicy {
                    settings: redis.clone(),
                    checks: coalesce::Coalescer::new(
                        store.clone(),
                        pipe::Target::new(&redis.store),
                        check::SOURCE,
                    ),
                    store,
                    keys,
                    billing: redis
                        .billing_prefix
                        .as_deref()
                        .map(|prefix| Arc::new(BillingLimits::new(prefix))),
                    exhausted: Mutex::new(HashMap::new()),
                    any_exhausted: AtomicBool::new(false),
                    // Unknown until the first round trip.
                    failing: AtomicBool::new(true),
                    outage_logged: AtomicBool::new(false),
                    meters: Meters::new(),
                })
            }
        };
        Ok(Policy {
            redis,
            rate_action: settings.rate_action,
            hot_keys: (settings.hot_key_rate > 0.0)
                .then(|| HotKeys::new(settings.hot_key_rate, settings.hot_key_burst)),
            force_overflow: settings.force_overflow.iter().cloned().collect(),
        })
    }

    /// Starts the background work (billing limit refresh). Call inside the
    /// runtime.
    pub fn spawn_background(&self) {
        if let Some(redis) = &self.redis
            && let Some(billing) = &redis.billing
        {
            let billing = Arc::clone(billing);
            let store = redis.store.clone();
            let interval = redis.settings.billing_refresh;
            tokio::spawn(async move { billing.refresh_forever(store, interval).await });
        }
    }

    /// Whether events are deduplicated (so requests must carry client ids),
    /// with the runtime config's `overrides`.
    pub fn dedups(&self, overrides: &Overrides) -> bool {
        self.redis.as_ref().is_some_and(|r| {
            overrides
                .dedup_ttl
                .unwrap_or(r.settings.dedup_ttl)
                .is_some()
        })
    }

    /// Whether any policy is on; when not, [`Policy::apply`] is free.
    pub fn is_active(&self) -> bool {
        self.redis.is_some() || self.hot_keys.is_some() || !self.force_overflow.is_empty()
    }

    /// Applies every policy to one request's messages: drops duplicates and
    /// over-quota events, reroutes overflow, or refuses the request.
    /// `dedup_ids` holds, per message, the client-given id dedup keys on
    /// (empty when dedup is off).
    pub async fn apply(
        &self,
        messages: &mut Vec<Message>,
        dedup_ids: &[Option<String>],
        topics: &Topics,
        now: DateTime<Utc>,
        overrides: &Overrides,
    ) -> Result<Outcome, CaptureError> {
        if !self.is_active() || messages.is_empty() {
            return Ok(Outcome::default());
        }
        let token = header_value(&messages[0], header::TOKEN).to_owned();
        let mut decisions = vec![Decision::Accept; messages.len()];
        let rate_action = overrides.rate_action.unwrap_or(self.rate_action);
        self.local_overflow(&token, messages, &mut decisions, rate_action)?;
        if let Some(redis) = &self.redis {
            // The rate action resolved here, so the check needs no default.
            let overrides = Overrides {
                rate_action: Some(rate_action),
                ..overrides.clone()
            };
            redis
                .check(&token, messages, dedup_ids, &mut decisions, now, &overrides)
                .await?;
        }
        Ok(finish(messages, decisions, topics))
    }

    /// Forced overflow and hot-key buckets, answered in memory.
    fn local_overflow(
        &self,
        token: &str,
        messages: &[Message],
        decisions: &mut [Decision],
        rate_action: RateAction,
    ) -> Result<(), CaptureError> {
        if self.hot_keys.is_none() && self.force_overflow.is_empty() {
            return Ok(());
        }
        let forced_token = self.force_overflow.contains(token);
        let now = Instant::now();
        let mut pair = String::new();
        for (message, decision) in messages.iter().zip(decisions.iter_mut()) {
            if message.kind == DataType::Recordings {
                continue;
            }
            let distinct_id = header_value(message, header::DISTINCT_ID);
            let forced = forced_token
                || (!self.force_overflow.is_empty() && {
                    pair.clear();
                    pair.push_str(token);
                    pair.push(':');
                    pair.push_str(distinct_id);
                    self.force_overflow.contains(&pair)
                });
            let (cause, over) = if forced {
                ("forced", true)
            } else if let Some(hot) = &self.hot_keys {
                ("hot_key", !hot.take(token, distinct_id, now))
            } else {
                ("", false)
            };
            if !over {
                continue;
            }
            if rate_action == RateAction::Reject && cause == "hot_key" {
                metrics::counter!(m::EVENTS_RATE_LIMITED, "event_type" => quota_type(message.kind).as_str(), "action" => "reject")
                    .increment(messages.len() as u64);
                return Err(CaptureError::RateLimited {
                    retry_after: Duration::from_secs(1),
                });
            }
            *decision = Decision::Overflow;
            metrics::counter!(m::EVENTS_OVERFLOWED, "cause" => cause).increment(1);
        }
        Ok(())
    }
}

impl RedisPolicy {
    async fn check(
        &self,
        token: &str,
        messages: &[Message],
        dedup_ids: &[Option<String>],
        decisions: &mut [Decision],
        now: DateTime<Utc>,
        overrides: &Overrides,
    ) -> Result<(), CaptureError> {
        let settings = &self.settings;
        let rate_action = overrides.rate_action.unwrap_or(RateAction::Overflow);
        let (rate_limit, rate_burst) = overrides
            .rate
            .unwrap_or((settings.rate_limit, settings.rate_burst));
        let dedup_ttl = overrides.dedup_ttl.unwrap_or(settings.dedup_ttl);
        // Limits known without asking Redis: billing and exhausted windows.
        let mut local_limited: Vec<(QuotaType, QuotaAction)> = Vec::new();
        if settings.quotas {
            let cached = if !self.any_exhausted.load(Ordering::Relaxed) {
                Vec::new()
            } else {
                let instant = Instant::now();
                let mut exhausted = self.exhausted.lock().unwrap_or_else(|p| p.into_inner());
                exhausted.retain(|_, (until, _)| *until > instant);
                if exhausted.is_empty() {
                    self.any_exhausted.store(false, Ordering::Relaxed);
                    Vec::new()
                } else {
                    QuotaType::ALL
                        .into_iter()
                        .filter_map(|kind| {
                            exhausted
                                .get(&(token.to_owned(), kind))
                                .map(|(_, action)| (kind, *action))
                        })
                        .collect()
                }
            };
            local_limited.extend(cached);
            if let Some(billing) = &self.billing {
                for kind in QuotaType::ALL {
                    if !local_limited.iter().any(|(k, _)| *k == kind)
                        && billing.is_limited(token, kind.billing_resource(), now.timestamp())
                    {
                        local_limited.push((kind, QuotaAction::Drop));
                    }
                }
            }
        }
        let mut types: Vec<TypeCheck> = Vec::with_capacity(2);
        let mut type_index = vec![usize::MAX; messages.len()];
        let mut markers: Vec<Option<Marker<'_>>> = vec![None; messages.len()];
        for (i, message) in messages.iter().enumerate() {
            let kind = quota_type(message.kind);
            if let Some((_, action)) = local_limited.iter().find(|(k, _)| *k == kind) {
                if *action == QuotaAction::Reject {
                    return Err(CaptureError::QuotaExceeded {
                        retry_after: settings.quota_recheck,
                    });
                }
                decisions[i] = Decision::OverQuota;
                metrics::counter!(m::QUOTA_CHECKS, "event_type" => kind.as_str(), "source" => "local")
                    .increment(1);
                continue;
            }
            type_index[i] = match types.iter().position(|t| t.kind == kind) {
                Some(index) => index,
                None => {
                    let analytics = kind != QuotaType::Recordings;
                    types.push(TypeCheck {
                        kind,
                        quota: settings.quotas,
                        rate: if analytics { rate_limit } else { 0.0 },
                        burst: rate_burst,
                    });
                    types.len() - 1
                }
            };
            if dedup_ttl.is_some()
                && message.kind != DataType::Recordings
                && let Some(id) = dedup_ids.get(i).and_then(Option::as_deref)
            {
                markers[i] = Some(Marker {
                    distinct_id: header_value(message, header::DISTINCT_ID),
                    event: header_value(message, header::EVENT),
                    id,
                });
            }
        }
        if types.is_empty() {
            return Ok(());
        }
        let checked: Vec<(usize, CheckedEvent<'_>)> = type_index
            .iter()
            .enumerate()
            .filter(|(_, t)| **t != usize::MAX)
            .map(|(i, &t)| {
                (
                    i,
                    CheckedEvent {
                        type_index: t,
                        marker: markers[i],
                    },
                )
            })
            .collect();
        let events: Vec<CheckedEvent<'_>> = checked.iter().map(|(_, e)| *e).collect();
        let request = CheckRequest {
            token,
            now_ms: now.timestamp_millis(),
            types: &types,
            events: &events,
            dedup_ttl: dedup_ttl.unwrap_or(Duration::from_secs(1)),
            quota_action: settings.quota_action,
            rate_action,
        };
        for check in &types {
            self.meters.check(check.kind).increment(1);
        }
        let started = Instant::now();
        let result = tokio::time::timeout(
            settings.timeout,
            check::run(&self.checks, &self.keys, &request),
        )
        .await;
        self.meters
            .round_trip
            .record(started.elapsed().as_secs_f64());
        let verdict = match result {
            Ok(Ok(verdict)) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    self.meters.up.set(1.0);
                    if self.outage_logged.swap(false, Ordering::Relaxed) {
                        tracing::info!("redis answers again; policies enforced");
                    }
                }
                verdict
            }
            Ok(Err(err)) => return self.fail("error", &err.to_string()),
            Err(_) => return self.fail("timeout", "no answer within --redis-timeout"),
        };
        match verdict {
            Verdict::OverQuota { retry_after } => Err(CaptureError::QuotaExceeded { retry_after }),
            Verdict::RateLimited { retry_after } => {
                metrics::counter!(m::EVENTS_RATE_LIMITED, "event_type" => types[0].kind.as_str(), "action" => "reject")
                    .increment(events.len() as u64);
                Err(CaptureError::RateLimited { retry_after })
            }
            Verdict::Decided {
                decisions: decided,
                exhausted,
                action,
            } => {
                for ((i, event), decision) in checked.iter().zip(decided) {
                    let kind = types[event.type_index].kind;
                    match decision {
                        Decision::Accept => {}
                        Decision::Overflow if kind == QuotaType::Recordings => {}
                        Decision::Overflow => {
                            if decisions[*i] != Decision::Overflow {
                                metrics::counter!(m::EVENTS_RATE_LIMITED, "event_type" => kind.as_str(), "action" => "overflow")
                                    .increment(1);
                                metrics::counter!(m::EVENTS_OVERFLOWED, "cause" => "rate")
                                    .increment(1);
                            }
                            decisions[*i] = Decision::Overflow;
                        }
                        Decision::Duplicate | Decision::OverQuota => decisions[*i] = decision,
                    }
                }
                let recheck = settings.quota_recheck;
                if !exhausted.is_empty() {
                    let until = Instant::now();
                    self.any_exhausted.store(true, Ordering::Relaxed);
                    let mut cache = self.exhausted.lock().unwrap_or_else(|p| p.into_inner());
                    for (kind, left) in exhausted {
                        cache.insert(
                            (token.to_owned(), kind),
                            (until + left.min(recheck), action),
                        );
                    }
                }
                Ok(())
            }
        }
    }

    fn fail(&self, kind: &'static str, reason: &str) -> Result<(), CaptureError> {
        metrics::counter!(m::REDIS_ERRORS, "kind" => kind).increment(1);
        self.failing.store(true, Ordering::Relaxed);
        self.meters.up.set(0.0);
        let mode = self.settings.failure_mode;
        if !self.outage_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason = %store::redacted(reason),
                failure_mode = ?mode,
                "redis is not answering; policies fail {}",
                if mode == FailureMode::Open { "open" } else { "closed" }
            );
        }
        match mode {
            FailureMode::Open => {
                metrics::counter!(m::POLICY_FALLBACK, "decision" => "open").increment(1);
                Ok(())
            }
            FailureMode::Closed => {
                metrics::counter!(m::POLICY_FALLBACK, "decision" => "closed").increment(1);
                Err(CaptureError::PolicyUnavailable)
            }
        }
    }
}

/// Applies the decisions: drops, reroutes, and lists quota-limited types.
fn finish(messages: &mut Vec<Message>, decisions: Vec<Decision>, topics: &Topics) -> Outcome {
    let mut outcome = Outcome::default();
    if decisions.iter().all(|d| *d == Decision::Accept) {
        return outcome;
    }
    let mut duplicates = 0u64;
    let mut index = 0;
    messages.retain_mut(|message| {
        let decision = decisions[index];
        index += 1;
        match decision {
            Decision::Accept => true,
            Decision::Overflow => {
                message.kind = DataType::Overflow;
                message.topic = Arc::clone(topics.topic(DataType::Overflow));
                message.key = None;
                true
            }
            Decision::Duplicate => {
                duplicates += 1;
                false
            }
            Decision::OverQuota => {
                let kind = quota_type(message.kind);
                metrics::counter!(m::EVENTS_QUOTA_LIMITED, "event_type" => kind.as_str())
                    .increment(1);
                if !outcome.quota_limited.contains(&kind) {
                    outcome.quota_limited.push(kind);
                }
                false
            }
        }
    });
    if duplicates > 0 {
        metrics::counter!(m::EVENTS_DUPLICATE).increment(duplicates);
    }
    outcome.quota_limited.sort();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: DataType, distinct_id: &str) -> Message {
        Message {
            kind,
            topic: "clickhouse_events".into(),
            key: Some(format!("phc_t:{distinct_id}")),
            headers: vec![
                (header::TOKEN, "phc_t".into()),
                (header::DISTINCT_ID, distinct_id.into()),
            ],
            payload: "{}".into(),
        }
    }

    #[test]
    fn decisions_drop_reroute_and_name_the_limited_types() {
        let topics = Topics::default();
        let mut messages = vec![
            message(DataType::Events, "a"),
            message(DataType::Events, "b"),
            message(DataType::Exceptions, "c"),
            message(DataType::Events, "d"),
            message(DataType::Historical, "e"),
        ];
        let outcome = finish(
            &mut messages,
            vec![
                Decision::Accept,
                Decision::Duplicate,
                Decision::OverQuota,
                Decision::Overflow,
                Decision::OverQuota,
            ],
            &topics,
        );
        assert_eq!(
            outcome.quota_limited,
            [QuotaType::Exceptions, QuotaType::Historical]
        );
        let kept: Vec<(&str, Option<&str>, DataType)> = messages
            .iter()
            .map(|m| {
                (
                    header_value(m, header::DISTINCT_ID),
                    m.key.as_deref(),
                    m.kind,
                )
            })
            .collect();
        assert_eq!(
            kept,
            [
                ("a", Some("phc_t:a"), DataType::Events),
                ("d", None, DataType::Overflow)
            ]
        );
        assert_eq!(&*messages[1].topic, "events_plugin_ingestion_overflow");
    }

    #[tokio::test]
    async fn local_policies_need_no_redis() {
        let policy = Policy::new(&PolicySettings {
            hot_key_rate: 1.0,
            hot_key_burst: 2,
            force_overflow: vec!["phc_t:forced".into()],
            ..PolicySettings::default()
        })
        .expect("valid settings");
        let mut messages: Vec<Message> = ["hot", "hot", "hot", "forced", "cold"]
            .iter()
            .map(|d| message(DataType::Events, d))
            .collect();
        let outcome = policy
            .apply(
                &mut messages,
                &[],
                &Topics::default(),
                Utc::now(),
                &Overrides::default(),
            )
            .await
            .expect("applied");
        assert!(outcome.quota_limited.is_empty());
        let overflowed: Vec<&str> = messages
            .iter()
            .filter(|m| m.kind == DataType::Overflow)
            .map(|m| header_value(m, header::DISTINCT_ID))
            .collect();
        assert_eq!(overflowed, ["hot", "forced"]);
        assert!(!Policy::disabled().is_active());
    }
}
