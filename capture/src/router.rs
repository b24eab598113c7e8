//! HTTP surface: the capture endpoints, health, metrics, and the one request
//! pipeline every capture endpoint shares.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests drive it
//! with `tower::ServiceExt::oneshot` and no socket. The pipeline is
//! read body -> decode -> parse -> validate and enrich (one candidate per
//! event) -> policies -> sink -> settle, and the response renders the
//! events' verdicts (see [`crate::verdict`]): 200 only when every event to
//! produce was acknowledged.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::budget::{Lease, MemoryBudget};
use crate::clock::Clock;
use crate::config::LimitsConfig;
use crate::decode::{DecodeLimits, Encoded, decode};
use crate::error::CaptureError;
use crate::metrics as m;
use crate::parse::parse;
use crate::policy::Policy;
use crate::process::{Endpoint, RequestContext, analytics_candidates};
use crate::recordings::recording_candidates;
use crate::route::{DataType, Topics};
use crate::sink::{Health, Sink, SinkError};
use crate::timestamp;
use crate::token::Masked;
use crate::verdict::{Answer, Candidates};

/// The capture endpoints; each is served with and without a trailing slash.
pub const CAPTURE_ROUTES: [(&str, Endpoint); 7] = [
    ("/e", Endpoint::Event),
    ("/capture", Endpoint::Event),
    ("/track", Endpoint::Event),
    ("/i/v0/e", Endpoint::Event),
    ("/engage", Endpoint::Engage),
    ("/batch", Endpoint::Batch),
    ("/s", Endpoint::Recordings),
];

/// Request limits, resolved from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Body cap for single-event endpoints.
    pub event_body_bytes: usize,
    /// Body cap for `/batch`.
    pub batch_body_bytes: usize,
    /// Body cap for `/s`.
    pub recording_body_bytes: usize,
    /// Body cap for the v1 endpoint, as sent.
    pub v1_body_bytes: usize,
    /// Cap on a v1 body once decompressed.
    pub v1_decompressed_bytes: usize,
    /// Caps applied while decoding.
    pub decode: DecodeLimits,
    /// Largest message value.
    pub max_message_bytes: usize,
    /// Most events in one request.
    pub max_events: usize,
    /// Longest time a client may take to send its body.
    pub body_read_timeout: Duration,
}

impl Limits {
    /// Limits from the static configuration.
    pub fn from_config(config: &LimitsConfig, body_read_timeout: Duration) -> Self {
        Limits {
            event_body_bytes: config.max_event_body_bytes,
            batch_body_bytes: config.max_batch_body_bytes,
            recording_body_bytes: config.max_recording_body_bytes,
            v1_body_bytes: config.max_v1_body_bytes,
            v1_decompressed_bytes: config.max_v1_decompressed_bytes,
            decode: DecodeLimits {
                max_decompressed_bytes: config.max_decompressed_bytes,
                max_json_depth: config.max_json_depth.get() as usize,
            },
            max_message_bytes: config.max_message_bytes,
            max_events: config.max_events_per_request.get() as usize,
            body_read_timeout,
        }
    }

