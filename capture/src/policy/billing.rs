//! PostHog's billing limits: sorted sets `@posthog/quota-limits/{resource}`
//! whose members are tokens and whose scores are the unix time (seconds)
//! until which the token is limited. PostHog's billing writes them; capture
//! reads them every few seconds in the background and answers from memory.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::AsyncCommands;

use super::store::Store;

/// The resources capture's data types map to.
pub const RESOURCES: [&str; 3] = ["events", "recordings", "exceptions"];

/// The last snapshot of the billing sets.
#[derive(Debug)]
pub struct BillingLimits {
    prefix: String,
    limited: RwLock<HashMap<&'static str, HashMap<String, i64>>>,
    /// Whether the snapshot names any token, so that the usual case (no
    /// token limited) takes no lock.
    any: AtomicBool,
}

impl BillingLimits {
    /// Limits read from sets named `{prefix}{resource}`.
    pub fn new(prefix: &str) -> Self {
        BillingLimits {
            prefix: prefix.to_owned(),
            limited: RwLock::new(HashMap::new()),
            any: AtomicBool::new(false),
        }
    }

    /// Whether `token` is limited for `resource` at `now_secs`.
    pub fn is_limited(&self, token: &str, resource: &str, now_secs: i64) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let limited = self.limited.read().unwrap_or_else(|p| p.into_inner());
        limited
            .get(resource)
            .and_then(|tokens| tokens.get(token))
            .is_some_and(|&until| until > now_secs)
    }

    /// Reads every set once; on error the previous snapshot stays.
    pub async fn refresh(&self, store: &Store, now_secs: i64) -> redis::RedisResult<()> {
        let mut conn = store.clone();
        let mut fresh: HashMap<&'static str, HashMap<String, i64>> = HashMap::new();
        for resource in RESOURCES {
            let key = format!("{}{resource}", self.prefix);
            let members: Vec<(String, f64)> = conn
                .zrangebyscore_withscores(&key, format!("({now_secs}"), "+inf")
                .await?;
            fresh.insert(
                resource,
                members
                    .into_iter()
                    .map(|(token, until)| (token, until as i64))
                    .collect(),
            );
        }
        let mut limited = self.limited.write().unwrap_or_else(|p| p.into_inner());
        self.any.store(
            fresh.values().any(|tokens| !tokens.is_empty()),
            Ordering::Relaxed,
        );
        *limited = fresh;
        Ok(())
    }

    /// Refreshes every `interval` until the process ends.
    pub async fn refresh_forever(&self, store: Store, interval: Duration) {
        let mut failing = false;
        loop {
            let now = chrono::Utc::now().timestamp();
            match self.refresh(&store, now).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("billing limits readable again");
                }
                Ok(()) => {}
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(error = %err, "cannot read billing limits; keeping the last ones");
                }
                Err(_) => {}
            }
            tokio::time::sleep(interval).await;
        }
    }
}
