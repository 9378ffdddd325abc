//! The PostgreSQL part of a backup: one exported snapshot, every dump taken in it, and the
//! row counts and digests of the rows the plain dump holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::archive::ArchiveFeed;
use super::csv::{CsvTable, plan_csv};
use super::exec::PodRef;
use super::files::{ToolRun, ensure_parent, to_private_file, tool_version};
use super::manifest::StepTiming;
use super::split::{CsvOut, TableOut, split_plain};
use super::{BackupError, PlainFrom};
use crate::facts::{
    DUMP_ENV, DigestVersion, SequenceFacts, TableFacts, TableRef, list_tables, sequence_facts,
};
use crate::pg::{ConnParams, PgTools, Secret};

/// Where the PostgreSQL to back up is, and how it is reached.
#[derive(Clone, Debug)]
pub enum PgSource {
    /// Reached directly: the session connects to `params`, and pg_dump/pg_dumpall from
    /// `tools` run on this machine with the password in `PGPASSWORD`.
    Direct {
        /// Server, user, password and database.
        params: ConnParams,
        /// The client tools (same major version as the server or newer).
        tools: PgTools,
    },
    /// Reached through Kubernetes, as the runbook does: pg_dump runs inside the pod (`exec`),
    /// its output streamed here; the snapshot session goes through a port-forward.
    Kube(KubePostgres),
}

/// A PostgreSQL server in a pod.
#[derive(Clone, Debug)]
pub struct KubePostgres {
    /// The pod (`postgresql-0`) and container.
    pub pod: PodRef,
    /// The server's port inside the pod.
    pub port: u16,
    /// User for both the session and the dumps.
    pub user: String,
    /// Database name.
    pub dbname: String,
    /// Password for the port-forwarded session, if the server asks for one.
    pub password: Option<Secret>,
    /// Name of an environment variable *inside the container* that holds the password
    /// (`POSTGRES_PASSWORD` in the official image), handed to pg_dump as `PGPASSWORD` by a
    /// shell in the pod. The password never appears in any command line.
    pub password_env: Option<String>,
}

impl PgSource {
    /// The database being backed up.
    pub fn dbname(&self) -> &str {
        match self {
            PgSource::Direct { params, .. } => &params.dbname,
            PgSource::Kube(k) => &k.dbname,
        }
    }

    /// The user the session and the tools connect as.
    pub fn user(&self) -> &str {
        match self {
            PgSource::Direct { params, .. } => &params.user,
            PgSource::Kube(k) => &k.user,
        }
    }

    /// Where it is, for messages and the manifest (never a password).
    pub fn describe(&self) -> String {
        match self {
            PgSource::Direct { params, .. } => params.target(),
            PgSource::Kube(k) => format!(
                "pod {}/{}:{}/{}",
                k.pod.namespace, k.pod.pod, k.port, k.dbname
            ),
        }
    }

    pub(crate) async fn session(&self) -> Result<tokio_postgres::Client, BackupError> {
        match self {
            PgSource::Direct { params, .. } => params
                .connect()
                .await
                .map_err(BackupError::pg("open the snapshot session")),
            PgSource::Kube(k) => {
                let mut config = tokio_postgres::Config::new();
                config
                    .user(&k.user)
                    .dbname(&k.dbname)
                    .application_name("rebuild-rehearsal");
                if let Some(password) = &k.password {
                    config.password(password.expose());
                }
                k.pod.connect_postgres(k.port, &config, &k.user).await
            }
        }
    }

    /// Runs `program` (pg_dump, pg_dumpall) against the source with `args` (no connection
    /// options: they are added here) and streams its output into `out`.
    pub(super) async fn dump(
        &self,
        program: &str,
        args: Vec<String>,
        what: &str,
        out: &Path,
        background: bool,
    ) -> Result<(), BackupError> {
        match self {
            PgSource::Direct { params, tools } => {
                let path = tools
                    .tool(program)
                    .map_err(BackupError::pg(format!("find {program}")))?;
                let mut run = ToolRun::new(program, path, what)
                    .args(args)
                    .envs(params.libpq_env())
                    .envs(DUMP_ENV);
                if background {
                    run = run.background();
                }
                to_private_file(&run, out).await
            }
            PgSource::Kube(k) => {
                let mut command =
                    in_pod_with_env(k.password_env.as_deref(), "PGPASSWORD", &DUMP_ENV)?;
                command.push(program.to_owned());
                command.extend(["-U".to_owned(), k.user.clone()]);
                if program == "pg_dump" {
                    command.extend(["-d".to_owned(), k.dbname.clone()]);
                }
                command.extend(args);
                k.pod.exec_to_file(command, what, out).await.map(|_| ())
            }
        }
    }

