//! The plan of a restore: what the target holds (objects, rows, its restore mark), what would
//! be dropped, and the command that loads the archive.

use super::*;

/// The number of pg_restore jobs to use.
pub(super) fn jobs_for(archive: &DbArchive, requested: Option<u32>) -> u32 {
    if !regular_file(archive) {
        return 1;
    }
    requested.unwrap_or_else(default_jobs).max(1)
}

/// Whether the archive is a regular file (read more than once: in parallel, in sections),
/// not a pipe. One that cannot be looked at is treated as a pipe: read once, by pg_restore,
/// whose error then names the problem.
pub(super) fn regular_file(archive: &DbArchive) -> bool {
    std::fs::metadata(archive.path()).is_ok_and(|m| m.is_file())
}

/// The pg_restore jobs a restore uses when none are asked for: the number of CPUs, at most 4.
pub fn default_jobs() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .min(4)
}

/// A user object of the target and the statement that drops it.
pub(super) struct TargetObject {
    pub(super) label: String,
    pub(super) drop: String,
}

pub(super) async fn target_objects(client: &Client) -> Result<Vec<TargetObject>, RestoreError> {
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

pub(super) async fn tables_with_rows(
    client: &Client,
) -> Result<(Vec<String>, Vec<String>), RestoreError> {
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

pub(super) async fn database_mark(client: &Client) -> Result<Option<String>, RestoreError> {
    let row = client
        .query_one("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()", &[])
        .await
        .map_err(RestoreError::query("read the database comment"))?;
    Ok(row
        .get::<_, Option<String>>(0)
        .and_then(|c| c.strip_prefix(MARK_PREFIX).map(str::to_owned)))
}

pub(super) fn mark_sql(dbname: &str, state: &str, backup_id: &str) -> String {
    format!(
        "COMMENT ON DATABASE {} IS {}",
        quote_ident(dbname),
        quote_literal(&format!("{MARK_PREFIX}{state}{backup_id}"))
    )
}

pub(super) fn load_command(
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

pub(super) const DROP_SLOT: &str = "<drop the target's objects>";

pub(super) const MARK_SLOT: &str = "<mark restored>";

/// psql running everything that follows in one transaction, stopping at the first error.
pub(super) fn psql_one_transaction(program: &Path) -> Vec<String> {
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
pub(super) fn copy_from_csv(table: &CsvFile) -> String {
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
pub(super) fn setval_sql(seq: &SequenceFacts) -> String {
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
        sectioned: matches!(input.archive, DbArchive::Custom(_)) && regular_file(&input.archive),
        archive_entries,
        archive_proof,
    })
}
