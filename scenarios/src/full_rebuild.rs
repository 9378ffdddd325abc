//! `full_rebuild`: the runbook in order. Create cluster A, deploy titanium-prod, seed it, check
//! it read-only (preflight), put it under load, back it up quiesced and verify the backup, copy
//! it off-site, write a marker row, destroy A and check it is gone, create cluster B, restore,
//! run every gate, the health and load gates, and decide: proceed or roll back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use harness::backup::{
    self, BackupOptions, BackupReport, KubePostgres, KubeSource, Manifest, OffsiteTarget, PgSource, PodRef, QuiesceOptions,
    RedisSource, VerifyOptions,
};
use harness::cluster::{AnyCluster, Cluster, ProviderSpec};
use harness::data::DatasetSpec;
use harness::facts;
use harness::load::{HealthGate, LoadGate};
use harness::pg::{LocalOptions, LocalPostgres, PgTools, PostgresProvider};
use harness::report::{GateReport, LoadReport, Outcome, Report, TableReport};
use harness::restore::{
    DataRestorer, DbArchive, DbRestoreInput, DbRestoreOptions, KubeRestoreOptions, KubeRestorePlan, MarkerRow, PlanRoles,
    restore_database, restore_kubernetes,
};
use harness::verify::{self, Decision, HealthSample, PodObservation, RollbackInputs, RollbackThresholds, Verdict};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

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

/// The phases of `full_rebuild`, in order.
pub const PHASES: [&str; 15] = [
    "create-cluster-a",
    "deploy",
    "seed",
    "preflight",
    "start-load",
    "backup",
    "verify-backup",
    "marker",
    "destroy-cluster-a",
    "create-cluster-b",
    "deploy-infrastructure",
    "restore",
    "gates",
    "health-and-load",
    "decide",
];

/// Runs the rehearsal and returns its report; never panics on a failed step, which is
/// recorded in the report with the phases after it skipped.
pub async fn run(config: &Config, observer: &dyn Observer) -> Report {
    let started_at = chrono::Utc::now().to_rfc3339();
    let mut run = Run::new(observer);
    let mut state = State::default();
    let outcome = steps(config, &mut run, &mut state).await;
    run.skip(&PHASES);
    let phases = run.into_phases();
    let mut report = Report {
        scenario: "full_rebuild".into(),
        provider: config.provider.kind().to_string(),
        verdict: Outcome::Fail,
        started_at,
        phases,
        tables: state.tables,
        gates: state.gates,
        load: state.load,
        rto_ms: state.rto_ms,
        rpo_ms: state.rpo_ms,
        rollback_reasons: state.decision.map(|d| d.reasons.iter().map(reason_text).collect()).unwrap_or_default(),
    };
    if let Err(err) = outcome {
        tracing::warn!(error = %err, "full_rebuild stopped");
    }
    report.verdict = report.implied_verdict();
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
}

