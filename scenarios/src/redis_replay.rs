//! Restoring Redis data from an RDB file into a running Redis reached over the network: the RDB
//! is loaded by a private scratch `redis-server` here (Unix socket only), and every key is
//! copied with `DUMP` / `RESTORE ... REPLACE`, keeping its TTL. This works against any Redis
//! the harness can reach, in any cluster, without touching the pod's files.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Copies every key of `rdb` into the Redis at `target` (a `redis://` URL). Returns the number
/// of keys copied.
///
/// # Errors
/// When redis-server is missing, refuses the file, or the target refuses a key.
pub(crate) async fn replay_rdb(rdb: &Path, target: &str) -> anyhow::Result<u64> {
    let dir = harness::keep::ScratchDir::new("harness-redis-replay-", "scratch redis for an RDB replay")?;
    std::fs::copy(rdb, dir.path().join("dump.rdb")).with_context(|| format!("copy {}", rdb.display()))?;
    let socket = dir.path().join("redis.sock");
    let mut server = tokio::process::Command::new("redis-server")
        .args(["--port", "0", "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dbfilename", "dump.rdb", "--dir"])
        .arg(dir.path())
        .arg("--unixsocket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start redis-server (apt-get install redis-server)")?;
    let source = redis::Client::open(format!("redis+unix://{}", socket.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut from = loop {
        if let Ok(mut conn) = source.get_multiplexed_async_connection().await
            && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
        {
            break conn;
        }
        if let Some(status) = server.try_wait()? {
            bail!("redis-server refused {} ({status})", rdb.display());
        }
        if Instant::now() >= deadline {
            bail!("redis-server did not load {} within 30 s", rdb.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut to = redis::Client::open(target)?.get_multiplexed_async_connection().await.context("connect to the target redis")?;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query_async(&mut from).await?;
    for key in &keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(key).query_async(&mut from).await?;
        let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut from).await?;
        redis::cmd("RESTORE")
            .arg(key)
            .arg(ttl.max(0))
            .arg(dump)
            .arg("REPLACE")
            .query_async::<()>(&mut to)
            .await
            .with_context(|| format!("RESTORE {}", String::from_utf8_lossy(key)))?;
    }
    let _ = server.kill().await;
    Ok(keys.len() as u64)
}
