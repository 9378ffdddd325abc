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
//! - The custom archive is restored with `pg_restore -j` (parallel data load and index builds)
//!   when it is a regular file; from a pipe, with one job. Sequences come back at the values
//!   the archive recorded (`setval` entries).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::RestoreError;
use crate::facts::SequenceFacts;
use crate::pg::{ConnParams, PgTools, quote_ident};

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
    /// The command that loads the backup (no secrets: they travel in the environment).
    pub command: Vec<String>,
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
                "load the archive".to_owned(),
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
    /// Total time.
    pub seconds: f64,
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

/// The number of pg_restore jobs to use.
fn jobs_for(archive: &DbArchive, requested: Option<u32>) -> u32 {
    let regular = std::fs::metadata(archive.path())
        .map(|m| m.is_file())
        .unwrap_or(false);
    if !regular {
        return 1;
    }
    requested.unwrap_or_else(default_jobs).max(1)
}

/// The pg_restore jobs a restore uses when none are asked for: the number of CPUs, at most 4.
pub fn default_jobs() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .min(4)
}

/// Checks the archive without changing anything, and lists a custom archive's entries; says
/// how a custom archive's data was proven intact.
async fn check_archive(
    tools: &PgTools,
    input: &DbRestoreInput,
    deadline: Duration,
) -> Result<(Vec<String>, Option<ArchiveProof>), RestoreError> {
    let archive = &input.archive;
    let path = archive.path();
    let unreadable = |source| RestoreError::ArchiveUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    let bad = |detail: String| RestoreError::BadArchive {
        path: path.to_path_buf(),
        format: archive.format(),
        detail,
    };
    match archive {
        DbArchive::Custom(_) => {
            if meta.is_dir() {
                return Err(bad("it is a directory".to_owned()));
            }
            let program = tools
                .tool("pg_restore")
                .map_err(RestoreError::pg("find pg_restore"))?;
            let what = format!("listing {}", path.display());
            let list = run_checked(&program, &["-l"], path, deadline, what).await?;
            if !list.status.success() {
                return Err(bad(String::from_utf8_lossy(&list.stderr).trim().to_owned()));
            }
            // The table of contents is read from the head of the file only. The rest is
            // proven by the digest the backup recorded, or else read through once (every data
            // block decompressed, so zlib's checksums catch a flipped byte and the end a
            // truncation) before anything is dropped.
            let proof = match &input.recorded_sha256 {
                Some(recorded) => {
                    let what = format!("hashing {}", path.display());
                    let (_, actual) = within(deadline, "sha256", what, async {
                        crate::backup::sha256_file(path)
                            .await
                            .map_err(|e| bad(format!("could not hash it: {e}")))
                    })
                    .await?;
                    if actual != *recorded {
                        return Err(bad(format!(
                            "its SHA-256 is {actual}, not the {recorded} its backup recorded \
                             (changed or damaged since the backup)"
                        )));
                    }
                    ArchiveProof::RecordedSha256 { sha256: actual }
                }
                None => {
                    let what = format!("reading {} through", path.display());
                    let whole =
                        run_checked(&program, &["-f", "/dev/null"], path, deadline, what).await?;
                    if !whole.status.success() {
                        let stderr = String::from_utf8_lossy(&whole.stderr);
                        return Err(bad(format!(
                            "reading it through failed ({}): {}",
                            whole.status,
                            stderr.trim()
                        )));
                    }
                    ArchiveProof::ReadThrough
                }
            };
            let entries = String::from_utf8_lossy(&list.stdout)
                .lines()
                .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
                // `<dump id>; <table oid> <oid> <desc> <schema> <name> <owner>`: drop the ids.
                .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
                .collect();
            Ok((entries, Some(proof)))
        }
        DbArchive::Csv(csv) => {
            check_plain_head(archive, path, &meta)?;
            for table in &csv.tables {
                check_csv(archive, table)?;
            }
            Ok((Vec::new(), None))
        }
        DbArchive::PlainSql(_) => {
            check_plain_head(archive, path, &meta)?;
            Ok((Vec::new(), None))
        }
    }
}

