//! `rehearsal restore ARCHIVE --to-time/--to-lsn/--to-latest` end to end against real
//! PostgreSQL servers: an archive of a source server (pg_receivewal and pg_basebackup), restored
//! into another server at a moment, row by row; `rehearsal verify` of the archive; refusals (a
//! missing segment, a target outside the archive) exit 3 naming the segment or the range and
//! change nothing.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use chrono::{DateTime, Utc};
use harness::pg::{ConnParams, LocalOptions, LocalPostgres, PgTools, PostgresProvider};
use harness::pitr::{self, ReceiverOptions, WalReceiver};

fn rehearsal(args: &[&str], target: &ConnParams) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rehearsal"))
        .args(args)
        .args([
            "--pg-host",
            &target.host,
            "--pg-port",
            &target.port.to_string(),
        ])
        .args(["--pg-user", &target.user, "--database", "titanium"])
        .env_remove("PGPASSWORD")
        .output()
        .expect("run rehearsal")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A source with `titanium.pitr.markers` 1..=12 committed 30 ms apart and archived; returns
/// the archive and, per marker, (written_at, known committed by).
async fn archive(dir: &Path, tools: &PgTools) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let source = LocalPostgres::start(LocalOptions {
        durable: true,
        database: "titanium".into(),
        settings: vec![("fsync".into(), "off".into())],
        ..LocalOptions::default()
    })
    .await
    .expect("source server");
    let params = source.params();
    let client = params.connect().await.unwrap();
    client
        .batch_execute(
            "CREATE SCHEMA pitr; CREATE TABLE pitr.markers (id int PRIMARY KEY, \
             written_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .await
        .unwrap();
    let receiver = WalReceiver::start(tools, &params, dir, &ReceiverOptions::default())
        .await
        .unwrap();
    pitr::base_backup(tools, &params, dir).await.unwrap();
    let mut times = Vec::new();
    for id in 1..=12 {
        let written: DateTime<Utc> = client
            .query_one(
                "INSERT INTO pitr.markers (id) VALUES ($1) RETURNING written_at",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        let after: DateTime<Utc> = client
            .query_one("SELECT clock_timestamp()", &[])
            .await
            .unwrap()
            .get(0);
        times.push((written, after));
        if id == 6 {
            client
                .batch_execute("SELECT pg_switch_wal()")
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    receiver
        .wait_flushed(Duration::from_secs(20))
        .await
        .unwrap();
    receiver.stop().await.unwrap();
    source.stop().await.unwrap();
    times
}

#[tokio::test]
async fn restore_to_a_moment_and_refusals_naming_the_segment_or_range() {
    let tools = match PgTools::discover() {
        Ok(tools) => tools,
        Err(err) => return harness::testing::unavailable(&err.to_string()),
    };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("pitr");
    let times = archive(&dir, &tools).await;
    let target = LocalPostgres::start(LocalOptions {
        database: "titanium".into(),
        ..LocalOptions::default()
    })
    .await
    .expect("target server");
    let params = target.params();
    let archive = dir.to_str().unwrap();

    // T between the commit of marker 7 and the start of marker 8.
    let t = times[6].1 + (times[7].0 - times[6].1) / 2;
    let out = rehearsal(&["restore", archive, "--to-time", &t.to_rfc3339()], &params);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("promoted"), "{}", text(&out));
    let ids: Vec<i32> = params
        .connect()
        .await
        .unwrap()
        .query("SELECT id FROM pitr.markers ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, (1..=7).collect::<Vec<_>>());

    // A target after the archive's last commit: refused, the range named, nothing changed.
    let late = times[11].1 + chrono::Duration::minutes(5);
    let out = rehearsal(
        &[
            "restore",
            archive,
            "--to-time",
            &late.to_rfc3339(),
            "--force",
        ],
        &params,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("is not covered by the archive")
            && said.contains("(last commit)")
            && said.contains("nothing was changed"),
        "{said}"
    );

    // `rehearsal verify` replays the archive: the markers counted at its end.
    let verify = |archive: &str| {
        Command::new(env!("CARGO_BIN_EXE_rehearsal"))
            .args(["verify", archive])
            .output()
            .expect("run rehearsal verify")
    };
    let out = verify(archive);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("pitr.markers 12"), "{}", text(&out));

    // A missing segment: refused, the segment named.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(pitr::SEGMENTS)).unwrap()).unwrap();
    let second = manifest["segments"][1]["name"].as_str().unwrap().to_owned();
    std::fs::remove_file(dir.join(pitr::WAL_DIR).join(&second)).unwrap();
    let out = rehearsal(&["restore", archive, "--to-latest", "--force"], &params);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("missing WAL segment {second}")),
        "{}",
        text(&out)
    );
    let out = verify(archive);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("missing WAL segment {second}")),
        "{}",
        text(&out)
    );
    let still: i64 = params
        .connect()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM pitr.markers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(still, 7, "a refused restore changed the database");
    target.stop().await.unwrap();
}
