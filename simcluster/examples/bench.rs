//! Benchmark of the simulated API server: start to first answer, 1,000 creates plus a full
//! list, and 50 concurrent watchers receiving every event.
//!
//! Run with `cargo run --release -p simcluster --example bench`. Prints each figure with its
//! target and exits 1 when a target is missed.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use simcluster::{SimCluster, SimConfig};

const CREATES: usize = 1_000;
const WATCHERS: usize = 50;
const WATCHED_EVENTS: usize = 200;

fn cm(name: String) -> anyhow::Result<ConfigMap> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"bench": "yes"}}, "data": {"k": "v"}}),
    )?)
}

fn verdict(name: &str, took: Duration, target: Duration) -> bool {
    let ok = took <= target;
    println!(
        "{name:<48} {:>9.1} ms   target < {:>5} ms   {}",
        took.as_secs_f64() * 1e3,
        target.as_millis(),
        if ok { "ok" } else { "MISSED" }
    );
    ok
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let cfg = SimConfig::new(
        "bench",
        dir.path().join("state"),
        dir.path().join("kubeconfig"),
    );

    let t = Instant::now();
    let cluster = SimCluster::start(cfg).await.context("starting")?;
    let started = t.elapsed();
    let mut all_ok = verdict(
        "server start to first answer",
        started,
        Duration::from_millis(200),
    );

    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig_path())?;
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?,
    )?;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "bench"}}))?,
    )
    .await?;
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "watched"}}))?,
    )
    .await?;

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "bench");
    let t = Instant::now();
    let results: Vec<_> = futures::stream::iter((0..CREATES).map(|i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &cm(format!("cm-{i:04}"))?)
                .await
                .map_err(anyhow::Error::from)
        }
    }))
    .buffer_unordered(32)
    .collect()
    .await;
    for r in results {
        r.context("create")?;
    }
    let listed = api.list(&ListParams::default()).await?.items.len();
    let took = t.elapsed();
    if listed != CREATES {
        bail!("listed {listed} objects after {CREATES} creates");
    }
    all_ok &= verdict(
        &format!("{CREATES} creates + full list ({listed} items)"),
        took,
        Duration::from_secs(1),
    );

    let watched: Api<ConfigMap> = Api::namespaced(client.clone(), "watched");
    let rv = watched
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("list rv")?;
    let mut handles = Vec::new();
    for _ in 0..WATCHERS {
        let watched = watched.clone();
        let rv = rv.clone();
        handles.push(tokio::spawn(async move {
            let stream = watched
                .watch(&WatchParams::default().timeout(120), &rv)
                .await?;
            tokio::pin!(stream);
            let mut seen = 0;
            while let Some(ev) = stream.try_next().await? {
                if let WatchEvent::Added(_) = ev {
                    seen += 1;
                    if seen == WATCHED_EVENTS {
                        break;
                    }
                }
            }
            anyhow::Ok(seen)
        }));
    }
    let t = Instant::now();
    for i in 0..WATCHED_EVENTS {
        watched
            .create(&PostParams::default(), &cm(format!("w-{i:03}"))?)
            .await?;
    }
    let mut complete = 0;
    for h in handles {
        let seen = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .context("watcher timed out")???;
        if seen == WATCHED_EVENTS {
            complete += 1;
        }
    }
    let took = t.elapsed();
    println!(
        "{:<48} {:>9.1} ms   {complete}/{WATCHERS} watchers saw all {WATCHED_EVENTS} events   {}",
        format!("{WATCHERS} watchers x {WATCHED_EVENTS} events"),
        took.as_secs_f64() * 1e3,
        if complete == WATCHERS { "ok" } else { "MISSED" }
    );
    all_ok &= complete == WATCHERS;

    cluster.shutdown().await?;
    // Returned, not `process::exit`: the temporary directory's destructor must still run.
    Ok(if all_ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
