//! The subcommands: each turns its arguments into harness calls and its result into output and
//! an exit code.

use anyhow::Context;
use harness::cluster::Cluster;
use harness::cluster::kubeconfig::KubeconfigCluster;
use harness::preflight::{self, PreflightOptions};

use crate::PreflightArgs;
use crate::exit_codes;

/// `rehearsal preflight`: read-only, prints every check and GO / NO-GO.
pub(crate) async fn preflight(args: PreflightArgs) -> anyhow::Result<i32> {
    // Attaching never destroys anything: the gate stays closed.
    let cluster = KubeconfigCluster::attach(args.kubeconfig, args.context.as_deref(), Vec::new(), Default::default())?;
    let client = cluster.client().await?;
    let mut options = PreflightOptions::runbook(&args.namespace, args.backup_dir);
    options.pg_pod = args.pg_pod;
    options.pg_database = args.database;
    options.terraform_dir = args.terraform_dir;
    let report = preflight::run(client, &options).await;
    println!("preflight of `{}` (context {}), namespace {}", cluster.name(), cluster.context(), args.namespace);
    println!("{report}");
    if let Some(path) = args.json {
        let json = serde_json::to_string_pretty(&report).context("serialise the preflight report")?;
        std::fs::write(&path, json).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(if report.go() { exit_codes::OK } else { exit_codes::GATE_FAILED })
}
