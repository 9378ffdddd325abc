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
    let cluster = KubeconfigCluster::attach(
        args.cluster.kubeconfig,
        args.cluster.context.as_deref(),
        Vec::new(),
        Default::default(),
    )?;
    let client = cluster.client().await?;
    // One line naming the server when it cannot be reached (exit 4), instead of every check
    // failing with the same connection error.
    let server = api_server(cluster.kubeconfig(), cluster.context())?;
    preflight::reach(&client, &server, std::time::Duration::from_secs(15)).await?;
    let mut options = PreflightOptions::runbook(&args.cluster.namespace, args.backup_dir);
    options.pg_pod = args.cluster.pg_pod;
    options.pg_database = args.database;
    options.terraform_dir = args.terraform_dir;
    let report = preflight::run(client, &options).await;
    println!(
        "preflight of `{}` (context {}), namespace {}",
        cluster.name(),
        cluster.context(),
        args.cluster.namespace
    );
    println!("{report}");
    if let Some(path) = args.json {
        let json =
            serde_json::to_string_pretty(&report).context("serialise the preflight report")?;
        std::fs::write(&path, json).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(if report.go() {
        exit_codes::OK
    } else {
        exit_codes::GATE_FAILED
    })
}

/// The API server URL of `context` in the kubeconfig at `path`, for messages.
fn api_server(path: &std::path::Path, context: &str) -> anyhow::Result<String> {
    let config = harness::cluster::kubeconfig::read(path)?;
    let cluster = config
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .with_context(|| format!("context {context} in {} names no cluster", path.display()))?;
    config
        .clusters
        .iter()
        .find(|c| c.name == cluster)
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .with_context(|| format!("cluster {cluster} in {} has no server URL", path.display()))
}

/// `rehearsal run`: runs a scenario, prints progress and a summary, writes the reports.
pub(crate) async fn run(args: crate::RunArgs) -> anyhow::Result<i32> {
    use scenarios::full_rebuild::Config;

    if args.keep {
        harness::keep::request_keep();
    }
    let overlay = args.clusters.overlay();
    let provider = provider_spec(&args.clusters)?;
    // A new directory, or an empty one given: an earlier run's report is never overwritten.
    let report_dir = crate::validate::create_report_dir(args.report.as_deref())?;
    let mut config = Config::modest(
        provider,
        harness::deploy::overlay(overlay),
        report_dir.clone(),
    );
    match args.size {
        Some(bytes) => {
            let spec = harness::data::DatasetSpec::sized(config.seed, bytes)
                .context("--size was checked when parsed")?;
            config.users = spec.users;
            config.posts = spec.posts;
            eprintln!(
                "--size {:.1} MB: {} users, {} posts",
                bytes as f64 / 1e6,
                spec.users,
                spec.posts
            );
        }
        None => {
            config.users = args.users;
            config.posts = args.posts;
        }
    }
    config.load_time = std::time::Duration::from_secs(args.load_seconds);
    eprintln!(
        "rehearsing {} on {} (report: {})",
        args.scenario,
        args.clusters.provider,
        report_dir.display()
    );
    let progress = crate::progress::Progress::new();
    let report = args.scenario.run(&config, &progress).await;
    write_reports(&report, &report_dir)?;
    print_summary(&report);
    println!("reports: {}", report_dir.display());
    Ok(run_exit_code(report.verdict))
}

/// The cluster provider the command line names.
fn provider_spec(args: &crate::ProviderArgs) -> anyhow::Result<harness::cluster::ProviderSpec> {
    use harness::cluster::{DestroyGate, ProviderSpec};
    let crate::ProviderArgs {
        provider,
        kind_config,
        k8s_bin,
        kubeconfig,
        context,
        allow_destroy,
    } = args;
    let (k8s_bin, kubeconfig, context) = (
        k8s_bin.as_deref(),
        kubeconfig.as_deref(),
        context.as_deref(),
    );
    Ok(match provider.as_str() {
        "sim" => ProviderSpec::Sim {
            kind_config: Some(kind_config.to_owned()),
        },
        "kind" => ProviderSpec::Kind {
            kind_config: kind_config.to_owned(),
            images: [
                "api-gateway",
                "user-service",
                "auth-service",
                "blog-service",
                "load-generator",
                "ingress-gateway",
            ]
            .iter()
            .map(|s| format!("titanium/{s}:rehearsal"))
            .collect(),
        },
        "local" => ProviderSpec::Local {
            bin_dir: k8s_bin.map(ToOwned::to_owned),
        },
        _ => {
            let attached = KubeconfigCluster::attach(
                kubeconfig.map(ToOwned::to_owned),
                context,
                vec![],
                DestroyGate::Refuse,
            )?;
            let gate = DestroyGate::ask(attached.name(), *allow_destroy)?;
            ProviderSpec::Kubeconfig {
                path: kubeconfig.map(ToOwned::to_owned),
                context: Some(attached.context().to_owned()),
                namespaces: vec![scenarios::titanium::NAMESPACE.to_owned()],
                gate,
            }
        }
    })
}

