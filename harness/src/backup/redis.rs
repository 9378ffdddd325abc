//! The Redis part of a backup: an RDB snapshot, and the key count and digest of exactly what
//! that RDB holds.
//!
//! The counts are not read from the live server (which keeps changing): the RDB is loaded into
//! a private, socket-only `redis-server` on this machine and read there. `verify` does the
//! same, so the two sides are computed by one definition.
//!
//! # The digest
//! For every key of every database: SHA-256 over `db (u32 BE)`, then the key, the type name
//! and the value, each as a length-prefixed (u64 BE) byte string, the value canonicalised by
//! type: string as is; list in order; set members sorted; hash fields sorted with their values;
//! sorted set in rank order with scores as Redis prints them; any other type (streams, module
//! types) as its `DUMP` serialisation. Expiry times are not part of it (they move). The
//! per-key hashes are summed modulo 2^256 (order-independent, as for tables without a primary
//! key) and the digest is `SHA-256("rr-redis-v1\n" || key count (u64 BE) || sum)`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BackupError;
use super::exec::PodRef;
use super::files::{ToolRun, create_private_dir, tail};
use super::postgres::in_pod_with_password;
use crate::pg::Secret;
use crate::verify::RedisFacts;

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
            run.to_file(&out).await?;
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

/// Loads an RDB file into a private scratch `redis-server` (Unix socket only, no TCP) and
/// reads its key count and digest (as [`crate::verify::RedisFacts`], for the Redis gate).
///
/// # Errors
/// When redis-server is missing, refuses the file (corrupt RDB), or does not start in time.
pub async fn rdb_facts(rdb: &Path) -> Result<RedisFacts, BackupError> {
    let scratch = crate::keep::ScratchDir::new("harness-redis-", "scratch Redis").map_err(
        BackupError::io("create a scratch directory in", std::env::temp_dir()),
    )?;
    let data = scratch.path().join("data");
    create_private_dir(&data)?;
    std::fs::copy(rdb, data.join("dump.rdb")).map_err(BackupError::io("copy", rdb))?;
    let socket = scratch.path().join("redis.sock");
    let server = which::which("redis-server").map_err(|_| BackupError::Spawn {
        tool: "redis-server".to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "redis-server not on PATH (apt-get install redis-server)",
        ),
    })?;
    let log = scratch.path().join("redis.log");
    use crate::process::GuardedSpawn;
    // Its own process group, killed with us even on SIGKILL (crate::process).
    let mut child = crate::process::tokio_command(&server)
        .args([
            "--port",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dbfilename",
            "dump.rdb",
            "--dir",
        ])
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
        .map_err(|source| BackupError::Spawn {
            tool: "redis-server".to_owned(),
            source,
        })?;
    let result = async {
        let url = format!("redis+unix://{}", socket.display());
        let client = redis::Client::open(url.as_str())
            .map_err(BackupError::redis("open the scratch redis"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut conn = loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(BackupError::NotReady {
                    what: format!("redis-server loading {}", rdb.display()),
                    seconds: 0,
                    detail: format!("exited ({status}): {}", tail(&log, 5)),
                });
            }
            if socket.exists()
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                break conn;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(BackupError::NotReady {
                    what: "scratch redis-server".to_owned(),
                    seconds: 60,
                    detail: tail(&log, 5),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        dataset_facts(&mut conn).await
    }
    .await;
    let _ = child.kill().await;
    result
}

/// Key count and digest of the dataset behind `conn` (all databases).
///
/// # Errors
/// When a command fails.
pub async fn dataset_facts(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<RedisFacts, BackupError> {
    let keyspace: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(conn)
        .await
        .map_err(BackupError::redis("read INFO keyspace"))?;
    let dbs: Vec<u32> = keyspace
        .lines()
        .filter_map(|l| l.strip_prefix("db")?.split(':').next()?.parse().ok())
        .collect();
    let mut sum = [0u64; 4];
    let mut keys = 0u64;
    for db in dbs {
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(conn)
            .await
            .map_err(BackupError::redis(format!("select db {db}")))?;
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await
                .map_err(BackupError::redis("scan keys"))?;
            for key in batch {
                let hash = key_hash(conn, db, &key).await?;
                crate::facts::tables::add_256(&mut sum, &hash);
                keys += 1;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    redis::cmd("SELECT")
        .arg(0)
        .query_async::<()>(conn)
        .await
        .map_err(BackupError::redis("select db 0"))?;
    let mut hasher = Sha256::new();
    hasher.update(b"rr-redis-v1\n");
    hasher.update(keys.to_be_bytes());
    for limb in sum {
        hasher.update(limb.to_be_bytes());
    }
    Ok(RedisFacts {
        key_count: keys,
        digest: hex::encode(hasher.finalize()),
        keys: Default::default(),
    })
}

async fn key_hash(
    conn: &mut redis::aio::MultiplexedConnection,
    db: u32,
    key: &[u8],
) -> Result<Vec<u8>, BackupError> {
    let err = |what: &str| {
        BackupError::redis(format!(
            "read {what} of key {}",
            String::from_utf8_lossy(key)
        ))
    };
    let kind: String = redis::cmd("TYPE")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(err("the type"))?;
    let mut hasher = Sha256::new();
    hasher.update(db.to_be_bytes());
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(key);
    field(kind.as_bytes());
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
        "none" => vec![],
        _ => vec![
            redis::cmd("DUMP")
                .arg(key)
                .query_async(conn)
                .await
                .map_err(err("the serialisation"))?,
        ],
    };
    field(&(parts.len() as u64).to_be_bytes());
    for part in &parts {
        field(part);
    }
    Ok(hasher.finalize().to_vec())
}

/// The RDB path of a backup directory, when it holds one.
pub(crate) fn rdb_path(dir: &Path, manifest: &RedisManifest) -> PathBuf {
    dir.join(&manifest.rdb)
}
