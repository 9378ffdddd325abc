//! `pitr`: point-in-time recovery on the runbook's spine. Before the load starts,
//! `pg_receivewal` streams cluster A's WAL (through a port-forward, on a replication slot) into
//! the backup's off-site directory; after the (quiesced) dump backup, `pg_basebackup` takes a
//! base backup. Then a marker stream commits a timestamped row every 100 ms in its own schema
//! (`pitr.markers`): two seconds with the load generator still quiesced, then T (the moment
//! the first half is known committed), then the load generator resumes and writes while the
//! stream goes on, until cluster A is destroyed. On cluster B the database is recovered to T;
//! the gates prove every marker committed at or before T is there and none after, row by row,
//! and then every existing data gate holds against the backup (at T the application's tables
//! are the backup's). Finally a recovery to the archive's end measures the RPO with the load
//! generator writing: the distance between the last marker committed before the disaster and
//! the last one recovered.
//!
//! Cluster B's PostgreSQL is not itself started from the base backup: the recovery runs in a
//! scratch PostgreSQL on this machine (`harness::pitr::recover`), and the recovered database
//! is restored into the pod with `pg_dump`/`pg_restore` by the same restore as `full_rebuild`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use harness::cluster::Cluster;
use harness::pg::{ConnParams, PgTools};
use harness::pitr::{self, RecoveryPlan, SegmentManifest, Target, WalReceiver};
use harness::report::GateReport;
use harness::restore::{DbArchive, DbRestoreInput, DbRestoreOptions, restore_database};
use harness::verify::{Finding, FindingKind};

use crate::full_rebuild::Config;
use crate::titanium::{self, Db};

/// How long each half of the marker stream writes, and how often.
const HALF: Duration = Duration::from_secs(2);
const EVERY: Duration = Duration::from_millis(100);

/// The archive directory: in the backup's off-site directory.
pub(crate) fn archive_dir(config: &Config) -> PathBuf {
    config.backup_dir().join("offsite").join("pitr")
}

/// The WAL archive of cluster A while it runs: the receiver and the port-forward it streams
/// through.
pub(crate) struct WalArchive {
    receiver: WalReceiver,
    db: Db,
    /// The archive directory.
    pub(crate) dir: PathBuf,
}

/// Starts streaming cluster A's WAL into the archive; returns once the server lists the
/// receiver as streaming.
pub(crate) async fn start_archive(
    cluster: &impl Cluster,
    config: &Config,
    tools: &PgTools,
) -> anyhow::Result<WalArchive> {
    let db = titanium::database(cluster).await?;
    let dir = archive_dir(config);
    ensure!(
        !dir.exists(),
        "{} exists: an archive is never mixed with another's WAL",
        dir.display()
    );
    let receiver = WalReceiver::start(tools, &db.params, &dir, &pitr::ReceiverOptions::default())
        .await
        .context("start pg_receivewal")?;
    Ok(WalArchive { receiver, db, dir })
}

impl WalArchive {
    /// `pg_basebackup` of cluster A into the archive, then waits until the receiver has the
    /// WAL up to now.
    pub(crate) async fn base_backup(&self, tools: &PgTools) -> anyhow::Result<String> {
        let base = pitr::base_backup(tools, &self.db.params, &self.dir).await?;
        self.receiver.wait_flushed(Duration::from_secs(60)).await?;
        Ok(format!(
            "LSN {} to {} on timeline {}, WAL {} to {}",
            base.start_lsn, base.stop_lsn, base.timeline, base.wal_start, base.wal_end
        ))
    }

    /// The connection the marker stream uses (the same port-forward).
    pub(crate) fn params(&self) -> &ConnParams {
        &self.db.params
    }

    /// After the disaster: the receiver has lost its server; collect it and seal the archive.
    pub(crate) async fn seal(self) -> anyhow::Result<SegmentManifest> {
        let WalArchive { receiver, db, .. } = self;
        let sealed = receiver.stop().await?;
        drop(db);
        Ok(sealed)
    }
}

/// One committed marker: written at (server clock, before its commit) and known committed by
/// (server clock, after its commit returned).
#[derive(Clone, Debug)]
pub(crate) struct Marker {
    id: i32,
    written_at: DateTime<Utc>,
    committed_by: DateTime<Utc>,
}

/// The marker stream of cluster A.
#[derive(Clone, Debug, Default)]
pub(crate) struct Markers {
    rows: Vec<Marker>,
    /// T: when the first half was known committed, before the load generator resumed.
    t: Option<(DateTime<Utc>, i32)>,
}

