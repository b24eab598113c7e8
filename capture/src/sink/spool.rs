//! The spooling sink: Kafka first, the pod's own disk when Kafka cannot
//! take a request's events, and a replayer that moves them on later.
//!
//! [`SpoolingSink::send`] hands a request's messages to the inner sink and
//! waits for its acknowledgements up to `--spool-ack-deadline`. What the
//! inner sink did not acknowledge (it refused, timed out, or the deadline
//! passed) is appended to the [`Spool`] and made durable before `send`
//! returns, so the request is answered 200 with every event either in Kafka
//! or on disk. While the inner sink is unhealthy, messages go straight to
//! the spool. A full spool (or a failing disk) leaves the delivery as the
//! inner sink reported it: the request is answered 503 and sent again.
//!
//! Duplicates: a request that stopped waiting at the deadline leaves its
//! messages in the producer's queue, and Kafka may still take them. Such
//! late acknowledgements are counted (`capture_spool_late_acks_total`) and
//! the replay skips those records; it also does not start while any such
//! request may still hear from Kafka. What remains is a crash between a
//! late acknowledgement and the replay (the skip list lives in memory),
//! and a replay batch interrupted by a crash before its position was
//! saved.
//!
//! The replayer (`replay`, a task of the sink) drains the spool while the
//! inner sink is healthy, one batch in flight at a time and at most
//! `--spool-replay-rate` events per second, so live traffic keeps the
//! producer's queue and the CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Delivery, Health, Message, Sink, SinkError};
use crate::metrics as m;
use crate::spool::record::Record;
use crate::spool::{Segment, Spool, SpoolError};

/// Spooling settings beside the spool's own.
#[derive(Debug, Clone, Copy)]
pub struct SpoolingSettings {
    /// How long a request waits for Kafka's acknowledgements before what is
    /// missing goes to the spool.
    pub ack_deadline: Duration,
    /// Most events replayed per second.
    pub replay_rate: u32,
}

/// Most records (and bytes) in one replay batch.
const REPLAY_BATCH: usize = 500;
const REPLAY_BATCH_BYTES: usize = 4 << 20;
/// How often the replayer looks again while it waits (Kafka unhealthy,
/// nothing to replay), and how often it refreshes the spool's gauges.
const IDLE: Duration = Duration::from_secs(1);

struct Shared {
    inner: Arc<dyn Sink>,
    spool: Spool,
    settings: SpoolingSettings,
    /// Requests that stopped waiting at the deadline whose inner send has
    /// not finished: Kafka may still acknowledge their messages, so replay
    /// waits until none is left.
    pending_late: AtomicUsize,
}

/// A sink that spools what its inner sink cannot take.
pub struct SpoolingSink {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SpoolingSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolingSink")
            .field("inner", &self.shared.inner.name())
            .field("spool", &self.shared.spool)
            .finish_non_exhaustive()
    }
}

impl SpoolingSink {
    /// Wraps `inner` with `spool` and starts the replayer, which ends when
    /// the sink goes.
    pub fn start(inner: Arc<dyn Sink>, spool: Spool, settings: SpoolingSettings) -> Self {
        let shared = Arc::new(Shared {
            inner,
            spool,
            settings,
            pending_late: AtomicUsize::new(0),
        });
        tokio::spawn(replay(Arc::downgrade(&shared)));
        SpoolingSink { shared }
    }

    /// Appends `messages` to the spool; on success every one counts as
    /// delivered.
    async fn spool(&self, messages: &[Message]) -> Result<std::ops::Range<u64>, SpoolError> {
        let spooled = self.shared.spool.append(messages).await;
        if let Err(err) = &spooled {
            tracing::error!(error = %err, events = messages.len(), "could not spool events kafka did not take; the request gets 503");
        }
        spooled
    }
}

