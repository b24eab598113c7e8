//! The Redis connection: one standalone server or a Redis Cluster, behind one
//! type that every command and script runs on.
//!
//! Both kinds connect lazily and reconnect by themselves, so capture starts
//! and serves (failing open) while Redis is down, and picks Redis up again
//! when it returns. Each connection is multiplexed: one socket per server
//! carries every request's commands, pipelined.
//!
//! `rediss://` URLs speak TLS (rustls), verified against the system's roots
//! or, with a CA file, against that CA alone; a cluster's nodes are reached
//! the way its seed URLs are.

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, TlsCertificates, Value};

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
    /// PEM file of the CA that signed the servers' certificates, for
    /// `rediss://` URLs; without it the system's roots are trusted.
    pub tls_ca: Option<PathBuf>,
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
            tls_ca: None,
        }
    }

    /// These settings, trusting the CA in `path` for `rediss://` servers.
    pub fn with_tls_ca(mut self, path: Option<PathBuf>) -> Self {
        self.tls_ca = path;
        self
    }

    /// Whether the URLs ask for TLS: all of them or none, as a cluster
    /// reaches every node the same way.
    fn tls(&self) -> redis::RedisResult<bool> {
        let secure = self
            .urls
            .iter()
            .filter(|u| u.starts_with("rediss://"))
            .count();
        match (secure, self.tls_ca.is_some()) {
            (0, false) => Ok(false),
            (0, true) => Err(invalid(
                "a Redis CA file was given but no URL is rediss://; TLS needs rediss:// URLs",
            )),
            (n, _) if n == self.urls.len() => Ok(true),
            _ => Err(invalid(
                "mixed redis:// and rediss:// URLs; a cluster's nodes all use TLS or none do",
            )),
        }
    }

    /// The CA to trust, read from its file (`None`: the system's roots).
    fn certificates(&self) -> redis::RedisResult<TlsCertificates> {
        let root_cert = match &self.tls_ca {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|err| {
                    RedisError::from((
                        ErrorKind::InvalidClientConfig,
                        "cannot read the Redis CA file",
                        format!("{}: {err}", path.display()),
                    ))
                })?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(RedisError::from((
                        ErrorKind::InvalidClientConfig,
                        "the Redis CA file holds no PEM certificate",
                        path.display().to_string(),
                    )));
                }
                Some(pem)
            }
        };
        Ok(TlsCertificates {
            client_tls: None,
            root_cert,
        })
    }
}

fn invalid(message: &'static str) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, message))
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
        let tls = settings.tls()?;
        if settings.cluster {
            let mut builder = ClusterClient::builder(settings.urls.clone())
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.response_timeout)
                .retries(2);
            if tls {
                builder = builder.certs(settings.certificates()?);
            }
            let client = builder.build()?;
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
                    return Err(invalid(
                        "a standalone Redis takes exactly one URL; set --redis-cluster for several",
                    ));
                }
            };
            let client = if tls {
                redis::Client::build_with_tls(url.as_str(), settings.certificates()?)?
            } else {
                redis::Client::open(url.as_str())?
            };
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
            tls_ca: None,
        };
        let err = Store::open(&settings).err().expect("refused");
        assert!(err.to_string().contains("--redis-cluster"), "{err}");
    }

    fn settings(urls: &[&str], ca: Option<PathBuf>) -> StoreSettings {
        StoreSettings::from_urls(
            urls.iter().copied(),
            false,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .with_tls_ca(ca)
    }

    #[test]
    fn a_ca_file_without_a_tls_url_is_refused() {
        let err = Store::open(&settings(&["redis://h:1"], Some("/ca.pem".into())))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("rediss://"), "{err}");
    }

    #[test]
    fn cluster_nodes_use_tls_all_or_none() {
        let err = Store::open(&settings(&["rediss://a:1", "redis://b:1"], None))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("mixed"), "{err}");
    }

    #[test]
    fn an_unreadable_or_empty_ca_file_is_named() {
        let err = Store::open(&settings(&["rediss://h:1"], Some("/no/such/ca.pem".into())))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("/no/such/ca.pem"), "{err}");
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), "not a certificate").expect("write");
        let err = Store::open(&settings(&["rediss://h:1"], Some(file.path().into())))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[tokio::test]
    async fn a_tls_url_opens_lazily_with_the_systems_roots() {
        assert!(Store::open(&settings(&["rediss://h:1"], None)).is_ok());
    }
}
