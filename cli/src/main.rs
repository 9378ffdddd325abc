//! `rehearsal`: rehearses the rebuild of the Titanium cluster, or runs one of its steps.
//!
//! This binary only parses arguments, calls the harness and scenarios, and prints. Exit codes
//! are in `exit_codes.rs`.

mod commands;
mod exit_codes;
mod progress;
mod signals;
mod validate;

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
    /// Rehearse the whole rebuild (default: full_rebuild on the simulated cluster) and write
    /// the reports.
    Run(RunArgs),
    /// Read-only checks against a cluster before the maintenance window (go / no-go).
    Preflight(PreflightArgs),
    /// Back up titanium-prod from a cluster (or PostgreSQL directly): every artifact the runbook
    /// names, from one snapshot, with a manifest.
    Backup(BackupArgs),
    /// Verify a backup: checksums against its manifest, then a restore into a scratch
    /// PostgreSQL compared with the manifest's counts and digests.
    Verify(VerifyArgs),
    /// Restore a backup's database into PostgreSQL reached directly or in a cluster's pod.
    Restore(RestoreArgs),
    /// Execute a runbook document (default: the shipped Titanium runbook) command by command on
    /// a rehearsal cluster, and report each command's verdict (ok, failed, unsafe, skipped,
    /// replaced) with the tools' own words and corrected commands that ran.
    Runbook(RunbookArgs),
    /// Forecast each phase, the RTO and the night at another database size from rehearsals'
    /// reports, against the runbook's limits (restore 2 h, night 6 h, every pod Ready 30 min);
    /// with --check, set the forecast against a rehearsal made at that size.
    Forecast(ForecastArgs),
    /// Start or stop a simulated cluster running the Titanium stack, to try the runbook's
    /// kubectl commands on.
    #[command(subcommand)]
    Sim(SimCommand),
}

/// Arguments of `rehearsal forecast`.
#[derive(Debug, clap::Args)]
struct ForecastArgs {
    /// A rehearsal's report (its directory or its report.json), made with this version (the
    /// seed phase records the database's size). Give two or more sizes for a fitted model.
    #[arg(long = "from", required = true, value_parser = validate::report_json)]
    from: Vec<PathBuf>,
    /// The database size to forecast for (e.g. 10GB, as `run --size`).
    #[arg(long, value_parser = validate::any_size, required_unless_present = "check", conflicts_with = "check")]
    db_size: Option<u64>,
    /// A rehearsal's report at the size to forecast: prints the forecast's error per phase and
    /// for the RTO, and exits 3 when the RTO's error is above --max-error.
    #[arg(long, value_parser = validate::report_json)]
    check: Option<PathBuf>,
    /// The largest tolerated RTO error with --check, in percent (1 to 1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_error: u32,
    /// The largest tolerated growth of the rehearsal process's peak RSS with --check, over
    /// the smallest --from report, in percent (1 to 1000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_rss_growth: u32,
    /// Also write the model and the forecast as JSON here (a new file).
    #[arg(long, value_parser = validate::new_file)]
    json: Option<PathBuf>,
}

/// Where the clusters of `rehearsal run` and `rehearsal runbook` come from.
#[derive(Debug, clap::Args)]
struct ProviderArgs {
    /// Where clusters come from: sim (built in), kind (needs Docker and kind), local (a real
    /// Kubernetes as local processes; needs root and ci/setup's packages and binaries),
    /// kubeconfig (an existing cluster; destroying titanium-prod there needs --allow-destroy
    /// and the cluster's name typed at the prompt).
    #[arg(long, default_value = "sim", value_parser = ["sim", "kind", "local", "kubeconfig"])]
    provider: String,
    /// kind configuration for sim and kind clusters (default: the repository's
    /// kind-config/single-node.yaml, wherever the command runs from).
    #[arg(long, default_value_os_t = default_kind_config(), hide_default_value = true)]
    kind_config: PathBuf,
    /// Kubernetes binaries for --provider local (default: $RR_K8S_BIN, else the cache of
    /// ci/k8s/build.sh; official release binaries work, see ci/k8s/fetch-release.sh).
    #[arg(long, value_name = "DIR")]
    k8s_bin: Option<PathBuf>,
    /// Kubeconfig for --provider kubeconfig (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_parser = validate::existing_file)]
    kubeconfig: Option<PathBuf>,
    /// Context for --provider kubeconfig (default: the current one).
    #[arg(long, value_parser = validate::context)]
    context: Option<String>,
    /// Allow destroying the rehearsal namespace on an existing cluster (asks for its name).
    #[arg(long)]
    allow_destroy: bool,
}

