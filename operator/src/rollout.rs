//! Which runtime config the capture pods have in force: each ready pod's
//! `/_readiness` body names its hash (`runtime-config <hash>`), so the
//! operator can report how many ready pods run the desired one.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::manifest;

/// How long one pod may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Ready pods, and how many of them have `hash` in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigRollout {
    /// Ready pods of the deployment.
    pub ready: i32,
    /// Ready pods whose readiness names the desired hash.
    pub current: i32,
}

impl ConfigRollout {
    /// Every ready pod has it (and there is at least one).
    pub fn complete(&self) -> bool {
        self.ready > 0 && self.current == self.ready
    }
}

/// The hash a `/_readiness` body names.
pub fn hash_in(body: &str) -> Option<&str> {
    body.lines()
        .find_map(|line| line.trim().strip_prefix("runtime-config "))
        .map(str::trim)
}

/// Where a pod serves capture's HTTP: its IP and the `http` container port.
fn address(pod: &Pod) -> Option<String> {
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    let port = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.first())
        .and_then(|container| container.ports.as_ref())
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some("http"))
                .map(|p| p.container_port)
        })
        .unwrap_or(manifest::CONTAINER_PORT);
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

/// The body of `GET /_readiness` at `address`, within [`PROBE_TIMEOUT`].
async fn readiness(address: &str) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /_readiness HTTP/1.1\r\nHost: capture\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

/// Asks every ready pod of the CaptureDeployment `name` which runtime
/// config it has in force, and counts those with `hash`.
pub async fn observe(
    client: &Client,
    namespace: &str,
    name: &str,
    hash: &str,
) -> Result<ConfigRollout, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = manifest::selector_labels(name)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    let ready: Vec<String> = list
        .items
        .iter()
        .filter(|pod| is_ready(pod))
        .filter_map(address)
        .collect();
    let answers = futures::future::join_all(ready.iter().map(|a| readiness(a))).await;
    let current = answers
        .iter()
        .filter(|body| body.as_deref().and_then(hash_in) == Some(hash))
        .count();
    Ok(ConfigRollout {
        ready: ready.len() as i32,
        current: current as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_read_from_the_readiness_body() {
        assert_eq!(
            hash_in("ready\nruntime-config 0123456789abcdef\n"),
            Some("0123456789abcdef")
        );
        assert_eq!(hash_in("ready"), None);
        let rollout = ConfigRollout {
            ready: 2,
            current: 2,
        };
        assert!(rollout.complete());
        assert!(
            !ConfigRollout::default().complete(),
            "no pods: not complete"
        );
    }
}
