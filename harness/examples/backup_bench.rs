//! Benchmark of `harness::backup`: a full backup (custom dump, digests of every table in the
//! snapshot, plain/schema/data/per-table SQL, globals, manifest, archive) against a bare
//! `pg_dump -Fc` of the same database, in the same run (one bare run before ours, one after).
//! Target: at most 1.15x (issue 17). Prints a `BENCH` line (see `support/result.rs`) and exits
//! 1 when the target is missed.
//!
//! `cargo run --release -p harness --example backup_bench -- --users 100000 --posts 1000000`
//!
//! It also prints peak memory: this process's (`VmHWM`, reset before the backup) and the
//! backup's whole process tree (this process plus its pg_dump/pg_restore children, sampled
//! from /proc every 20 ms; the PostgreSQL server is the database's, not the backup's).
//! Target: under 200 MB.

use std::time::Instant;

use anyhow::{Context, bail};

#[path = "support/result.rs"]
mod result;
use harness::backup::{BackupOptions, PgSource, backup};
use harness::data::{DatasetSpec, load_dataset};
use harness::keep::ScratchDir;
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider};
use result::Target;

struct Args {
    users: u32,
    posts: u32,
    seed: u64,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        users: 100_000,
        posts: 1_000_000,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--users" => a.users = value()?.parse()?,
            "--posts" => a.posts = value()?.parse()?,
            "--seed" => a.seed = value()?.parse()?,
            other => bail!("unknown argument {other}; use --users N --posts N [--seed N]"),
        }
    }
    Ok(a)
}

/// Peak resident set of this process, in KiB.
fn vm_hwm_kib() -> Option<u64> {
    harness::process::own_peak_rss()
        .ok()
        .map(|bytes| bytes / 1024)
}

/// Resident set of one process, in KiB.
fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// This process and its direct children (pg_dump, pg_restore, ...), except `exclude` (the
/// PostgreSQL server, which is the database's memory, not the backup's): total RSS in KiB.
fn tree_rss_kib(exclude: Option<u32>) -> u64 {
    let me = std::process::id();
    let mut total = rss_kib("self").unwrap_or(0);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if Some(pid) == exclude {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok());
        if ppid == Some(me) {
            total += rss_kib(&name).unwrap_or(0);
        }
    }
    total
}

/// CPU seconds (user + system) of process `pid` and of its children it has waited for, from
/// `/proc/<pid>/stat` (fields 14 to 17, in clock ticks).
fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, rest) = stat
        .rsplit_once(") ")
        .context("no command name in /proc stat")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state): utime is field 14, so index 11.
    let ticks: u64 = fields
        .get(11..15)
        .context("short /proc stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    let per_second =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("no CLK_TCK")? as f64;
    Ok(ticks as f64 / per_second)
}

/// CPU seconds so far of this process with the children it reaped (pg_dump, pg_restore) and
/// of the PostgreSQL server with the backends it reaped (each dump's connection ends before
/// the figure is read).
fn cpu_total(server: Option<u32>) -> anyhow::Result<f64> {
    let server = server.context("the PostgreSQL server's pid is unknown")?;
    Ok(cpu_seconds("self")? + cpu_seconds(&server.to_string())?)
}

/// Resets this process's peak RSS (Linux: `echo 5 > /proc/self/clear_refs`).
fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

