//! The manifest: `MANIFEST.json` for machines (and `verify`), `BACKUP_MANIFEST.txt` in the
//! runbook's shape for people, and `MANIFEST.json.sha256` so an edited manifest is caught.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::BackupError;
use super::archive::ArchiveFeed;
use super::files::{sha256_file, write_private};
use super::kubernetes::{KubeManifest, QuiesceRecord};
use super::postgres::PgManifest;
use super::redis::RedisManifest;
use super::terraform::TerraformManifest;

/// File name of the machine-readable manifest.
pub const MANIFEST_JSON: &str = "MANIFEST.json";
/// File name of the human manifest.
pub const MANIFEST_TXT: &str = "BACKUP_MANIFEST.txt";
/// File holding the hex SHA-256 of `MANIFEST.json`.
pub const MANIFEST_SHA256: &str = "MANIFEST.json.sha256";
/// The manifest format this code writes and reads.
pub(crate) const FORMAT: u32 = 1;

/// One file of the backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the backup directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// How long one step took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// Step name.
    pub name: String,
    /// When it started, in seconds after the backup started.
    pub started_after_seconds: f64,
    /// Its duration.
    pub seconds: f64,
}

/// Everything a backup holds and what it was taken from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// Backup name (the directory name).
    pub name: String,
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// End of the data collection, RFC 3339 UTC.
    pub finished_at: String,
    /// Cluster label.
    pub cluster: Option<String>,
    /// Namespace, when one was backed up.
    pub namespace: Option<String>,
    /// The PostgreSQL part.
    pub postgres: Option<PgManifest>,
    /// The Redis part.
    pub redis: Option<RedisManifest>,
    /// The Kubernetes part.
    pub kubernetes: Option<KubeManifest>,
    /// Replicas scaled to zero before the snapshot.
    pub quiesce: Option<QuiesceRecord>,
    /// The Terraform part.
    pub terraform: Option<TerraformManifest>,
    /// Every file except `MANIFEST.json` and its checksum, sorted by path.
    pub files: Vec<FileEntry>,
    /// Tool name to version.
    pub tools: BTreeMap<String, String>,
    /// Step durations.
    pub steps: Vec<StepTiming>,
}

impl Manifest {
    /// Reads and checks `MANIFEST.json` of a backup directory.
    ///
    /// # Errors
    /// [`BackupError::NotABackup`] when it is missing, unreadable or of another format.
    pub fn read(dir: &Path) -> Result<Self, BackupError> {
        let path = dir.join(MANIFEST_JSON);
        let bytes = std::fs::read(&path).map_err(|err| BackupError::NotABackup {
            path: dir.to_path_buf(),
            detail: format!("{MANIFEST_JSON}: {err}"),
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|err| BackupError::NotABackup {
                path: dir.to_path_buf(),
                detail: format!("{MANIFEST_JSON}: {err}"),
            })?;
        if manifest.format != FORMAT {
            return Err(BackupError::NotABackup {
                path: dir.to_path_buf(),
                detail: format!(
                    "manifest format {} (this build reads {FORMAT})",
                    manifest.format
                ),
            });
        }
        Ok(manifest)
    }

    /// The SHA-256 the manifest records for the file at `path` (relative to the backup's
    /// directory), if it lists it.
    pub fn sha256_of(&self, path: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.sha256.as_str())
    }

