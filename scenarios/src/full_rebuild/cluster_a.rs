//! The runbook's phases on cluster A: deploy and seed, the read-only preflight, the load
//! generator, the quiesced backup and its verification, the marker row, the RPO, the destroy.

use super::*;

/// Cluster A from its deployment to a verified backup: deploy, seed, preflight, (PITR: the WAL
/// archive), load, backup, RPO, (PITR: base backup) and the backup's verification.
pub(super) async fn back_up_cluster_a(
    scenario: Scenario,
    config: &Config,
    run: &mut Run<'_>,
    state: &mut State,
    a: &impl Cluster,
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
    let backup = run
        .phase("backup", take_backup(a, config, scenario.is_snapshot()))
        .await?;
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
    let verified = run.phase("verify-backup", verify(&backup, tools)).await?;
    run.note(verified);
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
pub(super) async fn write_markers(
    run: &mut Run<'_>,
    a: &impl Cluster,
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
pub(super) async fn destroy_cluster_a(
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

pub(super) fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// The clock both ends of the RPO are read from.
pub(super) const RPO_CLOCK: &str = "postgresql server";

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
pub(super) fn rpo_between(stopped: Option<&str>, snapshot: &str) -> Result<u64, String> {
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

/// Installs the infrastructure (CRDs, the ingress gateway), applies the manifests, holds the
/// load generator at zero until the data is seeded, and waits until everything is ready.
pub(crate) async fn deploy(cluster: &impl Cluster, config: &Config) -> anyhow::Result<()> {
    harness::deploy::apply_infrastructure(cluster, &config.overlay, config.ready_timeout).await?;
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

pub(super) async fn preflight(cluster: &impl Cluster, config: &Config) -> anyhow::Result<()> {
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
pub(super) async fn start_load(cluster: &impl Cluster, config: &Config) -> anyhow::Result<()> {
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

pub(super) async fn take_backup(
    cluster: &impl Cluster,
    config: &Config,
    physical: bool,
) -> anyhow::Result<BackupReport> {
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
    // The snapshot scenarios rehearse the physical path: the backup has its physical copy
    // too, which verify-backup starts a server on.
    options.physical = physical;
    Ok(backup::backup(&options).await?)
}

/// What the rebuild record says of the backup, from its manifest and the copies read back.
pub(super) fn backup_evidence(backup: &BackupReport) -> anyhow::Result<BackupEvidence> {
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

pub(super) fn ensure_dir(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    Ok(path.to_path_buf())
}

pub(super) async fn verify(backup: &BackupReport, tools: &PgTools) -> anyhow::Result<String> {
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
    let physical = backup
        .manifest
        .postgres
        .as_ref()
        .is_some_and(|pg| pg.physical.is_some());
    ensure!(
        report.physical_checked == physical,
        "the backup's physical copy was not checked"
    );
    scratch.stop().await?;
    Ok(if physical {
        format!(
            "{} tables compared after pg_restore, and again on a server started on the physical copy",
            report.tables_checked
        )
    } else {
        format!("{} tables compared after pg_restore", report.tables_checked)
    })
}

pub(super) async fn write_marker(cluster: &impl Cluster, marker: &MarkerRow) -> anyhow::Result<()> {
    let db = titanium::database(cluster).await?;
    marker.write(&db.params.connect().await?).await?;
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
