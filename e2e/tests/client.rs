//! kube-rs, the client the operator is built on, against the API server
//! stand-in: typed create, server-side apply, JSON and merge patches, the
//! status subresource, and the `watcher` the controllers run on (list, then
//! watch from the list's resource version, with bookmarks), which must see
//! every change in order.

use std::time::Duration;

use e2e::ApiServer;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::json;

async fn client() -> (ApiServer, kube::Client) {
    let server = ApiServer::default();
    let (address, _task) = server
        .start(([127, 0, 0, 1], 0).into())
        .await
        .expect("start");
    let config = kube::Config::new(format!("http://{address}").parse().expect("url"));
    (server, kube::Client::try_from(config).expect("client"))
}

#[tokio::test]
async fn the_watcher_sees_every_change_in_order() {
    let (_server, client) = client().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut first = ConfigMap::default();
    first.metadata.name = Some("first".into());
    maps.create(&PostParams::default(), &first)
        .await
        .expect("create");

    let mut events = watcher::watcher(maps.clone(), watcher::Config::default().labels("")).boxed();
    let mut seen = Vec::new();
    let mut next = async || -> String {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .expect("no watch error");
            let name = |cm: &ConfigMap| cm.metadata.name.clone().unwrap_or_default();
            match event {
                Event::InitApply(cm) => return format!("init {}", name(&cm)),
                Event::Apply(cm) => return format!("apply {}", name(&cm)),
                Event::Delete(cm) => return format!("delete {}", name(&cm)),
                Event::Init | Event::InitDone => {}
            }
        }
    };
    seen.push(next().await);

    let apply = PatchParams::apply("e2e-test").force();
    maps.patch(
        "second",
        &apply,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"}})),
    )
    .await
    .expect("server-side apply creates");
    seen.push(next().await);
    maps.patch(
        "second",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"b": "2"}})),
    )
    .await
    .expect("merge patch");
    seen.push(next().await);
    maps.delete("first", &DeleteParams::default())
        .await
        .expect("delete");
    seen.push(next().await);
    assert_eq!(
        seen,
        ["init first", "apply second", "apply second", "delete first"]
    );

    let second = maps.get("second").await.expect("get");
    let data = second.data.expect("data");
    assert_eq!((data["a"].as_str(), data["b"].as_str()), ("1", "2"));
}

#[tokio::test]
async fn status_is_written_through_its_subresource_only() {
    let (_server, client) = client().await;
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}}},
    }))
    .expect("deployment");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create");
    deployments
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 2}})),
        )
        .await
        .expect("status patch");
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 0}, "spec": {"replicas": 3}})),
        )
        .await
        .expect("patch");
    let stored = deployments.get("web").await.expect("get");
    assert_eq!(
        stored.status.and_then(|s| s.ready_replicas),
        Some(2),
        "status kept"
    );
    assert_eq!(stored.spec.and_then(|s| s.replicas), Some(3));
    assert_eq!(stored.metadata.generation, Some(2));
}
