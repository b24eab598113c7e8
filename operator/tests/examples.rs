//! The files in `examples/` are valid resources: they parse as the CRD types
//! and pass every CEL rule of the schema, and the objects the operator would
//! render for them load in capture.

use std::path::PathBuf;

use operator::crd::{CaptureDeployment, CaptureQuota};

fn example(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn the_example_deployment_is_valid() {
    let cd: CaptureDeployment =
        serde_yaml::from_str(&example("capturedeployment.yaml")).expect("parses");
    cd.validate_cel().expect("passes the CEL rules");
    let runtime = operator::manifest::runtime_config(&cd.spec);
    runtime
        .validate()
        .expect("capture takes its runtime config");
    assert_eq!(runtime.plugins.len(), 3);
    assert!(operator::manifest::autoscaler(&cd).is_some());
    let deployment = operator::manifest::deployment(&cd, &Default::default());
    assert_eq!(deployment.spec.expect("spec").replicas, None, "autoscaled");
    assert_eq!(
        operator::manifest::referenced_secrets(&cd.spec)
            .into_iter()
            .collect::<Vec<_>>(),
        ["kafka-capture", "redis-capture"]
    );
}

#[test]
fn the_example_quota_is_valid_and_maps_to_capture_settings() {
    let quota: CaptureQuota = serde_yaml::from_str(&example("capturequota.yaml")).expect("parses");
    quota.validate_cel().expect("passes the CEL rules");
    let settings = operator::quota::settings(&quota.spec).expect("valid settings");
    assert_eq!(settings.types.len(), 3);
}
