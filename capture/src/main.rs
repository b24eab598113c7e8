//! The `capture` binary: load settings, set up logging, serve until SIGTERM.

use capture::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

// Request handling allocates many small, short-lived buffers (parsed fields,
// message strings); mimalloc serves those with less CPU than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "quota") {
        std::process::exit(quota(args));
    }
    let config = match Config::load(args) {
        Ok(config) => config,
        Err(capture::config::ConfigError::Cli(err)) => err.exit(),
        Err(err) => {
            eprintln!("capture: {err}");
            std::process::exit(2);
        }
    };
    if let Err(err) = init_logging(&config.log.log_format, &config.log.log_level) {
        eprintln!("capture: {err}");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads())
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            std::process::exit(1);
        }
    };
    if config.spool.drain_spool {
        let left = runtime.block_on(async {
            let shutdown = capture::server::shutdown_signal();
            capture::server::run_drain(&config, shutdown).await
        });
        runtime.shutdown_timeout(std::time::Duration::from_millis(100));
        match left {
            Ok(0) => tracing::info!("spool drained; exiting"),
            Ok(left) => {
                tracing::error!(records = left, "stopped before the spool was drained");
                std::process::exit(1);
            }
            Err(err) => {
                tracing::error!(error = %err, "capture could not start the drain");
                std::process::exit(1);
            }
        }
        return;
    }
    runtime.block_on(async {
        // First, so a SIGTERM during start-up still means a clean stop.
        let shutdown = capture::server::shutdown_signal();
        if let Err(err) = capture::server::run(&config, shutdown).await {
            tracing::error!(error = %err, "capture could not start");
            std::process::exit(1);
        }
    });
    // Everything was answered and flushed. A blocking call still running
    // (a metadata request to a broker that is down waits up to
    // `--kafka-metadata-timeout`) must not hold the exit past the
    // shutdown budget.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
}

/// `capture quota ...`: quota administration, then exit.
fn quota(mut args: Vec<std::ffi::OsString>) -> i32 {
    args.remove(1);
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(capture::policy::cli::run(args)),
        Err(err) => {
            eprintln!("capture quota: cannot start the async runtime: {err}");
            1
        }
    }
}

fn init_logging(format: &LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level)
        .map_err(|err| anyhow::anyhow!("invalid --log-level {level:?}: {err}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    Ok(())
}
