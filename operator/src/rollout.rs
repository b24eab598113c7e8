//! Which runtime config the capture pods have in force: each ready pod's
//! `/_readiness` body names its hash (`runtime-config <hash>`), so the
//! operator can report how many ready pods run the desired one.
//!
//! Pods serving HTTPS are asked over TLS without checking their
//! certificate, as kubelet's probes do: the certificate names the Service,
//! not the pod IP, and the answer is only a hash the operator compares.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

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

const REQUEST: &[u8] = b"GET /_readiness HTTP/1.1\r\nHost: capture\r\nConnection: close\r\n\r\n";

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> Option<String> {
    stream.write_all(REQUEST).await.ok()?;
    let mut response = Vec::new();
    // A TLS peer may close without close_notify; what was read counts.
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// The body of `GET /_readiness` at `address` (over TLS with `tls`), within
/// [`PROBE_TIMEOUT`].
async fn readiness(address: &str, tls: Option<&TlsConnector>) -> Option<String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address).await.ok()?;
        match tls {
            None => exchange(stream).await,
            Some(connector) => {
                let name = ServerName::try_from("capture").ok()?;
                exchange(connector.connect(name, stream).await.ok()?).await
            }
        }
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
    tls: bool,
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
    let connector = tls.then(connector);
    let answers =
        futures::future::join_all(ready.iter().map(|a| readiness(a, connector.as_ref()))).await;
    let current = answers
        .iter()
        .filter(|body| body.as_deref().and_then(hash_in) == Some(hash))
        .count();
    Ok(ConfigRollout {
        ready: ready.len() as i32,
        current: current as i32,
    })
}

/// Accepts any certificate, but still checks the handshake signatures
/// (so the peer holds the key of the certificate it showed).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client for the pods' readiness endpoints.
fn connector() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTPS server answering `/_readiness` with `body`, with a
    /// self-signed certificate for some other name (as a pod's is).
    async fn tls_pod(body: &'static str) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["capture.analytics.svc".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    continue;
                };
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        address
    }

    #[tokio::test]
    async fn pods_serving_https_are_asked_over_tls() {
        let address = tls_pod("ready\nruntime-config 00000000000000aa\n").await;
        let body = readiness(&address, Some(&connector())).await;
        assert_eq!(body.as_deref().and_then(hash_in), Some("00000000000000aa"));
        assert_eq!(
            readiness(&address, None).await.as_deref().and_then(hash_in),
            None,
            "plain HTTP gets no hash from a TLS pod"
        );
    }

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