    async fn tool_version(&self, program: &str) -> String {
        match self {
            PgSource::Direct { tools, .. } => match tools.tool(program) {
                Ok(path) => tool_version(program, &path, "--version").await,
                Err(err) => format!("unknown ({err})"),
            },
            PgSource::Kube(k) => match k
                .pod
                .exec_output(vec![program.to_owned(), "--version".to_owned()], "version")
                .await
            {
                Ok(out) => format!("{} (in pod {})", out.trim(), k.pod.pod),
                Err(err) => format!("unknown ({err})"),
            },
        }
    }
}

/// A command prefix that runs the rest of the command in the pod with `target_var` set from
/// the container's own `source_var`, when that is set. The value stays inside the pod.
pub(crate) fn in_pod_with_password(
    source_var: Option<&str>,
    target_var: &str,
) -> Result<Vec<String>, BackupError> {
    in_pod_with_env(source_var, target_var, &[])
}

/// [`in_pod_with_password`], with `env` (names and values that are not secret) exported too.
pub(crate) fn in_pod_with_env(
    source_var: Option<&str>,
    target_var: &str,
    env: &[(&str, &str)],
) -> Result<Vec<String>, BackupError> {
    let is_name = |var: &str| {
        !var.is_empty()
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !var.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut script = String::new();
    for (name, value) in env {
        assert!(is_name(name), "{name} is a constant variable name");
        let quoted = value.replace('\'', r"'\''");
        script.push_str(&format!("{name}='{quoted}'; export {name}; "));
    }
    if let Some(var) = source_var {
        if !is_name(var) {
            return Err(BackupError::SecretMissing {
                name: var.to_owned(),
                detail: "not a valid environment variable name".to_owned(),
            });
        }
        script.push_str(&format!(
            "if [ -n \"${{{var}:-}}\" ]; then {target_var}=\"${var}\"; export {target_var}; fi; "
        ));
    }
    if script.is_empty() {
        return Ok(Vec::new());
    }
    script.push_str("exec \"$@\"");
    Ok(vec![
        "sh".to_owned(),
        "-c".to_owned(),
        script,
        "sh".to_owned(),
    ])
}

/// What the manifest records of the PostgreSQL part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgManifest {
    /// Where it came from (no password).
    pub source: String,
    /// Database name.
    pub database: String,
    /// `server_version`.
    pub server_version: String,
    /// `version()`.
    pub server_version_full: String,
    /// The exported snapshot every dump used.
    pub snapshot_id: String,
    /// The server's clock when the snapshot was taken (RFC 3339, UTC): the backup's RPO point.
    pub snapshot_at: String,
    /// Row counts and digests per table, of the rows the snapshot's dumps hold.
    pub tables: Vec<TableFacts>,
    /// The definition the digests follow; absent in manifests written before there were two.
    #[serde(default = "DigestVersion::unversioned")]
    pub digest_version: DigestVersion,
    /// Sequences (read just before the dumps start: sequences are not transactional).
    pub sequences: Vec<SequenceFacts>,
    /// The normalised schema rendering ([`crate::facts::schema`]), read in the snapshot.
    #[serde(default)]
    pub schema: String,
    /// The custom-format archive (`pg_restore` input).
    pub custom_dump: String,
    /// Plain SQL of the whole database.
    pub plain: String,
    /// Schema only.
    pub schema_only: String,
    /// Data only.
    pub data_only: String,
    /// One file per table, keyed `schema.table`.
    pub table_files: BTreeMap<String, String>,
    /// Per-table CSV with a header row, read in the snapshot, parents first (the order a CSV
    /// restore loads them in). Empty in backups made before CSV was written.
    #[serde(default)]
    pub csv: Vec<CsvTable>,
    /// Roles and tablespaces (`pg_dumpall --globals-only`).
    pub globals: String,
    /// How the plain, schema, data and per-table files were made.
    pub derived_from: String,
    /// The physical copy (`pg_basebackup`), when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<super::physical::PhysicalBackup>,
}

