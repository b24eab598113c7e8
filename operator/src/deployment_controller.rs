//! The `CaptureDeployment` reconciler: server-side applies the objects it
//! owns (see [`crate::manifest`]), reconciles its Kafka topics one way (see
//! [`crate::topic`]), and reports what it observed in a kstatus-compatible
//! status (`Ready` condition plus `observedGeneration`).
//!
//! A finalizer deletes, on removal, only the topics whose spec says
//! `deleteOnRemoval`; owned objects go with the owner references.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::crd::CaptureDeployment;
use crate::crd::condition::condition;
use crate::crd::deployment::{CaptureDeploymentStatus, TopicStatus};
use crate::manifest;
use crate::topic::{Change, DesiredTopic, TopicAdmin, TopicState, UNMANAGED_ANNOTATION, plan};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "capture-operator";
/// Finalizer that deletes topics marked `deleteOnRemoval`.
pub const FINALIZER: &str = "capture.dev/topic-cleanup";
/// Periodic resync.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon the pods are asked again while a new runtime config spreads.
pub const CONFIG_RECHECK: Duration = Duration::from_secs(5);

/// What a reconcile can fail with; the controller retries these.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The Kafka admin client could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl crate::runtime::ErrorReason for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Kafka(_) => "kafka",
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
    /// Timeout of Kafka admin operations.
    pub kafka_timeout: Duration,
}

/// Reconciles one CaptureDeployment (the controller's entry point).
pub async fn reconcile(cd: Arc<CaptureDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = cd.namespace().unwrap_or_default();
    let key = crate::backoff::key(&*cd);
    let api: Api<CaptureDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let action = finalizer(&api, FINALIZER, cd, |event| async {
        match event {
            Event::Apply(cd) => apply(&cd, &ctx).await,
            Event::Cleanup(cd) => cleanup(&cd, &ctx).await,
        }
    })
    .await
    .map_err(|err| Error::Finalizer(Box::new(err)))?;
    ctx.backoff.succeeded(&key);
    Ok(action)
}

/// Server-side applies `object` (its name and namespace come from it).
async fn server_side_apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api
        .patch(&object.name_any(), &params, &Patch::Apply(object))
        .await?)
}

/// The `resourceVersion` of each Secret the pods read; a missing one is
/// left out (and reported).
async fn secret_versions(
    cd: &CaptureDeployment,
    client: &Client,
    namespace: &str,
) -> Result<
    (
        BTreeMap<String, String>,
        Vec<String>,
        BTreeMap<String, Secret>,
    ),
    Error,
> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut versions = BTreeMap::new();
    let mut missing = Vec::new();
    let mut found = BTreeMap::new();
    for name in manifest::referenced_secrets(&cd.spec) {
        match secrets.get_opt(&name).await? {
            Some(secret) => {
                versions.insert(name.clone(), secret.resource_version().unwrap_or_default());
                found.insert(name, secret);
            }
            None => missing.push(name),
        }
    }
    Ok((versions, missing, found))
}

/// The topics as the spec wants them.
pub fn desired_topics(cd: &CaptureDeployment) -> Vec<(DesiredTopic, bool)> {
    let unmanaged: Vec<&str> = cd
        .annotations()
        .get(UNMANAGED_ANNOTATION)
        .map(|v| v.split(',').map(str::trim).collect())
        .unwrap_or_default();
    manifest::topic_names(&cd.spec)
        .into_iter()
        .map(|(_, name, spec)| {
            (
                DesiredTopic {
                    managed: !unmanaged.contains(&name.as_str()),
                    name,
                    partitions: spec.partitions,
                    replication_factor: spec.replication_factor,
                    config: spec.config.clone(),
                },
                spec.delete_on_removal,
            )
        })
        .collect()
}

fn kafka_admin(
    cd: &CaptureDeployment,
    secrets: &BTreeMap<String, Secret>,
    timeout: Duration,
) -> Result<TopicAdmin, Error> {
    let mut extra = BTreeMap::new();
    if let Some(sasl) = &cd.spec.kafka.sasl {
        extra.insert("security.protocol".to_owned(), "sasl_ssl".to_owned());
        extra.insert("sasl.mechanism".to_owned(), sasl.mechanism.clone());
        for (key, reference) in [
            ("sasl.username", &sasl.username),
            ("sasl.password", &sasl.password),
        ] {
            if let Some(value) = secrets
                .get(&reference.name)
                .and_then(|s| reference.value_in(s))
            {
                extra.insert(key.to_owned(), value);
            }
        }
    }
    Ok(TopicAdmin::connect(
        &cd.spec.kafka.brokers.join(","),
        &extra,
        timeout,
    )?)
}

