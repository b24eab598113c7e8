//! Kafka topics, reconciled one way from the spec to the cluster: create
//! (or adopt a topic that already exists), grow partitions, keep the topic
//! configuration equal to the spec, and refuse what Kafka cannot do safely
//! (shrinking, changing the replication factor) with a `NotSupported` state
//! instead of trying.
//!
//! [`plan`] decides from what the spec asks and what the cluster has; it is
//! pure, so every branch is unit tested. [`TopicAdmin`] carries a plan out
//! with librdkafka's admin API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Annotation on a CaptureDeployment listing topics (by name) the operator
/// must leave alone, comma-separated.
pub const UNMANAGED_ANNOTATION: &str = "capture.dev/unmanaged-topics";

/// A topic as the spec wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    /// Topic name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// Topic-level configuration; anything else is kept at the broker default.
    pub config: BTreeMap<String, String>,
    /// Whether the operator manages it at all.
    pub managed: bool,
}

/// A topic as the cluster has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedTopic {
    /// Partitions.
    pub partitions: i32,
    /// Replication factor (of the first partition).
    pub replication_factor: i32,
    /// Configuration set on the topic itself (source `DYNAMIC_TOPIC_CONFIG`).
    pub config: BTreeMap<String, String>,
    /// Every value the broker reported, whatever its source.
    pub effective: BTreeMap<String, String>,
}

impl ObservedTopic {
    /// Whether the topic's configuration differs from `desired`: a desired
    /// key whose effective value differs, or a key set on the topic that the
    /// spec does not have. (A desired value that equals the broker default
    /// counts as in sync.)
    pub fn config_differs(&self, desired: &BTreeMap<String, String>) -> bool {
        desired
            .iter()
            .any(|(key, value)| self.effective.get(key) != Some(value))
            || self.config.keys().any(|key| !desired.contains_key(key))
    }
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create the topic as desired.
    Create,
    /// Grow to this many partitions.
    AddPartitions(i32),
    /// Replace the topic's configuration with the desired set.
    SetConfig(BTreeMap<String, String>),
}

/// A topic's state for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    /// Matches the spec.
    Ready,
    /// Changes are being made.
    Updating,
    /// The spec asks for something Kafka cannot do safely; nothing is done.
    NotSupported(String),
    /// Left alone by annotation.
    Unmanaged,
}

impl TopicState {
    /// The `state` string of the status.
    pub fn label(&self) -> &'static str {
        match self {
            TopicState::Ready => "Ready",
            TopicState::Updating => "Updating",
            TopicState::NotSupported(_) => "NotSupported",
            TopicState::Unmanaged => "Unmanaged",
        }
    }
}

/// What to do for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Changes, in the order to make them.
    pub changes: Vec<Change>,
    /// The state to report once they are made.
    pub state: TopicState,
}

/// Decides what to change so the cluster matches the spec.
pub fn plan(desired: &DesiredTopic, observed: Option<&ObservedTopic>) -> Plan {
    if !desired.managed {
        return Plan {
            changes: Vec::new(),
            state: TopicState::Unmanaged,
        };
    }
    let Some(observed) = observed else {
        return Plan {
            changes: vec![Change::Create],
            state: TopicState::Updating,
        };
    };
    let mut refusals = Vec::new();
    let mut changes = Vec::new();
    if observed.replication_factor != desired.replication_factor {
        refusals.push(format!(
            "replication factor is {} and the spec asks for {}; changing it is not supported (create a new topic)",
            observed.replication_factor, desired.replication_factor
        ));
    }
    if desired.partitions < observed.partitions {
        refusals.push(format!(
            "topic has {} partitions and the spec asks for {}; Kafka cannot remove partitions",
            observed.partitions, desired.partitions
        ));
    } else if desired.partitions > observed.partitions {
        changes.push(Change::AddPartitions(desired.partitions));
    }
    if observed.config_differs(&desired.config) {
        changes.push(Change::SetConfig(desired.config.clone()));
    }
    let state = match (refusals.is_empty(), changes.is_empty()) {
        (false, _) => TopicState::NotSupported(refusals.join("; ")),
        (true, true) => TopicState::Ready,
        (true, false) => TopicState::Updating,
    };
    Plan { changes, state }
}

/// Whether `err` says the cluster did not answer at all (rather than
/// something about one topic), so asking about other topics is pointless.
pub fn cluster_unreachable(err: &KafkaError) -> bool {
    use RDKafkaErrorCode as Code;
    let code = match err {
        KafkaError::MetadataFetch(code) | KafkaError::AdminOp(code) => *code,
        _ => return false,
    };
    matches!(
        code,
        Code::OperationTimedOut
            | Code::RequestTimedOut
            | Code::AllBrokersDown
            | Code::BrokerTransportFailure
            | Code::Resolve
            | Code::BrokerNotAvailable
    )
}

