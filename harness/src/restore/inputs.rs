//! The restore's inputs read from a backup directory: the archive to load, the facts to compare
//! with, the Kubernetes objects and the recorded replica counts.
//!
//! Everything else in `restore` takes these as explicit values; this is the one place that
//! knows the backup's layout (through `backup::Manifest`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{DbArchive, DbRestoreInput, RestoreError};
use crate::backup::Manifest;
use crate::facts::{SequenceFacts, TableFacts};

/// What a backup directory gives a restore.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreInputs {
    /// The backup's directory.
    pub dir: PathBuf,
    /// The backup's name (recorded on the restored database and namespace).
    pub backup_id: String,
    /// The database archive, when the backup has one.
    pub database: Option<DbRestoreInput>,
    /// Row counts and digests recorded in the backup's snapshot.
    pub tables: Vec<TableFacts>,
    /// Sequences recorded with the dump.
    pub sequences: Vec<SequenceFacts>,
    /// The backed-up namespace.
    pub namespace: Option<String>,
    /// The cleaned Kubernetes objects.
    pub objects: Vec<Value>,
    /// Replica counts recorded by a quiesce.
    pub replicas: BTreeMap<String, i32>,
    /// The files whose size and SHA-256 were checked against the manifest before anything
    /// else was read, relative to `dir`.
    pub verified: Vec<String>,
}

/// The files of the backup a restore reads, relative to its directory.
fn files_read(manifest: &Manifest, from_sql: bool) -> Vec<String> {
    let mut read = Vec::new();
    if let Some(pg) = &manifest.postgres {
        read.push(if from_sql {
            pg.plain.clone()
        } else {
            pg.custom_dump.clone()
        });
    }
    if let Some(kube) = &manifest.kubernetes {
        read.push(kube.clean_json.clone());
    }
    if let Some(redis) = &manifest.redis {
        read.push(redis.rdb.clone());
    }
    read
}

fn rejected(dir: &Path, findings: &[crate::backup::Finding]) -> RestoreError {
    RestoreError::Rejected {
        path: dir.to_path_buf(),
        reasons: findings.iter().map(ToString::to_string).collect(),
    }
}

fn not_a_backup(dir: &Path, detail: impl Into<String>) -> RestoreError {
    RestoreError::NotABackup {
        path: dir.to_path_buf(),
        detail: detail.into(),
    }
}

impl RestoreInputs {
    /// Reads the backup in `dir`, after the checks `rehearsal verify` makes before it restores
    /// anything (shared code): a completed backup (not `.partial`, no `FAILED.txt`), the
    /// manifest equal to its recorded SHA-256, and the size and SHA-256 of every file this
    /// restore reads (the database archive, the Kubernetes objects, the Redis RDB) equal to
    /// the manifest's. With `from_sql`, the database is restored from the plain SQL file (the
    /// runbook's way) instead of the custom archive.
    ///
    /// # Errors
    /// [`RestoreError::Rejected`] naming every check that did not hold (nothing was read
    /// beyond the checks); [`RestoreError::NotABackup`] when a verified file cannot be parsed.
    pub async fn from_backup(dir: &Path, from_sql: bool) -> Result<Self, RestoreError> {
        let mut findings = Vec::new();
        let manifest = crate::backup::check_manifest(dir, &mut findings);
        let Some(manifest) = manifest.filter(|_| findings.is_empty()) else {
            return Err(rejected(dir, &findings));
        };
        let read = files_read(&manifest, from_sql);
        crate::backup::check_files(dir, &manifest, Some(&read), &mut findings)
            .await
            .map_err(|err| not_a_backup(dir, err.to_string()))?;
        if !findings.is_empty() {
            return Err(rejected(dir, &findings));
        }
        Self::from_manifest(dir, &manifest, from_sql, read)
    }

    fn from_manifest(
        dir: &Path,
        manifest: &Manifest,
        from_sql: bool,
        verified: Vec<String>,
    ) -> Result<Self, RestoreError> {
        let database = manifest.postgres.as_ref().map(|pg| DbRestoreInput {
            archive: if from_sql {
                DbArchive::PlainSql(dir.join(&pg.plain))
            } else {
                DbArchive::Custom(dir.join(&pg.custom_dump))
            },
            backup_id: manifest.name.clone(),
        });
        let objects = match &manifest.kubernetes {
            Some(kube) => {
                let path = dir.join(&kube.clean_json);
                let text = std::fs::read_to_string(&path)
                    .map_err(|err| not_a_backup(dir, format!("{}: {err}", kube.clean_json)))?;
                let list: Value = serde_json::from_str(&text)
                    .map_err(|err| not_a_backup(dir, format!("{}: {err}", kube.clean_json)))?;
                list.get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .ok_or_else(|| {
                        not_a_backup(
                            dir,
                            format!("{}: not a v1 List with items", kube.clean_json),
                        )
                    })?
            }
            None => Vec::new(),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            backup_id: manifest.name.clone(),
            database,
            tables: manifest
                .postgres
                .as_ref()
                .map(|pg| pg.tables.clone())
                .unwrap_or_default(),
            sequences: manifest
                .postgres
                .as_ref()
                .map(|pg| pg.sequences.clone())
                .unwrap_or_default(),
            namespace: manifest
                .namespace
                .clone()
                .or_else(|| manifest.kubernetes.as_ref().map(|k| k.namespace.clone())),
            objects,
            replicas: manifest
                .quiesce
                .as_ref()
                .map(|q| q.replicas.clone())
                .unwrap_or_default(),
            verified,
        })
    }
}