/// `rehearsal runbook`: runs the document, prints the summary, writes the reports.
pub(crate) async fn runbook(args: crate::RunbookArgs) -> anyhow::Result<i32> {
    if args.keep {
        harness::keep::request_keep();
    }
    let blocks = harness::runbook::parse_file(&args.file)?;
    let provider = provider_spec(&args.clusters)?;
    let overlay = args.clusters.overlay();
    let report_dir = crate::validate::create_report_dir(args.report.as_deref())?;
    let mut config = scenarios::runbook::Config::new(
        args.file.clone(),
        blocks,
        provider,
        harness::deploy::overlay(overlay),
        report_dir.clone(),
    );
    config.select(args.from.as_deref(), args.only.as_deref())?;
    config.users = args.users;
    config.posts = args.posts;
    config.deadline = std::time::Duration::from_secs(args.deadline);
    eprintln!(
        "running {} on {} (report: {})",
        args.file.display(),
        args.clusters.provider,
        report_dir.display()
    );
    let report = scenarios::runbook::run(&config).await?;
    let write = |name: &str, text: String| {
        let path = report_dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    };
    write("report.json", report.to_json())?;
    write("junit.xml", report.to_junit())?;
    write("report.html", report.to_html())?;
    for c in &report.commands {
        let first = c.command.lines().next().unwrap_or("");
        let first: String = first.chars().take(70).collect();
        println!("{:<8} {:>5}  {first}", c.verdict.as_str(), c.line);
        if c.verdict.is_bad()
            && let Some(reason) = &c.reason
        {
            println!("{:>16}{}", "", reason.lines().next().unwrap_or(""));
            if let Some(s) = &c.suggestion {
                println!(
                    "{:>16}suggested (ran, exit {}): {}",
                    "",
                    s.exit_status,
                    s.command.lines().next().unwrap_or("")
                );
            }
        }
    }
    let s = &report.summary;
    println!();
    for e in &report.events {
        println!("rehearsal: {e}");
    }
    println!(
        "{} commands: {} ok, {} failed, {} unsafe, {} skipped, {} replaced",
        s.commands, s.ok, s.failed, s.unsafe_, s.skipped, s.replaced
    );
    for (phase, first) in &s.first_failure_by_phase {
        println!("first failure in {phase}: {first}");
    }
    if let Some(why) = &report.stopped {
        println!("stopped: {why}");
    }
    println!("reports: {}", report_dir.display());
    Ok(if report.stopped.is_some() {
        exit_codes::COULD_NOT_RUN
    } else if report.passed() {
        exit_codes::OK
    } else {
        exit_codes::GATE_FAILED
    })
}

/// The exit code of a rehearsal's verdict: the report already tells a run that could not run
/// (an error in or between phases, a gate that could not check) from one whose gate failed.
fn run_exit_code(verdict: harness::report::Outcome) -> i32 {
    match verdict {
        harness::report::Outcome::Pass => exit_codes::OK,
        harness::report::Outcome::Fail => exit_codes::GATE_FAILED,
        harness::report::Outcome::CouldNotRun => exit_codes::COULD_NOT_RUN,
    }
}

fn write_reports(report: &harness::report::Report, dir: &std::path::Path) -> anyhow::Result<()> {
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    };
    write("report.json", report.to_json())?;
    write("junit.xml", harness::report::render_junit(report))?;
    write("report.html", harness::report::render_html(report))?;
    // The runbook's 7.1 entry and its checklist, each item ticked only with its evidence.
    write(
        "REBUILD_RECORD.md",
        harness::report::render_rebuild_record(report),
    )?;
    Ok(())
}

