//! Database restore: idempotent, refusing to overwrite data unless forced, with a dry run.
//!
//! # How a restore stays idempotent
//! - The target's user objects (what an init script created, or an earlier partial restore
//!   left) are dropped first, in one transaction, then the backup is loaded: the result is the
//!   backup, not a merge, however often it runs.
//! - Before anything is dropped the database is marked `rebuild-rehearsal: restoring <id>`
//!   (its comment; pg_dump without `--create` never dumps it), and marked
//!   `rebuild-rehearsal: restored <id>` at the end. A target still marked "restoring" holds
//!   only what an interrupted restore wrote, so it is restored again without `force`; a target
//!   marked "restored" from the same backup is left alone unless `force` is given (running the
//!   whole restore again changes nothing); any other target holding rows is refused unless
//!   `force` is given.
//! - The plain-SQL path (`--method sql`, the runbook's way) runs the drops, the file and the
//!   final mark in one psql `--single-transaction`: an interrupted run changes nothing. The
//!   CSV path (`--method csv`, the runbook's "방법 C") does the same with the schema-only SQL,
//!   a `\copy ... CSV HEADER` per table (parents first) and the sequences' `setval`s.
//! - The custom archive, when it is a regular file, is restored in its sections, with each
//!   table's rows converted here to binary `COPY` (see `sectioned`): `-j` tables at a time, then
//!   the indexes and constraints with `pg_restore -j`. From a pipe it is one `pg_restore` with
//!   one job. Sequences come back at the values the archive recorded (`setval` entries).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::RestoreError;
use crate::facts::SequenceFacts;
use crate::pg::{ConnParams, PgTools, quote_ident};

mod binary_copy;
mod check;
mod load;
mod marker;
mod plan;
mod sectioned;

use check::*;
pub use load::restore_database;
use load::*;
pub use marker::MarkerRow;
use plan::*;
pub use plan::{default_jobs, plan_database_restore};

const MARK_PREFIX: &str = "rebuild-rehearsal: ";

const RESTORING: &str = "restoring ";

const RESTORED: &str = "restored ";

/// The database part of a backup, as a restore needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DbArchive {
    /// A `pg_dump -Fc` archive, restored with pg_restore.
    Custom(PathBuf),
    /// A plain SQL dump, run with psql (the runbook's "방법 A").
    PlainSql(PathBuf),
    /// A schema-only dump and per-table CSV files loaded with `\copy ... CSV HEADER` (the
    /// runbook's "방법 C"), parents first, then the sequences set, all in one transaction.
    Csv(CsvArchive),
}

/// The CSV form of a backup's database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvArchive {
    /// The schema-only SQL (`pg_dump --schema-only`): tables, constraints, indexes.
    pub schema: PathBuf,
    /// The tables, in the order they are loaded (parents before the tables that reference
    /// them).
    pub tables: Vec<CsvFile>,
    /// The sequences, set to the values the backup recorded.
    pub sequences: Vec<SequenceFacts>,
}

/// One table's CSV file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvFile {
    /// The table's schema.
    pub schema: String,
    /// The table's name.
    pub name: String,
    /// The file (header row, then one line per row).
    pub path: PathBuf,
    /// The columns, in the file's order.
    pub columns: Vec<String>,
}

impl DbArchive {
    /// The file the load starts from (for CSV, the schema-only SQL).
    pub fn path(&self) -> &Path {
        match self {
            DbArchive::Custom(p) | DbArchive::PlainSql(p) => p,
            DbArchive::Csv(csv) => &csv.schema,
        }
    }

    fn format(&self) -> &'static str {
        match self {
            DbArchive::Custom(_) => "custom archive",
            DbArchive::PlainSql(_) => "plain SQL dump",
            DbArchive::Csv(_) => "schema-only SQL and per-table CSV",
        }
    }
}

/// What to restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRestoreInput {
    /// The archive.
    pub archive: DbArchive,
    /// Identifies the backup (its name or id); recorded on the database so that a second
    /// restore of the same backup is recognised.
    pub backup_id: String,
    /// The custom archive's SHA-256 as its backup's manifest recorded it, when it comes from
    /// a completed backup (whose pg_dump exited 0). An archive whose bytes hash to it is the
    /// file the backup wrote, byte for byte: a flipped byte or a truncation changes the
    /// digest, so the archive is not also read through with pg_restore before the drops (at
    /// 100k users / 1M posts the read-through is 1.4 s of a 5.3 s restore; the hash of its
    /// 116 MiB about 0.1 s). A different digest refuses the restore before anything changes.
    /// `None` (an archive of unknown origin): read through, every data block decompressed.
    pub recorded_sha256: Option<String>,
}

