//! Redis backup and restore against real redis-servers: every logical database, every type and
//! every expiry time goes through the RDB and `replay_rdb`, and the Redis gate goes red for a
//! key missing from db 3 and for a lost TTL.

use anyhow::{Context, Result, ensure};
use harness::backup::{
    BackupOptions, RedisManifest, RedisSource, backup, dataset_facts, rdb_facts,
};
use harness::keep::ScratchDir;
use harness::restore::replay_rdb;
use harness::verify::{self, FindingKind, RedisFacts, Verdict};
use titanium::RedisServer;

/// An absolute expiry far enough ahead that no key expires during the test.
const EXPIRES_AT_MS: i64 = 4_102_444_800_000; // 2100-01-01

/// Whether redis-server is here; under CI its absence fails the test (`harness::testing`).
fn have_redis() -> Result<bool> {
    Ok(harness::testing::require("redis-server").is_some())
}

async fn conn(server: &RedisServer, db: u32) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("{}/{db}", server.url()))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

async fn run(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> Result<()> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async::<redis::Value>(conn)
        .await
        .with_context(|| format!("{args:?}"))?;
    Ok(())
}

/// Every type in db 0, sessions with TTLs in db 3, a hash with an absolute expiry in db 15,
/// and enough keys in db 5 that SCAN needs many rounds. Returns the number of keys.
async fn fill(server: &RedisServer) -> Result<u64> {
    let mut db0 = conn(server, 0).await?;
    let at = EXPIRES_AT_MS.to_string();
    for args in [
        &["SET", "greeting", "hello\0\u{fffd}"][..],
        &["RPUSH", "queue", "c", "a", "b", "a"],
        &["SADD", "tags", "x", "y", "z"],
        &["ZADD", "board", "1.5", "amber", "2", "basil", "-3", "cedar"],
        &["HSET", "user:1", "name", "amber", "role", "admin"],
        &["XADD", "events", "1-1", "kind", "login", "user", "1"],
        &["XADD", "events", "2-0", "kind", "post"],
        &["XGROUP", "CREATE", "events", "mailer", "0"],
        &["PEXPIREAT", "queue", &at],
    ] {
        run(&mut db0, args).await?;
    }
    let mut db3 = conn(server, 3).await?;
    for i in 0..20 {
        let key = format!("session:{i}");
        run(
            &mut db3,
            &["SET", &key, &format!("{{\"user_id\":{i}}}"), "EX", "3600"],
        )
        .await?;
    }
    run(&mut db3, &["SET", "config", "persistent"]).await?;
    let mut db15 = conn(server, 15).await?;
    run(
        &mut db15,
        &["HSET", "cache:front", "html", "<p>", "etag", "1"],
    )
    .await?;
    run(&mut db15, &["PEXPIREAT", "cache:front", &at]).await?;
    let mut db5 = conn(server, 5).await?;
    let mut pipe = redis::pipe();
    for i in 0..2500 {
        pipe.cmd("SET").arg(format!("k:{i}")).arg(i).ignore();
    }
    pipe.query_async::<()>(&mut db5).await?;
    // db 0: six keys; db 3: 21; db 15: one; db 5: 2,500.
    Ok(6 + 21 + 1 + 2500)
}

/// A backup of `source` holding only its Redis part; returns the manifest's Redis part and
/// the RDB's path (inside `dir`).
async fn backup_redis(
    source: &RedisServer,
    dir: &ScratchDir,
) -> Result<(RedisManifest, std::path::PathBuf)> {
    let mut options = BackupOptions::new(dir.path());
    options.name = Some("redis-only".to_owned());
    options.archive = false;
    options.redis = Some(RedisSource::Direct {
        host: "127.0.0.1".to_owned(),
        port: source.port(),
        password: None,
    });
    let report = backup(&options).await.context("backup")?;
    let redis = report.manifest.redis.clone().context("a Redis part")?;
    let rdb = report.dir.join(&redis.rdb);
    Ok((redis, rdb))
}

