//! The runtime config document: what the operator renders into a
//! CaptureDeployment's ConfigMap and capture reads from the mounted file.
//! One type for both sides, so what the operator writes is what capture
//! parses; its JSON schema is the `runtimeConfig` field of the CRD.
//!
//! ```yaml
//! version: 1
//! tokens: {allow: [], deny: [phc_retired]}
//! restrictions:
//!   - {action: drop, tokens: [phc_abc], events: [$autocapture]}
//! plugins:
//!   - redact: {keys: [email, "$set.*.phone"]}
//!   - sample: {rate: 0.5, events: {$pageview: 0.1}}
//! rateLimit: {perSecond: 1000, burst: 10000, action: overflow}
//! dedup: {ttl: 5m}
//! routing: {events: events_main}
//! ```
//!
//! Every section is optional; unknown fields are refused, and [`parse`]
//! names the field and what is allowed when a value is wrong.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The only document version this capture reads.
pub const VERSION: u32 = 1;

fn version_one() -> u32 {
    VERSION
}

/// The runtime config document, version 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Document version; only `1` exists. Omitted in a CaptureDeployment
    /// (the operator writes it).
    #[serde(default = "version_one")]
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Which project tokens may send at all.
    #[serde(default, skip_serializing_if = "TokenPolicy::is_empty")]
    pub tokens: TokenPolicy,
    /// Tokens whose requests must be signed (HMAC-SHA256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures: Option<Signatures>,
    /// Event restrictions by token, event name and distinct id, applied
    /// before the plugins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restrictions: Vec<Restriction>,
    /// The plugin pipeline, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<Plugin>,
    /// Cluster-wide rate limit per token and event type; overrides the
    /// static `--rate-limit` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Deduplication of retried events; overrides `--dedup-ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<Dedup>,
    /// Topic overrides by data type.
    #[serde(default, skip_serializing_if = "Routing::is_empty")]
    pub routing: Routing,
}

/// Token allow and deny lists. A denied token is refused with 401; with a
/// non-empty allow list, so is every token not on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenPolicy {
    /// Only these tokens may send (empty: any token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// These tokens may not send.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl TokenPolicy {
    fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// Request signatures: requests of the listed tokens must carry
/// `X-Capture-Signature: t=<unix seconds>,v2=<hex HMAC-SHA256>` over
/// `<t>\n<METHOD>\n<path>\n<query>\n<body as sent>`, with the token's
/// secret, within `window` of now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Signatures {
    /// Tokens whose requests must be signed.
    #[schemars(length(min = 1))]
    pub tokens: Vec<String>,
    /// File holding each token's secret, a YAML map `token: secret`
    /// (mount it from a Kubernetes Secret; secrets never go in the CRD). In
    /// a CaptureDeployment leave it out: `spec.signing` mounts the Secret
    /// and the operator points this at it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(min = 1))]
    pub secrets_file: String,
    /// Largest difference between the signature's time and now (`5m`).
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub window: String,
}

fn default_window() -> String {
    "5m".into()
}

/// What a restriction does to the events it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RestrictionAction {
    /// Drop the events (the response stays 200).
    Drop,
    /// Send them to the overflow topic, without a key.
    ForceOverflow,
    /// Mark them `$process_person_profile: false`.
    SkipPersonProcessing,
    /// Send them to `topic` instead.
    Redirect,
    /// Send them to the dead-letter topic, with headers saying why.
    RedirectToDlq,
}