/// How to restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRestoreOptions {
    /// Replace a database that holds data.
    pub force: bool,
    /// Only plan: change nothing.
    pub dry_run: bool,
    /// pg_restore jobs; `None`: the number of CPUs, at most 4 (1 for a non-regular file).
    pub jobs: Option<u32>,
    /// Do not restore object ownership (`--no-owner`), for targets without the backed-up roles.
    pub no_owner: bool,
    /// Deadline of every tool run and every query, in seconds; `None`: [`DEFAULT_DEADLINE`]
    /// (the runbook's 2 h restore limit). A wait that runs past it stops the tool and fails
    /// naming what it waited for, instead of hanging (a dead port-forward, a stuck server).
    #[serde(default)]
    pub deadline_seconds: Option<u64>,
}

/// The deadline of a restore's waits when none is given: the runbook's 2 h restore limit.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2 * 60 * 60);

impl DbRestoreOptions {
    fn deadline(&self) -> Duration {
        self.deadline_seconds
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_DEADLINE)
    }
}

/// Waits for `fut` at most `deadline`; past it, fails naming `tool` and `what` (dropping the
/// future stops what it was doing: a child process is killed with its group).
async fn within<T>(
    deadline: Duration,
    tool: &str,
    what: impl Into<String>,
    fut: impl std::future::Future<Output = Result<T, RestoreError>>,
) -> Result<T, RestoreError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(result) => result,
        Err(_) => Err(RestoreError::TimedOut {
            tool: tool.to_owned(),
            what: what.into(),
            seconds: deadline.as_secs(),
        }),
    }
}

/// What the target database holds before the restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TargetState {
    /// No user objects at all.
    Empty,
    /// Tables without rows (an init script's).
    EmptyTables {
        /// `schema.table`.
        tables: Vec<String>,
    },
    /// An earlier restore of `backup_id` was interrupted.
    Interrupted {
        /// The backup it was restoring.
        backup_id: String,
    },
    /// Restored from `backup_id`, and possibly written since.
    Restored {
        /// The backup.
        backup_id: String,
        /// Tables that hold rows.
        tables_with_rows: Vec<String>,
    },
    /// Holds data of unknown origin.
    HasData {
        /// Tables that hold rows.
        tables_with_rows: Vec<String>,
    },
}

/// What a restore will do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlannedAction {
    /// Drop the target's objects and load the backup.
    Restore,
    /// Nothing: the target was already restored from this backup (use `force` to redo).
    AlreadyRestored,
    /// Refuse: the target holds data (use `force`).
    Refuse,
}

/// The plan of a database restore: what is there, what is replaced, what runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRestorePlan {
    /// host:port/dbname.
    pub target: String,
    /// The archive and its format.
    pub archive: DbArchive,
    /// The backup id.
    pub backup_id: String,
    /// What the target holds.
    pub state: TargetState,
    /// What will happen.
    pub action: PlannedAction,
    /// Objects that would be dropped and replaced (`table public.users`, ...).
    pub replaces: Vec<String>,
    /// The command that loads the backup (no secrets: they travel in the environment). For
    /// a custom archive that is a regular file it is run in its sections, with the table rows
    /// loaded by this process (see `sectioned`).
    pub command: Vec<String>,
    /// Whether the custom archive is restored in sections, its table rows converted to binary
    /// `COPY` here (a regular file); otherwise the command runs as it is (a pipe: one pass).
    #[serde(default)]
    pub sectioned: bool,
    /// The archive's table of contents (custom archives), without OIDs.
    pub archive_entries: Vec<String>,
    /// How a custom archive's data blocks were proven intact before anything was dropped.
    pub archive_proof: Option<ArchiveProof>,
}

/// How a custom archive was proven intact before the drops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum ArchiveProof {
    /// Read through with `pg_restore -f /dev/null`: every data block decompressed, so zlib's
    /// checksums catch a flipped byte and the end a truncation.
    ReadThrough,
    /// Its SHA-256 equals the one its backup recorded.
    RecordedSha256 {
        /// The digest, hex.
        sha256: String,
    },
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = |tables: &[String]| {
            if tables.is_empty() {
                "no table holds rows".to_owned()
            } else {
                format!("tables with rows: {}", tables.join(", "))
            }
        };
        match self {
            TargetState::Empty => write!(f, "empty (no user objects)"),
            TargetState::EmptyTables { tables } => {
                write!(f, "{} tables without rows", tables.len())
            }
            TargetState::Interrupted { backup_id } => write!(
                f,
                "an interrupted restore of backup {backup_id} (marked `restoring`)"
            ),
            TargetState::Restored {
                backup_id,
                tables_with_rows,
            } => write!(
                f,
                "restored earlier from backup {backup_id}; {}",
                rows(tables_with_rows)
            ),
            TargetState::HasData { tables_with_rows } => {
                write!(f, "data of unknown origin; {}", rows(tables_with_rows))
            }
        }
    }
}

