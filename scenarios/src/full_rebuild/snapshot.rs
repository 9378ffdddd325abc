//! `snapshot_restore` and `snapshot_under_load`: the runbook's physical path on one cluster.
//! Cluster A is backed up as in `full_rebuild` (the logical backup is the reference the data
//! gates compare with, taken with the writers quiesced), then by VolumeSnapshot (runbook 1.2A)
//! while they still are; a marker row is written after it; the namespace's database is
//! destroyed (the StatefulSet scaled to zero, its claim and volume deleted) and restored by the
//! runbook's rollback option 3: a claim from the snapshot, the StatefulSet patched onto it. The
//! server comes back through crash recovery; every data gate must be green and the marker
//! absent.
//!
//! Under load, a writer commits numbered rows, one per transaction, into a database of its own
//! on the same server while the snapshot is taken: the restored rows must be exactly the first
//! N, with N at least the rows committed before the snapshot was asked for and at most those
//! committed when it was ready. A copy that is not of one instant breaks the prefix; one taken
//! at the wrong moment breaks the bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;

use super::*;

/// The claim of the PostgreSQL StatefulSet in the manifests (runbook 1.2A's source).
const CLAIM: &str = "postgresql-pvc";
/// The claim rollback option 3 creates.
const RESTORED_CLAIM: &str = "postgresql-pvc-restored";
/// The runbook's snapshot class.
const SNAPSHOT_CLASS: &str = "csi-snapclass";
/// The writer's own database under load.
const TICKS_DB: &str = "rehearsal_ticks";

/// Runs the snapshot scenarios' phases on cluster A.
pub(super) async fn steps(
    scenario: Scenario,
    config: &Config,
    run: &mut Run<'_>,
    state: &mut State,
    clusters: &mut Clusters,
    tools: &PgTools,
) -> anyhow::Result<()> {
    let a = clusters.a.insert(
        run.phase("create-cluster-a", config.provider.create())
            .await?,
    );
    let a = &*a;
    let (backed_up, _) =
        Box::pin(back_up_cluster_a(scenario, config, run, state, a, tools)).await?;
    let destroy_started = Instant::now();
    let mut writer = if scenario == Scenario::SnapshotUnderLoad {
        Some(run.phase("start-writer", Writer::start(a)).await?)
    } else {
        None
    };
    let name = format!(
        "postgresql-snapshot-{}",
        chrono::Utc::now().format("%Y%m%d")
    );
    let taken = run
        .phase(
            "volume-snapshot",
            take_snapshot(a, &name, writer.as_mut(), config),
        )
        .await?;
    run.note(&taken.note);
    let marker = MarkerRow::new(format!("run-{}", uuid_like()));
    run.phase("marker", write_marker(a, &marker)).await?;
    let written = match writer {
        Some(w) => Some(run.phase("stop-writer", w.stop()).await?),
        None => None,
    };
    run.phase("destroy-database", destroy_database(a, config))
        .await?;
    let restore_started = Instant::now();
    let recovery = run.phase("restore", option_3(a, &name, config)).await?;
    let restored = Restored {
        db_restore: Some(restore_started.elapsed()),
        recovery: None,
        analyze: None,
        pods_ready: Some(restore_started.elapsed()),
    };
    run.note(format!(
        "rollback option 3: claim {RESTORED_CLAIM} from snapshot {name}, the StatefulSet patched \
         onto it, PostgreSQL up in {} ms; {recovery}",
        millis(restore_started.elapsed())
    ));
    // The services come back before the gates, as on a rebuilt cluster; the load generator,
    // which writes, only after them.
    run.phase(
        "resume-writers",
        resume(a, &backed_up.backup, config, false),
    )
    .await?;
    let gates = run
        .phase(
            "gates",
            run_gates_expecting(
                a,
                &backed_up.backup,
                Some(&marker),
                config,
                false,
                &option_3_changes,
            ),
        )
        .await?;
    run.measure(None, Some(backed_up.rows));
    if let (Some(written), Some(bounds)) = (written, taken.bounds) {
        let gate: GateReport = run
            .judged_phase("snapshot-consistency", async {
                let gate = consistency(a, bounds, written).await?;
                let failed = (!gate.passed).then(|| (gate.name.clone(), gate.findings_text("; ")));
                anyhow::Ok((gate, failed))
            })
            .await?;
        run.note(findings_text(&gate.findings, "; "));
        state.gates.push(gate);
    }
    state.tables = table_reports(&backed_up.pg.tables, &gates.tables);
    state.gates.extend(gates.verdicts.iter().map(gate_report));
    // The data is compared: the load generator writes again, at its recorded count.
    run.phase("resume-load", resume(a, &backed_up.backup, config, true))
        .await?;
    serve_and_decide(run, state, a, config, &gates, &restored, destroy_started).await
}