    /// The runbook's `BACKUP_MANIFEST.txt`.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "=== Backup Manifest ===");
        let _ = writeln!(s, "Backup: {}", self.name);
        let _ = writeln!(s, "Started: {}", self.started_at);
        let _ = writeln!(s, "Finished: {}", self.finished_at);
        let _ = writeln!(s, "Cluster: {}", self.cluster.as_deref().unwrap_or("-"));
        let _ = writeln!(s, "Namespace: {}", self.namespace.as_deref().unwrap_or("-"));
        if let Some(pg) = &self.postgres {
            let _ = writeln!(s, "\n=== Database Info ===");
            let _ = writeln!(s, "Database: {}", pg.database);
            let _ = writeln!(s, "Source: {}", pg.source);
            let _ = writeln!(s, "PostgreSQL Version: {}", pg.server_version);
            let _ = writeln!(s, "Snapshot: {} at {}", pg.snapshot_id, pg.snapshot_at);
            let _ = writeln!(s, "Plain SQL: {}", pg.derived_from);
            let _ = writeln!(s, "\n=== Data Statistics (exact, in the snapshot) ===");
            let _ = writeln!(s, "Digest definition: {}", pg.digest_version.name());
            for t in &pg.tables {
                let order = if t.ordered_by.is_empty() {
                    "unordered".to_owned()
                } else {
                    format!("by {}", t.ordered_by.join(", "))
                };
                let _ = writeln!(
                    s,
                    "{}.{}: {} rows, sha256 {} ({order})",
                    t.schema, t.name, t.rows, t.digest
                );
            }
        }
        if let Some(r) = &self.redis {
            let _ = writeln!(
                s,
                "\n=== Redis ===\nSource: {}\nKeys: {}\nDigest: {}",
                r.source, r.keys, r.digest
            );
        }
        if let Some(k) = &self.kubernetes {
            let _ = writeln!(s, "\n=== Kubernetes ({}) ===", k.namespace);
            for (kind, n) in &k.counts {
                let _ = writeln!(s, "{kind}: {n}");
            }
        }
        if let Some(q) = &self.quiesce {
            let _ = writeln!(
                s,
                "\n=== Quiesce ===\nWrites stopped at: {}",
                q.writes_stopped_at
            );
            if let Some(server) = &q.writes_stopped_server_at {
                let _ = writeln!(s, "Writes stopped at (server clock): {server}");
            }
            for (d, n) in &q.replicas {
                let _ = writeln!(s, "{d}: {n} replicas (scaled to 0)");
            }
        }
        if let Some(t) = &self.terraform {
            let _ = writeln!(
                s,
                "\n=== Terraform ===\nDirectory: {}\nResources: {}",
                t.directory, t.resource_count
            );
        }
        let _ = writeln!(s, "\n=== Backup Files ===");
        for f in &self.files {
            let _ = writeln!(s, "{:>14}  {}  {}", f.size, f.sha256, f.path);
        }
        let _ = writeln!(s, "\n=== Tools ===");
        for (tool, version) in &self.tools {
            let _ = writeln!(s, "{tool}: {version}");
        }
        let _ = writeln!(s, "\n=== Steps ===");
        for step in &self.steps {
            let _ = writeln!(s, "{:>9.3} s  {}", step.seconds, step.name);
        }
        s
    }
}

/// Every regular file under `dir` except the manifest and its checksum, relative and sorted.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<String>, BackupError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).map_err(BackupError::io("list", &current))? {
            let entry = entry.map_err(BackupError::io("list", &current))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(BackupError::io("stat", &path))?;
            if kind.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .into_owned();
                if rel != MANIFEST_JSON && rel != MANIFEST_SHA256 {
                    out.push(rel);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Hashes every file (taking the hashes the archive computed while reading them, when there
/// is an archive), writes `BACKUP_MANIFEST.txt` (listed), then `MANIFEST.json` and its checksum.
pub(crate) async fn write_manifest(
    dir: &Path,
    manifest: &mut Manifest,
    feed: Option<&ArchiveFeed>,
) -> Result<(), BackupError> {
    let rels: Vec<String> = list_files(dir)?
        .into_iter()
        .filter(|r| r != MANIFEST_TXT)
        .collect();
    let mut known = super::archive::Hashes::new();
    if let Some(feed) = feed {
        let appended = feed.hashes().await;
        for rel in rels.iter().filter(|r| !appended.contains_key(*r)) {
            feed.add(rel);
        }
        known = feed.hashes().await;
    }
    let mut files = Vec::new();
    for rel in rels {
        let (size, sha256) = match known.remove(&rel) {
            Some(v) => v,
            None => sha256_file(&dir.join(&rel)).await?,
        };
        files.push(FileEntry {
            path: rel,
            size,
            sha256,
        });
    }
    manifest.files = files;
    // The text lists the files before itself; then it is hashed and listed in the JSON.
    let txt_path = dir.join(MANIFEST_TXT);
    write_private(&txt_path, manifest.human().as_bytes())?;
    let (size, sha256) = sha256_file(&txt_path).await?;
    manifest.files.push(FileEntry {
        path: MANIFEST_TXT.to_owned(),
        size,
        sha256,
    });
    manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
    let json = serde_json::to_vec_pretty(manifest).map_err(|source| BackupError::Json {
        what: "encode the manifest".to_owned(),
        source,
    })?;
    write_private(&dir.join(MANIFEST_JSON), &json)?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&json));
    write_private(
        &dir.join(MANIFEST_SHA256),
        format!("{digest}  {MANIFEST_JSON}\n").as_bytes(),
    )
}