    fn body_limit(&self, endpoint: Endpoint) -> usize {
        match endpoint {
            Endpoint::Event | Endpoint::Engage => self.event_body_bytes,
            Endpoint::Batch => self.batch_body_bytes,
            Endpoint::Recordings => self.recording_body_bytes,
            Endpoint::V1 => self.v1_body_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            event_body_bytes: 2_000_000,
            batch_body_bytes: 20_000_000,
            recording_body_bytes: 25_000_000,
            v1_body_bytes: 10 << 20,
            v1_decompressed_bytes: 50 << 20,
            decode: DecodeLimits {
                max_decompressed_bytes: 64_000_000,
                max_json_depth: 64,
            },
            max_message_bytes: 1_000_000,
            max_events: 10_000,
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything a request handler needs, shared by all requests.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    sink: Arc<dyn Sink>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    shutting_down: AtomicBool,
    metrics: Option<PrometheusHandle>,
    policy: Arc<Policy>,
    live: Arc<crate::live::Live>,
    replays: crate::signing::Replays,
    budget: MemoryBudget,
    /// One permit per request being handled (`--max-requests-in-flight`).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// `--historical-after`.
    historical_after: Option<chrono::Duration>,
    /// Capture's own ingestion warnings.
    warnings: Arc<crate::warnings::Warnings>,
}

/// Requests handled at once unless configured otherwise.
const DEFAULT_MAX_IN_FLIGHT: usize = 4096;

impl AppState {
    /// State for a router producing to `sink`.
    pub fn new(sink: Arc<dyn Sink>, clock: Arc<dyn Clock>, topics: Topics, limits: Limits) -> Self {
        AppState(Arc::new(Inner {
            sink,
            clock,
            limits,
            shutting_down: AtomicBool::new(false),
            metrics: None,
            policy: Arc::new(Policy::disabled()),
            live: Arc::new(crate::live::Live::new(crate::live::Applied::empty_over(
                &topics,
            ))),
            replays: crate::signing::Replays::default(),
            budget: MemoryBudget::new(
                crate::config::request_budget_of(crate::config::DEFAULT_MEMORY_LIMIT),
                Duration::from_secs(1),
            ),
            in_flight: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_IN_FLIGHT)),
            historical_after: None,
            warnings: Arc::new(crate::warnings::Warnings::off()),
        }))
    }

    /// Writes ingestion warnings with `warnings`. Call before cloning the
    /// state.
    pub fn with_warnings(self, warnings: crate::warnings::Warnings) -> Self {
        self.edit(|inner| inner.warnings = Arc::new(warnings))
    }

    /// Sends analytics events older than `age` to the historical topic.
    /// Call before cloning the state.
    pub fn with_historical_after(self, age: Option<Duration>) -> Self {
        let age = age.and_then(|age| chrono::Duration::from_std(age).ok());
        self.edit(|inner| inner.historical_after = age)
    }

    /// Handles at most `max` requests at once; more get 503. Call before
    /// cloning the state.
    pub fn with_max_in_flight(self, max: usize) -> Self {
        self.edit(|inner| inner.in_flight = Arc::new(tokio::sync::Semaphore::new(max)))
    }

    /// Shares `budget` among requests. Call before cloning the state.
    pub fn with_budget(self, budget: MemoryBudget) -> Self {
        self.edit(|inner| inner.budget = budget)
    }

    /// Takes the runtime config from `live` (one version per request). Call
    /// before cloning the state.
    pub fn with_live(self, live: Arc<crate::live::Live>) -> Self {
        self.edit(|inner| inner.live = live)
    }

    /// Serves `/metrics` from `handle`. Call before cloning the state.
    pub fn with_metrics(self, handle: PrometheusHandle) -> Self {
        self.edit(|inner| inner.metrics = Some(handle))
    }

    /// Applies `policy` (quotas, dedup, rate limits) to every request. Call
    /// before cloning the state.
    pub fn with_policy(self, policy: Arc<Policy>) -> Self {
        self.edit(|inner| inner.policy = policy)
    }

    /// Applies a `with_*` setting. Once the state is cloned (handed to a
    /// router or a task) a setting could reach only some of the copies, so
    /// that is a bug in the caller, and it panics rather than dropping the
    /// setting unseen.
    fn edit(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        let Some(inner) = Arc::get_mut(&mut self.0) else {
            panic!("AppState::with_* called after the state was cloned; configure it first");
        };
        change(inner);
        self
    }

    /// Marks the server as shutting down: readiness fails from now on.
    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::SeqCst);
    }

    /// The sink requests go to.
    pub fn sink(&self) -> &Arc<dyn Sink> {
        &self.0.sink
    }
}

/// Builds the router.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/", get(|| async { "capture" }))
        .route("/_liveness", get(|| async { "ok" }))
        .route("/_readiness", get(readiness))
        .route("/metrics", get(metrics_endpoint));
    for (path, endpoint) in CAPTURE_ROUTES {
        let handler = on(
            MethodFilter::GET.or(MethodFilter::POST),
            move |State(state): State<AppState>, req: Request| capture(state, endpoint, req),
        )
        .options(|| async { StatusCode::OK });
        router = router
            .route(path, handler.clone())
            .route(&format!("{path}/"), handler);
    }
    let v1 =
        axum::routing::post(|State(state): State<AppState>, req: Request| capture_v1(state, req))
            .options(|| async { StatusCode::OK });
    router = router
        .route(crate::v1::PATH, v1.clone())
        .route(&format!("{}/", crate::v1::PATH), v1);
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_headers(AllowHeaders::mirror_request())
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_credentials(true)
        .max_age(Duration::from_secs(3600));
    router
        .layer(cors)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// The success body, the same for every accepted request.
