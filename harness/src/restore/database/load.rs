//! Carrying out a plan: the drops and the load (pg_restore for a custom archive; psql in one
//! transaction for plain SQL and CSV), ANALYZE, and the target's restore mark.

use super::*;

/// A tool's failure as the restore's error about `archive`.
pub(super) fn from_tool(err: crate::process::ToolError, archive: &Path) -> RestoreError {
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
            tables: Vec::new(),
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
            tables: timings.tables,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
    .instrument(span)
    .await
}

/// The refusal of a plan that found data in the target: what it found.
pub(super) fn refusal(plan: DbRestorePlan) -> RestoreError {
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
pub(super) struct LoadTimings {
    drop: f64,
    load: f64,
    analyze: f64,
    tables: Vec<TableLoad>,
}

/// Drops the target's objects and loads the archive as `plan` says, then ANALYZE.
pub(super) async fn load(
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
pub(super) async fn load_custom(
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
        let tables =
            match sectioned::PgRestore::from_command(&plan.command).filter(|_| plan.sectioned) {
                Some(pg_restore) => {
                    sectioned::restore_sectioned(&pg_restore, params, path, deadline).await?
                }
                None => {
                    run_tool(&plan.command, params, path, deadline).await?;
                    Vec::new()
                }
            };
        let load = load_started.elapsed().as_secs_f64();
        // Before the mark: a database marked restored has its statistics.
        let analyze = crate::restore::analyze(params).await?;
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
        Ok::<_, RestoreError>((load, analyze, tables))
    };
    // The drops are committed: a failed load leaves a half-restored target, marked
    // `restoring`. Say so, and how to finish.
    let (load, analyze, tables) = loaded.await.map_err(|source| RestoreError::HalfRestored {
        target: target.clone(),
        backup_id: input.backup_id.clone(),
        source: Box::new(source),
    })?;
    Ok(LoadTimings {
        drop,
        load,
        analyze: analyze.as_secs_f64(),
        tables,
    })
}

/// Plain SQL or CSV: one transaction holds the drops, the dump (or the schema and the CSV
/// files) and the mark, so an interruption changes nothing. Then ANALYZE.
pub(super) async fn load_in_one_transaction(
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
    let analyze = crate::restore::analyze(params).await?;
    Ok(LoadTimings {
        drop: 0.0,
        load,
        analyze: analyze.as_secs_f64(),
        tables: Vec::new(),
    })
}

/// Runs the load `command` (pg_restore or psql, its program first) against `params` within
/// `deadline`; the whole process group (pg_restore's `-j` workers) is stopped with it.
pub(super) async fn run_tool(
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