pub(crate) struct PgOutcome {
    pub(crate) manifest: PgManifest,
    pub(crate) steps: Vec<StepTiming>,
    pub(crate) tools: BTreeMap<String, String>,
}

fn step(name: &str, started: Instant, origin: Instant) -> StepTiming {
    StepTiming {
        name: name.to_owned(),
        started_after_seconds: started.duration_since(origin).as_secs_f64(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Where the PostgreSQL part's files go and who hears of them: the backup directory, the
/// archive feed (which compresses each file once it is complete, while the rest runs) and the
/// origin of the step timings.
#[derive(Clone, Copy)]
struct Output<'a> {
    dir: &'a Path,
    feed: Option<&'a ArchiveFeed>,
    origin: Instant,
}

impl Output<'_> {
    /// Hands a finished file to the archive.
    fn done(&self, rel: &str) {
        if let Some(feed) = self.feed {
            feed.add(rel);
        }
    }

    /// The timing of a step that began at `started` and ends now.
    fn step(&self, name: &str, started: Instant) -> StepTiming {
        step(name, started, self.origin)
    }
}

/// The server's version and the snapshot it exported, as the manifest records them.
struct Snapshot {
    server_version: String,
    server_version_full: String,
    id: String,
    /// The server's clock when the snapshot was taken (RFC 3339, UTC).
    at: String,
}

/// The SQL files derived from the database (as opposed to the custom dump), relative to the
/// backup directory.
struct SqlFiles {
    plain: String,
    schema: String,
    data: String,
    /// One file per table, keyed `schema.table`.
    tables: BTreeMap<String, String>,
    /// The same files with their tables, in the order the snapshot lists them.
    per_table: Vec<(TableRef, String)>,
}

/// A file that pg_dump writes from the database, or pg_restore from the custom archive.
struct Derived {
    rel: String,
    what: &'static str,
    /// The arguments that choose what is written (`--schema-only`), the same for both tools.
    args: Vec<String>,
}

impl SqlFiles {
    /// The files' names for the database file name `file_name` and its tables.
    fn new(file_name: &str, table_refs: &[TableRef]) -> SqlFiles {
        let tables: BTreeMap<String, String> = table_refs
            .iter()
            .map(|t| {
                let key = format!("{}.{}", t.schema, t.name);
                let rel = format!("postgres/tables/{}.sql", sanitize(&key));
                (key, rel)
            })
            .collect();
        let per_table = table_refs
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    tables[&format!("{}.{}", t.schema, t.name)].clone(),
                )
            })
            .collect();
        SqlFiles {
            plain: format!("postgres/{file_name}-full.sql"),
            schema: format!("postgres/{file_name}-schema.sql"),
            data: format!("postgres/{file_name}-data.sql"),
            tables,
            per_table,
        }
    }

    /// Plain and schema-only SQL come from pg_dump (or pg_restore); the data-only and
    /// per-table files are split out of the plain SQL (see `split.rs`).
    fn derived(&self) -> Vec<Derived> {
        vec![
            Derived {
                rel: self.plain.clone(),
                what: "plain SQL",
                args: vec![],
            },
            Derived {
                rel: self.schema.clone(),
                what: "schema only",
                args: vec!["--schema-only".to_owned()],
            },
        ]
    }
}

/// The file the roles and tablespaces are dumped to (`pg_dumpall --globals-only`).
const GLOBALS_REL: &str = "postgres/globals.sql";