/// Runs `pg_restore ARGS PATH` (reading only), its output captured, within `deadline`.
async fn run_checked(
    program: &Path,
    args: &[&str],
    path: &Path,
    deadline: Duration,
    what: String,
) -> Result<std::process::Output, RestoreError> {
    crate::process::ToolRun::new("pg_restore", program, what)
        .args(args.iter().copied())
        .args([path.display().to_string()])
        .deadline(deadline)
        .capture()
        .await
        .map_err(|err| from_tool(err, path))
}

/// A tool's failure as the restore's error about `archive`.
fn from_tool(err: crate::process::ToolError, archive: &Path) -> RestoreError {
    use crate::process::ToolError;
    match err {
        ToolError::Spawn { tool, source } => RestoreError::Spawn { tool, source },
        ToolError::Failed {
            tool,
            status,
            stderr,
            ..
        } => RestoreError::Tool {
            tool,
            path: archive.to_path_buf(),
            status,
            stderr,
        },
        ToolError::TimedOut {
            tool,
            what,
            seconds,
        } => RestoreError::TimedOut {
            tool,
            what,
            seconds,
        },
    }
}

/// The first line of `path` (at most 64 KiB), without its line end.
fn first_line(path: &Path) -> Result<String, std::io::Error> {
    use std::io::Read;
    let mut head = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head))?;
    let head = &head[..n];
    let end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    Ok(String::from_utf8_lossy(&head[..end])
        .trim_end_matches('\r')
        .to_owned())
}

/// A column name as PostgreSQL's CSV output writes it in the header row.
fn csv_field(name: &str) -> String {
    if name.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_owned()
    }
}

