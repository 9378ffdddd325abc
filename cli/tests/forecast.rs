//! `rehearsal forecast` on reports as `rehearsal run` writes them: the forecast, the runbook's
//! limits (exit 3), the check against a run at the forecast size, and reports it cannot use.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::report::{PhaseReport, PhaseStatus, Report, Volume};

/// A report at `mb` MB whose backup and restore take 1 s plus `per_mb` ms per MB; every pod
/// is Ready 0.5 s after the restore ends.
fn report(mb: u64, per_mb: u64) -> Report {
    let bytes = mb * 1_000_000;
    let mut start = 0;
    let mut phase = |name: &str, ms: u64, grows: bool| {
        let p = PhaseReport {
            name: name.into(),
            status: PhaseStatus::Passed,
            start_ms: start,
            duration_ms: ms,
            detail: None,
            gate: None,
            volume: grows.then(|| Volume::over(Some(bytes), None, ms)),
        };
        start += ms;
        p
    };
    let phases = vec![
        phase("seed", 10 * mb, true),
        phase("preflight", 300, false),
        phase("backup", 1000 + per_mb * mb, true),
        phase("destroy-cluster-a", 400, false),
        phase("restore", 1000 + per_mb * mb, true),
        phase("gates", 200 + mb, true),
        phase("decide", 10, false),
    ];
    let mut report = Report::of_phases("full_rebuild", "sim", "2026-12-03T09:00:00Z", phases);
    report.pods_ready_ms = Some(1000 + per_mb * mb + 500);
    report.peak_rss_bytes = Some(100_000_000 + mb * 10_000);
    report
}

/// Writes `report` as `dir/name/report.json`, as a run's report directory holds it.
fn write(dir: &Path, name: &str, report: &Report) -> PathBuf {
    let run = dir.join(name);
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("report.json"), report.to_json()).unwrap();
    run
}

fn forecast(args: &[&Path], extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rehearsal"));
    cmd.arg("forecast");
    for a in args {
        cmd.arg("--from").arg(a);
    }
    cmd.args(extra).output().expect("run rehearsal forecast")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn two_sizes_forecast_a_third_and_the_check_measures_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let r1 = write(dir.path(), "r1", &report(100, 20));
    let r2 = write(dir.path(), "r2", &report(200, 20));
    let r4 = write(dir.path(), "r4", &report(400, 20));
    let json = dir.path().join("forecast.json");
    let out = forecast(
        &[&r1, &r2],
        &[
            "--check",
            r4.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("(least squares)"), "{t}");
    assert!(t.contains("RTO error +0.0 %"), "{t}");
    // 104 MB at 400 MB against 101 MB at 100 MB.
    assert!(
        t.contains(
            "peak RSS growth +3.0 % over the smallest report (at most 10 % tolerated): within"
        ),
        "{t}"
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // destroy 0.4 s + restore 9 s + gates 0.6 s.
    assert_eq!(written["forecast"]["rto_ms"], 10_000.0);

    // The same check against a run that took longer: the error is named, and above 20 % it
    // fails.
    let slow = write(dir.path(), "slow", &report(400, 40));
    let out = forecast(&[&r1, &r2], &["--check", slow.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("TOO LARGE"), "{}", text(&out));

    // Memory that grows with the data fails the check; a report without it cannot check.
    let mut grown = report(400, 20);
    grown.peak_rss_bytes = Some(112_000_000);
    let grown = write(dir.path(), "grown", &grown);
    let out = forecast(&[&r1, &r2], &["--check", grown.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("peak RSS growth +10.9 %") && text(&out).contains("TOO LARGE"),
        "{}",
        text(&out)
    );
    let out = forecast(
        &[&r1, &r2],
        &["--check", grown.to_str().unwrap(), "--max-rss-growth", "15"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut unmeasured = report(400, 20);
    unmeasured.peak_rss_bytes = None;
    let unmeasured = write(dir.path(), "unmeasured", &unmeasured);
    let out = forecast(&[&r1, &r2], &["--check", unmeasured.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("peak RSS growth: NOT CHECKED"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_restore_forecast_past_two_hours_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let r1 = write(dir.path(), "r1", &report(100, 2_000));
    let r2 = write(dir.path(), "r2", &report(200, 2_000));
    let out = forecast(&[&r1, &r2], &["--db-size", "10GB"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("database restore (the whole restore phase)"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("EXCEEDED"), "{}", text(&out));
    let out = forecast(&[&r1, &r2], &["--db-size", "500MB"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // At 1 GB the restore (2,001 s) is within 2 h, but the pods are Ready only after 2,001.5
    // s, past 30 min.
    let out = forecast(&[&r1, &r2], &["--db-size", "1GB"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(
            "database restore (the whole restore phase): 33.4 min forecast, limit 120 min: within"
        ) && t.contains(
            "every pod Ready (the restore's last wait): 33.4 min forecast, limit 30 min: EXCEEDED"
        ),
        "{t}"
    );
}

#[test]
fn a_limit_the_reports_cannot_forecast_exits_4_and_providers_do_not_mix() {
    let dir = tempfile::tempdir().unwrap();
    let mut without = [report(100, 20), report(200, 20)];
    for r in &mut without {
        r.pods_ready_ms = None;
    }
    let r1 = write(dir.path(), "r1", &without[0]);
    let r2 = write(dir.path(), "r2", &without[1]);
    let out = forecast(&[&r1, &r2], &["--db-size", "1GB"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("NOT CHECKED: every pod Ready (the restore's last wait)"),
        "{}",
        text(&out)
    );

    let sim = write(dir.path(), "sim", &report(100, 20));
    let mut on_local = report(200, 20);
    on_local.provider = "local".into();
    let local = write(dir.path(), "local", &on_local);
    let out = forecast(&[&sim, &local], &["--db-size", "1GB"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("was rehearsed on provider local"),
        "{}",
        text(&out)
    );
}

#[test]
fn reports_it_cannot_use_are_named_and_bad_options_are_usage() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good", &report(100, 20));
    let mut skipped = report(200, 20);
    skipped.phases[4].status = PhaseStatus::Skipped;
    let skipped = write(dir.path(), "skipped", &skipped);
    let out = forecast(&[&good, &skipped], &["--db-size", "1GB"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("phase `restore` did not run to its end in report")
            && text(&out).contains("skipped/report.json"),
        "{}",
        text(&out)
    );

    let not_a_report = dir.path().join("nope.json");
    std::fs::write(&not_a_report, "{}").unwrap();
    let existing = dir.path().join("exists.json");
    std::fs::write(&existing, "x").unwrap();
    for (args, named) in [
        (vec![], "--from"),
        (
            vec!["--from", not_a_report.to_str().unwrap(), "--db-size", "1GB"],
            "report.json",
        ),
        (vec!["--from", good.to_str().unwrap()], "--db-size"),
        (
            vec!["--from", good.to_str().unwrap(), "--db-size", "1XB"],
            "--db-size",
        ),
        (
            vec![
                "--from",
                good.to_str().unwrap(),
                "--db-size",
                "1GB",
                "--check",
                good.to_str().unwrap(),
            ],
            "--check",
        ),
        (
            vec![
                "--from",
                good.to_str().unwrap(),
                "--db-size",
                "1GB",
                "--json",
                existing.to_str().unwrap(),
            ],
            "--json",
        ),
    ] {
        let out = forecast(&[], &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(named), "{args:?}: {}", text(&out));
    }
}
