//! `CaptureDeployment`: one capture service, with its pods, Service,
//! autoscaling, Kafka topics and the Redis its quotas live in.
//!
//! Validation lives in the schema, so `kubectl apply` refuses a bad spec
//! with a message a person understands, before the operator sees it. CEL
//! rules (`x-kubernetes-validations`) cover what OpenAPI bounds cannot:
//! mutually exclusive fields, immutable fields and duration formats.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::condition::conditions_schema;

/// Desired state of a capture service.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capture.dev",
    version = "v1alpha1",
    kind = "CaptureDeployment",
    namespaced,
    doc = "A capture service: pods, Service, autoscaling, Kafka topics and the Redis its quotas live in.",
    status = "CaptureDeploymentStatus",
    shortname = "cdep",
    category = "capture",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.readyReplicas","description":"Pods ready"}"#,
    printcolumn = r#"{"name":"Topics","type":"string","jsonPath":".status.topicsSummary","description":"Topics in sync, of all"}"#,
    printcolumn = r#"{"name":"Config","type":"string","jsonPath":".status.configHash","description":"Hash of the runtime config the pods were given","priority":1}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Drains","type":"integer","jsonPath":".status.spoolDrains","description":"Spool volumes of pods scaled away, not yet drained to Kafka","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[x_kube(
    validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))")
        .message("set either replicas or autoscaling, not both")
        .reason(Reason::FieldValueForbidden)
)]
#[x_kube(
    validation = Rule::new("has(self.redis) || !has(self.policies) || (!has(self.policies.dedupTtl) && !has(self.policies.rateLimit) && !has(self.policies.quotaAction) && !has(self.policies.redisFailureMode))")
        .message("policies.dedupTtl, rateLimit, quotaAction and redisFailureMode keep their state in Redis: set redis.urlSecretRef")
)]
#[x_kube(
    validation = Rule::new("!has(self.runtimeConfig) || !has(self.runtimeConfig.signatures) || (has(self.signing) && !has(self.runtimeConfig.signatures.secretsFile))")
        .message("runtimeConfig.signatures needs signing.secretName (a Secret of token: secret lines) and no secretsFile: the operator mounts the Secret and points secretsFile at it")
)]
#[x_kube(
    validation = Rule::new("!has(self.networkPolicy) || !self.networkPolicy.enabled || !has(self.redis) || (has(self.networkPolicy.redisEgress) && has(self.networkPolicy.redisEgress.ports) && size(self.networkPolicy.redisEgress.ports) > 0)")
        .message("networkPolicy.redisEgress.ports is required with redis: the Redis URL is in a Secret, so the operator cannot tell its port")
)]
#[serde(rename_all = "camelCase")]
pub struct CaptureDeploymentSpec {
    /// Container image of capture, e.g. `ghcr.io/example/capture:0.1.0`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy: `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Always', 'IfNotPresent', 'Never']")
        .message("imagePullPolicy must be Always, IfNotPresent or Never"))]
    pub image_pull_policy: Option<String>,
    /// Fixed number of pods. Leave out when `autoscaling` is set. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Scale on CPU with a HorizontalPodAutoscaler instead of `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// CPU and memory for each capture container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Where events go.
    pub kafka: KafkaSpec,
    /// The Redis that holds quotas, dedup markers and rate state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// Request policies applied by every pod.
    #[serde(default)]
    pub policies: PoliciesSpec,
    /// Log output of the pods.
    #[serde(default)]
    pub logging: LoggingSpec,
    /// Settings the pods reload without a restart, rendered into a
    /// ConfigMap: token allow and deny lists, event restrictions, the
    /// plugin pipeline, rate limit, dedup and topic routing (see
    /// docs/runtime-config.md). `version` may be left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<capture::runtime_config::RuntimeConfig>,
    /// HTTPS on the pods, from a `kubernetes.io/tls` Secret (`tls.crt`,
    /// `tls.key`) mounted into them. A renewed certificate (cert-manager,
    /// say) is served without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// The Secret holding request-signing secrets for
    /// `runtimeConfig.signatures`, mounted into the pods and followed: a
    /// rotated secret applies without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSpec>,
    /// A NetworkPolicy for the capture pods: ingress on the capture port
    /// only, egress to Kafka, Redis and DNS only. Needs a network plugin
    /// that enforces NetworkPolicies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    /// A durable spool on a volume of each pod: events Kafka cannot take
    /// are written there before the request is answered, and replayed
    /// later. The pods then run as a StatefulSet, each with a
    /// PersistentVolumeClaim of its own; the volume of a pod scaled away is
    /// drained to Kafka by a Job, then deleted. Removing it drains every
    /// volume and brings back the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolSpec>,
}

