//! The `CaptureDeployment` reconciler: server-side applies the objects it
//! owns (see [`crate::manifest`]), reconciles its Kafka topics one way (see
//! [`crate::topic`]), drains the spool volumes of pods scaled away (see
//! [`crate::spool`]), and reports what it observed in a kstatus-compatible
//! status (`Ready` condition plus `observedGeneration`).
//!
//! The pods run as a Deployment, or with `spec.spool` as a StatefulSet.
//! Switching hands over: the new kind is applied, and the old one deleted
//! once the new one's pods are all ready, so the Service never runs dry.
//!
//! A finalizer deletes, on removal, only the topics whose spec says
//! `deleteOnRemoval`; owned objects go with the owner references. Spool
//! volumes are retained (they are not owned): the same CaptureDeployment
//! made again finds them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
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
use crate::spool::{self, Claim, DrainJob, DrainPlan, JobState, Spool};
use crate::topic::{Change, DesiredTopic, TopicAdmin, TopicState, UNMANAGED_ANNOTATION, plan};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "capture-operator";
/// Finalizer that deletes topics marked `deleteOnRemoval`.
pub const FINALIZER: &str = "capture.dev/topic-cleanup";
/// Periodic resync.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon the pods are asked again while a new runtime config spreads.
pub const CONFIG_RECHECK: Duration = Duration::from_secs(5);
/// How soon to look again while a spool volume waits for its pod to stop
/// (pods are not watched).
pub const SPOOL_RECHECK: Duration = Duration::from_secs(10);

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

/// Deletes `name` (and, in the background, what it owns: a Job's pods); one
/// that is not there is a 404, which is fine.
async fn delete<K>(client: &Client, namespace: &str, name: &str) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(err) => Err(err.into()),
    }
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
    // The pods: a Deployment, or a StatefulSet with a spool; none while the
    // spool is refused (the pods keep running as they are).
    let spool = SpoolOutcome::of(cd);
    let workload = match &spool {
        SpoolOutcome::Off => Workload::of_deployment(
            &server_side_apply(client, &namespace, &manifest::deployment(cd, &versions)).await?,
        ),
        SpoolOutcome::On(settings) => Workload::of_stateful_set(
            &server_side_apply(
                client,
                &namespace,
                &manifest::stateful_set(cd, settings, &versions),
            )
            .await?,
        ),
        SpoolOutcome::Invalid(_) => Workload {
            settings_hash: cd.status.as_ref().and_then(|s| s.settings_hash.clone()),
            ..Workload::default()
        },
    };
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
        // Its target would be the StatefulSet that is not applied.
        Some(_) if matches!(spool, SpoolOutcome::Invalid(_)) => {}
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

    let volumes = reconcile_volumes(cd, ctx, &spool, &workload).await?;
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
    let spool_report = match (&spool, volumes) {
        (SpoolOutcome::Invalid(reason), _) => SpoolReport::Invalid(reason.clone()),
        (_, Some(plan)) => SpoolReport::Volumes(plan),
        (_, None) => SpoolReport::None,
    };
    let waiting_for_pods =
        matches!(&spool_report, SpoolReport::Volumes(plan) if plan.waiting_for_pods());
    let status = observed_status(
        cd,
        &workload,
        topics,
        &missing_secrets,
        &config,
        rollout,
        &spool_report,
    );
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
            &Patch::Merge(status_patch(&previous, &status)),
        )
        .await?;
    }
    // While ready pods still run an older config, look again soon; and
    // while a spool volume waits for its pod to stop.
    match rollout {
        Some(rollout) if rollout.ready > 0 && !rollout.complete() => {
            Ok(Action::requeue(CONFIG_RECHECK))
        }
        _ if waiting_for_pods => Ok(Action::requeue(SPOOL_RECHECK)),
        _ => Ok(Action::requeue(RESYNC)),
    }
}

/// The merge patch that makes the stored status `status`: a field
/// `previous` had and `status` has not (`spoolDrains` once the volumes are
/// gone, `configPods` without a runtime config) is removed with `null`,
/// since a merge patch keeps what it does not mention.
pub fn status_patch(
    previous: &CaptureDeploymentStatus,
    status: &CaptureDeploymentStatus,
) -> serde_json::Value {
    let mut body = json!(status);
    if let (Some(now), serde_json::Value::Object(before)) = (body.as_object_mut(), json!(previous))
    {
        for field in before.keys() {
            now.entry(field.clone()).or_insert(serde_json::Value::Null);
        }
    }
    json!({ "status": body })
}

