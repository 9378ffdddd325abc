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
    DataRestorer, DbArchive, DbRestoreInput, DbRestoreOptions, KubeRestoreOptions, KubeRestorePlan,
    MarkerRow, PlanRoles, restore_database, restore_kubernetes,
};
use harness::verify::{
    self, Decision, Finding, FindingKind, Gate, HealthSample, PodObservation, RollbackInputs,
    RollbackThresholds, Verdict, findings_text,
};

use crate::run::{Observer, Run, millis};
use crate::titanium::{self, LOAD_GENERATOR, NAMESPACE, PG_POD, REDIS};

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
}

impl Scenario {
    fn has_phase(self, phase: &str) -> bool {
        match phase {
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
    pub const ALL: [(&'static str, Scenario); 5] = [
        ("full_rebuild", Scenario::FullRebuild),
        ("table_restore", Scenario::TableRestore),
        ("rollback", Scenario::Rollback),
        ("schema_drift", Scenario::SchemaDrift),
        ("pitr", Scenario::Pitr),
    ];

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
pub const PHASES: [&str; 26] = [
    "create-cluster-a",
    "deploy",
    "seed",
    "preflight",
    "start-wal-archive",
    "start-load",
    "backup",
    "base-backup",
    "verify-backup",
    "marker",
    "marker-stream",
    "destroy-cluster-a",
    "seal-wal-archive",
    "create-cluster-b",
    "deploy-infrastructure",
    "plan-recovery",
    "restore",
    "gates",
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

    // A failed health or load gate fails this phase, and the run goes on to the decision,
    // which names it as a reason with its evidence.
    let service = run
        .judged_phase("health-and-load", async {
            let service = health_and_load(b, config).await?;
            let failed = service_failure(&service);
            anyhow::Ok((service, failed))
        })
        .await?;
    record_service(state, &service);
    state.rto_ms = Some(millis(destroy_started.elapsed()));
    let judged = Judged {
        gates: &gates,
        service: &service,
        restored: &restored,
        destroy_started,
    };
    let decision = run.phase("decide", decide(b, config, judged)).await?;
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

/// Cluster A from its deployment to a verified backup: deploy, seed, preflight, (PITR: the WAL
/// archive), load, backup, RPO, (PITR: base backup) and the backup's verification.
async fn back_up_cluster_a(
    scenario: Scenario,
    config: &Config,
    run: &mut Run<'_>,
    state: &mut State,
    a: &AnyCluster,
    tools: &PgTools,
) -> anyhow::Result<(BackedUp, Option<crate::pitr::WalArchive>)> {
    run.phase("deploy", deploy(a, config)).await?;
    let seeded = run.phase("seed", seed(a, config)).await?;
    run.note(format!(
        "{} users, {} posts, database {:.1} MB",
        seeded.0,
        seeded.1,
        seeded.2 as f64 / 1e6
    ));
    // The database's size is the scale `rehearsal forecast` reads from a report.
    run.measure(Some(seeded.2), Some(seeded.0 + seeded.1));
    run.phase("preflight", preflight(a, config)).await?;
    // PITR: WAL streams off cluster A from before the backup until its destruction.
    let mut wal = None;
    if scenario == Scenario::Pitr {
        wal = Some(
            run.phase(
                "start-wal-archive",
                crate::pitr::start_archive(a, config, tools),
            )
            .await?,
        );
    }
    run.phase("start-load", start_load(a, config)).await?;
    let backup = run.phase("backup", take_backup(a, config)).await?;
    let manifest = &backup.manifest;
    state.backup = Some(backup_evidence(&backup)?);
    let pg = manifest
        .postgres
        .clone()
        .context("the backup has no PostgreSQL part")?;
    // Throughputs: a backup writes every file of its manifest and reads every row; its
    // verification reads every file again; a restore loads the custom archive's rows; the
    // gates read every row again for the counts and digests.
    let backup_bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    let rows: u64 = pg.tables.iter().map(|t| t.rows).sum();
    let dump_bytes = manifest
        .files
        .iter()
        .find(|f| f.path == pg.custom_dump)
        .map(|f| f.size);
    run.measure(Some(backup_bytes), Some(rows));
    match rpo(manifest) {
        Ok(ms) => state.rpo_ms = Some(ms),
        // Not clamped, not dropped: an RPO that cannot be measured, or a snapshot before
        // writes stopped, is a failed gate with the figures.
        Err(why) => state.gates.push(GateReport {
            name: "rpo".into(),
            passed: false,
            findings: vec![Finding::new("rpo", FindingKind::Broken, why)],
            not_run: None,
        }),
    }
    if let Some(wal) = &wal {
        let base = run.phase("base-backup", wal.base_backup(tools)).await?;
        run.note(base);
    }
    run.phase("verify-backup", verify(&backup, tools)).await?;
    run.measure(Some(backup_bytes), None);
    let backed_up = BackedUp {
        backup,
        pg,
        rows,
        dump_bytes,
    };
    Ok((backed_up, wal))
}

/// The writes after the backup that the restore must not bring back: one marker row, or with
/// PITR a stream of them (returned) that the load generator keeps company until the disaster.
async fn write_markers(
    run: &mut Run<'_>,
    a: &AnyCluster,
    config: &Config,
    backup: &BackupReport,
    wal: Option<&crate::pitr::WalArchive>,
    marker: &MarkerRow,
) -> anyhow::Result<Option<crate::pitr::Markers>> {
    let Some(wal) = wal else {
        run.phase("marker", write_marker(a, marker)).await?;
        return Ok(None);
    };
    // The quiesced Deployments resume at their recorded counts in the stream's second
    // half, so the load generator writes until the disaster.
    let replicas = &backup
        .manifest
        .quiesce
        .as_ref()
        .context("the backup recorded no quiesce (no replica counts to resume)")?
        .replicas;
    let stream = run
        .phase(
            "marker-stream",
            crate::pitr::marker_stream(a, wal.params(), replicas, config.ready_timeout),
        )
        .await?;
    run.note(format!("{} markers committed", stream.len()));
    Ok(Some(stream))
}

/// Destroys cluster A and, with PITR, seals the WAL archive that streamed off it.
async fn destroy_cluster_a(
    run: &mut Run<'_>,
    clusters: &mut Clusters,
    wal: Option<crate::pitr::WalArchive>,
) -> anyhow::Result<()> {
    let a = clusters.a.as_mut().expect("cluster A exists");
    run.phase("destroy-cluster-a", async {
        a.destroy().await?;
        anyhow::Ok(())
    })
    .await?;
    clusters.a = None;
    if let Some(wal) = wal {
        let sealed = run.phase("seal-wal-archive", wal.seal()).await?;
        run.note(format!(
            "{} segments of {} MiB, the last sealed from .partial",
            sealed.segments.len(),
            sealed.segment_size / (1024 * 1024)
        ));
    }
    Ok(())
}

/// Cluster B's infrastructure (CRDs) and, with PITR, the recovery plan to a moment in the
/// marker stream (the plan and that moment).
async fn prepare_cluster_b(
    run: &mut Run<'_>,
    b: &AnyCluster,
    config: &Config,
    tools: &PgTools,
    markers: Option<&crate::pitr::Markers>,
) -> anyhow::Result<Option<(harness::pitr::RecoveryPlan, chrono::DateTime<chrono::Utc>)>> {
    let crds = run
        .phase(
            "deploy-infrastructure",
            harness::deploy::apply_infrastructure(b, &config.overlay),
        )
        .await?;
    run.note(format!("{crds} CustomResourceDefinitions established"));
    let Some(markers) = markers else {
        return Ok(None);
    };
    let (plan, t, id) = run
        .phase("plan-recovery", async {
            let (t, id) = markers.target()?;
            let plan = crate::pitr::plan(tools, config, &harness::pitr::Target::Time(t)).await?;
            anyhow::Ok((plan, t, id))
        })
        .await?;
    run.note(format!(
        "T = {} (after marker {id}); {}",
        t.to_rfc3339(),
        plan.range
    ));
    Ok(Some((plan, t)))
}

/// The restore's durations, for its phase's note.
fn restore_note(restored: &Restored) -> String {
    let seconds = |d: Option<Duration>| {
        d.map_or_else(
            || "not measured".to_owned(),
            |d| format!("{:.1} s", d.as_secs_f64()),
        )
    };
    format!(
        "database {}, of which ANALYZE {}{}",
        seconds(restored.db_restore),
        seconds(restored.analyze),
        restored.recovery.map_or_else(String::new, |d| format!(
            "; point-in-time recovery {}",
            seconds(Some(d))
        ))
    )
}

/// Every gate on cluster B, and with PITR the marker stream's gate (returned beside them),
/// which runs first: it drops its schema, so that the other gates compare the application's
/// data with the backup.
async fn gates_on_b(
    scenario: Scenario,
    b: &AnyCluster,
    config: &Config,
    backup: &BackupReport,
    marker: &MarkerRow,
    markers: Option<&crate::pitr::Markers>,
    recovered_to: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<(Gates, Option<GateReport>)> {
    let markers_gate = match (markers, recovered_to) {
        (Some(markers), Some(t)) => {
            let db = titanium::database(b).await?;
            Some(crate::pitr::markers_gate(&db.params, markers, t).await?)
        }
        _ => None,
    };
    let absent = (scenario != Scenario::Pitr).then_some(marker);
    let gates = run_gates(b, backup, absent, config, scenario != Scenario::Rollback).await?;
    Ok((gates, markers_gate))
}

/// PITR: a recovery to the WAL archive's end, whose gate proves the markers and whose last
/// recovered marker gives the RPO.
async fn recover_to_latest(
    run: &mut Run<'_>,
    state: &mut State,
    config: &Config,
    tools: &PgTools,
    markers: &crate::pitr::Markers,
) -> anyhow::Result<()> {
    let (gate, rpo) = run
        .judged_phase("recover-to-latest", async {
            let (gate, rpo) = crate::pitr::latest(tools, config, markers).await?;
            let failed = (!gate.passed).then(|| (gate.name.clone(), gate.findings_text("; ")));
            anyhow::Ok(((gate, rpo), failed))
        })
        .await?;
    run.note(format!("RPO {rpo} ms"));
    state.gates.push(gate);
    // The PITR figure: from the last marker committed before the disaster to the last
    // one recovered, both on cluster A's server clock.
    state.rpo_ms = Some(rpo);
    Ok(())
}

/// schema_drift: the gates must report the drift; the gates that caught it are recorded as
/// detections.
async fn record_drift(run: &mut Run<'_>, state: &mut State, gates: &Gates) -> anyhow::Result<()> {
    run.phase("schema-drift-reported", async {
        expect_drift(&gates.verdicts)
    })
    .await?;
    for verdict in &gates.verdicts {
        let findings = verdict.findings.clone();
        state.gates.push(match verdict.gate {
            Gate::Schema => GateReport {
                name: "schema-drift-detected".into(),
                passed: true,
                findings,
                not_run: None,
            },
            Gate::KubernetesObjects if !verdict.passed => GateReport {
                name: "init-script-change-detected".into(),
                passed: true,
                findings,
                not_run: None,
            },
            _ => gate_report(verdict),
        });
    }
    Ok(())
}

/// rollback: a defect injected after the restore must be rejected by a data gate; then the
/// runbook's rollback (restore again) and the gates once more, whose verdicts are returned.
async fn rehearse_rollback(
    run: &mut Run<'_>,
    state: &mut State,
    b: &AnyCluster,
    config: &Config,
    tools: &PgTools,
    backup: &BackupReport,
    marker: &MarkerRow,
) -> anyhow::Result<Gates> {
    let defect = run.phase("inject-defect", inject_defect(b)).await?;
    run.note(&defect);
    let rejected = run
        .phase(
            "gates-reject-defect",
            run_gates(b, backup, Some(marker), config, false),
        )
        .await?;
    state.gates.extend(
        rejected
            .verdicts
            .iter()
            .filter(|v| !v.passed)
            .map(|v| GateReport {
                name: format!("{} (defect: {defect}) rejected", v.gate),
                passed: true,
                findings: v.findings.clone(),
                not_run: None,
            }),
    );
    // The defect is rejected when a data gate failed on it (a gate that could not run
    // rejects nothing).
    let rejected_by_data = rejected.verdicts.iter().any(|v| {
        !v.passed && v.not_checked().is_none() && matches!(v.gate, Gate::RowCounts | Gate::Digests)
    });
    if !rejected_by_data {
        state.gates.push(GateReport {
            name: "defect-rejected".into(),
            passed: false,
            findings: vec![Finding::new(
                "defect",
                FindingKind::Missing,
                format!("the gates passed a restore with {defect}"),
            )],
            not_run: None,
        });
        anyhow::bail!("the gates did not reject the injected defect ({defect})");
    }
    run.phase("rollback-restore", rollback_restore(b, backup, tools))
        .await?;
    run.phase(
        "gates-after-rollback",
        run_gates(b, backup, Some(marker), config, true),
    )
    .await
    .map_err(Into::into)
}

/// The health and load gates' verdicts and the load figures, into the report.
fn record_service(state: &mut State, service: &Service) {
    state.gates.push(GateReport {
        name: "health".into(),
        passed: service.health.passed,
        findings: service.health.findings.clone(),
        not_run: None,
    });
    state.gates.push(GateReport {
        name: "load".into(),
        passed: service.load.passed,
        findings: service.load.findings.clone(),
        not_run: None,
    });
    state.load = Some(load_report(&service.load));
}

/// What the rollback decision judges, besides the pods it observes.
#[derive(Clone, Copy)]
struct Judged<'a> {
    gates: &'a Gates,
    service: &'a Service,
    restored: &'a Restored,
    destroy_started: Instant,
}

/// The rollback decision over the gates, the health and load gates, the pods and the
/// durations.
async fn decide(b: &AnyCluster, config: &Config, judged: Judged<'_>) -> anyhow::Result<Decision> {
    let pods = observe_pods(b).await?;
    let endpoints = &judged.service.health.endpoints;
    let attempts: u32 = endpoints.iter().map(|e| e.probes).sum();
    let failures: u32 = endpoints.iter().map(|e| e.failures).sum();
    let slowest = endpoints.iter().map(|e| e.slowest).max();
    let inputs = RollbackInputs {
        verdicts: judged.gates.verdicts.clone(),
        health: Some(HealthSample { attempts, failures }),
        max_response_time: slowest,
        pods: Some(pods),
        db_restore: judged.restored.db_restore,
        total: Some(judged.destroy_started.elapsed()),
        pods_ready_wait: judged.restored.pods_ready,
        load: Some(judged.service.load.sample()),
    };
    Ok(verify::decide(&inputs, &config.thresholds))
}

/// Which gate of the health-and-load phase failed, and why, when one did.
fn service_failure(service: &Service) -> Option<(String, String)> {
    if !service.load.passed {
        return Some(("load".into(), findings_text(&service.load.findings, "; ")));
    }
    if !service.health.passed {
        return Some((
            "health".into(),
            findings_text(&service.health.findings, "; "),
        ));
    }
    None
}

/// The load gate's figures for the report, with each request kind's latencies.
fn load_report(load: &harness::load::LoadVerdict) -> LoadReport {
    let overall = &load.figures.overall;
    LoadReport {
        requests: overall.requests,
        failures: overall.failures,
        rps: overall.rps,
        p95_ms: overall.p95_ms,
        goose_report: load
            .report
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
        endpoints: load
            .figures
            .per_request
            .iter()
            .map(|r| verify::EndpointLatency {
                name: r.name.clone(),
                p50_ms: r.p50_ms,
                p95_ms: r.p95_ms,
            })
            .collect(),
    }
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// Each table of `before` with what `after` holds of it.
pub(crate) fn table_reports(
    before: &[facts::TableFacts],
    after: &[facts::TableFacts],
) -> Vec<TableReport> {
    before
        .iter()
        .map(|b| {
            let a = after
                .iter()
                .find(|t| t.name == b.name && t.schema == b.schema);
            TableReport {
                name: b.name.clone(),
                rows_before: b.rows,
                rows_after: a.map(|t| t.rows),
                digest_before: b.digest.clone(),
                digest_after: a.map(|t| t.digest.clone()),
            }
        })
        .collect()
}

pub(crate) fn gate_report(verdict: &Verdict) -> GateReport {
    GateReport {
        name: verdict.gate.to_string(),
        passed: verdict.passed,
        findings: verdict.findings.clone(),
        not_run: verdict.not_checked(),
    }
}

/// The clock both ends of the RPO are read from.
const RPO_CLOCK: &str = "postgresql server";

/// RPO: from the moment the quiesce stopped writes to the snapshot, both read from the
/// PostgreSQL server's clock (`clock_timestamp()` once no writer pod was left, and the
/// snapshot transaction's start), so no clock skew between machines enters it.
///
/// # Errors
/// Why it cannot be measured, or the negative figure when the snapshot came first: never
/// clamped to zero, since a snapshot before writes stopped may miss writes.
pub(crate) fn rpo(manifest: &Manifest) -> Result<u64, String> {
    let quiesce = manifest
        .quiesce
        .as_ref()
        .ok_or("the backup was not quiesced: no point at which writes stopped")?;
    let snapshot = &manifest
        .postgres
        .as_ref()
        .ok_or("the backup has no PostgreSQL snapshot")?
        .snapshot_at;
    rpo_between(quiesce.writes_stopped_server_at.as_deref(), snapshot)
}

/// The RPO from `stopped` (writes stopped, server clock) to `snapshot` (server clock).
fn rpo_between(stopped: Option<&str>, snapshot: &str) -> Result<u64, String> {
    let stopped = stopped.ok_or(
        "the backup recorded no server time at which writes stopped (taken without PostgreSQL?)",
    )?;
    let parse = |what: &str, text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("{what} {text:?} is not an RFC 3339 time: {e}"))
    };
    let ms = (parse("snapshot time", snapshot)? - parse("writes-stopped time", stopped)?)
        .num_milliseconds();
    u64::try_from(ms).map_err(|_| {
        format!(
            "the snapshot ({snapshot}) was taken {} ms before writes stopped ({stopped}) on \
             the server clock: writes after the snapshot may be missing from the backup",
            -ms
        )
    })
}

/// Applies the manifests, holds the load generator at zero until the data is seeded, and waits
/// until everything is ready.
pub(crate) async fn deploy(cluster: &impl Cluster, config: &Config) -> anyhow::Result<()> {
    harness::deploy::apply_kustomize(cluster, &config.overlay).await?;
    let client = cluster.client().await?;
    titanium::scale(&client, LOAD_GENERATOR, 0, config.ready_timeout).await?;
    harness::deploy::wait_ready(&client, NAMESPACE, config.ready_timeout).await?;
    Ok(())
}

/// Seeds cluster A; returns the users, the posts, and the database's size afterwards.
pub(crate) async fn seed(
    cluster: &impl Cluster,
    config: &Config,
) -> anyhow::Result<(u64, u64, u64)> {
    let db = titanium::database(cluster).await?;
    let client = db.params.connect().await?;
    // The load generator starts with the manifests and may write before `deploy` has scaled
    // it to zero (on a real cluster, whose deploy takes a minute, it does): what it wrote is
    // not the dataset. Cluster A was created by this run, so its tables are emptied first.
    client
        .batch_execute("TRUNCATE public.posts, public.users RESTART IDENTITY CASCADE")
        .await
        .context("empty what the load generator wrote before the seed")?;
    let stats = harness::data::load_dataset(
        &client,
        &DatasetSpec::new(config.seed, config.users, config.posts),
    )
    .await?;
    let bytes: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .context("read the seeded database's size")?
        .get(0);
    let bytes = u64::try_from(bytes).context("pg_database_size is negative")?;
    Ok((stats.users, stats.posts, bytes))
}

async fn preflight(cluster: &impl Cluster, config: &Config) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    // The runbook makes its backup directory first (section 1, "백업 디렉토리 생성"); the
    // preflight then checks it exists, is a directory and is writable.
    let dir = ensure_dir(&config.backup_dir())?;
    harness::keep::set_private_dir(&dir)
        .with_context(|| format!("make {} private", dir.display()))?;
    let options = harness::preflight::PreflightOptions::runbook(NAMESPACE, dir);
    let report = harness::preflight::run(client, &options).await;
    ensure!(report.go(), "preflight says NO-GO:\n{report}");
    Ok(())
}

/// Starts the load generator and waits until it has written, so the backup runs under load.
async fn start_load(cluster: &impl Cluster, config: &Config) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    let db = titanium::database(cluster).await?;
    let pg = db.params.connect().await?;
    let count = |pg: tokio_postgres::Client| async move {
        let n: i64 = pg
            .query_one("SELECT count(*) FROM posts", &[])
            .await?
            .get(0);
        anyhow::Ok((n, pg))
    };
    let (before, pg) = count(pg).await?;
    titanium::scale(&client, LOAD_GENERATOR, 2, config.ready_timeout).await?;
    let deadline = Instant::now() + config.ready_timeout;
    let mut pg = pg;
    loop {
        let (now, back) = count(pg).await?;
        pg = back;
        if now > before {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the load generator wrote nothing in {} s",
                config.ready_timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn take_backup(cluster: &impl Cluster, config: &Config) -> anyhow::Result<BackupReport> {
    let client = cluster.client().await?;
    let password = titanium::db_password(&client).await?;
    let pod = |name: String| PodRef {
        client: client.clone(),
        namespace: NAMESPACE.into(),
        pod: name,
        container: None,
    };
    let redis_pod = titanium::ready_pod(&client, "redis").await?;
    let work = ensure_dir(&config.backup_dir())?;
    harness::keep::set_private_dir(&work)?;
    let offsite = ensure_dir(&work.join("offsite"))?;
    harness::keep::set_private_dir(&offsite)?;
    let mut options = BackupOptions::new(&work);
    options.name = Some("titanium-backup".into());
    options.cluster = Some(format!("{} ({})", cluster.name(), cluster.provider()));
    options.postgres = Some(PgSource::Kube(KubePostgres {
        pod: pod(PG_POD.into()),
        port: 5432,
        user: "postgres".into(),
        dbname: titanium::DATABASE.into(),
        password: Some(password),
        password_env: Some("POSTGRES_PASSWORD".into()),
    }));
    options.redis = Some(RedisSource::Kube {
        pod: pod(redis_pod),
        port: 6379,
        password_env: None,
    });
    options.kubernetes = Some(KubeSource {
        client: client.clone(),
        namespace: NAMESPACE.into(),
    });
    options.quiesce = Some(QuiesceOptions {
        keep: vec![REDIS.into()],
        timeout: config.ready_timeout,
    });
    options.offsite = vec![OffsiteTarget::Directory(offsite)];
    Ok(backup::backup(&options).await?)
}

/// What the rebuild record says of the backup, from its manifest and the copies read back.
fn backup_evidence(backup: &BackupReport) -> anyhow::Result<BackupEvidence> {
    let manifest = &backup.manifest;
    let checksum_file = backup.dir.join("MANIFEST.json.sha256");
    let checksum = std::fs::read_to_string(&checksum_file)
        .with_context(|| format!("read {}", checksum_file.display()))?;
    let manifest_sha256 = checksum
        .split_whitespace()
        .next()
        .with_context(|| format!("{} is empty", checksum_file.display()))?;
    let files: Vec<(String, u64, String)> = manifest
        .files
        .iter()
        .map(|f| (f.path.clone(), f.size, f.sha256.clone()))
        .collect();
    let file = |path: &str| {
        manifest.files.iter().find(|f| f.path == path).map(|f| {
            format!(
                "{path} ({} bytes, sha256 {})",
                f.size,
                &f.sha256[..f.sha256.len().min(12)]
            )
        })
    };
    let mut evidence = BackupEvidence::new(
        &manifest.name,
        &manifest.started_at,
        manifest_sha256,
        &files,
    );
    if let Some(pg) = &manifest.postgres {
        evidence.database = Some(format!(
            "{} (PostgreSQL {})",
            pg.database, pg.server_version
        ));
        evidence.postgres_dump = file(&pg.custom_dump);
    }
    if let Some(tf) = &manifest.terraform {
        evidence.terraform_state = file(&tf.state).or_else(|| Some(tf.state.clone()));
    }
    evidence.offsite = backup
        .offsite
        .iter()
        .map(|c| {
            format!(
                "{} at {} (sha256 {} read back)",
                c.target,
                c.location,
                &c.sha256[..c.sha256.len().min(12)]
            )
        })
        .collect();
    Ok(evidence)
}

fn ensure_dir(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    Ok(path.to_path_buf())
}

async fn verify(backup: &BackupReport, tools: &PgTools) -> anyhow::Result<()> {
    let scratch = LocalPostgres::start(LocalOptions::default()).await?;
    let target = backup
        .archive
        .as_ref()
        .map(|a| a.path.clone())
        .unwrap_or_else(|| backup.dir.clone());
    let report = backup::verify_backup(
        &target,
        &VerifyOptions {
            scratch: scratch.params(),
            tools: tools.clone(),
            decryption: None,
        },
    )
    .await?;
    ensure!(
        report.passed,
        "the backup does not verify: {:?}",
        report.findings
    );
    scratch.stop().await?;
    Ok(())
}

async fn write_marker(cluster: &impl Cluster, marker: &MarkerRow) -> anyhow::Result<()> {
    let db = titanium::database(cluster).await?;
    marker.write(&db.params.connect().await?).await?;
    Ok(())
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

impl<C: Cluster> DataRestorer for ClusterData<'_, C> {
    async fn restore_database(&mut self) -> Result<(), BoxError> {
        let started = Instant::now();
        let pg = self
            .backup
            .manifest
            .postgres
            .as_ref()
            .ok_or("the backup has no PostgreSQL part")?;
        let db = titanium::database(self.cluster).await?;
        let analyze = match self.scenario {
            Scenario::TableRestore => {
                restore_tables(self.tools, &db.params, &self.backup.dir, pg).await?;
                harness::restore::analyze(&db.params).await?
            }
            Scenario::SchemaDrift => {
                restore_data_only(
                    self.tools,
                    &db.params,
                    &self.backup.dir.join(&pg.custom_dump),
                )
                .await?;
                harness::restore::analyze(&db.params).await?
            }
            Scenario::Pitr => {
                let plan = self.pitr.ok_or("no recovery plan for the pitr scenario")?;
                let (recovery, analyze) = crate::pitr::restore_to(
                    self.tools,
                    plan,
                    &db.params,
                    &self.backup.manifest.name,
                )
                .await?;
                self.recovery = Some(recovery);
                analyze
            }
            Scenario::FullRebuild | Scenario::Rollback => {
                let input = DbRestoreInput {
                    archive: DbArchive::Custom(self.backup.dir.join(&pg.custom_dump)),
                    backup_id: self.backup.manifest.name.clone(),
                    recorded_sha256: self
                        .backup
                        .manifest
                        .sha256_of(&pg.custom_dump)
                        .map(str::to_owned),
                };
                let report =
                    restore_database(self.tools, &db.params, &input, &DbRestoreOptions::default())
                        .await?;
                Duration::from_secs_f64(report.analyze_seconds)
            }
        };
        self.db_restore = Some(started.elapsed());
        self.analyze = Some(analyze);
        Ok(())
    }

    async fn restore_redis(&mut self) -> Result<(), BoxError> {
        let Some(redis) = self.backup.manifest.redis.as_ref() else {
            return Ok(());
        };
        let forward = titanium::forward_to(self.cluster, "redis", 6379).await?;
        harness::restore::replay_rdb(
            &self.backup.dir.join(&redis.rdb),
            &format!("redis://127.0.0.1:{}/", forward.port()),
        )
        .await?;
        Ok(())
    }
}

async fn restore(
    scenario: Scenario,
    cluster: &impl Cluster,
    backup: &BackupReport,
    tools: &PgTools,
    config: &Config,
    pitr: Option<&harness::pitr::RecoveryPlan>,
) -> anyhow::Result<Restored> {
    let manifest = &backup.manifest;
    let kube = manifest
        .kubernetes
        .as_ref()
        .context("the backup has no Kubernetes part")?;
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.dir.join(&kube.clean_json))?)?;
    let mut objects = list["items"]
        .as_array()
        .cloned()
        .with_context(|| format!("{} has no `items` list", kube.clean_json))?;
    if scenario == Scenario::SchemaDrift {
        drift_init_script(&mut objects)?;
    }
    // The recorded replica counts come back, except the load generator's: it stays at zero
    // until the data gates have compared the restored data with the backup (see `gates`).
    let mut replicas: BTreeMap<String, i32> = manifest
        .quiesce
        .as_ref()
        .map(|q| q.replicas.clone())
        .unwrap_or_default();
    replicas.insert(LOAD_GENERATOR.to_owned(), 0);
    let plan = KubeRestorePlan::new(
        &objects,
        NAMESPACE,
        &manifest.name,
        &replicas,
        &PlanRoles::default(),
    )?;
    let client = cluster.client().await?;
    let mut data = ClusterData {
        scenario,
        cluster,
        backup,
        tools,
        pitr,
        db_restore: None,
        analyze: None,
        recovery: None,
    };
    let mut options = KubeRestoreOptions::default();
    options.waits.workload_ready = config.ready_timeout;
    options.waits.pods_ready = config.ready_timeout;
    options.waits.pvc_bound = config.ready_timeout;
    let report = restore_kubernetes(&client, &plan, &mut data, &options).await?;
    Ok(Restored {
        db_restore: data.db_restore,
        recovery: data.recovery,
        analyze: data.analyze,
        pods_ready: report
            .pods_ready_seconds
            .map(Duration::try_from_secs_f64)
            .transpose()
            .context("the restore's pods-ready time")?,
    })
}

struct Gates {
    verdicts: Vec<Verdict>,
    tables: Vec<facts::TableFacts>,
}

/// Runs every gate. With `resume_writer`, the load generator is brought back to its recorded
/// replica count after the data gates (and before the Kubernetes gate, which expects it).
async fn run_gates(
    cluster: &impl Cluster,
    backup: &BackupReport,
    marker: Option<&MarkerRow>,
    config: &Config,
    resume_writer: bool,
) -> anyhow::Result<Gates> {
    let manifest = &backup.manifest;
    let pg = manifest.postgres.as_ref().context("no PostgreSQL part")?;
    let db = titanium::database(cluster).await?;
    let client = db.params.connect().await?;
    let tables = facts::table_facts(&client).await?;
    let sequences = facts::sequence_facts(&client).await?;
    let schema_after = facts::render_schema(&client).await?;
    let foreign_keys = facts::foreign_key_checks(&client).await?;
    // pg_amcheck that cannot run fails the integrity gate with why; it is never left out.
    let amcheck: verify::Amcheck = match PgTools::discover() {
        Ok(tools) => facts::run_amcheck(&tools, &db.params).await.into(),
        Err(err) => Err::<verify::AmcheckReport, _>(err).into(),
    };
    let mut verdicts = vec![
        verify::row_counts(&pg.tables, &tables),
        verify::digests(&pg.tables, &tables),
        verify::schema(&pg.schema, &schema_after),
        verify::sequences(&pg.sequences, &sequences),
        verify::referential_integrity(&foreign_keys, &amcheck),
        verify::statistics(&pg.tables, &facts::table_statistics(&client).await?),
    ];
    if let Some(marker) = marker {
        verdicts.push(verify::marker_absent(
            &marker.subject(),
            marker.count(&client).await?,
        ));
    }
    if let Some(redis) = &manifest.redis {
        let forward = titanium::forward_to(cluster, "redis", 6379).await?;
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{}/", forward.port()))?
            .get_multiplexed_async_connection()
            .await?;
        let restored = backup::dataset_facts(&mut conn).await?;
        let expected = verify::RedisFacts {
            key_count: redis.keys,
            digest: redis.digest.clone(),
            keys: BTreeMap::new(),
        };
        verdicts.push(verify::redis(&expected, &restored));
    }
    // The data is compared; the load generator may write again, at its recorded count.
    let recorded = manifest
        .quiesce
        .as_ref()
        .map(|q| q.replicas.clone())
        .unwrap_or_default();
    if resume_writer && let Some(&replicas) = recorded.get(LOAD_GENERATOR) {
        titanium::scale(
            &cluster.client().await?,
            LOAD_GENERATOR,
            replicas,
            config.ready_timeout,
        )
        .await?;
    }
    if let Some(kube) = &manifest.kubernetes {
        let list: serde_json::Value =
            serde_json::from_slice(&std::fs::read(backup.dir.join(&kube.clean_json))?)?;
        let mut backed_up = list["items"]
            .as_array()
            .cloned()
            .with_context(|| format!("{} has no `items` list", kube.clean_json))?;
        // The backup was taken quiesced: the state to restore is the one before the quiesce.
        for object in &mut backed_up {
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if object["kind"] == "Deployment"
                && let Some(&replicas) = recorded.get(&name)
            {
                let held = !resume_writer && name == LOAD_GENERATOR;
                object["spec"]["replicas"] = serde_json::json!(if held { 0 } else { replicas });
            }
        }
        let source = KubeSource {
            client: cluster.client().await?,
            namespace: NAMESPACE.into(),
        };
        let (restored, _) =
            backup::clean::clean_objects(&backup::list_namespace(&source).await?.objects);
        verdicts.push(verify::kubernetes_objects(&backed_up, &restored));
    }
    Ok(Gates { verdicts, tables })
}

struct Service {
    health: harness::load::HealthVerdict,
    load: harness::load::LoadVerdict,
}

async fn health_and_load(cluster: &impl Cluster, config: &Config) -> anyhow::Result<Service> {
    let forward = titanium::forward_to(cluster, "api-gateway", 8000).await?;
    let base = format!("http://127.0.0.1:{}", forward.port());
    let mut health = HealthGate::new(&base);
    health.probes = config.health_probes;
    health.interval = Duration::from_millis(100);
    let health = health.run().await?;
    let mut load = LoadGate::quick(&base);
    load.users = config.load_users;
    load.hatch_rate = config.load_users;
    load.run_time = config.load_time;
    load.report_dir = Some(config.report_dir.clone());
    let load = load.run().await?;
    Ok(Service { health, load })
}

async fn observe_pods(cluster: &impl Cluster) -> anyhow::Result<Vec<PodObservation>> {
    Ok(harness::restore::observe_pods(&cluster.client().await?, NAMESPACE).await?)
}

/// The runbook's method B (5.2 "테이블별 복구"): drop the init script's empty tables (as its
/// method A does), then run `users` and `posts` from their own files with psql, in that order
/// because posts reference users.
async fn restore_tables(
    tools: &PgTools,
    params: &harness::pg::ConnParams,
    dir: &Path,
    pg: &backup::PgManifest,
) -> anyhow::Result<()> {
    params
        .connect()
        .await?
        .batch_execute("DROP TABLE IF EXISTS posts CASCADE; DROP TABLE IF EXISTS users CASCADE;")
        .await?;
    for table in ["public.users", "public.posts"] {
        let file = pg
            .table_files
            .get(table)
            .with_context(|| format!("the backup has no file for {table}"))?;
        tools
            .psql_file(params, &dir.join(file))
            .await
            .with_context(|| format!("restore {table} from {file}"))?;
    }
    Ok(())
}

/// Loads only the data of the archive into the schema the cluster's own init script created
/// (`pg_restore --data-only`), the way a team restores into a schema managed by migrations.
async fn restore_data_only(
    tools: &PgTools,
    params: &harness::pg::ConnParams,
    archive: &Path,
) -> anyhow::Result<()> {
    let pg_restore = tools.tool("pg_restore")?;
    harness::process::ToolRun::new("pg_restore", pg_restore, "restoring the data only")
        .args([
            "--data-only",
            "--disable-triggers",
            "--exit-on-error",
            "--no-owner",
            "-d",
        ])
        .args([params.dbname.clone(), archive.display().to_string()])
        .envs(params.libpq_env())
        .run()
        .await?;
    Ok(())
}

/// Cluster B's init script, as a changed manifest would carry it: one column widened.
fn drift_init_script(objects: &mut [serde_json::Value]) -> anyhow::Result<()> {
    let mut changed = false;
    for object in objects.iter_mut().filter(|o| o["kind"] == "ConfigMap") {
        if let Some(data) = object["data"].as_object_mut() {
            for value in data.values_mut() {
                if let Some(text) = value.as_str().filter(|t| t.contains(DRIFT_FROM)) {
                    *value = serde_json::Value::String(text.replace(DRIFT_FROM, DRIFT_TO));
                    changed = true;
                }
            }
        }
    }
    ensure!(
        changed,
        "no ConfigMap in the backup holds `{DRIFT_FROM}` to change"
    );
    Ok(())
}

/// The schema gate must fail, naming posts.title and both types; every other gate must pass.
fn expect_drift(verdicts: &[Verdict]) -> anyhow::Result<()> {
    let schema = verdicts
        .iter()
        .find(|v| v.gate == Gate::Schema)
        .context("no schema verdict")?;
    ensure!(
        !schema.passed,
        "the schema gate did not report the changed column"
    );
    let text: String = schema
        .findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    ensure!(
        text.contains("posts")
            && text.contains("title")
            && text.contains("200")
            && text.contains("300"),
        "the schema gate's findings do not name posts.title 200 -> 300:\n{text}"
    );
    // The Kubernetes gate rightly reports the changed init-script ConfigMap too; anything else
    // failing is a defect of the restore.
    let expected_elsewhere = |v: &&Verdict| {
        v.gate == Gate::KubernetesObjects
            && v.findings
                .iter()
                .all(|f| f.to_string().contains("postgresql-init-script"))
    };
    let others: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.passed && v.gate != Gate::Schema)
        .filter(|v| !expected_elsewhere(v))
        .map(ToString::to_string)
        .collect();
    ensure!(
        others.is_empty(),
        "other gates failed too: {}",
        others.join("; ")
    );
    Ok(())
}

/// One row lost after the restore: the defect the count and digest gates exist for.
async fn inject_defect(cluster: &impl Cluster) -> anyhow::Result<String> {
    let db = titanium::database(cluster).await?;
    let client = db.params.connect().await?;
    let id: i32 = client
        .query_one(
            "DELETE FROM posts WHERE id = (SELECT max(id) FROM posts) RETURNING id",
            &[],
        )
        .await?
        .get(0);
    Ok(format!("post {id} deleted"))
}

/// The runbook's rollback option 1: drop the database, create it again, restore from the backup.
async fn rollback_restore(
    cluster: &impl Cluster,
    backup: &BackupReport,
    tools: &PgTools,
) -> anyhow::Result<()> {
    let db = titanium::database(cluster).await?;
    let admin = db.params.with_dbname("postgres").connect().await?;
    // Two statements: DROP DATABASE cannot run inside the implicit transaction of a batch.
    admin
        .batch_execute("DROP DATABASE titanium WITH (FORCE)")
        .await?;
    admin.batch_execute("CREATE DATABASE titanium").await?;
    let pg = backup
        .manifest
        .postgres
        .as_ref()
        .context("no PostgreSQL part")?;
    let input = DbRestoreInput {
        archive: DbArchive::Custom(backup.dir.join(&pg.custom_dump)),
        backup_id: backup.manifest.name.clone(),
        recorded_sha256: backup
            .manifest
            .sha256_of(&pg.custom_dump)
            .map(str::to_owned),
    };
    restore_database(tools, &db.params, &input, &DbRestoreOptions::default()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::rpo_between;

    #[test]
    fn rpo_is_read_on_one_clock_and_never_clamped() {
        let snapshot = "2026-12-02T13:00:00.250000Z";
        assert_eq!(
            rpo_between(Some("2026-12-02T13:00:00.100000Z"), snapshot),
            Ok(150)
        );
        // A snapshot before writes stopped is not an RPO of 0: the backup may miss writes.
        let early = rpo_between(Some("2026-12-02T13:00:01.250000Z"), snapshot).unwrap_err();
        assert!(early.contains("1000 ms before writes stopped"), "{early}");
        // Without the server's writes-stopped time there is no RPO on one clock.
        let missing = rpo_between(None, snapshot).unwrap_err();
        assert!(missing.contains("no server time"), "{missing}");
    }
}
