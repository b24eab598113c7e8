//! The in-memory API of the benchmarks applies patches the way the API
//! server does for the shapes the operator sends.

mod common;

use common::memory::{json_patch, merge, resource};
use serde_json::json;

#[test]
fn finalizer_patches_apply_like_the_api_server() {
    let mut object = json!({"metadata": {"name": "q"}});
    json_patch(
        &mut object,
        &json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["a"]}]),
    )
    .expect("added");
    json_patch(
        &mut object,
        &json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "b"}]),
    )
    .expect("appended");
    assert_eq!(object["metadata"]["finalizers"], json!(["a", "b"]));
    assert!(
        json_patch(
            &mut object,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null}])
        )
        .is_err()
    );
    json_patch(
        &mut object,
        &json!([{"op": "remove", "path": "/metadata/finalizers/0"}]),
    )
    .expect("removed");
    assert_eq!(object["metadata"]["finalizers"], json!(["b"]));
    let mut merged = json!({"status": {"a": 1, "b": 2}});
    merge(&mut merged, &json!({"status": {"a": null, "c": 3}}));
    assert_eq!(merged, json!({"status": {"b": 2, "c": 3}}));
    assert_eq!(
        resource("/apis/capture.dev/v1alpha1/namespaces/x/capturequotas/q/status"),
        "capturequotas/status"
    );
}
