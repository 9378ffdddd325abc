//! Backup engine: every artifact the runbook names, from one consistent snapshot.
//!
//! This is the runbook's Phase 1 and 2 (`backup-solid-cloud.sh`) as a library. [`backup`]
//! takes, as [`BackupOptions`] say:
//! - PostgreSQL ([`PgSource`]: direct, or through a pod with exec and port-forward): a session
//!   exports a snapshot and holds it; `pg_dump -Fc --snapshot` dumps in it; the sequences and
//!   the schema rendering are read in it by the same session; plain and schema-only SQL are
//!   dumped in the same snapshot beside it (or, with [`PlainFrom::Archive`], derived from the
//!   custom archive here), and the data-only, per-table and CSV files (a header row, parents
//!   first, [`CsvTable`]) are split out of the plain SQL in one pass, which also counts and
//!   digests every table's rows ([`crate::facts::tables`], `rows-v2`): no table is read beyond
//!   what the pg_dumps read. Roles come from `pg_dumpall --globals-only`.
//! - Redis ([`RedisSource`]): an RDB, and the key count and digest of exactly that RDB.
//! - Kubernetes ([`KubeSource`]): every namespaced resource found through discovery, raw and
//!   cleaned ([`clean`]); optionally the namespace's Deployments quiesced first.
//! - Terraform: `state pull`, `state list`, `output -json`.
//! - `MANIFEST.json`, `BACKUP_MANIFEST.txt`, a `.tar.gz` (optionally age-encrypted) written
//!   while the backup runs (each file goes in when complete, hashed in the same read), and
//!   checked off-site copies ([`OffsiteTarget`]).
//!
//! Everything is written under `<name>.partial` and renamed when complete; directories are
//! 0700 and files 0600; passwords reach child processes only through their environment (or,
//! in a pod, from the container's own environment). [`verify_backup`] is `rehearsal verify`.
//!
//! Invariants: only `files.rs` and `terraform.rs` start local processes (and `redis.rs` its
//! scratch redis-server); only `exec.rs` talks to pods; `clean.rs` does no I/O; no dump passes
//! through memory whole (tools write straight into files, exec output is streamed, the archive
//! and the split read in bounded pieces).

mod archive;
pub mod clean;
mod csv;
mod engine;
mod error;
mod exec;
mod files;
mod kubernetes;
mod manifest;
mod name;
mod offsite;
mod physical;
mod postgres;
mod redis;
mod split;
mod terraform;
mod verify;

use std::path::PathBuf;

pub use archive::{ArchiveInfo, DecryptionKey, EncryptionKey};
pub use csv::CsvTable;
pub use engine::{BackupReport, backup};
pub use error::BackupError;
pub use exec::PodRef;
pub(crate) use files::sha256_file;
pub use kubernetes::{
    KubeManifest, KubeSource, NamespaceObjects, QuiesceOptions, QuiesceRecord, list_namespace,
    quiesce, resume,
};
pub use manifest::{FileEntry, MANIFEST_JSON, MANIFEST_SHA256, MANIFEST_TXT, Manifest, StepTiming};
pub use name::check_name;
pub use offsite::{OffsiteCopy, OffsiteTarget, S3Target, copy_offsite};
pub use physical::{PHYSICAL_TAR, PhysicalBackup};
pub use postgres::{KubePostgres, PgManifest, PgSource};
pub use redis::{MAX_NAMED_KEYS, RedisManifest, RedisSource, dataset_facts, key_label, rdb_facts};
// The restore's RDB replay reads the keyspace exactly as the digest does.
pub(crate) use redis::{RedisStep, ScratchRedis, ScratchRedisError, databases, scan_keys};
pub use terraform::TerraformManifest;
pub use verify::{
    Finding, OpenedBackup, Restored, VerifyOptions, VerifyReport, open_backup, restore_into,
    verify_backup,
};
pub(crate) use verify::{check_files, check_manifest};

use crate::pg::PgTools;

/// How the plain, schema-only, data-only and per-table SQL files are made. Either way they hold
/// exactly the snapshot's data; the manifest says which was used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PlainFrom {
    /// With one `pg_dump --snapshot` per file, against the database, running beside the custom
    /// dump (two at a time). The default: the custom dump is bound by its compression, so the
    /// server has time to spare, and the backup ends when the custom dump does.
    #[default]
    Database,
    /// With `pg_restore -f` from the custom archive, on this machine, after the dump: the
    /// database is read once, for a longer backup. For a server that must not be read twice.
    Archive,
}

/// What to back up, and where to.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// The directory the backup directory (and archive) is created in.
    pub destination: PathBuf,
    /// Backup name; default `<database>-YYYYmmdd-HHMMSS`.
    pub name: Option<String>,
    /// A label for the manifest (`solid-cloud`, `sim`, a kube context).
    pub cluster: Option<String>,
    /// PostgreSQL.
    pub postgres: Option<PgSource>,
    /// Redis.
    pub redis: Option<RedisSource>,
    /// The namespace's resources.
    pub kubernetes: Option<KubeSource>,
    /// Scale the namespace's Deployments to zero first (needs `kubernetes`).
    pub quiesce: Option<QuiesceOptions>,
    /// A Terraform configuration directory.
    pub terraform_dir: Option<PathBuf>,
    /// How plain SQL is made.
    pub plain_from: PlainFrom,
    /// Local PostgreSQL tools for deriving files (pg_restore); discovered when `None`.
    pub local_tools: Option<PgTools>,
    /// Write `<name>.tar.gz` (or `.tar.gz.age`).
    pub archive: bool,
    /// gzip level of the archive, 0-9.
    pub compression_level: u32,
    /// Encrypt the archive with age.
    pub encryption: Option<EncryptionKey>,
    /// Copy the archive to these targets.
    pub offsite: Vec<OffsiteTarget>,
    /// Also take a physical copy of the PostgreSQL server (`pg_basebackup`, runbook 1.2B done
    /// consistently); needs `postgres` and `quiesce`, so that the copy holds the data the
    /// logical snapshot recorded.
    pub physical: bool,
}

impl BackupOptions {
    /// A backup into `destination` of nothing yet: set the parts to take.
    pub fn new(destination: impl Into<PathBuf>) -> Self {
        Self {
            destination: destination.into(),
            name: None,
            cluster: None,
            postgres: None,
            redis: None,
            kubernetes: None,
            quiesce: None,
            terraform_dir: None,
            plain_from: PlainFrom::Database,
            local_tools: None,
            archive: true,
            compression_level: 1,
            encryption: None,
            offsite: Vec::new(),
            physical: false,
        }
    }
}
