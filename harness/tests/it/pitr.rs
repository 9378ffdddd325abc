//! Point-in-time recovery against a real PostgreSQL: an archive made by `pg_receivewal` and
//! `pg_basebackup`, recovery to a moment (row by row), to the end; and the defects that must
//! refuse it, each named: a missing segment, a corrupted one, timelines mixed, a target outside
//! the archive.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use harness::pg::{ConnParams, LocalOptions, LocalPostgres, PgTools, PostgresProvider};
use harness::pitr::{self, PitrError, ReceiverOptions, Target, WalReceiver};

/// An archive of a server that committed `markers` (id, commit time on the server's clock),
/// with a segment switch after the fifth and the tenth, so the archive holds several segments.
struct Archived {
    dir: tempfile::TempDir,
    tools: PgTools,
    /// (id, written_at, known committed at): `written_at` is before the commit, the third
    /// after it, both on the server's clock.
    markers: Vec<(i32, DateTime<Utc>, DateTime<Utc>)>,
}

impl Archived {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn segments(&self) -> Vec<String> {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.path().join(pitr::SEGMENTS)).unwrap())
                .unwrap();
        manifest["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    }

    fn segment(&self, name: &str) -> PathBuf {
        self.path().join(pitr::WAL_DIR).join(name)
    }

    /// A moment strictly between the commit of marker `id` and the start of marker `id + 1`.
    fn between(&self, id: usize) -> DateTime<Utc> {
        let (_, _, committed) = self.markers[id - 1];
        let (_, next_written, _) = self.markers[id];
        assert!(committed < next_written, "markers too close to separate");
        committed + (next_written - committed) / 2
    }
}

