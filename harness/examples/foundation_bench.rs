//! Benchmark of the foundation: how fast a private PostgreSQL starts, and how fast the
//! generator bulk-loads the Titanium dataset with COPY.
//!
//! `cargo run --release -p harness --example foundation_bench -- [USERS] [POSTS]`
//! (defaults: 100000 users, 1000000 posts). Targets: start well under 2 s; 1M posts under 15 s.

use std::time::Instant;

use harness::data::{DatasetSpec, load_dataset};
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let users: u32 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let posts: u32 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);

    let mut starts = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let pg = LocalPostgres::start(LocalOptions::titanium()).await?;
        starts.push(t.elapsed());
        pg.stop().await?;
    }
    starts.sort();
    println!(
        "LocalPostgres start (initdb + server + titanium schema): median {:.0} ms, max {:.0} ms (target < 2000 ms)",
        starts[2].as_secs_f64() * 1e3,
        starts[4].as_secs_f64() * 1e3
    );

    let pg = LocalPostgres::start(LocalOptions::titanium()).await?;
    let client = pg.params().connect().await?;
    let spec = DatasetSpec::new(1, users, posts);
    let stats = load_dataset(&client, &spec).await?;
    let size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    println!(
        "generate + COPY {} users and {} posts: {:.2} s ({:.0} posts/s, database {:.0} MB) (target: 1M posts < 15 s)",
        stats.users,
        stats.posts,
        stats.elapsed.as_secs_f64(),
        stats.posts as f64 / stats.elapsed.as_secs_f64(),
        size as f64 / 1e6
    );
    pg.stop().await?;
    Ok(())
}