const SUCCESS_BODY: &str = r#"{"status":"Ok"}"#;

/// The `status` label of a response: the statuses capture answers with, so
/// the label's values stay a small fixed set.
fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        204 => "204",
        400 => "400",
        401 => "401",
        408 => "408",
        413 => "413",
        429 => "429",
        503 => "503",
        _ if status.is_server_error() => "5xx",
        _ => "4xx",
    }
}

async fn capture(state: AppState, endpoint: Endpoint, req: Request) -> Response {
    let started = Instant::now();
    let query = CaptureQuery::parse(req.uri().query());
    // `navigator.sendBeacon` never reads the answer: send none.
    let success = if query.beacon {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::OK
    };
    let result = detached(&state, move |state| async move {
        handle(&state, endpoint, req, query).await
    })
    .await;
    let status = result
        .as_ref()
        .map_or_else(CaptureError::status, |_| success);
    record(endpoint, status, started);
    match result {
        Ok(_) if success == StatusCode::NO_CONTENT => success.into_response(),
        Ok(answer) if answer.quota_limited.is_empty() => {
            ([(header::CONTENT_TYPE, "application/json")], SUCCESS_BODY).into_response()
        }
        Ok(answer) => {
            // PostHog's shape, `status` first: {"status":"Ok","quota_limited":["events"]}.
            let mut body = String::from(r#"{"status":"Ok","quota_limited":["#);
            for (i, kind) in answer.quota_limited.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push('"');
                body.push_str(kind.as_str());
                body.push('"');
            }
            body.push_str("]}");
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(err) => {
            if !status.is_server_error() {
                tracing::debug!(error = %err, code = err.code(), "request refused");
            }
            err.into_response()
        }
    }
}

/// Runs `work` on a task of its own, holding an in-flight permit (none
/// left: 503 `overloaded`). A client that goes away does not cancel the
/// request half way: once its policies reserved something in Redis, it
/// runs on to the settle, whatever happens to the connection.
async fn detached<T, F>(
    state: &AppState,
    work: impl FnOnce(AppState) -> F,
) -> Result<T, CaptureError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, CaptureError>> + Send + 'static,
{
    let Ok(permit) = Arc::clone(&state.0.in_flight).try_acquire_owned() else {
        metrics::counter!(m::HTTP_OVERLOADED).increment(1);
        return Err(CaptureError::Overloaded);
    };
    let work = work(state.clone());
    let work = async move {
        let _permit = permit;
        work.await
    };
    // The request's span (its request id) goes along into the task.
    match tokio::spawn(tracing::Instrument::in_current_span(work)).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(CaptureError::Sink(SinkError::Timeout)),
    }
}

/// Counts an answered request and its duration.
fn record(endpoint: Endpoint, status: StatusCode, started: Instant) {
    metrics::counter!(m::HTTP_REQUESTS, "endpoint" => endpoint.label(), "status" => status_label(status))
        .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_SECONDS, "endpoint" => endpoint.label())
        .record(started.elapsed().as_secs_f64());
}

