//! `full_rebuild`: the runbook in order. Create cluster A, deploy titanium-prod, seed it, check
//! it read-only (preflight), put it under load, back it up quiesced and verify the backup, copy
//! it off-site, write a marker row, destroy A and check it is gone, create cluster B, restore,
//! run every gate, the health and load gates, and decide: proceed or roll back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use harness::backup::{
    self, BackupOptions, BackupReport, KubePostgres, KubeSource, Manifest, OffsiteTarget,
    PgManifest, PgSource, PodRef, QuiesceOptions, RedisSource, VerifyOptions,
};
use harness::cluster::{AnyCluster, Cluster, ProviderSpec};
use harness::data::DatasetSpec;
use harness::facts;
use harness::load::{HealthGate, LoadGate};
use harness::pg::{LocalOptions, LocalPostgres, PgTools, PostgresProvider};
use harness::report::{BackupEvidence, GateReport, LoadReport, Outcome, Report, TableReport};
use harness::restore::{
    DataRestorer, DbRestoreInput, DbRestoreOptions, KubeRestoreOptions, KubeRestorePlan, MarkerRow,
    PlanRoles, restore_database, restore_kubernetes,
};
use harness::verify::{
    self, Decision, Finding, FindingKind, Gate, HealthSample, PodObservation, RollbackInputs,
    RollbackThresholds, Verdict, findings_text,
};

use crate::run::{Observer, Run, millis};
use crate::titanium::{self, LOAD_GENERATOR, NAMESPACE, PG_POD, REDIS};

mod cluster_a;
mod cluster_b;
mod gates;
mod snapshot;
mod variants;

use cluster_a::*;
pub(crate) use cluster_a::{deploy, seed};
use cluster_b::*;
use gates::*;
pub(crate) use gates::{gate_report, table_reports};
use variants::*;

/// What to rehearse, on which provider, with how much data.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where clusters come from.
    pub provider: ProviderSpec,
    /// The kustomize overlay to deploy (`fixtures/k8s/overlays/sim`, `kind`, ...).
    pub overlay: PathBuf,
    /// Users to seed.
    pub users: u32,
    /// Posts to seed.
    pub posts: u32,
    /// Dataset seed.
    pub seed: u64,
    /// The report directory: the backup goes to `backup/` under it, goose's report into it.
    pub report_dir: PathBuf,
    /// How long the load gate runs.
    pub load_time: Duration,
    /// Concurrent users of the load gate.
    pub load_users: usize,
    /// Health probes per endpoint.
    pub health_probes: u32,
    /// Deadline of each readiness wait.
    pub ready_timeout: Duration,
    /// The rollback criteria.
    pub thresholds: RollbackThresholds,
}

impl Config {
    /// A modest rehearsal on `provider`: quick enough for CI, real in every step.
    pub fn modest(provider: ProviderSpec, overlay: PathBuf, report_dir: PathBuf) -> Self {
        Self {
            provider,
            overlay,
            report_dir,
            users: 200,
            posts: 2_000,
            seed: 20_250_124,
            load_time: Duration::from_secs(3),
            load_users: 4,
            health_probes: 5,
            ready_timeout: Duration::from_secs(120),
            thresholds: RollbackThresholds::runbook(),
        }
    }
}

impl Config {
    /// Where the backup (and its off-site copy, under `offsite/`) is written.
    pub fn backup_dir(&self) -> PathBuf {
        self.report_dir.join("backup")
    }
}

/// Which rehearsal to run. All share the runbook's spine (cluster A, backup, destroy, cluster
/// B, restore, gates); they differ in how the database comes back and what is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// The runbook in order.
    FullRebuild,
    /// The runbook's per-table method B: `users` and `posts` restored from their own files.
    TableRestore,
    /// A defect injected after the restore must make the gates reject it; then the runbook's
    /// rollback option 1 (drop, recreate, restore again) must make them green.
    Rollback,
    /// Cluster B's init script differs from A's (a changed column) and the data is restored
    /// into B's schema: the schema gate must report exactly that drift.
    SchemaDrift,
    /// Point-in-time recovery (see [`crate::pitr`]): WAL streamed off cluster A, a base
    /// backup, a marker stream; cluster B's database recovered to a moment in the stream, the
    /// markers proved row by row, the RPO measured by a recovery to the archive's end.
    Pitr,
    /// The runbook's physical path on one cluster (see `snapshot.rs`): a VolumeSnapshot
    /// (1.2A), the database destroyed, rollback option 3 (a claim from the snapshot, the
    /// StatefulSet patched onto it), every data gate.
    SnapshotRestore,
    /// `SnapshotRestore` with the snapshot taken under write load: crash recovery must bring
    /// back exactly the rows committed up to one instant.
    SnapshotUnderLoad,
}

