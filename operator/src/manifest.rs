//! The Kubernetes objects a `CaptureDeployment` owns, as pure functions of
//! its spec: ServiceAccount, ConfigMap, Deployment (or, with a spool, a
//! StatefulSet and the drain Jobs of its volumes), Service,
//! HorizontalPodAutoscaler, PodDisruptionBudget and NetworkPolicy. The reconciler
//! server-side applies them; tests check them without an API server.
//!
//! Capture's static settings reach the pods as `CAPTURE_*` environment
//! variables. Credentials (the Kafka SASL user and password, the Redis URL)
//! never do: their Secret keys are mounted as files readable by the pod's
//! group only, and the variables name the files. A pod-template annotation
//! carries a hash of those settings and of the referenced Secrets'
//! versions, so changing either rolls the pods (capture reads the
//! credential files once, at start). The runtime config document is in the
//! ConfigMap, mounted as a volume: changing it does not roll the pods, they
//! reload the file. An optional NetworkPolicy fences the pods in.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceFieldSelector, ResourceRequirements, SeccompProfile,
    SecretProjection, SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use capture::runtime_config::RuntimeConfig;

use crate::crd::CaptureDeployment;
use crate::crd::deployment::{CaptureDeploymentSpec, SecretKeyRef, TopicSpec};
use crate::spool::{self, Claim, Spool};

/// Pod-template annotation holding the hash of the pods' static settings.
pub const SETTINGS_HASH_ANNOTATION: &str = "capture.dev/settings-hash";
/// ConfigMap annotation holding the hash of the runtime config document.
pub const CONFIG_HASH_ANNOTATION: &str = "capture.dev/config-hash";
/// Directory the ConfigMap is mounted at in the pods.
pub const RUNTIME_CONFIG_DIR: &str = "/etc/capture/runtime";
/// The ConfigMap key (and file name) of the runtime config document.
pub const RUNTIME_CONFIG_FILE: &str = "runtime.yaml";
/// Directory the TLS Secret is mounted at in the pods.
pub const TLS_DIR: &str = "/etc/capture/tls";
/// Directory the signing Secret is mounted at in the pods.
pub const SIGNING_DIR: &str = "/etc/capture/signing";
/// Directory the credential Secret keys are mounted at in the pods.
pub const CREDENTIALS_DIR: &str = "/etc/capture/credentials";
/// Mode of the credential files: read by the owner (root) and the pod's
/// group (`fsGroup`, capture's group), by nobody else.
pub const CREDENTIALS_MODE: i32 = 0o440;
/// The port capture listens on inside the pod.
pub const CONTAINER_PORT: i32 = 3000;
/// Pods when neither `replicas` nor `autoscaling` is given.
pub const DEFAULT_REPLICAS: i32 = 2;
/// The user capture runs as (not root).
const RUN_AS: i64 = 65_532;
/// `--shutdown-delay` of the pods: readiness fails this long before the
/// listener closes, so endpoints drop the pod first.
const SHUTDOWN_DELAY: &str = "5s";
/// `--shutdown-timeout` of the pods.
const SHUTDOWN_TIMEOUT: &str = "25s";
/// `--shutdown-timeout` of the pods with a spool: in-flight requests, then
/// as much of the spool as Kafka takes (what remains stays on the volume).
pub const SPOOL_SHUTDOWN_TIMEOUT: &str = "60s";
/// Grace period of the pods: shutdown delay and timeout, plus a margin.
const GRACE_SECONDS: i64 = 35;
/// Grace period of the pods with a spool, likewise.
pub const SPOOL_GRACE_SECONDS: i64 = 70;
/// Retries of a drain Job's pod that failed (a crash, a node lost); a
/// drain that waits for Kafka does not fail, it runs into the deadline.
pub const DRAIN_BACKOFF_LIMIT: i32 = 6;
/// How long one drain Job may run. Past it, the Job fails and the
/// operator makes a new one: the volume is kept until one succeeds.
pub const DRAIN_DEADLINE_SECONDS: i64 = 3600;