fn print_summary(report: &harness::report::Report) {
    use harness::report::PhaseStatus;
    println!();
    println!("{:<22} {:>10}  result", "phase", "duration");
    for p in &report.phases {
        let result = match p.status {
            PhaseStatus::Passed => match p.volume {
                Some(v) => format!("ok  ({v})"),
                None => "ok".to_owned(),
            },
            PhaseStatus::Failed if p.gate.is_some() => format!(
                "FAILED: {}",
                p.detail
                    .as_deref()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            ),
            PhaseStatus::Failed => format!(
                "COULD NOT RUN: {}",
                p.detail
                    .clone()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or("")
            ),
            PhaseStatus::Skipped => "skipped".to_owned(),
        };
        println!(
            "{:<22} {:>8.1} s  {result}",
            p.name,
            p.duration_ms as f64 / 1000.0
        );
    }
    if !report.tables.is_empty() {
        println!();
        println!(
            "{:<12} {:>12} {:>12}  digest equal",
            "table", "rows before", "rows after"
        );
        for t in &report.tables {
            println!(
                "{:<12} {:>12} {:>12}  {}",
                t.name,
                t.rows_before,
                t.rows_after
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into()),
                if t.digest_equal() { "yes" } else { "NO" }
            );
        }
    }
    for g in report.gates.iter().filter(|g| !g.passed) {
        println!("gate {} FAILED: {}", g.name, g.findings_text("; "));
    }
    for r in &report.rollback_reasons {
        println!("not a pass: {r}");
    }
    println!();
    println!(
        "verdict: {}   RTO {}   RPO {}",
        match report.verdict {
            harness::report::Outcome::Pass => "PASS",
            harness::report::Outcome::Fail => "FAIL (roll back)",
            harness::report::Outcome::CouldNotRun => "COULD NOT RUN (nothing proven)",
        },
        report
            .rto_ms
            .map(|v| format!("{:.1} s", v as f64 / 1000.0))
            .unwrap_or_else(|| "-".into()),
        report
            .rpo_ms
            .map(|v| match &report.rpo_clock {
                Some(clock) => format!("{v} ms ({clock} clock)"),
                None => format!("{v} ms"),
            })
            .unwrap_or_else(|| "-".into()),
    );
}

fn libpq_password() -> Option<harness::pg::Secret> {
    std::env::var("PGPASSWORD")
        .ok()
        .map(harness::pg::Secret::new)
}

/// `rehearsal backup`.
pub(crate) async fn backup(args: crate::BackupArgs) -> anyhow::Result<i32> {
    use harness::backup::{
        self, BackupOptions, EncryptionKey, KubePostgres, KubeSource, OffsiteTarget, PgSource,
        PodRef, QuiesceOptions, RedisSource,
    };

    let mut options = BackupOptions::new(&args.out);
    options.name = args.name.clone();
    options.terraform_dir = args.terraform_dir.clone();
    options.offsite = args
        .offsite_dir
        .iter()
        .cloned()
        .map(OffsiteTarget::Directory)
        .collect();
    options.encryption = match (&args.passphrase_file, &args.recipient) {
        (Some(file), _) => Some(EncryptionKey::PassphraseFile(file.clone())),
        (_, Some(recipient)) => Some(EncryptionKey::Recipient(recipient.clone())),
        _ => None,
    };
    let needs_cluster = args.direct.pg_host.is_none()
        || args.redis_app.is_some()
        || args.kubernetes
        || args.quiesce;
    let cluster = if needs_cluster {
        Some(KubeconfigCluster::attach(
            args.cluster.kubeconfig.clone(),
            args.cluster.context.as_deref(),
            vec![],
            Default::default(),
        )?)
    } else {
        None
    };
    let client = match &cluster {
        Some(c) => Some(c.client().await?),
        None => None,
    };
    let pod = |name: String| PodRef {
        client: client
            .clone()
            .expect("a cluster is attached when pods are used"),
        namespace: args.cluster.namespace.clone(),
        pod: name,
        container: None,
    };
    options.cluster = cluster.as_ref().map(|c| c.context().to_owned());
    options.postgres = Some(match &args.direct.pg_host {
        Some(host) => PgSource::Direct {
            params: harness::pg::ConnParams {
                host: host.clone(),
                port: args.direct.pg_port,
                user: args.direct.pg_user.clone(),
                password: libpq_password(),
                dbname: args.database.clone(),
            },
            tools: harness::pg::PgTools::discover()?,
        },
        None => PgSource::Kube(KubePostgres {
            pod: pod(args.cluster.pg_pod.clone()),
            port: 5432,
            user: args.direct.pg_user.clone(),
            dbname: args.database.clone(),
            password: libpq_password(),
            password_env: Some("POSTGRES_PASSWORD".into()),
        }),
    });
    if let (Some(app), Some(client)) = (&args.redis_app, &client) {
        let name = scenarios::titanium::ready_pod_in(client, &args.cluster.namespace, app).await?;
        options.redis = Some(RedisSource::Kube {
            pod: pod(name),
            port: 6379,
            password_env: None,
        });
    }
    if let Some(client) = &client {
        if args.kubernetes || args.quiesce {
            options.kubernetes = Some(KubeSource {
                client: client.clone(),
                namespace: args.cluster.namespace.clone(),
            });
        }
        if args.quiesce {
            options.quiesce = Some(QuiesceOptions {
                keep: args.keep_running.clone(),
                ..QuiesceOptions::default()
            });
        }
    }
    options.physical = args.physical;
    let report = backup::backup(&options).await?;
    print_backup(&report);
    Ok(exit_codes::OK)
}