impl Scenario {
    fn has_phase(self, phase: &str) -> bool {
        if self.is_snapshot() {
            return match phase {
                "start-writer" | "stop-writer" | "snapshot-consistency" => {
                    self == Scenario::SnapshotUnderLoad
                }
                "create-cluster-a" | "deploy" | "seed" | "preflight" | "start-load" | "backup"
                | "verify-backup" | "volume-snapshot" | "marker" | "destroy-database"
                | "restore" | "resume-writers" | "gates" | "resume-load" | "health-and-load"
                | "decide" => true,
                _ => false,
            };
        }
        match phase {
            "start-writer"
            | "stop-writer"
            | "snapshot-consistency"
            | "volume-snapshot"
            | "destroy-database"
            | "resume-writers"
            | "resume-load" => false,
            "inject-defect"
            | "gates-reject-defect"
            | "rollback-restore"
            | "gates-after-rollback" => self == Scenario::Rollback,
            "schema-drift-reported" => self == Scenario::SchemaDrift,
            "health-and-load" | "decide" => self != Scenario::SchemaDrift,
            "start-wal-archive" | "base-backup" | "marker-stream" | "seal-wal-archive"
            | "plan-recovery" | "recover-to-latest" => self == Scenario::Pitr,
            "marker" => self != Scenario::Pitr,
            _ => true,
        }
    }

    /// Every scenario with its name.
    pub const ALL: [(&'static str, Scenario); 7] = [
        ("full_rebuild", Scenario::FullRebuild),
        ("table_restore", Scenario::TableRestore),
        ("rollback", Scenario::Rollback),
        ("schema_drift", Scenario::SchemaDrift),
        ("pitr", Scenario::Pitr),
        ("snapshot_restore", Scenario::SnapshotRestore),
        ("snapshot_under_load", Scenario::SnapshotUnderLoad),
    ];

    /// Whether the scenario restores from a VolumeSnapshot (one cluster; it needs the CSI
    /// snapshot API and a driver that takes snapshots of the database's claim).
    pub fn is_snapshot(self) -> bool {
        matches!(
            self,
            Scenario::SnapshotRestore | Scenario::SnapshotUnderLoad
        )
    }

    /// The scenario's name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map(|(n, _)| *n)
            .expect("every scenario is listed")
    }
}

/// The column the schema_drift scenario changes in cluster B's init script.
const DRIFT_FROM: &str = "title VARCHAR(200)";

const DRIFT_TO: &str = "title VARCHAR(300)";

/// The phases of `full_rebuild`, in order.
pub const PHASES: [&str; 33] = [
    "create-cluster-a",
    "deploy",
    "seed",
    "preflight",
    "start-wal-archive",
    "start-load",
    "backup",
    "base-backup",
    "verify-backup",
    "start-writer",
    "volume-snapshot",
    "marker",
    "marker-stream",
    "stop-writer",
    "destroy-database",
    "destroy-cluster-a",
    "seal-wal-archive",
    "create-cluster-b",
    "deploy-infrastructure",
    "plan-recovery",
    "restore",
    "resume-writers",
    "gates",
    "snapshot-consistency",
    "resume-load",
    "recover-to-latest",
    "inject-defect",
    "gates-reject-defect",
    "rollback-restore",
    "gates-after-rollback",
    "schema-drift-reported",
    "health-and-load",
    "decide",
];

/// Runs `full_rebuild` and returns its report.
pub async fn run(config: &Config, observer: &dyn Observer) -> Report {
    run_scenario(Scenario::FullRebuild, config, observer).await
}