/// librdkafka's admin API on one cluster.
pub struct TopicAdmin {
    /// Shared with the blocking pool: librdkafka's metadata call and its
    /// client teardown block their thread, and a blocked async worker
    /// would starve every other task of the operator (among them the
    /// leader lease's renewal) for as long as a broker does not answer.
    admin: Option<Arc<AdminClient<DefaultClientContext>>>,
    timeout: Duration,
}

impl Drop for TopicAdmin {
    fn drop(&mut self) {
        // Destroying the client joins librdkafka's threads, which can wait
        // on a broker that does not answer.
        if let Some(admin) = self.admin.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn_blocking(move || drop(admin));
        }
    }
}

impl TopicAdmin {
    /// An admin client for `brokers` with the client settings in `extra`
    /// (security protocol, SASL).
    pub fn connect(
        brokers: &str,
        extra: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "capture-operator")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (key, value) in extra {
            config.set(key, value);
        }
        Ok(TopicAdmin {
            admin: Some(Arc::new(config.create()?)),
            timeout,
        })
    }

    fn admin(&self) -> &Arc<AdminClient<DefaultClientContext>> {
        self.admin
            .as_ref()
            .expect("the client is only taken when dropped")
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new().operation_timeout(Some(self.timeout))
    }

    /// What the cluster has for `name`, or `None` when it does not exist.
    pub async fn observe(&self, name: &str) -> Result<Option<ObservedTopic>, KafkaError> {
        let Some(mut observed) = self.layout(name).await? else {
            return Ok(None);
        };
        let described = self
            .admin()
            .describe_configs([&ResourceSpecifier::Topic(name)], &self.options())
            .await?;
        for result in described {
            let resource = result.map_err(KafkaError::AdminOp)?;
            for entry in resource.entries {
                let Some(value) = entry.value else { continue };
                if matches!(entry.source, rdkafka::admin::ConfigSource::DynamicTopic) {
                    observed.config.insert(entry.name.clone(), value.clone());
                }
                observed.effective.insert(entry.name, value);
            }
        }
        Ok(Some(observed))
    }

    /// Partitions and replication factor from metadata alone, or `None`
    /// when the topic does not exist. The metadata call blocks, so it runs
    /// on the blocking pool.
    pub async fn layout(&self, name: &str) -> Result<Option<ObservedTopic>, KafkaError> {
        let admin = Arc::clone(self.admin());
        let (topic_name, timeout) = (name.to_owned(), self.timeout);
        let metadata = tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(Some(&topic_name), timeout)
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == name) else {
            return Ok(None);
        };
        match topic.error() {
            Some(code)
                if RDKafkaErrorCode::from(code) == RDKafkaErrorCode::UnknownTopicOrPartition =>
            {
                return Ok(None);
            }
            Some(code) => return Err(KafkaError::MetadataFetch(code.into())),
            None => {}
        }
        if topic.partitions().is_empty() {
            return Ok(None);
        }
        Ok(Some(ObservedTopic {
            partitions: topic.partitions().len() as i32,
            replication_factor: topic.partitions()[0].replicas().len() as i32,
            ..ObservedTopic::default()
        }))
    }

    /// Makes the planned changes.
    pub async fn apply(
        &self,
        desired: &DesiredTopic,
        changes: &[Change],
    ) -> Result<(), KafkaError> {
        for change in changes {
            match change {
                Change::Create => {
                    let mut topic = NewTopic::new(
                        &desired.name,
                        desired.partitions,
                        TopicReplication::Fixed(desired.replication_factor),
                    );
                    for (key, value) in &desired.config {
                        topic = topic.set(key, value);
                    }
                    let results = self
                        .admin()
                        .create_topics([&topic], &self.options())
                        .await?;
                    for result in results {
                        match result {
                            Ok(_) => {}
                            // Created meanwhile (another reconcile): adopt it.
                            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
                        }
                    }
                }
                Change::AddPartitions(count) => {
                    let partitions = NewPartitions::new(&desired.name, *count as usize);
                    for result in self
                        .admin()
                        .create_partitions([&partitions], &self.options())
                        .await?
                    {
                        result.map_err(|(_, code)| KafkaError::AdminOp(code))?;
                    }
                }
                Change::SetConfig(config) => {
                    // AlterConfigs replaces the topic's whole configuration:
                    // the set sent is the set kept, so keys not in the spec
                    // go back to the broker default.
                    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&desired.name));
                    for (key, value) in config {
                        alter = alter.set(key, value);
                    }
                    for result in self
                        .admin()
                        .alter_configs([&alter], &self.options())
                        .await?
                    {
                        result.map_err(|(_, code)| KafkaError::AdminOp(code))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes a topic and its data (only when the spec asks, on removal).
    /// A topic already gone is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), KafkaError> {
        for result in self.admin().delete_topics(&[name], &self.options()).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => return Err(KafkaError::AdminOp(code)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker that accepts connections and never answers: the metadata
    /// call times out, on the blocking pool, while the runtime's only
    /// thread keeps running other tasks; the error says the cluster is
    /// unreachable, so the other topics are not asked about.
    #[tokio::test(flavor = "current_thread")]
    async fn a_broker_that_never_answers_blocks_no_async_task() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ticker = {
            let ticks = Arc::clone(&ticks);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    ticks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        let admin = TopicAdmin::connect(&address, &BTreeMap::new(), Duration::from_secs(2))
            .expect("client");
        let started = std::time::Instant::now();
        let err = admin.observe("events").await.expect_err("no answer");
        let waited = started.elapsed();
        drop(admin);
        let ticked = ticks.load(std::sync::atomic::Ordering::SeqCst);
        ticker.abort();
        assert!(cluster_unreachable(&err), "{err:?}");
        assert!(waited >= Duration::from_secs(1), "{waited:?}: {err:?}");
        // Half the ticks the wait allows: a blocked thread gives none.
        let expected = (waited.as_millis() / 50 / 2) as usize;
        assert!(ticked >= expected, "{ticked} ticks in {waited:?}");
    }

    fn desired() -> DesiredTopic {
        DesiredTopic {
            name: "events".into(),
            partitions: 12,
            replication_factor: 3,
            config: BTreeMap::from([("retention.ms".to_owned(), "604800000".to_owned())]),
            managed: true,
        }
    }

    fn observed() -> ObservedTopic {
        let config = BTreeMap::from([("retention.ms".to_owned(), "604800000".to_owned())]);
        let mut effective = config.clone();
        effective.insert("cleanup.policy".into(), "delete".into());
        ObservedTopic {
            partitions: 12,
            replication_factor: 3,
            config,
            effective,
        }
    }

    #[test]
    fn a_missing_topic_is_created() {
        let plan = plan(&desired(), None);
        assert_eq!(plan.changes, [Change::Create]);
        assert_eq!(plan.state, TopicState::Updating);
    }

    #[test]
    fn a_matching_topic_is_adopted_with_no_change() {
        let plan = plan(&desired(), Some(&observed()));
        assert!(plan.changes.is_empty());
        assert_eq!(plan.state, TopicState::Ready);
    }

    #[test]
    fn partitions_grow_but_never_shrink() {
        let mut more = desired();
        more.partitions = 24;
        assert_eq!(
            plan(&more, Some(&observed())).changes,
            [Change::AddPartitions(24)]
        );
        let mut fewer = desired();
        fewer.partitions = 6;
        let refused = plan(&fewer, Some(&observed()));
        assert!(refused.changes.is_empty());
        let TopicState::NotSupported(reason) = refused.state else {
            panic!("{refused:?}");
        };
        assert!(reason.contains("cannot remove partitions"), "{reason}");
    }

    #[test]
    fn replication_changes_are_refused_while_other_changes_go_ahead() {
        let mut spec = desired();
        spec.replication_factor = 5;
        spec.partitions = 16;
        let plan = plan(&spec, Some(&observed()));
        assert_eq!(plan.changes, [Change::AddPartitions(16)]);
        assert!(
            matches!(plan.state, TopicState::NotSupported(ref r) if r.contains("replication factor is 3"))
        );
    }

    #[test]
    fn config_drift_sends_the_whole_desired_set() {
        let mut drifted = observed();
        drifted
            .config
            .insert("cleanup.policy".into(), "compact".into());
        drifted
            .effective
            .insert("cleanup.policy".into(), "compact".into());
        let drift = plan(&desired(), Some(&drifted));
        assert_eq!(drift.changes, [Change::SetConfig(desired().config)]);
        let mut changed = observed();
        changed.effective.insert("retention.ms".into(), "1".into());
        assert_eq!(plan(&desired(), Some(&changed)).changes.len(), 1);
    }

    #[test]
    fn a_desired_value_equal_to_the_default_is_in_sync() {
        let mut spec = desired();
        spec.config.insert("cleanup.policy".into(), "delete".into());
        assert!(plan(&spec, Some(&observed())).changes.is_empty());
    }

    #[test]
    fn unmanaged_topics_are_left_alone() {
        let mut spec = desired();
        spec.managed = false;
        let plan = plan(&spec, None);
        assert!(plan.changes.is_empty());
        assert_eq!(plan.state, TopicState::Unmanaged);
    }
}
