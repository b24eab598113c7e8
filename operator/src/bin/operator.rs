//! The `operator` binary: settings from flags or `OPERATOR_*` environment
//! variables, JSON logs, `/metrics`, `/healthz` and `/readyz`, and the two
//! controllers until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use operator::leader::{Election, lead};
use operator::runtime::{RECONCILE_SECONDS, Settings, health_router, run_controllers};
use tracing_subscriber::EnvFilter;

/// Runs the CaptureDeployment and CaptureQuota controllers.
#[derive(Debug, Parser)]
#[command(name = "operator", version, about = "Kubernetes operator for capture")]
struct Args {
    /// Manage only these namespaces, comma-separated or repeated (default:
    /// every namespace, which needs cluster-wide RBAC). Each gets watches
    /// of its own: nothing is listed or watched outside them.
    #[arg(long = "namespace", env = "OPERATOR_NAMESPACE", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "OPERATOR_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Timeout of Kafka admin calls (topic reconcile).
    #[arg(long, env = "OPERATOR_KAFKA_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    kafka_timeout: Duration,
    /// Timeout of Redis calls (quota reconcile).
    #[arg(long, env = "OPERATOR_REDIS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    redis_timeout: Duration,
    /// Log line format.
    #[arg(long, env = "OPERATOR_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Log filter (`info`, `operator=debug,info`).
    #[arg(long, env = "OPERATOR_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Elect a leader on a Lease so that of several replicas only one
    /// reconciles. Turn off only for a single replica without Lease access.
    #[arg(long, env = "OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "OPERATOR_LEASE_NAME", default_value = "capture-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (default: the pod's namespace, else the
    /// kubeconfig's).
    #[arg(long, env = "OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How long the Lease holds without renewal (whole seconds, >= 2).
    #[arg(long, env = "OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    lease_duration: Duration,
    /// This process's name in the Lease (default: host name plus a random
    /// suffix, unique per process).
    #[arg(long, env = "OPERATOR_IDENTITY")]
    identity: Option<String>,
}

fn parse_lease_duration(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|err| err.to_string())?;
    if duration < Duration::from_secs(2) {
        return Err(format!("{value} is too short: a lease lasts at least 2s"));
    }
    Ok(duration)
}

/// The namespace a pod runs in, from its service account mount.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "operator".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() {
    let args = Args::parse();
    let filter = match EnvFilter::try_new(&args.log_level) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("operator: invalid --log-level {:?}: {err}", args.log_level);
            std::process::exit(2);
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            std::process::exit(1);
        }
    };
    if let Err(err) = runtime.block_on(run(args)) {
        tracing::error!(error = %err, "operator stopped with an error");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = capture::server::shutdown_signal();
    // Buckets make the reconcile time a histogram (quantiles across pods and
    // over any range in PromQL) rather than a per-process summary.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(RECONCILE_SECONDS.to_owned()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )?
        .install_recorder()?;
    let client = kube::Client::try_default().await.map_err(|err| {
        anyhow::anyhow!("no Kubernetes API to talk to (in-cluster config or KUBECONFIG): {err}")
    })?;
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", args.metrics_address))?;
    tracing::info!(address = %listener.local_addr()?, "health and metrics listening");
    let router = health_router(metrics, Arc::clone(&ready));
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(error = %err, "health server failed");
        }
    });
    let settings = Settings {
        namespaces: args
            .namespaces
            .into_iter()
            .map(|ns| ns.trim().to_owned())
            .filter(|ns| !ns.is_empty())
            .collect(),
        kafka_timeout: args.kafka_timeout,
        redis_timeout: args.redis_timeout,
    };
    let shutdown = {
        let ready = Arc::clone(&ready);
        async move {
            shutdown.await;
            ready.store(false, Ordering::SeqCst);
        }
    };
    if !args.leader_election {
        tracing::info!("leader election off: this process reconciles alone");
        ready.store(true, Ordering::SeqCst);
        run_controllers(client, &settings, shutdown).await;
        return Ok(());
    }
    let namespace = args
        .lease_namespace
        .or_else(|| {
            std::fs::read_to_string(POD_NAMESPACE_FILE)
                .ok()
                .map(|ns| ns.trim().to_owned())
                .filter(|ns| !ns.is_empty())
        })
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let election = Election {
        lease_name: args.lease_name,
        namespace,
        identity: args.identity.unwrap_or_else(default_identity),
        duration: args.lease_duration,
    };
    lead(client.clone(), &election, ready, shutdown, |stop| {
        run_controllers(client.clone(), &settings, stop)
    })
    .await;
    Ok(())
}
