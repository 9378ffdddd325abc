//! Benchmark: sustained requests per second of the goose load gate against the Titanium
//! gateway, next to `wrk` on the same endpoint for the same duration, in the same run.
//!
//! `cargo run --release -p harness --example load_bench -- [--seconds N] [--connections N] [--path /blog/1]`
//!
//! Starts a private PostgreSQL (Titanium schema and 50 posts), a redis-server and the four
//! services on loopback, runs wrk and then goose, prints both and the ratio (target: goose at
//! least 0.8x of wrk), and stops everything.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use harness::load::{LoadGate, LoadProfile, Thresholds};
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider};

#[path = "support/served.rs"]
mod served;
use served::Served;

struct Args {
    seconds: u64,
    connections: usize,
    path: String,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 10,
        connections: 16,
        path: "/blog/1".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--connections" => args.connections = value()?.parse().context("--connections")?,
            "--path" => args.path = value()?,
            other => bail!("unknown argument {other} (expected --seconds, --connections, --path)"),
        }
    }
    if !(1..=300).contains(&args.seconds) || !(1..=1000).contains(&args.connections) {
        bail!("--seconds must be 1 to 300 and --connections 1 to 1000");
    }
    Ok(args)
}

/// Runs wrk and returns its `Requests/sec`.
fn wrk(url: &str, seconds: u64, connections: usize) -> anyhow::Result<(f64, String)> {
    let out = Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if text.contains("Non-2xx or 3xx responses") {
        bail!("wrk saw error answers, so its figure is not comparable:\n{text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    Ok((rps, text))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let pg = LocalPostgres::start(LocalOptions::titanium())
        .await
        .context("starting PostgreSQL")?;
    let db = pg.params().connect().await?;
    db.batch_execute(
        "INSERT INTO users (username, email, password_hash) \
           SELECT 'user' || i, 'user' || i || '@example.com', 'sha256$00$' || repeat('0', 64) \
           FROM generate_series(1, 10) AS i; \
         INSERT INTO posts (title, content, author) \
           SELECT 'post ' || i, repeat('text ', 40), 'user' || (i % 10 + 1) FROM generate_series(1, 50) AS i;",
    )
    .await?;
    let served = Served::start(pg.params().config()).await?;
    let stack = &served.stack;
    let url = format!("{}{}", stack.gateway_url(), args.path);
    let check = reqwest::get(&url).await?;
    if !check.status().is_success() {
        bail!("GET {url} answered {}", check.status());
    }

    println!(
        "endpoint: GET {} through the api-gateway, {} s each, {} connections/users",
        args.path, args.seconds, args.connections
    );
    let (wrk_rps, wrk_out) = {
        let url = url.clone();
        let (seconds, connections) = (args.seconds, args.connections);
        tokio::task::spawn_blocking(move || wrk(&url, seconds, connections)).await??
    };
    let gate = LoadGate {
        profile: LoadProfile::Get {
            path: args.path.clone(),
        },
        users: args.connections,
        hatch_rate: 1000,
        run_time: Duration::from_secs(args.seconds),
        think_time: Duration::ZERO,
        thresholds: Thresholds::parse(&["http_req_failed: rate<0.01"])?,
        ..LoadGate::quick(stack.gateway_url())
    };
    let verdict = gate.run().await?;
    let goose = &verdict.figures.overall;
    if !verdict.passed {
        bail!("goose saw failures: {:?}", verdict.findings);
    }
    let wrk_latency: Vec<&str> = wrk_out
        .lines()
        .filter(|l| l.trim_start().starts_with("50%") || l.trim_start().starts_with("99%"))
        .collect();
    println!(
        "wrk:   {wrk_rps:>10.1} requests/s   (latency {})",
        wrk_latency
            .iter()
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "goose: {:>10.1} requests/s   ({} requests in {:.2} s, p50 {:.2} ms, p99 {:.2} ms)",
        goose.rps,
        goose.requests,
        verdict.figures.duration.as_secs_f64(),
        goose.p50_ms,
        goose.p99_ms
    );
    let ratio = goose.rps / wrk_rps;
    println!(
        "goose/wrk: {ratio:.2} (target >= 0.80): {}",
        if ratio >= 0.8 { "met" } else { "NOT met" }
    );
    served.stop().await?;
    pg.stop().await?;
    Ok(())
}
