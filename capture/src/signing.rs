//! Request signatures (an auth plugin of the runtime config): the requests
//! of listed tokens must carry `X-Capture-Signature: t=<unix seconds>,
//! v1=<hex>`, where `v1` is the HMAC-SHA256 of `<t>.<body as sent>` under
//! the token's secret, and `t` is within the window of now. Secrets come
//! from a file (a mounted Kubernetes Secret), never from the config.

use std::collections::{HashMap, HashSet};
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
        "this project requires signed requests: send X-Capture-Signature: t=<unix seconds>,v1=<hex hmac-sha256 of \"<t>.<body>\">"
    )]
    Missing,
    /// The header is not `t=...,v1=...`.
    #[error("X-Capture-Signature must be t=<unix seconds>,v1=<64 hex digits>")]
    Malformed,
    /// `t` is too far from now.
    #[error("the signature's time is more than {0}s away from the server's; sign again")]
    Expired(u64),
    /// The HMAC does not match.
    #[error("the signature does not match the body for this project token")]
    Mismatch,
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

    /// Checks `header` for `token`'s `body` at `now` (unix seconds).
    pub fn verify(
        &self,
        token: &str,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let (mut time, mut signature) = (None, None);
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", value)) => time = value.parse::<i64>().ok(),
                Some(("v1", value)) => signature = decode_hex(value),
                _ => {}
            }
        }
        let (Some(time), Some(signature)) = (time, signature) else {
            return Err(SignatureError::Malformed);
        };
        if now.abs_diff(time) > self.window.as_secs() {
            return Err(SignatureError::Expired(self.window.as_secs()));
        }
        let secret = self.secrets.get(token).ok_or(SignatureError::Mismatch)?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
        mac.update(time.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // Constant-time comparison.
        mac.verify_slice(&signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// The `v1` value for `body` signed at `time` with `secret` (for clients
/// and tests).
pub fn sign(secret: &[u8], time: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(time.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signing() -> Signing {
        let config = Signatures {
            tokens: vec!["phc_signed".into()],
            secrets_file: "/s".into(),
            window: "5m".into(),
        };
        Signing::new(&config, "phc_signed: s3cret\nphc_other: x\n").expect("valid")
    }

    #[test]
    fn a_good_signature_passes_and_every_fault_is_named() {
        let signing = signing();
        let body = br#"{"event":"e"}"#;
        let now = 1_800_000_000;
        let good = format!("t={now},v1={}", sign(b"s3cret", now, body));
        assert!(signing.requires("phc_signed") && !signing.requires("phc_other"));
        assert_eq!(
            signing.verify("phc_signed", Some(&good), body, now + 10),
            Ok(())
        );
        assert_eq!(
            signing.verify("phc_signed", None, body, now),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            signing.verify("phc_signed", Some("v1=abc"), body, now),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            signing.verify("phc_signed", Some(&good), body, now + 301),
            Err(SignatureError::Expired(300))
        );
        assert_eq!(
            signing.verify("phc_signed", Some(&good), br#"{"event":"f"}"#, now),
            Err(SignatureError::Mismatch)
        );
        let wrong_key = format!("t={now},v1={}", sign(b"guess", now, body));
        assert_eq!(
            signing.verify("phc_signed", Some(&wrong_key), body, now),
            Err(SignatureError::Mismatch)
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
