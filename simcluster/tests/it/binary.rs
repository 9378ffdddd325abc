//! The `simcluster serve` binary: kind configurations, deny flags, bad input and SIGTERM.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::raw;

fn kind_config(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kind-config")
        .join(file)
        .to_string_lossy()
        .into_owned()
}

/// A temporary directory others may traverse (0711, not listable): `serve` refuses a state
/// directory below a 0700 one when PostgreSQL pods would run as another account.
fn traversable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}

/// As root the PostgreSQL pods run as `postgres`, which cannot traverse a 0700 directory:
/// `serve` refuses at start with the message such a pod prints, instead of starting and then
/// crash-looping every PostgreSQL pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_state_dir_the_postgres_account_cannot_reach() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: not root, so PostgreSQL pods run as this user and reach any state dir");
        return;
    }
    assert!(
        nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .is_some(),
        "no postgres account (ci/setup installs PostgreSQL)"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    // As a home directory often is (a temporary directory follows the umask).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let kubeconfig = dir.path().join("kubeconfig");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_simcluster"))
            .arg("serve")
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("serve must refuse at once, not serve")
    .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {err}");
    assert!(
        err.contains("PostgreSQL runs as the postgres account, which cannot reach")
            && err.contains(&format!("{} has mode 700", dir.path().display())),
        "{err}"
    );
    assert!(!kubeconfig.exists(), "a kubeconfig was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_kind_config_and_exits_zero_on_sigterm() {
    let dir = traversable_tempdir();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_simcluster"))
        .args([
            "serve",
            "--name",
            "bin-test",
            "--deny",
            "create:secrets",
            "--config",
            &kind_config("prod-3-node.yaml"),
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
        .kill_on_drop(true)
        .spawn()
        .expect("simcluster starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&kubeconfig) {
            break text;
        }
        let stderr = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
        if let Some(status) = child.try_wait().expect("child status") {
            panic!("simcluster exited early ({status}): {}", stderr());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no kubeconfig after 60 s: {}",
            stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let url = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server line")
        .to_owned();
    let addr = url.trim_start_matches("http://").to_owned();
    let (code, nodes) = raw(&addr, "GET", "/api/v1/nodes", "application/json", b"").await;
    assert_eq!(code, 200);
    let names: Vec<&str> = nodes["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "bin-test-control-plane",
            "bin-test-worker",
            "bin-test-worker2"
        ]
    );
    let (code, _) = raw(
        &addr,
        "POST",
        "/api/v1/namespaces/default/secrets",
        "application/json",
        br#"{"metadata": {"name": "s"}}"#,
    )
    .await;
    assert_eq!(code, 403, "the --deny rule is enforced");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&kubeconfig)
            .expect("kubeconfig")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // An open watch must not keep the server from stopping.
    let mut watch = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    watch
        .write_all(
            format!("GET /api/v1/namespaces?watch=true HTTP/1.1\r\nHost: {addr}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("watch request");
    let mut first = [0u8; 64];
    let n = watch.read(&mut first).await.expect("watch answers");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));

    let pid =
        nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid fits"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM sent");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits in time")
        .expect("status");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_bad_configuration_with_a_clear_error() {
    let dir = traversable_tempdir();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: boss\n",
    )
    .expect("write");
    let run = |extra: Vec<String>| {
        let dir = dir.path().to_owned();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_simcluster"))
                .arg("serve")
                .arg("--state-dir")
                .arg(dir.join("state"))
                .arg("--kubeconfig")
                .arg(dir.join("kc"))
                .args(extra)
                .output()
                .await
                .expect("runs")
        }
    };
    let out = run(vec!["--config".into(), bad.to_string_lossy().into_owned()]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nodes[0].role"),
        "{err}"
    );
    let out = run(vec!["--deny".into(), "create".into()]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("verb:resource"),
        "{err}"
    );
    let out = run(vec!["--name".into(), "Bad Name".into()]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("invalid cluster name"),
        "{err}"
    );
    assert!(
        !dir.path().join("kc").exists(),
        "no kubeconfig is written for a cluster that did not start"
    );
}