/// Labels of every object of one CaptureDeployment.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "capture-operator".into(),
    );
    labels.insert("app.kubernetes.io/component".into(), "capture".into());
    labels
}

/// The labels that select its pods (stable: a Deployment's selector is
/// immutable).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "capture".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
    ])
}

fn metadata(cd: &CaptureDeployment) -> ObjectMeta {
    ObjectMeta {
        name: Some(cd.name_any()),
        namespace: cd.namespace(),
        labels: Some(labels(&cd.name_any())),
        owner_references: cd.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// The topic names, by capture's data type, defaults from capture itself.
pub fn topic_names(spec: &CaptureDeploymentSpec) -> [(&'static str, String, &TopicSpec); 8] {
    let defaults = capture::route::Topics::default();
    let t = &spec.kafka.topics;
    let name =
        |topic: &TopicSpec, default: &str| topic.name.clone().unwrap_or_else(|| default.to_owned());
    [
        ("EVENTS", name(&t.events, &defaults.events), &t.events),
        (
            "RECORDINGS",
            name(&t.recordings, &defaults.recordings),
            &t.recordings,
        ),
        (
            "HISTORICAL",
            name(&t.historical, &defaults.historical),
            &t.historical,
        ),
        (
            "CLIENT_WARNINGS",
            name(&t.client_warnings, &defaults.client_warnings),
            &t.client_warnings,
        ),
        (
            "EXCEPTIONS",
            name(&t.exceptions, &defaults.exceptions),
            &t.exceptions,
        ),
        (
            "OVERFLOW",
            name(&t.overflow, &defaults.overflow),
            &t.overflow,
        ),
        (
            "HEATMAPS",
            name(&t.heatmaps, &defaults.heatmaps),
            &t.heatmaps,
        ),
        ("DLQ", name(&t.dlq, &defaults.dlq), &t.dlq),
    ]
}

/// The Secrets the pods read, by name.
pub fn referenced_secrets(spec: &CaptureDeploymentSpec) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Some(sasl) = &spec.kafka.sasl {
        names.insert(sasl.username.name.clone());
        names.insert(sasl.password.name.clone());
    }
    if let Some(redis) = &spec.redis {
        names.insert(redis.url_secret_ref.name.clone());
    }
    names
}

fn value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// A credential the pods read from a mounted Secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential<'a> {
    /// Capture's variable that names the file, like
    /// `CAPTURE_REDIS_URL_FILE`.
    pub variable: &'static str,
    /// The file's name in [`CREDENTIALS_DIR`].
    pub file: &'static str,
    /// The Secret key it holds.
    pub secret: &'a SecretKeyRef,
}

impl Credential<'_> {
    /// Where the pods find it.
    pub fn path(&self) -> String {
        format!("{CREDENTIALS_DIR}/{}", self.file)
    }
}

/// The credentials the spec gives the pods, each a Secret key mounted as a
/// file.
pub fn credentials(spec: &CaptureDeploymentSpec) -> Vec<Credential<'_>> {
    let mut credentials = Vec::new();
    if let Some(sasl) = &spec.kafka.sasl {
        credentials.push(Credential {
            variable: "CAPTURE_KAFKA_SASL_USERNAME_FILE",
            file: "kafka-sasl-username",
            secret: &sasl.username,
        });
        credentials.push(Credential {
            variable: "CAPTURE_KAFKA_SASL_PASSWORD_FILE",
            file: "kafka-sasl-password",
            secret: &sasl.password,
        });
    }
    if let Some(redis) = &spec.redis {
        credentials.push(Credential {
            variable: "CAPTURE_REDIS_URL_FILE",
            file: "redis-url",
            secret: &redis.url_secret_ref,
        });
    }
    credentials
}

/// Capture's settings as environment variables, in a stable order. With a
/// spool, its settings come last; a spool [`Spool::from_spec`] refuses adds
/// none (the reconciler then renders no pods at all).
pub fn env(spec: &CaptureDeploymentSpec) -> Vec<EnvVar> {
    let mut env = base_env(spec);
    if let Some(spool) = spec.spool.as_ref().and_then(|s| Spool::from_spec(s).ok()) {
        env.extend(spool_env(spool.max_bytes, spool.ack_deadline.as_deref()));
    }
    env
}

