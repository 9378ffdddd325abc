//! Benchmark: our database restore against a bare `pg_restore` of the same archive, and gate
//! evaluation against the restore.
//!
//! `cargo run --release -p harness --example restore_bench [-- USERS POSTS]` (default 100000
//! users, 1000000 posts). Generates the Titanium dataset, dumps it with `pg_dump -Fc`, then in
//! the same run and on the same server:
//! - bare: `pg_restore -d <empty database> archive`, the runbook's command;
//! - ours: `restore::restore_database` into a database the init script already filled with
//!   empty tables (the rebuilt StatefulSet's state), default options;
//! - ours with one job, to show our overhead apart from pg_restore's parallelism;
//! - gates: table facts (counts and digests), sequence facts and the schema rendering of the
//!   restored database, and the gates comparing them with the backup's.
//!
//! Targets: ours <= 1.2 x bare; gates <= 0.5 x ours. Prints the figures and whether each
//! target is met; exits 1 when one is missed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use harness::data::{DatasetSpec, load_dataset, schema_sql_path};
use harness::facts::{render_schema, sequence_facts, table_facts};
use harness::keep::ScratchDir;
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider, create_database};
use harness::restore::{DbArchive, DbRestoreInput, DbRestoreOptions, restore_database};
use harness::verify;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .context("arguments: USERS POSTS")?;
    let spec = DatasetSpec::new(
        20_261_126,
        *args.first().unwrap_or(&100_000),
        *args.get(1).unwrap_or(&1_000_000),
    );
    println!("dataset: {} users, {} posts", spec.users, spec.posts);

    let pg = LocalPostgres::start(LocalOptions::titanium())
        .await
        .context("start postgres")?;
    let params = pg.params();
    let client = params.connect().await?;
    let t = Instant::now();
    load_dataset(&client, &spec).await?;
    println!("generate + load: {:.2} s", secs(t.elapsed()));
    let backup_tables = table_facts(&client).await?;
    let backup_sequences = sequence_facts(&client).await?;
    let backup_schema = render_schema(&client).await?;

    let dir = ScratchDir::new("restore-bench-", "restore benchmark archive")?;
    let archive = dir.path().join("titanium.dump");
    let t = Instant::now();
    let status = tokio::process::Command::new(pg.tools().tool("pg_dump")?)
        .args(["-Fc", "-f"])
        .arg(&archive)
        .envs(params.libpq_env())
        .status()
        .await?;
    ensure!(status.success(), "pg_dump failed: {status}");
    println!(
        "pg_dump -Fc: {:.2} s, {} MiB",
        secs(t.elapsed()),
        std::fs::metadata(&archive)?.len() / (1 << 20)
    );

    // Bare pg_restore into an empty database.
    create_database(&params, "bare").await?;
    let bare = params.with_dbname("bare");
    let t = Instant::now();
    let status = tokio::process::Command::new(pg.tools().tool("pg_restore")?)
        .args(["--exit-on-error", "-d", "bare"])
        .arg(&archive)
        .envs(bare.libpq_env())
        .status()
        .await?;
    ensure!(status.success(), "bare pg_restore failed: {status}");
    let bare_time = t.elapsed();

    // Ours, over the init script's empty tables.
    create_database(&params, "ours").await?;
    let ours = params.with_dbname("ours");
    pg.tools().psql_file(&ours, &schema_sql_path()).await?;
    let input = DbRestoreInput {
        archive: DbArchive::Custom(archive.clone()),
        backup_id: "bench".to_owned(),
    };
    let t = Instant::now();
    let report = restore_database(pg.tools(), &ours, &input, &DbRestoreOptions::default()).await?;
    let ours_time = t.elapsed();
    ensure!(report.restored, "restore did not run: {}", report.plan);
    let jobs = report
        .plan
        .command
        .iter()
        .skip_while(|a| *a != "-j")
        .nth(1)
        .cloned()
        .unwrap_or_default();

    // Ours with one job, to separate our own overhead from pg_restore's parallelism.
    create_database(&params, "ours_one_job").await?;
    let one = params.with_dbname("ours_one_job");
    pg.tools().psql_file(&one, &schema_sql_path()).await?;
    let t = Instant::now();
    restore_database(
        pg.tools(),
        &one,
        &input,
        &DbRestoreOptions {
            jobs: Some(1),
            ..DbRestoreOptions::default()
        },
    )
    .await?;
    let one_job_time = t.elapsed();

    // Gates on the restored database.
    let t = Instant::now();
    let restored = ours.connect().await?;
    let tables = table_facts(&restored).await?;
    let sequences = sequence_facts(&restored).await?;
    let schema = render_schema(&restored).await?;
    let verdicts = [
        verify::row_counts(&backup_tables, &tables),
        verify::digests(&backup_tables, &tables),
        verify::schema(&backup_schema, &schema),
        verify::sequences(&backup_sequences, &sequences),
    ];
    let gates_time = t.elapsed();
    for v in &verdicts {
        ensure!(v.passed, "gate failed after restore: {v}");
    }

    let restore_ratio = secs(ours_time) / secs(bare_time);
    let gate_ratio = secs(gates_time) / secs(ours_time);
    println!(
        "bare pg_restore (1 job, empty database): {:.2} s",
        secs(bare_time)
    );
    println!(
        "our restore (-j {jobs}, over init-script tables; drop {:.2} s, load {:.2} s): {:.2} s",
        report.drop_seconds,
        report.load_seconds,
        secs(ours_time)
    );
    println!(
        "our restore with 1 job (same work as bare, plus planning and the drops): {:.2} s ({:.2}x bare)",
        secs(one_job_time),
        secs(one_job_time) / secs(bare_time)
    );
    println!(
        "restore ratio: {restore_ratio:.2}x (target <= 1.20x): {}",
        if restore_ratio <= 1.2 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "gate evaluation (counts, digests, sequences, schema): {:.2} s",
        secs(gates_time)
    );
    println!(
        "gate ratio: {gate_ratio:.2}x of the restore (target <= 0.50x): {}",
        if gate_ratio <= 0.5 { "met" } else { "MISSED" }
    );
    drop(restored);
    drop(client);
    pg.stop().await?;
    drop(dir);
    Ok(if restore_ratio <= 1.2 && gate_ratio <= 0.5 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
