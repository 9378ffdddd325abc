//! The restore's inputs read from a backup directory: the archive to load, the facts to compare
//! with, the Kubernetes objects and the recorded replica counts.
//!
//! Everything else in `restore` takes these as explicit values; this is the one place that
//! knows the backup's layout (through `backup::Manifest`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::database::{CsvArchive, CsvFile};
use super::{DbArchive, DbRestoreInput, RestoreError};
use crate::backup::Manifest;
use crate::facts::{DigestVersion, SequenceFacts, TableFacts};

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
    /// The definition those digests follow: read the restored database with
    /// [`crate::facts::table_facts_as`] and this to compare.
    pub digest_version: DigestVersion,
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

/// Which of a backup's forms of the database a restore loads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestoreMethod {
    /// The custom archive, with `pg_restore -j` (the default).
    #[default]
    Custom,
    /// The plain SQL file, with psql in one transaction (the runbook's "방법 A").
    Sql,
    /// The schema-only SQL and the per-table CSV files, with psql's `\copy` in one
    /// transaction (the runbook's "방법 C").
    Csv,
}

impl RestoreMethod {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreMethod::Custom => "custom",
            RestoreMethod::Sql => "sql",
            RestoreMethod::Csv => "csv",
        }
    }
}

/// The files of the backup a restore reads, relative to its directory.
fn files_read(manifest: &Manifest, method: RestoreMethod) -> Vec<String> {
    let mut read = Vec::new();
    if let Some(pg) = &manifest.postgres {
        match method {
            RestoreMethod::Custom => read.push(pg.custom_dump.clone()),
            RestoreMethod::Sql => read.push(pg.plain.clone()),
            RestoreMethod::Csv => {
                read.push(pg.schema_only.clone());
                read.extend(pg.csv.iter().map(|t| t.file.clone()));
            }
        }
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

impl DbRestoreInput {
    /// The custom archive of the backup in `dir` that `manifest` describes, with the digest
    /// the manifest recorded for it; `None` when the backup has no PostgreSQL part.
    pub fn custom_of(dir: &Path, manifest: &Manifest) -> Option<Self> {
        let pg = manifest.postgres.as_ref()?;
        Some(Self {
            archive: DbArchive::Custom(dir.join(&pg.custom_dump)),
            backup_id: manifest.name.clone(),
            recorded_sha256: manifest.sha256_of(&pg.custom_dump).map(str::to_owned),
        })
    }
}

impl RestoreInputs {
    /// Reads the backup in `dir`, after the checks `rehearsal verify` makes before it restores
    /// anything (shared code): a completed backup (not `.partial`, no `FAILED.txt`), the
    /// manifest equal to its recorded SHA-256, and the size and SHA-256 of every file this
    /// restore reads (the database archive, the Kubernetes objects, the Redis RDB) equal to
    /// the manifest's. `method` says which form of the database is loaded; a backup without
    /// CSV files (made before they were written) is refused for [`RestoreMethod::Csv`].
    ///
    /// # Errors
    /// [`RestoreError::Rejected`] naming every check that did not hold (nothing was read
    /// beyond the checks); [`RestoreError::NotABackup`] when a verified file cannot be parsed.
    pub async fn from_backup(dir: &Path, method: RestoreMethod) -> Result<Self, RestoreError> {
        let mut findings = Vec::new();
        let manifest = crate::backup::check_manifest(dir, &mut findings);
        let Some(manifest) = manifest.filter(|_| findings.is_empty()) else {
            return Err(rejected(dir, &findings));
        };
        if method == RestoreMethod::Csv
            && let Some(pg) = &manifest.postgres
            && pg.csv.is_empty()
            && !pg.tables.is_empty()
        {
            return Err(RestoreError::Rejected {
                path: dir.to_path_buf(),
                reasons: vec![
                    "the backup holds no CSV files (made before backups wrote them); \
                     restore it with --method custom or --method sql"
                        .to_owned(),
                ],
            });
        }
        let read = files_read(&manifest, method);
        crate::backup::check_files(dir, &manifest, Some(&read), &mut findings)
            .await
            .map_err(|err| not_a_backup(dir, err.to_string()))?;
        if !findings.is_empty() {
            return Err(rejected(dir, &findings));
        }
        Self::from_manifest(dir, &manifest, method, read)
    }

    fn from_manifest(
        dir: &Path,
        manifest: &Manifest,
        method: RestoreMethod,
        verified: Vec<String>,
    ) -> Result<Self, RestoreError> {
        let database = manifest.postgres.as_ref().map(|pg| DbRestoreInput {
            archive: match method {
                RestoreMethod::Custom => DbArchive::Custom(dir.join(&pg.custom_dump)),
                RestoreMethod::Sql => DbArchive::PlainSql(dir.join(&pg.plain)),
                RestoreMethod::Csv => DbArchive::Csv(CsvArchive {
                    schema: dir.join(&pg.schema_only),
                    tables: pg
                        .csv
                        .iter()
                        .map(|t| CsvFile {
                            schema: t.schema.clone(),
                            name: t.name.clone(),
                            path: dir.join(&t.file),
                            columns: t.columns.clone(),
                        })
                        .collect(),
                    sequences: pg.sequences.clone(),
                }),
            },
            backup_id: manifest.name.clone(),
            recorded_sha256: match method {
                RestoreMethod::Custom => manifest.sha256_of(&pg.custom_dump).map(str::to_owned),
                RestoreMethod::Sql | RestoreMethod::Csv => None,
            },
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
            digest_version: manifest
                .postgres
                .as_ref()
                .map_or(DigestVersion::CURRENT, |pg| pg.digest_version),
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