impl ProviderArgs {
    /// The kustomize overlay that fits the provider's clusters.
    fn overlay(&self) -> &'static str {
        match self.provider.as_str() {
            "kind" => "kind",
            "local" => "local",
            "kubeconfig" => "solid-cloud",
            _ => "sim",
        }
    }
}

/// Arguments of `rehearsal run`.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The scenario.
    #[arg(long, default_value = "full_rebuild", value_parser = validate::scenario())]
    scenario: scenarios::Rehearsal,
    #[command(flatten)]
    clusters: ProviderArgs,
    /// Users to seed (1 to 1,000,000).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    users: u32,
    /// Posts to seed (1 to 10,000,000).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    posts: u32,
    /// Seed a database of about this size instead (e.g. 500MB, 1GB, 2.5GiB): users and posts
    /// follow from the generator's measured bytes per post; the seed phase reports the real
    /// size. Not with --users or --posts.
    #[arg(long, value_parser = validate::size, conflicts_with_all = ["users", "posts"])]
    size: Option<u64>,
    /// Seconds the load gate runs (1 to 3600).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=3600))]
    load_seconds: u64,
    /// Report directory (default: a new target/rehearsal/<timestamp>/). It must be new or
    /// empty: an earlier run's report is never overwritten.
    #[arg(long, value_parser = validate::dir_or_missing)]
    report: Option<PathBuf>,
    /// Keep clusters, servers and directories for debugging (like HARNESS_KEEP=1).
    #[arg(long)]
    keep: bool,
}

/// Arguments of `rehearsal runbook`.
#[derive(Debug, clap::Args)]
struct RunbookArgs {
    /// The Markdown document: its fenced bash/sh blocks are run in order.
    #[arg(default_value = "fixtures/runbook/solid-cloud-rebuild-guide.ko.md", value_parser = validate::existing_file)]
    file: PathBuf,
    #[command(flatten)]
    clusters: ProviderArgs,
    /// Report directory (default: a new target/rehearsal/<timestamp>/); new or empty.
    #[arg(long, value_parser = validate::dir_or_missing)]
    report: Option<PathBuf>,
    /// Start at the first block whose section path contains this text.
    #[arg(long)]
    from: Option<String>,
    /// Run only the blocks whose section path contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Each command's deadline in seconds (1 to 3600).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    deadline: u64,
    /// Users to seed into cluster A (1 to 1,000,000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    users: u32,
    /// Posts to seed (1 to 10,000,000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    posts: u32,
    /// Keep clusters and the scratch directory (like HARNESS_KEEP=1).
    #[arg(long)]
    keep: bool,
}

/// `rehearsal sim up|down`.
#[derive(Debug, Subcommand)]
enum SimCommand {
    /// Start a simulated cluster in the background, deploy titanium-prod, print the KUBECONFIG.
    Up {
        /// Cluster name.
        #[arg(long, default_value = "titanium-sim", value_parser = validate::sim_name)]
        name: String,
        /// kind configuration describing the nodes (default: the repository's
        /// kind-config/single-node.yaml).
        #[arg(long, default_value_os_t = default_kind_config(), hide_default_value = true,
              value_parser = validate::existing_file)]
        kind_config: PathBuf,
        /// Users to seed (0: none; at most 1,000,000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
        users: u32,
        /// Posts to seed (at most 10,000,000; needs users).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
        posts: u32,
    },
    /// Stop the simulated cluster and remove its state.
    Down {
        /// Cluster name.
        #[arg(long, default_value = "titanium-sim", value_parser = validate::sim_name)]
        name: String,
    },
}

