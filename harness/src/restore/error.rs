//! Errors of the restore engine: why a restore could not run, named with where it happened.
//!
//! A refusal (a non-empty target without `force`) is an error too: nothing was changed.

use std::path::PathBuf;

use crate::pg::PgError;

/// Why a restore could not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The archive or SQL file cannot be read.
    #[error("cannot read backup file {}", path.display())]
    ArchiveUnreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The directory is not a readable backup.
    #[error("{} is not a usable backup: {detail}", path.display())]
    NotABackup {
        /// The directory.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },

    /// The backup failed a check that comes before anything is changed (the same checks as
    /// `rehearsal verify`: a completed backup, the manifest's own checksum, the size and
    /// SHA-256 of every file the restore reads, the archive's members); nothing was changed.
    #[error("refusing to restore from {}: {}; nothing was changed", path.display(), reasons.join("; "))]
    Rejected {
        /// The backup (directory or archive).
        path: PathBuf,
        /// Every check that did not hold, as `check: expected X, found Y`.
        reasons: Vec<String>,
    },

    /// A tool ran past its deadline and was stopped.
    #[error("{tool} did not finish {what} within {seconds} s and was stopped")]
    TimedOut {
        /// The tool.
        tool: String,
        /// What it was doing (`restoring /path/titanium.dump`).
        what: String,
        /// The deadline.
        seconds: u64,
    },

    /// The load failed after the target's objects were dropped: the target is left marked
    /// "restoring" and holds only part of the backup.
    #[error(
        "{target} is half restored: its objects were dropped and the load failed; it is marked \
         `restoring {backup_id}` and holds only part of the backup. Run the same restore again \
         (no --force needed) once the cause is fixed, or roll back with option 1 of the runbook"
    )]
    HalfRestored {
        /// host:port/dbname.
        target: String,
        /// The backup being restored.
        backup_id: String,
        /// Why the load failed.
        #[source]
        source: Box<RestoreError>,
    },

    /// The load ran in one transaction and failed: it was rolled back, the target is as it was.
    #[error("the restore into {target} failed and was rolled back: nothing was changed")]
    RolledBack {
        /// host:port/dbname.
        target: String,
        /// Why the load failed.
        #[source]
        source: Box<RestoreError>,
    },

    /// The archive or SQL file is not what it claims to be; nothing was changed.
    #[error("{} is not a usable {format}: {detail}; nothing was changed", path.display())]
    BadArchive {
        /// The file.
        path: PathBuf,
        /// `custom archive` or `plain SQL dump`.
        format: &'static str,
        /// What was wrong.
        detail: String,
    },

    /// The target database holds data and `force` was not given; nothing was changed.
    #[error(
        "refusing to restore over {target}: it is not empty ({detail}); restore into an empty database, \
         or pass --force to replace its contents"
    )]
    NotEmpty {
        /// host:port/dbname.
        target: String,
        /// What it holds (tables with rows, or an earlier restore).
        detail: String,
    },

    /// A connection or a query failed.
    #[error("postgres: {what}")]
    Postgres {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: PgError,
    },

    /// A restore tool could not be started or waited for.
    #[error("could not run {tool}")]
    Spawn {
        /// The tool.
        tool: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A table's rows could not be loaded from the archive as they were read.
    #[error("loading {entry}: {detail}")]
    DataLoad {
        /// The archive entry (`TABLE DATA public posts postgres`).
        entry: String,
        /// What went wrong.
        detail: String,
    },

    /// A restore tool (pg_restore, psql) ran and failed.
    #[error("{tool} failed ({status}) restoring {}: {stderr}", path.display())]
    Tool {
        /// The tool.
        tool: String,
        /// The archive.
        path: PathBuf,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },

    /// Redis refused or failed while its data was restored.
    #[error("redis: {what}")]
    Redis {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: redis::RedisError,
    },

    /// The scratch redis-server that reads an RDB did not start or load it.
    #[error("redis-server could not load {}: {detail}", path.display())]
    RdbUnreadable {
        /// The RDB file.
        path: PathBuf,
        /// What happened.
        detail: String,
    },

    /// The Kubernetes API refused or failed.
    #[error("kubernetes: {what}")]
    Kube {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },

    /// A backed-up object cannot be applied as it is.
    #[error("backed-up object {object} is invalid: {detail}")]
    InvalidObject {
        /// What is known of it (kind and name).
        object: String,
        /// What is wrong.
        detail: String,
    },

    /// Something did not become ready before its deadline.
    #[error("{what} not ready after {seconds} s: {detail}")]
    NotReady {
        /// What was waited for.
        what: String,
        /// The deadline.
        seconds: u64,
        /// Why, as far as the cluster tells (conditions, events, last log lines).
        detail: String,
    },

    /// A data-restore step (database, Redis) supplied by the caller failed.
    #[error("{step} failed")]
    Step {
        /// The step.
        step: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl RestoreError {
    pub(crate) fn pg(what: impl Into<String>) -> impl FnOnce(PgError) -> Self {
        let what = what.into();
        move |source| RestoreError::Postgres { what, source }
    }

    pub(crate) fn query(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let what = what.into();
        move |source| RestoreError::Postgres {
            what: what.clone(),
            source: PgError::Query { what, source },
        }
    }

    pub(crate) fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| RestoreError::Kube { what, source }
    }
}
