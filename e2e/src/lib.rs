//! End-to-end harness: stand-ins for the parts of a Kubernetes cluster
//! that this machine has no room for, so the real `kubectl`, `helm`,
//! operator and capture binaries can be driven through the user's journey.
//! `e2e/README.md` lists what is emulated and what is not.
//!
//! - [`server`]: the API server stand-in (discovery, CRUD, lists, watches,
//!   patches, status subresources, finalizers, garbage collection, CRD
//!   registration).
//! - [`store`]: the objects and their lifecycle rules.
//! - [`resources`]: the kinds served and the discovery documents.
//! - [`proxy`]: the `proxy` subresources of pods and Services.
//! - [`protobuf`]: the protobuf bodies typed clients send for a few kinds.
//! - [`node`]: the node stand-in, running Deployments' (StatefulSets',
//!   Jobs') pods as processes.
//! - [`controllers`]: what the StatefulSet and Job controllers decide.

pub mod controllers;
pub mod node;
pub mod protobuf;
pub mod proxy;
pub mod rbac;
pub mod resources;
pub mod schema;
pub mod server;
pub mod store;
pub mod table;

pub use server::ApiServer;