/// Where the backup went (directory, archive, off-site copies), each table's rows and digest,
/// and how long it took.
fn print_backup(report: &harness::backup::BackupReport) {
    println!("backup written to {}", report.dir.display());
    if let Some(archive) = &report.archive {
        println!(
            "archive {} ({} bytes, sha256 {})",
            archive.path.display(),
            archive.size,
            archive.sha256
        );
    }
    for copy in &report.offsite {
        println!("off-site copy: {copy:?}");
    }
    if let Some(pg) = &report.manifest.postgres {
        for t in &pg.tables {
            println!("  {:<12} {:>10} rows  sha256 {}", t.name, t.rows, t.digest);
        }
    }
    println!("took {:.1} s", report.seconds);
}

/// `rehearsal verify`.
pub(crate) async fn verify(args: crate::VerifyArgs) -> anyhow::Result<i32> {
    use harness::backup::{DecryptionKey, VerifyOptions};
    use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider};

    if args.backup.join(harness::pitr::MANIFEST).is_file() {
        return verify_pitr(&args.backup).await;
    }
    let decryption = match (&args.passphrase_file, &args.identity) {
        (Some(f), _) => Some(DecryptionKey::PassphraseFile(f.clone())),
        (_, Some(f)) => Some(DecryptionKey::IdentityFile(f.clone())),
        _ => None,
    };
    let scratch = LocalPostgres::start(LocalOptions::default())
        .await
        .context("start a scratch PostgreSQL")?;
    let options = VerifyOptions {
        scratch: scratch.params(),
        tools: scratch.tools().clone(),
        decryption,
    };
    let report = harness::backup::verify_backup(&args.backup, &options).await?;
    scratch.stop().await?;
    println!(
        "{}: {} files, {} tables checked{}{}",
        report.backup.display(),
        report.files_checked,
        report.tables_checked,
        if report.redis_checked {
            ", redis checked"
        } else {
            ""
        },
        if report.physical_checked {
            ", physical copy started and compared"
        } else {
            ""
        }
    );
    if report.passed {
        println!("verdict: OK");
        Ok(exit_codes::OK)
    } else {
        for f in &report.findings {
            println!(
                "MISMATCH {}: expected {}, found {}",
                f.check, f.expected, f.found
            );
        }
        println!(
            "verdict: FAILED (first mismatch: {})",
            report
                .findings
                .first()
                .map(|f| f.check.as_str())
                .unwrap_or("?")
        );
        Ok(exit_codes::GATE_FAILED)
    }
}

/// `rehearsal verify` of a PITR archive: checked, then replayed into scratch servers to the
/// base backup's end and to the archive's end, with counts and pg_amcheck at both.
async fn verify_pitr(archive: &std::path::Path) -> anyhow::Result<i32> {
    let tools = harness::pg::PgTools::discover()?;
    let report = harness::pitr::verify_archive(&tools, archive).await?;
    for point in &report.points {
        println!(
            "replayed to {} in {:.1} s:",
            point.target, point.recovery_seconds
        );
        for (db, tables) in &point.databases {
            let counts: Vec<String> = tables.iter().map(|(t, n)| format!("{t} {n}")).collect();
            println!("  database {db}: {}", counts.join(", "));
        }
    }
    if report.passed() {
        println!("verdict: OK");
        Ok(exit_codes::OK)
    } else {
        for finding in &report.findings {
            println!("FAILED {finding}");
        }
        println!("verdict: FAILED");
        Ok(exit_codes::GATE_FAILED)
    }
}

