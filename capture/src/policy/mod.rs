//! Request policies backed by Redis and by local state: quotas (with PostHog's
//! billing limits), deduplication, cluster-wide rate limits, hot-key buckets
//! and forced overflow.
//!
//! [`Policy::check`] runs between building a request's candidates and
//! handing their messages to the sink, and sets each event's verdict. It
//! answers from memory what it can (forced overflow, hot keys, billing
//! limits, tokens known to be out of quota) and asks Redis the rest in one
//! script call, which *reserves* what the request takes: quota units, rate
//! budget, and dedup markers written as pending. Once the sink answered,
//! [`Policy::settle`] commits the markers of the events Kafka acknowledged
//! and gives back what the others took, so a refused request leaves no
//! trace and its retry is charged once. A request whose events were all
//! delivered and that holds no marker needs no second call. When Redis is
//! slow or down the check fails open (or closed, if configured) within
//! `--redis-timeout`, logging once per outage; a settle that cannot reach
//! Redis is counted, and what it held lapses on its own (markers after
//! [`RedisPolicySettings::hold`], quota with its window).

pub mod admin;
mod billing;
pub mod check;
pub mod cli;
mod coalesce;
mod hot_keys;
pub mod keys;
mod pipe;
// Public only so the fuzz targets (`fuzz/`) can reach the reply reader.
#[doc(hidden)]
pub mod resp;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

pub use billing::BillingLimits;
pub use check::{Decision, QuotaAction, RateAction};
pub use hot_keys::HotKeys;
pub use keys::{Keys, QuotaType};
pub use store::{Store, StoreSettings};

use crate::error::CaptureError;
use crate::metrics as m;
use crate::route::{DataType, Topics};
use crate::verdict::{Candidate, Candidates, Verdict};
use check::{Charge, CheckRequest, CheckedEvent, Marker, Refund, Reply, SettleRequest, TypeCheck};

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
    /// How long a request's reserved dedup markers live unless it settles
    /// them first: longer than any request waits for Kafka, so it only
    /// matters when the settle never reaches Redis.
    pub hold: Duration,
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

/// What the policies reserved in Redis for one event, to commit once it is
/// delivered or give back if it is not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// A dedup marker, pending until settled.
    pub marker: bool,
    /// A unit of its type's quota.
    pub quota: bool,
    /// Its share of its type's rate budget.
    pub rate: bool,
}

impl Held {
    fn any(self) -> bool {
        self.marker || self.quota || self.rate
    }
}

