//! The `CaptureQuota` reconciler: writes a quota's limits into the Redis of
//! the CaptureDeployment it names (through capture's own quota library),
//! keeps a low-frequency usage snapshot in its status, resets usage on
//! request, and removes its settings on delete (a finalizer).
//!
//! Problems with the references (no such deployment, no Redis, a missing
//! Secret) and specs the schema should have refused become a `Ready=False`
//! condition with a reason, not an error loop; Redis errors are errors, so
//! the controller retries them with backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capture::policy::admin::QuotaAdmin;
use capture::policy::{Keys, Store, StoreSettings};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::crd::condition::condition;
use crate::crd::quota::CaptureQuotaStatus;
use crate::crd::{CaptureDeployment, CaptureQuota};

/// Finalizer that removes the quota's settings from Redis.
pub const FINALIZER: &str = "capture.dev/quota-cleanup";
/// Annotation whose new value resets the usage of the open windows once
/// (any value; change it again to reset again).
pub const RESET_ANNOTATION: &str = "capture.dev/reset-usage";
/// How often usage is re-read into the status.
pub const USAGE_REFRESH: Duration = Duration::from_secs(300);
/// How long an unresolved reference waits before it is looked at again.
pub const UNRESOLVED_RETRY: Duration = Duration::from_secs(60);
/// After this long in deletion with Redis unreachable, the finalizer lets
/// go (with a warning) rather than block the delete forever.
pub const CLEANUP_GIVE_UP: Duration = Duration::from_secs(600);

/// What a reconcile can fail with; the controller retries these.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Redis did not take the settings.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl crate::runtime::ErrorReason for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Redis(_) => "redis",
            Error::Finalizer(err) => crate::runtime::finalizer_reason(err),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Per-object retry delays.
    pub backoff: crate::backoff::Backoff,
    /// Kubernetes Events.
    pub events: crate::events::Events,
    /// Redis timeouts.
    pub redis_timeout: Duration,
    /// Redis clients by deployment, reused across reconciles.
    pub targets: Targets,
}

/// Redis clients by `namespace/deployment`, each with what it was opened
/// from, so a thousand quotas of one deployment share one connection and a
/// changed URL (or Secret) opens a new one.
#[derive(Default)]
pub struct Targets(Mutex<HashMap<String, (TargetSource, Target)>>);

/// What a deployment's Redis client was opened from.
#[derive(Clone, PartialEq, Eq)]
struct TargetSource {
    secret_uid: Option<String>,
    secret_version: Option<String>,
    key: String,
    cluster: bool,
    key_prefix: String,
}

impl Targets {
    fn get(&self, deployment: &str, source: &TargetSource) -> Option<Target> {
        let targets = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        targets
            .get(deployment)
            .filter(|(opened_from, _)| opened_from == source)
            .map(|(_, target)| target.clone())
    }

    fn put(&self, deployment: String, source: TargetSource, target: Target) {
        let mut targets = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        targets.insert(deployment, (source, target));
    }
}

/// Why a quota cannot be written, for its `Ready=False` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// CamelCase reason.
    pub reason: &'static str,
    /// What to fix.
    pub message: String,
}

/// Where a quota's settings go.
#[derive(Clone)]
pub struct Target {
    /// Capture's quota library on that Redis.
    pub admin: QuotaAdmin,
}

/// Finds the Redis of the quota's deployment.
pub async fn resolve(
    quota: &CaptureQuota,
    ctx: &Context,
) -> Result<Result<Target, Unresolved>, Error> {
    let namespace = quota.namespace().unwrap_or_default();
    let deployments: Api<CaptureDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = &quota.spec.deployment;
    let Some(deployment) = deployments.get_opt(name).await? else {
        return Ok(Err(Unresolved {
            reason: "DeploymentNotFound",
            message: format!("no CaptureDeployment {name:?} in namespace {namespace:?}"),
        }));
    };
    let Some(redis) = &deployment.spec.redis else {
        return Ok(Err(Unresolved {
            reason: "NoRedis",
            message: format!("CaptureDeployment {name:?} has no redis; quotas need one"),
        }));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let reference = &redis.url_secret_ref;
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Ok(Err(Unresolved {
            reason: "SecretNotFound",
            message: format!(
                "Secret {:?} (redis.urlSecretRef) does not exist",
                reference.name
            ),
        }));
    };
    let Some(url) = reference.value_in(&secret) else {
        return Ok(Err(Unresolved {
            reason: "SecretKeyMissing",
            message: format!(
                "Secret {:?} has no UTF-8 key {:?} (redis.urlSecretRef)",
                reference.name, reference.key
            ),
        }));
    };
    let source = TargetSource {
        secret_uid: secret.metadata.uid.clone(),
        secret_version: secret.metadata.resource_version.clone(),
        key: reference.key.clone(),
        cluster: redis.cluster,
        key_prefix: redis.key_prefix.clone(),
    };
    let cache_key = format!("{namespace}/{name}");
    if let Some(target) = ctx.targets.get(&cache_key, &source) {
        return Ok(Ok(target));
    }
    let keys = Keys::new(&redis.key_prefix).map_err(|reason| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "key prefix", reason))
    })?;
    let store = Store::open(&StoreSettings::from_urls(
        url.split(','),
        redis.cluster,
        ctx.redis_timeout,
        ctx.redis_timeout,
    ))?;
    let target = Target {
        admin: QuotaAdmin::new(store, keys),
    };
    ctx.targets.put(cache_key, source, target.clone());
    Ok(Ok(target))
}

