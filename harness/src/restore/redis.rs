//! Restoring Redis data from an RDB file into a running Redis reached over the network: the RDB
//! is loaded by a private scratch `redis-server` here (Unix socket only), and every key is
//! copied with `DUMP` / `RESTORE ... REPLACE`, keeping its TTL. This works against any Redis the
//! harness can reach (a port-forward into any cluster) without touching the pod's files.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::RestoreError;
use crate::keep::ScratchDir;

fn redis_err(what: &str) -> impl FnOnce(redis::RedisError) -> RestoreError + '_ {
    move |source| RestoreError::Redis {
        what: what.to_owned(),
        source,
    }
}

/// Copies every key of `rdb` into the Redis at `target` (a `redis://` URL) and returns how many
/// keys were copied. Keys already in the target with the same names are replaced.
///
/// # Errors
/// [`RestoreError::Spawn`] without redis-server, [`RestoreError::RdbUnreadable`] for a file it
/// refuses, [`RestoreError::Redis`] when the target refuses a key.
pub async fn replay_rdb(rdb: &Path, target: &str) -> Result<u64, RestoreError> {
    let unreadable = |detail: String| RestoreError::RdbUnreadable {
        path: rdb.to_path_buf(),
        detail,
    };
    let dir = ScratchDir::new("harness-redis-replay-", "scratch redis for an RDB replay").map_err(
        |source| RestoreError::Spawn {
            tool: "mkdir".into(),
            source,
        },
    )?;
    std::fs::copy(rdb, dir.path().join("dump.rdb")).map_err(|err| unreadable(err.to_string()))?;
    let socket = dir.path().join("redis.sock");
    use crate::process::GuardedSpawn;
    // Its own process group, killed with us even on SIGKILL (crate::process).
    let mut server = crate::process::tokio_command("redis-server")
        .args([
            "--port",
            "0",
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dbfilename",
            "dump.rdb",
            "--dir",
        ])
        .arg(dir.path())
        .arg("--unixsocket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn_guarded()
        .map_err(|source| RestoreError::Spawn {
            tool: "redis-server (apt-get install redis-server)".into(),
            source,
        })?;
    let source = redis::Client::open(format!("redis+unix://{}", socket.display()))
        .map_err(redis_err("open the scratch redis"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut from = loop {
        if let Ok(mut conn) = source.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        {
            break conn;
        }
        if let Ok(Some(status)) = server.try_wait() {
            return Err(unreadable(format!("redis-server exited ({status})")));
        }
        if Instant::now() >= deadline {
            return Err(unreadable("not loaded within 30 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut to = redis::Client::open(target)
        .map_err(redis_err("open the target"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(redis_err("connect to the target"))?;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut from)
        .await
        .map_err(redis_err("list the RDB's keys"))?;
    for key in &keys {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(key)
            .query_async(&mut from)
            .await
            .map_err(redis_err("DUMP a key"))?;
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut from)
            .await
            .map_err(redis_err("PTTL a key"))?;
        let what = format!("RESTORE {}", String::from_utf8_lossy(key));
        redis::cmd("RESTORE")
            .arg(key)
            .arg(ttl.max(0))
            .arg(dump)
            .arg("REPLACE")
            .query_async::<()>(&mut to)
            .await
            .map_err(|source| RestoreError::Redis { what, source })?;
    }
    let _ = server.kill().await;
    Ok(keys.len() as u64)
}
