//! The Redis part of a backup: an RDB snapshot, and the key count and digest of exactly what
//! that RDB holds.
//!
//! The counts are not read from the live server (which keeps changing): the RDB is loaded into
//! a private, socket-only `redis-server` on this machine and read there. `verify` does the
//! same, so the two sides are computed by one definition.
//!
//! # The digest
//! Every logical database that holds keys (`INFO keyspace`, so `SELECT 3` data is covered as
//! well as db 0) is read with `SCAN`; `SCAN` may return a key more than once, so each
//! database's keys are de-duplicated before they are hashed. For every key: SHA-256 over
//! `db (u32 BE)`, then the key, the type name, the expiry and the value, each as a
//! length-prefixed (u64 BE) byte string, the value canonicalised by type: string as is; list in
//! order; set members sorted; hash fields sorted with their values; sorted set in rank order
//! with scores as Redis prints them; stream entries in id order with their fields, then each
//! consumer group's name, last-delivered id and pending count; any other type (module types)
//! as its `DUMP` serialisation.
//!
//! The expiry is the key's absolute expiry time in Unix milliseconds (`PEXPIRETIME`, Redis
//! 7.0 or newer), as an i64 BE, or -1 for a key without one. The absolute time, unlike the
//! remaining TTL, does not move while the data is read, and [`crate::restore::replay_rdb`]
//! restores it exactly (`RESTORE ... ABSTTL`), so a lost or changed TTL changes the digest
//! while a correct restore read minutes later still matches. A key whose expiry passes between
//! the backup and the restore is gone from both the RDB (as Redis loads it) and the restored
//! server; the gate then reports the key count and digest as different, which is the truth:
//! that key cannot come back.
//!
//! The per-key hashes are summed modulo 2^256 (order-independent, as for tables without a
//! primary key) and the digest is `SHA-256("rr-redis-v2\n" || key count (u64 BE) || sum)`.
//! (`v1` ignored expiry times and covered duplicates returned by `SCAN` twice.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BackupError;
use super::exec::PodRef;
use super::files::{ToolRun, create_private_dir, tail};
use super::postgres::in_pod_with_password;
use crate::facts::RedisFacts;
use crate::pg::Secret;

/// Where the Redis to back up is.
#[derive(Clone, Debug)]
pub enum RedisSource {
    /// Reached directly; `redis-cli --rdb` runs here with the password in `REDISCLI_AUTH`.
    Direct {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Password (`requirepass`), if any.
        password: Option<Secret>,
    },
    /// Inside a pod: `redis-cli -h 127.0.0.1 -p PORT --rdb -` runs there through exec, its
    /// output streamed here.
    Kube {
        /// The Redis pod and container.
        pod: PodRef,
        /// The port Redis listens on in the pod (6379).
        port: u16,
        /// Environment variable inside the container holding the password, if any.
        password_env: Option<String>,
    },
}

impl RedisSource {
    /// Where it is, for messages and the manifest.
    pub fn describe(&self) -> String {
        match self {
            RedisSource::Direct { host, port, .. } => format!("{host}:{port}"),
            RedisSource::Kube { pod, port, .. } => {
                format!("pod {}/{}:{port}", pod.namespace, pod.pod)
            }
        }
    }
}

/// What the manifest records of Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisManifest {
    /// Where it came from.
    pub source: String,
    /// The RDB file.
    pub rdb: String,
    /// Keys in the RDB, all databases.
    pub keys: u64,
    /// Digest of keys and values (see the module docs).
    pub digest: String,
}