impl Markers {
    /// T, and the last marker at or before it: the moment the first half of the stream was
    /// known committed. Every later commit (the second half, the load generator's writes)
    /// started after it on the same server clock.
    pub(crate) fn target(&self) -> anyhow::Result<(DateTime<Utc>, i32)> {
        let (t, id) = self
            .t
            .context("the marker stream did not reach its middle")?;
        ensure!(
            self.rows.iter().any(|m| m.id > id),
            "no marker was committed after T"
        );
        Ok((t, id))
    }

    /// The ids committed at or before `t` (by their commit's upper bound).
    fn ids_until(&self, t: DateTime<Utc>) -> Vec<i32> {
        self.rows
            .iter()
            .filter(|m| m.committed_by <= t)
            .map(|m| m.id)
            .collect()
    }

    /// How many markers were committed.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    fn all_ids(&self) -> Vec<i32> {
        self.rows.iter().map(|m| m.id).collect()
    }
}

/// Creates `pitr.markers` and commits a marker every 100 ms: for two seconds with the load
/// generator quiesced (the backup stopped it, so the application's tables at T are the
/// backup's), then T is taken, the quiesced Deployments resume at their recorded `replicas`
/// and the load generator writes (checked) while the stream goes on, until the disaster.
pub(crate) async fn marker_stream(
    cluster: &impl Cluster,
    params: &ConnParams,
    replicas: &std::collections::BTreeMap<String, i32>,
    timeout: Duration,
) -> anyhow::Result<Markers> {
    let client = params.connect().await?;
    client
        .batch_execute(
            "CREATE SCHEMA pitr; \
             CREATE TABLE pitr.markers (id int PRIMARY KEY, \
                                        written_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .await
        .context("create pitr.markers")?;
    let mut markers = Markers::default();
    let mut id = 0;
    write_markers(&client, &mut markers, &mut id).await?;
    let last = markers.rows.last().context("no marker was committed")?;
    markers.t = Some((last.committed_by, last.id));
    let posts = |row: tokio_postgres::Row| -> i64 { row.get(0) };
    let before = posts(client.query_one("SELECT count(*) FROM posts", &[]).await?);
    // The backup quiesced every Deployment but Redis: they all come back at their recorded
    // counts at once (the gateway is Ready only with the services behind it), the load
    // generator with them.
    let kube = cluster.client().await?;
    let mut scaling = tokio::task::JoinSet::new();
    for (name, count) in replicas.clone() {
        let kube = kube.clone();
        scaling.spawn(async move { titanium::scale(&kube, &name, count, timeout).await });
    }
    while let Some(scaled) = scaling.join_next().await {
        scaled.context("a scaling task")??;
    }
    // The second half lasts until the load generator has written (it may take a moment to
    // start), within the readiness deadline.
    let deadline = Instant::now() + timeout;
    loop {
        write_markers(&client, &mut markers, &mut id).await?;
        let after = posts(client.query_one("SELECT count(*) FROM posts", &[]).await?);
        if after > before {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the load generator wrote nothing in the {} s after it resumed",
            timeout.as_secs()
        );
    }
    Ok(markers)
}

/// Commits a marker every 100 ms for [`HALF`].
async fn write_markers(
    client: &tokio_postgres::Client,
    markers: &mut Markers,
    next: &mut i32,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < HALF {
        *next += 1;
        let id = *next;
        let written_at: DateTime<Utc> = client
            .query_one(
                "INSERT INTO pitr.markers (id) VALUES ($1) RETURNING written_at",
                &[&id],
            )
            .await
            .with_context(|| format!("commit marker {id}"))?
            .get(0);
        let committed_by: DateTime<Utc> = client
            .query_one("SELECT clock_timestamp()", &[])
            .await?
            .get(0);
        markers.rows.push(Marker {
            id,
            written_at,
            committed_by,
        });
        tokio::time::sleep(EVERY).await;
    }
    Ok(())
}

/// Plans the recovery to `target`; refused (with the range or the missing segment) when the
/// archive does not cover it.
pub(crate) async fn plan(
    tools: &PgTools,
    config: &Config,
    target: &Target,
) -> anyhow::Result<RecoveryPlan> {
    Ok(pitr::plan(tools, &archive_dir(config), target).await?)
}

/// Recovers the plan in a scratch server, dumps it (`pg_dump -Fc`) and restores that into the
/// database behind `params` with the same restore as `full_rebuild`. Returns how long the
/// recovery took and where it stopped.
pub(crate) async fn restore_to(
    tools: &PgTools,
    plan: &RecoveryPlan,
    params: &ConnParams,
    backup_id: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let recovered = pitr::recover(plan, Duration::from_secs(300)).await?;
    tracing::info!(stopped = ?recovered.stopped, "recovered");
    let work = harness::keep::ScratchDir::new("harness-pitr-dump-", "recovered database dump")
        .context("a directory for the recovered dump")?;
    let dump = work.path().join("recovered.dump");
    dump_database(
        tools,
        &recovered
            .server
            .socket_params()
            .with_dbname(titanium::DATABASE),
        &dump,
    )
    .await?;
    let recovery = recovered.duration;
    harness::pg::PostgresProvider::stop(recovered.server).await?;
    let input = DbRestoreInput {
        archive: DbArchive::Custom(dump),
        backup_id: format!("{backup_id} at {}", plan.target),
        recorded_sha256: None,
    };
    let report = restore_database(tools, params, &input, &DbRestoreOptions::default()).await?;
    Ok((recovery, Duration::from_secs_f64(report.analyze_seconds)))
}

/// `pg_dump -Fc --no-owner` of the database behind `params` into `out` (a recovered
/// database, before it is restored into the cluster).
///
/// # Errors
/// pg_dump's cause when it fails.
pub async fn dump_database(tools: &PgTools, params: &ConnParams, out: &Path) -> anyhow::Result<()> {
    let pg_dump = tools.tool("pg_dump")?;
    harness::process::ToolRun::new("pg_dump", pg_dump, "dumping the recovered database")
        .args(["-Fc", "--no-owner", "-f"])
        .args([out.display().to_string()])
        .envs(params.libpq_env())
        .run()
        .await?;
    Ok(())
}

/// The markers gate on the restored database: every marker committed at or before T present,
/// none after, row by row (and each row's time as written). Then the stream's schema is
/// dropped, so that the existing gates compare the application's data with the backup.
pub(crate) async fn markers_gate(
    params: &ConnParams,
    markers: &Markers,
    t: DateTime<Utc>,
) -> anyhow::Result<GateReport> {
    let client = params.connect().await?;
    let rows: Vec<(i32, DateTime<Utc>)> = client
        .query("SELECT id, written_at FROM pitr.markers ORDER BY id", &[])
        .await
        .context("read pitr.markers from the restored database")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = markers.ids_until(t);
    let mut findings = marker_findings(markers, &rows, t);
    client
        .batch_execute("DROP SCHEMA pitr CASCADE")
        .await
        .context("drop the marker stream's schema after its gate")?;
    let passed = findings.is_empty();
    if passed {
        findings.push(Finding::new(
            "pitr markers",
            FindingKind::Note,
            format!(
                "T = {}: markers 1 to {} of {} present, none after",
                t.to_rfc3339(),
                expected.len(),
                markers.rows.len()
            ),
        ));
    }
    Ok(GateReport {
        name: "pitr_markers".into(),
        passed,
        findings,
        not_run: None,
    })
}

/// The markers gate's findings: `rows` (id, time) read back against the stream and T.
fn marker_findings(
    markers: &Markers,
    rows: &[(i32, DateTime<Utc>)],
    t: DateTime<Utc>,
) -> Vec<Finding> {
    let expected = markers.ids_until(t);
    let mut findings = Vec::new();
    for m in &markers.rows {
        let found = rows.iter().find(|(id, _)| *id == m.id);
        let wanted = expected.contains(&m.id);
        match (wanted, found) {
            (true, None) => findings.push(Finding::new(
                format!("marker {}", m.id),
                FindingKind::Missing,
                format!(
                    "committed by {} (at or before T), missing",
                    m.committed_by.to_rfc3339()
                ),
            )),
            (false, Some(_)) => findings.push(Finding::new(
                format!("marker {}", m.id),
                FindingKind::Unexpected,
                format!(
                    "written at {} (after T), present",
                    m.written_at.to_rfc3339()
                ),
            )),
            (true, Some((_, at))) if *at != m.written_at => findings.push(
                Finding::new(
                    format!("marker {}", m.id),
                    FindingKind::Mismatch,
                    "time differs",
                )
                .values(m.written_at.to_rfc3339(), at.to_rfc3339()),
            ),
            _ => {}
        }
    }
    for (id, _) in rows {
        if !markers.rows.iter().any(|m| m.id == *id) {
            findings.push(Finding::new(
                format!("marker {id}"),
                FindingKind::Unexpected,
                "was never written",
            ));
        }
    }
    findings
}

/// Recovers the archive to its end in a scratch server and measures the RPO: from the last
/// marker committed before the disaster to the last one recovered (both on cluster A's
/// server clock). The recovered markers must be a prefix of those committed.
pub(crate) async fn latest(
    tools: &PgTools,
    config: &Config,
    markers: &Markers,
) -> anyhow::Result<(GateReport, u64)> {
    let plan = plan(tools, config, &Target::Latest).await?;
    let recovered = pitr::recover(&plan, Duration::from_secs(300)).await?;
    let client = recovered
        .server
        .socket_params()
        .with_dbname(titanium::DATABASE)
        .connect()
        .await?;
    let ids: Vec<i32> = client
        .query("SELECT id FROM pitr.markers ORDER BY id", &[])
        .await
        .context("read the markers recovered to the archive's end")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(client);
    harness::pg::PostgresProvider::stop(recovered.server).await?;
    let all = markers.all_ids();
    let last_committed = markers.rows.last().context("no marker was committed")?;
    let prefix = all.len() >= ids.len() && all[..ids.len()] == ids[..];
    let last_recovered = ids
        .last()
        .and_then(|id| markers.rows.iter().find(|m| m.id == *id));
    let rpo = match last_recovered {
        Some(m) => (last_committed.written_at - m.written_at).num_milliseconds(),
        None => (last_committed.written_at - markers.rows[0].written_at).num_milliseconds(),
    };
    let rpo =
        u64::try_from(rpo).context("the last recovered marker is after the last committed")?;
    let mut findings = vec![Finding::new(
        "pitr rpo",
        FindingKind::Note,
        format!(
            "RPO {rpo} ms: last marker committed before the disaster {} at {}, last recovered {}",
            last_committed.id,
            last_committed.written_at.to_rfc3339(),
            last_recovered.map_or_else(
                || "none".to_owned(),
                |m| format!("{} at {}", m.id, m.written_at.to_rfc3339())
            )
        ),
    )];
    if !prefix {
        findings.push(
            Finding::new(
                "recovered markers",
                FindingKind::Broken,
                "not the first of those committed",
            )
            .values(format!("{all:?}"), format!("{ids:?}")),
        );
    }
    Ok((
        GateReport {
            name: "pitr_rpo".into(),
            passed: prefix && !ids.is_empty(),
            findings,
            not_run: None,
        },
        rpo,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Markers 1..=6 a second apart, committed 100 ms after they were written; T after 3.
    fn stream() -> (Markers, DateTime<Utc>) {
        let start = DateTime::parse_from_rfc3339("2026-12-03T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let rows: Vec<Marker> = (1..=6)
            .map(|id| {
                let written_at = start + chrono::Duration::seconds(i64::from(id));
                Marker {
                    id,
                    written_at,
                    committed_by: written_at + chrono::Duration::milliseconds(100),
                }
            })
            .collect();
        let t = rows[2].committed_by;
        let markers = Markers {
            rows,
            t: Some((t, 3)),
        };
        (markers, t)
    }

    fn read_back(markers: &Markers, ids: &[i32]) -> Vec<(i32, DateTime<Utc>)> {
        markers
            .rows
            .iter()
            .filter(|m| ids.contains(&m.id))
            .map(|m| (m.id, m.written_at))
            .collect()
    }

    #[test]
    fn markers_up_to_t_and_none_after_pass() {
        let (markers, t) = stream();
        assert_eq!(markers.target().unwrap(), (t, 3));
        assert!(marker_findings(&markers, &read_back(&markers, &[1, 2, 3]), t).is_empty());
    }

    #[test]
    fn a_marker_lost_before_t_or_kept_after_it_is_named() {
        let (markers, t) = stream();
        let lost = marker_findings(&markers, &read_back(&markers, &[1, 3]), t);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(
            (lost[0].subject.as_str(), lost[0].kind),
            ("marker 2", FindingKind::Missing)
        );
        assert!(
            lost[0].to_string().starts_with("marker 2: committed by"),
            "{lost:?}"
        );
        let late = marker_findings(&markers, &read_back(&markers, &[1, 2, 3, 4]), t);
        assert_eq!(late.len(), 1, "{late:?}");
        assert_eq!(
            (late[0].subject.as_str(), late[0].kind),
            ("marker 4", FindingKind::Unexpected)
        );
        assert!(late[0].detail.ends_with("(after T), present"), "{late:?}");
        let mut moved = read_back(&markers, &[1, 2, 3]);
        moved[0].1 += chrono::Duration::milliseconds(1);
        let moved = marker_findings(&markers, &moved, t);
        assert_eq!(
            (moved[0].subject.as_str(), moved[0].kind),
            ("marker 1", FindingKind::Mismatch),
            "{moved:?}"
        );
        assert_ne!(moved[0].expected, moved[0].actual, "{moved:?}");
        let mut foreign = read_back(&markers, &[1, 2, 3]);
        foreign.push((99, t));
        let foreign = marker_findings(&markers, &foreign, t);
        assert_eq!(
            foreign.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["marker 99: was never written"]
        );
    }
}
