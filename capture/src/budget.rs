//! The memory budget: how many bytes requests may hold at once.
//!
//! Each request takes a [`Lease`] on the budget and grows it before it
//! holds more: the body as it arrives, the decoded body as it is
//! decompressed, and an estimate of what parsing and building its messages
//! take once the number of events is known. When the budget is spent, a
//! request waits for others to give theirs back, up to `--memory-wait`,
//! and is then refused with `503` and `Retry-After`; a request that needs
//! more than the whole budget gets `413`. So a burst of large or
//! decompression-bomb requests meets a refusal the client can retry,
//! never the kernel's out-of-memory killer (which would drop every request
//! in flight).
//!
//! The budget counts in units of [`UNIT`] bytes, rounded up, so a lease
//! grows by few semaphore operations.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, TryAcquireError};

use crate::error::CaptureError;
use crate::metrics as m;

/// The budget's unit.
pub const UNIT: usize = 64 * 1024;

/// The shared budget.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    units: u32,
    wait: Duration,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least one unit); requests wait up to `wait`
    /// for room.
    pub fn new(bytes: usize, wait: Duration) -> Self {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        metrics::gauge!(m::MEMORY_BUDGET_BYTES).set((units as usize * UNIT) as f64);
        MemoryBudget {
            semaphore: Arc::new(Semaphore::new(units as usize)),
            units,
            wait,
        }
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> usize {
        self.units as usize * UNIT
    }

    /// Bytes held by requests now.
    pub fn held(&self) -> usize {
        (self.units as usize - self.semaphore.available_permits()) * UNIT
    }

    /// An empty lease for one request.
    pub fn lease(&self) -> Lease {
        Lease {
            budget: self.clone(),
            units: 0,
        }
    }
}

/// What one request holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Lease {
    budget: MemoryBudget,
    units: u32,
}

impl Lease {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.units as usize * UNIT
    }

    /// Grows the lease to hold `bytes` in all, waiting up to the budget's
    /// wait for room.
    pub async fn grow_to(&mut self, bytes: usize) -> Result<(), CaptureError> {
        let Some(more) = self.more_for(bytes)? else {
            return Ok(());
        };
        let semaphore = Arc::clone(&self.budget.semaphore);
        let permit = match semaphore.try_acquire_many(more) {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                metrics::counter!(m::MEMORY_BUDGET_WAITS).increment(1);
                match tokio::time::timeout(self.budget.wait, semaphore.acquire_many(more)).await {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(self.refused()),
                }
            }
            Err(TryAcquireError::Closed) => return Err(self.refused()),
        };
        self.keep(permit);
        Ok(())
    }

    /// Grows the lease to hold `bytes` in all if there is room now; for
    /// code that cannot wait (decompression).
    pub fn try_grow_to(&mut self, bytes: usize) -> Result<(), CaptureError> {
        let Some(more) = self.more_for(bytes)? else {
            return Ok(());
        };
        let semaphore = Arc::clone(&self.budget.semaphore);
        let permit = semaphore
            .try_acquire_many(more)
            .map_err(|_| self.refused())?;
        self.keep(permit);
        Ok(())
    }

    /// Adds `permit`'s units to the lease; they go back when it drops.
    fn keep(&mut self, permit: tokio::sync::SemaphorePermit<'_>) {
        self.units += permit.num_permits() as u32;
        permit.forget();
    }

    /// The units to add to hold `bytes`, `None` if held already; an error
    /// when `bytes` is more than the whole budget.
    fn more_for(&self, bytes: usize) -> Result<Option<u32>, CaptureError> {
        let wanted = bytes.div_ceil(UNIT);
        if wanted > self.budget.units as usize {
            metrics::counter!(m::MEMORY_BUDGET_REFUSED, "reason" => "too_large").increment(1);
            return Err(CaptureError::TooLarge(format!(
                "request needs about {} MiB of memory to process, more than this server's \
                 request memory budget of {} MiB (--request-memory-budget); send fewer or smaller events per request",
                bytes.div_ceil(1 << 20),
                self.budget.bytes() >> 20,
            )));
        }
        let more = wanted.saturating_sub(self.units as usize) as u32;
        Ok((more > 0).then_some(more))
    }

    fn refused(&self) -> CaptureError {
        metrics::counter!(m::MEMORY_BUDGET_REFUSED, "reason" => "busy").increment(1);
        CaptureError::MemoryBudget {
            retry_after: Duration::from_secs(1),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.units > 0 {
            self.budget.semaphore.add_permits(self.units as usize);
        }
    }
}

/// Reads the container's memory limit from its cgroup (v2, then v1);
/// `None` when there is none.
pub fn cgroup_memory_limit() -> Option<usize> {
    read_limit("/sys/fs/cgroup/memory.max")
        .or_else(|| read_limit("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
}

fn read_limit(path: &str) -> Option<usize> {
    parse_limit(&std::fs::read_to_string(path).ok()?)
}

/// A cgroup limit file's value: `max` (v2) or a value near `u64::MAX`
/// (v1's "no limit") mean none.
fn parse_limit(text: &str) -> Option<usize> {
    let value: u64 = text.trim().parse().ok()?;
    // v1 reports "no limit" as the largest page-aligned i64.
    (value < (1 << 60)).then(|| usize::try_from(value).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_limits_are_read_and_no_limit_is_none() {
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit(""), None);
    }

    #[tokio::test]
    async fn leases_grow_in_units_and_give_everything_back_when_dropped() {
        let budget = MemoryBudget::new(10 * UNIT, Duration::from_millis(10));
        let mut first = budget.lease();
        first.grow_to(1).await.expect("room");
        assert_eq!(first.bytes(), UNIT);
        first.grow_to(3 * UNIT + 1).await.expect("room");
        assert_eq!(first.bytes(), 4 * UNIT);
        first.grow_to(UNIT).await.expect("never shrinks");
        assert_eq!(budget.held(), 4 * UNIT);
        let mut second = budget.lease();
        second.try_grow_to(6 * UNIT).expect("the rest");
        let err = second.try_grow_to(7 * UNIT).expect_err("spent");
        assert_eq!(err.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        let err = second
            .grow_to(7 * UNIT)
            .await
            .expect_err("still spent after the wait");
        let response = axum::response::IntoResponse::into_response(err);
        assert_eq!(response.headers()["retry-after"], "1");
        drop(first);
        assert_eq!(budget.held(), 6 * UNIT);
        second.grow_to(10 * UNIT).await.expect("room again");
        drop(second);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_waiting_lease_gets_room_another_gives_back() {
        let budget = MemoryBudget::new(4 * UNIT, Duration::from_secs(5));
        let mut holder = budget.lease();
        holder.grow_to(4 * UNIT).await.expect("all of it");
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut lease = budget.lease();
                lease.grow_to(2 * UNIT).await.map(|()| lease.bytes())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(holder);
        assert_eq!(waiter.await.expect("joined").expect("room"), 2 * UNIT);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_too_large_not_busy() {
        let budget = MemoryBudget::new(4 * UNIT, Duration::from_secs(5));
        let err = budget
            .lease()
            .grow_to(5 * UNIT)
            .await
            .expect_err("never fits");
        assert_eq!(err.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert!(err.to_string().contains("--request-memory-budget"), "{err}");
    }
}