/// `rehearsal restore`.
pub(crate) async fn restore(args: crate::RestoreArgs) -> anyhow::Result<i32> {
    use harness::restore::{DbRestoreOptions, RestoreError, RestoreInputs, restore_database};

    if let Some(target) = args.pitr_target() {
        return restore_pitr(&args, &target).await;
    }

    // Every check comes before anything is changed, the same checks as `verify` makes (shared
    // code): the archive's members and checksum, a completed backup, the manifest's own
    // checksum, the SHA-256 of every file the restore reads.
    let mut findings = Vec::new();
    let opened = harness::backup::open_backup(&args.backup, None, &mut findings).await?;
    let rejected = |reasons: Vec<String>| {
        eprintln!(
            "error: refusing to restore from {}: {}; nothing was changed",
            args.backup.display(),
            reasons.join("; ")
        );
        Ok(exit_codes::GATE_FAILED)
    };
    let opened = match opened {
        Some(opened) if findings.is_empty() => opened,
        _ => return rejected(findings.iter().map(ToString::to_string).collect()),
    };
    let method = match (args.from_sql, args.method) {
        (true, _) | (_, crate::MethodArg::Sql) => harness::restore::RestoreMethod::Sql,
        (false, crate::MethodArg::Custom) => harness::restore::RestoreMethod::Custom,
        (false, crate::MethodArg::Csv) => harness::restore::RestoreMethod::Csv,
    };
    let inputs = match RestoreInputs::from_backup(&opened.dir, method).await {
        Ok(inputs) => inputs,
        Err(RestoreError::Rejected { reasons, .. }) => return rejected(reasons),
        Err(err) => return Err(err.into()),
    };
    let input = inputs
        .database
        .clone()
        .with_context(|| format!("{} has no PostgreSQL part", args.backup.display()))?;
    println!(
        "verified {}: completed backup, manifest checksum, size and SHA-256 of {}",
        args.backup.display(),
        inputs.verified.join(", ")
    );
    let options = DbRestoreOptions {
        force: args.force,
        dry_run: args.dry_run,
        ..DbRestoreOptions::default()
    };
    let tools = harness::pg::PgTools::discover()?;
    let (params, _forward) = restore_target(&args).await?;
    let report = restore_database(&tools, &params, &input, &options).await?;
    if args.dry_run {
        print!("{}", report.plan);
        println!("dry run: nothing was changed");
    } else if report.restored {
        println!(
            "restored {} from backup {} in {:.1} s",
            report.plan.target, report.plan.backup_id, report.seconds
        );
    } else {
        println!(
            "nothing was changed: {} already holds backup {} (pass --force to restore it again)",
            report.plan.target, report.plan.backup_id
        );
    }
    Ok(exit_codes::OK)
}

/// `rehearsal restore ARCHIVE --to-time T | --to-lsn L | --to-latest`: the archive is checked
/// and the target planned before anything is changed (a missing or corrupted segment, mixed
/// timelines or a target the archive does not cover refuse the restore, named); then the base
/// backup is recovered to the target in a scratch server, promoted, dumped, and restored into
/// the database the way a dump is.
async fn restore_pitr(
    args: &crate::RestoreArgs,
    target: &harness::pitr::Target,
) -> anyhow::Result<i32> {
    use harness::pitr::PitrError;
    use harness::restore::{DbArchive, DbRestoreInput, DbRestoreOptions, restore_database};
    let tools = harness::pg::PgTools::discover()?;
    let plan = match harness::pitr::plan(&tools, &args.backup, target).await {
        Ok(plan) => plan,
        Err(err @ (PitrError::Defective { .. } | PitrError::NotCovered { .. })) => {
            eprintln!(
                "error: refusing to restore from {}: {}; nothing was changed",
                args.backup.display(),
                harness::error_chain(&err)
            );
            return Ok(exit_codes::GATE_FAILED);
        }
        Err(err) => return Err(err.into()),
    };
    println!(
        "verified {}: base backup files and {} WAL segments (size and SHA-256), one timeline, \
         no gap, WAL read through with pg_waldump; {}",
        args.backup.display(),
        plan.segments.len(),
        plan.range
    );
    if args.dry_run {
        println!(
            "plan: start from the base backup ({} to {}), replay {} segments to {target}, promote, \
             then restore the database into {}",
            plan.base.start_lsn,
            plan.base.stop_lsn,
            plan.segments.len(),
            args.direct
                .pg_host
                .as_deref()
                .unwrap_or(&args.cluster.pg_pod)
        );
        println!("dry run: nothing was changed");
        return Ok(exit_codes::OK);
    }
    let recovered = harness::pitr::recover(&plan, std::time::Duration::from_secs(600)).await?;
    println!(
        "recovered to {target} and promoted in {:.1} s{}",
        recovered.duration.as_secs_f64(),
        recovered
            .stopped
            .as_deref()
            .map(|l| format!(" ({})", l.trim()))
            .unwrap_or_default()
    );
    let work = harness::keep::ScratchDir::new("harness-pitr-dump-", "recovered database dump")?;
    let dump = work.path().join("recovered.dump");
    let source = recovered.server.socket_params().with_dbname(&args.database);
    scenarios::pitr::dump_database(&tools, &source, &dump).await?;
    harness::pg::PostgresProvider::stop(recovered.server).await?;
    let (params, _forward) = restore_target(args).await?;
    let input = DbRestoreInput {
        archive: DbArchive::Custom(dump),
        backup_id: format!("{} at {target}", args.backup.display()),
        recorded_sha256: None,
    };
    let options = DbRestoreOptions {
        force: args.force,
        ..DbRestoreOptions::default()
    };
    let report = restore_database(&tools, &params, &input, &options).await?;
    if report.restored {
        println!(
            "restored {} to {target} in {:.1} s",
            report.plan.target, report.seconds
        );
    } else {
        println!(
            "nothing was changed: {} already holds this recovery (pass --force to restore it again)",
            report.plan.target
        );
    }
    Ok(exit_codes::OK)
}