async fn steps(config: &Config, run: &mut Run<'_>, state: &mut State) -> anyhow::Result<()> {
    let tools = PgTools::discover()?;
    let mut a = run.phase("create-cluster-a", config.provider.create()).await?;
    run.phase("deploy", deploy(&a, config)).await?;
    let seeded = run.phase("seed", seed(&a, config)).await?;
    run.note(format!("{} users, {} posts", seeded.0, seeded.1));
    run.phase("preflight", preflight(&a, config)).await?;
    run.phase("start-load", start_load(&a, config)).await?;
    let backup = run.phase("backup", take_backup(&a, config)).await?;
    let manifest = backup.manifest.clone();
    let pg = manifest.postgres.clone().context("the backup has no PostgreSQL part")?;
    state.rpo_ms = rpo_ms(&manifest);
    run.phase("verify-backup", verify(&backup, &tools)).await?;
    let marker = MarkerRow::new(format!("run-{}", uuid_like()));
    run.phase("marker", write_marker(&a, &marker)).await?;

    let destroy_started = Instant::now();
    run.phase("destroy-cluster-a", async {
        a.destroy().await?;
        anyhow::Ok(())
    })
    .await?;
    drop(a);
    let b = run.phase("create-cluster-b", config.provider.create()).await?;
    let crds = run.phase("deploy-infrastructure", harness::deploy::apply_infrastructure(&b, &config.overlay)).await?;
    run.note(format!("{crds} CustomResourceDefinitions established"));
    let restored = run.phase("restore", restore(&b, &backup, &tools, config)).await?;

    let gates = run.phase("gates", gates(&b, &backup, &marker, config)).await?;
    state.tables = pg
        .tables
        .iter()
        .map(|before| {
            let after = gates.tables.iter().find(|t| t.name == before.name && t.schema == before.schema);
            TableReport {
                name: before.name.clone(),
                rows_before: before.rows,
                rows_after: after.map(|t| t.rows),
                digest_before: before.digest.clone(),
                digest_after: after.map(|t| t.digest.clone()),
            }
        })
        .collect();
    state.gates = gates.verdicts.iter().map(gate_report).collect();

    let service = run.phase("health-and-load", health_and_load(&b, config)).await?;
    state.gates.push(GateReport { name: "health".into(), passed: service.health.passed, findings: service.health.findings.clone() });
    state.gates.push(GateReport { name: "load".into(), passed: service.load.passed, findings: service.load.findings.clone() });
    state.load = Some(LoadReport {
        requests: service.load.figures.overall.requests,
        failures: service.load.figures.overall.failures,
        rps: service.load.figures.overall.rps,
        p95_ms: service.load.figures.overall.p95_ms,
        goose_report: service.load.report.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
    });
    state.rto_ms = Some(millis(destroy_started.elapsed()));

    let decision = run
        .phase("decide", async {
            let pods = observe_pods(&b).await?;
            let attempts: u32 = service.health.endpoints.iter().map(|e| e.probes).sum();
            let failures: u32 = service.health.endpoints.iter().map(|e| e.failures).sum();
            let slowest = service.health.endpoints.iter().map(|e| e.slowest).max();
            let inputs = RollbackInputs {
                verdicts: gates.verdicts.clone(),
                health: Some(HealthSample { attempts, failures }),
                max_response_time: slowest,
                pods: Some(pods),
                db_restore: Some(restored.db_restore),
                total: Some(run_elapsed(destroy_started)),
                pods_ready_wait: Some(restored.pods_ready),
            };
            anyhow::Ok(verify::decide(&inputs, &config.thresholds))
        })
        .await?;
    if b.provider() != harness::cluster::ProviderKind::Kubeconfig {
        // A throwaway cluster is torn down; on an existing cluster the restore is the result.
        let mut b = b;
        b.destroy().await?;
    }
    run.note(match decision.action {
        verify::Action::Proceed => "proceed".to_owned(),
        verify::Action::RollBack => format!("roll back: {}", decision.reasons.iter().map(reason_text).collect::<Vec<_>>().join("; ")),
    });
    state.decision = Some(decision);
    Ok(())
}

fn reason_text(reason: &verify::RollbackReason) -> String {
    format!("{:?}: {} (limit {})", reason.criterion, reason.observed, reason.limit)
}

fn run_elapsed(since: Instant) -> Duration {
    since.elapsed()
}

fn uuid_like() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0))
}

fn gate_report(verdict: &Verdict) -> GateReport {
    GateReport { name: verdict.gate.to_string(), passed: verdict.passed, findings: verdict.findings.iter().map(ToString::to_string).collect() }
}

/// RPO: from the moment the quiesce stopped writes to the snapshot.
fn rpo_ms(manifest: &Manifest) -> Option<u64> {
    let stopped = chrono::DateTime::parse_from_rfc3339(&manifest.quiesce.as_ref()?.writes_stopped_at).ok()?;
    let snapshot = chrono::DateTime::parse_from_rfc3339(&manifest.postgres.as_ref()?.snapshot_at).ok()?;
    Some(u64::try_from((snapshot - stopped).num_milliseconds()).unwrap_or(0))
}

/// Applies the manifests, holds the load generator at zero until the data is seeded, and waits
/// until everything is ready.
async fn deploy(cluster: &AnyCluster, config: &Config) -> anyhow::Result<()> {
    harness::deploy::apply_kustomize(cluster, &config.overlay).await?;
    let client = cluster.client().await?;
    titanium::scale(&client, LOAD_GENERATOR, 0, config.ready_timeout).await?;
    harness::deploy::wait_ready(&client, NAMESPACE, config.ready_timeout).await?;
    Ok(())
}

async fn seed(cluster: &AnyCluster, config: &Config) -> anyhow::Result<(u64, u64)> {
    let db = titanium::database(cluster).await?;
    let client = db.params.connect().await?;
    let stats = harness::data::load_dataset(&client, &DatasetSpec::new(config.seed, config.users, config.posts)).await?;
    Ok((stats.users, stats.posts))
}

async fn preflight(cluster: &AnyCluster, config: &Config) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    let options = harness::preflight::PreflightOptions::runbook(NAMESPACE, config.backup_dir());
    let report = harness::preflight::run(client, &options).await;
    ensure!(report.go(), "preflight says NO-GO:\n{report}");
    Ok(())
}