/// Backs up the database into `dir/postgres/`.
pub(crate) async fn backup_postgres(
    source: &PgSource,
    local: &PgTools,
    plain_from: PlainFrom,
    physical: bool,
    dir: &Path,
    origin: Instant,
    feed: Option<&ArchiveFeed>,
) -> Result<PgOutcome, BackupError> {
    let out = Output { dir, feed, origin };
    let db = source.dbname().to_owned();
    let file_name = sanitize(&db);
    let custom_rel = format!("postgres/{file_name}.dump");
    let custom_path = ensure_parent(dir, &custom_rel)?;
    let mut steps = Vec::new();

    // The session that exports the snapshot, held open until every reader has imported it.
    let started = Instant::now();
    let (session, snapshot) = export_snapshot(source).await?;
    steps.push(out.step("postgres: export snapshot", started));
    tracing::info!(snapshot = %snapshot.id, database = %db, "snapshot exported");

    // The tables, as the snapshot sees them: the per-table files are named after them.
    let table_refs = list_tables(&session).await?;
    // The CSV files' tables, columns and load order (catalog only; the rows come from the split).
    let csv = plan_csv(&session, &table_refs).await?;
    if !csv.is_empty() {
        ensure_parent(dir, "postgres/csv/x")?;
    }
    let files = SqlFiles::new(&file_name, &table_refs);
    if !files.tables.is_empty() {
        ensure_parent(dir, "postgres/tables/x")?;
    }
    // Sequences are not transactional: read them before pg_dump starts, so that what the
    // dump records (read a moment later) is never behind what the manifest says.
    let sequences = sequence_facts(&session).await?;
    let indexes = list_indexes(&session).await?;
    let dumps = Dumps {
        source,
        out,
        snapshot_arg: format!("--snapshot={}", snapshot.id),
        custom_rel,
        custom_path,
        files,
        csv,
        sequences,
        indexes,
    };

    // Every reader of the snapshot at once: the custom dump, the facts, the globals and, when
    // they come from the database, the plain and schema-only dumps.
    // The row counts and digests come from the plain SQL's rows (see `split.rs`): no table is
    // read beyond what the pg_dumps read.
    let (dump_step, (schema, facts_step), globals_step, derived) = tokio::try_join!(
        dumps.custom(),
        snapshot_schema(&session, out),
        dumps.globals(),
        dumps.derive_from_database(plain_from),
    )?;
    steps.extend([dump_step, facts_step, globals_step]);
    // pg_dump has its own copy of the snapshot: release the server's.
    session
        .batch_execute("COMMIT")
        .await
        .map_err(|e| query_err("end the snapshot transaction", e))?;
    drop(session);

    let (derived_step, tables) = match derived {
        Some(derived) => derived,
        // The database is read once; the rest comes from the archive, here.
        None => dumps.derive_from_archive(local).await?,
    };
    steps.push(derived_step);
    let derived_from = dumps.derived_from(plain_from);
    // The physical copy after the logical one, with the writers still quiesced.
    let physical = if physical {
        let started = Instant::now();
        let taken = Box::pin(super::physical::take(source, dir)).await?;
        out.done(&taken.file);
        steps.push(out.step("postgres: physical backup (pg_basebackup)", started));
        Some(taken)
    } else {
        None
    };

    Ok(PgOutcome {
        manifest: PgManifest {
            source: source.describe(),
            database: db,
            server_version: snapshot.server_version,
            server_version_full: snapshot.server_version_full,
            snapshot_id: snapshot.id,
            snapshot_at: snapshot.at,
            tables,
            digest_version: DigestVersion::RowsV2,
            sequences: dumps.sequences,
            schema,
            custom_dump: dumps.custom_rel,
            plain: dumps.files.plain,
            schema_only: dumps.files.schema,
            data_only: dumps.files.data,
            table_files: dumps.files.tables,
            csv: dumps.csv,
            globals: GLOBALS_REL.to_owned(),
            derived_from,
            physical,
        },
        steps,
        tools: tool_versions(source, local).await,
    })
}

/// The schema rendering, read in the snapshot the session holds.
async fn snapshot_schema(
    session: &tokio_postgres::Client,
    out: Output<'_>,
) -> Result<(String, StepTiming), BackupError> {
    let started = Instant::now();
    let schema = crate::facts::render_schema(session).await?;
    let step = out.step("postgres: schema rendering", started);
    Ok((schema, step))
}

/// Everything the dumps and the split need once the snapshot is exported.
struct Dumps<'a> {
    source: &'a PgSource,
    out: Output<'a>,
    /// `--snapshot=<id>`, for every pg_dump.
    snapshot_arg: String,
    custom_rel: String,
    custom_path: PathBuf,
    files: SqlFiles,
    csv: Vec<CsvTable>,
    sequences: Vec<SequenceFacts>,
    /// Every user index as (schema, table, index).
    indexes: Vec<(String, String, String)>,
}