/// `/i/v1/analytics/events`: a result per event (see [`crate::v1`]).
async fn capture_v1(state: AppState, req: Request) -> Response {
    let started = Instant::now();
    let result = detached(
        &state,
        move |state| async move { handle_v1(&state, req).await },
    )
    .await;
    let status = result
        .as_ref()
        .map_or_else(CaptureError::status, |_| StatusCode::OK);
    record(Endpoint::V1, status, started);
    match result {
        Ok((body, retry)) => {
            let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
            if retry {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            response
        }
        Err(err) => {
            if !status.is_server_error() {
                tracing::debug!(error = %err, code = err.code(), "v1 request refused");
            }
            err.into_v1_response()
        }
    }
}

async fn handle(
    state: &AppState,
    endpoint: Endpoint,
    req: Request,
    query: CaptureQuery,
) -> Result<Answer, CaptureError> {
    let inner = &state.0;
    let now = inner.clock.now();
    let (parts, body) = req.into_parts();
    // Everything this request holds in memory is counted here, until it is
    // answered.
    let mut lease = inner.budget.lease();
    let limit = inner.limits.body_limit(endpoint);
    let body =
        read_within_deadline(inner, endpoint, body, &parts.headers, limit, &mut lease).await?;

    let header_text =
        |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let form = header_text(header::CONTENT_TYPE).is_some_and(|ct| {
        ct.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let encoded = Encoded {
        body: &body,
        query_data: query.data.as_deref(),
        compression_hint: query
            .compression
            .as_deref()
            .or_else(|| header_text(header::CONTENT_ENCODING)),
        form,
    };
    let decoded = decode_within(&mut lease, body.len(), |grow| {
        decode(encoded, inner.limits.decode, grow)
    })?;
    let payload = parse(&decoded, inner.limits.max_events)?;
    // Building the messages: about the decoded text again, and a share per
    // event for what capture adds and keeps beside it.
    lease
        .grow_to(body.len() + 2 * decoded.len() + payload.events.len() * PER_EVENT_BYTES)
        .await?;
    // One runtime config for the whole request, whatever reloads meanwhile.
    let runtime = inner.live.current();
    let signed = if runtime.signing.is_some() {
        let token = crate::parse::request_token(&payload)?;
        verify_signature(inner, &runtime, &token, &parts, &body, now)?
    } else {
        None
    };

    let events = payload.events.len();
    metrics::counter!(m::EVENTS_RECEIVED, "endpoint" => endpoint.label()).increment(events as u64);
    let ctx = request_context(inner, &runtime, endpoint, now, &parts, query.sent_at);
    let refused = |err: &CaptureError, dropped: usize| refuse(inner, signed.as_ref(), err, dropped);
    let built = match endpoint {
        Endpoint::Recordings => recording_candidates(payload, &ctx),
        _ => analytics_candidates(payload, &ctx),
    };
    let mut request = built.inspect_err(|err| refused(err, events))?;
    let answer = deliver(inner, &mut request, &runtime, now).await;
    match &answer {
        Err(err) => refused(err, request.not_produced()),
        Ok(_) => tracing::debug!(token = %Masked(&request.token), events, "request accepted"),
    }
    answer
}

/// What the shared pipeline needs to know about a request.
fn request_context<'a>(
    inner: &'a Inner,
    runtime: &'a crate::live::Applied,
    endpoint: Endpoint,
    now: chrono::DateTime<chrono::Utc>,
    parts: &axum::http::request::Parts,
    query_sent_at: Option<chrono::DateTime<chrono::Utc>>,
) -> RequestContext<'a> {
    RequestContext {
        endpoint,
        now,
        ip: client_ip(
            &parts.headers,
            parts.extensions.get::<ConnectInfo<SocketAddr>>(),
        ),
        query_sent_at,
        topics: &runtime.topics,
        max_message_bytes: inner.limits.max_message_bytes,
        dedup_ids: inner.policy.dedups(&runtime.overrides),
        runtime,
        historical_after: inner.historical_after,
        warnings: &inner.warnings,
    }
}

/// A request refused after parsing: its events count as dropped, and its
/// signature may be sent again.
fn refuse(
    inner: &Inner,
    signed: Option<&crate::signing::Verified>,
    err: &CaptureError,
    dropped: usize,
) {
    metrics::counter!(m::EVENTS_DROPPED, "cause" => err.code()).increment(dropped as u64);
    if let Some(verified) = signed {
        inner.replays.forget(verified);
    }
}

/// Policies, sink, settle: sets every event's final verdict and renders the
/// v0 answer from them.
async fn deliver(
    inner: &Inner,
    request: &mut Candidates,
    runtime: &crate::live::Applied,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Answer, CaptureError> {
    let error = produce(inner, request, runtime, now).await?;
    match (request.answer(), error) {
        (Some(answer), None) => Ok(answer),
        (_, error) => Err(CaptureError::from(error.unwrap_or(SinkError::Timeout))),
    }
}

/// Policies, sink, settle: sets every event's final verdict. A policy that
/// refuses the request is an `Err`; the sink's first error, if it had one,
/// is returned (and counted) beside the verdicts, which say which events
/// it failed.
async fn produce(
    inner: &Inner,
    request: &mut Candidates,
    runtime: &crate::live::Applied,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<SinkError>, CaptureError> {
    let checked = inner
        .policy
        .check(request, &runtime.topics, now, &runtime.overrides)
        .await;
    let warn = |kind: &'static str, details: serde_json::Value| {
        let topic = &runtime.topics.client_warnings;
        inner
            .warnings
            .warn(&request.token, kind, details, topic, now);
    };
    let reservation = match checked {
        Ok(reservation) => reservation,
        Err(err) => {
            match &err {
                CaptureError::RateLimited { .. } => warn("rate_limited", serde_json::json!({})),
                CaptureError::QuotaExceeded { .. } => {
                    warn("quota_limited", serde_json::json!({}));
                }
                _ => {}
            }
            return Err(err);
        }
    };
    if let Some(kind) = request.events.iter().find_map(|e| match e.verdict {
        crate::verdict::Verdict::Limited(kind) => Some(kind),
        _ => None,
    }) {
        warn("quota_limited", serde_json::json!({"type": kind.as_str()}));
    }
    let mut error = None;
    if request.any_to_produce() {
        let messages = request.take_messages();
        // Per data type, so the counters are touched once per request.
        let mut kinds: Vec<(DataType, u64)> = Vec::with_capacity(2);
        let sent: Vec<DataType> = messages.iter().map(|m| m.kind).collect();
        let delivery = inner.sink.send(Arc::new(messages)).await;
        for (kind, acked) in sent.into_iter().zip(&delivery.acked) {
            if !*acked {
                continue;
            }
            match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, count)) => *count += 1,
                None => kinds.push((kind, 1)),
            }
        }
        for (kind, count) in kinds {
            metrics::counter!(m::EVENTS_PRODUCED, "data_type" => kind.label()).increment(count);
        }
        request.delivered(&delivery);
        error = delivery.error;
    }
    // Before answering: a client told 503 may send again at once, and its
    // retry must find the markers released and the quota given back.
    if let Some(reservation) = reservation {
        inner.policy.settle(request, reservation).await;
    }
    if request.count(crate::verdict::Verdict::Failed) > 0 && error.is_none() {
        error = Some(SinkError::Timeout);
    }
    if let Some(err) = &error {
        metrics::counter!(m::SINK_ERRORS, "sink" => inner.sink.name(), "error" => err.label())
            .increment(1);
    }
    Ok(error)
}