/// Where a restore writes: the database directly, or through a local port-forward to the pod.
async fn restore_target(
    args: &crate::RestoreArgs,
) -> anyhow::Result<(
    harness::pg::ConnParams,
    Option<harness::cluster::forward::PortForward>,
)> {
    Ok(match &args.direct.pg_host {
        Some(host) => (
            harness::pg::ConnParams {
                host: host.clone(),
                port: args.direct.pg_port,
                user: args.direct.pg_user.clone(),
                password: libpq_password(),
                dbname: args.database.clone(),
            },
            None,
        ),
        None => {
            let cluster = KubeconfigCluster::attach(
                args.cluster.kubeconfig.clone(),
                args.cluster.context.as_deref(),
                vec![],
                Default::default(),
            )?;
            let client = cluster.client().await?;
            let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
                kube::Api::all(client.clone());
            let exists = namespaces
                .get_opt(&args.cluster.namespace)
                .await
                .with_context(|| format!("get namespace {}", args.cluster.namespace))?;
            anyhow::ensure!(
                exists.is_some(),
                "namespace {} does not exist in context {}; nothing was changed",
                args.cluster.namespace,
                cluster.context()
            );
            let forward = harness::cluster::forward::PortForward::start(
                client,
                &args.cluster.namespace,
                &args.cluster.pg_pod,
                5432,
            )
            .await?;
            (
                harness::pg::ConnParams {
                    host: "127.0.0.1".into(),
                    port: forward.port(),
                    user: args.direct.pg_user.clone(),
                    password: libpq_password(),
                    dbname: args.database.clone(),
                },
                Some(forward),
            )
        }
    })
}

/// Where `rehearsal sim` keeps a background cluster: `<tmp>/rebuild-rehearsal-sim-<uid>/NAME`.
/// Not under the home directory: the simulated PostgreSQL pods run as the unprivileged
/// `postgres` account, which must traverse every parent of its volume (a home is often 0700).
fn sim_home(name: &str) -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("rebuild-rehearsal-sim-{}", nix::unistd::getuid()))
        .join(name)
}

/// A workspace binary next to this one (target/<profile>/), else on PATH.
fn sibling_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("locate the rehearsal binary")?;
    let sibling = exe.with_file_name(name);
    if sibling.is_file() {
        return Ok(sibling);
    }
    which::which(name).with_context(|| {
        format!(
            "`{name}` not found next to {} or on PATH; build it with `cargo build -p {name}`",
            exe.display()
        )
    })
}