/// A CSV file psql's `\copy` can name (its path is quoted there) and whose header row names
/// the recorded columns.
fn check_csv(archive: &DbArchive, table: &CsvFile) -> Result<(), RestoreError> {
    let path = &table.path;
    let bad = |detail: String| RestoreError::BadArchive {
        path: path.to_path_buf(),
        format: archive.format(),
        detail,
    };
    let shown = path.display().to_string();
    if shown.contains(['\'', '\n', '\r']) || path.to_str().is_none() {
        return Err(bad(
            "its path holds a quote, a line break or non-UTF-8 bytes, which psql's \\copy cannot name"
                .to_owned(),
        ));
    }
    let meta = std::fs::metadata(path).map_err(|source| RestoreError::ArchiveUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(bad("it is not a regular file".to_owned()));
    }
    let header = first_line(path).map_err(|source| RestoreError::ArchiveUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let expected = table
        .columns
        .iter()
        .map(|c| csv_field(c))
        .collect::<Vec<_>>()
        .join(",");
    if header != expected {
        return Err(bad(format!(
            "its header row is `{header}`, the backup recorded the columns of {}.{} as `{expected}`",
            table.schema, table.name
        )));
    }
    Ok(())
}

fn check_plain_head(
    archive: &DbArchive,
    path: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), RestoreError> {
    use std::io::Read;
    let bad = |detail: String| RestoreError::BadArchive {
        path: path.to_path_buf(),
        format: archive.format(),
        detail,
    };
    let unreadable = |source| RestoreError::ArchiveUnreadable {
        path: path.to_path_buf(),
        source,
    };
    if !meta.is_file() {
        return Err(bad("it is not a regular file".to_owned()));
    }
    let mut head = vec![0u8; 4096];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(unreadable)?;
    let head = String::from_utf8_lossy(&head[..n]);
    if head.starts_with("PGDMP") {
        return Err(bad(
            "it is a custom-format archive; restore it as one, not with --from-sql".to_owned(),
        ));
    }
    if !head.contains("PostgreSQL database dump") {
        return Err(bad("it does not start like pg_dump's plain output (no \"PostgreSQL database dump\" header)".to_owned()));
    }
    Ok(())
}

/// A user object of the target and the statement that drops it.
struct TargetObject {
    label: String,
    drop: String,
}

async fn target_objects(client: &Client) -> Result<Vec<TargetObject>, RestoreError> {
    const USER: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
                        AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";
    let ext = |catalog: &str, oid: &str| {
        format!(
            "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass AND e.objid = {oid} \
             AND e.deptype = 'e')"
        )
    };
    let sql = format!(
        "SELECT 1 AS ord, 'schema' AS kind, NULL::text AS schema, n.nspname::text AS name, '' AS args \
           FROM pg_namespace n WHERE {USER} AND n.nspname <> 'public' AND {ns_ext} \
         UNION ALL \
         SELECT 2, CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' \
                    WHEN 'f' THEN 'foreign table' WHEN 'S' THEN 'sequence' ELSE 'table' END, \
                n.nspname::text, c.relname::text, '' \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND NOT c.relispartition AND {rel_ext} \
         UNION ALL \
         SELECT 3, CASE p.prokind WHEN 'a' THEN 'aggregate' ELSE 'routine' END, n.nspname::text, p.proname::text, \
                pg_get_function_identity_arguments(p.oid) \
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' AND {proc_ext} \
         UNION ALL \
         SELECT 4, CASE t.typtype WHEN 'd' THEN 'domain' ELSE 'type' END, n.nspname::text, t.typname::text, '' \
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
          WHERE n.nspname = 'public' AND (t.typtype IN ('e', 'd', 'r') \
                OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')) AND {type_ext} \
         UNION ALL \
         SELECT 5, 'extension', NULL, x.extname::text, '' FROM pg_extension x WHERE x.extname <> 'plpgsql' \
         ORDER BY 1, 2, 3, 4, 5",
        ns_ext = ext("pg_namespace", "n.oid"),
        rel_ext = ext("pg_class", "c.oid"),
        proc_ext = ext("pg_proc", "p.oid"),
        type_ext = ext("pg_type", "t.oid"),
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(RestoreError::query("list the target's objects"))?;
    Ok(rows
        .iter()
        .map(|row| {
            let kind: String = row.get(1);
            let schema: Option<String> = row.get(2);
            let name: String = row.get(3);
            let args: String = row.get(4);
            let (label, qualified) = match &schema {
                Some(s) => (
                    format!("{s}.{name}"),
                    format!("{}.{}", quote_ident(s), quote_ident(&name)),
                ),
                None => (name.clone(), quote_ident(&name)),
            };
            let (label, qualified) = if kind == "routine" || kind == "aggregate" {
                (format!("{label}({args})"), format!("{qualified}({args})"))
            } else {
                (label, qualified)
            };
            let keyword = kind.to_uppercase();
            TargetObject {
                label: format!("{kind} {label}"),
                drop: format!("DROP {keyword} IF EXISTS {qualified} CASCADE"),
            }
        })
        .collect())
}

async fn tables_with_rows(client: &Client) -> Result<(Vec<String>, Vec<String>), RestoreError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(RestoreError::query("list the target's tables"))?;
    let mut all = Vec::new();
    let mut filled = Vec::new();
    for row in rows {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {}.{})",
            quote_ident(&schema),
            quote_ident(&name)
        );
        let has_rows: bool = client
            .query_one(&sql, &[])
            .await
            .map_err(RestoreError::query(format!("look into {schema}.{name}")))?
            .get(0);
        let label = format!("{schema}.{name}");
        if has_rows {
            filled.push(label.clone());
        }
        all.push(label);
    }
    Ok((all, filled))
}

async fn database_mark(client: &Client) -> Result<Option<String>, RestoreError> {
    let row = client
        .query_one("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()", &[])
        .await
        .map_err(RestoreError::query("read the database comment"))?;
    Ok(row
        .get::<_, Option<String>>(0)
        .and_then(|c| c.strip_prefix(MARK_PREFIX).map(str::to_owned)))
}