/// An event restriction, as PostHog has them: events of the listed tokens,
/// event names and distinct ids (each list empty = any) get `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(self.action == 'redirect') == has(self.topic)",
        "message": "a restriction has a topic exactly when its action is redirect",
    },
    {
        "rule": "has(self.tokens) || has(self.events) || has(self.distinctIds) || has(self.sessionIds) || has(self.eventUuids)",
        "message": "a restriction needs at least one of tokens, events, distinctIds, sessionIds or eventUuids",
    },
]))]
pub struct Restriction {
    /// What to do with matching events.
    pub action: RestrictionAction,
    /// Tokens it applies to (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    /// Event names it applies to (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Distinct ids it applies to (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distinct_ids: Vec<String>,
    /// Session ids (`$session_id`) it applies to (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub session_ids: Vec<String>,
    /// Event uuids it applies to (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_uuids: Vec<String>,
    /// Target topic of `redirect` (and only of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// One plugin of the pipeline: exactly one of the fields is set, naming
/// the plugin and holding its settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.redact), has(self.drop), has(self.sample), has(self.anonymizeIp), has(self.limitProperties)].exists_one(x, x)",
    "message": "a plugin entry sets exactly one of redact, drop, sample, anonymizeIp, limitProperties",
}]))]
pub struct Plugin {
    /// Mask property values by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<Redact>,
    /// Drop matching events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<DropMatcher>,
    /// Keep a deterministic share of events by distinct id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<Sample>,
    /// Zero the host part of the client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymize_ip: Option<AnonymizeIp>,
    /// Bound the number and size of properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_properties: Option<LimitProperties>,
}

impl Plugin {
    /// The plugin's name, when exactly one is set.
    pub fn name(&self) -> Option<&'static str> {
        let set = [
            self.redact.is_some().then_some("redact"),
            self.drop.is_some().then_some("drop"),
            self.sample.is_some().then_some("sample"),
            self.anonymize_ip.is_some().then_some("anonymizeIp"),
            self.limit_properties.is_some().then_some("limitProperties"),
        ];
        let mut names = set.into_iter().flatten();
        match (names.next(), names.next()) {
            (Some(name), None) => Some(name),
            _ => None,
        }
    }
}

/// Settings of `redact`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Redact {
    /// Property keys to mask: a key (`email`, matched at any depth), a dotted
    /// path from the properties (`$set.phone`), `*` for any one key
    /// (`$set.*.phone`).
    pub keys: Vec<String>,
    /// What masked values become.
    #[serde(default = "default_replacement")]
    pub replacement: String,
}

fn default_replacement() -> String {
    "[redacted]".into()
}

/// Settings of `drop`: events matching every given condition are dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DropMatcher {
    /// Tokens (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    /// Event names (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Distinct ids (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distinct_ids: Vec<String>,
    /// A property that must have this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<PropertyMatch>,
}

/// A property key and the value it must have (any JSON value; strings
/// compare as strings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PropertyMatch {
    /// Property key (top level of `properties`).
    pub key: String,
    /// Value to match, as a string (`"true"`, `"42"`, `"beta"`).
    pub equals: String,
}

/// Settings of `sample`: the share of distinct ids whose events are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sample {
    /// Share kept for events not listed in `events`, 0 to 1.
    #[serde(default = "keep_all")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub rate: f64,
    /// Share kept by event name, 0 to 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub events: BTreeMap<String, f64>,
}

fn keep_all() -> f64 {
    1.0
}

/// Settings of `anonymizeIp`: how much of the client IP is kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnonymizeIp {
    /// Leading bits of an IPv4 address kept, 0 to 32 (default 24: the last
    /// octet is zeroed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 32))]
    pub ipv4_prefix: Option<u8>,
    /// Leading bits of an IPv6 address kept, 0 to 128 (default 48).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 128))]
    pub ipv6_prefix: Option<u8>,
}

/// Settings of `limitProperties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitProperties {
    /// Most properties kept per event (the rest dropped, by key order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u32>,
    /// Longest string value kept, in characters (longer ones truncated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_string_length: Option<u32>,
}

/// What happens to events over the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitAction {
    /// Reroute to the overflow topic.
    Overflow,
    /// Refuse the request with 429.
    Reject,
}

/// Cluster-wide rate limit per token and event type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained events per second.
    #[schemars(range(min = 1))]
    pub per_second: u32,
    /// Events allowed at once above the sustained rate (default: one
    /// second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What happens over the limit (default: overflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<RateLimitAction>,
}

/// Deduplication of retried events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Dedup {
    /// How long an event id is remembered (`30s`, `5m`); `0s` turns dedup
    /// off.
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub ttl: String,
}