/// The per-pod durable spool (see docs/operator.md, "Durable spool").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SpoolSpec {
    /// Size of each pod's volume, a quantity of bytes from 64Mi to 1Pi,
    /// like `10Gi`: the claim's storage request. Capture's spool may fill
    /// 90% of it (`--spool-max-bytes`), so the filesystem never does.
    /// Fixed once set: a StatefulSet's volume claims cannot change.
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+([.][0-9]+)?(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$') && !quantity(self).isLessThan(quantity('64Mi')) && !quantity(self).isGreaterThan(quantity('1Pi'))")
        .message("spool.size must be a quantity of bytes from 64Mi to 1Pi, like 10Gi"))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("spool.size cannot change once set (a StatefulSet's volume claims are fixed): expand the PVCs through their storage class, or remove spool and add it again"))]
    #[schemars(length(min = 1, max = 64))]
    pub size: String,
    /// StorageClass of the volumes. Default: the cluster's default class.
    /// Fixed once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("spool.storageClassName cannot change once set (a StatefulSet's volume claims are fixed): remove spool and add it again"))]
    pub storage_class_name: Option<String>,
    /// Access mode of the volumes: `ReadWriteOnce` (default; any
    /// provisioner) or `ReadWriteOncePod`, which lets Kubernetes itself
    /// keep a second pod (a drain Job, say) off a volume in use; it needs
    /// a CSI driver. Fixed once set.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("spool.accessMode cannot change once set (a StatefulSet's volume claims are fixed): remove spool and add it again"))]
    pub access_mode: SpoolAccessMode,
    /// How long a request waits for Kafka's acknowledgements before the
    /// events not acknowledged go to the spool, like `3s` (capture's
    /// default when left out). Above 0s and under 20s, capture's Kafka
    /// message timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(ms|s)$') && duration(self) > duration('0s') && duration(self) < duration('20s')")
        .message("spool.ackDeadline must be a duration in ms or s, above 0s and under 20s (capture's Kafka message timeout), like 3s"))]
    pub ack_deadline: Option<String>,
}

/// How the spool volumes may be mounted.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum SpoolAccessMode {
    /// One node at a time (every provisioner).
    #[default]
    ReadWriteOnce,
    /// One pod at a time (CSI drivers, Kubernetes 1.29+).
    ReadWriteOncePod,
}

impl SpoolAccessMode {
    /// The PersistentVolumeClaim's access mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SpoolAccessMode::ReadWriteOnce => "ReadWriteOnce",
            SpoolAccessMode::ReadWriteOncePod => "ReadWriteOncePod",
        }
    }
}

/// What the capture pods may reach, and who may reach them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicy. Turned off, the operator deletes it.
    #[serde(default)]
    pub enabled: bool,
    /// Who may connect to the capture port (events, health, `/metrics`):
    /// pods, namespaces or IP blocks. Empty: anyone, as an ingestion
    /// endpoint usually is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_from: Vec<NetworkPolicyPeer>,
    /// Where the Kafka brokers are. Default: anywhere, on the ports of
    /// `kafka.brokers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_egress: Option<EgressSpec>,
    /// Where Redis is. Its port must be given (`ports`): the URL is in a
    /// Secret, which the operator does not read for this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_egress: Option<EgressSpec>,
}

/// Destinations the pods may open connections to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EgressSpec {
    /// Pods, namespaces or IP blocks. Empty: any destination, on `ports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<NetworkPolicyPeer>,
    /// TCP ports. Kafka's default to those of `kafka.brokers` (add the
    /// ports other brokers advertise if they differ); Redis's are required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 65535)))]
    pub ports: Vec<i32>,
}

/// HTTPS for the capture pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret of type `kubernetes.io/tls` in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Where the request-signing secrets are.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigningSpec {
    /// A Secret in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Its key holding a YAML map `token: secret`. Default `secrets.yaml`.
    #[serde(default = "default_signing_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_signing_key() -> String {
    "secrets.yaml".into()
}

/// HorizontalPodAutoscaler settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Fewest pods.
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Most pods.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Average CPU utilisation to aim for, in percent of requests.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percent: i32,
}