/// What one request holds in Redis until its events' fates are known; see
/// [`Policy::settle`].
#[derive(Debug)]
#[must_use = "a reservation is settled once the sink answered"]
pub struct Reservation {
    /// Written into the markers this request reserved.
    id: u64,
    /// What each type was charged per event.
    charges: Vec<(QuotaType, Charge)>,
    /// Lifetime of a committed marker.
    dedup_ttl: Duration,
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
    /// Reservation ids: a random start, then one more per request, so no
    /// two requests of any replica are likely to share one.
    next_reservation: std::sync::atomic::AtomicU64,
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
        DataType::Events
        | DataType::ClientWarnings
        | DataType::Overflow
        | DataType::Heatmaps
        | DataType::DeadLetter => QuotaType::Events,
        DataType::Historical => QuotaType::Historical,
        DataType::Exceptions => QuotaType::Exceptions,
        DataType::Recordings => QuotaType::Recordings,
    }
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
                    next_reservation: std::sync::atomic::AtomicU64::new(
                        uuid::Uuid::new_v4().as_u64_pair().0,
                    ),
                    checks: coalesce::Coalescer::new(
                        store.clone(),
                        pipe::Target::new(&redis.store),
                        check::SOURCE,
                        report_commits,
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

    /// Whether any policy is on; when not, [`Policy::check`] is free.
    pub fn is_active(&self) -> bool {
        self.redis.is_some() || self.hot_keys.is_some() || !self.force_overflow.is_empty()
    }

    /// Applies every policy to one request's events: marks duplicates and
    /// over-quota events, moves overflow to its topic, or refuses the
    /// request. What Redis reserved for the events comes back as a
    /// [`Reservation`] to [`Policy::settle`] once the sink answered.
    pub async fn check(
        &self,
        request: &mut Candidates,
        topics: &Topics,
        now: DateTime<Utc>,
        overrides: &Overrides,
    ) -> Result<Option<Reservation>, CaptureError> {
        if !self.is_active() || !request.any_to_produce() {
            return Ok(None);
        }
        let rate_action = overrides.rate_action.unwrap_or(self.rate_action);
        self.local_overflow(request, rate_action)?;
        let mut reservation = None;
        if let Some(redis) = &self.redis {
            // The rate action resolved here, so the check needs no default.
            let overrides = Overrides {
                rate_action: Some(rate_action),
                ..overrides.clone()
            };
            reservation = redis.check(request, now, &overrides).await?;
        }
        let mut duplicates = 0u64;
        for event in &mut request.events {
            match event.verdict {
                Verdict::Overflowed => overflow(event, topics),
                Verdict::Duplicate => duplicates += 1,
                Verdict::Limited(kind) => {
                    metrics::counter!(m::EVENTS_QUOTA_LIMITED, "event_type" => kind.as_str())
                        .increment(1);
                }
                _ => {}
            }
        }
        if duplicates > 0 {
            metrics::counter!(m::EVENTS_DUPLICATE).increment(duplicates);
        }
        Ok(reservation)
    }

    /// Settles what `request`'s check reserved, now that every event has its
    /// final verdict: markers of produced events are committed, everything
    /// the others took is given back. Costs a round trip only when there is
    /// something to commit or give back. Never fails the request: a settle
    /// Redis does not take is counted and logged, and what it held lapses
    /// (markers after the hold, quota with its window).
    pub async fn settle(&self, request: &Candidates, reservation: Reservation) {
        if let Some(redis) = &self.redis {
            redis.settle(request, reservation).await;
        }
    }

    /// Sends the commits still waiting for a pipeline and waits for Redis
    /// to take them; for shutdown, once no request is left.
    pub async fn flush(&self) {
        if let Some(redis) = &self.redis {
            let _ = tokio::time::timeout(redis.settings.timeout, redis.checks.flush()).await;
        }
    }

    /// Forced overflow and hot-key buckets, answered in memory.
    fn local_overflow(
        &self,
        request: &mut Candidates,
        rate_action: RateAction,
    ) -> Result<(), CaptureError> {
        if self.hot_keys.is_none() && self.force_overflow.is_empty() {
            return Ok(());
        }
        let token = request.token.as_str();
        let forced_token = self.force_overflow.contains(token);
        let now = Instant::now();
        let mut pair = String::new();
        let total = request.events.len() as u64;
        for event in &mut request.events {
            if event.kind == DataType::Recordings
                || !event.verdict.produces()
                || event.verdict == Verdict::Overflowed
            {
                continue;
            }
            let forced = forced_token
                || (!self.force_overflow.is_empty() && {
                    pair.clear();
                    pair.push_str(token);
                    pair.push(':');
                    pair.push_str(&event.distinct_id);
                    self.force_overflow.contains(&pair)
                });
            let (cause, over) = if forced {
                ("forced", true)
            } else if let Some(hot) = &self.hot_keys {
                ("hot_key", !hot.take(token, &event.distinct_id, now))
            } else {
                ("", false)
            };
            if !over {
                continue;
            }
            if rate_action == RateAction::Reject && cause == "hot_key" {
                metrics::counter!(m::EVENTS_RATE_LIMITED, "event_type" => quota_type(event.kind).as_str(), "action" => "reject")
                    .increment(total);
                return Err(CaptureError::RateLimited {
                    retry_after: Duration::from_secs(1),
                });
            }
            event.verdict = Verdict::Overflowed;
            metrics::counter!(m::EVENTS_OVERFLOWED, "cause" => cause).increment(1);
        }
        Ok(())
    }
}

/// Counts the outcome of one call committing `requests` requests'
/// `markers` markers, and logs a failure (once per call, not per request).
fn report_commits(requests: usize, markers: usize, result: redis::RedisResult<()>) {
    match result {
        Ok(()) => {
            metrics::counter!(m::POLICY_SETTLES, "result" => "ok").increment(requests as u64);
        }
        Err(err) => {
            metrics::counter!(m::POLICY_SETTLES, "result" => "error").increment(requests as u64);
            tracing::warn!(
                reason = %store::redacted(&err.to_string()),
                requests,
                markers,
                "could not commit delivered events' dedup markers; they lapse on their own"
            );
        }
    }
}

/// The dedup marker `event` is checked (and reserved) under, when dedup is
/// on and applies to it (not to recordings, nor to an event without a
/// client id).
fn dedup_marker(event: &Candidate, dedup: bool) -> Option<Marker<'_>> {
    let id = event
        .dedup
        .as_ref()
        .filter(|_| dedup && event.kind != DataType::Recordings)?;
    Some(Marker {
        distinct_id: &event.distinct_id,
        event: &id.event,
        id: &id.id,
    })
}

