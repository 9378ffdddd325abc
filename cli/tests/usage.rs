//! Validation before work: every bad option of every `rehearsal` command exits 2 at once with a
//! message naming the option, and nothing is created, started or overwritten.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs `rehearsal` in `cwd` and returns its output and how long it took.
fn rehearsal_in(cwd: &Path, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rehearsal"))
        .args(args)
        .current_dir(cwd)
        .env_remove("PGPASSWORD")
        .env_remove("KUBECONFIG")
        .output()
        .expect("run rehearsal");
    (out, started.elapsed())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every entry of `dir`, recursively, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Asserts exit 2 within two seconds, `option` named in the message, and `cwd` unchanged.
fn assert_usage(cwd: &Path, args: &[&str], option: &str) {
    let before = tree(cwd);
    let (out, took) = rehearsal_in(cwd, args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    assert!(
        took < Duration::from_secs(2),
        "{args:?} took {took:?} before refusing"
    );
    assert!(
        text(&out).contains(option),
        "{args:?}: the message does not name {option}: {}",
        text(&out)
    );
    assert_eq!(tree(cwd), before, "{args:?} changed the directory");
}

#[test]
fn run_with_a_zero_load_gate_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    assert_usage(
        dir.path(),
        &["run", "--load-seconds", "0"],
        "--load-seconds",
    );
}

#[test]
fn every_command_refuses_bad_options_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let file = root.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_str().unwrap();
    let missing = root.join("missing");
    let missing = missing.to_str().unwrap();
    let missing_json = root.join("missing/out.json");
    let missing_json = missing_json.to_str().unwrap();
    let age_archive = root.join("b.tar.gz.age");
    std::fs::write(&age_archive, "x").unwrap();
    let age_archive = age_archive.display().to_string();
    let empty = root.join("empty-passphrase");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.display().to_string();
    // A PITR archive (as far as validation reads it: a directory with PITR.json).
    std::fs::create_dir(root.join("pitr")).unwrap();
    std::fs::write(root.join("pitr/PITR.json"), "{}").unwrap();
    let kind_config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kind-config/single-node.yaml")
        .display()
        .to_string();
    let cases: &[(&[&str], &str)] = &[
        // run
        (&["run", "--load-seconds", "99999"], "--load-seconds"),
        (&["run", "--users", "0"], "--users"),
        (&["run", "--posts", "0"], "--posts"),
        (&["run", "--size", "1XB"], "--size"),
        (&["run", "--size", "1TB"], "--size"),
        (&["run", "--size", "1GB", "--users", "5"], "--size"),
        (&["run", "--scenario", "nope"], "--scenario"),
        (&["run", "--kind-config", missing], "--kind-config"),
        (&["run", "--report", file], "--report"),
        (&["run", "--kubeconfig", file], "--kubeconfig"),
        (&["run", "--context", ""], "--context"),
        (&["run", "--k8s-bin", root.to_str().unwrap()], "--k8s-bin"),
        (
            &[
                "run",
                "--provider",
                "local",
                "--k8s-bin",
                root.to_str().unwrap(),
            ],
            "kube-apiserver",
        ),
        // backup
        (
            &["backup", "--out", root.to_str().unwrap(), "--name", "../x"],
            "--name",
        ),
        (
            &["backup", "--out", root.to_str().unwrap(), "--name", "/abs"],
            "--name",
        ),
        (
            &["backup", "--out", root.to_str().unwrap(), "--name", ""],
            "--name",
        ),
        (
            &["backup", "--out", root.to_str().unwrap(), "--name", ".."],
            "--name",
        ),
        (&["backup", "--out", file], "--out"),
        (&["backup", "--out", "o", "--pg-port", "0"], "--pg-port"),
        (&["backup", "--out", "o", "--pg-port", "6543"], "--pg-host"),
        (&["restore", ".", "--pg-port", "6543"], "--pg-host"),
        (
            &["restore", ".", "--method", "csv", "--from-sql"],
            "--from-sql",
        ),
        (&["restore", ".", "--method", "tsv"], "--method"),
        (&["backup", "--out", "o", "--pg-host", ""], "--pg-host"),
        (&["backup", "--out", "o", "-n", "Bad_NS"], "--namespace"),
        (&["backup", "--out", "o", "--pg-pod", "a/b"], "--pg-pod"),
        (&["backup", "--out", "o", "--database", ""], "--database"),
        (&["backup", "--out", "o", "--pg-user", ""], "--pg-user"),
        (
            &["backup", "--out", "o", "--redis-app", "x_"],
            "--redis-app",
        ),
        (
            &["backup", "--out", "o", "--keep-running", "A B"],
            "--keep-running",
        ),
        (
            &["backup", "--out", "o", "--terraform-dir", missing],
            "--terraform-dir",
        ),
        (
            &["backup", "--out", "o", "--passphrase-file", missing],
            "--passphrase-file",
        ),
        (
            &["backup", "--out", "o", "--recipient", "age1nope"],
            "--recipient",
        ),
        (
            &["backup", "--out", "o", "--offsite-dir", file],
            "--offsite-dir",
        ),
        (
            &["backup", "--out", "o", "--offsite-dir", "o"],
            "--offsite-dir",
        ),
        (
            &["backup", "--out", "o", "--kubeconfig", missing],
            "--kubeconfig",
        ),
        // verify
        (&["verify", missing], "BACKUP"),
        (&["verify", file, "--identity", missing], "--identity"),
        (&["verify", file, "--identity", file], "--identity"),
        (&["verify", &age_archive], "--passphrase-file"),
        (
            &["verify", &age_archive, "--passphrase-file", &empty],
            "--passphrase-file",
        ),
        (
            &["backup", "--out", "o", "--passphrase-file", &empty],
            "--passphrase-file",
        ),
        (
            &["backup", "--out", "o", "--keep-running", "web"],
            "--quiesce",
        ),
        (
            &["verify", file, "--passphrase-file", missing],
            "--passphrase-file",
        ),
        // restore
        (&["restore", missing], "BACKUP"),
        (&["restore", file], "BACKUP"),
        (&["restore", ".", "--pg-port", "0"], "--pg-port"),
        (&["restore", ".", "--database", ""], "--database"),
        (&["restore", ".", "-n", "a.b"], "--namespace"),
        // restore: point-in-time recovery
        (&["restore", "pitr", "--to-time", "yesterday"], "--to-time"),
        (
            &["restore", "pitr", "--to-time", "2026-12-03T06:10:00"],
            "--to-time",
        ),
        (&["restore", "pitr", "--to-lsn", "12"], "--to-lsn"),
        (&["restore", "pitr", "--to-lsn", "0/XYZ"], "--to-lsn"),
        (
            &[
                "restore",
                "pitr",
                "--to-time",
                "2026-12-03T06:10:00Z",
                "--to-lsn",
                "0/1",
            ],
            "--to-lsn",
        ),
        (
            &[
                "restore",
                "pitr",
                "--to-latest",
                "--to-time",
                "2026-12-03T06:10:00Z",
            ],
            "--to-latest",
        ),
        (&["restore", ".", "--to-latest"], "has no PITR.json"),
        (
            &["restore", "pitr"],
            "give --to-time, --to-lsn or --to-latest",
        ),
        (
            &["restore", "pitr", "--to-latest", "--from-sql"],
            "--from-sql",
        ),
        (
            &["restore", "pitr", "--to-latest", "--method", "csv"],
            "--method",
        ),
        // preflight
        (&["preflight", "--kubeconfig", missing], "--kubeconfig"),
        (&["preflight", "-n", "titanium/prod"], "--namespace"),
        (&["preflight", "--pg-pod", ""], "--pg-pod"),
        (&["preflight", "--json", missing_json], "--json"),
        (&["preflight", "--json", "."], "--json"),
        (&["preflight", "--terraform-dir", file], "--terraform-dir"),
        // sim
        (&["sim", "up", "--name", "../x"], "--name"),
        (&["sim", "up", "--name", "Upper"], "--name"),
        (&["sim", "up", "--kind-config", missing], "--kind-config"),
        (
            &[
                "sim",
                "up",
                "--kind-config",
                &kind_config,
                "--users",
                "0",
                "--posts",
                "5",
            ],
            "--posts",
        ),
        (&["sim", "down", "--name", "../../etc"], "--name"),
    ];
    for (args, option) in cases {
        assert_usage(root, args, option);
    }
}