/// What `spec.spool` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolOutcome {
    /// No spool: a Deployment.
    Off,
    /// A spool: a StatefulSet.
    On(Spool),
    /// Refused (the schema refuses the same); why. Nothing about the pods
    /// changes.
    Invalid(String),
}

impl SpoolOutcome {
    /// From the spec.
    pub fn of(cd: &CaptureDeployment) -> Self {
        match cd.spec.spool.as_ref().map(Spool::from_spec) {
            None => SpoolOutcome::Off,
            Some(Ok(spool)) => SpoolOutcome::On(spool),
            Some(Err(err)) => SpoolOutcome::Invalid(err.to_string()),
        }
    }
}

/// The pods' Deployment or StatefulSet, as the API answered its apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// The generation its controller last acted on.
    pub observed_generation: Option<i64>,
    /// Pods wanted (the spec's, or the autoscaler's).
    pub wanted: i32,
    /// Pods ready.
    pub ready: i32,
    /// Pods of the current pod template.
    pub updated: i32,
    /// The pod template's settings hash.
    pub settings_hash: Option<String>,
}

impl Workload {
    /// A Deployment's.
    pub fn of_deployment(deployment: &Deployment) -> Self {
        let observed = deployment.status.clone().unwrap_or_default();
        let spec = deployment.spec.as_ref();
        Workload {
            generation: deployment.metadata.generation,
            observed_generation: observed.observed_generation,
            wanted: spec
                .and_then(|s| s.replicas)
                .or(observed.replicas)
                .unwrap_or(0),
            ready: observed.ready_replicas.unwrap_or(0),
            updated: observed.updated_replicas.unwrap_or(0),
            settings_hash: spec.and_then(|s| settings_hash(&s.template)),
        }
    }

    /// A StatefulSet's.
    pub fn of_stateful_set(set: &StatefulSet) -> Self {
        let observed = set.status.clone().unwrap_or_default();
        let spec = set.spec.as_ref();
        Workload {
            generation: set.metadata.generation,
            observed_generation: observed.observed_generation,
            wanted: spec.and_then(|s| s.replicas).unwrap_or(observed.replicas),
            ready: observed.ready_replicas.unwrap_or(0),
            updated: observed.updated_replicas.unwrap_or(0),
            settings_hash: spec.and_then(|s| settings_hash(&s.template)),
        }
    }

    /// Every pod updated and ready, and at least one.
    pub fn rolled_out(&self) -> bool {
        self.generation == self.observed_generation
            && self.updated >= self.wanted
            && self.ready >= self.wanted
            && self.wanted > 0
    }

    /// Its controller has seen the latest spec and every pod it wants is
    /// ready: the other kind may go.
    pub fn serving(&self) -> bool {
        self.generation == self.observed_generation && self.ready >= self.wanted
    }
}

fn settings_hash(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> Option<String> {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(manifest::SETTINGS_HASH_ANNOTATION).cloned())
}

/// What is said of the spool in the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolReport {
    /// No spool and no volume left: nothing.
    None,
    /// `spec.spool` refused; why.
    Invalid(String),
    /// The volumes not wanted by a pod, and what was done about them.
    Volumes(DrainPlan),
}

/// A claim as the plan sees it, if it is one of `name`'s spool claims.
fn listed_claim(name: &str, pvc: &PersistentVolumeClaim) -> Option<Claim> {
    let claim = pvc.metadata.name.clone()?;
    Some(Claim {
        ordinal: spool::ordinal(name, &claim)?,
        size_bytes: pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| spool::quantity_bytes(&q.0)),
        deleting: pvc.metadata.deletion_timestamp.is_some(),
        name: claim,
    })
}

/// A drain Job as the plan sees it. One being deleted counts as running:
/// nothing is done about it until it is gone.
fn listed_job(job: &Job) -> Option<DrainJob> {
    let finished = |type_: &str| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == type_ && c.status == "True")
            })
    };
    let state = if job.metadata.deletion_timestamp.is_some() {
        JobState::Running
    } else if finished("Complete") {
        JobState::Succeeded
    } else if finished("Failed") {
        JobState::Failed
    } else {
        JobState::Running
    };
    Some(DrainJob {
        name: job.metadata.name.clone()?,
        state,
    })
}