fn mark_sql(dbname: &str, state: &str, backup_id: &str) -> String {
    format!(
        "COMMENT ON DATABASE {} IS {}",
        quote_ident(dbname),
        quote_literal(&format!("{MARK_PREFIX}{state}{backup_id}"))
    )
}

fn load_command(
    tools: &PgTools,
    params: &ConnParams,
    input: &DbRestoreInput,
    options: &DbRestoreOptions,
) -> Result<Vec<String>, RestoreError> {
    Ok(match &input.archive {
        DbArchive::Custom(path) => {
            let program = tools
                .tool("pg_restore")
                .map_err(RestoreError::pg("find pg_restore"))?;
            let mut cmd = vec![
                program.display().to_string(),
                "--exit-on-error".to_owned(),
                "--no-password".to_owned(),
                "-j".to_owned(),
                jobs_for(&input.archive, options.jobs).to_string(),
                "-d".to_owned(),
                params.dbname.clone(),
            ];
            if options.no_owner {
                cmd.push("--no-owner".to_owned());
            }
            cmd.push(path.display().to_string());
            cmd
        }
        DbArchive::PlainSql(path) => {
            let program = tools.tool("psql").map_err(RestoreError::pg("find psql"))?;
            let mut cmd = psql_one_transaction(&program);
            cmd.extend(["-f".to_owned(), path.display().to_string()]);
            cmd.extend(["-c".to_owned(), MARK_SLOT.to_owned()]);
            cmd
        }
        DbArchive::Csv(csv) => {
            let program = tools.tool("psql").map_err(RestoreError::pg("find psql"))?;
            let mut cmd = psql_one_transaction(&program);
            cmd.extend(["-f".to_owned(), csv.schema.display().to_string()]);
            for table in &csv.tables {
                cmd.extend(["-c".to_owned(), copy_from_csv(table)]);
            }
            for seq in &csv.sequences {
                cmd.extend(["-c".to_owned(), setval_sql(seq)]);
            }
            cmd.extend(["-c".to_owned(), MARK_SLOT.to_owned()]);
            cmd
        }
    })
}

const DROP_SLOT: &str = "<drop the target's objects>";
const MARK_SLOT: &str = "<mark restored>";

/// psql running everything that follows in one transaction, stopping at the first error.
fn psql_one_transaction(program: &Path) -> Vec<String> {
    vec![
        program.display().to_string(),
        "-X".to_owned(),
        "-q".to_owned(),
        "--no-password".to_owned(),
        "-v".to_owned(),
        "ON_ERROR_STOP=1".to_owned(),
        "--single-transaction".to_owned(),
        "-c".to_owned(),
        DROP_SLOT.to_owned(),
    ]
}

/// psql's `\copy` of one CSV file into its table (the path was checked to hold no quote).
fn copy_from_csv(table: &CsvFile) -> String {
    let columns = table
        .columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "\\copy {}.{} ({columns}) FROM '{}' WITH (FORMAT csv, HEADER)",
        quote_ident(&table.schema),
        quote_ident(&table.name),
        table.path.display()
    )
}

/// Sets a sequence to the value the backup recorded.
fn setval_sql(seq: &SequenceFacts) -> String {
    let name = format!("{}.{}", quote_ident(&seq.schema), quote_ident(&seq.name));
    format!(
        "SELECT pg_catalog.setval({}, {}, {})",
        quote_literal(&name),
        seq.last_value,
        seq.is_called
    )
}