/// Topic overrides by data type (unset: the static topic).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Routing {
    /// Analytics events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<String>,
    /// Historical (`historical_migration`) events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub historical: Option<String>,
    /// `$exception` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exceptions: Option<String>,
    /// Client ingestion warnings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_warnings: Option<String>,
    /// Session recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recordings: Option<String>,
    /// Overflowed events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<String>,
    /// `$$heatmap` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heatmaps: Option<String>,
    /// The dead-letter route of restrictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq: Option<String>,
}

impl Routing {
    fn is_empty(&self) -> bool {
        self == &Routing::default()
    }

    fn entries(&self) -> [(&'static str, &Option<String>); 8] {
        [
            ("events", &self.events),
            ("historical", &self.historical),
            ("exceptions", &self.exceptions),
            ("clientWarnings", &self.client_warnings),
            ("recordings", &self.recordings),
            ("overflow", &self.overflow),
            ("heatmaps", &self.heatmaps),
            ("dlq", &self.dlq),
        ]
    }
}

/// A document that cannot be used: where, and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeConfigError {
    /// Not YAML, or not this shape (serde's message names the field).
    #[error("runtime config: {0}")]
    Syntax(String),
    /// A value out of its allowed range.
    #[error("runtime config: {field}: {reason}")]
    Invalid {
        /// Path of the field (`plugins[2].sample.rate`).
        field: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RuntimeConfigError {
    RuntimeConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The document's JSON Schema (draft 2020-12), pretty-printed with a final
/// newline: `docs/runtime-config.schema.json`, for editors and CI checks
/// of the files people write.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RuntimeConfig);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Parses and validates a document (YAML or JSON).
pub fn parse(text: &str) -> Result<RuntimeConfig, RuntimeConfigError> {
    if text.trim().is_empty() {
        return Err(RuntimeConfigError::Syntax(
            "the document is empty; it needs at least `version: 1`".into(),
        ));
    }
    let syntax = |err: &dyn std::fmt::Display| RuntimeConfigError::Syntax(err.to_string());
    // JSON is read as JSON: serde_yaml follows YAML 1.1, which takes U+0085,
    // U+2028 and U+2029 in a string for line breaks and folds them into a
    // space, though JSON leaves them unescaped (found by the
    // `runtime_config` fuzz target).
    let config: RuntimeConfig = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        serde_json::from_str(text).map_err(|err| syntax(&err))?
    } else {
        serde_yaml::from_str(text).map_err(|err| syntax(&err))?
    };
    config.validate()?;
    Ok(config)
}

/// A Kafka topic name: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn topic_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 249 {
        return Some("a topic name has 1 to 249 characters");
    }
    if name == "." || name == ".." {
        return Some("`.` and `..` are not topic names");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Some("a topic name uses only letters, digits, `.`, `_` and `-`");
    }
    None
}

fn check_tokens(field: &str, tokens: &[String]) -> Result<(), RuntimeConfigError> {
    for (i, token) in tokens.iter().enumerate() {
        if let Err(err) = crate::token::validate(token) {
            return Err(invalid(
                format!("{field}[{i}]"),
                format!(
                    "{} is not a project token: {err}",
                    crate::token::Masked(token)
                ),
            ));
        }
    }
    Ok(())
}

fn check_share(field: &str, share: f64) -> Result<(), RuntimeConfigError> {
    if (0.0..=1.0).contains(&share) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be between 0 and 1 (a share of distinct ids), got {share}"),
        ))
    }
}

