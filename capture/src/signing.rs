//! Request signatures (an auth plugin of the runtime config): the requests
//! of listed tokens must carry `X-Capture-Signature: t=<unix seconds>,
//! v2=<hex>`, where `v2` is the HMAC-SHA256 under the token's secret of
//!
//! ```text
//! <t>\n<METHOD>\n<path>\n<query>\n<body as sent>
//! ```
//!
//! (path and query exactly as in the request line, the query without its
//! `?` and empty when there is none), and `t` is within the window of now.
//! So a signature covers what the request does, not only its body: a GET
//! carrying its events in `?data=` is signed too. Secrets come from a file
//! (a mounted Kubernetes Secret), never from the config.
//!
//! A signature is good once: [`Replays`] remembers each accepted one until
//! its time leaves the window, and refuses it if it comes again. A request
//! that then fails is forgotten, so the client's retry of the same bytes
//! goes through.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::runtime_config::Signatures;

/// The request header carrying the signature.
pub const HEADER: &str = "x-capture-signature";

/// Why a request's signature was refused (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No header.
    #[error(
        "this project requires signed requests: send X-Capture-Signature: t=<unix seconds>,v2=<hex hmac-sha256 of \"<t>\\n<METHOD>\\n<path>\\n<query>\\n<body>\">"
    )]
    Missing,
    /// The header is not `t=...,v2=...`.
    #[error("X-Capture-Signature must be t=<unix seconds>,v2=<64 hex digits>")]
    Malformed,
    /// A `v1` signature, which covered the body only.
    #[error(
        "v1 signatures (of the body only) are no longer accepted: sign \"<t>\\n<METHOD>\\n<path>\\n<query>\\n<body>\" and send it as v2=<hex>"
    )]
    OldFormat,
    /// `t` is too far from now.
    #[error("the signature's time is more than {0}s away from the server's; sign again")]
    Expired(u64),
    /// The HMAC does not match.
    #[error("the signature does not match the body for this project token")]
    Mismatch,
    /// This exact signature was already accepted within the window.
    #[error(
        "this signature was already used; sign each request afresh (a retry after an error may reuse it)"
    )]
    Replayed,
    /// Too many signatures to remember within the window.
    #[error("too many signed requests in the replay window on this server; retry shortly")]
    Overloaded,
}

/// A signature that passed [`Signing::verify`]: its HMAC and when it
/// leaves the window (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    mac: [u8; 32],
    expires: i64,
}

/// Most signatures remembered at once (about 64 MB at the cap).
const REPLAY_CAPACITY: usize = 1_000_000;

/// Signatures accepted within their window, shared by every request and
/// kept across runtime config reloads.
#[derive(Debug, Default)]
pub struct Replays {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    expiries: HashMap<[u8; 32], i64>,
    /// When expired entries are next swept out (unix seconds).
    next_sweep: i64,
}

/// Seconds between sweeps of expired signatures.
const SWEEP_EVERY: i64 = 60;

