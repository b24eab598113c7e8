//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas only one runs the controllers.
//!
//! Every replica is ready (a standby must pass its readiness probe, or a
//! rolling update of the operator would wait forever for the old leader to
//! go); the `operator_leader` gauge tells which one leads. A replica that
//! loses the lease stops its controllers and stands by again; on shutdown the
//! leader releases the lease so a standby takes over at once instead of
//! waiting for it to expire.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

/// `1` while this process holds the lease, else `0`.
pub const LEADER: &str = "operator_leader";

/// Field manager of the lease's fields.
const FIELD_MANAGER_PREFIX: &str = "capture-operator";

/// How long a failing lease setup waits before it tries again, at most.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Where the lease lives and who this process is.
#[derive(Debug, Clone)]
pub struct Election {
    /// Name of the Lease object.
    pub lease_name: String,
    /// Namespace of the Lease object (the operator's own).
    pub namespace: String,
    /// This process's identity in `holderIdentity`; unique per process.
    pub identity: String,
    /// How long the lease holds without renewal; a standby takes over at
    /// most this long after the leader died without releasing it.
    pub duration: Duration,
}

impl Election {
    /// Lease duration and the margin before expiry at which the holder
    /// renews, in whole seconds (at least 2 and 1).
    fn seconds(&self) -> (u64, u64) {
        let duration = self.duration.as_secs().max(2);
        let grace = (duration / 3).max(1);
        (duration, grace)
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Runs `work` while this process holds the lease, until `shutdown`.
///
/// `work` gets a future that resolves when it must stop (shutdown, or the
/// lease was lost) and is called again each time the lease is won back.
/// `ready` turns true once the lease is set up (leading or standing by).
pub async fn lead<W, Fut>(
    client: Client,
    election: &Election,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut work: W,
) where
    W: FnMut(BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = ()>,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    metrics::gauge!(LEADER).set(0.0);
    let (duration, grace) = election.seconds();

    // Building the manager reads (or creates) the Lease: retry while the API
    // is away.
    let mut retry = Duration::from_secs(1);
    let manager = loop {
        let build = LeaseManagerBuilder::new(client.clone(), &election.lease_name)
            .with_namespace(&election.namespace)
            .with_identity(&election.identity)
            .with_field_manager(format!("{FIELD_MANAGER_PREFIX}-{}", election.identity))
            .with_duration(duration)
            .with_grace(grace)
            .build();
        tokio::select! {
            built = build => match built {
                Ok(manager) => break manager,
                Err(err) => tracing::warn!(
                    error = %err,
                    lease = %election.lease_name,
                    namespace = %election.namespace,
                    retry_in = ?retry,
                    "cannot set up the leader lease"
                ),
            },
            () = stopped(stop_rx.clone()) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => retry = (retry * 2).min(MAX_RETRY),
            () = stopped(stop_rx.clone()) => return,
        }
    };
    tracing::info!(
        lease = %election.lease_name,
        namespace = %election.namespace,
        identity = %election.identity,
        "standing by for the leader lease"
    );
    if !*stop_rx.borrow() {
        ready.store(true, Ordering::SeqCst);
    }

    let (mut leader, task) = manager.watch().await;
    loop {
        tokio::select! {
            biased;
            () = stopped(stop_rx.clone()) => break,
            won = leader.wait_for(|leading| *leading) => if won.is_err() {
                tracing::error!("leader election ended unexpectedly; controllers stay stopped");
                break;
            },
        }
        tracing::info!(identity = %election.identity, "won the leader lease; controllers start");
        metrics::gauge!(LEADER).set(1.0);
        let stop = {
            let stop_rx = stop_rx.clone();
            let mut lost = leader.clone();
            async move {
                tokio::select! {
                    () = stopped(stop_rx) => {}
                    _ = lost.wait_for(|leading| !*leading) => {}
                }
            }
            .boxed()
        };
        work(stop).await;
        metrics::gauge!(LEADER).set(0.0);
        if *stop_rx.borrow() {
            break;
        }
        tracing::warn!(identity = %election.identity, "lost the leader lease; controllers stopped, standing by");
    }
    ready.store(false, Ordering::SeqCst);
    // Dropping the last receiver makes the manager release the lease.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => tracing::info!("leader lease released"),
        Ok(Ok(Err(err))) => tracing::warn!(error = %err, "could not release the leader lease"),
        Ok(Err(err)) => tracing::warn!(error = %err, "leader election task failed"),
        Err(_) => tracing::warn!("releasing the leader lease timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_margin_is_a_third_of_the_duration_and_never_zero() {
        let election = |secs| Election {
            lease_name: "l".into(),
            namespace: "n".into(),
            identity: "i".into(),
            duration: Duration::from_secs(secs),
        };
        assert_eq!(election(15).seconds(), (15, 5));
        assert_eq!(election(2).seconds(), (2, 1));
        assert_eq!(
            election(0).seconds(),
            (2, 1),
            "clamped: the manager panics on 0"
        );
    }
}