/// `rehearsal sim up`.
pub(crate) async fn sim_up(
    name: &str,
    kind_config: &std::path::Path,
    users: u32,
    posts: u32,
) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt;
    let home = sim_home(name);
    let pid_file = home.join("pid");
    if pid_file.exists() {
        anyhow::bail!(
            "a simulated cluster `{name}` is already up ({}); run `rehearsal sim down --name {name}` first",
            home.display()
        );
    }
    std::fs::create_dir_all(&home).with_context(|| format!("create {}", home.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Traversable, not listable: see sim_home.
        for dir in [home.as_path(), home.parent().unwrap_or(&home)] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        }
    }
    let kubeconfig = home.join("kubeconfig");
    let log = std::fs::File::create(home.join("simcluster.log"))?;
    let child = std::process::Command::new(sibling_binary("simcluster")?)
        .args(["serve", "--name", name, "--state-dir"])
        .arg(home.join("state"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--config")
        .arg(kind_config)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: it outlives this command, and Ctrl-C here does not reach it.
        .process_group(0)
        .spawn()
        .context("start simcluster serve")?;
    std::fs::write(&pid_file, child.id().to_string())?;
    match sim_deploy(name, &home, users, posts).await {
        Ok(code) => Ok(code),
        Err(err) => {
            // Leave nothing behind: a half-started cluster is stopped and removed.
            let _ = sim_down(name);
            Err(err)
        }
    }
}

async fn sim_deploy(
    name: &str,
    home: &std::path::Path,
    users: u32,
    posts: u32,
) -> anyhow::Result<i32> {
    let kubeconfig = home.join("kubeconfig");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !kubeconfig.exists() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "simcluster wrote no kubeconfig in 30 s; see {}",
            home.join("simcluster.log").display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let cluster =
        KubeconfigCluster::attach(Some(kubeconfig.clone()), None, vec![], Default::default())?;
    let timeout = std::time::Duration::from_secs(180);
    eprintln!("installing the infrastructure (CRDs, istio-system/istio-ingressgateway) ...");
    let infrastructure =
        harness::deploy::apply_infrastructure(&cluster, &harness::deploy::overlay("sim"), timeout)
            .await?;
    eprintln!("{infrastructure}");
    eprintln!("deploying titanium-prod ...");
    harness::deploy::apply_kustomize(&cluster, &harness::deploy::overlay("sim")).await?;
    let client = cluster.client().await?;
    use scenarios::titanium::{LOAD_GENERATOR, NAMESPACE};
    if users > 0 {
        // Seed before the writers start: the load generator is held at zero (no pod left)
        // until the dataset is in, as the rehearsal's own deploy does.
        scenarios::titanium::scale(&client, LOAD_GENERATOR, 0, timeout).await?;
        no_pods_left(&client, NAMESPACE, LOAD_GENERATOR, timeout).await?;
    }
    harness::deploy::wait_ready(&client, NAMESPACE, timeout).await?;
    if users > 0 {
        let password = scenarios::titanium::db_password(&client).await?;
        let forward = harness::cluster::forward::PortForward::start(
            client.clone(),
            NAMESPACE,
            scenarios::titanium::PG_POD,
            5432,
        )
        .await?;
        let params = harness::pg::ConnParams {
            host: "127.0.0.1".into(),
            port: forward.port(),
            user: "postgres".into(),
            password: Some(password),
            dbname: scenarios::titanium::DATABASE.into(),
        };
        let pg = params.connect().await?;
        let stats = harness::data::seed_new_database(
            &pg,
            &harness::data::DatasetSpec::new(1, users, posts),
        )
        .await?;
        eprintln!("seeded {} users and {} posts", stats.users, stats.posts);
        scenarios::titanium::scale(&client, LOAD_GENERATOR, 2, timeout).await?;
    }
    println!("simulated cluster `{name}` is up with titanium-prod. Try the runbook's commands:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get pods -n titanium-prod");
    println!(
        "  kubectl exec -n titanium-prod postgresql-0 -- psql -U postgres -d titanium -c '\\dt'"
    );
    println!(
        "  export INGRESS_IP=$(kubectl get svc -n istio-system istio-ingressgateway -o jsonpath='{{.status.loadBalancer.ingress[0].ip}}')"
    );
    println!("  curl http://$INGRESS_IP/api/users/health");
    println!("Stop it with: rehearsal sim down --name {name}");
    Ok(exit_codes::OK)
}

/// Waits until no pod of the deployment `app` exists (terminating ones still write).
async fn no_pods_left(
    client: &kube::Client,
    namespace: &str,
    app: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let params = kube::api::ListParams::default().labels(&format!("app={app}"));
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let pods = api
            .list(&params)
            .await
            .with_context(|| format!("list the pods of {app} in {namespace}"))?;
        if pods.items.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{} pod(s) of {app} still exist after {} s",
            pods.items.len(),
            timeout.as_secs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `rehearsal sim down`.
pub(crate) fn sim_down(name: &str) -> anyhow::Result<i32> {
    let home = sim_home(name);
    let pid_file = home.join("pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| {
            format!(
                "no simulated cluster `{name}` is up ({} missing)",
                pid_file.display()
            )
        })?
        .trim()
        .parse()
        .context("the pid file is corrupt")?;
    let pid = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while nix::sys::signal::kill(pid, None).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if nix::sys::signal::kill(pid, None).is_ok() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    std::fs::remove_dir_all(&home).with_context(|| format!("remove {}", home.display()))?;
    // The per-user parent goes too once the last cluster is down; it stays while another
    // cluster lives in it (remove_dir refuses a non-empty directory, which is not an error here).
    if let Some(parent) = home.parent()
        && let Err(err) = std::fs::remove_dir(parent)
        && err.kind() != std::io::ErrorKind::DirectoryNotEmpty
        && err.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("warning: could not remove {}: {err}", parent.display());
    }
    println!("simulated cluster `{name}` is down");
    Ok(exit_codes::OK)
}