/// Where the cluster is (for backup, restore and preflight).
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_parser = validate::existing_file)]
    kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig (default: its current context).
    #[arg(long, value_parser = validate::context)]
    context: Option<String>,
    /// The application namespace.
    #[arg(long, short = 'n', default_value = "titanium-prod", value_parser = validate::namespace)]
    namespace: String,
    /// The PostgreSQL pod.
    #[arg(long, default_value = "postgresql-0", value_parser = validate::object_name)]
    pg_pod: String,
}

/// PostgreSQL reached directly instead of through a pod. The password comes from PGPASSWORD.
#[derive(Debug, clap::Args)]
struct DirectPgArgs {
    /// Host of a PostgreSQL reached directly (instead of the pod).
    #[arg(long, value_parser = validate::host)]
    pg_host: Option<String>,
    /// Its port (with --pg-host; a pod is reached on 5432).
    #[arg(long, default_value_t = 5432, value_parser = clap::value_parser!(u16).range(1..), requires = "pg_host")]
    pg_port: u16,
    /// Its user.
    #[arg(long, default_value = "postgres", value_parser = validate::pg_name)]
    pg_user: String,
}

/// Arguments of `rehearsal backup`.
#[derive(Debug, clap::Args)]
struct BackupArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    direct: DirectPgArgs,
    /// The database.
    #[arg(long, default_value = "titanium", value_parser = validate::pg_name)]
    database: String,
    /// Directory the backup is written into (as <name>/ and <name>.tar.gz); created (0700)
    /// when it does not exist.
    #[arg(long, short = 'o', value_parser = validate::dir_or_missing)]
    out: PathBuf,
    /// Backup name (default: <database>-<timestamp>): a single path component.
    #[arg(long, value_parser = validate::backup_name)]
    name: Option<String>,
    /// Also back up Redis from the pod with this label value of `app` (e.g. redis).
    #[arg(long, value_parser = validate::label_value)]
    redis_app: Option<String>,
    /// Also back up every namespaced resource of the namespace.
    #[arg(long)]
    kubernetes: bool,
    /// Scale the namespace's Deployments (except --keep-running) to zero before the snapshot.
    #[arg(long)]
    quiesce: bool,
    /// Also take a physical copy of the server (pg_basebackup in the pod: the runbook's 1.2B,
    /// consistent); `verify` starts a server on it. Needs --quiesce.
    #[arg(long, requires = "quiesce")]
    physical: bool,
    /// Deployments left running by --quiesce.
    #[arg(long, default_value = "prod-redis-deployment", value_parser = validate::object_name, requires = "quiesce")]
    keep_running: Vec<String>,
    /// Terraform working directory whose state is backed up.
    #[arg(long, value_parser = validate::existing_dir)]
    terraform_dir: Option<PathBuf>,
    /// Encrypt the archive with age, with the passphrase in the first line of this file.
    #[arg(long, value_parser = validate::passphrase_file)]
    passphrase_file: Option<PathBuf>,
    /// Encrypt the archive with age for this recipient (age1...).
    #[arg(long, conflicts_with = "passphrase_file", value_parser = validate::age_recipient)]
    recipient: Option<String>,
    /// Copy the archive to this directory (another disk), checked by checksum.
    #[arg(long, value_parser = validate::dir_or_missing)]
    offsite_dir: Vec<PathBuf>,
}

/// Arguments of `rehearsal verify`.
#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The backup: its directory, or its .tar.gz / .tar.gz.age archive.
    #[arg(value_parser = validate::existing_path)]
    backup: PathBuf,
    /// Passphrase file for an encrypted archive.
    #[arg(long, value_parser = validate::passphrase_file)]
    passphrase_file: Option<PathBuf>,
    /// age identity file for an encrypted archive.
    #[arg(long, conflicts_with = "passphrase_file", value_parser = validate::existing_file)]
    identity: Option<PathBuf>,
}

/// `rehearsal restore --method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum MethodArg {
    Custom,
    Sql,
    Csv,
}