pub(crate) async fn backup_redis(
    source: &RedisSource,
    dir: &Path,
) -> Result<RedisManifest, BackupError> {
    let rel = "redis/dump.rdb".to_owned();
    let out = super::files::ensure_parent(dir, &rel)?;
    match source {
        RedisSource::Direct {
            host,
            port,
            password,
        } => {
            // A ping first, so that "unreachable" and "wrong password" are named clearly.
            let url = format!("redis://{host}:{port}/");
            let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(BackupError::redis(format!("parse address {host}:{port}")))?;
            if let Some(password) = password {
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_password(password.expose());
                info = info.set_redis_settings(settings);
            }
            let client = redis::Client::open(info)
                .map_err(BackupError::redis(format!("connect to {host}:{port}")))?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(BackupError::redis(format!("connect to {host}:{port}")))?;
            let _: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(BackupError::redis(format!("ping {host}:{port}")))?;
            let cli = which::which("redis-cli").map_err(|_| BackupError::Spawn {
                tool: "redis-cli".to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "redis-cli not on PATH (apt-get install redis-tools)",
                ),
            })?;
            let mut run = ToolRun::new(
                "redis-cli",
                cli,
                format!("transferring the RDB from {host}:{port}"),
            )
            .args([
                "-h".to_owned(),
                host.clone(),
                "-p".to_owned(),
                port.to_string(),
                "--rdb".to_owned(),
                "-".to_owned(),
            ]);
            if let Some(password) = password {
                run = run.envs([("REDISCLI_AUTH", password.expose())]);
            }
            super::files::to_private_file(&run, &out).await?;
        }
        RedisSource::Kube {
            pod,
            port,
            password_env,
        } => {
            let mut command = in_pod_with_password(password_env.as_deref(), "REDISCLI_AUTH")?;
            command.extend(["redis-cli", "-h", "127.0.0.1", "-p"].map(str::to_owned));
            command.extend([port.to_string(), "--rdb".to_owned(), "-".to_owned()]);
            pod.exec_to_file(command, "transferring the RDB", &out)
                .await?;
        }
    }
    let facts = rdb_facts(&out).await?;
    Ok(RedisManifest {
        source: source.describe(),
        rdb: rel,
        keys: facts.key_count,
        digest: facts.digest,
    })
}

/// A private scratch `redis-server` (Unix socket only, no TCP, no persistence) that loaded
/// one RDB file: the one way this crate reads an RDB (the backup's facts, the restore's
/// replay). Its directory and process go with it (killed on drop, also when this process
/// dies: `crate::process`).
pub(crate) struct ScratchRedis {
    child: tokio::process::Child,
    // Dropped after the child: the socket and the copy of the RDB live here.
    _dir: crate::keep::ScratchDir,
}

/// Why a scratch Redis did not come up with the RDB loaded.
#[derive(Debug)]
pub(crate) enum ScratchRedisError {
    /// redis-server is not installed, or could not be started.
    Spawn(std::io::Error),
    /// The scratch directory or the copy of the RDB failed.
    Io(std::io::Error),
    /// redis-server refused the file (it exited), with the last lines of its log.
    Exited(String),
    /// Not loaded in time, with the last lines of its log.
    TimedOut(String),
}

impl std::fmt::Display for ScratchRedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Spawn(e) => write!(
                f,
                "redis-server could not start ({e}; apt-get install redis-server)"
            ),
            Self::Io(e) => write!(f, "{e}"),
            Self::Exited(detail) => write!(f, "redis-server exited: {detail}"),
            Self::TimedOut(log) => {
                write!(f, "not loaded within {} s: {log}", SCRATCH_LOAD.as_secs())
            }
        }
    }
}

/// How long a scratch Redis may take to load an RDB.
const SCRATCH_LOAD: Duration = Duration::from_secs(60);