fn default_cpu_target() -> i32 {
    70
}

/// The Service in front of the pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP`, `NodePort` or `LoadBalancer`.
    #[serde(default = "default_service_type", rename = "type")]
    #[x_kube(validation = Rule::new("self in ['ClusterIP', 'NodePort', 'LoadBalancer']")
        .message("service.type must be ClusterIP, NodePort or LoadBalancer"))]
    pub kind: String,
    /// Port the Service listens on.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations for the Service (load balancer settings, for example).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            kind: default_service_type(),
            port: default_port(),
            annotations: BTreeMap::new(),
        }
    }
}

fn default_service_type() -> String {
    "ClusterIP".into()
}

fn default_port() -> i32 {
    80
}

/// A key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within it.
    #[schemars(length(min = 1))]
    pub key: String,
}

impl SecretKeyRef {
    /// The referenced key's value in `secret`, if present and UTF-8.
    pub fn value_in(&self, secret: &k8s_openapi::api::core::v1::Secret) -> Option<String> {
        let bytes = secret.data.as_ref()?.get(&self.key)?;
        String::from_utf8(bytes.0.clone()).ok()
    }
}

/// Kafka brokers, credentials and the topics capture produces to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Bootstrap brokers, `host:port`.
    #[schemars(length(min = 1))]
    #[x_kube(validation = Rule::new("self.all(b, b.matches('^[^:/ ]+:[0-9]{1,5}$'))")
        .message("each broker must be host:port, like kafka-0.kafka:9092"))]
    pub brokers: Vec<String>,
    /// SASL over TLS (`sasl_ssl`), with credentials from Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslSpec>,
    /// The six topics, by data type.
    #[serde(default)]
    pub topics: TopicsSpec,
}

/// SASL settings; the password never appears in the spec.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SaslSpec {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[x_kube(validation = Rule::new("self in ['PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512']")
        .message("kafka.sasl.mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"))]
    pub mechanism: String,
    /// The user name.
    pub username: SecretKeyRef,
    /// The password.
    pub password: SecretKeyRef,
}

/// One topic per data type; each may be renamed and sized.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopicsSpec {
    /// Analytics events (default name `clickhouse_events`).
    #[serde(default)]
    pub events: TopicSpec,
    /// Session recordings (`clickhouse_session_recording_events`).
    #[serde(default)]
    pub recordings: TopicSpec,
    /// Historical imports (`historical_events`).
    #[serde(default)]
    pub historical: TopicSpec,
    /// Client ingestion warnings (`client_warnings`).
    #[serde(default)]
    pub client_warnings: TopicSpec,
    /// Exceptions (`exceptions`).
    #[serde(default)]
    pub exceptions: TopicSpec,
    /// Overflow for hot keys (`events_plugin_ingestion_overflow`).
    #[serde(default)]
    pub overflow: TopicSpec,
    /// `$$heatmap` events (`heatmaps_ingestion`).
    #[serde(default)]
    pub heatmaps: TopicSpec,
    /// The dead-letter route of restrictions (`events_plugin_ingestion_dlq`).
    #[serde(default)]
    pub dlq: TopicSpec,
}

/// One Kafka topic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Topic name; default from the data type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9._-]{1,249}$')")
        .message("a topic name is 1-249 characters of letters, digits, '.', '_' and '-'"))]
    pub name: Option<String>,
    /// Partitions. May grow; the operator refuses to shrink a topic.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1))]
    pub partitions: i32,
    /// Replication factor, fixed at creation.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("replicationFactor cannot change once set; create a new topic instead"))]
    pub replication_factor: i32,
    /// Topic configuration (`retention.ms`, `cleanup.policy`, ...), kept in sync.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Delete the topic, and its data, when the CaptureDeployment is deleted.
    /// Off by default: data outlives the deployment.
    #[serde(default)]
    pub delete_on_removal: bool,
}

impl Default for TopicSpec {
    fn default() -> Self {
        TopicSpec {
            name: None,
            partitions: default_partitions(),
            replication_factor: default_replication(),
            config: BTreeMap::new(),
            delete_on_removal: false,
        }
    }
}

fn default_partitions() -> i32 {
    12
}

fn default_replication() -> i32 {
    3
}