/// The spool's variables.
fn spool_env(max_bytes: u64, ack_deadline: Option<&str>) -> Vec<EnvVar> {
    let mut env = vec![
        value("CAPTURE_SPOOL_DIR", spool::SPOOL_DIR),
        value("CAPTURE_SPOOL_MAX_BYTES", max_bytes.to_string()),
    ];
    if let Some(deadline) = ack_deadline {
        env.push(value("CAPTURE_SPOOL_ACK_DEADLINE", deadline));
    }
    env
}

fn base_env(spec: &CaptureDeploymentSpec) -> Vec<EnvVar> {
    let mut env = vec![
        value("CAPTURE_ADDRESS", format!("0.0.0.0:{CONTAINER_PORT}")),
        value("CAPTURE_LOG_FORMAT", spec.logging.format.clone()),
        value("CAPTURE_LOG_LEVEL", spec.logging.level.clone()),
        value("CAPTURE_SHUTDOWN_DELAY", SHUTDOWN_DELAY),
        value(
            "CAPTURE_SHUTDOWN_TIMEOUT",
            if spec.spool.is_some() {
                SPOOL_SHUTDOWN_TIMEOUT
            } else {
                SHUTDOWN_TIMEOUT
            },
        ),
        value("CAPTURE_SINK", "kafka"),
        value("CAPTURE_KAFKA_BROKERS", spec.kafka.brokers.join(",")),
        value(
            "CAPTURE_RUNTIME_CONFIG",
            format!("{RUNTIME_CONFIG_DIR}/{RUNTIME_CONFIG_FILE}"),
        ),
    ];
    for (kind, name, _) in topic_names(spec) {
        env.push(value(&format!("CAPTURE_{kind}_TOPIC"), name));
    }
    if spec.tls.is_some() {
        env.push(value("CAPTURE_TLS_CERT", format!("{TLS_DIR}/tls.crt")));
        env.push(value("CAPTURE_TLS_KEY", format!("{TLS_DIR}/tls.key")));
    }
    if let Some(sasl) = &spec.kafka.sasl {
        env.push(value("CAPTURE_KAFKA_SECURITY_PROTOCOL", "sasl-ssl"));
        env.push(value(
            "CAPTURE_KAFKA_SASL_MECHANISM",
            sasl.mechanism.clone(),
        ));
    }
    // The credentials' files, never their values.
    for credential in credentials(spec) {
        env.push(value(credential.variable, credential.path()));
    }
    if let Some(redis) = &spec.redis {
        if redis.cluster {
            env.push(value("CAPTURE_REDIS_CLUSTER", "true"));
        }
        if !redis.key_prefix.is_empty() {
            env.push(value("CAPTURE_REDIS_KEY_PREFIX", redis.key_prefix.clone()));
        }
        let p = &spec.policies;
        if let Some(action) = &p.quota_action {
            env.push(value("CAPTURE_QUOTA_ACTION", action.clone()));
        }
        if let Some(mode) = &p.redis_failure_mode {
            env.push(value("CAPTURE_REDIS_FAILURE_MODE", mode.clone()));
        }
        if let Some(ttl) = &p.dedup_ttl {
            env.push(value("CAPTURE_DEDUP", "true"));
            env.push(value("CAPTURE_DEDUP_TTL", ttl.clone()));
        }
        if let Some(rate) = p.rate_limit {
            env.push(value("CAPTURE_RATE_LIMIT", rate.to_string()));
        }
        if let Some(burst) = p.rate_limit_burst {
            env.push(value("CAPTURE_RATE_LIMIT_BURST", burst.to_string()));
        }
    }
    if let Some(action) = &spec.policies.rate_limit_action {
        env.push(value("CAPTURE_RATE_LIMIT_ACTION", action.clone()));
    }
    // Capture sizes its request memory budget and producer queue from the
    // pod's memory limit; the kubelet fills in the limit's bytes.
    let limited = spec.resources.as_ref().is_none_or(|resources| {
        resources
            .limits
            .as_ref()
            .is_some_and(|limits| limits.contains_key("memory"))
    });
    // The allocator returns freed memory after 1 ms instead of 10, so a
    // burst of large requests stays within the budget (capture's
    // docs/reliability.md, "Memory").
    env.push(value("MIMALLOC_PURGE_DELAY", "1"));
    if limited {
        env.push(EnvVar {
            name: "CAPTURE_MEMORY_LIMIT".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    resource: "limits.memory".to_owned(),
                    ..ResourceFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
        });
    }
    env
}