/// Arguments of `rehearsal restore`.
#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The backup: its directory, or its .tar.gz archive.
    #[arg(value_parser = validate::backup_dir_or_archive)]
    backup: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    direct: DirectPgArgs,
    /// The database restored into.
    #[arg(long, default_value = "titanium", value_parser = validate::pg_name)]
    database: String,
    /// Which form of the backup's database to load: `custom` (the pg_dump -Fc archive, with
    /// pg_restore -j), `sql` (the plain SQL file with psql in one transaction, the runbook's
    /// 방법 A) or `csv` (the schema, then per-table CSV with \copy, in one transaction, the
    /// runbook's 방법 C).
    #[arg(long, value_enum, default_value_t = MethodArg::Custom)]
    method: MethodArg,
    /// The same as `--method sql`.
    #[arg(long, conflicts_with = "method")]
    from_sql: bool,
    /// Restore over a database that holds data.
    #[arg(long)]
    force: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Point-in-time recovery from a PITR archive (a directory holding PITR.json): every
    /// transaction committed at or before this moment (RFC 3339, e.g. 2026-12-03T06:10:00Z).
    #[arg(long, group = "pitr_target", value_parser = validate::rfc3339)]
    to_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Point-in-time recovery up to this WAL position (X/Y, hexadecimal).
    #[arg(long, group = "pitr_target", value_parser = validate::lsn)]
    to_lsn: Option<harness::pitr::Lsn>,
    /// Point-in-time recovery to the end of the archive.
    #[arg(long, group = "pitr_target")]
    to_latest: bool,
}

impl RestoreArgs {
    /// The point-in-time recovery target, when one was given.
    fn pitr_target(&self) -> Option<harness::pitr::Target> {
        use harness::pitr::Target;
        match (self.to_time, self.to_lsn, self.to_latest) {
            (Some(t), _, _) => Some(Target::Time(t)),
            (_, Some(l), _) => Some(Target::Lsn(l)),
            (_, _, true) => Some(Target::Latest),
            _ => None,
        }
    }
}

/// Arguments of `rehearsal preflight`.
#[derive(Debug, clap::Args)]
struct PreflightArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The database.
    #[arg(long, default_value = "titanium", value_parser = validate::pg_name)]
    database: String,
    /// Where the backup would be written: it must be an existing directory (a missing one or
    /// a file is NO-GO); free space is checked there.
    #[arg(long, default_value = ".")]
    backup_dir: PathBuf,
    /// The terraform working directory, when infrastructure is managed with terraform.
    #[arg(long, value_parser = validate::existing_dir)]
    terraform_dir: Option<PathBuf>,
    /// Also write the result as JSON to this file.
    #[arg(long, value_parser = validate::output_file)]
    json: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    // Validation before work: rules across options, and the file system state they name.
    if let Err(message) = validate::check(&cli.command) {
        eprintln!("error: {message}");
        std::process::exit(exit_codes::USAGE);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REHEARSAL_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(harness::DEFAULT_LOG_FILTER)
            }),
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
    // SIGINT/SIGTERM stop the work through its teardown (signals.rs).
    let code = signals::run(runtime, async {
        let result = match cli.command {
            Command::Run(args) => commands::run(args).await,
            Command::Preflight(args) => commands::preflight(args).await,
            Command::Backup(args) => commands::backup(args).await,
            Command::Verify(args) => commands::verify(args).await,
            Command::Restore(args) => commands::restore(args).await,
            Command::Runbook(args) => commands::runbook(args).await,
            Command::Forecast(args) => commands::forecast(&args),
            Command::Sim(SimCommand::Up {
                name,
                kind_config,
                users,
                posts,
            }) => commands::sim_up(&name, &kind_config, users, posts).await,
            Command::Sim(SimCommand::Down { name }) => commands::sim_down(&name),
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

/// The repository's single-node kind configuration, found from the source tree the binary was
/// built from (as the fixtures are), so the commands work from any directory.
fn default_kind_config() -> PathBuf {
    let cli = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    cli.parent()
        .unwrap_or(cli)
        .join("kind-config/single-node.yaml")
}
