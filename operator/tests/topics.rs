//! Topic reconcile against a real Kafka-protocol broker (tansu): create,
//! adopt, configuration drift, refusal to shrink, idempotent deletion.
//!
//! Partition growth is covered by the planner's unit tests only: neither
//! tansu 0.6 nor librdkafka's mock cluster implements CreatePartitions (the
//! mock answers no admin request at all), so no broker here can take it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use operator::topic::{Change, DesiredTopic, TopicAdmin, TopicState, plan};

fn desired(name: &str) -> DesiredTopic {
    DesiredTopic {
        name: name.to_owned(),
        partitions: 3,
        replication_factor: 1,
        config: BTreeMap::from([("retention.ms".to_owned(), "3600000".to_owned())]),
        managed: true,
    }
}

fn admin(brokers: &str) -> TopicAdmin {
    TopicAdmin::connect(brokers, &BTreeMap::new(), Duration::from_secs(10)).expect("admin client")
}

/// Observes, plans and applies until the plan is empty (at most 3 rounds).
async fn converge(admin: &TopicAdmin, topic: &DesiredTopic) -> TopicState {
    for _ in 0..3 {
        let observed = admin.observe(&topic.name).await.expect("observe");
        let plan = plan(topic, observed.as_ref());
        if plan.changes.is_empty() {
            return plan.state;
        }
        admin.apply(topic, &plan.changes).await.expect("apply");
    }
    panic!("{} did not converge", topic.name);
}

#[tokio::test]
async fn topics_are_created_adopted_and_drift_is_found_on_a_real_broker() {
    let broker = &common::broker::broker().address;
    let admin = admin(broker);
    let topic = desired(&format!("op-events-{}", uuid::Uuid::new_v4().simple()));

    assert_eq!(admin.observe(&topic.name).await.expect("observe"), None);
    assert_eq!(converge(&admin, &topic).await, TopicState::Ready);
    let observed = admin
        .observe(&topic.name)
        .await
        .expect("observe")
        .expect("exists");
    assert_eq!((observed.partitions, observed.replication_factor), (3, 1));
    assert_eq!(
        observed.effective.get("retention.ms").map(String::as_str),
        Some("3600000")
    );

    // A second reconcile (an operator restart) adopts it without a change.
    let again = plan(&topic, Some(&observed));
    assert!(again.changes.is_empty(), "{again:?}");

    // The spec changes the config: the whole desired set is to be written.
    let mut changed = topic.clone();
    changed
        .config
        .insert("retention.ms".into(), "7200000".into());
    let drift = plan(&changed, Some(&observed));
    assert_eq!(drift.changes, [Change::SetConfig(changed.config.clone())]);
    // tansu 0.6 does not implement AlterConfigs: the error reaches the
    // caller (and the status) instead of being swallowed.
    match admin.apply(&changed, &drift.changes).await {
        Ok(()) => {
            let observed = admin
                .observe(&topic.name)
                .await
                .expect("observe")
                .expect("exists");
            assert!(!observed.config_differs(&changed.config), "{observed:?}");
        }
        Err(err) => assert!(err.to_string().contains("not supported"), "{err}"),
    }

    // Shrinking is refused, and nothing is changed.
    let mut fewer = topic.clone();
    fewer.partitions = 1;
    let refused = plan(&fewer, Some(&observed));
    assert!(refused.changes.is_empty());
    assert!(
        matches!(refused.state, TopicState::NotSupported(_)),
        "{refused:?}"
    );

    admin.delete(&topic.name).await.expect("delete");
    admin
        .delete(&topic.name)
        .await
        .expect("deleting again is fine");
    assert_eq!(admin.observe(&topic.name).await.expect("observe"), None);
}
