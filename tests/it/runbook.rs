//! `rehearsal runbook` on the simulated cluster: a small runbook written for these tests with
//! known-good commands and one defect of each kind, each asserted with its verdict; and the
//! shipped Titanium runbook end to end (cluster A destroyed, B built, later phases on B), its
//! summary and a cause for every failed or unsafe command.

use crate::support::{ensure_titanium_built, repo};
use harness::cluster::ProviderSpec;
use harness::report::runbook::{CommandReport, RunbookReport, Verdict};

fn prerequisites() -> bool {
    for tool in ["unshare", "kubectl", "terraform", "psql"] {
        if harness::testing::require(tool).is_none() {
            return false;
        }
    }
    if !nix::unistd::geteuid().is_root() {
        harness::testing::unavailable("the runbook shell needs root for its mount namespace");
        return false;
    }
    ensure_titanium_built();
    true
}

async fn run_document(document: &str) -> RunbookReport {
    let path = repo().join(document);
    let blocks = harness::runbook::parse_file(&path).unwrap();
    let report_dir = tempfile::tempdir().unwrap();
    let mut config = scenarios::runbook::Config::new(
        path,
        blocks,
        ProviderSpec::Sim {
            kind_config: Some(repo().join("kind-config/single-node.yaml")),
        },
        harness::deploy::overlay("sim"),
        report_dir.path().to_owned(),
    );
    config.deadline = std::time::Duration::from_secs(60);
    scenarios::runbook::run(&config).await.unwrap()
}

fn at(report: &RunbookReport, line: usize) -> &CommandReport {
    report
        .commands
        .iter()
        .find(|c| c.line == line)
        .unwrap_or_else(|| panic!("no command at line {line}"))
}

