//! The capture operator: turns `CaptureDeployment` and `CaptureQuota`
//! resources into capture pods, Kafka topics and Redis quota settings.
//!
//! # Layout
//!
//! - [`crd`]: the custom resource types, the source of `crds/*.yaml`.

pub mod crd;
