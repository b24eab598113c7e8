//! Status conditions: a list keyed by `type`, as `kubectl wait`, Flux and
//! Argo CD read them (kstatus: a `Ready` condition plus
//! `observedGeneration`).

use schemars::{Schema, SchemaGenerator};

/// Schema of a `conditions` list: Kubernetes' own `Condition` objects in a
/// list-map keyed by `type`, so server-side apply merges by type.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema =
        generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}
