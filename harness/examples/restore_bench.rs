//! Benchmark: our database restore against a bare `pg_restore` of the same archive, and gate
//! evaluation against the restore.
//!
//! `cargo run --release -p harness --example restore_bench [-- USERS POSTS]` (default 100000
//! users, 1000000 posts). Generates the Titanium dataset, dumps it with `pg_dump -Fc`, then in
//! the same run and on the same server, in this order:
//! - bare -j 1: `pg_restore -d <empty database> archive`, the runbook's command;
//! - ours: `restore::restore_database` into a database the init script already filled with
//!   empty tables (the rebuilt StatefulSet's state), default options (-j N, N = CPUs, at most 4),
//!   handed the archive's SHA-256 as a backup's manifest records it (so it hashes the archive
//!   instead of reading it through);
//! - bare -j N: `pg_restore` with the same number of jobs as ours, the fair peer;
//! - ours -j 1, the fair peer of bare -j 1;
//! - ours -j N without a recorded digest (an archive of unknown origin, read through first);
//! - gates: table facts (counts and digests), sequence facts and the schema rendering of the
//!   restored database, and the gates comparing them with the backup's.
//!
//! Targets: each of ours <= 1.0 x the bare run with the same jobs (ours also drops the init
//! script's tables and runs ANALYZE; the detail says the ratio without ANALYZE); gates <= 0.5 x
//! ours. Prints a `BENCH` line per ratio (see `support/result.rs`); exits 1 when one is missed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use harness::data::{DatasetSpec, load_dataset, schema_sql_path};
use harness::facts::{render_schema, sequence_facts, table_facts};
use harness::keep::ScratchDir;
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider, create_database};
use harness::restore::{DbArchive, DbRestoreInput, DbRestoreOptions, restore_database};
use harness::verify;

#[path = "support/result.rs"]
mod result;
use result::Target;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `pg_restore -j JOBS` of `archive` into a new, empty database `name`.
async fn bare_restore(
    pg: &LocalPostgres,
    params: &harness::pg::ConnParams,
    archive: &std::path::Path,
    name: &str,
    jobs: u32,
) -> Result<Duration> {
    create_database(params, name).await?;
    let target = params.with_dbname(name);
    let t = Instant::now();
    let status = tokio::process::Command::new(pg.tools().tool("pg_restore")?)
        .args(["--exit-on-error", "-j", &jobs.to_string(), "-d", name])
        .arg(archive)
        .envs(target.libpq_env())
        .status()
        .await?;
    ensure!(
        status.success(),
        "bare pg_restore -j {jobs} failed: {status}"
    );
    Ok(t.elapsed())
}

