//! Restoring Redis data from an RDB file into a running Redis reached over the network: the RDB
//! is loaded by a private scratch `redis-server` here (Unix socket only), and every key of
//! every logical database is copied into the same database of the target with `DUMP` /
//! `RESTORE ... REPLACE ABSTTL`, keeping its absolute expiry time exactly (the Redis digest
//! covers it, see [`crate::backup::dataset_facts`]). This works against any Redis the harness
//! can reach (a port-forward into any cluster) without touching the pod's files.

use std::path::Path;

use super::RestoreError;

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
    let (scratch, mut from) =
        crate::backup::ScratchRedis::load(rdb)
            .await
            .map_err(|err| match err {
                crate::backup::ScratchRedisError::Spawn(source) => RestoreError::Spawn {
                    tool: "redis-server (apt-get install redis-server)".into(),
                    source,
                },
                other => unreadable(other.to_string()),
            })?;
    let mut to = redis::Client::open(target)
        .map_err(redis_err("open the target"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(redis_err("connect to the target"))?;
    let failed = |s: crate::backup::RedisStep| RestoreError::Redis {
        what: format!("{} of the RDB", s.what),
        source: s.source,
    };
    let mut copied = 0u64;
    for db in crate::backup::databases(&mut from).await.map_err(failed)? {
        let keys = crate::backup::scan_keys(&mut from, db)
            .await
            .map_err(failed)?;
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(&mut to)
            .await
            .map_err(|source| RestoreError::Redis {
                what: format!("select db {db} on the target (is its `databases` setting lower?)"),
                source,
            })?;
        for key in &keys {
            if copy_key(&mut from, &mut to, db, key).await? {
                copied += 1;
            }
        }
    }
    scratch.stop().await;
    Ok(copied)
}

/// Copies one key with its absolute expiry time; false when it expired in the scratch server
/// before it could be read (it is then no longer part of the data).
async fn copy_key(
    from: &mut redis::aio::MultiplexedConnection,
    to: &mut redis::aio::MultiplexedConnection,
    db: u32,
    key: &[u8],
) -> Result<bool, RestoreError> {
    let label = crate::backup::key_label(db, key);
    let read = |what: &str| {
        let what = format!("{what} {label} in the RDB");
        move |source| RestoreError::Redis { what, source }
    };
    let Some(dump) = redis::cmd("DUMP")
        .arg(key)
        .query_async::<Option<Vec<u8>>>(from)
        .await
        .map_err(read("DUMP"))?
    else {
        return Ok(false);
    };
    // The absolute time (not the remaining TTL, which moves while we copy): -1 none, -2 gone.
    let expires_at: i64 = redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(from)
        .await
        .map_err(read("PEXPIRETIME"))?;
    if expires_at == -2 {
        return Ok(false);
    }
    let mut restore = redis::cmd("RESTORE");
    restore
        .arg(key)
        .arg(expires_at.max(0))
        .arg(dump)
        .arg("REPLACE");
    if expires_at > 0 {
        restore.arg("ABSTTL");
    }
    restore
        .query_async::<()>(to)
        .await
        .map_err(|source| RestoreError::Redis {
            what: format!("RESTORE {label} on the target"),
            source,
        })?;
    Ok(true)
}