fn red_with(verdict: &Verdict, subject: &str, kind: FindingKind) -> Result<()> {
    ensure!(!verdict.passed, "the Redis gate passed: {verdict}");
    ensure!(
        verdict
            .findings
            .iter()
            .any(|f| f.subject == subject && f.kind == kind),
        "no {kind:?} finding for {subject}: {verdict}"
    );
    Ok(())
}

#[tokio::test]
async fn every_database_type_and_ttl_survives_backup_and_replay_and_defects_turn_the_gate_red()
-> Result<()> {
    if !have_redis()? {
        return Ok(());
    }
    let source = RedisServer::start().await?;
    let keys = fill(&source).await?;
    let dir = ScratchDir::new("redis-test-", "redis test backup")?;
    let (manifest, rdb) = backup_redis(&source, &dir).await?;
    let recorded = RedisFacts::from(&manifest);
    ensure!(manifest.keys == keys, "{manifest:?} (expected {keys} keys)");

    // Replayed into an empty Redis, every database, type and expiry time compares equal.
    let target = RedisServer::start().await?;
    let copied = replay_rdb(&rdb, &target.url()).await?;
    let restored = dataset_facts(&mut conn(&target, 0).await?).await?;
    let verdict = verify::redis(&recorded, &restored);
    ensure!(verdict.passed, "{verdict}");
    ensure!(copied == keys, "replay copied {copied} of {keys} keys");

    // The RDB holds exactly the live dataset, key by key (the digest includes the expiry),
    // and the restored server holds exactly the RDB's keys.
    let live = dataset_facts(&mut conn(&source, 0).await?).await?;
    let in_rdb = rdb_facts(&rdb).await?;
    ensure!(
        in_rdb.keys.len() as u64 == keys,
        "{} named keys",
        in_rdb.keys.len()
    );
    for verdict in [
        verify::redis(&live, &in_rdb),
        verify::redis(&recorded, &in_rdb),
        verify::redis(&in_rdb, &restored),
    ] {
        ensure!(verdict.passed, "{verdict}");
    }
    // The absolute expiry came back exactly, not re-based on when the replay ran.
    let mut t15 = conn(&target, 15).await?;
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg("cache:front")
        .query_async(&mut t15)
        .await?;
    ensure!(at == EXPIRES_AT_MS, "cache:front expires at {at}");

    // Defect 1: a key missing in db 3.
    let mut t3 = conn(&target, 3).await?;
    run(&mut t3, &["DEL", "session:7"]).await?;
    let restored = dataset_facts(&mut conn(&target, 0).await?).await?;
    red_with(
        &verify::redis(&recorded, &restored),
        "redis",
        FindingKind::Mismatch,
    )?;
    red_with(
        &verify::redis(&in_rdb, &restored),
        "redis key db3 session:7",
        FindingKind::Missing,
    )?;

    // Replaying again repairs it (RESTORE ... REPLACE), and the gate is green again.
    replay_rdb(&rdb, &target.url()).await?;
    let restored = dataset_facts(&mut conn(&target, 0).await?).await?;
    ensure!(verify::redis(&recorded, &restored).passed);

    // Defect 2: a lost TTL (same keys, same values, the session no longer expires).
    run(&mut t3, &["PERSIST", "session:3"]).await?;
    let restored = dataset_facts(&mut conn(&target, 0).await?).await?;
    ensure!(restored.key_count == keys);
    let verdict = verify::redis(&recorded, &restored);
    red_with(&verdict, "redis", FindingKind::Mismatch)?;
    ensure!(
        verdict.findings[0].detail == "content digest differs",
        "{verdict}"
    );
    red_with(
        &verify::redis(&in_rdb, &restored),
        "redis key db3 session:3",
        FindingKind::Mismatch,
    )?;
    Ok(())
}
