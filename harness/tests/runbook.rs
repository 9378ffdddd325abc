//! The runbook runner without a cluster: one confined shell session per document (export and
//! cd carry over, a command that ends the shell or passes its deadline does not end the
//! session), the read-only host outside the scratch directory, refused destructive commands,
//! and the checks and repairs that need no cluster.

use std::path::Path;
use std::time::Duration;

use harness::keep::ScratchDir;
use harness::report::runbook::{RunbookReport, Verdict};
use harness::runbook::{Block, Session, SessionOptions, StandIn, StandIns};

/// No cluster, no stand-ins.
struct Bare;

impl StandIns for Bare {
    async fn before_block(&mut self, _: &Block, _: &mut Session) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
    async fn replace(&mut self, _: &[Vec<String>], _: &str, _: &mut Session) -> Option<StandIn> {
        None
    }
    async fn prepare(
        &mut self,
        _: &str,
        _: &[std::path::PathBuf],
        _: &mut Session,
    ) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// Whether this machine can confine a shell (root, unshare); else the test is unavailable.
fn can_confine() -> bool {
    if harness::testing::require("unshare").is_none() {
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        harness::testing::unavailable("the runbook shell needs root for its mount namespace");
        return false;
    }
    true
}

async fn run(markdown: &str, deadline: Duration) -> (RunbookReport, ScratchDir) {
    let scratch = ScratchDir::new("harness-runbook-test-", "runbook test scratch").unwrap();
    let blocks = harness::runbook::parse(markdown).unwrap();
    let mut session = tokio::task::block_in_place(|| {
        Session::start(SessionOptions {
            scratch: scratch.path().to_owned(),
            home: scratch.path().join("home"),
            env: vec![],
        })
    })
    .unwrap();
    let report = harness::runbook::run(
        "test.md",
        "none",
        &blocks,
        &mut session,
        &mut Bare,
        &harness::runbook::Options {
            deadline,
            secrets: vec!["s3cret-Pw".into()],
        },
    )
    .await;
    drop(session);
    (report, scratch)
}

fn verdict_of<'a>(
    report: &'a RunbookReport,
    prefix: &str,
) -> &'a harness::report::runbook::CommandReport {
    // The command itself, else the first that starts with `prefix`.
    let all = &report.commands;
    all.iter()
        .find(|c| c.command == prefix)
        .or_else(|| all.iter().find(|c| c.command.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no command `{prefix}` in {:#?}", report.commands))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_session_carries_export_and_cd_and_survives_exit_and_deadlines() {
    if !can_confine() {
        return;
    }
    let doc = "## One\n\n```bash\nexport GREETING=hello\nmkdir -p ~/work && cd ~/work\n```\n\n\
               ## Two\n\n```bash\necho \"$GREETING from $(pwd)\" > note.txt\nexit 3\n\
               test \"$GREETING\" = hello && test -f note.txt\nsleep 30\n\
               test \"$GREETING\" = hello\nfalse | true\necho s3cret-Pw\n: > empty.txt\n```\n";
    let (report, scratch) = run(doc, Duration::from_secs(2)).await;
    assert_eq!(verdict_of(&report, "echo \"$GREETING").verdict, Verdict::Ok);
    let exit = verdict_of(&report, "exit 3");
    assert_eq!(exit.verdict, Verdict::Failed);
    assert!(
        exit.reason.as_deref().unwrap().contains("exit status 3"),
        "{exit:?}"
    );
    // After the shell ended, a new one has the variables and the directory.
    assert_eq!(
        verdict_of(&report, "test \"$GREETING\" = hello &&").verdict,
        Verdict::Ok
    );
    let sleep = verdict_of(&report, "sleep 30");
    assert_eq!(sleep.verdict, Verdict::Failed);
    assert!(
        sleep.reason.as_deref().unwrap().contains("deadline of 2 s"),
        "{sleep:?}"
    );
    assert!(
        sleep.duration_ms < 10_000,
        "killed at its deadline: {sleep:?}"
    );
    assert_eq!(
        verdict_of(&report, "test \"$GREETING\" = hello").verdict,
        Verdict::Ok
    );
    let hidden = verdict_of(&report, "false | true");
    assert_eq!(
        hidden.verdict,
        Verdict::Failed,
        "a failure hidden by a pipe: {hidden:?}"
    );
    let secret = verdict_of(&report, "echo ***");
    assert!(!secret.stdout_tail.contains("s3cret"), "{secret:?}");
    let empty = verdict_of(&report, ": > empty.txt");
    assert_eq!(empty.verdict, Verdict::Unsafe, "{empty:?}");
    assert!(empty.findings[0].contains("empty file"), "{empty:?}");
    let note = std::fs::read_to_string(scratch.path().join("home/work/note.txt")).unwrap();
    assert!(
        note.starts_with("hello from ") && note.contains("/home/work"),
        "{note}"
    );
    assert!(!report.passed());
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_outside_the_scratch_directory_is_touched() {
    if !can_confine() {
        return;
    }
    // A sentinel outside the scratch directory, and outside /tmp: the session has its own /tmp,
    // where the sentinel would not be seen at all (a clone checked out under /tmp has its
    // target directory there).
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let base = if base.starts_with("/tmp") {
        Path::new("/var/tmp")
    } else {
        base
    };
    let outside = tempfile::Builder::new()
        .prefix("runbook-sentinel-")
        .tempdir_in(base)
        .unwrap();
    let sentinel = outside.path().join("keep-me");
    std::fs::write(&sentinel, "still here").unwrap();
    let doc = format!(
        "## Destroy\n\n```bash\nrm -rf /\nrm -rf ~\nsudo rm -fr /*\nfind / -name x -delete\n\
         export VICTIM={dir}\nrm -rf \"$VICTIM\"\ntouch {dir}/new-file\necho x > /tmp/private\n\
         cat /tmp/private\n```\n",
        dir = outside.path().display()
    );
    let (report, _scratch) = run(&doc, Duration::from_secs(10)).await;
    for refused in [
        "rm -rf /",
        "rm -rf ~",
        "sudo rm -fr /*",
        "find / -name x -delete",
    ] {
        let c = verdict_of(&report, refused);
        assert_eq!(c.verdict, Verdict::Unsafe, "{c:?}");
        assert!(c.reason.as_deref().unwrap().starts_with("refused"), "{c:?}");
        assert_eq!(c.exit_status, None, "never ran: {c:?}");
    }
    // Past the refusal rules (a variable), the read-only mount namespace stops it.
    let sneaky = verdict_of(&report, "rm -rf \"$VICTIM\"");
    assert_eq!(sneaky.verdict, Verdict::Failed, "{sneaky:?}");
    assert!(
        sneaky
            .reason
            .as_deref()
            .unwrap()
            .contains("Read-only file system"),
        "{sneaky:?}"
    );
    let touch = verdict_of(&report, "touch ");
    assert!(
        touch
            .reason
            .as_deref()
            .unwrap()
            .contains("Read-only file system"),
        "{touch:?}"
    );
    assert_eq!(std::fs::read_to_string(&sentinel).unwrap(), "still here");
    assert!(!outside.path().join("new-file").exists());
    // /tmp is the scratch directory's own.
    assert_eq!(verdict_of(&report, "cat /tmp/private").stdout_tail, "x");
    assert!(!Path::new("/tmp/private").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repair_driven_by_the_tools_error_is_kept_only_when_it_succeeds() {
    if !can_confine() {
        return;
    }
    let doc = "## Repairs\n\n```bash\nmkdir -p ~/repo/conf ~/repo/tests && cd ~/repo\n\
               echo data > conf/app.txt\ncd tests\ncat conf/app.txt\n\
               tar --no-such-option -cf ~/x.tar -C ~/repo conf\nls --bogus-flag-xyz /nonexistent\n```\n";
    let (report, _scratch) = run(doc, Duration::from_secs(10)).await;
    let cat = verdict_of(&report, "cat conf/app.txt");
    assert_eq!(cat.verdict, Verdict::Failed);
    let fix = cat.suggestion.as_ref().expect("run where the path exists");
    assert!(fix.command == "cd ~/'repo' && cat conf/app.txt", "{fix:?}");
    assert_eq!(fix.output_tail, "data");
    let tar = verdict_of(&report, "tar --no-such-option");
    let fix = tar.suggestion.as_ref().expect("the unknown option dropped");
    assert_eq!(fix.command, "tar -cf ~/x.tar -C ~/repo conf");
    assert!(fix.strategy.contains("--no-such-option"), "{fix:?}");
    // Dropping the flag still fails (the path does not exist): no suggestion.
    let ls = verdict_of(&report, "ls --bogus");
    assert_eq!(ls.verdict, Verdict::Failed);
    assert!(ls.suggestion.is_none(), "{ls:?}");
}