/// Reconciles one quota (the controller's entry point).
pub async fn reconcile(quota: Arc<CaptureQuota>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = quota.namespace().unwrap_or_default();
    let key = crate::backoff::key(&*quota);
    let api: Api<CaptureQuota> = Api::namespaced(ctx.client.clone(), &namespace);
    let action = finalizer(&api, FINALIZER, quota, |event| async {
        match event {
            Event::Apply(quota) => apply(&quota, &ctx).await,
            Event::Cleanup(quota) => cleanup(&quota, &ctx).await,
        }
    })
    .await
    .map_err(|err| Error::Finalizer(Box::new(err)))?;
    ctx.backoff.succeeded(&key);
    Ok(action)
}

async fn apply(quota: &CaptureQuota, ctx: &Context) -> Result<Action, Error> {
    let previous = quota.status.clone().unwrap_or_default();
    let target = match resolve(quota, ctx).await? {
        Ok(target) => target,
        Err(unresolved) => {
            let status = with_condition(
                quota,
                &previous,
                false,
                unresolved.reason,
                &unresolved.message,
            );
            write_status(quota, ctx, &previous, status).await?;
            return Ok(Action::requeue(UNRESOLVED_RETRY));
        }
    };
    let settings = match crate::quota::settings(&quota.spec) {
        Ok(settings) => settings,
        Err(invalid) => {
            let status =
                with_condition(quota, &previous, false, "InvalidSpec", &invalid.to_string());
            write_status(quota, ctx, &previous, status).await?;
            return Ok(Action::await_change());
        }
    };
    let token = &quota.spec.token;
    // Read first: a resync that finds the settings in place writes nothing.
    let mut observed = target.admin.get(token).await?;
    if observed.settings != settings {
        target.admin.set(token, &settings).await?;
        observed = target.admin.get(token).await?;
    }
    let mut status = with_condition(
        quota,
        &previous,
        true,
        "Synced",
        "limits written to the deployment's Redis",
    );
    let reset = quota.annotations().get(RESET_ANNOTATION).cloned();
    if reset.is_some() && reset != previous_reset(quota) {
        target.admin.reset(token, None).await?;
        observed = target.admin.get(token).await?;
        ctx.events
            .normal(
                quota,
                "UsageReset",
                "ResetUsage",
                format!(
                    "open windows reset ({RESET_ANNOTATION} = {})",
                    reset.as_deref().unwrap_or_default()
                ),
            )
            .await;
        status.last_reset = reset;
    }
    status.usage = crate::quota::usage(&observed);
    if previous.observed_generation != quota.metadata.generation
        || previous.last_sync_time.is_none()
    {
        status.last_sync_time = Some(now());
    }
    write_status(quota, ctx, &previous, status).await?;
    Ok(Action::requeue(USAGE_REFRESH))
}

fn previous_reset(quota: &CaptureQuota) -> Option<String> {
    quota.status.as_ref().and_then(|s| s.last_reset.clone())
}

async fn cleanup(quota: &CaptureQuota, ctx: &Context) -> Result<Action, Error> {
    let target = match resolve(quota, ctx).await? {
        Ok(target) => target,
        // The deployment, its Redis or its Secret is gone: nothing to remove.
        Err(_) => return Ok(Action::await_change()),
    };
    match target.admin.delete(&quota.spec.token).await {
        Ok(()) => Ok(Action::await_change()),
        Err(err) if deleting_for(quota) > CLEANUP_GIVE_UP => {
            tracing::warn!(
                quota = %quota.name_any(),
                error = %err,
                "redis unreachable for {CLEANUP_GIVE_UP:?} of deletion; releasing the finalizer, settings may remain"
            );
            Ok(Action::await_change())
        }
        Err(err) => Err(err.into()),
    }
}

fn deleting_for(quota: &CaptureQuota) -> Duration {
    quota
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|since| {
            let elapsed = k8s_openapi::jiff::Timestamp::now().duration_since(since.0);
            Duration::try_from(elapsed).ok()
        })
        .unwrap_or_default()
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// The status with its `Ready` condition set; the transition time moves
/// only when the condition's status does.
pub fn with_condition(
    quota: &CaptureQuota,
    previous: &CaptureQuotaStatus,
    ready: bool,
    reason: &str,
    message: &str,
) -> CaptureQuotaStatus {
    let generation = quota.metadata.generation;
    CaptureQuotaStatus {
        observed_generation: generation,
        conditions: vec![condition(
            &previous.conditions,
            "Ready",
            ready,
            reason,
            message.to_owned(),
            generation,
        )],
        ..previous.clone()
    }
}

/// Writes the status only when it changed, with an Event when `Ready`
/// changed.
async fn write_status(
    quota: &CaptureQuota,
    ctx: &Context,
    previous: &CaptureQuotaStatus,
    status: CaptureQuotaStatus,
) -> Result<(), Error> {
    if &status == previous {
        return Ok(());
    }
    let ready = |s: &CaptureQuotaStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    let event = (ready(&status) != ready(previous))
        .then(|| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
        })
        .flatten();
    let api: Api<CaptureQuota> =
        Api::namespaced(ctx.client.clone(), &quota.namespace().unwrap_or_default());
    api.patch_status(
        &quota.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    if let Some(condition) = event {
        if condition.status == "True" {
            ctx.events
                .normal(quota, &condition.reason, "WriteQuota", condition.message)
                .await;
        } else {
            ctx.events
                .warning(quota, &condition.reason, "WriteQuota", condition.message)
                .await;
        }
    }
    Ok(())
}

/// What the controller does after a failed reconcile: retry after this
/// object's backoff.
pub fn error_policy(quota: Arc<CaptureQuota>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = crate::backoff::key(&*quota);
    let delay = ctx.backoff.failed(&key);
    tracing::warn!(quota = %key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
