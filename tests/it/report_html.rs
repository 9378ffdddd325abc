//! The HTML report in a real headless browser (Debian's chromium): the page loads, and the key
//! elements are in the rendered DOM: verdict, RTO/RPO, the phase timeline chart, the
//! before/after table, gate findings, load figures and the link to goose's report.

use std::process::Command;

use harness::report::{
    GateReport, LoadReport, Outcome, PhaseReport, PhaseStatus, Report, TableReport, render_html,
};

fn sample() -> Report {
    Report {
        scenario: "full_rebuild".into(),
        provider: "sim".into(),
        verdict: Outcome::Pass,
        started_at: "2026-11-26T05:00:00Z".into(),
        phases: ["create-cluster-a", "deploy", "backup", "restore", "gates"]
            .iter()
            .enumerate()
            .map(|(i, n)| PhaseReport {
                name: (*n).into(),
                status: PhaseStatus::Passed,
                start_ms: i as u64 * 1000,
                duration_ms: 900,
                detail: None,
                gate: None,
                volume: None,
            })
            .collect(),
        tables: vec![TableReport {
            name: "posts".into(),
            rows_before: 2000,
            rows_after: Some(2000),
            digest_before: "ab".repeat(32),
            digest_after: Some("ab".repeat(32)),
        }],
        gates: vec![GateReport {
            name: "row counts".into(),
            passed: true,
            findings: vec![],
            not_run: None,
        }],
        load: Some(LoadReport {
            requests: 1234,
            failures: 0,
            rps: 411.3,
            p95_ms: 8.5,
            goose_report: Some("goose-report.html".into()),
            endpoints: vec![],
        }),
        rto_ms: Some(4200),
        rpo_ms: Some(12),
        rpo_clock: Some("postgresql server".into()),
        pods_ready_ms: Some(1500),
        peak_rss_bytes: Some(100 << 20),
        rollback_reasons: vec![],
        not_assessed: vec![],
        backup: None,
    }
}

#[test]
fn chromium_renders_the_report_with_its_key_elements() {
    let Ok(chromium) = which_chromium() else {
        harness::testing::unavailable("chromium is not installed (ci/setup installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, render_html(&sample())).unwrap();
    let profile = dir.path().join("profile");
    let shot = dir.path().join("shot.png");
    let base = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    };
    let mut dump = Command::new(&chromium);
    base(&mut dump);
    let out = dump
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "id=\"verdict\"",
        "PASS",
        "id=\"timeline\"",
        "<rect",
        "id=\"tables\"",
        "posts",
        "id=\"gates\"",
        "id=\"load\"",
        "411.3",
        "id=\"goose-report\"",
        "RTO",
    ] {
        assert!(dom.contains(needle), "rendered DOM lacks {needle}");
    }
    let mut screenshot = Command::new(&chromium);
    base(&mut screenshot);
    let out = screenshot
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1200,900")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "the page rendered to an image of {} bytes",
        png.len()
    );
}

fn which_chromium() -> Result<std::path::PathBuf, ()> {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| std::path::Path::new(d).join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}