/// The VolumeSnapshot API (`snapshot.storage.k8s.io/v1`).
fn snapshots(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "volumesnapshots");
    Api::namespaced_with(client.clone(), NAMESPACE, &resource)
}

/// What taking the snapshot found: a note, and under load the writer's count before it was
/// asked for and when it was ready.
struct Taken {
    note: String,
    bounds: Option<(u64, u64)>,
}

/// Runbook 1.2A: the VolumeSnapshot of the database's claim with class `csi-snapclass`, then
/// its wait until `readyToUse` (the runbook's `kubectl get volumesnapshot`). A snapshot the
/// controller rejects fails with its `status.error`.
async fn take_snapshot(
    cluster: &impl Cluster,
    name: &str,
    mut writer: Option<&mut Writer>,
    config: &Config,
) -> anyhow::Result<Taken> {
    let client = cluster.client().await?;
    let api = snapshots(&client);
    let snapshot: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"volumeSnapshotClassName": SNAPSHOT_CLASS, "source": {"persistentVolumeClaimName": CLAIM}},
    }))?;
    let before = match writer.as_deref_mut() {
        Some(w) => Some(w.wait_for(50, config.ready_timeout).await?),
        None => None,
    };
    let started = Instant::now();
    api.create(&PostParams::default(), &snapshot)
        .await
        .with_context(|| {
            format!(
                "create VolumeSnapshot {NAMESPACE}/{name} (does the cluster serve \
                 snapshot.storage.k8s.io/v1?)"
            )
        })?;
    let ready = loop {
        let got = api
            .get(name)
            .await
            .with_context(|| format!("read VolumeSnapshot {name}"))?;
        let status = &got.data["status"];
        if status["readyToUse"] == serde_json::json!(true) {
            break status.clone();
        }
        if let Some(message) = status["error"]["message"].as_str() {
            bail!("VolumeSnapshot {name} failed: {message}");
        }
        ensure!(
            started.elapsed() < config.ready_timeout,
            "VolumeSnapshot {name} not ready after {} s: {status}",
            config.ready_timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after = writer.map(|w| w.committed());
    let mut note = format!(
        "VolumeSnapshot {name} of {CLAIM} ready in {} ms, restoreSize {}, content {}",
        millis(started.elapsed()),
        ready["restoreSize"].as_str().unwrap_or("?"),
        ready["boundVolumeSnapshotContentName"]
            .as_str()
            .unwrap_or("?"),
    );
    let bounds = before.zip(after);
    if let Some((b, a)) = bounds {
        note.push_str(&format!(
            "; taken under write load: {b} rows committed before it was asked for, {a} when it \
             was ready"
        ));
    }
    Ok(Taken { note, bounds })
}

/// The database destroyed: the StatefulSet scaled to zero, then its claim deleted and waited
/// out (with it the volume and its data).
async fn destroy_database(cluster: &impl Cluster, config: &Config) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    scale_statefulset(&client, 0, config).await?;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), NAMESPACE);
    claims
        .delete(CLAIM, &DeleteParams::default())
        .await
        .with_context(|| format!("delete claim {CLAIM}"))?;
    let started = Instant::now();
    while claims
        .get_opt(CLAIM)
        .await
        .with_context(|| format!("read claim {CLAIM}"))?
        .is_some()
    {
        ensure!(
            started.elapsed() < config.ready_timeout,
            "claim {CLAIM} still there after {} s",
            config.ready_timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn scale_statefulset(
    client: &kube::Client,
    replicas: i32,
    config: &Config,
) -> anyhow::Result<()> {
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE);
    sts.patch(
        "postgresql",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
    )
    .await
    .context("scale StatefulSet postgresql")?;
    let deadline = harness::ready::Deadline::new(config.ready_timeout);
    if replicas == 0 {
        let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), NAMESPACE);
        let started = Instant::now();
        while pods.get_opt(PG_POD).await?.is_some() {
            ensure!(
                started.elapsed() < config.ready_timeout,
                "{PG_POD} still there after {} s",
                config.ready_timeout.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        return Ok(());
    }
    harness::ready::workload(
        client,
        NAMESPACE,
        harness::ready::Workload::StatefulSet,
        "postgresql",
        deadline,
    )
    .await?;
    Ok(())
}

/// Rollback option 3 as the runbook writes it: the claim from the snapshot (10Gi, the default
/// class), the StatefulSet's `postgresql-data` volume patched onto it (a strategic merge by
/// volume name, what `kubectl patch` sends), then one replica, ready.
/// Returns what the server's log says of its start: crash recovery, as a restored snapshot
/// of a running server needs.
async fn option_3(
    cluster: &impl Cluster,
    snapshot: &str,
    config: &Config,
) -> anyhow::Result<String> {
    let client = cluster.client().await?;
    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": RESTORED_CLAIM, "namespace": NAMESPACE},
        "spec": {
            "dataSource": {"name": snapshot, "kind": "VolumeSnapshot", "apiGroup": "snapshot.storage.k8s.io"},
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "10Gi"}},
        },
    }))?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &claim)
        .await
        .with_context(|| format!("create claim {RESTORED_CLAIM}"))?;
    let patch = serde_json::json!({"spec": {"template": {"spec": {"volumes": [{
        "name": "postgresql-data",
        "persistentVolumeClaim": {"claimName": RESTORED_CLAIM},
    }]}}}});
    Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE)
        .patch(
            "postgresql",
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
        .context("patch StatefulSet postgresql onto the restored claim")?;
    scale_statefulset(&client, 1, config).await?;
    let log = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, NAMESPACE)
        .logs(PG_POD, &Default::default())
        .await
        .with_context(|| format!("read the log of {PG_POD}"))?;
    let redo = log
        .lines()
        .find(|l| l.contains("redo done at") || l.contains("redo starts at"))
        .map(|l| l.split("LOG:").last().unwrap_or(l).trim().to_owned());
    Ok(
        match (log.contains("automatic recovery in progress"), redo) {
            (true, Some(redo)) => format!("crash recovery ({redo})"),
            (true, None) => "crash recovery".to_owned(),
            (false, _) => {
                "started without crash recovery (a clean shutdown in the snapshot)".to_owned()
            }
        },
    )
}