#[async_trait]
impl Sink for SpoolingSink {
    fn name(&self) -> &'static str {
        self.shared.inner.name()
    }

    async fn send(&self, messages: Arc<Vec<Message>>) -> Delivery {
        let count = messages.len();
        if !matches!(self.shared.inner.health(), Health::Ready) {
            return match self.spool(&messages).await {
                Ok(_) => Delivery::all(count),
                Err(_) => Delivery::none(count, SinkError::Timeout),
            };
        }
        let inner = Arc::clone(&self.shared.inner);
        let sending = Arc::clone(&messages);
        let mut sent = Box::pin(async move { inner.send(sending).await });
        tokio::select! {
            biased;
            delivery = &mut sent => {
                if delivery.is_complete()
                    || matches!(delivery.error, Some(SinkError::MessageTooLarge { .. }))
                {
                    return delivery;
                }
                let missing: Vec<Message> = messages
                    .iter()
                    .zip(delivery.acked.iter().chain(std::iter::repeat(&false)))
                    .filter(|(_, acked)| !**acked)
                    .map(|(message, _)| message.clone())
                    .collect();
                match self.spool(&missing).await {
                    Ok(_) => Delivery::all(count),
                    Err(_) => delivery,
                }
            }
            () = tokio::time::sleep(self.shared.settings.ack_deadline) => {
                let Ok(seqs) = self.spool(&messages).await else {
                    // Nothing spooled: wait for Kafka as without a spool.
                    return sent.await;
                };
                let shared = Arc::clone(&self.shared);
                shared.pending_late.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    let delivery = sent.await;
                    let late: Vec<u64> = seqs
                        .zip(&delivery.acked)
                        .filter_map(|(seq, acked)| acked.then_some(seq))
                        .collect();
                    if !late.is_empty() {
                        metrics::counter!(m::SPOOL_LATE_ACKS).increment(late.len() as u64);
                        shared.spool.acknowledged_late(late);
                    }
                    shared.pending_late.fetch_sub(1, Ordering::AcqRel);
                });
                Delivery::all(count)
            }
        }
    }

    fn health(&self) -> Health {
        let stats = self.shared.spool.stats();
        match self.shared.inner.health() {
            Health::Ready if stats.records == 0 => Health::Ready,
            Health::Ready | Health::Spooling(_) => Health::Spooling(format!(
                "replaying {} spooled records ({} bytes)",
                stats.records, stats.bytes
            )),
            Health::NotReady(reason) if self.shared.spool.has_room_for_requests() => {
                Health::Spooling(format!(
                    "{reason}; spooling ({} records, {} bytes)",
                    stats.records, stats.bytes
                ))
            }
            Health::NotReady(reason) => Health::NotReady(format!("{reason}; the spool is full")),
        }
    }

    fn spooled(&self) -> u64 {
        self.shared.spool.stats().records
    }

    fn abandon(&self) {
        // The requests still waiting hear "not acknowledged" at once and
        // spool their events.
        self.shared.inner.abandon();
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.shared.inner.flush(timeout).await
    }
}

/// Refreshes the spool's gauges.
fn observe(spool: &Spool) {
    let stats = spool.stats();
    metrics::gauge!(m::SPOOL_BYTES).set(stats.bytes as f64);
    metrics::gauge!(m::SPOOL_RECORDS).set(stats.records as f64);
    let age = stats.oldest_ms.map_or(0.0, |oldest| {
        crate::spool::now_ms().saturating_sub(oldest) as f64 / 1000.0
    });
    metrics::gauge!(m::SPOOL_OLDEST_SECONDS).set(age);
}

/// Whether replay may run now: the inner sink is healthy and no request
/// that stopped waiting may still hear from Kafka.
fn may_replay(shared: &Shared) -> bool {
    matches!(shared.inner.health(), Health::Ready)
        && shared.pending_late.load(Ordering::Acquire) == 0
}

