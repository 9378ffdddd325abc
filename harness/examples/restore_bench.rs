//! Benchmark: our database restore against a bare `pg_restore` of the same archive, and gate
//! evaluation against the restore.
//!
//! `cargo run --release -p harness --example restore_bench [-- USERS POSTS [ROUNDS]]` (default
//! 100000 users, 1000000 posts, 3 rounds). Generates the Titanium dataset, dumps it with
//! `pg_dump -Fc`, then in the same run and on the same server, ROUNDS times, alternating which
//! of each pair goes first, with a CHECKPOINT before every timed run:
//! - bare -j N (N = ours's default: CPUs, at most 4) and bare -j 1: `pg_restore -d <empty
//!   database> archive`, the runbook's command; then, timed apart, ANALYZE of what it loaded
//!   (the PostgreSQL docs' advice after a restore);
//! - ours -j N and -j 1: `restore::restore_database` into a database the init script already
//!   filled with empty tables (the rebuilt StatefulSet's state), handed the archive's SHA-256
//!   as a backup's manifest records it (so it hashes the archive instead of reading it
//!   through); it also drops the init script's tables and runs ANALYZE. It restores in
//!   sections, N tables' rows at a time over N connections, as bare -j N loads N tables at a
//!   time; each table's rows are converted to binary COPY in this process (bare pg_restore's
//!   workers send text), so ours uses more client CPU for the same number of connections;
//! - once, ours -j N without a recorded digest (an archive of unknown origin, read through
//!   first);
//! - the plain SQL dump (`pg_dump -Fp` of the same data), ROUNDS times, alternating: bare
//!   `psql -v ON_ERROR_STOP=1 < dump.sql` into an empty database (the runbook's 방법 A), then
//!   ANALYZE timed apart; ours `restore --method sql` (psql in one transaction over the init
//!   script's tables, then ANALYZE). One connection on both sides. What ours loaded in the
//!   first round is checked against the backup's counts and digests;
//! - gates: table facts (counts and digests), sequence facts and the schema rendering of the
//!   restored database, and the gates comparing them with the backup's.
//!
//! Targets: the median over the rounds of ours / bare with the same jobs (for the plain SQL,
//! ours / bare psql) <= 1.0 (the detail gives the spread, the ratio without our ANALYZE and
//! against bare + ANALYZE); gates <= 0.5 x ours. Prints a `BENCH` line per ratio (see `support/result.rs`); exits 1 when one is missed.

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
    archive: DbArchive,
    name: &str,
    jobs: Option<u32>,
    recorded_sha256: Option<String>,
) -> Result<(Duration, harness::restore::DbRestoreReport)> {
    create_database(params, name).await?;
    let target = params.with_dbname(name);
    pg.tools().psql_file(&target, &schema_sql_path()).await?;
    let input = DbRestoreInput {
        archive,
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

/// The runbook's 방법 A, bare: `psql -v ON_ERROR_STOP=1 -d <empty database> < dump.sql`.
async fn bare_psql(
    pg: &LocalPostgres,
    params: &harness::pg::ConnParams,
    sql: &std::path::Path,
    name: &str,
) -> Result<Duration> {
    create_database(params, name).await?;
    let target = params.with_dbname(name);
    let t = Instant::now();
    let status = tokio::process::Command::new(pg.tools().tool("psql")?)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", name])
        .stdin(std::fs::File::open(sql)?)
        .stdout(std::process::Stdio::null())
        .envs(target.libpq_env())
        .status()
        .await?;
    ensure!(status.success(), "bare psql < dump.sql failed: {status}");
    Ok(t.elapsed())
}

/// The bare side of a pair.
enum Bare<'a> {
    /// `pg_restore -j JOBS` of the custom archive.
    PgRestore {
        archive: &'a std::path::Path,
        jobs: u32,
    },
    /// `psql < dump.sql`.
    Psql { sql: &'a std::path::Path },
}

/// One round of a pair, in the order given, a CHECKPOINT before each timed run (so no run
/// pays for the dirty buffers of the one before): `bare` into a new empty database
/// `bare_name`, then its ANALYZE timed apart (what the PostgreSQL docs advise after a
/// restore); ours of `(archive, recorded digest)` into `ours_name`, with `jobs` (none: one
/// connection, recorded as 1). Prints the pair's line, headed `label`.
#[allow(clippy::too_many_arguments)]
async fn run_pair(
    label: &str,
    pg: &LocalPostgres,
    params: &harness::pg::ConnParams,
    bare: Bare<'_>,
    bare_name: &str,
    (archive, recorded): (DbArchive, Option<String>),
    ours_name: &str,
    jobs: Option<u32>,
    bare_first: bool,
) -> Result<(Pair, harness::restore::DbRestoreReport)> {
    let mut bare_run = None;
    let mut ours = None;
    let order = if bare_first {
        [true, false]
    } else {
        [false, true]
    };
    for bare_now in order {
        checkpoint(params).await?;
        if bare_now {
            let time = match bare {
                Bare::PgRestore { archive, jobs } => {
                    bare_restore(pg, params, archive, bare_name, jobs).await?
                }
                Bare::Psql { sql } => bare_psql(pg, params, sql, bare_name).await?,
            };
            let analyze = harness::restore::analyze(&params.with_dbname(bare_name))
                .await?
                .as_secs_f64();
            bare_run = Some((time, analyze));
        } else {
            ours = Some(
                our_restore(
                    pg,
                    params,
                    archive.clone(),
                    ours_name,
                    jobs,
                    recorded.clone(),
                )
                .await?,
            );
        }
    }
    let (bare, bare_analyze) = bare_run.context("the bare run ran")?;
    let (ours, report) = ours.context("our restore ran")?;
    println!(
        "{label}: bare {:.2} s, ours {:.2} s (drop {:.2} s, load {:.2} s, ANALYZE {:.2} s), {}",
        secs(bare),
        secs(ours),
        report.drop_seconds,
        report.load_seconds,
        report.analyze_seconds,
        if bare_first {
            "bare first"
        } else {
            "ours first"
        },
    );
    let pair = Pair {
        jobs: jobs.unwrap_or(1),
        bare,
        ours,
        analyze: report.analyze_seconds,
        bare_analyze,
    };
    Ok((pair, report))
}

/// One round's pair: ours and the bare pg_restore with the same jobs.
struct Pair {
    jobs: u32,
    bare: Duration,
    ours: Duration,
    analyze: f64,
    /// ANALYZE of the bare run's database, after it (not in `bare`).
    bare_analyze: f64,
}

/// Median, smallest and largest.
fn median_and_spread(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// The rounds of one pairing: the median ratio ours / bare, the bare median, and the detail
/// (medians, the ratio's spread, the ratio without our ANALYZE, and against bare followed by
/// ANALYZE, which `then_analyze` names).
fn summarise(pairs: &[&Pair], then_analyze: &str) -> (f64, f64, String) {
    let ratios = median_and_spread(pairs.iter().map(|p| secs(p.ours) / secs(p.bare)));
    let without = median_and_spread(
        pairs
            .iter()
            .map(|p| (secs(p.ours) - p.analyze) / secs(p.bare)),
    );
    let with_analyze = median_and_spread(
        pairs
            .iter()
            .map(|p| secs(p.ours) / (secs(p.bare) + p.bare_analyze)),
    );
    let (bare_median, _, _) = median_and_spread(pairs.iter().map(|p| secs(p.bare)));
    let (ours_median, _, _) = median_and_spread(pairs.iter().map(|p| secs(p.ours)));
    let detail = format!(
        "median of {} alternating rounds: {ours_median:.2} s vs {bare_median:.2} s, ratio \
         spread {:.2} to {:.2}; without our ANALYZE {:.2}x; against {then_analyze} {:.2}x",
        pairs.len(),
        ratios.1,
        ratios.2,
        without.0,
        with_analyze.0
    );
    (ratios.0, bare_median, detail)
}

/// `pg_dump -F<format> -f path` of the server's database, its time and size printed.
async fn dump(
    pg: &LocalPostgres,
    params: &harness::pg::ConnParams,
    format: &str,
    path: &std::path::Path,
) -> Result<()> {
    let t = Instant::now();
    let status = tokio::process::Command::new(pg.tools().tool("pg_dump")?)
        .args([format!("-F{format}").as_str(), "-f"])
        .arg(path)
        .envs(params.libpq_env())
        .status()
        .await?;
    ensure!(status.success(), "pg_dump -F{format} failed: {status}");
    println!(
        "pg_dump -F{format}: {:.2} s, {} MiB",
        secs(t.elapsed()),
        std::fs::metadata(path)?.len() / (1 << 20)
    );
    Ok(())
}

/// A checkpoint, so that the next timed run does not pay for the last one's dirty buffers.
async fn checkpoint(params: &harness::pg::ConnParams) -> Result<()> {
    params.connect().await?.batch_execute("CHECKPOINT").await?;
    Ok(())
}

async fn drop_database(params: &harness::pg::ConnParams, name: &str) -> Result<()> {
    params
        .connect()
        .await?
        .batch_execute(&format!("DROP DATABASE \"{name}\""))
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .context("arguments: USERS POSTS [ROUNDS]")?;
    // The restore's own account of its phases, on standard error with REHEARSAL_LOG=info.
    if let Ok(filter) = std::env::var("REHEARSAL_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let rounds = *args.get(2).unwrap_or(&3) as usize;
    ensure!(rounds > 0, "ROUNDS must be at least 1");
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
    dump(&pg, &params, "c", &archive).await?;
    // The plain SQL dump of the same data, for the runbook's 방법 A (`psql < dump.sql`).
    let plain = dir.path().join("titanium.sql");
    dump(&pg, &params, "p", &plain).await?;
    // The digest a backup records in its manifest; ours is handed it, as a restore from a
    // backup is, and hashes the archive again (timed) instead of reading it through.
    let recorded = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(&archive)?))
    };

    // In the same run, each of ours next to a bare pg_restore with the same number of jobs,
    // ROUNDS times, alternating which goes first; a CHECKPOINT before every timed run, so no
    // run pays for the dirty buffers of the one before. The bare runs go into empty
    // databases; ours over the init script's empty tables (the rebuilt StatefulSet's state),
    // so ours also drops them and runs ANALYZE, which bare does not. Each database is dropped
    // after its round, except ours -jN of the first round (the gates read it).
    let jobs = harness::restore::default_jobs();
    let mut pairs: Vec<Pair> = Vec::new();
    for round in 0..rounds {
        for j in [jobs, 1] {
            let bare_name = format!("bare_j{j}_r{round}");
            let ours_name = format!("ours_j{j}_r{round}");
            let bare_first = (round + j as usize).is_multiple_of(2);
            let (pair, _) = run_pair(
                &format!("round {round}, -j {j}"),
                &pg,
                &params,
                Bare::PgRestore {
                    archive: &archive,
                    jobs: j,
                },
                &bare_name,
                (DbArchive::Custom(archive.clone()), Some(recorded.clone())),
                &ours_name,
                Some(j),
                bare_first,
            )
            .await?;
            drop_database(&params, &bare_name).await?;
            if !(round == 0 && j == jobs) {
                drop_database(&params, &ours_name).await?;
            }
            pairs.push(pair);
        }
    }
    // Before the recorded digest: an archive of unknown origin is read through first.
    checkpoint(&params).await?;
    let (read_through_time, _) = our_restore(
        &pg,
        &params,
        DbArchive::Custom(archive.clone()),
        "ours_read_through",
        Some(jobs),
        None,
    )
    .await?;
    drop_database(&params, "ours_read_through").await?;

    // The plain SQL dump: ours (`restore --method sql`: psql in one transaction over the init
    // script's tables, then ANALYZE) next to a bare `psql < dump.sql` into an empty database,
    // ROUNDS times, alternating which goes first. psql is one connection on both sides.
    let mut sql_pairs: Vec<Pair> = Vec::new();
    for round in 0..rounds {
        let bare_name = format!("bare_sql_r{round}");
        let ours_name = format!("ours_sql_r{round}");
        let bare_first = round.is_multiple_of(2);
        let (pair, _) = run_pair(
            &format!("round {round}, plain SQL (the drop inside the load)"),
            &pg,
            &params,
            Bare::Psql { sql: &plain },
            &bare_name,
            (DbArchive::PlainSql(plain.clone()), None),
            &ours_name,
            None,
            bare_first,
        )
        .await?;
        if round == 0 {
            // What ours loaded is the backup's data: a fast restore of nothing is no result.
            let restored = params.with_dbname(&ours_name).connect().await?;
            let tables = table_facts(&restored).await?;
            for v in [
                verify::row_counts(&backup_tables, &tables),
                verify::digests(&backup_tables, &tables),
            ] {
                ensure!(v.passed, "gate failed after the plain SQL restore: {v}");
            }
        }
        drop_database(&params, &bare_name).await?;
        drop_database(&params, &ours_name).await?;
        sql_pairs.push(pair);
    }
    let ours_name = format!("ours_j{jobs}_r0");

    // Gates on the restored database.
    let t = Instant::now();
    let restored = params.with_dbname(&ours_name).connect().await?;
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

    let ours_first_round = pairs
        .iter()
        .find(|p| p.jobs == jobs)
        .context("a round ran")?
        .ours;
    let gate_ratio = secs(gates_time) / secs(ours_first_round);
    println!(
        "gate evaluation (counts, digests, sequences, schema): {:.2} s",
        secs(gates_time)
    );
    let mut met = true;
    for j in [jobs, 1] {
        let of_j: Vec<&Pair> = pairs.iter().filter(|p| p.jobs == j).collect();
        let (ratio, bare_median, mut detail) = summarise(
            &of_j,
            "pg_restore then ANALYZE (the PostgreSQL docs' advice)",
        );
        if j == jobs {
            detail.push_str(&format!(
                "; an archive without a recorded digest, read through first: {:.2}x",
                secs(read_through_time) / bare_median
            ));
        }
        met &= result::report(
            &format!(
                "restore, -j {j} ({} users, {} posts)",
                spec.users, spec.posts
            ),
            &format!("pg_restore -j {j}"),
            ratio,
            Target::AtMost(1.0),
            &detail,
        );
    }
    let sql_pairs: Vec<&Pair> = sql_pairs.iter().collect();
    let (ratio, _, detail) = summarise(&sql_pairs, "psql then ANALYZE");
    met &= result::report(
        &format!(
            "restore --method sql, one transaction ({} users, {} posts)",
            spec.users, spec.posts
        ),
        "psql < dump.sql",
        ratio,
        Target::AtMost(1.0),
        &detail,
    );
    let gate_met = result::report(
        "gates after the restore (counts, digests, sequences, schema)",
        "our restore",
        gate_ratio,
        Target::AtMost(0.5),
        &format!(
            "{:.2} s vs {:.2} s",
            secs(gates_time),
            secs(ours_first_round)
        ),
    );
    drop(restored);
    drop(client);
    pg.stop().await?;
    drop(dir);
    Ok(if met && gate_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