async fn reconcile_topics(
    cd: &CaptureDeployment,
    secrets: &BTreeMap<String, Secret>,
    ctx: &Context,
) -> Result<Vec<TopicStatus>, Error> {
    let admin = kafka_admin(cd, secrets, ctx.kafka_timeout)?;
    let mut statuses = Vec::new();
    let mut changed = Vec::new();
    // Once the cluster itself does not answer, the other topics would each
    // wait out the same timeout: they get the same error at once.
    let mut unreachable: Option<String> = None;
    for (topic, _) in desired_topics(cd) {
        if let Some(message) = &unreachable {
            statuses.push(error_status(&topic.name, message));
            continue;
        }
        let status = match admin.observe(&topic.name).await {
            Err(err) => {
                if crate::topic::cluster_unreachable(&err) {
                    unreachable = Some(err.to_string());
                }
                error_status(&topic.name, &err.to_string())
            }
            Ok(observed) => {
                let plan = plan(&topic, observed.as_ref());
                match admin.apply(&topic, &plan.changes).await {
                    Err(err) => error_status(&topic.name, &err.to_string()),
                    Ok(()) => {
                        changed.extend(plan.changes.iter().map(|change| match change {
                            Change::Create => format!("created {}", topic.name),
                            Change::AddPartitions(n) => {
                                format!("grew {} to {n} partitions", topic.name)
                            }
                            Change::SetConfig(_) => format!("updated the config of {}", topic.name),
                        }));
                        // Partitions as they now are: unchanged when nothing was done.
                        let partitions = match &plan.state {
                            TopicState::NotSupported(_) | TopicState::Unmanaged => {
                                observed.as_ref().map_or(topic.partitions, |o| o.partitions)
                            }
                            _ => topic.partitions,
                        };
                        let state = match plan.state {
                            // Changes made: ready once they are.
                            TopicState::Updating => TopicState::Ready,
                            other => other,
                        };
                        TopicStatus {
                            name: topic.name.clone(),
                            state: state.label().to_owned(),
                            partitions: Some(partitions),
                            message: match state {
                                TopicState::NotSupported(reason) => Some(reason),
                                _ => None,
                            },
                        }
                    }
                }
            }
        };
        statuses.push(status);
    }
    if !changed.is_empty() {
        ctx.events
            .normal(
                cd,
                "TopicsReconciled",
                "ReconcileTopics",
                changed.join("; "),
            )
            .await;
    }
    Ok(statuses)
}

fn error_status(name: &str, message: &str) -> TopicStatus {
    TopicStatus {
        name: name.to_owned(),
        state: "Error".into(),
        partitions: None,
        message: Some(message.to_owned()),
    }
}

