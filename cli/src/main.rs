//! `rehearsal`: rehearses the rebuild of the Titanium cluster, or runs one of its steps.
//!
//! This binary only parses arguments, calls the harness and scenarios, and prints. Exit codes
//! are in `exit_codes.rs`.

mod commands;
mod exit_codes;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Rehearse the rebuild of a Kubernetes cluster holding production data: backup, destroy,
/// rebuild, restore, verify.
#[derive(Debug, Parser)]
#[command(name = "rehearsal", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read-only checks against a cluster before the maintenance window (go / no-go).
    Preflight(PreflightArgs),
}

/// Arguments of `rehearsal preflight`.
#[derive(Debug, clap::Args)]
struct PreflightArgs {
    /// Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig (default: its current context).
    #[arg(long)]
    context: Option<String>,
    /// The application namespace.
    #[arg(long, short = 'n', default_value = "titanium-prod")]
    namespace: String,
    /// The PostgreSQL pod.
    #[arg(long, default_value = "postgresql-0")]
    pg_pod: String,
    /// The database.
    #[arg(long, default_value = "titanium")]
    database: String,
    /// Where the backup would be written (free space is checked there).
    #[arg(long, default_value = ".")]
    backup_dir: PathBuf,
    /// The terraform working directory, when infrastructure is managed with terraform.
    #[arg(long)]
    terraform_dir: Option<PathBuf>,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REHEARSAL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            std::process::exit(exit_codes::COULD_NOT_RUN);
        }
    };
    let code = runtime.block_on(async {
        let result = match cli.command {
            Command::Preflight(args) => commands::preflight(args).await,
        };
        match result {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {err:#}");
                exit_codes::COULD_NOT_RUN
            }
        }
    });
    std::process::exit(code);
}