/// The replayer: drains sealed segments oldest first while replay may run,
/// sealing the segment being written once nothing else is left.
async fn replay(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        observe(&shared.spool);
        if !may_replay(&shared) {
            drop(shared);
            tokio::time::sleep(IDLE).await;
            continue;
        }
        let Some(segment) = shared.spool.oldest() else {
            if shared.spool.stats().records > 0 {
                shared.spool.seal().await;
                if shared.spool.oldest().is_none() {
                    // Nothing was sealed (the count is ahead of the files:
                    // damage found during a replay); do not spin.
                    tokio::time::sleep(IDLE).await;
                }
                continue;
            }
            // Holds the sink for at most this wait.
            let _ = tokio::time::timeout(IDLE, shared.spool.appended()).await;
            continue;
        };
        if let Err(err) = replay_segment(&shared, &segment).await {
            tracing::error!(segment = %segment.path.display(), error = %err, "spool replay failed; trying again");
            drop(shared);
            tokio::time::sleep(IDLE).await;
        }
    }
}

/// Replays one segment from its position on, then deletes it.
async fn replay_segment(shared: &Arc<Shared>, segment: &Segment) -> std::io::Result<()> {
    // Reading a segment is a blocking read of up to a segment's size.
    let (reading, read) = (Arc::clone(shared), segment.clone());
    let records = tokio::task::spawn_blocking(move || reading.spool.read(&read))
        .await
        .map_err(std::io::Error::other)??;
    let mut rest = records.as_slice();
    while !rest.is_empty() {
        let mut take = 0;
        let mut bytes = 0;
        while take < rest.len() && take < REPLAY_BATCH && bytes < REPLAY_BATCH_BYTES {
            bytes += rest[take].0.message.payload.len();
            take += 1;
        }
        let (batch, after) = rest.split_at(take);
        let started = Instant::now();
        deliver(shared, segment, batch).await?;
        let position = batch.last().map_or(0, |(_, end)| *end);
        shared
            .spool
            .replayed(segment, batch.len() as u64, position)?;
        metrics::counter!(m::SPOOL_REPLAYED).increment(batch.len() as u64);
        observe(&shared.spool);
        rest = after;
        // At most the replay rate, whatever Kafka could take.
        let floor = Duration::from_secs_f64(
            batch.len() as f64 / f64::from(shared.settings.replay_rate.max(1)),
        );
        if let Some(wait) = floor.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    shared.spool.finished(segment)?;
    tracing::info!(segment = %segment.path.display(), records = records.len(), "spool segment replayed");
    Ok(())
}

/// Sends `batch` until Kafka has every record, resending only what it did
/// not acknowledge and waiting while the inner sink is unhealthy. Records
/// Kafka refuses for good (too large) are set aside.
async fn deliver(
    shared: &Shared,
    segment: &Segment,
    batch: &[(Record, u64)],
) -> std::io::Result<()> {
    let mut missing: Vec<&Record> = batch.iter().map(|(record, _)| record).collect();
    let mut one_by_one = false;
    while !missing.is_empty() {
        while !may_replay(shared) {
            tokio::time::sleep(IDLE).await;
        }
        let chunk = if one_by_one { 1 } else { missing.len() };
        let messages: Vec<Message> = missing[..chunk].iter().map(|r| r.message.clone()).collect();
        let delivery = shared.inner.send(Arc::new(messages)).await;
        let too_large = matches!(delivery.error, Some(SinkError::MessageTooLarge { .. }));
        if too_large && chunk == 1 {
            tracing::error!(
                seq = missing[0].seq,
                "a spooled record is too large for kafka; set aside"
            );
            shared.spool.reject(segment, &missing[..1])?;
            missing.remove(0);
            continue;
        }
        let mut acked = delivery.acked.iter().chain(std::iter::repeat(&false));
        let mut index = 0;
        missing.retain(|_| {
            let keep = index >= chunk || !*acked.next().unwrap_or(&false);
            index += 1;
            keep
        });
        if too_large {
            // Find which one: resend the rest one at a time.
            one_by_one = true;
        } else if !delivery.is_complete() {
            tokio::time::sleep(IDLE).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