/// Hash of what a pod is started with: its environment (names, values and
/// Secret references), image, the Secret keys of its credential files, and
/// the versions of the Secrets it reads (capture reads the credential files
/// once, so a rotated Secret needs new pods).
/// FNV-1a, so the value is the same in every operator build.
pub fn settings_hash(
    spec: &CaptureDeploymentSpec,
    env: &[EnvVar],
    secret_versions: &BTreeMap<String, String>,
) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |text: &str| {
        for byte in text.bytes().chain([0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(&spec.image);
    for var in env {
        feed(&var.name);
        match (&var.value, &var.value_from) {
            (Some(value), _) => feed(value),
            (None, Some(source)) => {
                if let Some(secret) = &source.secret_key_ref {
                    feed(&secret.name);
                    feed(&secret.key);
                }
            }
            (None, None) => {}
        }
    }
    for credential in credentials(spec) {
        feed(credential.file);
        feed(&credential.secret.name);
        feed(&credential.secret.key);
    }
    for (name, version) in secret_versions {
        feed(name);
        feed(version);
    }
    format!("{hash:016x}")
}

/// The ServiceAccount the pods run as; they never call the API.
pub fn service_account(cd: &CaptureDeployment) -> ServiceAccount {
    ServiceAccount {
        metadata: metadata(cd),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("250m".into())),
            ("memory".to_owned(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32, tls: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".into()),
            scheme: tls.then(|| "HTTPS".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The runtime config document of the spec: its `runtimeConfig` with the
/// version set, or the empty document.
pub fn runtime_config(spec: &CaptureDeploymentSpec) -> RuntimeConfig {
    let mut config = spec.runtime_config.clone().unwrap_or_default();
    config.version = capture::runtime_config::VERSION;
    if let (Some(signatures), Some(signing)) = (&mut config.signatures, &spec.signing) {
        signatures.secrets_file = format!("{SIGNING_DIR}/{}", signing.key);
    }
    config
}

/// The ConfigMap holding the runtime config document, with its hash in an
/// annotation.
pub fn config_map(cd: &CaptureDeployment, config: &RuntimeConfig) -> ConfigMap {
    let mut meta = metadata(cd);
    meta.annotations = Some(BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_owned(),
        config.hash(),
    )]));
    ConfigMap {
        metadata: meta,
        data: Some(BTreeMap::from([(
            RUNTIME_CONFIG_FILE.to_owned(),
            config.to_yaml(),
        )])),
        ..ConfigMap::default()
    }
}

/// The pods' volumes and where each is mounted: the runtime config
/// ConfigMap, and the TLS and signing Secrets when asked for. Kubelet
/// updates these files in place, and capture follows them, so their
/// changes need no roll. The credentials, when there are any: only their
/// keys, from however many Secrets, in one directory, mode 0440 (capture
/// reads them once; a change rolls the pods through the settings hash).
fn volumes(name: &str, spec: &CaptureDeploymentSpec) -> Vec<(Volume, &'static str)> {
    let secret = |volume: &str, secret: &str| Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mut volumes = vec![(
        Volume {
            name: "runtime-config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.to_owned(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        RUNTIME_CONFIG_DIR,
    )];
    if let Some(tls) = &spec.tls {
        volumes.push((secret("tls", &tls.secret_name), TLS_DIR));
    }
    if let Some(signing) = &spec.signing {
        volumes.push((secret("signing", &signing.secret_name), SIGNING_DIR));
    }
    let credentials = credentials(spec);
    if !credentials.is_empty() {
        // One projection per Secret, with just the keys the pods need.
        let mut by_secret: BTreeMap<&str, Vec<KeyToPath>> = BTreeMap::new();
        for credential in &credentials {
            by_secret
                .entry(credential.secret.name.as_str())
                .or_default()
                .push(KeyToPath {
                    key: credential.secret.key.clone(),
                    path: credential.file.to_owned(),
                    mode: None,
                });
        }
        let sources = by_secret
            .into_iter()
            .map(|(name, items)| VolumeProjection {
                secret: Some(SecretProjection {
                    name: name.to_owned(),
                    items: Some(items),
                    optional: Some(false),
                }),
                ..VolumeProjection::default()
            })
            .collect();
        volumes.push((
            Volume {
                name: "credentials".into(),
                projected: Some(ProjectedVolumeSource {
                    default_mode: Some(CREDENTIALS_MODE),
                    sources: Some(sources),
                }),
                ..Volume::default()
            },
            CREDENTIALS_DIR,
        ));
    }
    volumes
}

/// Which pod a template is for.
#[derive(Debug, Clone, Copy)]
enum Role<'a> {
    /// A capture server of the Deployment: no spool.
    Server,
    /// A capture server of the StatefulSet: its spool volume comes from the
    /// volume claim template.
    Spooling,
    /// A drain Job's: capture with `--drain-spool` on the claim given, no
    /// HTTP (so no ports, no probes), never restarted in place.
    Drain(&'a str),
}

/// The pod spec of capture in `role`, with `env`: the same image,
/// settings, Secrets and lock-down wherever capture runs.
fn pod_spec(name: &str, spec: &CaptureDeploymentSpec, env: Vec<EnvVar>, role: Role<'_>) -> PodSpec {
    let tls = spec.tls.is_some();
    let volumes = volumes(name, spec);
    let mut mounts: Vec<VolumeMount> = volumes
        .iter()
        .map(|(volume, dir)| VolumeMount {
            name: volume.name.clone(),
            mount_path: (*dir).into(),
            read_only: Some(true),
            ..VolumeMount::default()
        })
        .collect();
    let mut volumes: Vec<Volume> = volumes.into_iter().map(|(volume, _)| volume).collect();
    if !matches!(role, Role::Server) {
        mounts.push(VolumeMount {
            name: spool::VOLUME.into(),
            mount_path: spool::SPOOL_DIR.into(),
            ..VolumeMount::default()
        });
    }
    if let Role::Drain(claim) = role {
        volumes.push(Volume {
            name: spool::VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.to_owned(),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    let serves = !matches!(role, Role::Drain(_));
    let container = Container {
        name: "capture".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        env: Some(env),
        ports: serves.then(|| {
            vec![ContainerPort {
                name: Some("http".into()),
                container_port: CONTAINER_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]
        }),
        volume_mounts: Some(mounts),
        readiness_probe: serves.then(|| http_probe("/_readiness", 5, 2, tls)),
        liveness_probe: serves.then(|| http_probe("/_liveness", 10, 3, tls)),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    PodSpec {
        // The volumes' files belong to capture's group, so the
        // credentials can be 0440 (and the spool is capture's to write).
        security_context: Some(PodSecurityContext {
            fs_group: Some(RUN_AS),
            ..PodSecurityContext::default()
        }),
        service_account_name: Some(name.to_owned()),
        automount_service_account_token: Some(false),
        // Shutdown delay + timeout, plus a margin.
        termination_grace_period_seconds: Some(match role {
            Role::Server => GRACE_SECONDS,
            Role::Spooling | Role::Drain(_) => SPOOL_GRACE_SECONDS,
        }),
        restart_policy: matches!(role, Role::Drain(_)).then(|| "Never".to_owned()),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// The capture pods' template: labels, the settings hash, and the pod.
fn pod_template(
    cd: &CaptureDeployment,
    secret_versions: &BTreeMap<String, String>,
    role: Role<'_>,
) -> PodTemplateSpec {
    let name = cd.name_any();
    let env = env(&cd.spec);
    let hash = settings_hash(&cd.spec, &env, secret_versions);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&name)),
            annotations: Some(BTreeMap::from([(
                SETTINGS_HASH_ANNOTATION.to_owned(),
                hash,
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec(&name, &cd.spec, env, role)),
    }
}

/// Pods wanted: left out under autoscaling, so the HPA owns the field.
fn replicas(spec: &CaptureDeploymentSpec) -> Option<i32> {
    match spec.autoscaling {
        Some(_) => None,
        None => Some(spec.replicas.unwrap_or(DEFAULT_REPLICAS)),
    }
}

/// The capture Deployment, when there is no spool. `secret_versions` maps
/// each referenced Secret to its current `resourceVersion`, so a changed
/// Secret rolls the pods.
pub fn deployment(
    cd: &CaptureDeployment,
    secret_versions: &BTreeMap<String, String>,
) -> Deployment {
    Deployment {
        metadata: metadata(cd),
        spec: Some(DeploymentSpec {
            replicas: replicas(&cd.spec),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&cd.name_any())),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".into())),
                }),
            }),
            revision_history_limit: Some(5),
            template: pod_template(cd, secret_versions, Role::Server),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The capture StatefulSet, with `spool`: the same pods as the Deployment,
/// each with a volume of its own from the claim template `spool` (claim
/// `spool-NAME-N` for pod `NAME-N`), which follows the pod's identity
/// across restarts and updates. Pods start and stop in parallel, as a
/// Deployment's do; the claims are retained on scale-down and deletion,
/// so that no spooled event goes with them: the operator drains them
/// (see [`crate::spool`]). It needs no governing Service: capture's pods
/// are not addressed one by one.
pub fn stateful_set(
    cd: &CaptureDeployment,
    spool: &Spool,
    secret_versions: &BTreeMap<String, String>,
) -> StatefulSet {
    let name = cd.name_any();
    StatefulSet {
        metadata: metadata(cd),
        spec: Some(StatefulSetSpec {
            replicas: replicas(&cd.spec),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            pod_management_policy: Some("Parallel".into()),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            revision_history_limit: Some(5),
            template: pod_template(cd, secret_versions, Role::Spooling),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(spool::VOLUME.into()),
                    labels: Some(spool::claim_labels(&name)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec![spool.access_mode.as_str().into()]),
                    storage_class_name: spool.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            Quantity(spool.size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The Job that drains `claim`, the volume of a pod that is gone: capture,
/// as the pods run it (image, settings, Secrets), with `--drain-spool` on
/// the claim mounted where the pod had it. It replays the spool to Kafka
/// and exits 0 once it is empty. Its spool limit comes from the claim's
/// own size, since the spec may no longer have a spool. A pod that fails
/// is retried [`DRAIN_BACKOFF_LIMIT`] times; the Job fails past
/// [`DRAIN_DEADLINE_SECONDS`] (Kafka down all along), and the operator
/// then makes another. Owned by the CaptureDeployment, labelled so that
/// nothing selecting the capture pods selects it.
pub fn drain_job(cd: &CaptureDeployment, claim: &Claim) -> Job {
    let name = cd.name_any();
    let mut env: Vec<EnvVar> = base_env(&cd.spec);
    let limit = claim
        .size_bytes
        .filter(|bytes| *bytes >= spool::MIN_BYTES)
        .map(spool::max_bytes);
    match limit {
        Some(bytes) => env.extend(spool_env(bytes, None)),
        // Capture's own default limit.
        None => env.push(value("CAPTURE_SPOOL_DIR", spool::SPOOL_DIR)),
    }
    env.push(value("CAPTURE_DRAIN_SPOOL", "true"));
    let labels = spool::drain_labels(&name);
    let mut meta = metadata(cd);
    meta.name = Some(spool::job_name(&claim.name));
    meta.labels = Some(labels.clone());
    Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: Some(DRAIN_BACKOFF_LIMIT),
            active_deadline_seconds: Some(DRAIN_DEADLINE_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(&name, &cd.spec, env, Role::Drain(&claim.name))),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// The Service in front of the pods.
pub fn service(cd: &CaptureDeployment) -> Service {
    let name = cd.name_any();
    let mut meta = metadata(cd);
    if !cd.spec.service.annotations.is_empty() {
        meta.annotations = Some(cd.spec.service.annotations.clone());
    }
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(cd.spec.service.kind.clone()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: cd.spec.service.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The autoscaler, when the spec asks for one, of the Deployment or (with
/// a spool) the StatefulSet.
pub fn autoscaler(cd: &CaptureDeployment) -> Option<HorizontalPodAutoscaler> {
    let scaling = cd.spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: metadata(cd),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: if cd.spec.spool.is_some() {
                    "StatefulSet"
                } else {
                    "Deployment"
                }
                .into(),
                name: cd.name_any(),
            },
            min_replicas: Some(scaling.min_replicas),
            max_replicas: scaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(scaling.target_cpu_utilization_percent),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

/// At most one pod down at a time for voluntary disruptions (node drains).
pub fn disruption_budget(cd: &CaptureDeployment) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(cd),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&cd.name_any())),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The ports of `brokers` (`host:port`), each once, in order.
fn broker_ports(brokers: &[String]) -> Vec<i32> {
    let mut ports = Vec::new();
    for port in brokers
        .iter()
        .filter_map(|b| b.rsplit_once(':'))
        .filter_map(|(_, port)| port.parse::<i32>().ok())
    {
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

fn tcp_ports(ports: &[i32]) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(|port| NetworkPolicyPort {
            port: Some(IntOrString::Int(*port)),
            protocol: Some("TCP".into()),
            ..NetworkPolicyPort::default()
        })
        .collect()
}

/// The capture pods' NetworkPolicy, when the spec turns it on: ingress on
/// the capture port (which also serves health and `/metrics`) from
/// `ingressFrom` (anyone when empty); egress to DNS, to the Kafka brokers
/// (on the ports of `kafka.brokers` unless given) and to Redis (on the
/// ports given); nothing else, either way.
pub fn network_policy(cd: &CaptureDeployment) -> Option<NetworkPolicy> {
    let policy = cd.spec.network_policy.as_ref().filter(|p| p.enabled)?;
    let peers = |peers: &[NetworkPolicyPeer]| (!peers.is_empty()).then(|| peers.to_vec());
    let ingress = NetworkPolicyIngressRule {
        from: peers(&policy.ingress_from),
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::String("http".into())),
            protocol: Some("TCP".into()),
            ..NetworkPolicyPort::default()
        }]),
    };
    // Names resolve through the cluster DNS, wherever it runs.
    let dns = NetworkPolicyEgressRule {
        to: None,
        ports: Some(
            ["UDP", "TCP"]
                .into_iter()
                .map(|protocol| NetworkPolicyPort {
                    port: Some(IntOrString::Int(53)),
                    protocol: Some(protocol.into()),
                    ..NetworkPolicyPort::default()
                })
                .collect(),
        ),
    };
    let mut egress = vec![dns];
    let kafka = policy.kafka_egress.clone().unwrap_or_default();
    let kafka_ports = if kafka.ports.is_empty() {
        broker_ports(&cd.spec.kafka.brokers)
    } else {
        kafka.ports.clone()
    };
    egress.push(NetworkPolicyEgressRule {
        to: peers(&kafka.to),
        ports: Some(tcp_ports(&kafka_ports)),
    });
    if cd.spec.redis.is_some()
        && let Some(redis) = &policy.redis_egress
    {
        egress.push(NetworkPolicyEgressRule {
            to: peers(&redis.to),
            ports: Some(tcp_ports(&redis.ports)),
        });
    }
    Some(NetworkPolicy {
        metadata: metadata(cd),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&cd.name_any())),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![ingress]),
            egress: Some(egress),
        }),
    })
}
