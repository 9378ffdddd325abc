//! Test fixture: a simulated cluster in a temporary directory, a kube-rs client for it, and
//! a way to run the real kubectl against it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use simcluster::{SimCluster, SimConfig};

/// A running cluster; everything it made is removed when it is dropped.
pub(crate) struct TestCluster {
    pub(crate) cluster: SimCluster,
    pub(crate) client: kube::Client,
    pub(crate) dir: tempfile::TempDir,
}

impl TestCluster {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(tweak: impl FnOnce(&mut SimConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = SimConfig::new(
            "sim-test",
            dir.path().join("state"),
            dir.path().join("kubeconfig"),
        );
        tweak(&mut cfg);
        let cluster = SimCluster::start(cfg).await.expect("cluster starts");
        let kubeconfig =
            Kubeconfig::read_from(cluster.kubeconfig_path()).expect("kubeconfig readable");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("kube config");
        let client = kube::Client::try_from(config).expect("client");
        TestCluster {
            cluster,
            client,
            dir,
        }
    }

    pub(crate) fn addr(&self) -> String {
        self.cluster.url().trim_start_matches("http://").to_owned()
    }

    /// Run kubectl with the cluster's kubeconfig and a private cache directory.
    pub(crate) async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None).await
    }

    pub(crate) async fn kubectl_stdin(&self, args: &[&str], stdin: Option<Vec<u8>>) -> Output {
        let kubeconfig = self.cluster.kubeconfig_path().to_owned();
        let cache = self.dir.path().join("kube-cache");
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        tokio::task::spawn_blocking(move || run_kubectl(&kubeconfig, &cache, &args, stdin))
            .await
            .expect("kubectl task")
    }

    /// Run kubectl and require success; returns stdout.
    pub(crate) async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }
}

fn run_kubectl(kubeconfig: &Path, cache: &Path, args: &[String], stdin: Option<Vec<u8>>) -> Output {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(kubectl_path().expect("kubectl available"));
    cmd.env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .arg("--cache-dir")
        .arg(cache)
        .arg("--request-timeout=20s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl spawns");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("stdin");
        si.write_all(&input).expect("write stdin");
    }
    child.wait_with_output().expect("kubectl runs")
}

/// The kubectl binary (`$KUBECTL`, else the first on `PATH`), or `None` with a printed
/// reason; under CI a missing kubectl fails the test instead (the one rule of
/// `harness::testing`).
pub(crate) fn kubectl_path() -> Option<PathBuf> {
    match std::env::var("KUBECTL") {
        Ok(path) => crate::testing::require(&path),
        Err(_) => crate::testing::require("kubectl"),
    }
}

/// The repository's test manifests.
pub(crate) fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/manifests")
}

/// Poll `f` until it returns `Some`, or panic after `secs` naming `what`.
pub(crate) async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw HTTP/1.1 request; returns (status code, body as JSON or text).
pub(crate) async fn raw(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    // Responses are small and not chunked here except for watches, which this helper avoids.
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_owned()));
    (code, json)
}