async fn bare_pg_dump(pg: &LocalPostgres, out: &std::path::Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = tokio::process::Command::new(pg.tools().tool("pg_dump")?)
        .args(["-Fc", "-f"])
        .arg(out)
        .envs(pg.params().libpq_env())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "bare pg_dump failed: {status}");
    Ok(started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = parse()?;
    let pg = LocalPostgres::start(LocalOptions::titanium()).await?;
    let client = pg.params().connect().await?;
    let stats = load_dataset(
        &client,
        &DatasetSpec::new(args.seed, args.users, args.posts),
    )
    .await?;
    client.batch_execute("VACUUM ANALYZE").await?;
    let size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    println!(
        "dataset: {} users, {} posts, database {:.0} MB (loaded in {:.1} s)",
        stats.users,
        stats.posts,
        size as f64 / 1e6,
        stats.elapsed.as_secs_f64()
    );

    let scratch = ScratchDir::new("backup-bench-", "benchmark output")?;
    let cpu_before = cpu_total(pg.pid())?;
    let bare1 = bare_pg_dump(&pg, &scratch.path().join("bare1.dump")).await?;
    let bare_cpu = cpu_total(pg.pid())? - cpu_before;
    let bare_size = std::fs::metadata(scratch.path().join("bare1.dump"))?.len();
    println!(
        "bare pg_dump -Fc:        {bare1:>7.2} s ({:.0} MB)",
        bare_size as f64 / 1e6
    );

    let mut options = BackupOptions::new(scratch.path());
    options.name = Some("bench".to_owned());
    options.postgres = Some(PgSource::Direct {
        params: pg.params(),
        tools: pg.tools().clone(),
    });
    options.local_tools = Some(pg.tools().clone());
    let hwm_reset = reset_hwm();
    // Sample the backup's process tree every 20 ms while it runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = pg.pid();
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(tree_rss_kib(server));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        })
    };
    let started = Instant::now();
    let cpu_before = cpu_total(pg.pid())?;
    let report = backup(&options).await?;
    let full = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let tree_peak = sampler.join().unwrap_or(0);
    // Includes the RSS sampler's own reads of /proc.
    let ours_cpu = cpu_total(pg.pid())? - cpu_before;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let self_peak = vm_hwm_kib();
    let archive = report.archive.as_ref().map(|a| a.size).unwrap_or(0);
    println!(
        "backup (everything):     {full:>7.2} s (archive {:.0} MB)",
        archive as f64 / 1e6
    );
    for step in report.manifest.steps.iter().chain(&report.after_manifest) {
        println!(
            "  {:>7.2} s  at {:>6.2} s  {}",
            step.seconds, step.started_after_seconds, step.name
        );
    }

    let bare2 = bare_pg_dump(&pg, &scratch.path().join("bare2.dump")).await?;
    println!("bare pg_dump -Fc again:  {bare2:>7.2} s");
    // On this many cores no schedule of that much work ends sooner than CPU / cores; the
    // bare pg_dump is bound by one core (its compression), not by the sum.
    println!(
        "CPU (user + system; this process, pg_dump/pg_restore, the server): ours {ours_cpu:.1} s, \
         bare pg_dump -Fc {bare_cpu:.1} s; on {cores} cores ours cannot end before {:.1} s \
         ({:.2}x the bare run)",
        ours_cpu / cores,
        ours_cpu / cores / ((bare1 + bare2) / 2.0)
    );
    let bare = (bare1 + bare2) / 2.0;
    let ratio = full / bare;
    let met = result::report(
        &format!(
            "backup, every artifact ({} users, {} posts)",
            stats.users, stats.posts
        ),
        "pg_dump -Fc",
        ratio,
        Target::AtMost(1.15),
        &format!(
            "{full:.2} s vs {bare:.2} s (mean of a bare run before and after); CPU {ours_cpu:.0} s \
             vs {bare_cpu:.0} s, so on {cores} cores at least {:.2}x",
            ours_cpu / cores / bare
        ),
    );
    match (self_peak, hwm_reset) {
        (Some(kib), true) => println!(
            "peak RSS of this process during the backup: {:.1} MB (target < 200 MB)",
            kib as f64 / 1024.0
        ),
        (Some(kib), false) => println!(
            "peak RSS of this process (whole run, reset unsupported): {:.1} MB",
            kib as f64 / 1024.0
        ),
        (None, _) => println!("peak RSS of this process: unavailable (/proc/self/status)"),
    }
    println!(
        "peak RSS of the backup's process tree (this process + pg_dump/pg_restore children, \
         sampled every 20 ms, PostgreSQL server excluded): {:.1} MB (target < 200 MB)",
        tree_peak as f64 / 1024.0
    );
    drop(client);
    pg.stop().await?;
    // Returned, not `process::exit`: the scratch directory's destructor must still run.
    Ok(if met {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
