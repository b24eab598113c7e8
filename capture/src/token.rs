//! Project token rules, and how tokens appear in logs.
//!
//! A request carries exactly one project token (PostHog's `phc_...` API key).
//! This module decides whether a token is acceptable; it does not know which
//! tokens exist (that is the auth plugins' job in a later layer).

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 64;

/// Prefix of PostHog personal API keys, which must never be used for capture.
const PERSONAL_KEY_PREFIX: &str = "phx_";

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// No token in the batch, the events or their properties.
    #[error("no project token: send `api_key` or `token` in the body, or `token` in properties")]
    Missing,
    /// The token is an empty string.
    #[error("project token is empty")]
    Empty,
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("project token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    /// The token has non-ASCII or control characters.
    #[error("project token must be printable ASCII")]
    NotAscii,
    /// The token has a brace, which would break its Redis hash tag.
    #[error("project token must not contain `{{` or `}}`")]
    Brace,
    /// A personal API key was sent instead of a project token.
    #[error("personal API keys (phx_...) cannot be used to capture events; use the project token")]
    PersonalKey,
    /// Events in one request carry different tokens.
    #[error("events in one request carry different project tokens")]
    Mixed,
    /// The runtime config's `tokens.deny` lists the token.
    #[error("this project token may not send events here (runtime config tokens.deny)")]
    Denied,
    /// The runtime config's `tokens.allow` is set and does not list it.
    #[error("this project token may not send events here (not in runtime config tokens.allow)")]
    NotAllowed,
}

/// Checks one token against the rules above.
pub fn validate(token: &str) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong);
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotAscii);
    }
    // Redis keys carry the token as their hash tag: `{token}`.
    if token.contains(['{', '}']) {
        return Err(TokenError::Brace);
    }
    if token.starts_with(PERSONAL_KEY_PREFIX) {
        return Err(TokenError::PersonalKey);
    }
    Ok(())
}

/// A token as it may appear in logs: enough to tell projects apart, not
/// enough to send events as them.
#[derive(Debug, Clone, Copy)]
pub struct Masked<'a>(pub &'a str);

impl std::fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.0;
        let visible: String = token.chars().take(6).collect();
        if token.chars().count() <= 10 {
            f.write_str("***")
        } else {
            write!(f, "{visible}***")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_tokens_are_accepted() {
        assert_eq!(
            validate("phc_qgUFp5wz2BjC4RsFjMGpQ3PGDrsi6Q0CG0CP4NAac0I"),
            Ok(())
        );
        assert_eq!(validate("abcdef123456"), Ok(()));
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        assert_eq!(validate(""), Err(TokenError::Empty));
        assert_eq!(validate(&"a".repeat(65)), Err(TokenError::TooLong));
        assert_eq!(validate(&"a".repeat(64)), Ok(()));
        assert_eq!(validate("phc_é"), Err(TokenError::NotAscii));
        assert_eq!(validate("phc_\0"), Err(TokenError::NotAscii));
        assert_eq!(validate("phc_ a"), Err(TokenError::NotAscii));
        assert_eq!(validate("phx_secret"), Err(TokenError::PersonalKey));
        assert_eq!(validate("}phc"), Err(TokenError::Brace));
        assert_eq!(validate("phc{1"), Err(TokenError::Brace));
    }

    #[test]
    fn masked_tokens_keep_only_a_prefix() {
        let token = "phc_qgUFp5wz2BjC4RsFjMGpQ3PGDrsi6Q0CG0CP4NAac0I";
        assert_eq!(Masked(token).to_string(), "phc_qg***");
        assert_eq!(Masked("short").to_string(), "***");
    }
}
