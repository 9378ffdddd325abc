//! The `rehearsal` binary as a user runs it: backup, verify (and its failures), restore with
//! --dry-run and for real, against real PostgreSQL servers; exit codes as documented.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::data::{DatasetSpec, load_dataset};
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider, Secret};

const PASSWORD: &str = "cli-Test-pw-7Q";

fn rehearsal(args: &[&str], pg: Option<&LocalPostgres>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rehearsal"));
    cmd.args(args).env_remove("PGPASSWORD");
    if pg.is_some() {
        cmd.env("PGPASSWORD", PASSWORD);
    }
    cmd.output().expect("run rehearsal")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn server() -> LocalPostgres {
    LocalPostgres::start(LocalOptions {
        password: Some(Secret::new(PASSWORD)),
        ..LocalOptions::titanium()
    })
    .await
    .unwrap()
}

/// A PostgreSQL server holding the Titanium dataset `spec`.
async fn seeded_server(spec: DatasetSpec) -> LocalPostgres {
    let pg = server().await;
    let client = pg.params().connect().await.unwrap();
    load_dataset(&client, &spec).await.unwrap();
    pg
}

/// `rehearsal backup` of `source`, direct over TCP, into `out` as `name`.
fn backup_to(source: &LocalPostgres, out: &Path, name: &str) -> Output {
    let port = source.params().port.to_string();
    rehearsal(
        &[
            "backup",
            "--pg-host",
            "127.0.0.1",
            "--pg-port",
            &port,
            "--out",
            out.to_str().unwrap(),
            "--name",
            name,
        ],
        Some(source),
    )
}

fn archive_in(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .expect("an archive")
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_verify_and_restore_through_the_cli() {
    let source = seeded_server(DatasetSpec::new(5, 50, 300)).await;
    let out_dir = tempfile::tempdir().unwrap();

    let backup = backup_to(&source, out_dir.path(), "cli-test");
    assert!(backup.status.success(), "{}", text(&backup));
    assert!(
        !text(&backup).contains(PASSWORD),
        "the password leaked into the output"
    );
    let dir = out_dir.path().join("cli-test");
    let archive = archive_in(out_dir.path());

    let verified = rehearsal(&["verify", archive.to_str().unwrap()], None);
    assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));

    // One flipped byte in the archive: verify must fail with the gate code and say where.
    let corrupt = out_dir.path().join("corrupt.tar.gz");
    let mut bytes = std::fs::read(&archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&corrupt, bytes).unwrap();
    let failed = rehearsal(&["verify", corrupt.to_str().unwrap()], None);
    assert_eq!(failed.status.code(), Some(3), "{}", text(&failed));

    let target = server().await;
    let tport = target.params().port.to_string();
    let args = [
        "restore",
        dir.to_str().unwrap(),
        "--pg-host",
        "127.0.0.1",
        "--pg-port",
        &tport,
    ];
    let dry = rehearsal(&[&args[..], &["--dry-run"]].concat(), Some(&target));
    assert!(dry.status.success(), "{}", text(&dry));
    let tclient = target.params().connect().await.unwrap();
    let posts: i64 = tclient
        .query_one("SELECT count(*) FROM posts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(posts, 0, "--dry-run must change nothing");

    let restored = rehearsal(&args, Some(&target));
    assert!(restored.status.success(), "{}", text(&restored));
    let posts: i64 = tclient
        .query_one("SELECT count(*) FROM posts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(posts, 300);

    // Restoring over data is refused without --force, and says so.
    let refused = rehearsal(&args, Some(&target));
    assert_eq!(
        refused.status.code(),
        Some(0),
        "a second restore of the same backup is a no-op: {}",
        text(&refused)
    );

    // The runbook's 방법 C: the schema, then the CSV files, in one transaction, over it.
    tclient
        .batch_execute("DELETE FROM posts WHERE id % 2 = 0")
        .await
        .unwrap();
    let csv = rehearsal(
        &[&args[..], &["--method", "csv", "--force"]].concat(),
        Some(&target),
    );
    assert_eq!(csv.status.code(), Some(0), "{}", text(&csv));
    assert!(
        text(&csv).contains("postgres/csv/public.posts.csv"),
        "{}",
        text(&csv)
    );
    let posts: i64 = tclient
        .query_one("SELECT count(*) FROM posts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(posts, 300, "the CSV restore brought back the deleted rows");
}

#[test]
fn unreachable_cluster_is_a_could_not_run_exit() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n",
    )
    .unwrap();
    let out = rehearsal(
        &["preflight", "--kubeconfig", kubeconfig.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("no current-context"), "{}", text(&out));
}

async fn posts(pg: &LocalPostgres) -> i64 {
    pg.params()
        .connect()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM posts", &[])
        .await
        .unwrap()
        .get(0)
}

/// The data loss through the binary: `restore --force` from a backup whose dump has a
/// byte flipped two thirds in (and, separately, is cut at two thirds) is refused with exit 3,
/// naming the file, and the target keeps its rows. The dry run prints a plan a person reads.
#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_a_damaged_dump_and_keeps_the_target() {
    let source = seeded_server(DatasetSpec::new(5, 40, 240)).await;
    let out_dir = tempfile::tempdir().unwrap();
    let backup = backup_to(&source, out_dir.path(), "cli-safety");
    assert!(backup.status.success(), "{}", text(&backup));
    let dir = out_dir.path().join("cli-safety");

    let target = seeded_server(DatasetSpec::new(8, 30, 150)).await;
    let tport = target.params().port.to_string();
    let restore = |backup: &Path, extra: &[&str]| {
        let args = [
            "restore",
            backup.to_str().unwrap(),
            "--pg-host",
            "127.0.0.1",
            "--pg-port",
            &tport,
        ];
        rehearsal(&[&args[..], extra].concat(), Some(&target))
    };

    let dry = restore(&dir, &["--dry-run", "--force"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let plan = text(&dry);
    assert!(
        plan.contains("would, in order:") && !plan.contains("DbRestorePlan {"),
        "{plan}"
    );

    // From the archive too: unpacked, its members and checksums checked, then planned.
    let from_archive = restore(&archive_in(out_dir.path()), &["--dry-run", "--force"]);
    assert_eq!(
        from_archive.status.code(),
        Some(0),
        "{}",
        text(&from_archive)
    );
    assert!(
        text(&from_archive).contains("would, in order:"),
        "{}",
        text(&from_archive)
    );

    let dump = dir.join("postgres/titanium.dump");
    let good = std::fs::read(&dump).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() * 2 / 3] ^= 0x01;
    for (name, bytes) in [
        ("flipped", flipped),
        ("truncated", good[..good.len() * 2 / 3].to_vec()),
    ] {
        std::fs::write(&dump, &bytes).unwrap();
        let out = restore(&dir, &["--force"]);
        assert_eq!(out.status.code(), Some(3), "{name}: {}", text(&out));
        assert!(
            text(&out).contains("postgres/titanium.dump")
                && text(&out).contains("nothing was changed"),
            "{name}: {}",
            text(&out)
        );
        assert_eq!(
            posts(&target).await,
            150,
            "{name}: the target lost its rows"
        );
    }
}

/// A kubeconfig whose server is a loopback port nobody listens on.
fn closed_port_kubeconfig(dir: &Path) -> (PathBuf, String) {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // closed again here
    let server = format!("https://127.0.0.1:{port}");
    let path = dir.join("config");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: gone\nclusters:\n- name: gone\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: u\nusers:\n- name: u\n  user:\n    token: t\n"
        ),
    )
    .unwrap();
    (path, server)
}

/// An API server that does not answer is "could not run" (exit 4), said in one line naming the
/// server: not fifteen failed checks and a NO-GO.
#[test]
fn preflight_against_an_unreachable_api_server_exits_4_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, server) = closed_port_kubeconfig(dir.path());
    let started = std::time::Instant::now();
    let out = rehearsal(
        &[
            "preflight",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--backup-dir",
            dir.path().to_str().unwrap(),
        ],
        None,
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line:\n{stderr}");
    assert!(
        lines[0].contains(&server) && lines[0].contains("cannot reach the API server"),
        "{stderr}"
    );
}

/// `backup --out DIR` that does not exist yet is created, private (0700), parents included.
#[tokio::test(flavor = "multi_thread")]
async fn backup_creates_a_missing_out_directory_private() {
    use std::os::unix::fs::PermissionsExt;
    let source = seeded_server(DatasetSpec::new(3, 5, 20)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new/backups");
    let backup = backup_to(&source, &out, "fresh");
    assert_eq!(backup.status.code(), Some(0), "{}", text(&backup));
    assert!(
        out.join("fresh/MANIFEST.json").is_file(),
        "{}",
        text(&backup)
    );
    for d in [dir.path().join("new"), out.clone()] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
}