impl RuntimeConfig {
    /// Checks what the types cannot say; the error names the field.
    pub fn validate(&self) -> Result<(), RuntimeConfigError> {
        if self.version != VERSION {
            return Err(invalid(
                "version",
                format!(
                    "{} is not supported; this capture reads version {VERSION}",
                    self.version
                ),
            ));
        }
        check_tokens("tokens.allow", &self.tokens.allow)?;
        check_tokens("tokens.deny", &self.tokens.deny)?;
        if let Some(signatures) = &self.signatures {
            if signatures.tokens.is_empty() {
                return Err(invalid(
                    "signatures.tokens",
                    "list the tokens whose requests must be signed",
                ));
            }
            check_tokens("signatures.tokens", &signatures.tokens)?;
            if signatures.secrets_file.is_empty() {
                return Err(invalid(
                    "signatures.secretsFile",
                    "required: the file of the mounted Secret of token: secret lines \
                     (a CaptureDeployment sets it from spec.signing.secretName)",
                ));
            }
            if !signatures.secrets_file.starts_with('/') {
                return Err(invalid(
                    "signatures.secretsFile",
                    "an absolute path, like /etc/capture/signing/secrets.yaml",
                ));
            }
            let window = humantime::parse_duration(&signatures.window).map_err(|err| {
                invalid(
                    "signatures.window",
                    format!("{:?} is not a duration like 5m: {err}", signatures.window),
                )
            })?;
            if window < Duration::from_secs(1) || window > Duration::from_secs(3600) {
                return Err(invalid(
                    "signatures.window",
                    "between 1s and 1h (replays inside it are possible)",
                ));
            }
        }
        for (i, restriction) in self.restrictions.iter().enumerate() {
            let field = format!("restrictions[{i}]");
            check_tokens(&format!("{field}.tokens"), &restriction.tokens)?;
            if restriction.tokens.is_empty()
                && restriction.events.is_empty()
                && restriction.distinct_ids.is_empty()
                && restriction.session_ids.is_empty()
                && restriction.event_uuids.is_empty()
            {
                return Err(invalid(
                    field,
                    "give at least one of tokens, events, distinctIds, sessionIds or eventUuids: a restriction matching every event is almost certainly a mistake",
                ));
            }
            for (j, id) in restriction.event_uuids.iter().enumerate() {
                if uuid::Uuid::parse_str(id).is_err() {
                    return Err(invalid(
                        format!("{field}.eventUuids[{j}]"),
                        "a UUID (8-4-4-4-12 hex digits)",
                    ));
                }
            }
            match (restriction.action, &restriction.topic) {
                (RestrictionAction::Redirect, None) => {
                    return Err(invalid(
                        format!("{field}.topic"),
                        "required with action redirect",
                    ));
                }
                (RestrictionAction::Redirect, Some(topic)) => {
                    if let Some(problem) = topic_problem(topic) {
                        return Err(invalid(format!("{field}.topic"), problem));
                    }
                }
                (_, Some(_)) => {
                    return Err(invalid(
                        format!("{field}.topic"),
                        "only action redirect takes a topic",
                    ));
                }
                (_, None) => {}
            }
        }
        for (i, plugin) in self.plugins.iter().enumerate() {
            self.validate_plugin(&format!("plugins[{i}]"), plugin)?;
        }
        if let Some(rate) = &self.rate_limit {
            if rate.per_second == 0 {
                return Err(invalid(
                    "rateLimit.perSecond",
                    "must be at least 1 (leave rateLimit out for no limit)",
                ));
            }
            if rate.burst == Some(0) {
                return Err(invalid("rateLimit.burst", "must be at least 1"));
            }
        }
        if let Some(dedup) = &self.dedup {
            self::dedup_ttl(&dedup.ttl).map_err(|reason| invalid("dedup.ttl", reason))?;
        }
        for (name, topic) in self.routing.entries() {
            if let Some(problem) = topic.as_deref().and_then(topic_problem) {
                return Err(invalid(format!("routing.{name}"), problem));
            }
        }
        Ok(())
    }

