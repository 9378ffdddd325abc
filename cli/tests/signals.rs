//! `rehearsal verify`, `rehearsal restore` and `rehearsal run` stopped by SIGTERM, SIGINT or
//! SIGKILL leave no PostgreSQL server, pg_restore, pod or scratch directory behind: TERM and INT
//! tear down and exit with 143 and 130; after a KILL the children die with the process and the
//! next run sweeps the scratch directories.
//!
//! Each run gets its own temporary root as `TMPDIR`, so that the scan for leftovers (processes
//! naming the root or working in it, entries in it) sees only what that run made.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use harness::data::{DatasetSpec, load_dataset};
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider, Secret};
use nix::sys::signal::Signal;

const PASSWORD: &str = "signals-Test-pw-4K";

/// Waits until `done` holds, checking every 20 ms; panics naming `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose command line names `path` or whose working directory is below it
/// (PostgreSQL backends run in their data directory), as `pid command line`.
fn processes_on(path: &Path) -> Vec<(i32, String)> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if cmdline.contains(&needle) || cwd.starts_with(path) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// A private temporary root, the `TMPDIR` of one rehearsal run. Traversable (0711) because the
/// scratch PostgreSQL runs as the unprivileged `postgres` account when the tests run as root.
/// Dropping it kills whatever still runs on it, so that a failing test leaves nothing behind.
struct Root(tempfile::TempDir);