impl Replays {
    /// Records `verified`, or refuses it if it was seen and is still in its
    /// window.
    pub fn admit(&self, verified: Verified, now: i64) -> Result<(), SignatureError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen
            .expiries
            .get(&verified.mac)
            .is_some_and(|&expires| expires >= now)
        {
            return Err(SignatureError::Replayed);
        }
        if now >= seen.next_sweep || seen.expiries.len() >= REPLAY_CAPACITY {
            seen.expiries.retain(|_, expires| *expires >= now);
            seen.next_sweep = now + SWEEP_EVERY;
            if seen.expiries.len() >= REPLAY_CAPACITY {
                return Err(SignatureError::Overloaded);
            }
        }
        seen.expiries.insert(verified.mac, verified.expires);
        Ok(())
    }

    /// Forgets `verified`, after its request failed.
    pub fn forget(&self, verified: &Verified) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.expiries.remove(&verified.mac);
    }

    /// Drops signatures whose window has passed ([`Replays::admit`] does
    /// this every minute by itself).
    pub fn prune(&self, now: i64) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.expiries.retain(|_, expires| *expires >= now);
    }

    /// Signatures remembered.
    pub fn len(&self) -> usize {
        self.seen.lock().map_or(0, |seen| seen.expiries.len())
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The signing rules of one runtime config version.
#[derive(Debug)]
pub struct Signing {
    tokens: HashSet<String>,
    secrets: HashMap<String, Vec<u8>>,
    window: Duration,
}

impl Signing {
    /// From the config and the secrets file's text (a YAML map `token:
    /// secret`); every listed token needs a secret.
    pub fn new(config: &Signatures, secrets_text: &str) -> Result<Signing, String> {
        let secrets: HashMap<String, String> =
            serde_yaml::from_str(secrets_text).map_err(|err| {
                format!("signatures.secretsFile is not a YAML map of token: secret ({err})")
            })?;
        for token in &config.tokens {
            if secrets.get(token).is_none_or(String::is_empty) {
                return Err(format!(
                    "signatures.secretsFile has no secret for signatures.tokens entry {}",
                    crate::token::Masked(token)
                ));
            }
        }
        Ok(Signing {
            tokens: config.tokens.iter().cloned().collect(),
            secrets: secrets
                .into_iter()
                .map(|(token, secret)| (token, secret.into_bytes()))
                .collect(),
            window: humantime::parse_duration(&config.window).unwrap_or(Duration::from_secs(300)),
        })
    }

    /// Whether requests of `token` must be signed.
    pub fn requires(&self, token: &str) -> bool {
        self.tokens.contains(token)
    }

    /// Checks `header` for `token`'s `request` at `now` (unix seconds).
    pub fn verify(
        &self,
        token: &str,
        header: Option<&str>,
        request: &Signed<'_>,
        now: i64,
    ) -> Result<Verified, SignatureError> {
        let Header { time, mac } = parse_header(header.ok_or(SignatureError::Missing)?)?;
        if now.abs_diff(time) > self.window.as_secs() {
            return Err(SignatureError::Expired(self.window.as_secs()));
        }
        let secret = self.secrets.get(token).ok_or(SignatureError::Mismatch)?;
        // Constant-time comparison.
        request
            .mac(secret, time)
            .verify_slice(&mac)
            .map_err(|_| SignatureError::Mismatch)?;
        Ok(Verified {
            mac,
            expires: time.saturating_add(self.window.as_secs() as i64),
        })
    }
}

/// What an `X-Capture-Signature` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `t`: when the request was signed (unix seconds).
    pub time: i64,
    /// `v2`: the HMAC, decoded from hex.
    pub mac: [u8; 32],
}

/// Reads `t=<unix seconds>,v2=<64 hex digits>`: parts in any order, the
/// last of a repeated one counting, unknown ones ignored. A header with
/// only `v1` is named as the old format. Public so the fuzz target can
/// reach it without a secret.
pub fn parse_header(header: &str) -> Result<Header, SignatureError> {
    let (mut time, mut mac, mut old) = (None, None, false);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => time = value.parse::<i64>().ok(),
            Some(("v2", value)) => mac = decode_hex(value),
            Some(("v1", _)) => old = true,
            _ => {}
        }
    }
    match (time, mac) {
        (Some(time), Some(mac)) => Ok(Header { time, mac }),
        _ if old => Err(SignatureError::OldFormat),
        _ => Err(SignatureError::Malformed),
    }
}

/// What a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// `GET`, `POST`.
    pub method: &'a str,
    /// The path as in the request line (`/e`).
    pub path: &'a str,
    /// The query as in the request line, without `?`; empty when none.
    pub query: &'a str,
    /// The body as sent (before any decoding).
    pub body: &'a [u8],
}

impl Signed<'_> {
    /// The HMAC of this request at `time` under `secret`, not yet finished.
    fn mac(&self, secret: &[u8], time: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        for part in [
            itoa::Buffer::new().format(time).as_bytes(),
            self.method.as_bytes(),
            self.path.as_bytes(),
            self.query.as_bytes(),
        ] {
            mac.update(part);
            mac.update(b"\n");
        }
        mac.update(self.body);
        mac
    }
}