    fn validate_plugin(&self, field: &str, plugin: &Plugin) -> Result<(), RuntimeConfigError> {
        if plugin.name().is_none() {
            return Err(invalid(
                field,
                "set exactly one of redact, drop, sample, anonymizeIp, limitProperties",
            ));
        }
        if let Some(redact) = &plugin.redact {
            if redact.keys.is_empty() {
                return Err(invalid(
                    format!("{field}.redact.keys"),
                    "list at least one key",
                ));
            }
            for (i, key) in redact.keys.iter().enumerate() {
                if key.split('.').any(str::is_empty) {
                    return Err(invalid(
                        format!("{field}.redact.keys[{i}]"),
                        format!(
                            "{key:?} has an empty segment; write keys like `email` or `$set.*.phone`"
                        ),
                    ));
                }
            }
        }
        if let Some(matcher) = &plugin.drop {
            check_tokens(&format!("{field}.drop.tokens"), &matcher.tokens)?;
            if matcher.tokens.is_empty()
                && matcher.events.is_empty()
                && matcher.distinct_ids.is_empty()
                && matcher.property.is_none()
            {
                return Err(invalid(
                    format!("{field}.drop"),
                    "give at least one of tokens, events, distinctIds or property: an empty matcher would drop every event",
                ));
            }
        }
        if let Some(sample) = &plugin.sample {
            check_share(&format!("{field}.sample.rate"), sample.rate)?;
            for (event, share) in &sample.events {
                check_share(&format!("{field}.sample.events[{event:?}]"), *share)?;
            }
        }
        if let Some(anonymize) = &plugin.anonymize_ip {
            if anonymize.ipv4_prefix.is_some_and(|bits| bits > 32) {
                return Err(invalid(
                    format!("{field}.anonymizeIp.ipv4Prefix"),
                    "an IPv4 prefix is 0 to 32 bits",
                ));
            }
            if anonymize.ipv6_prefix.is_some_and(|bits| bits > 128) {
                return Err(invalid(
                    format!("{field}.anonymizeIp.ipv6Prefix"),
                    "an IPv6 prefix is 0 to 128 bits",
                ));
            }
        }
        if let Some(limit) = &plugin.limit_properties {
            if limit.max_count.is_none() && limit.max_string_length.is_none() {
                return Err(invalid(
                    format!("{field}.limitProperties"),
                    "give maxCount, maxStringLength or both",
                ));
            }
            if limit.max_count == Some(0) || limit.max_string_length == Some(0) {
                return Err(invalid(
                    format!("{field}.limitProperties"),
                    "limits are at least 1",
                ));
            }
        }
        Ok(())
    }

    /// The document as the operator writes it (YAML, fields in a fixed
    /// order, empty sections left out).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|err| format!("# unserializable: {err}\n"))
    }

    /// A short, stable hash of the document's content (not of its
    /// formatting): 16 hex digits of the SHA-256 of its canonical JSON.
    pub fn hash(&self) -> String {
        use sha2::Digest as _;
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        let digest = sha2::Sha256::digest(&canonical);
        let mut hex = String::with_capacity(16);
        for byte in &digest[..8] {
            let _ = write!(hex, "{byte:02x}");
        }
        hex
    }
}

