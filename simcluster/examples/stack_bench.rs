//! Benchmark of the simulated node: time from cluster start to the whole titanium-prod stack
//! Ready (target under 5 s), and `pg_dump -Fc` through `kubectl exec` against pg_dump run
//! directly on the same database (target at least 0.8x). Prints the figures.
//!
//! Run: `cargo build --release -p titanium && cargo run --release -p simcluster --example stack_bench`
//! (`-- --rows N` sets the size of the dumped table; default 400000 rows, about 60 MB).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use simcluster::{SimCluster, SimConfig};

#[path = "../../harness/examples/support/result.rs"]
mod result;
use result::Target;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kubectl(
    kubeconfig: &Path,
    cache: &Path,
    args: &[&str],
    stdout: Stdio,
) -> Result<std::process::Output> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .context("running kubectl")?;
    ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn int(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

/// Every Deployment and StatefulSet of the namespace has all its replicas ready.
fn stack_ready(cluster: &SimCluster, ns: &str) -> bool {
    let store = cluster.store();
    let (deps, _) = store.list("apps/deployments", Some(ns));
    let (sets, _) = store.list("apps/statefulsets", Some(ns));
    !deps.is_empty()
        && !sets.is_empty()
        && deps.iter().all(|d| {
            int(d, "/status/availableReplicas") >= int(d, "/spec/replicas")
                && int(d, "/status/updatedReplicas") == int(d, "/spec/replicas")
        })
        && sets
            .iter()
            .all(|s| int(s, "/status/readyReplicas") >= int(s, "/spec/replicas"))
}

fn not_ready(cluster: &SimCluster, ns: &str) -> Vec<String> {
    let (pods, _) = cluster.store().list("/pods", Some(ns));
    pods.iter()
        .filter(|p| {
            !p.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .map(|p| {
            format!(
                "{} ({})",
                p["metadata"]["name"].as_str().unwrap_or_default(),
                p.pointer("/status/containerStatuses/0/state")
                    .map(Value::to_string)
                    .unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<std::process::ExitCode> {
    use std::os::unix::fs::PermissionsExt as _;
    let rows: u64 = match std::env::args().skip_while(|a| a != "--rows").nth(1) {
        Some(n) => n.parse().context("--rows takes a number")?,
        None => 400_000,
    };
    let built = ["release", "debug"].iter().any(|p| {
        workspace()
            .join("target")
            .join(p)
            .join("titanium")
            .is_file()
    });
    ensure!(
        built,
        "the titanium services binary is not built: run `cargo build --release -p titanium` first"
    );
    let dir = tempfile::Builder::new()
        .prefix("simcluster-bench-")
        .tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let kubeconfig = dir.path().join("kubeconfig");
    let cache = dir.path().join("kube-cache");
    let ns = "titanium-prod";

    // 1. Cluster up and the whole stack Ready.
    let t0 = Instant::now();
    let cluster = SimCluster::start(SimConfig::new(
        "bench",
        dir.path().join("state"),
        &kubeconfig,
    ))
    .await?;
    let up = t0.elapsed();
    let overlay = workspace().join("fixtures/k8s/overlays/sim");
    // CRDs first, as on any cluster: kubectl maps the custom kinds once they are served.
    let crds = workspace().join("fixtures/k8s/base/crds");
    kubectl(
        &kubeconfig,
        &cache,
        &["apply", "--server-side", "-f", &crds.to_string_lossy()],
        Stdio::null(),
    )?;
    kubectl(
        &kubeconfig,
        &cache,
        &["apply", "--server-side", "-k", &overlay.to_string_lossy()],
        Stdio::null(),
    )?;
    let applied = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stack_ready(&cluster, ns) {
        if Instant::now() > deadline {
            bail!(
                "the stack did not become Ready within 60 s; not ready: {:?}",
                not_ready(&cluster, ns)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = t0.elapsed();
    let (pods, _) = cluster.store().list("/pods", Some(ns));
    println!("cluster up:             {:>8.3} s", up.as_secs_f64());
    println!("manifests applied:      {:>8.3} s", applied.as_secs_f64());
    println!(
        "stack Ready ({} pods): {:>8.3} s   (target < 5 s: {})",
        pods.len(),
        ready.as_secs_f64(),
        if ready < Duration::from_secs(5) {
            "met"
        } else {
            "MISSED"
        }
    );

    // 2. pg_dump -Fc through exec against pg_dump run directly.
    let sql = format!(
        "CREATE TABLE bench_blob (id bigint PRIMARY KEY, payload text); INSERT INTO bench_blob SELECT i, md5(i::text) || md5((i * 7)::text) || repeat(md5((i * 13)::text), 2) FROM generate_series(1, {rows}) i;"
    );
    kubectl(
        &kubeconfig,
        &cache,
        &[
            "exec",
            "-n",
            ns,
            "postgresql-0",
            "--",
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            "titanium",
            "-c",
            &sql,
        ],
        Stdio::null(),
    )?;
    let pod = cluster
        .store()
        .get("/pods", ns, "postgresql-0")
        .context("postgresql-0 is gone")?;
    let pod_ip = pod
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .context("no pod IP")?
        .to_owned();
    let secret = cluster
        .store()
        .get("/secrets", ns, "postgresql-secret")
        .context("no postgresql-secret")?;
    let password = {
        use base64::Engine as _;
        let b64 = secret
            .pointer("/data/POSTGRES_PASSWORD")
            .and_then(Value::as_str)
            .context("no POSTGRES_PASSWORD")?;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64)?)?
    };
    let exec_file = dir.path().join("exec.dump");
    let direct_file = dir.path().join("direct.dump");
    let mut best_exec = Duration::MAX;
    let mut best_direct = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let f = std::fs::File::create(&exec_file)?;
        kubectl(
            &kubeconfig,
            &cache,
            &[
                "exec",
                "-n",
                ns,
                "postgresql-0",
                "--",
                "pg_dump",
                "-U",
                "postgres",
                "-d",
                "titanium",
                "-Fc",
            ],
            Stdio::from(f),
        )?;
        best_exec = best_exec.min(t.elapsed());
        let t = Instant::now();
        let st = Command::new("pg_dump")
            .args([
                "-h", &pod_ip, "-U", "postgres", "-d", "titanium", "-Fc", "-f",
            ])
            .arg(&direct_file)
            .env("PGPASSWORD", &password)
            .status()?;
        ensure!(st.success(), "direct pg_dump failed");
        best_direct = best_direct.min(t.elapsed());
    }
    let size = std::fs::metadata(&exec_file)?.len() as f64 / 1e6;
    let direct_size = std::fs::metadata(&direct_file)?.len() as f64 / 1e6;
    let ratio = best_direct.as_secs_f64() / best_exec.as_secs_f64();
    println!(
        "pg_dump -Fc via exec:   {:>8.3} s  {size:.1} MB  {:.1} MB/s",
        best_exec.as_secs_f64(),
        size / best_exec.as_secs_f64()
    );
    println!(
        "pg_dump -Fc direct:     {:>8.3} s  {direct_size:.1} MB  {:.1} MB/s",
        best_direct.as_secs_f64(),
        direct_size / best_direct.as_secs_f64()
    );
    let met = result::report(
        &format!("pg_dump -Fc through kubectl exec on the simulator ({size:.0} MB)"),
        "pg_dump -Fc run directly",
        ratio,
        Target::AtLeast(0.8),
        &format!(
            "throughput; best of each: {:.2} s vs {:.2} s",
            best_exec.as_secs_f64(),
            best_direct.as_secs_f64()
        ),
    );
    cluster.shutdown().await?;
    // Returned, not `process::exit`: the temporary directory's destructor must still run.
    Ok(if met {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
