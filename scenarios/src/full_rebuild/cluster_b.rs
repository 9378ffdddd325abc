//! The restore on cluster B: the rebuilt cluster prepared, the namespace and data restored in
//! Velero's order (the database and Redis through `ClusterData`, the `DataRestorer`).

use super::*;

/// Cluster B's infrastructure (CRDs and the ingress gateway) and, with PITR, the recovery plan to a moment in the
/// marker stream (the plan and that moment).
pub(super) async fn prepare_cluster_b(
    run: &mut Run<'_>,
    b: &impl Cluster,
    config: &Config,
    tools: &PgTools,
    markers: Option<&crate::pitr::Markers>,
) -> anyhow::Result<Option<(harness::pitr::RecoveryPlan, chrono::DateTime<chrono::Utc>)>> {
    let infrastructure = run
        .phase(
            "deploy-infrastructure",
            harness::deploy::apply_infrastructure(b, &config.overlay, config.ready_timeout),
        )
        .await?;
    run.note(infrastructure);
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
pub(super) fn restore_note(restored: &Restored) -> String {
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
            Scenario::SnapshotRestore | Scenario::SnapshotUnderLoad => {
                return Err(
                    "the snapshot scenarios restore on cluster A by rollback option 3".into(),
                );
            }
            Scenario::FullRebuild | Scenario::Rollback => {
                let input = DbRestoreInput::custom_of(&self.backup.dir, &self.backup.manifest)
                    .context("no PostgreSQL part")?;
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

pub(super) async fn restore(
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

/// The runbook's method B (5.2 "테이블별 복구"): drop the init script's empty tables (as its
/// method A does), then run `users` and `posts` from their own files with psql, in that order
/// because posts reference users.
pub(super) async fn restore_tables(
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
pub(super) async fn restore_data_only(
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
