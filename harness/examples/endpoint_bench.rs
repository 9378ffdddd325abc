//! Benchmark: p50 and p95 of each endpoint of the load gate's read profile at scale, through
//! the Titanium api-gateway, on a dataset loaded with the harness's binary COPY generator.
//!
//! `cargo run -p harness --example endpoint_bench -- [--users N] [--posts N] [--seconds N] [--readers N]`
//! (defaults: 100,000 users, 1,000,000 posts, 20 s, 4 readers: the runbook's quick profile at
//! the scale of issue 20).
//!
//! Starts a private PostgreSQL, loads the dataset (ANALYZE included, as a restore does), starts
//! a redis-server and the four services on loopback, runs goose's quick profile and prints one
//! line per request kind; then stops everything.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use harness::data::{DatasetSpec, load_dataset};
use harness::load::{LoadGate, Thresholds};
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider};

#[path = "support/served.rs"]
mod served;
use served::Served;

struct Args {
    users: u32,
    posts: u32,
    seconds: u64,
    readers: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        users: 100_000,
        posts: 1_000_000,
        seconds: 20,
        readers: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--users" => args.users = value()?.parse().context("--users")?,
            "--posts" => args.posts = value()?.parse().context("--posts")?,
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--readers" => args.readers = value()?.parse().context("--readers")?,
            other => {
                bail!("unknown argument {other} (expected --users, --posts, --seconds, --readers)")
            }
        }
    }
    if args.users == 0 || !(1..=600).contains(&args.seconds) || !(1..=1000).contains(&args.readers)
    {
        bail!("--users must be at least 1, --seconds 1 to 600 and --readers 1 to 1000");
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let pg = LocalPostgres::start(LocalOptions::titanium())
        .await
        .context("starting PostgreSQL")?;
    let db = pg.params().connect().await?;
    let started = Instant::now();
    let loaded = load_dataset(&db, &DatasetSpec::new(20, args.users, args.posts)).await?;
    println!(
        "loaded {} users and {} posts in {:.1} s",
        loaded.users,
        loaded.posts,
        started.elapsed().as_secs_f64()
    );
    let served = Served::start(pg.params().config()).await?;
    let stack = &served.stack;
    let gate = LoadGate {
        users: args.readers,
        hatch_rate: args.readers,
        run_time: Duration::from_secs(args.seconds),
        thresholds: Thresholds::k6_defaults(10.0),
        ..LoadGate::quick(stack.gateway_url())
    };
    let verdict = gate.run().await?;
    println!(
        "{} readers, {} s, think time {} ms; thresholds {}",
        args.readers,
        args.seconds,
        gate.think_time.as_millis(),
        if verdict.passed { "held" } else { "BREACHED" }
    );
    for f in verdict
        .figures
        .per_request
        .iter()
        .chain([&verdict.figures.overall])
    {
        println!(
            "{:<20} {:>7} requests {:>4} failed  p50 {:>8.2} ms  p95 {:>8.2} ms  max {:>8.2} ms",
            f.name, f.requests, f.failures, f.p50_ms, f.p95_ms, f.max_ms
        );
    }
    for finding in &verdict.findings {
        println!("breach: {finding}");
    }
    served.stop().await?;
    pg.stop().await?;
    Ok(())
}