/// The whole body within `--body-read-timeout` of the headers, however it
/// is paced (a client dripping a byte at a time is cut off too), within
/// `limit`, held in `lease`.
async fn read_within_deadline(
    inner: &Inner,
    endpoint: Endpoint,
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    lease: &mut Lease,
) -> Result<Bytes, CaptureError> {
    let body = tokio::time::timeout(
        inner.limits.body_read_timeout,
        read_body(body, headers, limit, lease),
    )
    .await
    .map_err(|_| CaptureError::BodyTimeout)??;
    metrics::histogram!(m::BODY_BYTES, "endpoint" => endpoint.label()).record(body.len() as f64);
    Ok(body)
}

/// Runs a decoder whose every buffer is first asked of `lease` (which
/// already holds the `body` bytes); a budget refusal is the request's
/// error rather than the decoder's.
fn decode_within<T>(
    lease: &mut Lease,
    body: usize,
    decoder: impl FnOnce(&mut dyn FnMut(usize) -> bool) -> Result<T, crate::decode::DecodeError>,
) -> Result<T, CaptureError> {
    let mut decoding = body;
    let mut refused = None;
    let decoded = decoder(&mut |more| {
        decoding += more;
        lease
            .try_grow_to(decoding)
            .map_err(|err| refused = Some(err))
            .is_ok()
    });
    decoded.map_err(|err| refused.take().unwrap_or_else(|| err.into()))
}