async fn apply(cd: &CaptureDeployment, ctx: &Context) -> Result<Action, Error> {
    let namespace = cd.namespace().unwrap_or_default();
    let client = &ctx.client;
    let (versions, missing_secrets, secrets) = secret_versions(cd, client, &namespace).await?;

    server_side_apply(client, &namespace, &manifest::service_account(cd)).await?;
    // A runtime config capture would refuse never reaches the pods: the
    // ConfigMap keeps the last good document, and the status says why.
    let config = manifest::runtime_config(&cd.spec);
    let config = match config.validate() {
        Ok(()) => {
            server_side_apply(client, &namespace, &manifest::config_map(cd, &config)).await?;
            RuntimeConfigOutcome::Applied(config.hash())
        }
        Err(err) => RuntimeConfigOutcome::Invalid(err.to_string()),
    };
    server_side_apply(client, &namespace, &manifest::service(cd)).await?;
    let deployment =
        server_side_apply(client, &namespace, &manifest::deployment(cd, &versions)).await?;
    server_side_apply(client, &namespace, &manifest::disruption_budget(cd)).await?;
    match manifest::network_policy(cd) {
        Some(policy) => {
            server_side_apply(client, &namespace, &policy).await?;
        }
        None => {
            // Turned off (or never on): gone. A delete of one that is not
            // there is a 404, one call either way.
            let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
            match api.delete(&cd.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    match manifest::autoscaler(cd) {
        Some(hpa) => {
            server_side_apply(client, &namespace, &hpa).await?;
        }
        None => {
            let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &namespace);
            if api.get_opt(&cd.name_any()).await?.is_some() {
                api.delete(&cd.name_any(), &DeleteParams::default()).await?;
            }
        }
    }

    let topics = reconcile_topics(cd, &secrets, ctx).await?;
    // Which config the ready pods run: the one just written, else the last
    // good one.
    let desired = match &config {
        RuntimeConfigOutcome::Applied(hash) => Some(hash.clone()),
        RuntimeConfigOutcome::Invalid(_) => cd.status.as_ref().and_then(|s| s.config_hash.clone()),
    };
    let rollout = match &desired {
        Some(hash) => Some(
            crate::rollout::observe(
                client,
                &namespace,
                &cd.name_any(),
                hash,
                cd.spec.tls.is_some(),
            )
            .await?,
        ),
        None => None,
    };
    let status = observed_status(cd, &deployment, topics, &missing_secrets, &config, rollout);
    let previous = cd.status.clone().unwrap_or_default();
    let degraded = |s: &CaptureDeploymentStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) = degraded(&status)
        && degraded(&previous).map(|(r, _)| r) != Some(reason.clone())
    {
        ctx.events.warning(cd, &reason, "Reconcile", message).await;
    }
    // Changes the pods see, said once: a roll, or a reload.
    let changed = |before: &Option<String>, now: &Option<String>| match (before, now) {
        (Some(before), Some(now)) if before != now => Some(format!("{before} -> {now}")),
        _ => None,
    };
    if let Some(change) = changed(&previous.settings_hash, &status.settings_hash) {
        let note = format!(
            "static settings or a referenced Secret changed (settings hash {change}); rolling the pods"
        );
        ctx.events
            .normal(cd, "RollingPods", "UpdateDeployment", note)
            .await;
    }
    if let Some(change) = changed(&previous.config_hash, &status.config_hash) {
        let note = format!(
            "runtime config {change} written to the ConfigMap; the pods reload it without a restart"
        );
        ctx.events
            .normal(cd, "RuntimeConfigUpdated", "UpdateConfigMap", note)
            .await;
    }
    if status != previous {
        let api: Api<CaptureDeployment> = Api::namespaced(client.clone(), &namespace);
        api.patch_status(
            &cd.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
    }
    // While ready pods still run an older config, look again soon.
    match rollout {
        Some(rollout) if rollout.ready > 0 && !rollout.complete() => {
            Ok(Action::requeue(CONFIG_RECHECK))
        }
        _ => Ok(Action::requeue(RESYNC)),
    }
}

/// What became of the spec's runtime config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeConfigOutcome {
    /// Written to the ConfigMap; its hash.
    Applied(String),
    /// Refused (the ConfigMap keeps the last good one); why.
    Invalid(String),
}

/// The status from what was observed; condition transition times move only
/// when a condition's status does.
pub fn observed_status(
    cd: &CaptureDeployment,
    deployment: &Deployment,
    topics: Vec<TopicStatus>,
    missing_secrets: &[String],
    config: &RuntimeConfigOutcome,
    rollout: Option<crate::rollout::ConfigRollout>,
) -> CaptureDeploymentStatus {
    let previous = cd.status.clone().unwrap_or_default();
    let generation = cd.metadata.generation;
    let observed = deployment.status.clone().unwrap_or_default();
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .or(observed.replicas)
        .unwrap_or(0);
    let ready_replicas = observed.ready_replicas.unwrap_or(0);
    let updated = observed.updated_replicas.unwrap_or(0);
    let rolled_out = deployment.metadata.generation == observed.observed_generation
        && updated >= wanted
        && ready_replicas >= wanted
        && wanted > 0;
    let topics_ready = topics
        .iter()
        .filter(|t| t.state == "Ready" || t.state == "Unmanaged")
        .count();
    let topic_problem = topics
        .iter()
        .find(|t| t.state != "Ready" && t.state != "Unmanaged");

    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(&previous.conditions, type_, ok, reason, message, generation)
    };
    let (ready, ready_reason, ready_message) = if let Some(secret) = missing_secrets.first() {
        (
            false,
            "SecretNotFound",
            format!("Secret {secret:?} referenced by the spec does not exist"),
        )
    } else if let RuntimeConfigOutcome::Invalid(reason) = config {
        (
            false,
            "InvalidRuntimeConfig",
            format!("spec.runtimeConfig not applied, the pods keep the last good one: {reason}"),
        )
    } else if let Some(topic) = topic_problem {
        (
            false,
            if topic.state == "NotSupported" {
                "TopicChangeNotSupported"
            } else {
                "TopicError"
            },
            format!(
                "topic {}: {}",
                topic.name,
                topic.message.clone().unwrap_or_default()
            ),
        )
    } else if !rolled_out {
        (
            false,
            "RollingOut",
            format!("{ready_replicas} of {wanted} pods ready"),
        )
    } else {
        (
            true,
            "Available",
            format!("{ready_replicas} pods ready, topics in sync"),
        )
    };
    let degraded = !missing_secrets.is_empty()
        || topic_problem.is_some()
        || matches!(config, RuntimeConfigOutcome::Invalid(_));
    let mut conditions = vec![
        condition("Ready", ready, ready_reason, ready_message.clone()),
        condition(
            "Progressing",
            !rolled_out,
            if rolled_out {
                "RolloutComplete"
            } else {
                "RollingOut"
            },
            format!("{updated} of {wanted} pods updated, {ready_replicas} ready"),
        ),
        condition(
            "Degraded",
            degraded,
            if degraded { ready_reason } else { "AsExpected" },
            if degraded {
                ready_message
            } else {
                "nothing wrong".into()
            },
        ),
        match config {
            RuntimeConfigOutcome::Applied(hash) => condition(
                "RuntimeConfigValid",
                true,
                "Applied",
                format!("runtime config {hash} written to the ConfigMap"),
            ),
            RuntimeConfigOutcome::Invalid(reason) => {
                condition("RuntimeConfigValid", false, "Invalid", reason.clone())
            }
        },
        condition(
            "TopicsReady",
            topic_problem.is_none(),
            if topic_problem.is_none() {
                "InSync"
            } else {
                "NotInSync"
            },
            format!("{topics_ready} of {} topics in sync", topics.len()),
        ),
    ];
    if let Some(rollout) = rollout {
        let reason = if rollout.complete() {
            "AllPods"
        } else if rollout.ready == 0 {
            "NoReadyPods"
        } else {
            "Propagating"
        };
        conditions.push(condition(
            "RuntimeConfigApplied",
            rollout.complete(),
            reason,
            format!(
                "{} of {} ready pods run the runtime config",
                rollout.current, rollout.ready
            ),
        ));
    }
    let config_hash = match config {
        RuntimeConfigOutcome::Applied(hash) => Some(hash.clone()),
        RuntimeConfigOutcome::Invalid(_) => previous.config_hash.clone(),
    };
    let settings_hash = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(manifest::SETTINGS_HASH_ANNOTATION).cloned());
    CaptureDeploymentStatus {
        observed_generation: generation,
        conditions,
        replicas: Some(wanted),
        ready_replicas: Some(ready_replicas),
        topics_summary: Some(format!("{topics_ready}/{}", topics.len())),
        topics,
        config_hash,
        settings_hash,
        config_pods: rollout.map(|r| r.current),
    }
}