impl Root {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("signals-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn has_entry(&self, prefix: &str) -> bool {
        self.entries().iter().any(|n| n.starts_with(prefix))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for (pid, _) in processes_on(self.path()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A `rehearsal` process with `TMPDIR` set to a root, its output going to files (not pipes: a
/// leftover child holding a pipe would block reading it).
struct Rehearsal {
    child: Child,
    out: tempfile::TempDir,
}

impl Rehearsal {
    fn start(args: &[&str], root: &Root) -> Self {
        Self::start_in(args, root, Path::new("."))
    }

    fn start_in(args: &[&str], root: &Root, cwd: &Path) -> Self {
        Self::start_with(args, root, cwd, None)
    }

    fn start_with(args: &[&str], root: &Root, cwd: &Path, keep: Option<&str>) -> Self {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rehearsal"));
        match keep {
            Some(value) => cmd.env("HARNESS_KEEP", value),
            None => cmd.env_remove("HARNESS_KEEP"),
        };
        let child = cmd
            .args(args)
            .current_dir(cwd)
            .env("TMPDIR", root.path())
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(out.path().join("stderr")).unwrap())
            .spawn()
            .expect("start rehearsal");
        Self { child, out }
    }

    fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        wait_for("rehearsal to exit", timeout, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    fn output(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.out.path().join(name)).unwrap();
        format!("{}{}", read("stdout"), read("stderr"))
    }
}

impl Drop for Rehearsal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn server(options: LocalOptions) -> LocalPostgres {
    LocalPostgres::start(LocalOptions {
        password: Some(Secret::new(PASSWORD)),
        ..options
    })
    .await
    .unwrap()
}

/// A real backup (directory and archive) of a small Titanium database, made with
/// `rehearsal backup`.
struct Backup {
    out: tempfile::TempDir,
}

impl Backup {
    async fn make() -> Self {
        let source = server(LocalOptions::titanium()).await;
        let client = source.params().connect().await.unwrap();
        load_dataset(&client, &DatasetSpec::new(12, 300, 6000))
            .await
            .unwrap();
        let out = tempfile::tempdir().unwrap();
        let port = source.params().port.to_string();
        let root = Root::new();
        let mut backup = Rehearsal::start(
            &[
                "backup",
                "--pg-host",
                "127.0.0.1",
                "--pg-port",
                &port,
                "--out",
                out.path().to_str().unwrap(),
                "--name",
                "signals",
            ],
            &root,
        );
        let status = backup.wait(Duration::from_secs(120));
        assert!(status.success(), "backup failed: {}", backup.output());
        Self { out }
    }

    fn dir(&self) -> PathBuf {
        self.out.path().join("signals")
    }

    fn archive(&self) -> PathBuf {
        std::fs::read_dir(self.out.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
            .expect("an archive")
    }
}

/// Starts `rehearsal verify` and waits until it is mid-way: its scratch PostgreSQL runs and the
/// archive is being unpacked (or restored) into its scratch directory.
fn verify_mid_way(backup: &Backup, root: &Root) -> Rehearsal {
    let archive = backup.archive();
    let run = Rehearsal::start(&["verify", archive.to_str().unwrap()], root);
    wait_for(
        "the scratch PostgreSQL and the unpacked backup of `rehearsal verify`",
        Duration::from_secs(120),
        || {
            root.has_entry("harness-verify-")
                && processes_on(root.path())
                    .iter()
                    .any(|(_, cmd)| cmd.contains("postgres"))
        },
    );
    run
}

fn assert_nothing_runs_on(path: &Path, after: &str) {
    // Backends notice their postmaster's death within moments; nothing may stay longer.
    let deadline = Duration::from_secs(15);
    let start = Instant::now();
    while start.elapsed() < deadline && !processes_on(path).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = processes_on(path);
    assert!(
        left.is_empty(),
        "after {after}, still running on {}: {left:?}",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_stopped_by_sigterm_or_sigint_tears_down_and_says_so() {
    let backup = Backup::make().await;
    for (signal, code) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let root = Root::new();
        let mut run = verify_mid_way(&backup, &root);
        run.signal(signal);
        let status = run.wait(Duration::from_secs(60));
        assert_nothing_runs_on(root.path(), &format!("{signal}"));
        assert_eq!(
            status.code(),
            Some(code),
            "verify stopped by {signal}: {}",
            run.output()
        );
        assert!(
            run.output().contains(&format!("{signal} received")),
            "{}",
            run.output()
        );
        assert_eq!(
            root.entries(),
            Vec::<String>::new(),
            "scratch left behind after {signal}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_killed_leaves_no_process_and_the_next_run_sweeps_its_scratch() {
    let backup = Backup::make().await;
    let root = Root::new();
    let mut run = verify_mid_way(&backup, &root);
    run.signal(Signal::SIGKILL);
    run.wait(Duration::from_secs(30));
    // The scratch PostgreSQL and pg_restore die with their parent (parent-death signal).
    assert_nothing_runs_on(root.path(), "SIGKILL");
    assert!(
        root.has_entry("harness-"),
        "a SIGKILL leaves the scratch directories for the next run to sweep: {:?}",
        root.entries()
    );

    let mut next = Rehearsal::start(&["verify", backup.archive().to_str().unwrap()], &root);
    let status = next.wait(Duration::from_secs(180));
    assert_eq!(status.code(), Some(0), "{}", next.output());
    assert!(
        next.output()
            .contains("removed a scratch directory left behind"),
        "the sweep says what it removed: {}",
        next.output()
    );
    assert_nothing_runs_on(root.path(), "the next run");
    assert_eq!(root.entries(), Vec::<String>::new(), "{}", next.output());
}

/// `HARNESS_KEEP=1` still keeps: kept directories carry no owner record, so no later sweep
/// takes them.
#[tokio::test(flavor = "multi_thread")]
async fn kept_scratch_directories_are_not_swept() {
    let backup = Backup::make().await;
    let root = Root::new();
    let archive = backup.archive();
    let mut run = Rehearsal::start_with(
        &["verify", archive.to_str().unwrap()],
        &root,
        Path::new("."),
        Some("1"),
    );
    let status = run.wait(Duration::from_secs(180));
    assert_eq!(status.code(), Some(0), "{}", run.output());
    let kept = root.entries();
    assert!(
        kept.iter().any(|n| n.starts_with("harness-verify-"))
            && kept.iter().all(|n| !n.ends_with(".owner")),
        "kept without owner records: {kept:?}"
    );
    assert_eq!(harness::keep::sweep_stale(root.path()), Vec::new());
    assert_eq!(root.entries(), kept);
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_stopped_by_any_signal_leaves_no_pg_restore() {
    let backup = Backup::make().await;
    // An empty target database: no schema, so the restore goes straight to pg_restore.
    let target = server(LocalOptions::default()).await;
    let admin = target.params().connect().await.unwrap();
    let port = target.params().port.to_string();
    let dir = backup.dir();
    for (signal, code) in [
        (Signal::SIGTERM, Some(143)),
        (Signal::SIGINT, Some(130)),
        (Signal::SIGKILL, None),
    ] {
        let database = format!("restore_{}", signal.as_str().to_lowercase());
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .unwrap();
        // An uncommitted table of the same name holds pg_restore at its CREATE TABLE, so it is
        // certainly still running when the signal comes.
        let mut params = target.params();
        params.dbname = database.clone();
        let mut blocker = params.connect().await.unwrap();
        let blocking = blocker.transaction().await.unwrap();
        blocking
            .batch_execute("CREATE TABLE public.posts (id int)")
            .await
            .unwrap();

        let root = Root::new();
        let mut run = Rehearsal::start(
            &[
                "restore",
                dir.to_str().unwrap(),
                "--pg-host",
                "127.0.0.1",
                "--pg-port",
                &port,
                "--database",
                &database,
            ],
            &root,
        );
        // Not merely a pg_restore process (`pg_restore -l` lists the archive first): the one
        // loading, held at the lock.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let waiting: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND application_name = 'pg_restore' AND wait_event_type = 'Lock'",
                    &[&database],
                )
                .await
                .unwrap()
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for pg_restore to load into {database}: {}",
                run.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            processes_on(&dir)
                .iter()
                .any(|(_, cmd)| cmd.contains("pg_restore")),
            "pg_restore runs on {}",
            dir.display()
        );
        run.signal(signal);
        let status = run.wait(Duration::from_secs(60));
        assert_nothing_runs_on(&dir, &format!("{signal} of rehearsal restore"));
        assert_eq!(status.code(), code, "{signal}: {}", run.output());
        blocking.rollback().await.unwrap();
        if code.is_some() {
            assert_nothing_runs_on(root.path(), &format!("{signal}"));
            assert_eq!(root.entries(), Vec::<String>::new());
        }
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Starts `rehearsal run` on the simulated cluster and waits until its PostgreSQL pod runs.
fn run_mid_way(root: &Root, report: &Path) -> Rehearsal {
    // The simulated pods run the `titanium` binary; build it when this test runs on its own.
    let built = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "titanium", "--bin", "titanium"])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(built.success(), "could not build the titanium binary");
    let run = Rehearsal::start_in(
        &["run", "--report", report.to_str().unwrap()],
        root,
        &repo(),
    );
    wait_for(
        "the simulated cluster's PostgreSQL pod of `rehearsal run`",
        Duration::from_secs(180),
        || {
            processes_on(root.path())
                .iter()
                .any(|(_, cmd)| cmd.contains("postgres"))
        },
    );
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn run_on_the_simulator_stopped_by_sigint_or_sigkill_leaves_nothing() {
    let report = tempfile::tempdir().unwrap();

    let root = Root::new();
    let mut run = run_mid_way(&root, &report.path().join("int"));
    run.signal(Signal::SIGINT);
    let status = run.wait(Duration::from_secs(60));
    assert_nothing_runs_on(root.path(), "SIGINT of rehearsal run");
    assert_eq!(status.code(), Some(130), "{}", run.output());
    assert_eq!(root.entries(), Vec::<String>::new(), "{}", run.output());

    let root = Root::new();
    let mut run = run_mid_way(&root, &report.path().join("kill"));
    run.signal(Signal::SIGKILL);
    run.wait(Duration::from_secs(30));
    // Pods die through the simulator's reaper, scratch servers through their parent-death
    // signal; the cluster's state directory is left to the sweep.
    assert_nothing_runs_on(root.path(), "SIGKILL of rehearsal run");
    let swept = harness::keep::sweep_stale(root.path());
    assert!(
        swept.iter().any(|s| s
            .dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("harness-sim-"))),
        "{swept:?}"
    );
    assert_eq!(root.entries(), Vec::<String>::new());
}
