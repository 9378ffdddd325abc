//! `rehearsal runbook` on documents it cannot run: each is a clear error naming what is wrong,
//! exit 2 (usage), before any cluster, shell or directory is made.

use std::path::Path;
use std::process::{Command, Output};

fn rehearsal(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rehearsal"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run rehearsal")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check(contents: &[u8], extra: &[&str], expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc.md");
    std::fs::write(&doc, contents).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let report = dir.path().join("report");
    let mut args = vec![
        "runbook",
        doc.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = rehearsal(&repo, &args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(expected),
        "expected `{expected}` in: {}",
        text(&out)
    );
    assert!(
        !report.exists(),
        "nothing is created for a document that cannot run"
    );
}

#[test]
fn documents_that_cannot_run_are_usage_errors() {
    check(
        b"# Notes\n\nJust prose.\n\n```text\nls\n```\n",
        &[],
        "has no fenced shell block",
    );
    check(
        b"## S\n\n```bash\necho caf\xe9\n```\n",
        &[],
        "is not UTF-8: invalid byte sequence at line 4",
    );
    check(
        b"## S\n\n```bash\ncat <<EOF\nnever ends\n```\n",
        &[],
        "ends inside a heredoc",
    );
    check(
        b"## S\n\n```bash\nls\n```\n",
        &["--only", "Phase 9"],
        "no section of the runbook matches `Phase 9`",
    );
    check(
        b"## S\n\n```bash\nls\n```\n",
        &["--deadline", "0"],
        "--deadline",
    );
    check(
        b"## S\n\n```bash\nls\n```\n",
        &["--context", "prod"],
        "--context applies only",
    );
}

#[test]
fn a_missing_document_is_named() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = rehearsal(&repo, &["runbook", "no/such/runbook.md"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no/such/runbook.md"), "{}", text(&out));
}
