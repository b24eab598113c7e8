//! The operator process: one controller per kind, the watches that bring
//! changes (and deleted children) back to their owner, reconcile metrics,
//! and the health and metrics endpoints.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::crd::{CaptureDeployment, CaptureQuota};
use crate::{deployment_controller, manifest, quota_controller};

/// Reconciles by `kind` and `result` (`ok`, `error`).
pub const RECONCILES: &str = "operator_reconciles_total";
/// Reconcile time by `kind`.
pub const RECONCILE_SECONDS: &str = "operator_reconcile_duration_seconds";
/// Failed reconciles by `kind` and `reason` (`kubernetes`, `kafka`,
/// `redis`, `finalizer`).
pub const RECONCILE_ERRORS: &str = "operator_reconcile_errors_total";

/// A reconcile error's bounded label for [`RECONCILE_ERRORS`].
pub trait ErrorReason {
    /// One of a few fixed words.
    fn reason(&self) -> &'static str;
}

/// The label of an error from the finalizer helper, which every reconcile
/// runs inside: the cause, not the wrapper.
pub fn finalizer_reason<E: ErrorReason + std::error::Error + 'static>(
    err: &kube::runtime::finalizer::Error<E>,
) -> &'static str {
    use kube::runtime::finalizer::Error;
    match err {
        Error::ApplyFailed(inner) | Error::CleanupFailed(inner) => inner.reason(),
        Error::AddFinalizer(_) | Error::RemoveFinalizer(_) => "kubernetes",
        Error::UnnamedObject | Error::InvalidFinalizer => "finalizer",
    }
}

/// How long running reconciles may take to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Settings of the operator process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Manage only these namespaces, each with watches of its own, so
    /// that nothing is listed or watched cluster-wide (empty: every
    /// namespace, which needs cluster-wide RBAC).
    pub namespaces: Vec<String>,
    /// Timeout of Kafka admin calls.
    pub kafka_timeout: Duration,
    /// Timeout of Redis calls.
    pub redis_timeout: Duration,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Times a reconcile and counts its result.
async fn measured<F, E>(kind: &'static str, reconcile: F) -> Result<Action, E>
where
    F: Future<Output = Result<Action, E>>,
    E: ErrorReason,
{
    let started = Instant::now();
    let result = reconcile.await;
    metrics::histogram!(RECONCILE_SECONDS, "kind" => kind).record(started.elapsed().as_secs_f64());
    let label = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(RECONCILES, "kind" => kind, "result" => label).increment(1);
    if let Err(err) = &result {
        metrics::counter!(RECONCILE_ERRORS, "kind" => kind, "reason" => err.reason()).increment(1);
    }
    result
}

/// Runs both controllers until `shutdown` resolves, then gives running
/// reconciles [`SHUTDOWN_GRACE`] to finish: one pair watching every
/// namespace, or one pair per namespace of [`Settings::namespaces`], so that
/// a namespaced operator never lists or watches anything (Secrets above
/// all) outside the namespaces it manages.
pub async fn run_controllers(
    client: Client,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let signal = {
        let tx = shutdown_tx.clone();
        async move {
            shutdown.await;
            let _ = tx.send(());
        }
    };
    tokio::spawn(signal);
    let scopes: Vec<Option<&str>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings
            .namespaces
            .iter()
            .map(|ns| Some(ns.as_str()))
            .collect()
    };
    let controllers = futures::future::join_all(
        scopes
            .into_iter()
            .map(|ns| controllers_in(&client, settings, ns, &shutdown_tx)),
    );
    tracing::info!(namespaces = ?settings.namespaces, "controllers running");
    tokio::pin!(controllers);
    let stopping = stopped(&shutdown_tx);
    tokio::select! {
        _ = &mut controllers => {}
        () = stopping => {
            tracing::info!("stop requested; letting running reconciles finish");
            // Graceful shutdown lets running reconciles finish; a watch stuck
            // retrying an unreachable API server must not hold the exit.
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut controllers).await.is_err() {
                tracing::warn!("controllers still busy after {SHUTDOWN_GRACE:?}; stopping anyway");
            }
        }
    }
    tracing::info!("controllers stopped");
}

