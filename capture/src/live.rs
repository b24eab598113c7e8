//! The runtime config as capture applies it, swapped atomically while the
//! server runs.
//!
//! A request takes the current [`Applied`] once, at its start, and uses it
//! for all its events: no request sees half of one version and half of
//! another. [`watch`] reloads the file when its content changes (polled, so
//! a ConfigMap volume's `..data` symlink swap is seen like any edit) and on
//! SIGHUP. A document that does not parse or validate changes nothing: the
//! last good one stays, the error is logged with its field, counted, and
//! readiness is unaffected.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::metrics as m;
use crate::route::Topics;
use crate::runtime_config::RuntimeConfig;
use crate::token::TokenError;

/// A runtime config, ready for the request path.
#[derive(Debug)]
pub struct Applied {
    /// The document.
    pub config: RuntimeConfig,
    /// Its content hash ([`RuntimeConfig::hash`]).
    pub hash: String,
    /// Topics by data type: the static ones with `routing` over them.
    pub topics: Topics,
    /// Restrictions and plugins.
    pub pipeline: crate::plugins::Pipeline,
    /// Rate limit and dedup settings over the static ones.
    pub overrides: crate::policy::Overrides,
    /// Request signatures, when the config asks for them.
    pub signing: Option<crate::signing::Signing>,
    allow: HashSet<String>,
    deny: HashSet<String>,
}

impl Applied {
    /// Prepares `config` (already validated) for the request path, over
    /// the static topic names `base`.
    pub fn new(config: RuntimeConfig, base: &Topics) -> Self {
        let routing = &config.routing;
        let pick = |over: &Option<String>, static_name: &Arc<str>| {
            over.as_deref()
                .map_or_else(|| Arc::clone(static_name), Arc::from)
        };
        let topics = Topics {
            events: pick(&routing.events, &base.events),
            recordings: pick(&routing.recordings, &base.recordings),
            historical: pick(&routing.historical, &base.historical),
            client_warnings: pick(&routing.client_warnings, &base.client_warnings),
            exceptions: pick(&routing.exceptions, &base.exceptions),
            overflow: pick(&routing.overflow, &base.overflow),
            heatmaps: pick(&routing.heatmaps, &base.heatmaps),
            dlq: pick(&routing.dlq, &base.dlq),
        };
        Applied {
            hash: config.hash(),
            pipeline: crate::plugins::Pipeline::new(&config),
            overrides: crate::policy::Overrides::new(&config),
            signing: None,
            topics,
            allow: config.tokens.allow.iter().cloned().collect(),
            deny: config.tokens.deny.iter().cloned().collect(),
            config,
        }
    }

    /// The empty document over `base` topics.
    pub fn empty_over(base: &Topics) -> Self {
        Applied::new(
            RuntimeConfig {
                version: crate::runtime_config::VERSION,
                ..RuntimeConfig::default()
            },
            base,
        )
    }

    /// Whether `token` may send, by the token allow and deny lists.
    pub fn check_token(&self, token: &str) -> Result<(), TokenError> {
        if self.deny.contains(token) {
            return Err(TokenError::Denied);
        }
        if !self.allow.is_empty() && !self.allow.contains(token) {
            return Err(TokenError::NotAllowed);
        }
        Ok(())
    }
}

impl Applied {
    /// The empty document over the default topics, shared.
    pub fn empty() -> &'static Applied {
        static EMPTY: std::sync::LazyLock<Applied> =
            std::sync::LazyLock::new(|| Applied::empty_over(&Topics::default()));
        &EMPTY
    }
}

/// The runtime config in force; cheap to read from every request.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Applied>,
}

impl Live {
    /// Starts with `applied`.
    pub fn new(applied: Applied) -> Self {
        let live = Live {
            current: ArcSwap::from_pointee(applied),
        };
        live.publish(None);
        live
    }

    /// The config in force now; keep it for the whole request.
    pub fn current(&self) -> Arc<Applied> {
        self.current.load_full()
    }

    /// Puts `applied` in force for requests that start from now on.
    pub fn swap(&self, applied: Applied) {
        let previous = self.current.swap(Arc::new(applied));
        self.publish(Some(&previous.hash));
    }

    /// `capture_runtime_config_info{hash}`: 1 for the hash in force, 0 for
    /// the one it replaced.
    fn publish(&self, previous: Option<&str>) {
        let hash = self.current.load().hash.clone();
        if let Some(previous) = previous
            && previous != hash
        {
            metrics::gauge!(m::RUNTIME_CONFIG_INFO, "hash" => previous.to_owned()).set(0.0);
        }
        metrics::gauge!(m::RUNTIME_CONFIG_INFO, "hash" => hash).set(1.0);
    }
}