/// Redis, reached through a URL kept in a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// The Secret key holding `redis://[:password@]host:port`; comma-separated
    /// seed nodes for a cluster.
    pub url_secret_ref: SecretKeyRef,
    /// The URL names Redis Cluster nodes.
    #[serde(default)]
    pub cluster: bool,
    /// Prefix of every key (no braces).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[x_kube(validation = Rule::new("!self.contains('{') && !self.contains('}')")
        .message("redis.keyPrefix must not contain braces; they mark the token's hash tag"))]
    pub key_prefix: String,
}

/// Policies every pod applies (see docs/policies.md).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PoliciesSpec {
    /// Over-quota events: `drop` (200 with `quota_limited`) or `reject` (429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['drop', 'reject']")
        .message("policies.quotaAction must be drop or reject"))]
    pub quota_action: Option<String>,
    /// When Redis fails: `open` or `closed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['open', 'closed']")
        .message("policies.redisFailureMode must be open or closed"))]
    pub redis_failure_mode: Option<String>,
    /// Drop resent events seen within this time, like `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[1-9][0-9]*(s|m|h)$')")
        .message("policies.dedupTtl is a whole number followed by s, m or h, like 5m"))]
    pub dedup_ttl: Option<String>,
    /// Cluster-wide events per second per token and event type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rate_limit: Option<u32>,
    /// Burst above that rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rate_limit_burst: Option<u32>,
    /// Over a rate limit: `overflow` or `reject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['overflow', 'reject']")
        .message("policies.rateLimitAction must be overflow or reject"))]
    pub rate_limit_action: Option<String>,
}

/// Log output.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LoggingSpec {
    /// A `tracing` filter, like `info` or `capture=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `json` or `text`.
    #[serde(default = "default_log_format")]
    #[x_kube(validation = Rule::new("self in ['json', 'text']")
        .message("logging.format must be json or text"))]
    pub format: String,
}