/// `--name ../x` would have written `<out>/../x.partial` beside `--out`, and an absolute name
/// anywhere: refused before anything is created or any server is contacted.
#[test]
fn backup_names_never_leave_the_out_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let absolute = dir.path().join("abs");
    for name in ["../x", absolute.to_str().unwrap()] {
        let (result, _) = rehearsal_in(
            dir.path(),
            &[
                "backup",
                "--pg-host",
                "127.0.0.1",
                "--pg-port",
                "9",
                "--out",
                out.to_str().unwrap(),
                "--name",
                name,
            ],
        );
        assert_eq!(result.status.code(), Some(2), "{}", text(&result));
        assert!(
            text(&result).contains("single path component"),
            "{}",
            text(&result)
        );
    }
    assert_eq!(
        tree(dir.path()),
        ["out"],
        "something was written beside --out"
    );
}

/// An earlier run's report (here a PASS) is never overwritten: `--report` with it is refused
/// up front, and the report is unchanged.
#[test]
fn a_report_dir_holding_an_earlier_run_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    std::fs::create_dir(&report).unwrap();
    let earlier = r#"{"verdict":"pass"}"#;
    std::fs::write(report.join("report.json"), earlier).unwrap();
    let (out, took) = rehearsal_in(dir.path(), &["run", "--report", report.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(text(&out).contains("--report"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(report.join("report.json")).unwrap(),
        earlier
    );
    assert_eq!(tree(&report), ["report.json"]);
}