/// Plans a database restore: checks the archive, looks at the target, and says what would be
/// replaced and what would run. Changes nothing.
///
/// # Errors
/// [`RestoreError::BadArchive`]/[`RestoreError::ArchiveUnreadable`] for an unusable archive,
/// [`RestoreError::Postgres`] when the target cannot be reached.
pub async fn plan_database_restore(
    tools: &PgTools,
    params: &ConnParams,
    input: &DbRestoreInput,
    options: &DbRestoreOptions,
) -> Result<DbRestorePlan, RestoreError> {
    let deadline = options.deadline();
    let (archive_entries, archive_proof) = check_archive(tools, input, deadline).await?;
    let target = params.target();
    let (tables, filled, objects, mark) = within(
        deadline,
        "postgres",
        format!("looking into {target}"),
        async {
            let client = params
                .connect()
                .await
                .map_err(RestoreError::pg(format!("connect to {target}")))?;
            let (tables, filled) = tables_with_rows(&client).await?;
            let objects = target_objects(&client).await?;
            let mark = database_mark(&client).await?;
            Ok((tables, filled, objects, mark))
        },
    )
    .await?;
    let state = match mark.as_deref() {
        Some(m) if m.starts_with(RESTORING) => TargetState::Interrupted {
            backup_id: m[RESTORING.len()..].to_owned(),
        },
        Some(m) if m.starts_with(RESTORED) => TargetState::Restored {
            backup_id: m[RESTORED.len()..].to_owned(),
            tables_with_rows: filled.clone(),
        },
        _ if !filled.is_empty() => TargetState::HasData {
            tables_with_rows: filled.clone(),
        },
        _ if objects.is_empty() => TargetState::Empty,
        _ => TargetState::EmptyTables { tables },
    };
    let action = match &state {
        _ if options.force => PlannedAction::Restore,
        TargetState::Restored { backup_id, .. } if *backup_id == input.backup_id => {
            PlannedAction::AlreadyRestored
        }
        TargetState::Restored {
            tables_with_rows, ..
        } if tables_with_rows.is_empty() => PlannedAction::Restore,
        TargetState::Restored { .. } | TargetState::HasData { .. } => PlannedAction::Refuse,
        TargetState::Empty | TargetState::EmptyTables { .. } | TargetState::Interrupted { .. } => {
            PlannedAction::Restore
        }
    };
    Ok(DbRestorePlan {
        target: params.target(),
        archive: input.archive.clone(),
        backup_id: input.backup_id.clone(),
        state,
        action,
        replaces: objects.into_iter().map(|o| o.label).collect(),
        command: load_command(tools, params, input, options)?,
        archive_entries,
        archive_proof,
    })
}