/// The quiesced Deployments back at the replicas the backup recorded: the services (all set
/// first, then waited for, since the gateway is ready only with the services behind it), or
/// the load generator.
async fn resume(
    cluster: &impl Cluster,
    backup: &BackupReport,
    config: &Config,
    load_generator: bool,
) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    let quiesce = backup
        .manifest
        .quiesce
        .as_ref()
        .context("the backup recorded no quiesce (no replica counts to resume)")?;
    let chosen: Vec<(&String, i32)> = quiesce
        .replicas
        .iter()
        .filter(|(name, _)| (name.as_str() == LOAD_GENERATOR) == load_generator)
        .map(|(name, &n)| (name, n))
        .collect();
    let api = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), NAMESPACE);
    for (name, replicas) in &chosen {
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("scale {name}"))?;
    }
    for (name, replicas) in chosen {
        let deadline = harness::ready::Deadline::new(config.ready_timeout);
        harness::ready::deployment_scaled(&client, NAMESPACE, name, replicas, deadline)
            .await
            .with_context(|| format!("scale deployment {name} to {replicas}"))?;
    }
    Ok(())
}

/// What rollback option 3 changes in the namespace on purpose: the StatefulSet's volume names
/// the restored claim, the backed-up claim is gone (destroyed with the database), and the
/// restored claim and the snapshot are new. Everything else must be as backed up.
fn option_3_changes(backed_up: &mut Vec<serde_json::Value>, restored: &mut Vec<serde_json::Value>) {
    let is = |o: &serde_json::Value, kind: &str, name: &str| {
        o["kind"] == kind && o["metadata"]["name"] == name
    };
    backed_up.retain(|o| !is(o, "PersistentVolumeClaim", CLAIM));
    restored.retain(|o| {
        !is(o, "PersistentVolumeClaim", RESTORED_CLAIM) && o["kind"] != "VolumeSnapshot"
    });
    for o in backed_up
        .iter_mut()
        .filter(|o| is(o, "StatefulSet", "postgresql"))
    {
        if let Some(volumes) = o["spec"]["template"]["spec"]["volumes"].as_array_mut() {
            for v in volumes
                .iter_mut()
                .filter(|v| v["name"] == "postgresql-data")
            {
                v["persistentVolumeClaim"]["claimName"] = serde_json::json!(RESTORED_CLAIM);
            }
        }
    }
}

/// A writer committing numbered rows, one per transaction, into its own database.
struct Writer {
    committed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
    _db: titanium::Db,
}

