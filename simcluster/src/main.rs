//! The `simcluster` binary: run a simulated Kubernetes cluster in the foreground.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use simcluster::{AccessRule, SimCluster, SimConfig};

#[derive(Parser)]
#[command(
    name = "simcluster",
    about = "A simulated Kubernetes cluster for kubectl and kube-rs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the cluster until SIGTERM or Ctrl-C.
    Serve {
        /// Directory for the cluster's state.
        #[arg(long)]
        state_dir: PathBuf,
        /// Where to write the kubeconfig.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// A kind cluster configuration (kind.x-k8s.io/v1alpha4).
        #[arg(long = "config")]
        kind_config: Option<PathBuf>,
        /// Cluster and kubeconfig context name.
        #[arg(long, default_value = "simcluster")]
        name: String,
        /// Port on 127.0.0.1 (default: a free one).
        #[arg(long)]
        port: Option<u16>,
        /// Deny a permission: verb:resource[:namespace] (repeatable).
        #[arg(long = "deny", value_name = "VERB:RESOURCE[:NAMESPACE]")]
        deny: Vec<AccessRule>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve {
        state_dir,
        kubeconfig,
        kind_config,
        name,
        port,
        deny,
    } = Cli::parse().command;
    // Refuse now what would make every PostgreSQL pod crash-loop later, with its message.
    if let Err(message) = simcluster::check_state_dir_reachable(&state_dir) {
        anyhow::bail!("--state-dir {}: {message}", state_dir.display());
    }
    let mut cfg = SimConfig::new(name, state_dir, kubeconfig);
    cfg.port = port;
    cfg.kind_config = kind_config;
    cfg.deny = deny;
    // Handlers go in before the cluster starts, so a SIGTERM that arrives as soon as the
    // kubeconfig exists still stops everything cleanly.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let cluster = SimCluster::start(cfg)
        .await
        .context("starting the simulated cluster")?;
    println!("simcluster {} serving at {}", cluster.name(), cluster.url());
    println!("export KUBECONFIG={}", cluster.kubeconfig_path().display());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    cluster
        .shutdown()
        .await
        .context("stopping the simulated cluster")?;
    Ok(())
}
