//! The capture operator: turns `CaptureDeployment` and `CaptureQuota`
//! resources into capture pods, Kafka topics and Redis quota settings.
//!
//! # Layout
//!
//! - [`crd`]: the custom resource types, the source of `crds/*.yaml`.
//! - [`manifest`]: the objects a `CaptureDeployment` owns, as pure functions.
//! - [`quota`]: a `CaptureQuota` as the settings capture reads from Redis.
//! - [`topic`]: Kafka topics reconciled one way from the spec.
//! - [`spool`]: the per-pod durable spool, and the drain of the volumes
//!   of pods scaled away.
//! - [`deployment_controller`]: the `CaptureDeployment` reconciler.
//! - [`quota_controller`]: the `CaptureQuota` reconciler.
//! - [`runtime`]: both controllers, their watches, metrics and health.
//! - [`leader`]: leader election on a Lease, so one replica reconciles.
//! - [`rollout`]: which runtime config the pods report in force.
//! - [`backoff`]: per-object retry delays; [`events`]: Kubernetes Events.

pub mod backoff;
pub mod crd;
pub mod deployment_controller;
pub mod events;
pub mod leader;
pub mod manifest;
pub mod quota;
pub mod quota_controller;
pub mod rollout;
pub mod runtime;
pub mod spool;
pub mod topic;
