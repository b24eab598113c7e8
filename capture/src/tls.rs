//! TLS on the listener: a certificate chain and key read from PEM files (a
//! mounted Kubernetes Secret), followed so that a rotated certificate is
//! served to new connections without a restart. ALPN offers HTTP/2 first,
//! then HTTP/1.1.
//!
//! The server config never changes; its certificate resolver hands out
//! whichever key pair was loaded last, and a rotation also empties the
//! session cache, so no client resumes a session the old certificate
//! authenticated. A file pair that does not load (a half-written rotation,
//! a key that does not match) leaves the previous pair in service and is
//! reported once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// Why a certificate and key could not be put in service.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file has no usable PEM certificate.
    #[error("{path} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`): {reason}")]
    Certificate {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// The key file has no usable private key.
    #[error("{path} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    Key {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("the key in {key} does not belong to the certificate in {cert}: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// What rustls said.
        reason: String,
    },
    /// rustls refused the protocol settings.
    #[error("cannot build the TLS server config: {0}")]
    Config(String),
}

/// Where the certificate chain and its key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`tls.crt` of a Kubernetes TLS Secret).
    pub cert: PathBuf,
    /// PEM private key (`tls.key`).
    pub key: PathBuf,
}

/// Serves whichever key pair was loaded last.
#[derive(Debug)]
struct Resolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Sessions for resumption, forgotten when the certificate rotates.
#[derive(Debug)]
struct Sessions {
    current: ArcSwap<ServerSessionMemoryCache>,
}

/// Resumable sessions kept (rustls' default size).
const SESSIONS: usize = 256;

impl Sessions {
    fn forget_all(&self) {
        self.current.store(ServerSessionMemoryCache::new(SESSIONS));
    }
}

impl StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.current.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.current.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.current.load().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// The listener's TLS: an acceptor for new connections and the follower
/// that keeps its certificate current.
pub struct Tls {
    acceptor: TlsAcceptor,
    follower: Follower,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.follower.files.cert)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the pair (refusing to start on any fault) and builds the acceptor.
    pub fn start(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (pair, fingerprint) = load(&files, &provider)?;
        let resolver = Arc::new(Resolver {
            current: ArcSwap::from_pointee(pair),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Config(err.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let sessions = Arc::new(Sessions {
            current: ArcSwap::new(ServerSessionMemoryCache::new(SESSIONS)),
        });
        config.session_storage = Arc::clone(&sessions) as Arc<dyn StoresServerSessions>;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            follower: Follower {
                files,
                provider,
                resolver,
                sessions,
                loaded: fingerprint,
                refused: None,
            },
        })
    }

    /// Checks the files every `poll` for as long as the process runs.
    pub fn follow(self, poll: Duration) -> TlsAcceptor {
        let acceptor = self.acceptor.clone();
        let mut follower = self.follower;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(poll);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                follower.check();
            }
        });
        acceptor
    }
}

/// Follows the files: reloads when their bytes change.
#[derive(Debug)]
struct Follower {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    sessions: Arc<Sessions>,
    /// Fingerprint of the pair in service.
    loaded: [u8; 32],
    /// Fingerprint of the last pair refused, so it is reported once.
    refused: Option<[u8; 32]>,
}

impl Follower {
    /// Reloads if the files changed; returns whether a new pair went in.
    fn check(&mut self) -> bool {
        let Ok((cert, key)) = read_pair(&self.files) else {
            // Unreadable for a moment (mid-rotation); the pair in service stays.
            return false;
        };
        let fingerprint = fingerprint(&cert, &key);
        if fingerprint == self.loaded || Some(fingerprint) == self.refused {
            return false;
        }
        match parse(&self.files, &cert, &key, &self.provider) {
            Ok(pair) => {
                self.resolver.current.store(Arc::new(pair));
                self.sessions.forget_all();
                self.loaded = fingerprint;
                self.refused = None;
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "applied").increment(1);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(err) => {
                self.refused = Some(fingerprint);
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "refused").increment(1);
                tracing::error!(error = %err, "TLS certificate change refused; the previous certificate stays in service");
                false
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn read_pair(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    Ok((read(&files.cert)?, read(&files.key)?))
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((cert.len() as u64).to_be_bytes());
    hasher.update(cert);
    hasher.update(key);
    hasher.finalize().into()
}

fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<(CertifiedKey, [u8; 32]), TlsError> {
    let (cert, key) = read_pair(files)?;
    let pair = parse(files, &cert, &key, provider)?;
    Ok((pair, fingerprint(&cert, &key)))
}

fn parse(
    files: &TlsFiles,
    cert: &[u8],
    key: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_path = files.cert.display().to_string();
    let key_path = files.key.display().to_string();
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Certificate {
            path: cert_path.clone(),
            reason: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert_path,
            reason: "no certificate block found".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(key).map_err(|err| TlsError::Key {
        path: key_path.clone(),
        reason: err.to_string(),
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|err| match err {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: cert_path,
            key: key_path,
            reason: err.to_string(),
        },
        other => TlsError::Key {
            path: key_path,
            reason: other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        std::fs::write(dir.join("tls.crt"), cert).expect("write cert");
        std::fs::write(dir.join("tls.key"), key).expect("write key");
        TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    #[test]
    fn faults_name_the_file_and_what_is_wrong() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = pair("a.test");
        let (_, other_key) = pair("b.test");
        let cases = [
            ("not a pem", key.as_str(), "holds no PEM certificate"),
            (
                cert.as_str(),
                "not a key",
                "holds no usable PEM private key",
            ),
            (
                cert.as_str(),
                other_key.as_str(),
                "does not belong to the certificate",
            ),
        ];
        for (cert, key, expected) in cases {
            let files = files(dir.path(), cert, key);
            let err = Tls::start(files).expect_err("refused").to_string();
            assert!(err.contains(expected), "{err}");
            assert!(err.contains("tls."), "names the file: {err}");
        }
        let missing = TlsFiles {
            cert: dir.path().join("absent.crt"),
            key: dir.path().join("tls.key"),
        };
        let err = Tls::start(missing).expect_err("refused").to_string();
        assert!(err.contains("absent.crt"), "{err}");
    }

    #[test]
    fn a_changed_pair_is_swapped_in_and_a_bad_one_is_refused_once() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = pair("a.test");
        let tls = Tls::start(files(dir.path(), &cert, &key)).expect("start");
        let mut follower = tls.follower;
        let first = follower.resolver.current.load_full();
        assert!(!follower.check(), "unchanged files reload nothing");

        let (cert2, key2) = pair("b.test");
        files(dir.path(), &cert2, &key);
        assert!(!follower.check(), "a mismatched pair is refused");
        assert!(Arc::ptr_eq(&first, &follower.resolver.current.load_full()));
        assert!(follower.refused.is_some());
        assert!(!follower.check(), "and not retried while unchanged");

        files(dir.path(), &cert2, &key2);
        assert!(follower.check(), "the completed rotation goes in");
        let now = follower.resolver.current.load_full();
        assert_eq!(
            now.cert[0].as_ref(),
            CertificateDer::from_pem_slice(cert2.as_bytes())
                .expect("der")
                .as_ref()
        );
    }
}