impl Dumps<'_> {
    /// The custom-format archive, by pg_dump in the snapshot.
    async fn custom(&self) -> Result<StepTiming, BackupError> {
        let started = Instant::now();
        let args = vec![self.snapshot_arg.clone(), "-Fc".to_owned()];
        self.source
            .dump(
                "pg_dump",
                args,
                "dumping (custom format)",
                &self.custom_path,
                // The critical path: bound by its compression, it keeps the first CPU.
                false,
            )
            .await?;
        self.out.done(&self.custom_rel);
        Ok(self.out.step("postgres: pg_dump -Fc", started))
    }

    /// Roles and tablespaces, by pg_dumpall.
    async fn globals(&self) -> Result<StepTiming, BackupError> {
        let started = Instant::now();
        let args = vec!["--globals-only".to_owned()];
        let path = self.out.dir.join(GLOBALS_REL);
        self.source
            .dump(
                "pg_dumpall",
                args,
                "dumping roles (globals only)",
                &path,
                true,
            )
            .await?;
        self.out.done(GLOBALS_REL);
        Ok(self
            .out
            .step("postgres: pg_dumpall --globals-only", started))
    }

    /// With [`PlainFrom::Database`], the plain and schema-only SQL by pg_dumps in the snapshot,
    /// running beside the custom dump (which is bound by its compression, not the server),
    /// then the split and the tables' facts from it; otherwise nothing.
    async fn derive_from_database(
        &self,
        plain_from: PlainFrom,
    ) -> Result<Option<(StepTiming, Vec<TableFacts>)>, BackupError> {
        if plain_from != PlainFrom::Database {
            return Ok(None);
        }
        let started = Instant::now();
        dump_derived(
            self.source,
            &self.snapshot_arg,
            &self.files.derived(),
            self.out,
        )
        .await?;
        let tables = self.split().await?;
        let step = self.out.step(
            "postgres: plain and schema SQL (pg_dump); data, per-table, row counts and digests (split)",
            started,
        );
        Ok(Some((step, tables)))
    }

    /// The plain and schema-only SQL by pg_restore from the custom archive, then the split and
    /// the tables' facts from it.
    async fn derive_from_archive(
        &self,
        local: &PgTools,
    ) -> Result<(StepTiming, Vec<TableFacts>), BackupError> {
        let started = Instant::now();
        restore_derived(
            local,
            &self.custom_path,
            &self.custom_rel,
            &self.files.derived(),
            self.out,
        )
        .await?;
        let tables = self.split().await?;
        let step = self.out.step(
            "postgres: plain and schema SQL (pg_restore); data, per-table, row counts and digests (split)",
            started,
        );
        Ok((step, tables))
    }

    /// How the plain, schema-only, data-only and per-table files were made, for the manifest.
    fn derived_from(&self, plain_from: PlainFrom) -> String {
        match plain_from {
            PlainFrom::Database => format!(
                "plain and schema-only SQL: pg_dump {} against the database, beside the custom dump; \
                 data-only and per-table SQL: split from the plain SQL",
                self.snapshot_arg
            ),
            PlainFrom::Archive => format!(
                "plain and schema-only SQL: pg_restore of {} on this machine (the database was read once, \
                 by pg_dump {}); data-only and per-table SQL: split from the plain SQL",
                self.custom_rel, self.snapshot_arg
            ),
        }
    }

    /// The data-only, per-table and CSV files, split from the plain SQL, and each table's row
    /// count and digest.
    async fn split(&self) -> Result<Vec<TableFacts>, BackupError> {
        split_derived(
            self.out,
            &self.files,
            &self.csv,
            &self.sequences,
            &self.indexes,
        )
        .await
    }
}