async fn cleanup(cd: &CaptureDeployment, ctx: &Context) -> Result<Action, Error> {
    let doomed: Vec<DesiredTopic> = desired_topics(cd)
        .into_iter()
        .filter(|(topic, delete)| *delete && topic.managed)
        .map(|(topic, _)| topic)
        .collect();
    if doomed.is_empty() {
        return Ok(Action::await_change());
    }
    let namespace = cd.namespace().unwrap_or_default();
    let (_, _, secrets) = secret_versions(cd, &ctx.client, &namespace).await?;
    let admin = kafka_admin(cd, &secrets, ctx.kafka_timeout)?;
    for topic in doomed {
        admin.delete(&topic.name).await?;
        tracing::info!(topic = %topic.name, "deleted topic on removal, as its spec asks");
        ctx.events
            .normal(
                cd,
                "TopicDeleted",
                "DeleteTopic",
                format!("deleted {} on removal (deleteOnRemoval)", topic.name),
            )
            .await;
    }
    Ok(Action::await_change())
}

/// What the controller does after a failed reconcile: retry after this
/// object's backoff.
pub fn error_policy(cd: Arc<CaptureDeployment>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = crate::backoff::key(&*cd);
    let delay = ctx.backoff.failed(&key);
    tracing::warn!(deployment = %key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