/// Our restore of `archive` into a new database `name` that the init script filled with
/// empty tables.
async fn our_restore(
    pg: &LocalPostgres,
    params: &harness::pg::ConnParams,
    archive: &std::path::Path,
    name: &str,
    jobs: Option<u32>,
    recorded_sha256: Option<String>,
) -> Result<(Duration, harness::restore::DbRestoreReport)> {
    create_database(params, name).await?;
    let target = params.with_dbname(name);
    pg.tools().psql_file(&target, &schema_sql_path()).await?;
    let input = DbRestoreInput {
        archive: DbArchive::Custom(archive.to_owned()),
        backup_id: "bench".to_owned(),
        recorded_sha256,
    };
    let options = DbRestoreOptions {
        jobs,
        ..DbRestoreOptions::default()
    };
    let t = Instant::now();
    let report = restore_database(pg.tools(), &target, &input, &options).await?;
    let time = t.elapsed();
    ensure!(report.restored, "restore did not run: {}", report.plan);
    Ok((time, report))
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
    // The digest a backup records in its manifest; ours is handed it, as a restore from a
    // backup is, and hashes the archive again (timed) instead of reading it through.
    let recorded = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(&archive)?))
    };

    // In the same run, each of ours next to a bare pg_restore with the same number of jobs:
    // bare -j1 (the runbook's command), ours -jN, bare -jN, ours -j1. The bare runs go into
    // empty databases; ours over the init script's empty tables (the rebuilt StatefulSet's
    // state), so ours also drops them and runs ANALYZE, which bare does not.
    let bare_one = bare_restore(&pg, &params, &archive, "bare_one_job", 1).await?;
    let (ours_time, ours_report) =
        our_restore(&pg, &params, &archive, "ours", None, Some(recorded.clone())).await?;
    let jobs: u32 = ours_report
        .plan
        .command
        .windows(2)
        .find(|w| w[0] == "-j")
        .and_then(|w| w[1].parse().ok())
        .with_context(|| {
            format!(
                "no -j in our restore's command {:?}",
                ours_report.plan.command
            )
        })?;
    let bare_same = bare_restore(&pg, &params, &archive, "bare_same_jobs", jobs).await?;
    let (one_job_time, one_report) = our_restore(
        &pg,
        &params,
        &archive,
        "ours_one_job",
        Some(1),
        Some(recorded.clone()),
    )
    .await?;
    // Before the recorded digest: an archive of unknown origin is read through first.
    let (read_through_time, _) = our_restore(
        &pg,
        &params,
        &archive,
        "ours_read_through",
        Some(jobs),
        None,
    )
    .await?;

    // Gates on the restored database.
    let t = Instant::now();
    let restored = params.with_dbname("ours").connect().await?;
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

    let restore_ratio = secs(ours_time) / secs(bare_same);
    let one_job_ratio = secs(one_job_time) / secs(bare_one);
    let gate_ratio = secs(gates_time) / secs(ours_time);
    let without_analyze = |r: &harness::restore::DbRestoreReport| r.seconds - r.analyze_seconds;
    println!(
        "bare pg_restore -j 1 (empty database): {:.2} s",
        secs(bare_one)
    );
    println!(
        "bare pg_restore -j {jobs} (empty database): {:.2} s",
        secs(bare_same)
    );
    for (label, time, r) in [
        (format!("-j {jobs}"), ours_time, &ours_report),
        ("-j 1".to_owned(), one_job_time, &one_report),
    ] {
        println!(
            "our restore {label} (over init-script tables): {:.2} s (drop {:.2} s, load {:.2} s, ANALYZE {:.2} s)",
            secs(time),
            r.drop_seconds,
            r.load_seconds,
            r.analyze_seconds
        );
    }
    println!(
        "gate evaluation (counts, digests, sequences, schema): {:.2} s",
        secs(gates_time)
    );
    let restore_met = result::report(
        &format!(
            "restore, -j {jobs} ({} users, {} posts)",
            spec.users, spec.posts
        ),
        &format!("pg_restore -j {jobs}"),
        restore_ratio,
        Target::AtMost(1.0),
        &format!(
            "{:.2} s vs {:.2} s; without our ANALYZE {:.2}x; an archive without a recorded \
             digest, read through first: {:.2}x",
            secs(ours_time),
            secs(bare_same),
            without_analyze(&ours_report) / secs(bare_same),
            secs(read_through_time) / secs(bare_same)
        ),
    );
    let one_job_met = result::report(
        &format!("restore, -j 1 ({} users, {} posts)", spec.users, spec.posts),
        "pg_restore -j 1",
        one_job_ratio,
        Target::AtMost(1.0),
        &format!(
            "{:.2} s vs {:.2} s; without our ANALYZE {:.2}x",
            secs(one_job_time),
            secs(bare_one),
            without_analyze(&one_report) / secs(bare_one)
        ),
    );
    let gate_met = result::report(
        "gates after the restore (counts, digests, sequences, schema)",
        "our restore",
        gate_ratio,
        Target::AtMost(0.5),
        &format!("{:.2} s vs {:.2} s", secs(gates_time), secs(ours_time)),
    );
    drop(restored);
    drop(client);
    pg.stop().await?;
    drop(dir);
    Ok(if restore_met && one_job_met && gate_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
