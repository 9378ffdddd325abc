//! The PostgreSQL part of a backup: one exported snapshot, every dump taken in it, and the
//! row counts and digests read in it too.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::archive::ArchiveFeed;
use super::csv::{CsvTable, plan_csv};
use super::exec::PodRef;
use super::files::{ToolRun, ensure_parent, tool_version};
use super::manifest::StepTiming;
use super::split::{CsvOut, TableOut, split_plain};
use super::{BackupError, PlainFrom};
use crate::facts::{SequenceFacts, TableFacts, TableRef, list_tables, sequence_facts, table_facts};
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
    async fn dump(
        &self,
        program: &str,
        args: Vec<String>,
        what: &str,
        out: &Path,
    ) -> Result<(), BackupError> {
        match self {
            PgSource::Direct { params, tools } => {
                let path = tools
                    .tool(program)
                    .map_err(BackupError::pg(format!("find {program}")))?;
                ToolRun::new(program, path, what)
                    .args(args)
                    .envs(params.libpq_env())
                    .to_file(out)
                    .await
            }
            PgSource::Kube(k) => {
                let mut command = in_pod_with_password(k.password_env.as_deref(), "PGPASSWORD")?;
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
    let Some(var) = source_var else {
        return Ok(Vec::new());
    };
    let valid = !var.is_empty()
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !var.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(BackupError::SecretMissing {
            name: var.to_owned(),
            detail: "not a valid environment variable name".to_owned(),
        });
    }
    let script = format!(
        "if [ -n \"${{{var}:-}}\" ]; then {target_var}=\"${var}\"; export {target_var}; fi; exec \"$@\""
    );
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
    /// Row counts and digests per table, read in the snapshot.
    pub tables: Vec<TableFacts>,
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

/// Backs up the database into `dir/postgres/`.
pub(crate) async fn backup_postgres(
    source: &PgSource,
    local: &PgTools,
    plain_from: PlainFrom,
    dir: &Path,
    origin: Instant,
    feed: Option<&ArchiveFeed>,
) -> Result<PgOutcome, BackupError> {
    // Hands each finished file to the archive, which compresses it while the rest runs.
    let done = |rel: &str| {
        if let Some(feed) = feed {
            feed.add(rel);
        }
    };
    let db = source.dbname().to_owned();
    let file_name = sanitize(&db);
    let custom_rel = format!("postgres/{file_name}.dump");
    let custom_path = ensure_parent(dir, &custom_rel)?;
    let mut steps = Vec::new();

    // The session that exports the snapshot, held open until every reader has imported it.
    let started = Instant::now();
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
    let (snapshot_id, snapshot_at): (String, String) = (row.get(0), row.get(1));
    steps.push(step("postgres: export snapshot", started, origin));
    tracing::info!(snapshot = %snapshot_id, database = %db, "snapshot exported");

    let snapshot_arg = format!("--snapshot={snapshot_id}");
    // The tables, as the snapshot sees them: the per-table files are named after them.
    let table_refs = list_tables(&session).await?;
    // The CSV files' tables, columns and load order (catalog only; the rows come from the split).
    let csv = plan_csv(&session, &table_refs).await?;
    if !csv.is_empty() {
        ensure_parent(dir, "postgres/csv/x")?;
    }
    let plain_rel = format!("postgres/{file_name}-full.sql");
    let schema_rel = format!("postgres/{file_name}-schema.sql");
    let data_rel = format!("postgres/{file_name}-data.sql");
    let table_files: BTreeMap<String, String> = table_refs
        .iter()
        .map(|t| {
            let key = format!("{}.{}", t.schema, t.name);
            let rel = format!("postgres/tables/{}.sql", sanitize(&key));
            (key, rel)
        })
        .collect();
    if !table_files.is_empty() {
        ensure_parent(dir, "postgres/tables/x")?;
    }
    // Plain and schema-only SQL come from pg_dump (or pg_restore); the data-only and per-table
    // files are split out of the plain SQL here, in one pass (see `split.rs`).
    let derived: Vec<(String, &'static str, Vec<String>)> = vec![
        (plain_rel.clone(), "plain SQL", vec![]),
        (
            schema_rel.clone(),
            "schema only",
            vec!["--schema-only".to_owned()],
        ),
    ];
    let per_table: Vec<(TableRef, String)> = table_refs
        .iter()
        .map(|t| {
            (
                t.clone(),
                table_files[&format!("{}.{}", t.schema, t.name)].clone(),
            )
        })
        .collect();

    // Sequences are not transactional: read them before pg_dump starts, so that what the
    // dump records (read a moment later) is never behind what the manifest says.
    let sequences = sequence_facts(&session).await?;
    let indexes: Vec<(String, String, String)> = session
        .query(
            "SELECT schemaname::text, tablename::text, indexname::text FROM pg_indexes \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(|e| query_err("list the indexes", e))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let split = || {
        let (plain, data) = (dir.join(&plain_rel), dir.join(&data_rel));
        let (per_table, csv, sequences, indexes, dir) = (
            per_table.clone(),
            csv.clone(),
            sequences.clone(),
            indexes.clone(),
            dir.to_path_buf(),
        );
        let done = &done;
        let (data_rel, rels): (String, Vec<String>) = (
            data_rel.clone(),
            per_table
                .iter()
                .map(|(_, r)| r.clone())
                .chain(csv.iter().map(|c| c.file.clone()))
                .collect(),
        );
        async move {
            tokio::task::spawn_blocking(move || {
                let outs: Vec<TableOut<'_>> = per_table
                    .iter()
                    .map(|(t, rel)| TableOut {
                        table: t,
                        path: dir.join(rel),
                    })
                    .collect();
                let csv_outs: Vec<CsvOut<'_>> = csv
                    .iter()
                    .map(|c| CsvOut {
                        table: c,
                        path: dir.join(&c.file),
                    })
                    .collect();
                split_plain(&plain, &data, &outs, &csv_outs, &sequences, &indexes)
            })
            .await
            .expect("split task does not panic")?;
            done(&data_rel);
            for rel in &rels {
                done(rel);
            }
            Ok::<_, BackupError>(())
        }
    };

    let dump = async {
        let started = Instant::now();
        source
            .dump(
                "pg_dump",
                vec![snapshot_arg.clone(), "-Fc".to_owned()],
                "dumping (custom format)",
                &custom_path,
            )
            .await?;
        done(&custom_rel);
        Ok::<_, BackupError>(step("postgres: pg_dump -Fc", started, origin))
    };
    let facts = async {
        let started = Instant::now();
        let tables = table_facts(&session).await?;
        let schema = crate::facts::render_schema(&session).await?;
        Ok::<_, BackupError>((
            tables,
            schema,
            step("postgres: row counts, digests and schema", started, origin),
        ))
    };
    let globals_rel = "postgres/globals.sql".to_owned();
    let globals_path = dir.join(&globals_rel);
    let globals = async {
        let started = Instant::now();
        source
            .dump(
                "pg_dumpall",
                vec!["--globals-only".to_owned()],
                "dumping roles (globals only)",
                &globals_path,
            )
            .await?;
        done(&globals_rel);
        Ok::<_, BackupError>(step("postgres: pg_dumpall --globals-only", started, origin))
    };
    // From the database: plain and schema-only are pg_dumps in the snapshot the session holds,
    // running beside the custom dump (which is bound by its compression, not the server).
    let from_database = async {
        if plain_from != PlainFrom::Database {
            return Ok::<_, BackupError>(None);
        }
        let started = Instant::now();
        let runs = derived.iter().map(|(rel, what, args)| {
            let mut all = vec![snapshot_arg.clone()];
            all.extend(args.iter().cloned());
            let out = dir.join(rel);
            let done = &done;
            async move {
                source
                    .dump("pg_dump", all, &format!("dumping {what}"), &out)
                    .await?;
                done(rel);
                Ok::<_, BackupError>(())
            }
        });
        let results: Vec<Result<(), BackupError>> = futures::stream::iter(runs)
            .buffer_unordered(2)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        split().await?;
        Ok(Some(step(
            "postgres: plain and schema SQL (pg_dump), data and per-table (split)",
            started,
            origin,
        )))
    };
    let (dump_step, (tables, schema, facts_step), globals_step, derived_step) =
        tokio::try_join!(dump, facts, globals, from_database)?;
    steps.extend([dump_step, facts_step, globals_step]);
    // pg_dump has its own copy of the snapshot: release the server's.
    session
        .batch_execute("COMMIT")
        .await
        .map_err(|e| query_err("end the snapshot transaction", e))?;
    drop(session);

    let derived_from = match plain_from {
        PlainFrom::Database => {
            steps.extend(derived_step);
            format!(
                "plain and schema-only SQL: pg_dump {snapshot_arg} against the database, beside the custom dump; \
                 data-only and per-table SQL: split from the plain SQL"
            )
        }
        PlainFrom::Archive => {
            let started = Instant::now();
            // The database is read once; the rest comes from the archive, here.
            let pg_restore = local
                .tool("pg_restore")
                .map_err(BackupError::pg("find pg_restore"))?;
            let runs = derived.iter().map(|(rel, what, args)| {
                let mut all = args.clone();
                all.extend([
                    "-f".to_owned(),
                    "-".to_owned(),
                    custom_path.display().to_string(),
                ]);
                let run = ToolRun::new(
                    "pg_restore",
                    pg_restore.clone(),
                    format!("writing {what} from {custom_rel}"),
                )
                .args(all);
                let out = dir.join(rel);
                let done = &done;
                async move {
                    run.to_file(&out).await?;
                    done(rel);
                    Ok::<_, BackupError>(())
                }
            });
            let results: Vec<Result<(), BackupError>> = futures::stream::iter(runs)
                .buffer_unordered(2)
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>, _>>()?;
            split().await?;
            steps.push(step(
                "postgres: plain and schema SQL (pg_restore), data and per-table (split)",
                started,
                origin,
            ));
            format!(
                "plain and schema-only SQL: pg_restore of {custom_rel} on this machine (the database was read once, \
                 by pg_dump {snapshot_arg}); data-only and per-table SQL: split from the plain SQL"
            )
        }
    };

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

    Ok(PgOutcome {
        manifest: PgManifest {
            source: source.describe(),
            database: db,
            server_version,
            server_version_full,
            snapshot_id,
            snapshot_at,
            tables,
            sequences,
            schema,
            custom_dump: custom_rel,
            plain: plain_rel,
            schema_only: schema_rel,
            data_only: data_rel,
            table_files,
            csv,
            globals: globals_rel,
            derived_from,
        },
        steps,
        tools,
    })
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
    }
}
