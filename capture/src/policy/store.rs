//! The Redis connection: one standalone server or a Redis Cluster, behind one
//! type that every command and script runs on.
//!
//! Both kinds connect lazily and reconnect by themselves, so capture starts
//! and serves (failing open) while Redis is down, and picks Redis up again
//! when it returns. Each connection is multiplexed: one socket per server
//! carries every request's commands, pipelined.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// How to reach Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// `redis://` or `rediss://` URLs: one for a standalone server, one or
    /// more seed nodes for a cluster.
    pub urls: Vec<String>,
    /// Whether the URLs are Redis Cluster nodes.
    pub cluster: bool,
    /// Longest wait to open a connection.
    pub connect_timeout: Duration,
    /// Longest wait for one reply.
    pub response_timeout: Duration,
}

impl StoreSettings {
    /// Settings for `urls` as users write them (trimmed, blank ones left
    /// out); several URLs mean a cluster whatever `cluster` says.
    pub fn from_urls<'a>(
        urls: impl IntoIterator<Item = &'a str>,
        cluster: bool,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let urls: Vec<String> = urls
            .into_iter()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        StoreSettings {
            cluster: cluster || urls.len() > 1,
            urls,
            connect_timeout,
            response_timeout,
        }
    }
}

/// A cheap-to-clone handle on the Redis connection.
#[derive(Clone)]
pub enum Store {
    /// One server.
    Standalone(ConnectionManager),
    /// A Redis Cluster; commands go to the node owning their key's slot.
    Cluster(ClusterConnection),
}

impl Store {
    /// Opens the connection without waiting for Redis to answer.
    pub fn open(settings: &StoreSettings) -> redis::RedisResult<Store> {
        if settings.cluster {
            let client = ClusterClient::builder(settings.urls.clone())
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.response_timeout)
                .retries(2)
                .build()?;
            let config = ClusterConfig::new()
                .set_connection_timeout(settings.connect_timeout)
                .set_response_timeout(settings.response_timeout);
            Ok(Store::Cluster(
                client.get_pending_async_connection_with_config(config),
            ))
        } else {
            let url = match settings.urls.as_slice() {
                [one] => one,
                _ => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "a standalone Redis takes exactly one URL; set --redis-cluster for several",
                    )));
                }
            };
            let client = redis::Client::open(url.as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(Some(settings.response_timeout))
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(2))
                .set_number_of_retries(2);
            Ok(Store::Standalone(ConnectionManager::new_lazy_with_config(
                client, config,
            )?))
        }
    }
}

impl ConnectionLike for Store {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Store::Standalone(conn) => conn.req_packed_command(cmd),
            Store::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Store::Standalone(conn) => conn.req_packed_commands(cmd, offset, count),
            Store::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Store::Standalone(conn) => conn.get_db(),
            Store::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A Redis URL with any password replaced, for logs and errors.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_credentials, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redacted("redis://:s3cret@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(redacted("rediss://user:pw@h:1"), "rediss://***@h:1");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn standalone_takes_one_url() {
        let settings = StoreSettings {
            urls: vec!["redis://a:1".into(), "redis://b:1".into()],
            cluster: false,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
        };
        let err = Store::open(&settings).err().expect("refused");
        assert!(err.to_string().contains("--redis-cluster"), "{err}");
    }
}