/// Drops the events still to produce whose type is `limited` (a quota
/// known exhausted here, or a billing limit) as over quota.
fn limit_locally(events: &mut [Candidate], limited: &[(QuotaType, QuotaAction)]) {
    if limited.is_empty() {
        return;
    }
    for event in events.iter_mut().filter(|e| e.verdict.produces()) {
        let kind = quota_type(event.kind);
        if limited.iter().any(|(k, _)| *k == kind) {
            event.decide(Verdict::Limited(kind));
            metrics::counter!(m::QUOTA_CHECKS, "event_type" => kind.as_str(), "source" => "local")
                .increment(1);
        }
    }
}

/// Moves an event to the overflow topic, unkeyed (so without person
/// processing, see [`crate::event::mark_personless`]).
fn overflow(event: &mut Candidate, topics: &Topics) {
    if let Some(message) = &mut event.message {
        message.kind = DataType::Overflow;
        message.topic = Arc::clone(topics.topic(DataType::Overflow));
        message.key = None;
        crate::event::mark_personless(message);
    }
}

impl RedisPolicy {
    async fn check(
        &self,
        request: &mut Candidates,
        now: DateTime<Utc>,
        overrides: &Overrides,
    ) -> Result<Option<Reservation>, CaptureError> {
        let settings = &self.settings;
        let token = request.token.as_str();
        let rate_action = overrides.rate_action.unwrap_or(RateAction::Overflow);
        let (rate_limit, rate_burst) = overrides
            .rate
            .unwrap_or((settings.rate_limit, settings.rate_burst));
        let dedup_ttl = overrides.dedup_ttl.unwrap_or(settings.dedup_ttl);
        let mut local_limited = self.local_limits(token, now);
        let dedup = dedup_ttl.is_some();
        // A retry may resend events already in Kafka: Redis tells those
        // (duplicates, `ok`) before a quota known here drops the rest.
        let deferred = if request.retry && dedup {
            std::mem::take(&mut local_limited)
        } else {
            Vec::new()
        };
        if !local_limited.is_empty() {
            for event in request.events.iter_mut().filter(|e| e.verdict.produces()) {
                let kind = quota_type(event.kind);
                if let Some((_, action)) = local_limited.iter().find(|(k, _)| *k == kind) {
                    if *action == QuotaAction::Reject {
                        return Err(CaptureError::QuotaExceeded {
                            retry_after: settings.quota_recheck,
                        });
                    }
                    event.decide(Verdict::Limited(kind));
                    metrics::counter!(m::QUOTA_CHECKS, "event_type" => kind.as_str(), "source" => "local")
                        .increment(1);
                }
            }
        }
        let mut types: Vec<TypeCheck> = Vec::with_capacity(2);
        // The events Redis decides: those still to produce, in order.
        let mut events: Vec<CheckedEvent<'_>> = Vec::with_capacity(request.events.len());
        for event in request.events.iter().filter(|e| e.verdict.produces()) {
            let kind = quota_type(event.kind);
            let type_index = match types.iter().position(|t| t.kind == kind) {
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
            events.push(CheckedEvent {
                type_index,
                marker: dedup_marker(event, dedup),
            });
        }
        if types.is_empty() {
            return Ok(None);
        }

        let reservation = self.next_reservation.fetch_add(1, Ordering::Relaxed);
        let check = CheckRequest {
            token,
            now_ms: now.timestamp_millis(),
            reservation,
            hold: settings.hold,
            types: &types,
            events: &events,
            quota_action: settings.quota_action,
            rate_action,
        };
        for check in &types {
            self.meters.check(check.kind).increment(1);
        }
        let reply = match self
            .round_trip(check::run(&self.checks, &self.keys, &check))
            .await
        {
            Ok(Ok(reply)) => {
                self.answered();
                reply
            }
            Ok(Err(err)) => {
                limit_locally(&mut request.events, &deferred);
                return self.fail("error", &err.to_string()).map(|()| None);
            }
            Err(_) => {
                limit_locally(&mut request.events, &deferred);
                return self
                    .fail("timeout", "no answer within --redis-timeout")
                    .map(|()| None);
            }
        };
        let (decisions, charges, exhausted, action) = match reply {
            Reply::OverQuota { retry_after } => {
                return Err(CaptureError::QuotaExceeded { retry_after });
            }
            Reply::RateLimited { retry_after } => {
                metrics::counter!(m::EVENTS_RATE_LIMITED, "event_type" => types[0].kind.as_str(), "action" => "reject")
                    .increment(events.len() as u64);
                return Err(CaptureError::RateLimited { retry_after });
            }
            Reply::InFlight { retry_after } => {
                metrics::counter!(m::EVENTS_IN_FLIGHT).increment(events.len() as u64);
                return Err(CaptureError::InFlight { retry_after });
            }
            Reply::Decided {
                decisions,
                charges,
                exhausted,
                action,
            } => (decisions, charges, exhausted, action),
        };
        // What each type was charged per event; a type the reply left out
        // was charged nothing.
        let charges: Vec<(QuotaType, Charge)> = types
            .iter()
            .zip(charges)
            .map(|(check, charge)| (check.kind, charge))
            .collect();
        let mut held_any = false;
        // The same events as `events`, in the same order: no verdict
        // changed since.
        let decided = request.events.iter_mut().filter(|e| e.verdict.produces());
        for (event, decision) in decided.zip(decisions) {
            let has_marker = dedup_marker(event, dedup).is_some();
            let kind = quota_type(event.kind);
            let charge = charges
                .iter()
                .find(|(charged, _)| *charged == kind)
                .map_or(Charge::NONE, |(_, charge)| *charge);
            match decision {
                Decision::Accept => {}
                Decision::Overflow if kind == QuotaType::Recordings => {}
                Decision::Overflow => {
                    if event.verdict != Verdict::Overflowed {
                        metrics::counter!(m::EVENTS_RATE_LIMITED, "event_type" => kind.as_str(), "action" => "overflow")
                            .increment(1);
                        metrics::counter!(m::EVENTS_OVERFLOWED, "cause" => "rate").increment(1);
                    }
                    event.verdict = Verdict::Overflowed;
                }
                Decision::Duplicate => event.decide(Verdict::Duplicate),
                Decision::OverQuota => event.decide(Verdict::Limited(kind)),
            }
            let taken = matches!(decision, Decision::Accept | Decision::Overflow);
            event.held = Held {
                marker: taken && has_marker,
                quota: taken && charge.quota,
                rate: decision == Decision::Accept && charge.interval_ms > 0.0,
            };
            held_any |= event.held.any();
        }
        // What Redis took for these is given back at the settle: they are
        // not delivered.
        limit_locally(&mut request.events, &deferred);
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
        Ok(held_any.then(|| Reservation {
            id: reservation,
            charges,
            dedup_ttl: dedup_ttl.unwrap_or(Duration::from_secs(1)),
        }))
    }

    /// Limits known without asking Redis: exhausted windows and billing.
    fn local_limits(&self, token: &str, now: DateTime<Utc>) -> Vec<(QuotaType, QuotaAction)> {
        let mut local_limited: Vec<(QuotaType, QuotaAction)> = Vec::new();
        if !self.settings.quotas {
            return local_limited;
        }
        if self.any_exhausted.load(Ordering::Relaxed) {
            let instant = Instant::now();
            let mut exhausted = self.exhausted.lock().unwrap_or_else(|p| p.into_inner());
            exhausted.retain(|_, (until, _)| *until > instant);
            if exhausted.is_empty() {
                self.any_exhausted.store(false, Ordering::Relaxed);
            } else {
                local_limited.extend(QuotaType::ALL.into_iter().filter_map(|kind| {
                    exhausted
                        .get(&(token.to_owned(), kind))
                        .map(|(_, action)| (kind, *action))
                }));
            }
        }
        if let Some(billing) = &self.billing {
            for kind in QuotaType::ALL {
                if !local_limited.iter().any(|(k, _)| *k == kind)
                    && billing.is_limited(token, kind.billing_resource(), now.timestamp())
                {
                    local_limited.push((kind, QuotaAction::Drop));
                }
            }
        }
        local_limited
    }

    async fn settle(&self, request: &Candidates, reservation: Reservation) {
        let token = request.token.as_str();
        let mut refunds: Vec<Refund> = reservation
            .charges
            .iter()
            .map(|(kind, charge)| Refund {
                kind: *kind,
                quota: 0,
                rate: 0,
                interval_ms: charge.interval_ms,
            })
            .collect();
        let mut markers: Vec<(Marker<'_>, bool)> = Vec::new();
        let mut released = 0u64;
        for event in request.events.iter().filter(|e| e.held.any()) {
            let delivered = event.verdict.produces();
            if !delivered {
                released += 1;
                let kind = quota_type(event.kind);
                if let Some(refund) = refunds.iter_mut().find(|r| r.kind == kind) {
                    refund.quota += u64::from(event.held.quota);
                    refund.rate += u64::from(event.held.rate);
                }
            }
            if event.held.marker
                && let Some(marker) = dedup_marker(event, true)
            {
                markers.push((marker, delivered));
            }
        }
        refunds.retain(|r| r.quota > 0 || r.rate > 0);
        if released == 0 {
            // Everything delivered: only markers to commit. Nobody needs to
            // wait for that; it rides the next pipeline (see coalesce).
            if !markers.is_empty() {
                self.checks.commit(token, reservation.dedup_ttl, |commits| {
                    commits.add(&self.keys, token, markers.iter().map(|(m, _)| *m));
                });
            }
            return;
        }
        let settle = SettleRequest {
            token,
            now_ms: Utc::now().timestamp_millis(),
            reservation: reservation.id,
            dedup_ttl: reservation.dedup_ttl,
            refunds: &refunds,
            markers: &markers,
        };
        metrics::counter!(m::POLICY_RELEASED_EVENTS).increment(released);
        let error = match self
            .round_trip(check::settle(&self.checks, &self.keys, &settle))
            .await
        {
            Ok(Ok(())) => {
                self.answered();
                metrics::counter!(m::POLICY_SETTLES, "result" => "ok").increment(1);
                return;
            }
            Ok(Err(err)) => store::redacted(&err.to_string()),
            Err(_) => "no answer within --redis-timeout".to_owned(),
        };
        metrics::counter!(m::POLICY_SETTLES, "result" => "error").increment(1);
        self.failing.store(true, Ordering::Relaxed);
        self.meters.up.set(0.0);
        tracing::warn!(
            reason = %error,
            markers = markers.len(),
            released,
            "could not settle a request's policy reservation; its markers lapse on their own"
        );
    }

    /// Runs one round trip to Redis within `--redis-timeout`, timed in
    /// the round-trip histogram (timeouts included).
    async fn round_trip<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<redis::RedisResult<T>, tokio::time::error::Elapsed> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.settings.timeout, call).await;
        self.meters
            .round_trip
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Notes a round trip Redis answered.
    fn answered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            self.meters.up.set(1.0);
            if self.outage_logged.swap(false, Ordering::Relaxed) {
                tracing::info!("redis answers again; policies enforced");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Message;

    fn candidate(kind: DataType, distinct_id: &str) -> Candidate {
        let message = Message {
            kind,
            topic: "clickhouse_events".into(),
            key: Some(format!("phc_t:{distinct_id}")),
            headers: Vec::new(),
            payload: "{}".into(),
        };
        Candidate::new(message, distinct_id.into(), None)
    }

    async fn check(policy: &Policy, request: &mut Candidates) -> Option<Reservation> {
        policy
            .check(
                request,
                &Topics::default(),
                Utc::now(),
                &Overrides::default(),
            )
            .await
            .expect("applied")
    }

    #[tokio::test]
    async fn local_policies_need_no_redis_and_move_overflow_unkeyed() {
        let policy = Policy::new(&PolicySettings {
            hot_key_rate: 1.0,
            hot_key_burst: 2,
            force_overflow: vec!["phc_t:forced".into()],
            ..PolicySettings::default()
        })
        .expect("valid settings");
        let mut request = Candidates {
            token: "phc_t".into(),
            events: ["hot", "hot", "hot", "forced", "cold"]
                .iter()
                .map(|d| candidate(DataType::Events, d))
                .collect(),
            retry: false,
        };
        let reservation = check(&policy, &mut request).await;
        assert!(reservation.is_none(), "nothing held without redis");
        let overflowed: Vec<&str> = request
            .events
            .iter()
            .filter(|e| e.verdict == Verdict::Overflowed)
            .map(|e| e.distinct_id.as_str())
            .collect();
        assert_eq!(overflowed, ["hot", "forced"]);
        for event in &request.events {
            let message = event.message.as_ref().expect("still to produce");
            let moved = event.verdict == Verdict::Overflowed;
            assert_eq!(&*message.topic == "events_plugin_ingestion_overflow", moved);
            assert_eq!(message.key.is_none(), moved);
            assert_eq!(message.kind == DataType::Overflow, moved);
        }
        assert!(!Policy::disabled().is_active());
    }

    #[tokio::test]
    async fn events_a_plugin_dropped_are_left_alone() {
        let policy = Policy::new(&PolicySettings {
            force_overflow: vec!["phc_t".into()],
            ..PolicySettings::default()
        })
        .expect("valid settings");
        let mut request = Candidates {
            token: "phc_t".into(),
            events: vec![
                Candidate::dropped(DataType::Events, "u".into(), "sample"),
                candidate(DataType::Events, "u"),
            ],
            retry: false,
        };
        check(&policy, &mut request).await;
        assert_eq!(request.events[0].verdict, Verdict::Dropped("sample"));
        assert_eq!(request.events[1].verdict, Verdict::Overflowed);
    }
}