/// Restores the database behind `params` from `input` (see the module docs for the rules).
/// With `options.dry_run`, returns the plan and changes nothing.
///
/// # Errors
/// [`RestoreError::NotEmpty`] when the target holds data and `force` is not set (nothing is
/// changed); [`RestoreError::Tool`] when pg_restore or psql fails (run again to retry);
/// archive and connection errors as for [`plan_database_restore`].
pub async fn restore_database(
    tools: &PgTools,
    params: &ConnParams,
    input: &DbRestoreInput,
    options: &DbRestoreOptions,
) -> Result<DbRestoreReport, RestoreError> {
    use tracing::Instrument as _;
    let started = Instant::now();
    let span = tracing::info_span!("restore_database", target = %params.target(), backup = %input.backup_id);
    async {
        let plan = plan_database_restore(tools, params, input, options).await?;
        let unchanged = |plan| DbRestoreReport {
            plan,
            restored: false,
            drop_seconds: 0.0,
            load_seconds: 0.0,
            analyze_seconds: 0.0,
            seconds: started.elapsed().as_secs_f64(),
        };
        if options.dry_run {
            return Ok(unchanged(plan));
        }
        match plan.action {
            PlannedAction::Refuse => return Err(refusal(plan)),
            PlannedAction::AlreadyRestored => {
                tracing::info!("already restored from this backup; nothing to do");
                return Ok(unchanged(plan));
            }
            PlannedAction::Restore => {}
        }
        let timings = load(params, input, &plan, options.deadline()).await?;
        Ok(DbRestoreReport {
            plan,
            restored: true,
            drop_seconds: timings.drop,
            load_seconds: timings.load,
            analyze_seconds: timings.analyze,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
    .instrument(span)
    .await
}

/// The refusal of a plan that found data in the target: what it found.
fn refusal(plan: DbRestorePlan) -> RestoreError {
    let detail = match &plan.state {
        TargetState::HasData { tables_with_rows } => {
            format!("tables with rows: {}", tables_with_rows.join(", "))
        }
        TargetState::Restored {
            backup_id,
            tables_with_rows,
        } => format!(
            "restored earlier from backup {backup_id}; tables with rows: {}",
            tables_with_rows.join(", ")
        ),
        other => other.to_string(),
    };
    RestoreError::NotEmpty {
        target: plan.target,
        detail,
    }
}

/// Seconds each part of a load took.
struct LoadTimings {
    drop: f64,
    load: f64,
    analyze: f64,
}

/// Drops the target's objects and loads the archive as `plan` says, then ANALYZE.
async fn load(
    params: &ConnParams,
    input: &DbRestoreInput,
    plan: &DbRestorePlan,
    deadline: Duration,
) -> Result<LoadTimings, RestoreError> {
    let target = params.target();
    let client = within(
        deadline,
        "postgres",
        format!("connecting to {target}"),
        async {
            params
                .connect()
                .await
                .map_err(RestoreError::pg(format!("connect to {target}")))
        },
    )
    .await?;
    let objects = within(
        deadline,
        "postgres",
        format!("listing the objects of {target}"),
        target_objects(&client),
    )
    .await?;
    let drops: Vec<String> = objects.into_iter().map(|o| o.drop).collect();
    match &input.archive {
        DbArchive::Custom(path) => {
            load_custom(&client, params, input, plan, path, drops, deadline).await
        }
        DbArchive::PlainSql(_) | DbArchive::Csv(_) => {
            load_in_one_transaction(params, input, plan, drops, deadline).await
        }
    }
}

/// A custom archive: the drops committed (the target marked `restoring`), then pg_restore,
/// ANALYZE and the `restored` mark. A failed load leaves a half-restored target and says so.
async fn load_custom(
    client: &tokio_postgres::Client,
    params: &ConnParams,
    input: &DbRestoreInput,
    plan: &DbRestorePlan,
    path: &Path,
    mut drops: Vec<String>,
    deadline: Duration,
) -> Result<LoadTimings, RestoreError> {
    let (target, dbname) = (params.target(), &params.dbname);
    // Everything before this point only read: the archive was proven intact and the target
    // looked at. From here the target changes.
    let drop_started = Instant::now();
    drops.insert(0, mark_sql(dbname, RESTORING, &input.backup_id));
    within(
        deadline,
        "postgres",
        format!("dropping the objects of {target}"),
        async {
            client
                .batch_execute(&format!("BEGIN; {}; COMMIT", drops.join("; ")))
                .await
                .map_err(RestoreError::query("drop the target's objects"))
        },
    )
    .await?;
    let drop = drop_started.elapsed().as_secs_f64();
    let load_started = Instant::now();
    let loaded = async {
        run_tool(&plan.command, params, path, deadline).await?;
        let load = load_started.elapsed().as_secs_f64();
        // Before the mark: a database marked restored has its statistics.
        let analyze = super::analyze(params).await?;
        within(
            deadline,
            "postgres",
            format!("marking {target} restored"),
            async {
                client
                    .batch_execute(&mark_sql(dbname, RESTORED, &input.backup_id))
                    .await
                    .map_err(RestoreError::query("mark the database restored"))
            },
        )
        .await?;
        Ok::<_, RestoreError>((load, analyze))
    };
    // The drops are committed: a failed load leaves a half-restored target, marked
    // `restoring`. Say so, and how to finish.
    let (load, analyze) = loaded.await.map_err(|source| RestoreError::HalfRestored {
        target: target.clone(),
        backup_id: input.backup_id.clone(),
        source: Box::new(source),
    })?;
    Ok(LoadTimings {
        drop,
        load,
        analyze: analyze.as_secs_f64(),
    })
}

/// Plain SQL or CSV: one transaction holds the drops, the dump (or the schema and the CSV
/// files) and the mark, so an interruption changes nothing. Then ANALYZE.
async fn load_in_one_transaction(
    params: &ConnParams,
    input: &DbRestoreInput,
    plan: &DbRestorePlan,
    drops: Vec<String>,
    deadline: Duration,
) -> Result<LoadTimings, RestoreError> {
    let path = input.archive.path();
    let load_started = Instant::now();
    let mut command = plan.command.clone();
    let drop_sql = if drops.is_empty() {
        "SELECT 1".to_owned()
    } else {
        drops.join("; ")
    };
    for (slot, sql) in [
        (DROP_SLOT, drop_sql),
        (
            MARK_SLOT,
            mark_sql(&params.dbname, RESTORED, &input.backup_id),
        ),
    ] {
        if let Some(arg) = command.iter_mut().find(|a| *a == slot) {
            *arg = sql;
        }
    }
    run_tool(&command, params, path, deadline)
        .await
        .map_err(|source| RestoreError::RolledBack {
            target: params.target(),
            source: Box::new(source),
        })?;
    let load = load_started.elapsed().as_secs_f64();
    let analyze = super::analyze(params).await?;
    Ok(LoadTimings {
        drop: 0.0,
        load,
        analyze: analyze.as_secs_f64(),
    })
}

/// Runs the load `command` (pg_restore or psql, its program first) against `params` within
/// `deadline`; the whole process group (pg_restore's `-j` workers) is stopped with it.
async fn run_tool(
    command: &[String],
    params: &ConnParams,
    archive: &Path,
    deadline: Duration,
) -> Result<(), RestoreError> {
    let (program, args) = command.split_first().expect("a command has a program");
    let tool = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.clone());
    crate::process::ToolRun::new(&tool, program, format!("restoring {}", archive.display()))
        .args(args.iter().cloned())
        .envs(params.libpq_env())
        .deadline(deadline)
        .run()
        .await
        .map_err(|err| from_tool(err, archive))
}

/// The marker row of the negative control: a `users` row written into the source database
/// after the backup. A restore that really came from the backup does not contain it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerRow {
    /// The run id it carries.
    pub run_id: String,
}

impl MarkerRow {
    /// A marker for `run_id`.
    pub fn new(run_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
        }
    }

    /// The username the marker row has.
    pub fn username(&self) -> String {
        format!("rehearsal-marker-{}", self.run_id)
    }

    /// How the marker is named in a verdict.
    pub fn subject(&self) -> String {
        format!("public.users username={}", self.username())
    }

    /// Writes the marker row.
    ///
    /// # Errors
    /// [`RestoreError::Postgres`] when the insert fails.
    pub async fn write(&self, client: &Client) -> Result<(), RestoreError> {
        let name = self.username();
        client
            .execute(
                "INSERT INTO public.users (username, email, password_hash) VALUES ($1::text, $1::text || '@marker.invalid', 'rehearsal-marker')",
                &[&name],
            )
            .await
            .map_err(RestoreError::query(format!("write marker row {name}")))?;
        Ok(())
    }

    /// How many marker rows the database holds (0 after a good restore). A database without a
    /// `users` table holds none.
    ///
    /// # Errors
    /// [`RestoreError::Postgres`] when the query fails.
    pub async fn count(&self, client: &Client) -> Result<u64, RestoreError> {
        let exists: bool = client
            .query_one("SELECT to_regclass('public.users') IS NOT NULL", &[])
            .await
            .map_err(RestoreError::query("look for the users table"))?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let name = self.username();
        let count: i64 = client
            .query_one(
                "SELECT count(*) FROM public.users WHERE username = $1",
                &[&name],
            )
            .await
            .map_err(RestoreError::query(format!("look for marker row {name}")))?
            .get(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
