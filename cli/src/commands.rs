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

/// `rehearsal run`: runs a scenario, prints progress and a summary, writes the reports.
pub(crate) async fn run(args: crate::RunArgs) -> anyhow::Result<i32> {
    use harness::cluster::{DestroyGate, ProviderSpec};
    use scenarios::full_rebuild::{self, Config};

    if args.keep {
        harness::keep::request_keep();
    }
    let overlay = match args.provider.as_str() {
        "kind" => "kind",
        "kubeconfig" => "solid-cloud",
        _ => "sim",
    };
    let provider = match args.provider.as_str() {
        "sim" => ProviderSpec::Sim { kind_config: Some(args.kind_config.clone()) },
        "kind" => ProviderSpec::Kind {
            kind_config: args.kind_config.clone(),
            images: ["api-gateway", "user-service", "auth-service", "blog-service", "load-generator"]
                .iter()
                .map(|s| format!("titanium/{s}:rehearsal"))
                .collect(),
        },
        _ => {
            let attached = KubeconfigCluster::attach(args.kubeconfig.clone(), args.context.as_deref(), vec![], DestroyGate::Refuse)?;
            let gate = DestroyGate::ask(attached.name(), args.allow_destroy)?;
            ProviderSpec::Kubeconfig {
                path: args.kubeconfig.clone(),
                context: Some(attached.context().to_owned()),
                namespaces: vec![scenarios::titanium::NAMESPACE.to_owned()],
                gate,
            }
        }
    };
    let report_dir = args.report.clone().unwrap_or_else(|| {
        std::path::PathBuf::from("target/rehearsal").join(chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string())
    });
    std::fs::create_dir_all(&report_dir).with_context(|| format!("create {}", report_dir.display()))?;
    let mut config = Config::modest(provider, harness::deploy::overlay(overlay), report_dir.clone());
    config.users = args.users;
    config.posts = args.posts;
    config.load_time = std::time::Duration::from_secs(args.load_seconds);
    eprintln!("rehearsing {} on {} (report: {})", args.scenario, args.provider, report_dir.display());
    let progress = crate::progress::Progress::new();
    let report = full_rebuild::run(&config, &progress).await;
    write_reports(&report, &report_dir)?;
    print_summary(&report);
    println!("reports: {}", report_dir.display());
    Ok(match report.verdict {
        harness::report::Outcome::Pass => exit_codes::OK,
        harness::report::Outcome::Fail if report.phases.iter().any(|p| p.status == harness::report::PhaseStatus::Failed) => {
            exit_codes::COULD_NOT_RUN
        }
        harness::report::Outcome::Fail => exit_codes::GATE_FAILED,
    })
}

fn write_reports(report: &harness::report::Report, dir: &std::path::Path) -> anyhow::Result<()> {
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    };
    write("report.json", report.to_json())?;
    write("junit.xml", harness::report::render_junit(report))?;
    write("report.html", harness::report::render_html(report))?;
    Ok(())
}

fn print_summary(report: &harness::report::Report) {
    use harness::report::PhaseStatus;
    println!();
    println!("{:<20} {:>10}  result", "phase", "duration");
    for p in &report.phases {
        let result = match p.status {
            PhaseStatus::Passed => "ok".to_owned(),
            PhaseStatus::Failed => format!("FAILED: {}", p.detail.clone().unwrap_or_default().lines().next().unwrap_or("")),
            PhaseStatus::Skipped => "skipped".to_owned(),
        };
        println!("{:<20} {:>8.1} s  {result}", p.name, p.duration_ms as f64 / 1000.0);
    }
    if !report.tables.is_empty() {
        println!();
        println!("{:<12} {:>12} {:>12}  digest equal", "table", "rows before", "rows after");
        for t in &report.tables {
            println!(
                "{:<12} {:>12} {:>12}  {}",
                t.name,
                t.rows_before,
                t.rows_after.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                if t.digest_equal() { "yes" } else { "NO" }
            );
        }
    }
    for g in report.gates.iter().filter(|g| !g.passed) {
        println!("gate {} FAILED: {}", g.name, g.findings.join("; "));
    }
    for r in &report.rollback_reasons {
        println!("roll back: {r}");
    }
    println!();
    println!(
        "verdict: {}   RTO {}   RPO {}",
        match report.verdict {
            harness::report::Outcome::Pass => "PASS",
            harness::report::Outcome::Fail => "FAIL (roll back)",
        },
        report.rto_ms.map(|v| format!("{:.1} s", v as f64 / 1000.0)).unwrap_or_else(|| "-".into()),
        report.rpo_ms.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into()),
    );
}