impl ScratchRedis {
    /// Starts a scratch redis-server on a copy of `rdb` and waits until it answers PING.
    pub(crate) async fn load(
        rdb: &Path,
    ) -> Result<(Self, redis::aio::MultiplexedConnection), ScratchRedisError> {
        let dir = crate::keep::ScratchDir::new("harness-redis-", "scratch Redis")
            .map_err(ScratchRedisError::Io)?;
        let data = dir.path().join("data");
        create_private_dir(&data)
            .map_err(|e| ScratchRedisError::Io(std::io::Error::other(e.to_string())))?;
        std::fs::copy(rdb, data.join("dump.rdb")).map_err(ScratchRedisError::Io)?;
        let socket = dir.path().join("redis.sock");
        let log = dir.path().join("redis.log");
        let server = which::which("redis-server").map_err(|_| {
            ScratchRedisError::Spawn(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "redis-server not on PATH",
            ))
        })?;
        use crate::process::GuardedSpawn;
        // Its own process group, killed with us even on SIGKILL (crate::process).
        let child = crate::process::tokio_command(&server)
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .args(["--dbfilename", "dump.rdb", "--dir"])
            .arg(&data)
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--logfile"])
            .arg(&log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn_guarded()
            .map_err(ScratchRedisError::Spawn)?;
        let mut scratch = Self { child, _dir: dir };
        let log_tail = || {
            std::fs::read_to_string(&log)
                .map(|l| tail(&l, 5))
                .unwrap_or_else(|e| format!("(its log could not be read: {e})"))
        };
        let client = redis::Client::open(format!("redis+unix://{}", socket.display()))
            .map_err(|e| ScratchRedisError::Spawn(std::io::Error::other(e.to_string())))?;
        let deadline = Instant::now() + SCRATCH_LOAD;
        loop {
            if let Ok(Some(status)) = scratch.child.try_wait() {
                return Err(ScratchRedisError::Exited(format!(
                    "{status}: {}",
                    log_tail()
                )));
            }
            if socket.exists()
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return Ok((scratch, conn));
            }
            if Instant::now() > deadline {
                return Err(ScratchRedisError::TimedOut(log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server (its directory goes with `self`).
    pub(crate) async fn stop(mut self) {
        // Already gone is as good as stopped; kill_on_drop and the process group cover the rest.
        let _ = self.child.kill().await;
    }
}

/// Loads an RDB file into a [`ScratchRedis`] and reads its key count and digest (as
/// [`crate::verify::RedisFacts`], for the Redis gate).
///
/// # Errors
/// When redis-server is missing, refuses the file (corrupt RDB), or does not start in time.
pub async fn rdb_facts(rdb: &Path) -> Result<RedisFacts, BackupError> {
    let (scratch, mut conn) = ScratchRedis::load(rdb).await.map_err(|err| match err {
        ScratchRedisError::Spawn(source) => BackupError::Spawn {
            tool: "redis-server".to_owned(),
            source,
        },
        other => BackupError::NotReady {
            what: format!("scratch redis-server loading {}", rdb.display()),
            seconds: SCRATCH_LOAD.as_secs(),
            detail: other.to_string(),
        },
    })?;
    let result = dataset_facts(&mut conn).await;
    scratch.stop().await;
    result
}

/// At most this many keys get a per-key digest in [`RedisFacts::keys`] (so the gate can name
/// them); a larger dataset is compared by count and digest only, to bound memory.
pub const MAX_NAMED_KEYS: usize = 100_000;

/// A Redis command that failed, with what it was for.
#[derive(Debug)]
pub(crate) struct RedisStep {
    /// What was being done (`scan db 3`, ...).
    pub(crate) what: String,
    /// The cause.
    pub(crate) source: redis::RedisError,
}

fn step(what: impl Into<String>) -> impl FnOnce(redis::RedisError) -> RedisStep {
    let what = what.into();
    move |source| RedisStep { what, source }
}

/// The logical databases that hold keys, from the text of `INFO keyspace`
/// (`db3:keys=2,expires=1,avg_ttl=0`).
///
/// # Errors
/// A line starting with `db` whose number does not parse: it would otherwise be skipped and
/// its keys silently left out.
pub(crate) fn keyspace_dbs(info: &str) -> Result<Vec<u32>, String> {
    let mut dbs = Vec::new();
    for line in info.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("db") else {
            continue;
        };
        let number = rest.split(':').next().unwrap_or_default();
        dbs.push(
            number
                .parse()
                .map_err(|_| format!("unexpected INFO keyspace line {line:?}"))?,
        );
    }
    dbs.sort_unstable();
    dbs.dedup();
    Ok(dbs)
}

/// The logical databases of the server behind `conn` that hold keys.
pub(crate) async fn databases(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<Vec<u32>, RedisStep> {
    let keyspace: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(conn)
        .await
        .map_err(step("read INFO keyspace"))?;
    keyspace_dbs(&keyspace).map_err(|detail| RedisStep {
        what: "read INFO keyspace".to_owned(),
        source: redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unparsable INFO keyspace",
            detail,
        )),
    })
}

/// Selects `db` and returns its keys, each once: `SCAN` may return a key several times (when
/// the table is rehashed while it runs), and a key counted twice would change the digest.
pub(crate) async fn scan_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    db: u32,
) -> Result<Vec<Vec<u8>>, RedisStep> {
    redis::cmd("SELECT")
        .arg(db)
        .query_async::<()>(conn)
        .await
        .map_err(step(format!("select db {db}")))?;
    let mut seen = std::collections::HashSet::new();
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(step(format!("scan the keys of db {db}")))?;
        keep_first_sightings(&mut seen, batch, &mut keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(keys)
}

/// Appends the keys of a `SCAN` batch not seen before, in the order SCAN returned them.
fn keep_first_sightings(
    seen: &mut std::collections::HashSet<Vec<u8>>,
    batch: Vec<Vec<u8>>,
    keys: &mut Vec<Vec<u8>>,
) {
    for key in batch {
        if seen.insert(key.clone()) {
            keys.push(key);
        }
    }
}

/// How a key is named in findings: `db3 session:abc` (hex for a key that is not UTF-8).
pub fn key_label(db: u32, key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => format!("db{db} {text}"),
        Err(_) => format!("db{db} 0x{}", hex::encode(key)),
    }
}

/// Key count and digest of the dataset behind `conn`: every logical database, every type, the
/// expiry times (see the module docs). Up to [`MAX_NAMED_KEYS`] keys also get a per-key
/// digest, so the Redis gate can name a missing or changed key.
///
/// # Errors
/// When a command fails, naming it and the database; "could not read" is never a result.
pub async fn dataset_facts(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<RedisFacts, BackupError> {
    let failed = |s: RedisStep| BackupError::redis(s.what)(s.source);
    let mut sum = [0u64; 4];
    let mut count = 0u64;
    let mut named = std::collections::BTreeMap::new();
    let mut too_many = false;
    for db in databases(conn).await.map_err(failed)? {
        for key in scan_keys(conn, db).await.map_err(failed)? {
            // A key that expired after SCAN listed it is no longer part of the dataset.
            let Some(hash) = key_hash(conn, db, &key).await? else {
                continue;
            };
            crate::facts::tables::add_256(&mut sum, &hash);
            count += 1;
            if named.len() < MAX_NAMED_KEYS {
                named.insert(key_label(db, &key), hex::encode(&hash));
            } else {
                too_many = true;
            }
        }
    }
    redis::cmd("SELECT")
        .arg(0)
        .query_async::<()>(conn)
        .await
        .map_err(BackupError::redis("select db 0"))?;
    let mut hasher = Sha256::new();
    hasher.update(b"rr-redis-v2\n");
    hasher.update(count.to_be_bytes());
    for limb in sum {
        hasher.update(limb.to_be_bytes());
    }
    if too_many {
        named.clear();
    }
    Ok(RedisFacts {
        key_count: count,
        digest: hex::encode(hasher.finalize()),
        keys: named,
    })
}

/// The hash of one key (see the module docs), or `None` when the key no longer exists.
async fn key_hash(
    conn: &mut redis::aio::MultiplexedConnection,
    db: u32,
    key: &[u8],
) -> Result<Option<Vec<u8>>, BackupError> {
    let label = key_label(db, key);
    let err = |what: &str| BackupError::redis(format!("read {what} of key {label}"));
    let kind: String = redis::cmd("TYPE")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(err("the type"))?;
    if kind == "none" {
        return Ok(None);
    }
    let expiry: i64 = redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(err("the expiry time (PEXPIRETIME, Redis 7.0 or newer)"))?;
    if expiry == -2 {
        return Ok(None);
    }
    let parts: Vec<Vec<u8>> = match kind.as_str() {
        "string" => vec![
            redis::cmd("GET")
                .arg(key)
                .query_async(conn)
                .await
                .map_err(err("the value"))?,
        ],
        "list" => redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await
            .map_err(err("the list"))?,
        "set" => {
            let mut members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(conn)
                .await
                .map_err(err("the set"))?;
            members.sort();
            members
        }
        "hash" => {
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(key)
                .query_async(conn)
                .await
                .map_err(err("the hash"))?;
            pairs.sort();
            pairs.into_iter().flat_map(|(f, v)| [f, v]).collect()
        }
        "zset" => redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await
            .map_err(err("the sorted set"))?,
        "stream" => stream_parts(conn, key)
            .await
            .map_err(|s| BackupError::redis(format!("read {} of key {label}", s.what))(s.source))?,
        // Module types: their serialisation is all there is to compare.
        _ => vec![
            redis::cmd("DUMP")
                .arg(key)
                .query_async(conn)
                .await
                .map_err(err("the serialisation"))?,
        ],
    };
    let mut hasher = Sha256::new();
    hasher.update(db.to_be_bytes());
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(key);
    field(kind.as_bytes());
    field(&expiry.max(-1).to_be_bytes());
    field(&(parts.len() as u64).to_be_bytes());
    for part in &parts {
        field(part);
    }
    Ok(Some(hasher.finalize().to_vec()))
}

/// A stream as comparable parts: every entry (id, field count, fields and values) in id order,
/// then every consumer group's name, last-delivered id and pending count. Not `DUMP`: its
/// bytes carry the server's RDB version, which differs between Redis releases.
async fn stream_parts(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &[u8],
) -> Result<Vec<Vec<u8>>, RedisStep> {
    let entries: Vec<(Vec<u8>, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .map_err(step("the stream entries"))?;
    let mut parts = Vec::new();
    for (id, fields) in entries {
        parts.push(id);
        parts.push((fields.len() as u64).to_be_bytes().to_vec());
        parts.extend(fields);
    }
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(step("the stream's consumer groups"))?;
    let mut groups: Vec<Vec<Vec<u8>>> = groups
        .iter()
        .map(|group| {
            ["name", "last-delivered-id", "pending"]
                .iter()
                .map(|field| match group.get(*field) {
                    Some(redis::Value::BulkString(bytes)) => bytes.clone(),
                    Some(redis::Value::Int(n)) => n.to_string().into_bytes(),
                    Some(redis::Value::SimpleString(s)) => s.clone().into_bytes(),
                    other => format!("{field}={other:?}").into_bytes(),
                })
                .collect()
        })
        .collect();
    groups.sort();
    for group in groups {
        parts.push(b"group".to_vec());
        parts.extend(group);
    }
    Ok(parts)
}

/// The RDB path of a backup directory, when it holds one.
pub(crate) fn rdb_path(dir: &Path, manifest: &RedisManifest) -> PathBuf {
    dir.join(&manifest.rdb)
}

impl From<&RedisManifest> for RedisFacts {
    /// What the backup recorded of its RDB.
    fn from(m: &RedisManifest) -> Self {
        Self {
            key_count: m.keys,
            digest: m.digest.clone(),
            keys: std::collections::BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_database_in_info_keyspace_is_read() {
        let info = "# Keyspace\r\ndb0:keys=6,expires=1,avg_ttl=0\r\n\
                    db15:keys=1,expires=1,avg_ttl=0\r\ndb3:keys=21,expires=20,avg_ttl=3599\r\n";
        assert_eq!(keyspace_dbs(info), Ok(vec![0, 3, 15]));
        assert_eq!(keyspace_dbs("# Keyspace\r\n"), Ok(vec![]));
        // A line it cannot read is an error, never a database silently left out.
        assert!(
            keyspace_dbs("dbx:keys=1")
                .unwrap_err()
                .contains("dbx:keys=1")
        );
    }

    #[test]
    fn a_key_scan_returns_twice_is_kept_once() {
        let mut seen = std::collections::HashSet::new();
        let mut keys = Vec::new();
        // SCAN's guarantee: every key at least once; a rehash may return some again.
        for batch in [vec!["a", "b"], vec!["b", "c"], vec!["a"]] {
            let batch = batch.into_iter().map(|k| k.as_bytes().to_vec()).collect();
            keep_first_sightings(&mut seen, batch, &mut keys);
        }
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn keys_are_named_with_their_database() {
        assert_eq!(key_label(3, b"session:1"), "db3 session:1");
        assert_eq!(key_label(0, &[0xff, 0x00]), "db0 0xff00");
    }
}