/// Checks the request's signature when the runtime config asks `token` to
/// sign, and admits it once.
fn verify_signature(
    inner: &Inner,
    runtime: &crate::live::Applied,
    token: &str,
    parts: &axum::http::request::Parts,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<crate::signing::Verified>, CaptureError> {
    let Some(signing) = runtime.signing.as_ref().filter(|s| s.requires(token)) else {
        return Ok(None);
    };
    let header = parts
        .headers
        .get(crate::signing::HEADER)
        .and_then(|v| v.to_str().ok());
    // What was sent, before any decoding.
    let sent = crate::signing::Signed {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        body,
    };
    let verified = signing.verify(token, header, &sent, now.timestamp())?;
    inner.replays.admit(verified, now.timestamp())?;
    Ok(Some(verified))
}

/// A v1 request: headers, body, the events' checks, then the shared
/// pipeline for those kept; every event gets its result.
async fn handle_v1(state: &AppState, req: Request) -> Result<(String, bool), CaptureError> {
    use crate::v1::{Checked, Outcome};
    let inner = &state.0;
    let now = inner.clock.now();
    let (parts, body) = req.into_parts();
    let headers = crate::v1::headers(&parts.headers)?;
    let runtime = inner.live.current();
    runtime.check_token(&headers.token)?;
    let mut lease = inner.budget.lease();
    let body = read_within_deadline(
        inner,
        Endpoint::V1,
        body,
        &parts.headers,
        inner.limits.v1_body_bytes,
        &mut lease,
    )
    .await?;
    let limits = crate::decode::DecodeLimits {
        max_decompressed_bytes: inner.limits.v1_decompressed_bytes,
        ..inner.limits.decode
    };
    let decoded = decode_within(&mut lease, body.len(), |grow| {
        crate::decode::decode_content(&body, headers.encoding, limits, grow)
    })?;
    // What parsing builds beside the text: copies of each event's fields
    // (within the text's size) and a record per event. Every event has a
    // `"uuid"` key, so their count bounds the events (properties may add
    // some: the bound only asks more of the budget).
    let events_at_most = memchr::memmem::find_iter(decoded.as_bytes(), b"\"uuid\"").count();
    lease
        .grow_to(body.len() + 2 * decoded.len() + events_at_most * V1_EVENT_BYTES)
        .await?;
    let batch = crate::v1::parse(&decoded)?;
    if batch.batch.len() > inner.limits.max_events {
        return Err(crate::parse::too_many(inner.limits.max_events));
    }
    let checked = crate::v1::check(&batch, headers.lib.as_ref())?;
    let signed = verify_signature(inner, &runtime, &headers.token, &parts, &body, now)?;
    let events = checked.len();
    metrics::counter!(m::EVENTS_RECEIVED, "endpoint" => Endpoint::V1.label())
        .increment(events as u64);
    let kept: Vec<&str> = checked
        .iter()
        .filter_map(|(uuid, c)| match c {
            Checked::Keep(text) => Some(text.as_str()),
            Checked::Drop(why) => {
                metrics::counter!(m::EVENTS_DROPPED, "cause" => *why).increment(1);
                inner.warnings.warn(
                    &headers.token,
                    why,
                    serde_json::json!({"uuid": uuid}),
                    &runtime.topics.client_warnings,
                    now,
                );
                None
            }
        })
        .collect();
    let mut verdicts = Vec::new().into_iter();
    if !kept.is_empty() {
        let text = crate::v1::v0_batch(&headers, batch.historical_migration == Some(true), &kept);
        lease
            .grow_to(body.len() + 2 * decoded.len() + 2 * text.len() + kept.len() * PER_EVENT_BYTES)
            .await?;
        let payload = parse(&text, usize::MAX)?;
        let ctx = request_context(inner, &runtime, Endpoint::V1, now, &parts, None);
        let refused =
            |err: &CaptureError, dropped: usize| refuse(inner, signed.as_ref(), err, dropped);
        let mut request =
            analytics_candidates(payload, &ctx).inspect_err(|err| refused(err, kept.len()))?;
        request.retry = headers.attempt > 1;
        if let Some(err) = produce(inner, &mut request, &runtime, now)
            .await
            .inspect_err(|err| refused(err, request.not_produced()))?
        {
            let failed = request.count(crate::verdict::Verdict::Failed);
            metrics::counter!(m::EVENTS_DROPPED, "cause" => CaptureError::from(err).code())
                .increment(failed as u64);
        }
        verdicts = request
            .events
            .iter()
            .map(|e| e.verdict)
            .collect::<Vec<_>>()
            .into_iter();
    }
    let results: Vec<(uuid::Uuid, Outcome)> = checked
        .into_iter()
        .map(|(uuid, c)| match c {
            Checked::Drop(why) => (uuid, Outcome::Drop(why.into())),
            Checked::Keep(_) => (
                uuid,
                verdicts
                    .next()
                    .map_or(Outcome::Retry("not_persisted"), crate::v1::result_of),
            ),
        })
        .collect();
    tracing::debug!(token = %Masked(&headers.token), events, attempt = headers.attempt,
        request_id = %headers.request_id, "v1 request answered");
    Ok(crate::v1::render(&results))
}

/// What one event's candidate and message take beside its text (fields
/// capture adds to the value, headers, key, the candidate itself): an
/// estimate rounded up, not a measurement; `tests/memory.rs` checks that
/// the budget as a whole holds.
const PER_EVENT_BYTES: usize = 1024;

/// What one parsed and checked v1 event holds beside its text: its fields'
/// record, its uuid and result; rounded up.
const V1_EVENT_BYTES: usize = 256;

/// Reads the whole body within `limit`, growing `lease` to hold it before
/// each part is kept.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    lease: &mut Lease,
) -> Result<Bytes, CaptureError> {
    let too_large = || {
        CaptureError::TooLarge(format!(
            "request body exceeds the {limit}-byte limit of this endpoint"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let declared = declared.map_or(0, |len| len as usize);
    lease.grow_to(declared).await?;
    let failed = |err: axum::BoxError| {
        if caused_by::<LengthLimitError>(&*err) {
            too_large()
        } else {
            CaptureError::BodyRead(err.to_string())
        }
    };
    let mut body = Limited::new(body, limit);
    // Most bodies come in one piece, kept as it is; more pieces are copied
    // together.
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(failed)?.into_data() else {
            continue;
        };
        let held = first.as_ref().map_or(joined.len(), Bytes::len);
        lease.grow_to(held + data.len()).await?;
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(kept) => {
                joined.reserve_exact(declared.max(kept.len() + data.len()));
                joined.extend_from_slice(&kept);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}

/// Whether `err` or anything in its source chain is an `E` (axum wraps
/// body errors, so a plain downcast misses them).
fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| e.is::<E>())
}

/// The query parameters SDKs send.
#[derive(Debug, Default)]
struct CaptureQuery {
    data: Option<String>,
    compression: Option<String>,
    sent_at: Option<chrono::DateTime<chrono::Utc>>,
    beacon: bool,
}

impl CaptureQuery {
    fn parse(query: Option<&str>) -> Self {
        let mut out = CaptureQuery::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "data" => out.data = Some(value.into_owned()),
                "compression" => out.compression = Some(value.into_owned()),
                "beacon" => out.beacon = matches!(value.as_ref(), "1" | "true" | ""),
                "_" => {
                    out.sent_at = value
                        .parse::<f64>()
                        .ok()
                        .filter(|ms| ms.is_finite())
                        .and_then(|ms| timestamp::from_millis(ms as i64));
                }
                _ => {}
            }
        }
        out
    }
}