/// Opens the snapshot session: reads the server's version, begins a repeatable-read
/// transaction and exports its snapshot for pg_dump and the fact readers.
async fn export_snapshot(
    source: &PgSource,
) -> Result<(tokio_postgres::Client, Snapshot), BackupError> {
    let session = source.session().await?;
    let row = session
        .query_one("SELECT current_setting('server_version'), version()", &[])
        .await
        .map_err(|e| query_err("read the server version", e))?;
    let (server_version, server_version_full): (String, String) = (row.get(0), row.get(1));
    session
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(|e| query_err("begin the snapshot transaction", e))?;
    let row = session
        .query_one(
            "SELECT pg_export_snapshot(), \
                    to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .map_err(|e| query_err("export a snapshot", e))?;
    let snapshot = Snapshot {
        server_version,
        server_version_full,
        id: row.get(0),
        at: row.get(1),
    };
    Ok((session, snapshot))
}

/// Every user index as (schema, table, index), for the split to place in per-table files.
async fn list_indexes(
    session: &tokio_postgres::Client,
) -> Result<Vec<(String, String, String)>, BackupError> {
    Ok(session
        .query(
            "SELECT schemaname::text, tablename::text, indexname::text FROM pg_indexes \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(|e| query_err("list the indexes", e))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Writes the derived files with pg_dump in the exported snapshot, two at a time.
async fn dump_derived(
    source: &PgSource,
    snapshot_arg: &str,
    derived: &[Derived],
    out: Output<'_>,
) -> Result<(), BackupError> {
    let runs = derived.iter().map(|d| {
        let mut all = vec![snapshot_arg.to_owned()];
        all.extend(d.args.iter().cloned());
        let path = out.dir.join(&d.rel);
        async move {
            source
                .dump("pg_dump", all, &format!("dumping {}", d.what), &path, true)
                .await?;
            out.done(&d.rel);
            Ok::<_, BackupError>(())
        }
    });
    two_at_a_time(runs).await
}

/// Runs `runs` two at a time; the first error, after all have ended.
async fn two_at_a_time(
    runs: impl Iterator<Item = impl Future<Output = Result<(), BackupError>>>,
) -> Result<(), BackupError> {
    let results: Vec<Result<(), BackupError>> = futures::stream::iter(runs)
        .buffer_unordered(2)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Writes the derived files with pg_restore from the custom archive on this machine, two at a
/// time.
async fn restore_derived(
    local: &PgTools,
    custom_path: &Path,
    custom_rel: &str,
    derived: &[Derived],
    out: Output<'_>,
) -> Result<(), BackupError> {
    let pg_restore = local
        .tool("pg_restore")
        .map_err(BackupError::pg("find pg_restore"))?;
    let runs = derived.iter().map(|d| {
        let mut all = d.args.clone();
        all.extend([
            "-f".to_owned(),
            "-".to_owned(),
            custom_path.display().to_string(),
        ]);
        let run = ToolRun::new(
            "pg_restore",
            pg_restore.clone(),
            format!("writing {} from {custom_rel}", d.what),
        )
        .args(all);
        let path = out.dir.join(&d.rel);
        async move {
            to_private_file(&run, &path).await?;
            out.done(&d.rel);
            Ok::<_, BackupError>(())
        }
    });
    two_at_a_time(runs).await
}

/// Splits the plain SQL into the data-only, per-table and CSV files in one pass (on a blocking
/// thread), then hands them to the archive; returns each table's row count and digest.
async fn split_derived(
    out: Output<'_>,
    files: &SqlFiles,
    csv: &[CsvTable],
    sequences: &[SequenceFacts],
    indexes: &[(String, String, String)],
) -> Result<Vec<TableFacts>, BackupError> {
    let (plain, data) = (out.dir.join(&files.plain), out.dir.join(&files.data));
    let (per_table, csv_tables, sequences, indexes, dir) = (
        files.per_table.clone(),
        csv.to_vec(),
        sequences.to_vec(),
        indexes.to_vec(),
        out.dir.to_path_buf(),
    );
    let tables = tokio::task::spawn_blocking(move || {
        // Beside the custom dump, which keeps a CPU of its own (crate::process).
        let pinned = crate::process::pin_to_background();
        let outs: Vec<TableOut<'_>> = per_table
            .iter()
            .map(|(t, rel)| TableOut {
                table: t,
                path: dir.join(rel),
            })
            .collect();
        let csv_outs: Vec<CsvOut<'_>> = csv_tables
            .iter()
            .map(|c| CsvOut {
                table: c,
                path: dir.join(&c.file),
            })
            .collect();
        let split = split_plain(&plain, &data, &outs, &csv_outs, &sequences, &indexes);
        crate::process::restore_affinity(pinned);
        split
    })
    .await
    .expect("split task does not panic")?;
    out.done(&files.data);
    for (_, rel) in &files.per_table {
        out.done(rel);
    }
    for c in csv {
        out.done(&c.file);
    }
    Ok(tables)
}

/// The versions of the tools that wrote the backup, for the manifest.
async fn tool_versions(source: &PgSource, local: &PgTools) -> BTreeMap<String, String> {
    let mut tools = BTreeMap::new();
    tools.insert("pg_dump".to_owned(), source.tool_version("pg_dump").await);
    tools.insert(
        "pg_dumpall".to_owned(),
        source.tool_version("pg_dumpall").await,
    );
    if let Ok(path) = local.tool("pg_restore") {
        tools.insert(
            "pg_restore".to_owned(),
            tool_version("pg_restore", &path, "--version").await,
        );
    }
    tools
}

/// Whether a dump entry (its type, schema and the first word of its tag, as in pg_restore's
/// listing and pg_dump's section headers) belongs in `table`'s own file, as `pg_dump -t` would
/// select it: the table and its data, its owned sequences (with their values), column defaults,
/// constraints, foreign keys, indexes and triggers.
pub(crate) fn entry_belongs(
    kind: &str,
    schema: &str,
    first: &str,
    table: &TableRef,
    owned_sequences: &[&str],
    own_indexes: &[&str],
) -> bool {
    if schema != table.schema {
        return false;
    }
    match kind {
        "TABLE" | "TABLE DATA" | "CONSTRAINT" | "FK CONSTRAINT" | "TRIGGER" | "DEFAULT" => {
            first == table.name
        }
        "SEQUENCE" | "SEQUENCE OWNED BY" | "SEQUENCE SET" => owned_sequences.contains(&first),
        "INDEX" => own_indexes.contains(&first),
        _ => false,
    }
}

fn query_err(what: &str, source: tokio_postgres::Error) -> BackupError {
    BackupError::Facts(crate::facts::TablesError::Query {
        what: what.to_owned(),
        source,
    })
}

/// A file-name-safe form of a database or table name.
pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_file_holds_what_pg_dump_t_would() {
        let users = TableRef {
            schema: "public".into(),
            name: "users".into(),
            key: vec![],
        };
        let belongs = |kind: &str, first: &str| {
            entry_belongs(
                kind,
                "public",
                first,
                &users,
                &["users_id_seq"],
                &["idx_users_username"],
            )
        };
        for (kind, first) in [
            ("TABLE", "users"),
            ("TABLE DATA", "users"),
            ("SEQUENCE", "users_id_seq"),
            ("SEQUENCE OWNED BY", "users_id_seq"),
            ("SEQUENCE SET", "users_id_seq"),
            ("DEFAULT", "users"),
            ("CONSTRAINT", "users"),
            ("INDEX", "idx_users_username"),
            ("TRIGGER", "users"),
        ] {
            assert!(belongs(kind, first), "{kind} {first}");
        }
        for (kind, first) in [
            ("TABLE", "posts"),
            ("FK CONSTRAINT", "posts"),
            ("INDEX", "idx_posts_author"),
            ("FUNCTION", "users"),
        ] {
            assert!(!belongs(kind, first), "{kind} {first}");
        }
        assert!(!entry_belongs("TABLE", "audit", "users", &users, &[], &[]));
    }

    #[test]
    fn passwords_come_from_the_pods_environment_not_argv() {
        let cmd =
            in_pod_with_password(Some("POSTGRES_PASSWORD"), "PGPASSWORD").expect("valid name");
        assert_eq!(cmd[0..2], ["sh", "-c"]);
        assert!(cmd[2].contains("PGPASSWORD=\"$POSTGRES_PASSWORD\""));
        assert!(in_pod_with_password(Some("X; rm -rf /"), "PGPASSWORD").is_err());
        assert!(
            in_pod_with_password(None, "PGPASSWORD")
                .expect("none")
                .is_empty()
        );
        let cmd =
            in_pod_with_env(None, "PGPASSWORD", &[("PGOPTIONS", "-c a='b c'")]).expect("env only");
        assert_eq!(
            cmd[2],
            r#"PGOPTIONS='-c a='\''b c'\'''; export PGOPTIONS; exec "$@""#
        );
    }
}