impl Default for LoggingSpec {
    fn default() -> Self {
        LoggingSpec {
            level: default_log_level(),
            format: default_log_format(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

fn default_log_format() -> String {
    "json".into()
}

/// What the operator observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaptureDeploymentStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `TopicsReady`,
    /// `RuntimeConfigValid`, `RuntimeConfigApplied`, and `SpoolDrained`
    /// while spool is on or volumes remain to drain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Pods wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Pods ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Each topic's state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicStatus>,
    /// `in sync/all`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics_summary: Option<String>,
    /// Hash of the runtime config given to the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Hash of the pods' static settings and referenced Secrets (the
    /// pod-template annotation); a change rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_hash: Option<String>,
    /// Ready pods that report `configHash` in force (from their readiness
    /// endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_pods: Option<i32>,
    /// Spool volumes left by pods scaled away (or by a removed spool) and
    /// not yet drained to Kafka and deleted: waiting for their pod to stop,
    /// or drained by a Job. Present while spool is on or volumes remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_drains: Option<i32>,
}

/// One topic as last seen.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Topic name.
    pub name: String,
    /// `Ready`, `Creating`, `NotSupported`, `Unmanaged` or `Error`.
    pub state: String,
    /// Partitions seen on the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Why, when not `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(spec: serde_json::Value) -> CaptureDeployment {
        serde_json::from_value(json!({
            "apiVersion": "capture.dev/v1alpha1",
            "kind": "CaptureDeployment",
            "metadata": {"name": "capture", "namespace": "default"},
            "spec": spec,
        }))
        .expect("a CaptureDeployment")
    }

    fn good() -> serde_json::Value {
        json!({
            "image": "ghcr.io/example/capture:0.1.0",
            "replicas": 2,
            "kafka": {
                "brokers": ["kafka-0.kafka:9092", "kafka-1.kafka:9092"],
                "sasl": {
                    "mechanism": "SCRAM-SHA-512",
                    "username": {"name": "kafka-user", "key": "username"},
                    "password": {"name": "kafka-user", "key": "password"},
                },
                "topics": {"events": {"partitions": 24, "config": {"retention.ms": "604800000"}}},
            },
            "redis": {"urlSecretRef": {"name": "redis", "key": "url"}, "keyPrefix": "capture:"},
            "policies": {"dedupTtl": "5m", "rateLimit": 1000, "rateLimitAction": "overflow"},
            "service": {"type": "LoadBalancer", "port": 443},
        })
    }

    fn broken(spec: serde_json::Value) -> String {
        match deployment(spec).validate_cel() {
            Ok(()) => String::new(),
            Err(errors) => errors.to_string(),
        }
    }

    #[test]
    fn a_realistic_deployment_passes_every_rule() {
        assert_eq!(broken(good()), "");
        let mut autoscaled = good();
        autoscaled
            .as_object_mut()
            .expect("object")
            .remove("replicas");
        autoscaled["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 10});
        assert_eq!(broken(autoscaled), "");
    }

    #[test]
    fn each_bad_field_is_refused_with_its_message() {
        let cases = [
            (
                "/kafka/brokers/0",
                json!("kafka-0"),
                "each broker must be host:port",
            ),
            (
                "/kafka/sasl/mechanism",
                json!("GSSAPI"),
                "kafka.sasl.mechanism must be",
            ),
            (
                "/policies/dedupTtl",
                json!("5 minutes"),
                "policies.dedupTtl is a whole number",
            ),
            (
                "/policies/rateLimitAction",
                json!("drop"),
                "policies.rateLimitAction must be",
            ),
            ("/redis/keyPrefix", json!("{x}"), "must not contain braces"),
            (
                "/service/type",
                json!("ExternalName"),
                "service.type must be",
            ),
        ];
        for (pointer, value, message) in cases {
            let mut spec = good();
            *spec.pointer_mut(pointer).expect("field exists") = value.clone();
            let errors = broken(spec);
            assert!(errors.contains(message), "{pointer} = {value}: {errors:?}");
        }
        let mut both = good();
        both["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 10});
        assert!(broken(both).contains("either replicas or autoscaling"));
        let mut inverted = good();
        inverted.as_object_mut().expect("object").remove("replicas");
        inverted["autoscaling"] = json!({"minReplicas": 5, "maxReplicas": 2});
        assert!(broken(inverted).contains("must not exceed"));
        let mut topic = good();
        topic["kafka"]["topics"]["events"]["name"] = json!("bad topic!");
        assert!(broken(topic).contains("a topic name is"));
        let mut no_redis = good();
        no_redis.as_object_mut().expect("object").remove("redis");
        assert!(broken(no_redis).contains("keep their state in Redis"));
    }

    #[test]
    fn runtime_config_rules_refuse_what_capture_would_refuse() {
        let with = |runtime: serde_json::Value| {
            let mut spec = good();
            spec["runtimeConfig"] = runtime;
            broken(spec)
        };
        assert_eq!(
            with(json!({
                "restrictions": [
                    {"action": "redirect", "events": ["export"], "topic": "exports"},
                    {"action": "drop", "tokens": ["phc_a"]},
                ],
                "plugins": [{"redact": {"keys": ["email"]}}, {"anonymizeIp": {}}],
            })),
            ""
        );
        for (runtime, message) in [
            (
                json!({"plugins": [{"redact": {"keys": ["a"]}, "anonymizeIp": {}}]}),
                "sets exactly one of redact",
            ),
            (json!({"plugins": [{}]}), "sets exactly one of redact"),
            (
                json!({"restrictions": [{"action": "redirect", "tokens": ["phc_a"]}]}),
                "topic exactly when its action is redirect",
            ),
            (
                json!({"restrictions": [{"action": "drop", "tokens": ["phc_a"], "topic": "t"}]}),
                "topic exactly when its action is redirect",
            ),
            (
                json!({"restrictions": [{"action": "drop"}]}),
                "needs at least one of tokens, events, distinctIds, sessionIds or eventUuids",
            ),
            (
                json!({"signatures": {"tokens": ["phc_a"]}}),
                "runtimeConfig.signatures needs signing.secretName",
            ),
        ] {
            let errors = with(runtime.clone());
            assert!(errors.contains(message), "{runtime}: {errors:?}");
        }
    }

    #[test]
    fn signatures_take_their_secrets_from_spec_signing_only() {
        let mut spec = good();
        spec["runtimeConfig"] = json!({"signatures": {"tokens": ["phc_a"]}});
        spec["signing"] = json!({"secretName": "capture-signing"});
        assert_eq!(broken(spec.clone()), "");
        spec["runtimeConfig"]["signatures"]["secretsFile"] = json!("/elsewhere/secrets.yaml");
        assert!(broken(spec).contains("no secretsFile"));
    }

    #[test]
    fn a_network_policy_with_redis_needs_the_redis_port() {
        let mut spec = good();
        spec["networkPolicy"] = json!({"enabled": true});
        assert!(broken(spec.clone()).contains("networkPolicy.redisEgress.ports is required"));
        spec["networkPolicy"]["redisEgress"] = json!({"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]});
        assert!(broken(spec.clone()).contains("networkPolicy.redisEgress.ports is required"));
        spec["networkPolicy"]["redisEgress"]["ports"] = json!([6379]);
        assert_eq!(broken(spec.clone()), "");
        // Off, or without redis: nothing to ask.
        spec["networkPolicy"] = json!({"enabled": false});
        assert_eq!(broken(spec.clone()), "");
        let mut no_redis = good();
        no_redis.as_object_mut().expect("object").remove("redis");
        no_redis.as_object_mut().expect("object").remove("policies");
        no_redis["networkPolicy"] = json!({"enabled": true});
        assert_eq!(broken(no_redis), "");
    }

    #[test]
    fn a_spool_is_sized_in_bytes_with_room_for_its_segments() {
        let with = |spool: serde_json::Value| {
            let mut spec = good();
            spec["spool"] = spool;
            broken(spec)
        };
        for size in ["10Gi", "64Mi", "1.5Gi", "500M", "1Pi", "68719476736"] {
            assert_eq!(with(json!({"size": size})), "", "{size}");
        }
        assert_eq!(
            with(
                json!({"size": "10Gi", "storageClassName": "fast-ssd", "accessMode": "ReadWriteOncePod", "ackDeadline": "1500ms"})
            ),
            ""
        );
        for size in ["10 Gi", "10GB", "63Mi", "2Pi", "-1Gi", "1e9", "", "100m"] {
            let errors = with(json!({ "size": size }));
            assert!(
                errors.contains("spool.size must be a quantity of bytes from 64Mi to 1Pi"),
                "{size:?}: {errors:?}"
            );
        }
        for deadline in ["0s", "20s", "1m", "3", "0ms", "2.5s"] {
            let errors = with(json!({"size": "10Gi", "ackDeadline": deadline}));
            assert!(
                errors.contains("spool.ackDeadline must be a duration in ms or s"),
                "{deadline:?}: {errors:?}"
            );
        }
        assert_eq!(with(json!({"size": "10Gi", "ackDeadline": "19999ms"})), "");
    }

    #[test]
    fn the_spool_volumes_are_fixed_once_set_but_the_spool_may_come_and_go() {
        let spooled = |spool: serde_json::Value| {
            let mut spec = good();
            spec["spool"] = spool;
            deployment(spec)
        };
        let old = spooled(json!({"size": "10Gi", "storageClassName": "fast"}));
        for (changed, message) in [
            (
                json!({"size": "20Gi", "storageClassName": "fast"}),
                "spool.size cannot change",
            ),
            (
                json!({"size": "10Gi", "storageClassName": "slow"}),
                "spool.storageClassName cannot change",
            ),
            (
                json!({"size": "10Gi", "storageClassName": "fast", "accessMode": "ReadWriteOncePod"}),
                "spool.accessMode cannot change",
            ),
        ] {
            let errors = spooled(changed.clone())
                .validate_cel_update(&old)
                .expect_err("a volume claim changed")
                .to_string();
            assert!(errors.contains(message), "{changed}: {errors}");
        }
        // The deadline is a setting of the pods, not of the volumes.
        assert!(
            spooled(json!({"size": "10Gi", "storageClassName": "fast", "ackDeadline": "5s"}))
                .validate_cel_update(&old)
                .is_ok()
        );
        // Removed (its volumes drain), then added again.
        let plain = deployment(good());
        assert!(plain.validate_cel_update(&old).is_ok());
        assert!(
            spooled(json!({"size": "1Gi"}))
                .validate_cel_update(&plain)
                .is_ok()
        );
    }

    #[test]
    fn replication_factor_is_fixed_once_set() {
        let old = deployment(good());
        let mut changed = good();
        changed["kafka"]["topics"]["events"]["replicationFactor"] = json!(5);
        let errors = deployment(changed)
            .validate_cel_update(&old)
            .expect_err("replication changed")
            .to_string();
        assert!(
            errors.contains("replicationFactor cannot change"),
            "{errors}"
        );
        let mut grown = good();
        grown["kafka"]["topics"]["events"]["partitions"] = json!(48);
        assert!(deployment(grown).validate_cel_update(&old).is_ok());
    }
}