impl DbRestorePlan {
    /// Step 1: how the archive was checked before anything changes.
    fn check_step(&self) -> String {
        match &self.archive {
            DbArchive::Custom(_) => match &self.archive_proof {
                Some(ArchiveProof::RecordedSha256 { sha256 }) => format!(
                    "check the archive's SHA-256 against its backup's manifest and list it \
                 (checked: {} entries, SHA-256 {sha256} equal)",
                    self.archive_entries.len()
                ),
                _ => format!(
                    "read the archive through with pg_restore (checked: {} entries, every data \
                 block)",
                    self.archive_entries.len()
                ),
            },
            DbArchive::PlainSql(_) => {
                "check that the file starts like pg_dump's plain output (checked)".to_owned()
            }
            DbArchive::Csv(csv) => format!(
                "check that the schema file starts like pg_dump's plain output and that each of \
             the {} CSV files starts with its header row (checked)",
                csv.tables.len()
            ),
        }
    }

    /// Steps 2 to 4: the drops, the load and the mark, as this archive's format does them.
    fn change_steps(&self) -> (String, String, String) {
        let drops = if self.replaces.is_empty() {
            "drop nothing (the target has no user objects)".to_owned()
        } else {
            format!("drop {} objects:", self.replaces.len())
        };
        match &self.archive {
            DbArchive::Custom(_) => (
                format!("mark the database `restoring {}`, {drops}", self.backup_id),
                if self.sectioned {
                    "load the archive in its sections: the schema (--section=pre-data), each \
                     table's rows converted here to binary COPY (as many tables at once as -j), \
                     the other data entries, then indexes and constraints (--section=post-data \
                     -j)"
                    .to_owned()
                } else {
                    "load the archive".to_owned()
                },
                format!(
                    "mark the database `restored {}` (a failed load leaves the target marked \
                     `restoring`: rerun the same command to finish)",
                    self.backup_id
                ),
            ),
            DbArchive::PlainSql(_) | DbArchive::Csv(_) => (
                format!("in one transaction with steps 3 and 4, {drops}"),
                match &self.archive {
                    DbArchive::Csv(csv) => format!(
                        "load the schema, then {} tables from CSV (parents first), then set {} \
                         sequences",
                        csv.tables.len(),
                        csv.sequences.len()
                    ),
                    _ => "load the SQL file".to_owned(),
                },
                format!(
                    "mark the database `restored {}`; commit (a failure rolls back everything)",
                    self.backup_id
                ),
            ),
        }
    }
}

/// A plan a person reads: what is there, then what would be done, in order.
impl fmt::Display for DbRestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "database restore into {} from backup {}",
            self.target, self.backup_id
        )?;
        writeln!(
            f,
            "  archive: {} ({})",
            self.archive.path().display(),
            self.archive.format()
        )?;
        writeln!(f, "  target now holds: {}", self.state)?;
        match self.action {
            PlannedAction::Restore => {}
            PlannedAction::AlreadyRestored => {
                return writeln!(
                    f,
                    "  would do nothing: already restored from this backup (use --force to redo)"
                );
            }
            PlannedAction::Refuse => {
                return writeln!(
                    f,
                    "  would refuse and change nothing: the database holds data (use --force to replace it)"
                );
            }
        }
        writeln!(f, "  would, in order:")?;
        let checked = self.check_step();
        writeln!(f, "    1. {checked}")?;
        let (drop_step, load_step, mark_step) = self.change_steps();
        writeln!(f, "    2. {drop_step}")?;
        for object in &self.replaces {
            writeln!(f, "         - {object}")?;
        }
        writeln!(f, "    3. {load_step}: {}", self.command.join(" "))?;
        if !self.archive_entries.is_empty() {
            writeln!(
                f,
                "       restoring {} archive entries, in order:",
                self.archive_entries.len()
            )?;
            for entry in &self.archive_entries {
                writeln!(f, "         - {entry}")?;
            }
        }
        writeln!(f, "    4. {mark_step}")
    }
}

/// What a database restore did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DbRestoreReport {
    /// The plan it followed.
    pub plan: DbRestorePlan,
    /// Whether data was loaded (false for a dry run or an already restored target).
    pub restored: bool,
    /// Time spent dropping the target's objects.
    pub drop_seconds: f64,
    /// Time spent loading the backup.
    pub load_seconds: f64,
    /// Time spent in `ANALYZE` after the load (see [`super::analyze`]).
    #[serde(default)]
    pub analyze_seconds: f64,
    /// How each table's rows were loaded (a custom archive restored in sections; empty
    /// otherwise).
    #[serde(default)]
    pub tables: Vec<TableLoad>,
    /// Total time.
    pub seconds: f64,
}

/// How one table's rows were loaded from a custom archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableLoad {
    /// The archive entry (`TABLE DATA public posts postgres`).
    pub entry: String,
    /// Rows the server stored (0 when pg_restore loaded them).
    pub rows: u64,
    /// The way they went.
    pub loaded_as: LoadedAs,
}

/// The way a table's rows were loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadedAs {
    /// Converted to binary `COPY` by this process.
    Binary,
    /// Sent as the archive's text `COPY` (a type or a value the converter does not read).
    Text,
    /// Left to pg_restore (the entry is not a `COPY`: an `--inserts` archive).
    PgRestore,
}

impl DbRestoreReport {
    /// Total time as a duration.
    pub fn elapsed(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