/// The client's address: `X-Forwarded-For` (first hop), `Forwarded: for=`,
/// `X-Real-Ip`, then the socket. Capture sits behind a load balancer in every
/// real deployment, so the proxy headers are trusted.
fn client_ip(headers: &HeaderMap, socket: Option<&ConnectInfo<SocketAddr>>) -> String {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let from_xff = text("x-forwarded-for")
        .and_then(|v| v.split(',').next())
        .and_then(parse_ip);
    let from_forwarded = || {
        text("forwarded").and_then(|v| {
            v.split([';', ','])
                .filter_map(|part| {
                    let (key, value) = part.trim().split_once('=')?;
                    key.eq_ignore_ascii_case("for").then_some(value)
                })
                .find_map(parse_ip)
        })
    };
    let from_real_ip = || text("x-real-ip").and_then(parse_ip);
    from_xff
        .or_else(from_forwarded)
        .or_else(from_real_ip)
        .or_else(|| socket.map(|ConnectInfo(addr)| addr.ip()))
        .map_or_else(|| "127.0.0.1".to_owned(), |ip| ip.to_string())
}

/// Parses an address as proxies write it: bare, quoted, bracketed, with a port.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    text.rsplit_once(':')
        .and_then(|(host, _port)| host.parse().ok())
}