/// The dedup TTL of a `dedup.ttl` value (`0s`: off).
pub fn dedup_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text)
        .map_err(|err| format!("{text:?} is not a duration like 30s or 5m: {err}"))?;
    if !ttl.is_zero() && ttl < Duration::from_secs(1) {
        return Err(format!(
            "{text:?} is under a second; use at least 1s, or 0s for off"
        ));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dotted paths of every leaf field in the schema (`[]` for list items).
    fn field_paths(
        schema: &serde_json::Value,
        defs: &serde_json::Value,
        prefix: &str,
        out: &mut Vec<String>,
    ) {
        let resolve = |node: &serde_json::Value| -> serde_json::Value {
            let mut node = node.clone();
            if let Some(options) = node.get("anyOf").and_then(|o| o.as_array())
                && let Some(some) = options
                    .iter()
                    .find(|o| o.get("type") != Some(&serde_json::json!("null")))
            {
                node = some.clone();
            }
            if let Some(name) = node.get("$ref").and_then(|r| r.as_str()) {
                node = defs[name.trim_start_matches("#/$defs/")].clone();
            }
            node
        };
        let node = resolve(schema);
        if let Some(items) = node.get("items") {
            // A list of objects has fields of its own; a list of scalars is one.
            if resolve(items).get("properties").is_some() {
                return field_paths(items, defs, &format!("{prefix}[]"), out);
            }
            out.push(prefix.to_owned());
            return;
        }
        match node.get("properties").and_then(|p| p.as_object()) {
            Some(properties) => {
                for (name, child) in properties {
                    let path = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    field_paths(child, defs, &path, out);
                }
            }
            None => out.push(prefix.to_owned()),
        }
    }

    #[test]
    fn configuration_md_documents_every_field_and_its_example_is_valid() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/configuration.md"
        ))
        .expect("docs/configuration.md");
        let schema: serde_json::Value = serde_json::from_str(&json_schema()).expect("schema");
        let mut paths = Vec::new();
        field_paths(&schema, &schema["$defs"], "", &mut paths);
        assert!(paths.len() > 30, "{paths:?}");
        let missing: Vec<&String> = paths
            .iter()
            .filter(|p| !doc.contains(&format!("| `{p}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "fields missing from the table in docs/configuration.md: {missing:?}"
        );

        let example = doc
            .split("### Example and rules")
            .nth(1)
            .and_then(|rest| rest.split("```yaml\n").nth(1))
            .and_then(|block| block.split("```").next())
            .expect("a yaml block after ### Example and rules");
        let config = parse(example).unwrap_or_else(|err| panic!("the example is refused: {err}"));
        assert!(
            config.signatures.is_some() && config.plugins.len() == 5,
            "{config:?}"
        );
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("refused").to_string()
    }

    #[test]
    fn the_smallest_document_is_the_version() {
        let config = parse("version: 1\n").expect("valid");
        assert_eq!(
            config,
            RuntimeConfig {
                version: 1,
                ..Default::default()
            }
        );
        assert_eq!(config.to_yaml(), "version: 1\n");
    }

    #[test]
    fn a_full_document_round_trips() {
        let text = r#"
version: 1
tokens: {allow: [phc_a, phc_b], deny: [phc_c]}
restrictions:
  - {action: drop, tokens: [phc_a], events: [$autocapture]}
  - {action: redirect, events: [big_export], topic: exports}
  - {action: skipPersonProcessing, distinctIds: [bot]}
plugins:
  - redact: {keys: [email, "$set.*.phone"]}
  - drop: {events: [$feature_flag_called], property: {key: internal, equals: "true"}}
  - sample: {rate: 0.5, events: {$pageview: 0.1}}
  - anonymizeIp: {}
  - limitProperties: {maxCount: 500, maxStringLength: 10000}
rateLimit: {perSecond: 1000, burst: 10000, action: reject}
dedup: {ttl: 5m}
routing: {events: events_main, overflow: events_overflow}
"#;
        let config = parse(text).expect("valid");
        assert_eq!(
            config.plugins[0]
                .redact
                .as_ref()
                .expect("redact")
                .replacement,
            "[redacted]"
        );
        assert_eq!(config.plugins[3].name(), Some("anonymizeIp"));
        let again = parse(&config.to_yaml()).expect("its own output parses");
        assert_eq!(again, config);
        assert_eq!(again.hash(), config.hash());
    }

    #[test]
    fn the_hash_follows_content_not_formatting() {
        let a = parse("version: 1\ndedup: {ttl: 5m}\n").expect("valid");
        let b = parse("{\"dedup\": {\"ttl\": \"5m\"}, \"version\": 1}").expect("valid");
        let c = parse("version: 1\ndedup: {ttl: 6m}\n").expect("valid");
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.hash().len(), 16);
    }

    #[test]
    fn a_json_document_keeps_the_line_separators_in_its_strings() {
        // The input the `runtime_config` fuzz target found: its `\N` (YAML
        // for U+0085) survived the YAML round trip, but the JSON of the
        // same document came back with a space in its place.
        let found = "version: 1                      # thion; option1s-1h\nrestrictions:                   # PostHog-st   topic: exports              # only with redirect, and required there\nplugins:                        # in order; each entry sets exactly one plugin\n  - redact:\n      keys: [email, \"$set.*.pho        # each list empty = any; at least one list given\n    events: [$autocapture]\n    distinctIds: []\n \n\\N1ction: redirect\n    events: [bulk_export]\n    topic: exportne\"]   # a key at any depn";
        let config = parse(found).expect("valid");
        let json = serde_json::to_string(&config).expect("serializes");
        assert_eq!(parse(&json).expect("its JSON is valid"), config);
        for separator in ['\u{85}', '\u{2028}', '\u{2029}'] {
            let json = format!(r#"{{"plugins":[{{"redact":{{"keys":["a{separator}b"]}}}}]}}"#);
            let config = parse(&json).expect("valid");
            let redact = config.plugins[0].redact.as_ref().expect("redact");
            assert_eq!(redact.keys, [format!("a{separator}b")]);
        }
        // YAML's flow style, which is not JSON, is still YAML.
        parse("{version: 1, tokens: {deny: [phc_retired]}}").expect("YAML flow mapping");
    }

    #[test]
    fn bad_documents_name_the_field_and_what_is_allowed() {
        for (text, expected) in [
            ("", "needs at least `version: 1`"),
            ("version: 2", "version: 2 is not supported"),
            ("version: 1\nplugin: []", "unknown field `plugin`"),
            (
                "version: 1\nplugins: [{redact: {keys: [a], mask: x}}]",
                "unknown field `mask`",
            ),
            (
                "version: 1\nplugins: [{}]",
                "plugins[0]: set exactly one of",
            ),
            (
                "version: 1\nplugins: [{anonymizeIp: {}, redact: {keys: [a]}}]",
                "plugins[0]: set exactly one of",
            ),
            (
                "version: 1\nplugins: [{redact: {keys: []}}]",
                "plugins[0].redact.keys: list at least one",
            ),
            (
                "version: 1\nplugins: [{redact: {keys: [a..b]}}]",
                "plugins[0].redact.keys[0]",
            ),
            (
                "version: 1\nplugins: [{sample: {rate: 1.5}}]",
                "plugins[0].sample.rate: must be between 0 and 1",
            ),
            (
                "version: 1\nplugins: [{sample: {events: {$pageview: -1}}}]",
                "plugins[0].sample.events[\"$pageview\"]",
            ),
            (
                "version: 1\nplugins: [{drop: {}}]",
                "plugins[0].drop: give at least one",
            ),
            (
                "version: 1\nplugins: [{anonymizeIp: {ipv4Prefix: 33}}]",
                "plugins[0].anonymizeIp.ipv4Prefix: an IPv4 prefix is 0 to 32",
            ),
            (
                "version: 1\nplugins: [{limitProperties: {}}]",
                "plugins[0].limitProperties",
            ),
            (
                "version: 1\nrestrictions: [{action: drop}]",
                "restrictions[0]: give at least one",
            ),
            (
                "version: 1\nrestrictions: [{action: explode, tokens: [phc_a]}]",
                "unknown variant `explode`",
            ),
            (
                "version: 1\nrestrictions: [{action: redirect, tokens: [phc_a]}]",
                "restrictions[0].topic: required",
            ),
            (
                "version: 1\nrestrictions: [{action: drop, tokens: [phc_a], topic: t}]",
                "restrictions[0].topic: only action redirect",
            ),
            (
                "version: 1\ntokens: {deny: [phx_personal_key]}",
                "tokens.deny[0]",
            ),
            (
                "version: 1\nrateLimit: {perSecond: 0}",
                "rateLimit.perSecond: must be at least 1",
            ),
            (
                "version: 1\nsignatures: {tokens: [], secretsFile: /s}",
                "signatures.tokens: list the tokens",
            ),
            (
                "version: 1\nsignatures: {tokens: [phc_a]}",
                "signatures.secretsFile: required",
            ),
            (
                "version: 1\nsignatures: {tokens: [phc_a], secretsFile: s.yaml}",
                "signatures.secretsFile: an absolute path",
            ),
            (
                "version: 1\nsignatures: {tokens: [phc_a], secretsFile: /s, window: 2h}",
                "signatures.window: between 1s and 1h",
            ),
            (
                "version: 1\ndedup: {ttl: soon}",
                "dedup.ttl: \"soon\" is not a duration",
            ),
            (
                "version: 1\ndedup: {ttl: 10ms}",
                "dedup.ttl: \"10ms\" is under a second",
            ),
            (
                "version: 1\nrouting: {events: \"bad topic\"}",
                "routing.events: a topic name uses only",
            ),
        ] {
            let message = error(text);
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn tokens_in_errors_are_masked() {
        let message = error("version: 1\ntokens: {allow: [\"phc_secret_{project}\"]}");
        assert!(!message.contains("phc_secret_{project}"), "{message}");
    }
}