/// Why a reload did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The document is not valid; the message names the field.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Parser or validation message.
        reason: String,
    },
}

impl ReloadError {
    fn label(&self) -> &'static str {
        match self {
            ReloadError::Unreadable { .. } => "unreadable",
            ReloadError::Invalid { .. } => "invalid",
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ReloadError> {
    std::fs::read(path).map_err(|err| ReloadError::Unreadable {
        path: path.display().to_string(),
        reason: err.to_string(),
    })
}

/// The document in `bytes`, with the secrets its signatures name: the
/// applied config and a fingerprint of everything it was read from (so a
/// rotated secrets file counts as a change too).
fn parse(path: &Path, bytes: &[u8], base: &Topics) -> Parsed {
    let invalid = |reason: String| ReloadError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let mut seen = fingerprint(bytes);
    let mut secrets_file = None;
    let result = (|| {
        let text =
            std::str::from_utf8(bytes).map_err(|err| invalid(format!("not UTF-8: {err}")))?;
        let config = crate::runtime_config::parse(text).map_err(|err| invalid(err.to_string()))?;
        let signing = match &config.signatures {
            None => None,
            Some(signatures) => {
                secrets_file = Some(PathBuf::from(&signatures.secrets_file));
                let secrets = std::fs::read_to_string(&signatures.secrets_file).map_err(|err| {
                    invalid(format!(
                        "signatures.secretsFile {}: {err}",
                        signatures.secrets_file
                    ))
                })?;
                seen = with_secrets(seen, secrets.as_bytes());
                Some(crate::signing::Signing::new(signatures, &secrets).map_err(invalid)?)
            }
        };
        let mut applied = Applied::new(config, base);
        applied.signing = signing;
        Ok(applied)
    })();
    Parsed {
        seen,
        secrets_file,
        result,
    }
}

/// One reading of the document and its secrets file.
struct Parsed {
    /// Fingerprint of the document's bytes and its secrets file's.
    seen: u64,
    /// The secrets file the document names, if any.
    secrets_file: Option<PathBuf>,
    result: Result<Applied, ReloadError>,
}

/// The fingerprint [`parse`] gives `document` with `secrets_file`, computed
/// without parsing, so an unchanged pair costs two reads and two hashes.
fn fingerprint_of(document: &[u8], secrets_file: Option<&Path>) -> u64 {
    let seen = fingerprint(document);
    match secrets_file.and_then(|path| std::fs::read(path).ok()) {
        Some(secrets) => with_secrets(seen, &secrets),
        None => seen,
    }
}

/// A document's fingerprint combined with its secrets file's bytes.
fn with_secrets(seen: u64, secrets: &[u8]) -> u64 {
    seen ^ fingerprint(secrets).rotate_left(1)
}

/// What one look at the file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file's bytes are the ones seen last time.
    Unchanged,
    /// A new document is in force; its hash.
    Applied(String),
    /// The file changed to the document already in force.
    Same,
    /// The file changed but cannot be used; the last good one stays.
    Refused(ReloadError),
}

/// Follows one file: remembers the bytes it last saw (and those of the
/// secrets file the document names), so an unchanged file costs a read and
/// a hash, not a parse, and a bad document is reported once.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    base: Topics,
    seen: Option<u64>,
    /// The secrets file the last document read names.
    secrets_file: Option<PathBuf>,
}

impl Follower {
    /// Loads `path` (over the static topics `base`) for start-up, and the
    /// follower that applies its later changes: both from one read, so no
    /// change between them goes unseen.
    pub fn start(path: PathBuf, base: Topics) -> Result<(Applied, Follower), ReloadError> {
        let bytes = read(&path)?;
        let parsed = parse(&path, &bytes, &base);
        let follower = Follower {
            seen: Some(parsed.seen),
            secrets_file: parsed.secrets_file,
            path,
            base,
        };
        Ok((parsed.result?, follower))
    }

