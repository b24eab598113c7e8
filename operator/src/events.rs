//! Kubernetes Events for what the operator changed and why, on the object
//! it acted for (`kubectl describe` shows them). Publishing is best effort:
//! a failed Event is logged and never fails a reconcile.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

/// Publishes Events as `capture-operator`.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    /// Events published through `client`, with this pod as the instance.
    pub fn new(client: Client) -> Self {
        Events {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "capture-operator".into(),
                    instance: std::env::var("HOSTNAME").ok(),
                },
            ),
        }
    }

    /// Something was changed as asked.
    pub async fn normal<K>(&self, object: &K, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.publish(object, EventType::Normal, reason, action, note)
            .await;
    }

    /// Something could not be done.
    pub async fn warning<K>(&self, object: &K, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.publish(object, EventType::Warning, reason, action, note)
            .await;
    }

    async fn publish<K>(
        &self,
        object: &K,
        kind: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let reference: ObjectReference = object.object_ref(&());
        let event = Event {
            type_: kind,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, reason, "could not publish an Event");
        }
    }
}