async fn archived() -> Option<Archived> {
    let tools = match PgTools::discover() {
        Ok(tools) => tools,
        Err(err) => {
            harness::testing::unavailable(&err.to_string());
            return None;
        }
    };
    let source = LocalPostgres::start(LocalOptions {
        durable: true,
        settings: vec![("fsync".into(), "off".into())],
        ..LocalOptions::default()
    })
    .await
    .expect("start the source server");
    let params: ConnParams = source.params();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("pitr");
    let client = params.connect().await.unwrap();
    client
        .batch_execute(
            "CREATE SCHEMA pitr; CREATE TABLE pitr.markers (id int PRIMARY KEY, \
             written_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .await
        .unwrap();
    let receiver = WalReceiver::start(&tools, &params, &archive, &ReceiverOptions::default())
        .await
        .expect("pg_receivewal streaming");
    pitr::base_backup(&tools, &params, &archive)
        .await
        .expect("base backup");
    let mut markers = Vec::new();
    for id in 1..=15 {
        let row = client
            .query_one(
                "INSERT INTO pitr.markers (id) VALUES ($1) RETURNING written_at",
                &[&id],
            )
            .await
            .unwrap();
        let written: DateTime<Utc> = row.get(0);
        let after: DateTime<Utc> = client
            .query_one("SELECT clock_timestamp()", &[])
            .await
            .unwrap()
            .get(0);
        markers.push((id, written, after));
        // Not after the last: the receiver's last segment is then a partial one to seal.
        if id % 5 == 0 && id < 15 {
            client
                .batch_execute("SELECT pg_switch_wal()")
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver
        .wait_flushed(Duration::from_secs(20))
        .await
        .expect("flushed");
    let sealed = receiver.stop().await.expect("stop the receiver");
    assert!(sealed.segments.len() >= 3, "{sealed:?}");
    assert!(sealed.segments.last().unwrap().partial);
    let slots: i64 = client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "the receiver's slot is dropped when it stops");
    source.stop().await.unwrap();
    // Renamed, so a test holds the archive at `dir` itself.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::remove_dir(tmp.path()).unwrap();
    std::fs::rename(&archive, tmp.path()).unwrap();
    Some(Archived {
        dir: tmp,
        tools,
        markers,
    })
}

async fn recovered_ids(archived: &Archived, target: Target) -> Vec<i32> {
    let plan = pitr::plan(&archived.tools, archived.path(), &target)
        .await
        .expect("the archive covers the target");
    let recovered = pitr::recover(&plan, Duration::from_secs(60))
        .await
        .expect("recovered and promoted");
    let client = recovered.server.socket_params().connect().await.unwrap();
    let ids: Vec<i32> = client
        .query("SELECT id FROM pitr.markers ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    recovered.server.stop().await.unwrap();
    ids
}

fn refused(result: Result<pitr::RecoveryPlan, PitrError>) -> String {
    match result {
        Ok(plan) => panic!("the plan was accepted: {:?}", plan.range),
        Err(err) => harness::error_chain(&err),
    }
}

#[tokio::test]
async fn recovers_every_marker_up_to_a_moment_and_none_after_then_everything() {
    let Some(archived) = archived().await else {
        return;
    };
    let check = pitr::check_archive(archived.path()).unwrap();
    assert!(check.passed(), "{:?}", check.findings);
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&archived.path().join(pitr::WAL_DIR)), 0o700);
    for name in archived.segments() {
        assert_eq!(mode(&archived.segment(&name)), 0o600, "{name}");
    }
    let t = archived.between(8);
    assert_eq!(
        recovered_ids(&archived, Target::Time(t)).await,
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(
        recovered_ids(&archived, Target::Latest).await,
        (1..=15).collect::<Vec<_>>(),
        "the end of the archive holds every committed marker"
    );
}

#[tokio::test]
async fn a_missing_segment_is_refused_naming_it() {
    let Some(archived) = archived().await else {
        return;
    };
    let missing = archived.segments()[1].clone();
    std::fs::remove_file(archived.segment(&missing)).unwrap();
    let message = refused(pitr::plan(&archived.tools, archived.path(), &Target::Latest).await);
    assert!(
        message.contains(&format!("missing WAL segment {missing}")),
        "{message}"
    );
    // Also when SEGMENTS.json no longer records it: the sequence has a gap.
    let path = archived.path().join(pitr::SEGMENTS);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["segments"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["name"] != missing.as_str());
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let message = refused(pitr::plan(&archived.tools, archived.path(), &Target::Latest).await);
    assert!(
        message.contains(&format!(
            "missing WAL segment {missing}: gap in the sequence"
        )),
        "{message}"
    );
}

#[tokio::test]
async fn a_corrupted_segment_is_refused_naming_it() {
    use std::io::{Seek, SeekFrom, Write};
    let Some(archived) = archived().await else {
        return;
    };
    let corrupted = archived.segments()[1].clone();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(archived.segment(&corrupted))
        .unwrap();
    file.seek(SeekFrom::Start(200)).unwrap();
    file.write_all(b"\xde\xad\xbe\xef\xde\xad\xbe\xef").unwrap();
    drop(file);
    let message = refused(pitr::plan(&archived.tools, archived.path(), &Target::Latest).await);
    assert!(
        message.contains(&format!(
            "corrupted WAL segment {corrupted}: expected sha256"
        )),
        "{message}"
    );
    // With its checksum forged to match, pg_waldump still finds the damaged record.
    let (_, sha256) = {
        use sha2::Digest;
        let bytes = std::fs::read(archived.segment(&corrupted)).unwrap();
        (bytes.len(), hex::encode(sha2::Sha256::digest(&bytes)))
    };
    let path = archived.path().join(pitr::SEGMENTS);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for s in manifest["segments"].as_array_mut().unwrap() {
        if s["name"] == corrupted.as_str() {
            s["sha256"] = serde_json::Value::String(sha256.clone());
        }
    }
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let message = refused(pitr::plan(&archived.tools, archived.path(), &Target::Latest).await);
    assert!(
        message.contains(&format!("corrupted WAL segment {corrupted}: pg_waldump")),
        "{message}"
    );
}

#[tokio::test]
async fn a_second_timeline_in_the_archive_is_refused() {
    let Some(archived) = archived().await else {
        return;
    };
    let first = archived.segments()[0].clone();
    let other = format!("00000002{}", &first[8..]);
    std::fs::copy(archived.segment(&first), archived.segment(&other)).unwrap();
    let path = archived.path().join(pitr::SEGMENTS);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut record = manifest["segments"][0].clone();
    record["name"] = serde_json::Value::String(other.clone());
    manifest["segments"].as_array_mut().unwrap().push(record);
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let message = refused(pitr::plan(&archived.tools, archived.path(), &Target::Latest).await);
    assert!(message.contains("mixes timelines 1, 2"), "{message}");
}

#[tokio::test]
async fn a_target_outside_the_archive_is_refused_naming_the_range() {
    let Some(archived) = archived().await else {
        return;
    };
    let (_, _, last) = *archived.markers.last().unwrap();
    let late = last + chrono::Duration::hours(1);
    let message = refused(pitr::plan(&archived.tools, archived.path(), &Target::Time(late)).await);
    assert!(
        message.contains("is not covered by the archive")
            && message.contains("(last commit)")
            && message.contains("(base backup end)"),
        "{message}"
    );
    let early = archived.markers[0].1 - chrono::Duration::hours(1);
    let message = refused(pitr::plan(&archived.tools, archived.path(), &Target::Time(early)).await);
    assert!(message.contains(&early.to_rfc3339()), "{message}");
    let beyond = Target::Lsn("FF/0".parse().unwrap());
    let message = refused(pitr::plan(&archived.tools, archived.path(), &beyond).await);
    assert!(
        message.contains("LSN FF/0 is not covered") && message.contains("segments 0000000"),
        "{message}"
    );
}

#[tokio::test]
async fn verify_replays_the_archive_to_the_base_backups_end_and_to_its_end() {
    let Some(archived) = archived().await else {
        return;
    };
    let report = pitr::verify_archive(&archived.tools, archived.path())
        .await
        .unwrap();
    assert!(report.passed(), "{:?}", report.findings);
    let markers = |point: &pitr::VerifiedPoint| {
        point
            .databases
            .iter()
            .find(|(name, _)| name == "postgres")
            .and_then(|(_, tables)| tables.iter().find(|(t, _)| t == "pitr.markers"))
            .map(|(_, rows)| *rows)
    };
    assert_eq!(report.points.len(), 2);
    assert_eq!(
        markers(&report.points[0]),
        Some(0),
        "at the base backup's end"
    );
    assert_eq!(markers(&report.points[1]), Some(15), "at the archive's end");

    // A corrupted segment is a finding naming it, not a replay.
    let corrupted = archived.segments()[1].clone();
    std::fs::write(archived.segment(&corrupted), b"not WAL").unwrap();
    let report = pitr::verify_archive(&archived.tools, archived.path())
        .await
        .unwrap();
    assert!(!report.passed());
    assert!(
        report.findings[0].contains(&format!("corrupted WAL segment {corrupted}")),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn a_destination_holding_another_timeline_is_refused_before_streaming() {
    let tools = match PgTools::discover() {
        Ok(tools) => tools,
        Err(err) => return harness::testing::unavailable(&err.to_string()),
    };
    let source = LocalPostgres::start(LocalOptions {
        durable: true,
        ..LocalOptions::default()
    })
    .await
    .expect("start the source server");
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join(pitr::WAL_DIR);
    std::fs::create_dir_all(&wal).unwrap();
    std::fs::write(wal.join("000000020000000000000005"), b"").unwrap();
    let err = WalReceiver::start(
        &tools,
        &source.params(),
        dir.path(),
        &ReceiverOptions::default(),
    )
    .await
    .expect_err("a destination with timeline 2 segments");
    let message = harness::error_chain(&err);
    assert!(
        message.contains("000000020000000000000005 is of timeline 2, the server is on timeline 1"),
        "{message}"
    );
    let slots: i64 = source
        .params()
        .connect()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no slot is created for a refused destination");
    source.stop().await.unwrap();
}
