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
}

fn not_a_backup(dir: &Path, detail: impl Into<String>) -> RestoreError {
    RestoreError::NotABackup {
        path: dir.to_path_buf(),
        detail: detail.into(),
    }
}

impl RestoreInputs {
    /// Reads the backup in `dir`. With `from_sql`, the database is restored from the plain
    /// SQL file (the runbook's way) instead of the custom archive.
    ///
    /// # Errors
    /// [`RestoreError::NotABackup`] when the manifest or the cleaned object list cannot be read.
    pub fn from_backup(dir: &Path, from_sql: bool) -> Result<Self, RestoreError> {
        let manifest = Manifest::read(dir).map_err(|err| not_a_backup(dir, err.to_string()))?;
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
        })
    }
}