/// `rehearsal forecast`: the model fitted on the reports, the forecast at the size asked (or at
/// the size of the `--check` report), and the runbook's limits.
pub(crate) fn forecast(args: &crate::ForecastArgs) -> anyhow::Result<i32> {
    use harness::forecast::{Model, database_bytes, relative_error};
    let read = |path: &std::path::Path| -> anyhow::Result<harness::report::Report> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    };
    let mut reports = Vec::with_capacity(args.from.len());
    for path in &args.from {
        reports.push((path.display().to_string(), read(path)?));
    }
    let model = match Model::fit(&reports) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit_codes::COULD_NOT_RUN);
        }
    };
    let check = match &args.check {
        Some(path) => {
            let report = read(path)?;
            let Some(bytes) = database_bytes(&report) else {
                eprintln!(
                    "error: --check {}: the report records no database size",
                    path.display()
                );
                return Ok(exit_codes::COULD_NOT_RUN);
            };
            Some((report, bytes))
        }
        None => None,
    };
    let bytes = match (&check, args.db_size) {
        (Some((_, bytes)), _) => *bytes,
        (None, Some(bytes)) => bytes,
        (None, None) => anyhow::bail!("--db-size or --check is required"),
    };
    let forecast = model.predict(bytes, &harness::verify::RollbackThresholds::runbook());
    println!(
        "model ({} report{}; see `harness::forecast` for how it is made):",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" }
    );
    print!("{}", model.describe());
    println!();
    print!("{forecast}");
    // A limit exceeded is a verdict; a limit the reports give nothing to forecast is not a
    // pass either.
    let mut code = if forecast.exceeds_a_limit() {
        exit_codes::GATE_FAILED
    } else if forecast.left_a_limit_unchecked() {
        eprintln!(
            "error: not every runbook limit could be forecast: {}",
            forecast.not_checked.join("; ")
        );
        exit_codes::COULD_NOT_RUN
    } else {
        exit_codes::OK
    };
    let accuracy = check.as_ref().map(|(report, _)| forecast.against(report));
    if let Some(accuracy) = &accuracy {
        println!();
        print!("{accuracy}");
        let Some((f, m)) = accuracy.rto else {
            eprintln!("error: the --check report has no RTO phases (destroy-cluster-a to gates)");
            return Ok(exit_codes::COULD_NOT_RUN);
        };
        let error = relative_error(f, m);
        let max = f64::from(args.max_error) / 100.0;
        println!(
            "RTO error {:+.1} % (at most {} % tolerated): {}",
            error * 100.0,
            args.max_error,
            if error.abs() <= max {
                "within"
            } else {
                "TOO LARGE"
            }
        );
        if error.abs() > max {
            code = exit_codes::GATE_FAILED;
        }
        // Memory stays flat as the data grows: the rehearsal process's peak RSS at this size
        // against the smallest size forecast from.
        match accuracy.peak_rss_growth() {
            Some(growth) => {
                let max = f64::from(args.max_rss_growth) / 100.0;
                println!(
                    "peak RSS growth {:+.1} % over the smallest report (at most {} % tolerated): {}",
                    growth * 100.0,
                    args.max_rss_growth,
                    if growth <= max { "within" } else { "TOO LARGE" }
                );
                if growth > max {
                    code = exit_codes::GATE_FAILED;
                }
            }
            None => {
                println!("peak RSS growth: NOT CHECKED");
                eprintln!(
                    "error: a report records no peak RSS (`peak_rss_bytes`): rehearse again with this version"
                );
                if code == exit_codes::OK {
                    code = exit_codes::COULD_NOT_RUN;
                }
            }
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "model": model,
            "forecast": forecast,
            "accuracy": accuracy,
        });
        let text = serde_json::to_string_pretty(&json).context("render the forecast as JSON")?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use harness::report::Outcome;

    use super::{exit_codes, run_exit_code};

    #[test]
    fn a_run_that_could_not_run_exits_4_and_a_failed_gate_3() {
        assert_eq!(run_exit_code(Outcome::Pass), exit_codes::OK);
        assert_eq!(run_exit_code(Outcome::Fail), exit_codes::GATE_FAILED);
        assert_eq!(
            run_exit_code(Outcome::CouldNotRun),
            exit_codes::COULD_NOT_RUN
        );
    }
}