/// Resolves once the stop is broadcast.
fn stopped(tx: &tokio::sync::broadcast::Sender<()>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = tx.subscribe();
    async move {
        let _ = rx.recv().await;
    }
}

/// Both controllers, watching `ns` (`None`: every namespace), until the
/// stop is broadcast. Built at once, so that each is subscribed to the stop
/// before anything can send it.
fn controllers_in(
    client: &Client,
    settings: &Settings,
    ns: Option<&str>,
    shutdown_tx: &tokio::sync::broadcast::Sender<()>,
) -> impl Future<Output = ()> + use<> {
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=capture-operator");
    let deployments = Controller::new(
        api::<CaptureDeployment>(client, ns),
        watcher::Config::default(),
    );
    let store = deployments.store();
    let deployment_ctx = Arc::new(deployment_controller::Context {
        client: client.clone(),
        backoff: Default::default(),
        events: crate::events::Events::new(client.clone()),
        kafka_timeout: settings.kafka_timeout,
    });
    let deployments = deployments
        .owns(api::<Deployment>(client, ns), owned.clone())
        // With a spool: the pods' StatefulSet, and the Jobs draining the
        // volumes of pods scaled away (a finished one moves the drain on).
        .owns(api::<StatefulSet>(client, ns), owned.clone())
        .owns(api::<Job>(client, ns), owned.clone())
        .owns(api::<Service>(client, ns), owned.clone())
        .owns(api::<ServiceAccount>(client, ns), owned.clone())
        .owns(api::<ConfigMap>(client, ns), owned.clone())
        .owns(api::<PodDisruptionBudget>(client, ns), owned.clone())
        .owns(api::<HorizontalPodAutoscaler>(client, ns), owned.clone())
        .owns(api::<NetworkPolicy>(client, ns), owned)
        // A changed Secret rolls the pods of every deployment that reads it.
        .watches(
            api::<Secret>(client, ns),
            watcher::Config::default(),
            move |secret: Secret| {
                let namespace = secret.namespace();
                let name = secret.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|cd| {
                        cd.namespace() == namespace
                            && manifest::referenced_secrets(&cd.spec).contains(&name)
                    })
                    .map(|cd| ObjectRef::from_obj(&*cd))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stopped(shutdown_tx))
        .run(
            |cd, ctx| {
                measured(
                    "CaptureDeployment",
                    deployment_controller::reconcile(cd, ctx),
                )
            },
            deployment_controller::error_policy,
            deployment_ctx,
        )
        .for_each(|_| async {});

    let quotas = Controller::new(api::<CaptureQuota>(client, ns), watcher::Config::default());
    let quota_store = quotas.store();
    let quota_ctx = Arc::new(quota_controller::Context {
        client: client.clone(),
        backoff: Default::default(),
        events: crate::events::Events::new(client.clone()),
        redis_timeout: settings.redis_timeout,
        targets: Default::default(),
    });
    let quotas = quotas
        // A deployment that appears, or changes its Redis, re-syncs its quotas.
        .watches(
            api::<CaptureDeployment>(client, ns),
            watcher::Config::default(),
            move |cd: CaptureDeployment| {
                let namespace = cd.namespace();
                let name = cd.name_any();
                quota_store
                    .state()
                    .into_iter()
                    .filter(|q| q.namespace() == namespace && q.spec.deployment == name)
                    .map(|q| ObjectRef::from_obj(&*q))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stopped(shutdown_tx))
        .run(
            |quota, ctx| measured("CaptureQuota", quota_controller::reconcile(quota, ctx)),
            quota_controller::error_policy,
            quota_ctx,
        )
        .for_each(|_| async {});

    async move {
        tokio::join!(deployments, quotas);
    }
}

/// `/metrics`, `/healthz` (the process is up) and `/readyz` (controllers
/// running, or standing by for the leader lease; not while shutting down).
pub fn health_router(metrics: PrometheusHandle, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::SeqCst);
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move { body }
            }),
        )
}