fn check(report: &RunbookReport, line: usize, verdict: Verdict, cause: &str) {
    let c = at(report, line);
    let said = format!("{:?} {:?} {:?}", c.reason, c.findings, c.suggestion);
    assert_eq!(c.verdict, verdict, "line {line}: {c:#?}");
    assert!(
        said.contains(cause),
        "line {line} should name `{cause}`: {c:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_known_defect_gets_its_verdict_and_cause() {
    if !prerequisites() {
        return;
    }
    let report = run_document("fixtures/runbook/tests/defects.md").await;
    // Known good.
    for line in [9, 10, 11, 12, 18, 19, 20, 46, 47, 54] {
        check(&report, line, Verdict::Ok, "");
    }
    // A nonexistent option: kubectl's words, and the command without it, which ran.
    check(
        &report,
        28,
        Verdict::Failed,
        "unknown flag: --no-such-option",
    );
    let fix = at(&report, 28).suggestion.clone().unwrap();
    assert_eq!(fix.command, "kubectl get pods -n $NAMESPACE");
    assert_eq!(fix.exit_status, 0);
    check(
        &report,
        34,
        Verdict::Failed,
        "pods \\\"postgresql-0\\\" not found",
    );
    assert_eq!(
        at(&report, 34).suggestion.as_ref().unwrap().command,
        "kubectl -n $NAMESPACE get pod $PG_POD"
    );
    check(&report, 40, Verdict::Unsafe, "without `-i`");
    // The count printed before differs from the one after (the load generator writes).
    check(&report, 48, Verdict::Unsafe, "differ from");
    // Fails only because the step before it changed the database.
    check(
        &report,
        55,
        Verdict::Failed,
        "relation \\\"rehearsal_note\\\" already exists",
    );
    // tar of a data directory being written.
    check(&report, 63, Verdict::Unsafe, "file changed as we read it");
    // A claim from a snapshot that exists is fine (it waits for its first consumer); one from
    // a snapshot that is not there can never be provisioned.
    for line in [71, 77, 78] {
        check(&report, line, Verdict::Ok, "");
    }
    check(
        &report,
        87,
        Verdict::Unsafe,
        "claim from-nothing can never be provisioned, so a pod that uses it cannot start: \
         volumesnapshots.snapshot.storage.k8s.io \\\"gone-with-cluster-a\\\" not found",
    );
    assert_eq!(report.summary.commands, 20);
    assert_eq!((report.summary.failed, report.summary.unsafe_), (3, 4));
    assert!(!report.passed());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_runbook_runs_end_to_end_with_its_defects_named() {
    if !prerequisites() {
        return;
    }
    let report = run_document("fixtures/runbook/solid-cloud-rebuild-guide.ko.md").await;
    assert!(report.stopped.is_none(), "{:?}", report.stopped);
    let s = &report.summary;
    assert_eq!(s.commands, 151, "{s:?}");
    // Three stand-ins ran (`istioctl install`, the two `k6 run`): replaced, or failed in the
    // stand-in's own words (the load gate's thresholds on a loaded machine). The curls to
    // $INGRESS_IP run for real, through the ingress gateway.
    let stand_ins: Vec<&CommandReport> = report
        .commands
        .iter()
        .filter(|c| c.exit_status.is_none() && c.replaced_by.is_some())
        .collect();
    assert_eq!(stand_ins.len(), 3, "{stand_ins:#?}");
    for c in &stand_ins {
        assert!(
            c.verdict == Verdict::Replaced || c.verdict == Verdict::Failed,
            "{c:#?}"
        );
    }
    assert_eq!(s.skipped, 18, "{s:?}");
    assert_eq!(s.ok + s.failed + s.unsafe_ + s.replaced, 133, "{s:?}");
    // A few commands may flip with timing (tar racing the load generator); the defects below
    // do not.
    assert!(s.failed >= 13 && s.unsafe_ >= 4, "{s:?}");
    // What works since the cluster has an ingress gateway and the metrics API: the gateway's
    // namespace exists to be deleted (3), its IP is found (6.1), `kubectl top` answers.
    for line in [432, 664, 886, 887] {
        check(&report, line, Verdict::Ok, "");
    }
    assert!(
        report
            .events
            .iter()
            .any(|e| e.contains("cluster A destroyed"))
            && report.events.iter().any(|e| e.contains("cluster B")),
        "{:?}",
        report.events
    );
    for c in report.commands.iter().filter(|c| c.verdict.is_bad()) {
        assert!(
            c.reason.as_deref().is_some_and(|r| !r.trim().is_empty()),
            "a failed or unsafe command without a cause: {c:#?}"
        );
    }
    check(
        &report,
        293,
        Verdict::Failed,
        "unrecognized option '--dry-run'",
    );
    check(&report, 301, Verdict::Failed, "exit status 1");
    check(
        &report,
        417,
        Verdict::Failed,
        "error asking for approval: EOF",
    );
    assert_eq!(
        at(&report, 417).suggestion.as_ref().unwrap().command,
        "terraform destroy -auto-approve"
    );
    check(
        &report,
        521,
        Verdict::Failed,
        "namespaces \\\"titanium-prod\\\" not found",
    );
    check(&report, 593, Verdict::Unsafe, "already exists");
    check(
        &report,
        606,
        Verdict::Unsafe,
        "relation \\\"users\\\" already exists",
    );
    check(&report, 628, Verdict::Unsafe, "differ from");
    check(&report, 769, Verdict::Failed, "No such file or directory");
    assert!(
        at(&report, 769)
            .suggestion
            .as_ref()
            .unwrap()
            .command
            .starts_with("cd ~/'Desktop/Git/Monitoring-v2' && cat > k8s-manifests/base/"),
        "{:?}",
        at(&report, 769)
    );
    check(
        &report,
        901,
        Verdict::Failed,
        "cannot run inside a transaction block",
    );
    assert!(
        at(&report, 901)
            .suggestion
            .as_ref()
            .unwrap()
            .command
            .contains("-d postgres -c \"DROP DATABASE titanium WITH (FORCE);\" -c \"CREATE DATABASE titanium;\""),
        "{:?}",
        at(&report, 901)
    );
    // Rollback option 3 on the rebuilt cluster: the snapshot was taken on cluster A (1.2A) and
    // went with it, so the claim from it can never be provisioned, and the patch points
    // PostgreSQL at that claim.
    for line in [925, 944] {
        check(
            &report,
            line,
            Verdict::Unsafe,
            "claim postgresql-pvc-restored can never be provisioned",
        );
    }
    check(&report, 944, Verdict::Unsafe, "is not in titanium-prod");
    // Stand-ins said what they stood in for.
    let k6 = at(&report, 697);
    assert!(
        k6.replaced_by.as_deref().unwrap().contains("goose"),
        "{k6:#?}"
    );
    assert!(
        k6.reason.as_deref().unwrap().contains("load gate"),
        "the gate's own verdict: {k6:#?}"
    );
    check(
        &report,
        518,
        Verdict::Replaced,
        "the ingress gateway (6 objects) ready in istio-system",
    );
    // 6.1 and 6.2 verbatim on cluster B: INGRESS_IP from the gateway's LoadBalancer Service,
    // then curl through it, routed by the restored VirtualService.
    let ingress_ip = at(&report, 664);
    assert_eq!(ingress_ip.verdict, Verdict::Ok, "{ingress_ip:#?}");
    for (line, says) in [
        (670, "user-service"),
        (671, "blog-service"),
        (672, "auth-service"),
        (679, "\"total_estimate\""),
        (682, "\"total_estimate\""),
        (685, "\"created_at\""),
    ] {
        let c = at(&report, line);
        assert_eq!(c.verdict, Verdict::Ok, "line {line}: {c:#?}");
        assert!(c.replaced_by.is_none(), "line {line}: {c:#?}");
        assert!(c.stdout_tail.contains(says), "line {line}: {c:#?}");
    }
    check(&report, 397, Verdict::Skipped, "interactive prompt");
    check(&report, 527, Verdict::Skipped, "not installed here: `helm`");
    check(&report, 440, Verdict::Skipped, "commented out");
    // Rollback criterion 4 ("4. 리소스 부족"), verbatim, against the simulator's metrics API.
    for (line, header) in [(886, "CPU(%)"), (887, "MEMORY(bytes)")] {
        let c = at(&report, line);
        assert!(c.command.starts_with("kubectl top "), "{c:#?}");
        assert_eq!(c.verdict, Verdict::Ok, "line {line}: {c:#?}");
        assert!(c.stdout_tail.contains(header), "line {line}: {c:#?}");
    }
}
