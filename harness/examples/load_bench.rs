//! Benchmark: sustained requests per second of the goose load gate against the Titanium
//! gateway, next to `wrk` on the same endpoint for the same duration, in the same run.
//!
//! `cargo run --release -p harness --example load_bench -- [--seconds N] [--connections N] [--rounds N] [--path /blog/1]`
//!
//! Starts a private PostgreSQL (Titanium schema and 50 posts), a redis-server and the four
//! services on loopback. Then, for each round, runs wrk and goose one after the other,
//! alternating which goes first: wrk with 2 threads and N connections, goose with N users on
//! 2 worker threads. Prints each round, the median ratio goose/wrk and its spread (target: the
//! median at least 0.8x) as a `BENCH` line (see `support/result.rs`), and stops everything;
//! exits 1 when the target is missed.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use harness::load::{LoadGate, LoadProfile, Thresholds};
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider};

#[path = "support/served.rs"]
mod served;
use served::Served;

#[path = "support/result.rs"]
mod result;
use result::Target;

struct Args {
    seconds: u64,
    connections: usize,
    rounds: usize,
    path: String,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 10,
        connections: 16,
        rounds: 3,
        path: "/blog/1".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--connections" => args.connections = value()?.parse().context("--connections")?,
            "--rounds" => args.rounds = value()?.parse().context("--rounds")?,
            "--path" => args.path = value()?,
            other => bail!(
                "unknown argument {other} (expected --seconds, --connections, --rounds, --path)"
            ),
        }
    }
    if !(1..=300).contains(&args.seconds)
        || !(1..=1000).contains(&args.connections)
        || !(1..=20).contains(&args.rounds)
    {
        bail!("--seconds must be 1 to 300, --connections 1 to 1000 and --rounds 1 to 20");
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<std::process::ExitCode> {
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
        "endpoint: GET {} through the api-gateway, {} s each, {} connections/users, {} rounds",
        args.path, args.seconds, args.connections, args.rounds
    );
    let mut ratios = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        // Odd rounds run wrk first, even rounds goose first: neither always gets the warmer
        // caches or the cooler machine.
        let (wrk_rps, goose_rps) = if round % 2 == 1 {
            let w = run_wrk(&url, &args).await?;
            (w, run_goose(stack.gateway_url(), &args).await?)
        } else {
            let g = run_goose(stack.gateway_url(), &args).await?;
            (run_wrk(&url, &args).await?, g)
        };
        let ratio = goose_rps / wrk_rps;
        println!(
            "round {round} ({} first): wrk {wrk_rps:>10.1} requests/s, goose {goose_rps:>10.1} requests/s, goose/wrk {ratio:.2}",
            if round % 2 == 1 { "wrk" } else { "goose" }
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    let median = if ratios.len() % 2 == 1 {
        ratios[ratios.len() / 2]
    } else {
        (ratios[ratios.len() / 2 - 1] + ratios[ratios.len() / 2]) / 2.0
    };
    let met = result::report(
        &format!(
            "load gate, GET {} ({} connections)",
            args.path, args.connections
        ),
        "wrk -t 2",
        median,
        Target::AtLeast(0.8),
        &format!(
            "median of {} alternating rounds of {} s; spread {:.2} to {:.2}",
            args.rounds,
            args.seconds,
            ratios[0],
            ratios[ratios.len() - 1]
        ),
    );
    served.stop().await?;
    pg.stop().await?;
    // Returned, not `process::exit`, so that every destructor still runs.
    Ok(if met {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// wrk's requests per second on `url`, with 2 threads.
async fn run_wrk(url: &str, args: &Args) -> anyhow::Result<f64> {
    let url = url.to_owned();
    let (seconds, connections) = (args.seconds, args.connections);
    let (rps, _) = tokio::task::spawn_blocking(move || wrk(&url, seconds, connections)).await??;
    Ok(rps)
}

/// The goose gate's requests per second on the same endpoint; any failed request fails it.
async fn run_goose(gateway_url: String, args: &Args) -> anyhow::Result<f64> {
    let gate = LoadGate {
        profile: LoadProfile::Get {
            path: args.path.clone(),
        },
        users: args.connections,
        hatch_rate: 1000,
        run_time: Duration::from_secs(args.seconds),
        think_time: Duration::ZERO,
        thresholds: Thresholds::parse(&["http_req_failed: rate<0.01"])?,
        ..LoadGate::quick(gateway_url)
    };
    let verdict = gate.run().await?;
    if !verdict.passed {
        bail!("goose saw failures: {:?}", verdict.findings);
    }
    Ok(verdict.figures.overall.rps)
}