/// Starts the load generator and waits until it has written, so the backup runs under load.
async fn start_load(cluster: &AnyCluster, config: &Config) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    let db = titanium::database(cluster).await?;
    let pg = db.params.connect().await?;
    let count = |pg: tokio_postgres::Client| async move {
        let n: i64 = pg.query_one("SELECT count(*) FROM posts", &[]).await?.get(0);
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
            bail!("the load generator wrote nothing in {} s", config.ready_timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn take_backup(cluster: &AnyCluster, config: &Config) -> anyhow::Result<BackupReport> {
    let client = cluster.client().await?;
    let password = titanium::db_password(&client).await?;
    let pod = |name: String| PodRef { client: client.clone(), namespace: NAMESPACE.into(), pod: name, container: None };
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
    options.redis = Some(RedisSource::Kube { pod: pod(redis_pod), port: 6379, password_env: None });
    options.kubernetes = Some(KubeSource { client: client.clone(), namespace: NAMESPACE.into() });
    options.quiesce = Some(QuiesceOptions { keep: vec![REDIS.into()], timeout: config.ready_timeout });
    options.offsite = vec![OffsiteTarget::Directory(offsite)];
    Ok(backup::backup(&options).await?)
}

fn ensure_dir(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    Ok(path.to_path_buf())
}

async fn verify(backup: &BackupReport, tools: &PgTools) -> anyhow::Result<()> {
    let scratch = LocalPostgres::start(LocalOptions::default()).await?;
    let target = backup.archive.as_ref().map(|a| a.path.clone()).unwrap_or_else(|| backup.dir.clone());
    let report = backup::verify_backup(&target, &VerifyOptions { scratch: scratch.params(), tools: tools.clone(), decryption: None }).await?;
    ensure!(report.passed, "the backup does not verify: {:?}", report.findings);
    scratch.stop().await?;
    Ok(())
}

async fn write_marker(cluster: &AnyCluster, marker: &MarkerRow) -> anyhow::Result<()> {
    let db = titanium::database(cluster).await?;
    marker.write(&db.params.connect().await?).await?;
    Ok(())
}

struct Restored {
    db_restore: Duration,
    pods_ready: Duration,
}

/// Restores databases and Redis when the plan reaches them, reaching both through port-forwards
/// of the rebuilt cluster.
struct ClusterData<'a> {
    cluster: &'a AnyCluster,
    backup: &'a BackupReport,
    tools: &'a PgTools,
    db_restore: Option<Duration>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl DataRestorer for ClusterData<'_> {
    async fn restore_database(&mut self) -> Result<(), BoxError> {
        let started = Instant::now();
        let pg = self.backup.manifest.postgres.as_ref().ok_or("the backup has no PostgreSQL part")?;
        let db = titanium::database(self.cluster).await?;
        let input = DbRestoreInput {
            archive: DbArchive::Custom(self.backup.dir.join(&pg.custom_dump)),
            backup_id: self.backup.manifest.name.clone(),
        };
        restore_database(self.tools, &db.params, &input, &DbRestoreOptions::default()).await?;
        self.db_restore = Some(started.elapsed());
        Ok(())
    }

    async fn restore_redis(&mut self) -> Result<(), BoxError> {
        let Some(redis) = self.backup.manifest.redis.as_ref() else { return Ok(()) };
        let forward = titanium::forward_to(self.cluster, "redis", 6379).await?;
        crate::redis_replay::replay_rdb(&self.backup.dir.join(&redis.rdb), &format!("redis://127.0.0.1:{}/", forward.port())).await?;
        Ok(())
    }
}

async fn restore(cluster: &AnyCluster, backup: &BackupReport, tools: &PgTools, config: &Config) -> anyhow::Result<Restored> {
    let manifest = &backup.manifest;
    let kube = manifest.kubernetes.as_ref().context("the backup has no Kubernetes part")?;
    let list: serde_json::Value = serde_json::from_slice(&std::fs::read(backup.dir.join(&kube.clean_json))?)?;
    let objects = list["items"].as_array().cloned().unwrap_or_default();
    // The recorded replica counts come back, except the load generator's: it stays at zero
    // until the data gates have compared the restored data with the backup (see `gates`).
    let mut replicas: BTreeMap<String, i32> = manifest.quiesce.as_ref().map(|q| q.replicas.clone()).unwrap_or_default();
    replicas.insert(LOAD_GENERATOR.to_owned(), 0);
    let plan = KubeRestorePlan::new(&objects, NAMESPACE, &manifest.name, &replicas, &PlanRoles::default())?;
    let client = cluster.client().await?;
    let mut data = ClusterData { cluster, backup, tools, db_restore: None };
    let mut options = KubeRestoreOptions::default();
    options.waits.workload_ready = config.ready_timeout;
    options.waits.pods_ready = config.ready_timeout;
    options.waits.pvc_bound = config.ready_timeout;
    let report = restore_kubernetes(&client, &plan, &mut data, &options).await?;
    Ok(Restored {
        db_restore: data.db_restore.unwrap_or_default(),
        pods_ready: Duration::from_secs_f64(report.pods_ready_seconds.unwrap_or(0.0)),
    })
}

struct Gates {
    verdicts: Vec<Verdict>,
    tables: Vec<facts::TableFacts>,
}

async fn gates(cluster: &AnyCluster, backup: &BackupReport, marker: &MarkerRow, config: &Config) -> anyhow::Result<Gates> {
    let manifest = &backup.manifest;
    let pg = manifest.postgres.as_ref().context("no PostgreSQL part")?;
    let db = titanium::database(cluster).await?;
    let client = db.params.connect().await?;
    let tables = facts::table_facts(&client).await?;
    let sequences = facts::sequence_facts(&client).await?;
    let schema_after = facts::render_schema(&client).await?;
    let foreign_keys = facts::foreign_key_checks(&client).await?;
    let tools = PgTools::discover()?;
    let amcheck = facts::run_amcheck(&tools, &db.params).await.ok();
    let mut verdicts = vec![
        verify::row_counts(&pg.tables, &tables),
        verify::digests(&pg.tables, &tables),
        verify::schema(&pg.schema, &schema_after),
        verify::sequences(&pg.sequences, &sequences),
        verify::referential_integrity(&foreign_keys, amcheck.as_ref()),
        verify::marker_absent(&marker.subject(), marker.count(&client).await?),
    ];
    if let Some(redis) = &manifest.redis {
        let forward = titanium::forward_to(cluster, "redis", 6379).await?;
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{}/", forward.port()))?.get_multiplexed_async_connection().await?;
        let restored = backup::dataset_facts(&mut conn).await?;
        let expected = verify::RedisFacts { key_count: redis.keys, digest: redis.digest.clone(), keys: BTreeMap::new() };
        verdicts.push(verify::redis(&expected, &restored));
    }
    // The data is compared; the load generator may write again, at its recorded count.
    let recorded = manifest.quiesce.as_ref().map(|q| q.replicas.clone()).unwrap_or_default();
    if let Some(&replicas) = recorded.get(LOAD_GENERATOR) {
        titanium::scale(&cluster.client().await?, LOAD_GENERATOR, replicas, config.ready_timeout).await?;
    }
    if let Some(kube) = &manifest.kubernetes {
        let list: serde_json::Value = serde_json::from_slice(&std::fs::read(backup.dir.join(&kube.clean_json))?)?;
        let mut backed_up = list["items"].as_array().cloned().unwrap_or_default();
        // The backup was taken quiesced: the state to restore is the one before the quiesce.
        for object in &mut backed_up {
            let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            if object["kind"] == "Deployment"
                && let Some(replicas) = recorded.get(&name)
            {
                object["spec"]["replicas"] = serde_json::json!(replicas);
            }
        }
        let source = KubeSource { client: cluster.client().await?, namespace: NAMESPACE.into() };
        let (restored, _) = backup::clean::clean_objects(&backup::list_namespace(&source).await?.objects);
        verdicts.push(verify::kubernetes_objects(&backed_up, &restored));
    }
    Ok(Gates { verdicts, tables })
}

struct Service {
    health: harness::load::HealthVerdict,
    load: harness::load::LoadVerdict,
}

async fn health_and_load(cluster: &AnyCluster, config: &Config) -> anyhow::Result<Service> {
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

async fn observe_pods(cluster: &AnyCluster) -> anyhow::Result<Vec<PodObservation>> {
    let pods = Api::<Pod>::namespaced(cluster.client().await?, NAMESPACE).list(&ListParams::default()).await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded"))
        .map(|p| {
            let status = p.status.unwrap_or_default();
            let containers = status.container_statuses.unwrap_or_default();
            PodObservation {
                name: format!("{NAMESPACE}/{}", p.metadata.name.unwrap_or_default()),
                restarts: containers.iter().map(|c| u32::try_from(c.restart_count).unwrap_or(0)).sum(),
                waiting_reason: containers.iter().find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone()),
                ready: status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True"),
            }
        })
        .collect())
}