impl Writer {
    async fn start(cluster: &impl Cluster) -> anyhow::Result<Writer> {
        let db = titanium::database(cluster).await?;
        let admin = db.params.connect().await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {TICKS_DB}"))
            .await
            .context("create the writer's database")?;
        let mut params = db.params.clone();
        params.dbname = TICKS_DB.into();
        let client = params.connect().await?;
        client
            .batch_execute("CREATE TABLE ticks (n bigint PRIMARY KEY, payload text NOT NULL)")
            .await
            .context("create the writer's table")?;
        let committed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let committed = committed.clone();
            let stop = stop.clone();
            async move {
                let insert = client
                    .prepare("INSERT INTO ticks SELECT $1::bigint, md5($1::bigint::text)")
                    .await
                    .context("prepare the writer's insert")?;
                let mut n: i64 = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    client
                        .execute(&insert, &[&n])
                        .await
                        .with_context(|| format!("commit row {n}"))?;
                    committed.store(n as u64, Ordering::SeqCst);
                }
                anyhow::Ok(n as u64)
            }
        });
        Ok(Writer {
            committed,
            stop,
            task,
            _db: db,
        })
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` rows are committed; returns the count then.
    async fn wait_for(&mut self, n: u64, timeout: Duration) -> anyhow::Result<u64> {
        let started = Instant::now();
        loop {
            let now = self.committed();
            if now >= n {
                return Ok(now);
            }
            if self.task.is_finished() {
                let why = match (&mut self.task).await {
                    Ok(Ok(_)) => "it ended".to_owned(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => format!("it panicked: {e}"),
                };
                bail!("the writer stopped after {now} rows: {why}");
            }
            ensure!(
                started.elapsed() < timeout,
                "the writer committed {now} rows in {} s",
                timeout.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the writer; the rows it committed.
    async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.context("the writer panicked")?
    }
}

/// The consistency gate under load: the restored rows are exactly `1..=N` (one instant of the
/// volume), each with its payload, with `before <= N <= after`.
async fn consistency(
    cluster: &impl Cluster,
    (before, after): (u64, u64),
    written: u64,
) -> anyhow::Result<GateReport> {
    let db = titanium::database(cluster).await?;
    let mut params = db.params.clone();
    params.dbname = TICKS_DB.into();
    let client = params.connect().await?;
    let row = client
        .query_one(
            "SELECT count(*), coalesce(max(n), 0), count(*) FILTER (WHERE payload <> md5(n::text)) \
             FROM ticks",
            &[],
        )
        .await
        .context("read the writer's rows")?;
    let (count, max, bad): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    Ok(consistency_verdict(
        (before, after),
        written,
        count as u64,
        max as u64,
        bad as u64,
    ))
}

/// The verdict of [`consistency`] on its figures.
fn consistency_verdict(
    (before, after): (u64, u64),
    written: u64,
    count: u64,
    max: u64,
    bad: u64,
) -> GateReport {
    let mut findings = Vec::new();
    if count != max {
        findings.push(Finding::new(
            "ticks",
            FindingKind::Broken,
            format!(
                "{count} rows restored but the highest is {max}: rows are missing before the \
                 last one, the copy is not of one instant"
            ),
        ));
    }
    if bad > 0 {
        findings.push(Finding::new(
            "ticks",
            FindingKind::Broken,
            format!("{bad} rows restored with a payload that is not theirs"),
        ));
    }
    if max < before || max > after {
        findings.push(Finding::new(
            "ticks",
            FindingKind::Mismatch,
            format!(
                "{max} rows restored; the snapshot must hold at least the {before} committed \
                 before it was asked for and at most the {after} committed when it was ready"
            ),
        ));
    }
    let passed = findings.is_empty();
    findings.push(Finding::new(
        "ticks",
        FindingKind::Note,
        format!(
            "rows 1..{max} restored of {written} written; {before} committed before the \
             snapshot was asked for, {after} when it was ready"
        ),
    ));
    GateReport {
        name: "snapshot-consistency".into(),
        passed,
        findings,
        not_run: None,
    }
}

#[cfg(test)]
mod tests {
    use super::consistency_verdict;

    #[test]
    fn a_prefix_within_the_bounds_passes_and_each_defect_fails() {
        assert!(consistency_verdict((100, 180), 400, 150, 150, 0).passed);
        // A gap: rows missing below the highest.
        let gap = consistency_verdict((100, 180), 400, 149, 150, 0);
        assert!(!gap.passed && gap.findings_text("; ").contains("not of one instant"));
        // Older than what was committed before the snapshot was asked for.
        assert!(!consistency_verdict((100, 180), 400, 90, 90, 0).passed);
        // Newer than what was committed when it was ready.
        assert!(!consistency_verdict((100, 180), 400, 190, 190, 0).passed);
        // A row whose payload is not its own.
        assert!(!consistency_verdict((100, 180), 400, 150, 150, 1).passed);
    }
}