/// The `v2` value for `request` signed at `time` with `secret` (for clients
/// and tests).
pub fn sign(secret: &[u8], time: i64, request: &Signed<'_>) -> String {
    request
        .mac(secret, time)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    // `from_str_radix` alone would also take a sign (`+f`), which is not
    // a hex digit.
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_hex_digits_only() {
        // Found by the `signature` fuzz target: `+0` passed as the byte 0,
        // so one MAC had many spellings.
        let header = "t=1700000000,v2=19b25856e1c150ca834cffc8b59b23adbd0ec0389e58e\x08\x00\x00\x00\x00\x00\x00\x00768098d002b,v2=19B25856E1C1+0CA834CFFC8B59B23ADBD0EC0389E58EB22B3B64768098D002B";
        assert_eq!(parse_header(header), Err(SignatureError::Malformed));
        let hex = "19B25856E1C1F0CA834CFFC8B59B23ADBD0EC0389E58EB22B3B64768098D002B";
        let header = parse_header(&format!("t=1700000000,v2={hex}")).expect("hex");
        assert_eq!(header.time, 1_700_000_000);
        assert_eq!(header.mac[6], 0xf0);
    }

    fn signing() -> Signing {
        let config = Signatures {
            tokens: vec!["phc_signed".into()],
            secrets_file: "/s".into(),
            window: "5m".into(),
        };
        Signing::new(&config, "phc_signed: s3cret\nphc_other: x\n").expect("valid")
    }

    fn post(body: &[u8]) -> Signed<'_> {
        Signed {
            method: "POST",
            path: "/e",
            query: "",
            body,
        }
    }

    #[test]
    fn a_good_signature_passes_and_every_fault_is_named() {
        let signing = signing();
        let request = post(br#"{"event":"e"}"#);
        let now = 1_800_000_000;
        let good = format!("t={now},v2={}", sign(b"s3cret", now, &request));
        assert!(signing.requires("phc_signed") && !signing.requires("phc_other"));
        assert!(
            signing
                .verify("phc_signed", Some(&good), &request, now + 10)
                .is_ok()
        );
        assert_eq!(
            signing.verify("phc_signed", None, &request, now),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            signing.verify("phc_signed", Some("v2=abc"), &request, now),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            signing.verify("phc_signed", Some(&good), &request, now + 301),
            Err(SignatureError::Expired(300))
        );
        assert_eq!(
            signing.verify("phc_signed", Some(&good), &post(br#"{"event":"f"}"#), now),
            Err(SignatureError::Mismatch)
        );
        let wrong_key = format!("t={now},v2={}", sign(b"guess", now, &request));
        assert_eq!(
            signing.verify("phc_signed", Some(&wrong_key), &request, now),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_signature_covers_method_path_and_query_and_v1_is_refused_by_name() {
        let signing = signing();
        let now = 1_800_000_000;
        let get = Signed {
            method: "GET",
            path: "/e",
            query: "data=eyJldmVudCI6ImEifQ%3D%3D&ip=1",
            body: b"",
        };
        let header = format!("t={now},v2={}", sign(b"s3cret", now, &get));
        assert!(
            signing
                .verify("phc_signed", Some(&header), &get, now)
                .is_ok()
        );
        for changed in [
            Signed {
                query: "data=eyJldmVudCI6ImIifQ%3D%3D&ip=1",
                ..get
            },
            Signed {
                path: "/batch",
                ..get
            },
            Signed {
                method: "POST",
                ..get
            },
            // The same bytes moved from the query to the path.
            Signed {
                path: "/e\ndata=eyJldmVudCI6ImEifQ%3D%3D&ip=1",
                query: "",
                ..get
            },
        ] {
            assert_eq!(
                signing.verify("phc_signed", Some(&header), &changed, now),
                Err(SignatureError::Mismatch),
                "{changed:?}"
            );
        }
        let old = format!("t={now},v1={}", "0".repeat(64));
        let err = signing
            .verify("phc_signed", Some(&old), &get, now)
            .expect_err("v1");
        assert_eq!(err, SignatureError::OldFormat);
        assert!(err.to_string().contains("no longer accepted"), "{err}");
    }

    #[test]
    fn a_signature_is_good_once_within_its_window_unless_its_request_failed() {
        let signing = signing();
        let replays = Replays::default();
        let request = post(br#"{"event":"e"}"#);
        let now = 1_800_000_000;
        let header = format!("t={now},v2={}", sign(b"s3cret", now, &request));
        let verified = signing
            .verify("phc_signed", Some(&header), &request, now)
            .expect("good");
        assert_eq!(replays.admit(verified, now), Ok(()));
        assert_eq!(
            replays.admit(verified, now + 299),
            Err(SignatureError::Replayed)
        );
        replays.forget(&verified);
        assert_eq!(
            replays.admit(verified, now + 1),
            Ok(()),
            "a retry after a failure"
        );
        assert_eq!(
            replays.admit(verified, now + 2),
            Err(SignatureError::Replayed)
        );
        replays.prune(now + 300);
        assert_eq!(replays.len(), 1, "still within its window at t+300");
        replays.prune(now + 301);
        assert!(replays.is_empty(), "pruned once out of the window");

        let later = format!("t={},v2={}", now + 1, sign(b"s3cret", now + 1, &request));
        let other = signing
            .verify("phc_signed", Some(&later), &request, now + 1)
            .expect("good");
        assert_eq!(
            replays.admit(other, now + 1),
            Ok(()),
            "a fresh signature of the same body"
        );
    }

    #[test]
    fn every_signed_token_needs_a_secret_and_errors_mask_it() {
        let config = Signatures {
            tokens: vec!["phc_needs_a_secret".into()],
            secrets_file: "/s".into(),
            window: "5m".into(),
        };
        let err = Signing::new(&config, "phc_other: x\n").expect_err("missing");
        assert!(err.contains("no secret"), "{err}");
        assert!(!err.contains("phc_needs_a_secret"), "masked: {err}");
        assert!(Signing::new(&config, "- a list\n").is_err());
    }
}