/// The spool volumes: hands the pods over from the other kind once the
/// wanted one serves, then drains (see [`spool::plan`]) the claims of
/// ordinals no pod wants. `None` when there is no spool and no claim (one
/// list call), or the spool is refused (nothing done).
async fn reconcile_volumes(
    cd: &CaptureDeployment,
    ctx: &Context,
    spool: &SpoolOutcome,
    workload: &Workload,
) -> Result<Option<DrainPlan>, Error> {
    if matches!(spool, SpoolOutcome::Invalid(_)) {
        return Ok(None);
    }
    let namespace = cd.namespace().unwrap_or_default();
    let client = &ctx.client;
    let name = cd.name_any();
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let claims: Vec<Claim> = claims_api
        .list(&ListParams::default().labels(&spool::selector(&spool::claim_labels(&name))))
        .await?
        .items
        .iter()
        .filter_map(|pvc| listed_claim(&name, pvc))
        .collect();
    let replicas = match spool {
        SpoolOutcome::On(_) => {
            if workload.serving() {
                delete::<Deployment>(client, &namespace, &name).await?;
            }
            workload.wanted
        }
        SpoolOutcome::Off | SpoolOutcome::Invalid(_) => {
            if claims.is_empty() {
                return Ok(None);
            }
            // The StatefulSet, if it is still there, has the pods it wants;
            // it goes once the Deployment serves. (Listed by name, so
            // that the grant to list and watch suffices.)
            let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
            let set = sets
                .list(&ListParams::default().fields(&format!("metadata.name={name}")))
                .await?
                .items
                .into_iter()
                .find(|set| set.metadata.name.as_deref() == Some(name.as_str()));
            match set {
                Some(_) if workload.serving() => {
                    delete::<StatefulSet>(client, &namespace, &name).await?;
                    0
                }
                Some(set) => set.spec.and_then(|s| s.replicas).unwrap_or(0),
                None => 0,
            }
        }
    };
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let jobs: Vec<DrainJob> = jobs_api
        .list(&ListParams::default().labels(&spool::selector(&spool::drain_labels(&name))))
        .await?
        .items
        .iter()
        .filter_map(listed_job)
        // This deployment's only, whatever the selector matched.
        .filter(|job| {
            spool::job_claim(&job.name)
                .and_then(|claim| spool::ordinal(&name, claim))
                .is_some()
        })
        .collect();
    let wanted = u32::try_from(replicas).unwrap_or(0);
    let pods = if claims.iter().any(|c| c.ordinal >= wanted && !c.deleting) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        pods.list(
            &ListParams::default().labels(&spool::selector(&manifest::selector_labels(&name))),
        )
        .await?
        .items
        .into_iter()
        .filter_map(|pod| pod.metadata.name)
        .collect()
    } else {
        Default::default()
    };
    let plan = spool::plan(&name, replicas, &claims, &jobs, &pods);

    for claim in &plan.create_jobs {
        server_side_apply(client, &namespace, &manifest::drain_job(cd, claim)).await?;
        tracing::info!(deployment = %name, claim = %claim.name, "draining a spool volume no pod wants");
    }
    // Drained: the claim first, so that a failure leaves the Job to say so.
    for claim in &plan.delete_claims {
        delete::<PersistentVolumeClaim>(client, &namespace, claim).await?;
        tracing::info!(deployment = %name, claim = %claim, "deleted a drained spool volume");
    }
    for job in &plan.delete_jobs {
        delete::<Job>(client, &namespace, job).await?;
    }
    let failed = plan.failed();
    for claim in &failed {
        tracing::warn!(deployment = %name, claim = %claim, "a spool drain failed; the volume is kept and drained again");
    }
    let list = |claims: &mut dyn Iterator<Item = &str>| claims.collect::<Vec<_>>().join(", ");
    if !plan.create_jobs.is_empty() {
        let claims = list(&mut plan.create_jobs.iter().map(|c| c.name.as_str()));
        ctx.events
            .normal(
                cd,
                "SpoolDrainStarted",
                "DrainSpool",
                format!(
                    "draining the spool volumes of pods no longer wanted with a Job each: {claims}"
                ),
            )
            .await;
    }
    if !plan.delete_claims.is_empty() {
        let claims = list(&mut plan.delete_claims.iter().map(String::as_str));
        ctx.events
            .normal(
                cd,
                "SpoolVolumeDrained",
                "DeleteVolume",
                format!("spool replayed to Kafka; deleted the volumes {claims}"),
            )
            .await;
    }
    if !failed.is_empty() {
        let claims = list(&mut failed.iter().copied());
        ctx.events
            .warning(
                cd,
                "SpoolDrainFailed",
                "DrainSpool",
                format!("the drain Jobs of {claims} failed (Kafka unreachable until their deadline, or their pods failed); the volumes are kept and drained again by new Jobs"),
            )
            .await;
    }
    Ok(Some(plan))
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
    workload: &Workload,
    topics: Vec<TopicStatus>,
    missing_secrets: &[String],
    config: &RuntimeConfigOutcome,
    rollout: Option<crate::rollout::ConfigRollout>,
    spool: &SpoolReport,
) -> CaptureDeploymentStatus {
    let previous = cd.status.clone().unwrap_or_default();
    let generation = cd.metadata.generation;
    let wanted = workload.wanted;
    let ready_replicas = workload.ready;
    let updated = workload.updated;
    let rolled_out = workload.rolled_out();
    let drains_failed = match spool {
        SpoolReport::Volumes(plan) => plan.failed(),
        _ => Vec::new(),
    };
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
    } else if let SpoolReport::Invalid(reason) = spool {
        (
            false,
            "InvalidSpool",
            format!("spec.spool not applied, the pods are left as they are: {reason}"),
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
    let invalid = !missing_secrets.is_empty()
        || topic_problem.is_some()
        || matches!(config, RuntimeConfigOutcome::Invalid(_))
        || matches!(spool, SpoolReport::Invalid(_));
    // A failed drain leaves the pods serving, so it is not a reason for
    // Ready to be false; it is for Degraded.
    let degraded = invalid || !drains_failed.is_empty();
    let (degraded_reason, degraded_message) = if invalid {
        (ready_reason, ready_message.clone())
    } else if !drains_failed.is_empty() {
        (
            "SpoolDrainFailed",
            format!(
                "the drain of spool volumes {} failed; they are kept and drained again",
                drains_failed.join(", ")
            ),
        )
    } else {
        ("AsExpected", "nothing wrong".to_owned())
    };
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
        condition("Degraded", degraded, degraded_reason, degraded_message),
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
    if let SpoolReport::Volumes(plan) = spool {
        let pending = plan.pending();
        let (ok, reason, message) = if !drains_failed.is_empty() {
            (
                false,
                "DrainFailed",
                format!(
                    "{pending} spool volumes of pods no longer wanted hold events; the drain of {} failed and is made again",
                    drains_failed.join(", ")
                ),
            )
        } else if pending > 0 {
            (
                false,
                "Draining",
                format!(
                    "{pending} spool volumes of pods no longer wanted are drained to Kafka: {}",
                    plan.volumes
                        .iter()
                        .filter(|(_, state)| **state != spool::VolumeState::Drained)
                        .map(|(claim, state)| format!("{claim} ({})", volume_word(state)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        } else {
            (
                true,
                "AllVolumesInUse",
                "every spool volume belongs to a pod".to_owned(),
            )
        };
        conditions.push(condition("SpoolDrained", ok, reason, message));
    }
    let config_hash = match config {
        RuntimeConfigOutcome::Applied(hash) => Some(hash.clone()),
        RuntimeConfigOutcome::Invalid(_) => previous.config_hash.clone(),
    };
    let settings_hash = workload.settings_hash.clone();
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
        spool_drains: match spool {
            SpoolReport::Volumes(plan) => i32::try_from(plan.pending()).ok(),
            SpoolReport::None | SpoolReport::Invalid(_) => None,
        },
    }
}

fn volume_word(state: &spool::VolumeState) -> &'static str {
    match state {
        spool::VolumeState::PodStopping => "its pod is stopping",
        spool::VolumeState::Draining => "drain Job running",
        spool::VolumeState::DrainFailed => "drain failed",
        spool::VolumeState::Drained => "drained",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_field_no_longer_reported_is_removed_not_kept() {
        let previous = CaptureDeploymentStatus {
            spool_drains: Some(0),
            config_pods: Some(2),
            config_hash: Some("old".into()),
            ..CaptureDeploymentStatus::default()
        };
        let status = CaptureDeploymentStatus {
            config_hash: Some("new".into()),
            ..CaptureDeploymentStatus::default()
        };
        assert_eq!(
            status_patch(&previous, &status),
            json!({"status": {"configHash": "new", "spoolDrains": null, "configPods": null}})
        );
        // Nothing to remove: just the status.
        assert_eq!(
            status_patch(&CaptureDeploymentStatus::default(), &status),
            json!({"status": {"configHash": "new"}})
        );
    }
}
