//! Test harness: the real `redis-server` helpers are capture's own, shared
//! by path so both crates start Redis the same way.
#![allow(dead_code)] // each test binary uses a different part

pub mod api;
pub mod memory;
pub mod running;

#[path = "../../../capture/tests/common/redis.rs"]
pub mod redis;

/// The API path of the object `name` in namespace `default`, for a group
/// version like `v1` or `apps/v1`.
pub fn path(group_version: &str, plural: &str, name: &str) -> String {
    let prefix = if group_version == "v1" {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{group_version}")
    };
    format!("{prefix}/namespaces/default/{plural}/{name}")
}

/// The condition `kind` of a status, failing the test when absent.
pub fn condition(status: &serde_json::Value, kind: &str) -> serde_json::Value {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} condition in {status}"))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

#[path = "../../../capture/tests/common/broker.rs"]
pub mod broker;

/// Capture's quota library on `server`, under `prefix`.
pub fn redis_admin(
    server: &redis::RedisServer,
    prefix: &str,
) -> capture::policy::admin::QuotaAdmin {
    let store = capture::policy::Store::open(&capture::policy::StoreSettings {
        urls: vec![server.url()],
        cluster: false,
        connect_timeout: std::time::Duration::from_secs(2),
        response_timeout: std::time::Duration::from_secs(2),
        tls_ca: None,
    })
    .expect("store");
    capture::policy::admin::QuotaAdmin::new(
        store,
        capture::policy::Keys::new(prefix).expect("prefix"),
    )
}
