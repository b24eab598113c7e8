//! The committed `crds/*.yaml`, `docs/crd-reference.md` and
//! `docs/runtime-config.schema.json` are exactly what the Rust types
//! generate: a change to the types without `crdgen` fails here.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, crd) in operator::crd::all() {
        let generated = operator::crd::to_yaml(&crd).expect("CRD serializes");
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|err| {
            panic!("crds/{file}: {err}; run `cargo run -p operator --bin crdgen`")
        });
        assert!(
            committed == generated,
            "crds/{file} is stale; run `cargo run -p operator --bin crdgen` and commit the result"
        );
    }
}

#[test]
fn the_committed_crd_reference_matches_the_schemas() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/crd-reference.md");
    let crds: Vec<_> = operator::crd::all()
        .into_iter()
        .map(|(_, crd)| crd)
        .collect();
    let generated = operator::crd::reference::markdown(&crds);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/crd-reference.md is stale; run `cargo run -p operator --bin crdgen` and commit the result"
    );
    for field in [
        "spec.kafka.topics.events.partitions",
        "spec.runtimeConfig.plugins[].redact.keys",
        "spec.limits[].window",
    ] {
        assert!(
            generated.contains(&format!("`{field}`")),
            "{field} missing from the reference"
        );
    }
}

#[test]
fn the_committed_runtime_config_schema_matches_the_type() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/runtime-config.schema.json");
    let generated = capture::runtime_config::json_schema();
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/runtime-config.schema.json is stale; run `cargo run -p operator --bin crdgen` and commit the result"
    );
    let schema: serde_json::Value = serde_json::from_str(&generated).expect("JSON");
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown fields refused"
    );
    for field in [
        "version",
        "tokens",
        "signatures",
        "restrictions",
        "plugins",
        "rateLimit",
        "dedup",
        "routing",
    ] {
        assert!(
            schema["properties"].get(field).is_some(),
            "{field} missing from the schema"
        );
    }
}
