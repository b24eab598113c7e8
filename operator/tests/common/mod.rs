//! Test harness: the real `redis-server` helpers are capture's own, shared
//! by path so both crates start Redis the same way.
#![allow(dead_code)] // each test binary uses a different part

pub mod api;

#[path = "../../../capture/tests/common/redis.rs"]
pub mod redis;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

#[path = "../../../capture/tests/common/broker.rs"]
pub mod broker;
