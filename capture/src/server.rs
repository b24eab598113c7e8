//! Process lifecycle: building the sink from configuration, accepting
//! connections, and shutting down without losing acknowledged work.
//!
//! [`serve`] owns the accept loop (hyper, with a header read timeout that
//! `axum::serve` does not expose) and drains in-flight requests when its
//! shutdown future resolves. [`run`] wires configuration, sink, router and
//! shutdown together for the binary.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::clock::SystemClock;
use crate::config::{Config, SinkKind};
use crate::policy::Policy;
use crate::router::{AppState, Limits, app};
use crate::sink::kafka::{KafkaSink, ensure_topics};
use crate::sink::{JsonLinesSink, NoopSink, Sink, SinkError, SpoolingSink};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The sink could not be created.
    #[error("cannot start the {sink} sink: {source}")]
    Sink {
        /// Which sink.
        sink: &'static str,
        /// Why.
        #[source]
        source: SinkError,
    },
    /// The spool directory cannot be opened or recovered.
    #[error("cannot open the spool at {path}: {source}")]
    Spool {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The policy settings are unusable.
    #[error("cannot set up policies: {0}")]
    Policy(String),
    /// The runtime config file is unreadable or invalid.
    #[error("--runtime-config {path}: {reason}")]
    RuntimeConfig {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The TLS certificate or key is unusable.
    #[error("cannot start TLS: {0}")]
    Tls(#[source] crate::tls::TlsError),
    /// The listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How long before the drain deadline the sink gives up on what it has not
/// acknowledged, so the requests waiting for it are still answered (503)
/// before their connections are closed.
const ANSWER_MARGIN: Duration = Duration::from_secs(2);

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    /// Longest time to receive request headers.
    pub header_read_timeout: Duration,
    /// Longest time to drain in-flight requests after shutdown starts.
    pub drain_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Most concurrent streams per HTTP/2 connection.
    pub http2_max_streams: u32,
    /// HTTP/2 keep-alive ping interval (and answer timeout).
    pub http2_keep_alive: Duration,
}

/// HTTP/2 streams a client may open and reset before the server accepted
/// them, per connection: beyond it the connection is closed (the "rapid
/// reset" attack opens and cancels streams without end).
const HTTP2_PENDING_RESETS: usize = 20;
/// Streams the server itself may reset for a client's protocol errors
/// before closing its connection.
const HTTP2_ERROR_RESETS: usize = 256;

/// Builds the sink the configuration asks for.
pub async fn build_sink(config: &Config) -> Result<Arc<dyn Sink>, StartError> {
    let kind = config.sink_kind();
    let sink: Arc<dyn Sink> = match kind {
        SinkKind::Kafka => {
            let err = |source| StartError::Sink {
                sink: "kafka",
                source,
            };
            if config.kafka.ensure_topics {
                let topics = config.topics();
                let names: Vec<&str> = topics.all().iter().map(|t| &***t).collect();
                ensure_topics(&config.kafka, &names).await.map_err(err)?;
            }
            Arc::new(
                KafkaSink::start(&config.kafka, config.limits.max_message_bytes)
                    .await
                    .map_err(err)?,
            )
        }
        SinkKind::Stdout => Arc::new(JsonLinesSink::stdout()),
        SinkKind::File => {
            let path = config.sink.sink_file.clone().unwrap_or_default();
            Arc::new(JsonLinesSink::file(&path).map_err(|e| StartError::Sink {
                sink: "file",
                source: SinkError::Io(e),
            })?)
        }
        SinkKind::Noop => Arc::new(NoopSink),
    };
    let Some((spool, spooling)) = config.spool() else {
        return Ok(sink);
    };
    let path = spool.dir.display().to_string();
    let (opened, recovered) =
        crate::spool::Spool::open(&spool).map_err(|source| StartError::Spool {
            path: path.clone(),
            source,
        })?;
    tracing::info!(
        dir = %path,
        max_bytes = spool.max_bytes,
        ack_deadline = ?spooling.ack_deadline,
        left_by_previous_process = recovered.records,
        segments = recovered.segments,
        torn_tails = recovered.torn_tails,
        corrupt = recovered.corrupt,
        "spool open"
    );
    Ok(Arc::new(SpoolingSink::start(sink, opened, spooling)))
}

/// How often a drain reports its progress.
const DRAIN_REPORT: Duration = Duration::from_secs(10);

/// Waits until the sink's spool is empty, or `deadline` passes (`None`:
/// however long it takes). Returns the records left.
pub async fn drain_spool(sink: &dyn Sink, deadline: Option<Instant>) -> u64 {
    let mut reported = Instant::now();
    loop {
        let left = sink.spooled();
        if left == 0 || deadline.is_some_and(|d| Instant::now() >= d) {
            return left;
        }
        if reported.elapsed() >= DRAIN_REPORT {
            reported = Instant::now();
            tracing::info!(records = left, health = ?sink.health(), "draining the spool");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--drain-spool`: replays the spool to Kafka, then exits; no HTTP. For the
/// volume of a pod that is gone. Ends early (with what is left) when
/// `shutdown` resolves.
pub async fn run_drain(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<u64, StartError> {
    let sink = build_sink(config).await?;
    let left = tokio::select! {
        left = drain_spool(sink.as_ref(), None) => left,
        () = shutdown => sink.spooled(),
    };
    if let Err(err) = sink.flush(config.http.shutdown_timeout).await {
        tracing::error!(error = %err, "sink flush incomplete after the drain");
    }
    Ok(left)
}

/// Runs the server until `shutdown` resolves, then fails readiness for the
/// shutdown delay while still serving, stops accepting, drains in-flight
/// requests and flushes the sink, all within the shutdown timeout.
pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    // The recorder first, so the sink's start-up errors and stats count.
    let metrics = crate::metrics::install();
    let live = match &config.runtime_config {
        Some(path) => {
            let (applied, follower) = crate::live::Follower::start(path.clone(), config.topics())
                .map_err(|err| StartError::RuntimeConfig {
                path: path.display().to_string(),
                reason: match err {
                    crate::live::ReloadError::Unreadable { reason, .. }
                    | crate::live::ReloadError::Invalid { reason, .. } => reason,
                },
            })?;
            tracing::info!(path = %path.display(), hash = %applied.hash, "runtime config loaded");
            let live = Arc::new(crate::live::Live::new(applied));
            tokio::spawn(crate::live::watch(
                Arc::clone(&live),
                follower,
                config.runtime_config_poll,
            ));
            live
        }
        None => Arc::new(crate::live::Live::new(crate::live::Applied::empty_over(
            &config.topics(),
        ))),
    };
    let sink = build_sink(config).await?;
    let policy = Arc::new(Policy::new(&config.policy()).map_err(StartError::Policy)?);
    policy.spawn_background();
    let tls = match config.http.tls() {
        Some(files) => {
            let tls = crate::tls::Tls::start(files.clone()).map_err(StartError::Tls)?;
            tracing::info!(cert = %files.cert.display(), "TLS on; the certificate files are followed");
            Some(tls.follow(config.http.tls_poll))
        }
        None => None,
    };
    // Bound only once the sink is up: until then connections are refused
    // rather than left hanging.
    let address = config.http.address;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind { address, source })?;
    let limits = Limits::from_config(&config.limits, config.http.body_read_timeout);
    let request_budget = config.memory.request_budget();
    let state = AppState::new(
        Arc::clone(&sink),
        Arc::new(SystemClock),
        config.topics(),
        limits,
    )
    .with_metrics(metrics)
    .with_policy(Arc::clone(&policy))
    .with_live(live)
    .with_budget(crate::budget::MemoryBudget::new(
        request_budget,
        config.memory.memory_wait,
    ))
    .with_max_in_flight(config.http.max_requests_in_flight.get() as usize)
    .with_historical_after(config.topics.historical_after)
    .with_warnings(crate::warnings::Warnings::new(
        Arc::clone(&sink),
        config.topics.ingestion_warnings_interval,
    ));
    tracing::info!(
        memory_limit_mib = config.memory.limit() >> 20,
        request_budget_mib = request_budget >> 20,
        kafka_queue_mib = config.kafka.queue_kbytes.map_or(0, |k| k.get() >> 10),
        max_events_per_request = config.limits.max_events_per_request.get(),
        "memory shared out"
    );
    if let Some(redis) = config.policy().redis {
        tracing::info!(
            nodes = redis.store.urls.len(),
            cluster = redis.store.cluster,
            quotas = redis.quotas,
            dedup = redis.dedup_ttl.is_some(),
            rate_limit = redis.rate_limit,
            failure_mode = ?redis.failure_mode,
            "redis policies on"
        );
    }
    tracing::info!(
        address = %listener.local_addr().unwrap_or(address),
        sink = sink.name(),
        tls = tls.is_some(),
        "capture listening"
    );
    let settings = ServeSettings {
        header_read_timeout: config.http.header_read_timeout,
        drain_timeout: config.http.shutdown_timeout,
        max_connections: config.http.max_connections.get() as usize,
        max_header_bytes: config.http.max_header_bytes,
        http2_max_streams: config.http.http2_max_streams.get(),
        http2_keep_alive: config.http.http2_keep_alive,
    };
    let draining = state.clone();
    let delay = config.http.shutdown_delay;
    let drain_started = Arc::new(std::sync::OnceLock::new());
    let started = Arc::clone(&drain_started);
    let abandoned = Arc::clone(&sink);
    let timeout = config.http.shutdown_timeout;
    serve(listener, app(state), settings, tls, async move {
        shutdown.await;
        draining.begin_shutdown();
        tracing::info!(delay = ?delay, "shutdown requested; readiness now fails");
        tokio::time::sleep(delay).await;
        let _ = started.set(Instant::now());
        tracing::info!("stopped accepting; draining in-flight requests");
        // Requests still waiting for Kafka near the drain deadline (during
        // an outage they would wait for the message timeout) are answered
        // 503 instead of having their connections closed unanswered.
        let answer_by = timeout.saturating_sub(ANSWER_MARGIN.min(timeout / 4));
        tokio::spawn(async move {
            tokio::time::sleep(answer_by).await;
            tracing::warn!("drain deadline near; giving up on events kafka has not acknowledged");
            abandoned.abandon();
        });
    })
    .await;
    let spent = drain_started.get().map_or(Duration::ZERO, Instant::elapsed);
    let remaining = config.http.shutdown_timeout.saturating_sub(spent);
    let (flushed, ()) = tokio::join!(
        sink.flush(remaining.max(Duration::from_millis(100))),
        // Dedup markers of events answered 200 that still wait to be
        // committed.
        policy.flush(),
    );
    match flushed {
        Ok(()) => tracing::info!("sink flushed"),
        Err(err) => tracing::error!(error = %err, "sink flush incomplete at shutdown"),
    }
    // What the spool holds is replayed while the shutdown budget lasts; the
    // rest stays on the volume for the next process (or the operator's
    // drain of a volume whose pod is gone).
    if sink.spooled() > 0 {
        let spent = drain_started.get().map_or(Duration::ZERO, Instant::elapsed);
        let budget = config.http.shutdown_timeout.saturating_sub(spent);
        let left = drain_spool(sink.as_ref(), Some(Instant::now() + budget)).await;
        tracing::info!(
            left_in_spool = left,
            "spool drained as far as the shutdown allows"
        );
    }
    tracing::info!("exiting");
    Ok(())
}

/// A connection's slot under `--max-connections`, counted in the open
/// connections gauge while it lives, however the connection ends.
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit, open: metrics::Gauge) -> Self {
        open.increment(1.0);
        OpenConnection { _slot: slot, open }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, then waits
/// (up to the drain timeout) for open connections to finish their requests.
/// With `tls`, every connection is TLS first (its handshake bounded by the
/// header read timeout); HTTP/2 is served to clients that negotiate it,
/// with or without TLS.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ServeSettings,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_streams)
        .max_pending_accept_reset_streams(HTTP2_PENDING_RESETS)
        .max_local_error_reset_streams(HTTP2_ERROR_RESETS)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(settings.http2_keep_alive)
        .keep_alive_timeout(settings.http2_keep_alive);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let open = metrics::gauge!(crate::metrics::HTTP_CONNECTIONS);
    tokio::pin!(shutdown);
    loop {
        // A connection slot first: at the cap, new connections wait in the
        // listen queue (the kernel's backlog) until one closes.
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                metrics::counter!(crate::metrics::HTTP_CONNECTIONS_AT_CAP).increment(1);
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = OpenConnection::new(slot, open.clone());
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(app.clone().map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req
            }));
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = settings.header_read_timeout;
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    // hyper's header read timeout starts once it has told
                    // HTTP/1 from HTTP/2 by the first bytes: a client that
                    // connects and sends nothing would keep its slot
                    // forever.
                    let mut first = [0u8; 1];
                    if !matches!(
                        tokio::time::timeout(handshake_timeout, stream.peek(&mut first)).await,
                        Ok(Ok(1))
                    ) {
                        metrics::counter!(crate::metrics::HTTP_CONNECTIONS_SILENT).increment(1);
                        return;
                    }
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES).increment(1);
                            tracing::debug!(error = %err, %remote, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES).increment(1);
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(err) = served {
                if is_reset_flood(&*err) {
                    metrics::counter!(crate::metrics::HTTP2_RESET_FLOODS).increment(1);
                    tracing::debug!(%remote, "HTTP/2 connection closed for resetting too many streams");
                } else {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
            }
            drop(connection);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(settings.drain_timeout) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Whether a connection ended because capture closed it with GOAWAY
/// `ENHANCE_YOUR_CALM`: h2's answer to more than [`HTTP2_PENDING_RESETS`]
/// streams reset before they were accepted (rapid reset) or more than
/// [`HTTP2_ERROR_RESETS`] streams capture had to reset for the client's
/// errors. hyper reports it only as the connection's error, so it is found
/// in the error's sources.
fn is_reset_flood(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_go_away()
                && h2.is_library()
                && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
        }
        next = err.source();
    }
    false
}

/// A future that resolves on SIGTERM or SIGINT. The handlers are installed
/// when this is called, not when the future is first polled, so a signal
/// that arrives while the server is still starting is not lost (and does not
/// kill the process with the default disposition). Needs a Tokio runtime.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let wait = |stream: std::io::Result<tokio::signal::unix::Signal>| async move {
            match stream {
                Ok(mut stream) => {
                    stream.recv().await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for a shutdown signal");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(term) => {},
            () = wait(interrupt) => {},
        }
    }
}

/// A future that resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
