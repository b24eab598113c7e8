//! `kube-standin [ADDRESS] [--node IMAGE=BINARY]... [--node-dir DIR]`:
//! serves the API server stand-in (default `127.0.0.1:0`), prints a
//! kubeconfig for it on standard output, and runs until interrupted.
//!
//! With `--node`, the node stand-in runs too: the pods of Deployments whose
//! container image contains `IMAGE` run as processes of `BINARY`, under
//! `--node-dir` (default: a new directory in the system's temp dir). This
//! is a whole cluster on one machine, for `E2E_KUBECONFIG` (see
//! e2e/README.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};

struct Args {
    address: SocketAddr,
    images: e2e::node::Images,
    node_dir: Option<PathBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut parsed = Args {
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        images: Vec::new(),
        node_dir: None,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--node" => {
                let value = args.next().context("--node needs IMAGE=BINARY")?;
                let Some((image, binary)) = value.split_once('=') else {
                    bail!("--node {value:?} is not IMAGE=BINARY");
                };
                parsed.images.push((image.to_owned(), binary.into()));
            }
            "--node-dir" => {
                parsed.node_dir = Some(args.next().context("--node-dir needs DIR")?.into());
            }
            text if !text.starts_with('-') => {
                parsed.address = text
                    .parse()
                    .map_err(|err| anyhow::anyhow!("ADDRESS {text:?} is not host:port: {err}"))?;
            }
            other => bail!(
                "unknown argument {other:?}; usage: kube-standin [ADDRESS] [--node IMAGE=BINARY]... [--node-dir DIR]"
            ),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = parse(std::env::args().skip(1))?;
    let server = e2e::ApiServer::default();
    let (bound, task) = server.start(args.address).await?;
    let _node = if args.images.is_empty() {
        None
    } else {
        let dir = match args.node_dir {
            Some(dir) => dir,
            None => std::env::temp_dir().join(format!("kube-standin-node-{}", std::process::id())),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("create the node directory {}", dir.display()))?;
        eprintln!("kube-standin runs pods under {}", dir.display());
        Some(e2e::node::Node::new(server.clone(), dir, args.images).spawn())
    };
    print!("{}", e2e::ApiServer::kubeconfig(bound, "default"));
    eprintln!("kube-standin serving on http://{bound}");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = task => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
