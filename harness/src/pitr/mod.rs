//! Point-in-time recovery: a WAL archive that survives the cluster, base backups, checks of the
//! archive, a recovery plan that refuses what the archive cannot prove, and recovery to a
//! moment, an LSN or the archive's end.
//!
//! An archive is one directory (the backup's off-site directory, `pitr/`), files 0600 and
//! directories 0700:
//!
//! ```text
//! PITR.json        the base backup: start/stop LSN, timeline, WAL range, files with SHA-256
//! SEGMENTS.json    every completed WAL segment with its size and SHA-256 (the receiver's)
//! base/            pg_basebackup's tar output (base.tar, pg_wal.tar, backup_manifest)
//! wal/             pg_receivewal's directory
//! ```
//!
//! [`WalReceiver`] runs `pg_receivewal` from outside the pod (through whatever reaches the
//! server: a port-forward in a cluster) on a physical replication slot, so that no WAL is
//! recycled before it is received, and it returns only once the server lists it as streaming.
//! [`base_backup`] runs `pg_basebackup`. [`check_archive`] is a verdict on the archive (gaps,
//! checksums, timelines); [`plan`] reads the WAL with `pg_waldump` and refuses a target the
//! archive does not cover, naming the range or the missing segment; [`recover`] starts a
//! PostgreSQL server from the base backup with `restore_command` and the recovery target, and
//! returns it once promoted. [`verify_archive`] replays the archive into scratch servers to
//! the base backup's end and to the archive's end, with counts and `pg_amcheck` at both.

mod base;
mod check;
mod recover;
mod verify;
mod wal;

use std::path::{Path, PathBuf};

pub use base::base_backup;
pub use check::{ArchiveCheck, ArchiveFinding, ArchiveRange, RecoveryPlan, check_archive, plan};
pub use recover::{Recovered, recover};
pub use verify::{ArchiveVerification, VerifiedPoint, verify_archive};
pub use wal::{Lsn, ReceiverOptions, SegmentName, WalReceiver};

/// The base backup's manifest file in an archive.
pub const MANIFEST: &str = "PITR.json";
/// The segment manifest file in an archive.
pub const SEGMENTS: &str = "SEGMENTS.json";
/// The WAL directory in an archive.
pub const WAL_DIR: &str = "wal";
/// The base backup directory in an archive.
pub const BASE_DIR: &str = "base";

/// `PITR.json`: the base backup of an archive.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PitrManifest {
    /// Format version (1).
    pub format: u32,
    /// The base backup.
    pub base: BaseBackup,
}

/// One base backup, as `pg_basebackup` reported it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseBackup {
    /// The superuser the backup was taken as (recovery connects as it).
    pub user: String,
    /// `server_version` of the source.
    pub server_version: String,
    /// WAL start point (`X/Y`).
    pub start_lsn: String,
    /// WAL end point: recovery is consistent from here on.
    pub stop_lsn: String,
    /// Timeline of the backup.
    pub timeline: u32,
    /// The first and last WAL segment the backup needs.
    pub wal_start: String,
    /// The last WAL segment the backup needs.
    pub wal_end: String,
    /// Server clock (RFC 3339) before the backup started.
    pub started_at: String,
    /// Server clock after it ended: the earliest recovery target time.
    pub finished_at: String,
    /// The files under `base/`, with size and SHA-256.
    pub files: Vec<FileSum>,
}

/// A file with its size and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSum {
    /// Path relative to its directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// `SEGMENTS.json`: every WAL segment the receiver completed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentManifest {
    /// `wal_segment_size` of the source, bytes.
    pub segment_size: u64,
    /// The replication slot streamed from.
    pub slot: String,
    /// Segments in name order.
    pub segments: Vec<SegmentRecord>,
    /// When the receiver stopped and its last, partial segment was sealed (RFC 3339).
    pub sealed_at: Option<String>,
}

/// One archived segment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentRecord {
    /// Its WAL file name (`TTTTTTTTXXXXXXXXYYYYYYYY`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// The receiver's last segment, sealed when it stopped: valid WAL ends inside it.
    pub partial: bool,
}

/// What to recover to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every transaction committed at or before this moment, none after.
    Time(chrono::DateTime<chrono::Utc>),
    /// Up to this LSN.
    Lsn(Lsn),
    /// Everything the archive holds.
    Latest,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Time(t) => write!(f, "time {}", t.to_rfc3339()),
            Target::Lsn(l) => write!(f, "LSN {l}"),
            Target::Latest => f.write_str("the end of the archive"),
        }
    }
}

/// Errors of point-in-time recovery.
#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    /// A file system operation failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A query failed.
    #[error("could not {what}")]
    Query {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server could not be reached or a PostgreSQL tool is missing.
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    /// A tool failed.
    #[error("{tool} failed ({status}): {output}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// The end of its output.
        output: String,
    },
    /// A wait ran past its deadline.
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The deadline.
        seconds: u64,
    },
    /// A manifest could not be read or written.
    #[error("{} is not a valid manifest: {message}", path.display())]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The archive has defects; nothing was recovered.
    #[error("the archive {} cannot be used: {}", archive.display(), findings.join("; "))]
    Defective {
        /// The archive.
        archive: PathBuf,
        /// Each defect, naming its segment.
        findings: Vec<String>,
    },
    /// The target is outside what the archive covers; nothing was recovered.
    #[error("{target} is not covered by the archive: {range}")]
    NotCovered {
        /// The target.
        target: String,
        /// What the archive covers.
        range: String,
    },
    /// Recovery did not end in a promoted server.
    #[error("recovery to {target} failed: {message}")]
    Recovery {
        /// The target.
        target: String,
        /// Why, with the server log's end.
        message: String,
    },
}

pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PitrError {
    let path = path.to_path_buf();
    move |source| PitrError::Io {
        action,
        path,
        source,
    }
}

/// Reads a JSON manifest.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, PitrError> {
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| PitrError::Manifest {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes a JSON manifest, 0600, atomically (a temporary file renamed over it).
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), PitrError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| PitrError::Manifest {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    crate::keep::write_private(&tmp, &text).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename to", path))
}

/// SHA-256 and size of a file.
pub(crate) fn sha256_file(path: &Path) -> Result<(u64, String), PitrError> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(io("open", path))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Creates a directory (and parents) and makes it 0700.
pub(crate) fn private_dir(path: &Path) -> Result<(), PitrError> {
    std::fs::create_dir_all(path).map_err(io("create", path))?;
    crate::keep::set_private_dir(path).map_err(io("chmod", path))
}

/// The server's clock, RFC 3339.
pub(crate) async fn server_now(client: &tokio_postgres::Client) -> Result<String, PitrError> {
    let row = client
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .map_err(|source| PitrError::Query {
            what: "read the server clock".into(),
            source,
        })?;
    Ok(row.get(0))
}

pub(crate) use crate::process::tail;