    /// Looks at the file now and applies what changed.
    pub fn check(&mut self, live: &Live) -> Reload {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) => {
                // A ConfigMap update briefly replaces the link; report a
                // missing file only once, like a bad document.
                let seen = fingerprint(err.to_string().as_bytes());
                if self.seen == Some(seen) {
                    return Reload::Unchanged;
                }
                self.seen = Some(seen);
                return self.refused(ReloadError::Unreadable {
                    path: self.path.display().to_string(),
                    reason: err.to_string(),
                });
            }
        };
        if self.seen == Some(fingerprint_of(&bytes, self.secrets_file.as_deref())) {
            return Reload::Unchanged;
        }
        let parsed = parse(&self.path, &bytes, &self.base);
        self.secrets_file = parsed.secrets_file;
        if self.seen == Some(parsed.seen) {
            return Reload::Unchanged;
        }
        self.seen = Some(parsed.seen);
        match parsed.result {
            Ok(applied) if applied.hash == live.current().hash => {
                // Same document; but its secrets file may have rotated.
                if applied.signing.is_some() {
                    live.swap(applied);
                    tracing::info!(path = %self.path.display(), "signing secrets reloaded");
                }
                Reload::Same
            }
            Ok(applied) => {
                let hash = applied.hash.clone();
                live.swap(applied);
                metrics::counter!(m::RUNTIME_CONFIG_RELOADS, "result" => "applied").increment(1);
                tracing::info!(path = %self.path.display(), hash = %hash, "runtime config applied");
                Reload::Applied(hash)
            }
            Err(err) => self.refused(err),
        }
    }

    fn refused(&self, err: ReloadError) -> Reload {
        metrics::counter!(m::RUNTIME_CONFIG_RELOADS, "result" => err.label()).increment(1);
        tracing::error!(error = %err, "runtime config not applied; the last good one stays in force");
        Reload::Refused(err)
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Applies the followed file's changes to `live`, looking every `poll` and
/// on SIGHUP, until the task is dropped.
pub async fn watch(live: Arc<Live>, mut follower: Follower, poll: Duration) {
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; polling only");
            None
        }
    };
    loop {
        #[cfg(unix)]
        {
            let signalled = async {
                match hangup.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = signalled => tracing::info!("SIGHUP: reloading the runtime config"),
            }
        }
        #[cfg(not(unix))]
        tokio::time::sleep(poll).await;
        follower.check(&live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_against_both_lists() {
        let applied = |text: &str| {
            Applied::new(
                crate::runtime_config::parse(text).expect("valid"),
                &Topics::default(),
            )
        };
        let open = applied("version: 1");
        assert_eq!(open.check_token("phc_any"), Ok(()));
        let deny = applied("version: 1\ntokens: {deny: [phc_gone]}");
        assert_eq!(deny.check_token("phc_gone"), Err(TokenError::Denied));
        assert_eq!(deny.check_token("phc_other"), Ok(()));
        let allow = applied("version: 1\ntokens: {allow: [phc_a], deny: [phc_a]}");
        assert_eq!(
            allow.check_token("phc_a"),
            Err(TokenError::Denied),
            "deny wins"
        );
        assert_eq!(allow.check_token("phc_b"), Err(TokenError::NotAllowed));
    }

    #[test]
    fn a_follower_applies_changes_once_and_keeps_the_last_good_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runtime.yaml");
        std::fs::write(&path, "version: 1\n").expect("write");
        let (applied, mut follower) =
            Follower::start(path.clone(), Topics::default()).expect("valid");
        let live = Live::new(applied);
        let first = live.current().hash.clone();
        assert_eq!(follower.check(&live), Reload::Unchanged);

        std::fs::write(&path, "version: 1\ndedup: {ttl: 1m}\n").expect("write");
        let Reload::Applied(second) = follower.check(&live) else {
            panic!("not applied");
        };
        assert_ne!(second, first);
        assert_eq!(live.current().hash, second);

        std::fs::write(&path, "version: 1\nplugins: [{sample: {rate: 3}}]\n").expect("write");
        match follower.check(&live) {
            Reload::Refused(ReloadError::Invalid { reason, .. }) => {
                assert!(reason.contains("plugins[0].sample.rate"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(live.current().hash, second, "the last good one stays");
        assert_eq!(follower.check(&live), Reload::Unchanged, "reported once");

        // Same content, other formatting: nothing to swap.
        std::fs::write(&path, "{\"version\": 1, \"dedup\": {\"ttl\": \"1m\"}}").expect("write");
        assert_eq!(follower.check(&live), Reload::Same);

        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(
            follower.check(&live),
            Reload::Refused(ReloadError::Unreadable { .. })
        ));
        assert_eq!(follower.check(&live), Reload::Unchanged, "reported once");
        assert_eq!(live.current().hash, second);
    }
}