/// Whether the server should get traffic; also kept in the `capture_ready`
/// gauge so a scrape shows it without probing.
fn health(state: &AppState) -> Health {
    let health = if state.0.shutting_down.load(Ordering::SeqCst) {
        Health::NotReady("shutting down".into())
    } else {
        state.0.sink.health()
    };
    let ready = !matches!(health, Health::NotReady(_));
    metrics::gauge!(m::READY).set(if ready { 1.0 } else { 0.0 });
    health
}

async fn readiness(State(state): State<AppState>) -> Response {
    match health(&state) {
        // The hash lets the operator (and tests) see which runtime config
        // each pod has in force.
        Health::Ready => (
            StatusCode::OK,
            format!("ready\nruntime-config {}\n", state.0.live.current().hash),
        )
            .into_response(),
        Health::Spooling(note) => (
            StatusCode::OK,
            format!(
                "ready\nspooling: {note}\nruntime-config {}\n",
                state.0.live.current().hash
            ),
        )
            .into_response(),
        Health::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
            .into_response(),
    }
}

async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    match &state.0.metrics {
        Some(handle) => {
            health(&state);
            m::collect_process();
            metrics::gauge!(m::MEMORY_BUDGET_HELD).set(state.0.budget.held() as f64);
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle.render(),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn state() -> AppState {
        AppState::new(
            Arc::new(crate::sink::NoopSink),
            Arc::new(crate::clock::SystemClock),
            Topics::default(),
            Limits::default(),
        )
    }

    #[test]
    fn a_setting_before_the_state_is_shared_applies() {
        let state = state().with_max_in_flight(3);
        assert_eq!(state.0.in_flight.available_permits(), 3);
    }

    #[test]
    #[should_panic(expected = "after the state was cloned")]
    fn a_setting_after_the_state_is_shared_is_refused_not_dropped() {
        let state = state();
        let _router_copy = state.clone();
        let _ = state.with_max_in_flight(3);
    }

    #[test]
    fn client_ip_prefers_proxy_headers_in_order() {
        let socket = ConnectInfo(SocketAddr::from(([10, 9, 8, 7], 5555)));
        let mut headers = HeaderMap::new();
        assert_eq!(client_ip(&headers, Some(&socket)), "10.9.8.7");
        headers.insert("x-real-ip", HeaderValue::from_static("1.1.1.1"));
        assert_eq!(client_ip(&headers, Some(&socket)), "1.1.1.1");
        headers.insert(
            "forwarded",
            HeaderValue::from_static("proto=https;for=\"[2001:db8::1]:4711\""),
        );
        assert_eq!(client_ip(&headers, Some(&socket)), "2001:db8::1");
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.5, 10.0.0.1"),
        );
        assert_eq!(client_ip(&headers, Some(&socket)), "203.0.113.5");
        headers.insert("x-forwarded-for", HeaderValue::from_static("unknown"));
        assert_eq!(client_ip(&headers, Some(&socket)), "2001:db8::1");
    }

    #[test]
    fn query_parameters_are_read() {
        let q = CaptureQuery::parse(Some("compression=gzip-js&ip=1&_=1694769305355&ver=1.78.5"));
        assert_eq!(q.compression.as_deref(), Some("gzip-js"));
        assert_eq!(
            q.sent_at.map(timestamp::format).as_deref(),
            Some("2023-09-15T09:15:05.355000+00:00")
        );
        assert!(CaptureQuery::parse(Some("_=NaN")).sent_at.is_none());
        assert!(CaptureQuery::parse(Some("beacon=1")).beacon);
        assert!(!CaptureQuery::parse(Some("beacon=0")).beacon);
    }
}