/// Runs a scenario and returns its report; never panics on a failed step, which is recorded in
/// the report with the phases after it skipped.
pub async fn run_scenario(scenario: Scenario, config: &Config, observer: &dyn Observer) -> Report {
    let started_at = chrono::Utc::now().to_rfc3339();
    let mut run = Run::new(observer);
    let mut state = State::default();
    let mut clusters = Clusters::default();
    let outcome = steps(scenario, config, &mut run, &mut state, &mut clusters).await;
    if let Err(err) = &outcome {
        tracing::warn!(error = %format!("{err:#}"), "full_rebuild stopped");
    }
    teardown(clusters).await;
    let phases_of_this: Vec<&str> = PHASES
        .iter()
        .copied()
        .filter(|p| scenario.has_phase(p))
        .collect();
    let phases = run.finish(outcome, &phases_of_this);
    // The decision's reasons and unassessed criteria go into the report as they are;
    // `conclude` adds every failed gate and phase the decision did not name.
    let (rollback_reasons, not_assessed) = match &state.decision {
        Some(d) => (
            d.explain(),
            d.not_assessed.iter().map(ToString::to_string).collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    // Read last, so it covers the whole run; unreadable, the report has none and the forecast's
    // memory check says it could not check.
    let peak_rss_bytes = match harness::process::own_peak_rss() {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            tracing::warn!("peak RSS of this process: {err}");
            None
        }
    };
    let mut report = Report {
        scenario: scenario.name().into(),
        provider: config.provider.kind().to_string(),
        verdict: Outcome::Fail,
        started_at,
        phases,
        tables: state.tables,
        gates: state.gates,
        load: state.load,
        rto_ms: state.rto_ms,
        rpo_ms: state.rpo_ms,
        rpo_clock: state.rpo_ms.map(|_| RPO_CLOCK.to_owned()),
        pods_ready_ms: state.pods_ready_ms,
        peak_rss_bytes,
        rollback_reasons,
        not_assessed,
        backup: state.backup,
    };
    report.conclude();
    report
}

/// What the run has gathered for its report.
#[derive(Default)]
struct State {
    tables: Vec<TableReport>,
    gates: Vec<GateReport>,
    load: Option<LoadReport>,
    rto_ms: Option<u64>,
    rpo_ms: Option<u64>,
    pods_ready_ms: Option<u64>,
    decision: Option<Decision>,
    backup: Option<BackupEvidence>,
}

/// The clusters a run holds; whatever is left when it ends is torn down (see [`teardown`]).
#[derive(Default)]
struct Clusters {
    a: Option<AnyCluster>,
    b: Option<AnyCluster>,
}

/// Destroys what a run left: throwaway clusters always (unless `HARNESS_KEEP`), an existing
/// cluster never (there, the restored namespace is the result).
async fn teardown(clusters: Clusters) {
    teardown_all([clusters.a, clusters.b].into_iter().flatten()).await;
}

/// Destroys throwaway clusters (unless `HARNESS_KEEP`); never an existing one.
pub(crate) async fn teardown_all(clusters: impl IntoIterator<Item = AnyCluster>) {
    for mut cluster in clusters {
        if cluster.provider() == harness::cluster::ProviderKind::Kubeconfig
            || harness::keep::keep_requested()
        {
            continue;
        }
        if let Err(err) = cluster.destroy().await {
            tracing::warn!(cluster = cluster.name(), error = %err, "could not tear down");
        }
    }
}

async fn steps(
    scenario: Scenario,
    config: &Config,
    run: &mut Run<'_>,
    state: &mut State,
    clusters: &mut Clusters,
) -> anyhow::Result<()> {
    let tools = PgTools::discover()?;
    if scenario.is_snapshot() {
        // Its own future on the heap: the spine's is already large.
        return Box::pin(snapshot::steps(
            scenario, config, run, state, clusters, &tools,
        ))
        .await;
    }
    let a = clusters.a.insert(
        run.phase("create-cluster-a", config.provider.create())
            .await?,
    );
    let (backed_up, wal) = back_up_cluster_a(scenario, config, run, state, a, &tools).await?;
    let marker = MarkerRow::new(format!("run-{}", uuid_like()));
    let markers = write_markers(run, a, config, &backed_up.backup, wal.as_ref(), &marker).await?;

    let destroy_started = Instant::now();
    destroy_cluster_a(run, clusters, wal).await?;
    let b = clusters.b.insert(
        run.phase("create-cluster-b", config.provider.create())
            .await?,
    );
    let b = &*b;
    let recovery = prepare_cluster_b(run, b, config, &tools, markers.as_ref()).await?;
    let restored = run
        .phase(
            "restore",
            restore(
                scenario,
                b,
                &backed_up.backup,
                &tools,
                config,
                recovery.as_ref().map(|(plan, _)| plan),
            ),
        )
        .await?;
    run.measure(backed_up.dump_bytes, Some(backed_up.rows));
    run.note(restore_note(&restored));

    let recovered_to = recovery.as_ref().map(|(_, t)| *t);
    let (mut gates, markers_gate) = run
        .phase(
            "gates",
            gates_on_b(
                scenario,
                b,
                config,
                &backed_up.backup,
                &marker,
                markers.as_ref(),
                recovered_to,
            ),
        )
        .await?;
    run.measure(None, Some(backed_up.rows));
    state.gates.extend(markers_gate);
    if let Some(markers) = &markers {
        recover_to_latest(run, state, config, &tools, markers).await?;
    }
    if scenario == Scenario::SchemaDrift {
        return record_drift(run, state, &gates).await;
    }
    if scenario == Scenario::Rollback {
        gates =
            rehearse_rollback(run, state, b, config, &tools, &backed_up.backup, &marker).await?;
    }
    state.tables = table_reports(&backed_up.pg.tables, &gates.tables);
    state.gates.extend(gates.verdicts.iter().map(gate_report));

    serve_and_decide(run, state, b, config, &gates, &restored, destroy_started).await
}

/// The runbook's Phase 6 and the rollback decision on the restored cluster: the health and
/// load gates (a failed one fails its phase, and the run goes on to the decision, which names
/// it as a reason with its evidence), the RTO, then `decide`.
async fn serve_and_decide(
    run: &mut Run<'_>,
    state: &mut State,
    cluster: &impl Cluster,
    config: &Config,
    gates: &Gates,
    restored: &Restored,
    destroy_started: Instant,
) -> anyhow::Result<()> {
    let service = run
        .judged_phase("health-and-load", async {
            let service = health_and_load(cluster, config).await?;
            let failed = service_failure(&service);
            anyhow::Ok((service, failed))
        })
        .await?;
    if service_failure(&service).is_none() {
        run.note(format!("through {}", service.ingress));
    }
    record_service(state, &service);
    state.rto_ms = Some(millis(destroy_started.elapsed()));
    state.pods_ready_ms = restored.pods_ready.map(millis);
    let judged = Judged {
        gates,
        service: &service,
        restored,
        destroy_started,
    };
    let (decision, resources) = run.phase("decide", decide(cluster, config, judged)).await?;
    state.gates.push(resources);
    run.note(match decision.action {
        verify::Action::Proceed => "proceed".to_owned(),
        verify::Action::RollBack => format!("roll back: {}", decision.explain().join("; ")),
        verify::Action::NotAssessed => {
            format!("cannot proceed: {}", decision.explain().join("; "))
        }
    });
    state.decision = Some(decision);
    Ok(())
}

/// The backup of cluster A, with the figures later phases measure against.
struct BackedUp {
    backup: BackupReport,
    /// The backup's PostgreSQL part.
    pg: PgManifest,
    /// Rows in the backup's snapshot.
    rows: u64,
    /// The custom archive's size: what a restore loads.
    dump_bytes: Option<u64>,
}

/// What the rollback decision judges, besides the pods it observes.
#[derive(Clone, Copy)]
struct Judged<'a> {
    gates: &'a Gates,
    service: &'a Service,
    restored: &'a Restored,
    destroy_started: Instant,
}

/// The restore's timings; `None` when the restore did not measure one (then the rollback
/// criterion it feeds is not assessed, never met).
struct Restored {
    db_restore: Option<Duration>,
    recovery: Option<Duration>,
    analyze: Option<Duration>,
    pods_ready: Option<Duration>,
}

/// Restores databases and Redis when the plan reaches them, reaching both through port-forwards
/// of the rebuilt cluster.
struct ClusterData<'a, C: Cluster> {
    scenario: Scenario,
    cluster: &'a C,
    backup: &'a BackupReport,
    tools: &'a PgTools,
    pitr: Option<&'a harness::pitr::RecoveryPlan>,
    db_restore: Option<Duration>,
    analyze: Option<Duration>,
    recovery: Option<Duration>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Gates {
    verdicts: Vec<Verdict>,
    tables: Vec<facts::TableFacts>,
}

struct Service {
    health: harness::load::HealthVerdict,
    load: harness::load::LoadVerdict,
    /// The way the probes went in ([`titanium::Ingress::path`]).
    ingress: String,
}
