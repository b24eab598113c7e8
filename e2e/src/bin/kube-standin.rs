//! `kube-standin [ADDRESS]`: serves the API server stand-in (default
//! `127.0.0.1:0`), prints a kubeconfig for it on standard output, and runs
//! until interrupted.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let address: SocketAddr = match std::env::args().nth(1) {
        Some(text) => text
            .parse()
            .map_err(|err| anyhow::anyhow!("ADDRESS {text:?} is not host:port: {err}"))?,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let server = e2e::ApiServer::default();
    let (bound, task) = server.start(address).await?;
    print!("{}", e2e::ApiServer::kubeconfig(bound, "default"));
    eprintln!("kube-standin serving on http://{bound}");
    tokio::select! {
        _ = task => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
