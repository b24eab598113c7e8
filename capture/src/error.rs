//! The one error type every request path returns, and how it becomes an HTTP
//! response.
//!
//! Handlers and the steps they call (decode, parse, validate, sink) all return
//! [`CaptureError`]; its [`IntoResponse`] impl is the only place that picks a
//! status code and a body. 4xx bodies name what was wrong with the request so
//! an SDK author can fix it; 5xx bodies never echo internals (those go to the
//! log instead).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::sink::SinkError;

/// Everything that can make capture refuse a request.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The body (or a decoded layer of it) could not be read.
    #[error("{0}")]
    Decode(#[from] crate::decode::DecodeError),
    /// The JSON was well formed but not a shape capture accepts.
    #[error("{0}")]
    Payload(String),
    /// An event inside the payload failed validation.
    #[error("event {index}: {reason}")]
    InvalidEvent {
        /// Position of the event in the request, from 0.
        index: usize,
        /// What was wrong with it.
        reason: String,
    },
    /// No usable project token was found or it was malformed.
    #[error("{0}")]
    Token(#[from] crate::token::TokenError),
    /// A session recording request was missing its session id or data.
    #[error("{0}")]
    Recording(String),
    /// The body or a message built from it exceeds a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The sink refused or failed to acknowledge the events.
    #[error("sink: {0}")]
    Sink(#[source] SinkError),
    /// The body could not be read from the connection.
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    /// The client took too long to send its body.
    #[error("the request body took too long to arrive")]
    BodyTimeout,
    /// A rate limit refused the request (when configured to reject).
    #[error("rate limit exceeded; retry after {}s", retry_secs(*retry_after))]
    RateLimited {
        /// When the request would fit.
        retry_after: std::time::Duration,
    },
    /// The token is over quota and its action is `reject`.
    #[error("quota exceeded; retry after {}s", retry_secs(*retry_after))]
    QuotaExceeded {
        /// When the quota window ends (or is checked again).
        retry_after: std::time::Duration,
    },
    /// The token requires signed requests and the signature is missing or
    /// wrong.
    #[error("{0}")]
    Signature(#[from] crate::signing::SignatureError),
    /// An event of the request is held by another request still waiting for
    /// Kafka (a retry racing its original): sent again later, it is either
    /// a duplicate of a delivered event or produced.
    #[error("an event of this request is being captured by another request; retry after {}s", retry_secs(*retry_after))]
    InFlight {
        /// When the other request's hold lapses at the latest.
        retry_after: std::time::Duration,
    },
    /// Redis did not answer and policies fail closed.
    #[error("quota and rate limit checks are unavailable")]
    PolicyUnavailable,
    /// `--max-requests-in-flight` requests are being handled already.
    #[error("too many requests in flight; retry after 1s")]
    Overloaded,
    /// A v1 request's headers are missing or malformed (400).
    #[error("{detail}")]
    Header {
        /// Stable code: `missing_required_headers` or `invalid_header_value`.
        code: &'static str,
        /// Which header and what is allowed.
        detail: String,
    },
    /// A v1 request has no `Authorization` header (401).
    #[error("missing `Authorization: Bearer <project token>` header")]
    MissingAuthorization,
    /// A v1 request's content type or encoding is not one capture reads
    /// (415).
    #[error("{detail}")]
    Unsupported {
        /// Stable code: `unsupported_content_type` or `unsupported_encoding`.
        code: &'static str,
        /// What was sent and what is allowed.
        detail: String,
    },
    /// The request's data would not fit in the memory budget now (other
    /// requests hold it); the same request fits later.
    #[error("the server's request memory budget is in use; retry after {}s", retry_secs(*retry_after))]
    MemoryBudget {
        /// A wait after which room is likely.
        retry_after: std::time::Duration,
    },
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
fn retry_secs(wait: std::time::Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

impl From<SinkError> for CaptureError {
    fn from(err: SinkError) -> Self {
        match err {
            SinkError::MessageTooLarge { size, max } => CaptureError::TooLarge(format!(
                "an event of {size} bytes exceeds the maximum message size of {max} bytes"
            )),
            other => CaptureError::Sink(other),
        }
    }
}

/// JSON error body, shaped like PostHog's own capture errors.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    detail: String,
}

impl CaptureError {
    /// Status code for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            CaptureError::Decode(err) if err.is_too_large() => StatusCode::PAYLOAD_TOO_LARGE,
            CaptureError::Decode(_)
            | CaptureError::Payload(_)
            | CaptureError::InvalidEvent { .. }
            | CaptureError::Recording(_)
            | CaptureError::BodyRead(_)
            | CaptureError::Header { .. } => StatusCode::BAD_REQUEST,
            CaptureError::Unsupported { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CaptureError::MissingAuthorization => StatusCode::UNAUTHORIZED,
            CaptureError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            CaptureError::Token(_) | CaptureError::Signature(_) => StatusCode::UNAUTHORIZED,
            CaptureError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            CaptureError::Sink(_)
            | CaptureError::PolicyUnavailable
            | CaptureError::InFlight { .. }
            | CaptureError::MemoryBudget { .. }
            | CaptureError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            CaptureError::RateLimited { .. } | CaptureError::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// Short, stable code used in the response body and as a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            CaptureError::Decode(err) if err.is_too_large() => "payload_too_large",
            CaptureError::Decode(_) => "invalid_payload",
            CaptureError::Payload(_) => "invalid_payload",
            CaptureError::InvalidEvent { .. } => "invalid_event",
            CaptureError::Token(_) => "invalid_token",
            CaptureError::Signature(_) => "invalid_signature",
            CaptureError::Recording(_) => "invalid_recording",
            CaptureError::TooLarge(_) => "payload_too_large",
            CaptureError::Sink(_) => "sink_unavailable",
            CaptureError::BodyRead(_) => "body_read_failed",
            CaptureError::BodyTimeout => "body_timeout",
            CaptureError::RateLimited { .. } => "rate_limited",
            CaptureError::QuotaExceeded { .. } => "quota_exceeded",
            CaptureError::PolicyUnavailable => "policy_unavailable",
            CaptureError::InFlight { .. } => "in_flight",
            CaptureError::MemoryBudget { .. } => "memory_budget",
            CaptureError::Overloaded => "overloaded",
            CaptureError::Header { code, .. } | CaptureError::Unsupported { code, .. } => code,
            CaptureError::MissingAuthorization => "missing_authorization",
        }
    }
}

/// Where v1 error bodies point for the protocol.
const V1_ERROR_URI: &str = "https://posthog.com/docs/api";

/// A v1 error body, as PostHog's v1 capture shapes it.
#[derive(Debug, Serialize)]
struct V1ErrorBody<'a> {
    error: &'a str,
    error_description: String,
    error_uri: &'a str,
}

impl CaptureError {
    /// The response for a v1 request: the status and `Retry-After` of
    /// [`IntoResponse`], and PostHog's v1 body `{"error",
    /// "error_description", "error_uri"}`.
    pub fn into_v1_response(self) -> Response {
        let error = self.code();
        let error_description = if self.status().is_server_error() {
            SERVER_ERROR_DETAIL.to_owned()
        } else {
            self.to_string()
        };
        let body = V1ErrorBody {
            error,
            error_description,
            error_uri: V1_ERROR_URI,
        };
        let (parts, _) = self.into_response().into_parts();
        (parts, Json(body)).into_response()
    }
}

/// What a 5xx body says: internals go to the log, not to the client.
const SERVER_ERROR_DETAIL: &str = "capture could not store the events, retry later";

impl IntoResponse for CaptureError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let (kind, detail) = if status.is_server_error() {
            // Budget refusals come in floods under a burst; the metric
            // counts them.
            if matches!(
                self,
                CaptureError::MemoryBudget { .. } | CaptureError::Overloaded
            ) {
                tracing::debug!(error = %self, code, "request refused for memory");
            } else {
                tracing::warn!(error = %self, code, "request failed on the server side");
            }
            ("server_error", SERVER_ERROR_DETAIL.to_owned())
        } else {
            let kind = if status == StatusCode::UNAUTHORIZED {
                "authentication_error"
            } else {
                "validation_error"
            };
            (kind, self.to_string())
        };
        let retry_after = match &self {
            CaptureError::RateLimited { retry_after }
            | CaptureError::QuotaExceeded { retry_after }
            | CaptureError::MemoryBudget { retry_after } => {
                Some(HeaderValue::from(retry_secs(*retry_after)))
            }
            // The other request usually settles within a round trip to
            // Kafka; its hold is only the bound.
            CaptureError::Overloaded => Some(HeaderValue::from_static("1")),
            CaptureError::InFlight { retry_after } => {
                Some(HeaderValue::from(retry_secs(*retry_after).min(5)))
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(HeaderValue::from_static("5")),
            _ => None,
        };
        let kind = if status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limit_error"
        } else {
            kind
        };
        let mut response = (status, Json(ErrorBody { kind, code, detail })).into_response();
        if let Some(value) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
