//! The rehearsal report: what ran, how long each phase took, what every gate found, and the
//! before/after figures of every table. Rendered as JSON (the machine-readable record), JUnit
//! (one test case per gate, for CI systems) and HTML (for people).

mod html;
mod junit;
mod record;
pub mod runbook;

use serde::{Deserialize, Serialize};

pub use html::render_html;
pub use junit::render_junit;
pub use record::{ChecklistItem, checklist, render_rebuild_record};

/// The overall outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every phase ran, every gate passed, every criterion was assessed.
    Pass,
    /// Everything ran and a gate failed: roll back.
    Fail,
    /// A phase, a step between phases or a check a gate needs could not run: the rehearsal
    /// proves nothing either way (never a pass).
    #[serde(rename = "could_not_run")]
    CouldNotRun,
}

/// How a phase ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseStatus {
    /// It did its work.
    Passed,
    /// It failed; later phases did not run.
    Failed,
    /// It did not run.
    Skipped,
}

/// One phase of a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    /// Its name (`backup`, `destroy`, ...).
    pub name: String,
    /// How it ended.
    pub status: PhaseStatus,
    /// When it started, in milliseconds after the scenario started.
    pub start_ms: u64,
    /// How long it took.
    pub duration_ms: u64,
    /// A one-line summary, or the error that ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The gate whose failed verdict failed this phase (the phase ran and judged red). A
    /// failed phase without one could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    /// What the phase moved, and so its throughput, for phases whose time grows with the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
}

/// What a phase moved (bytes written or read, rows), and the throughput over its duration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    /// Bytes the phase wrote or read (a backup's files, a restore's archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Rows it wrote or read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Megabytes (10^6 bytes) per second over the phase's duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mb_per_s: Option<f64>,
    /// Rows per second over the phase's duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_s: Option<f64>,
}

impl Volume {
    /// The volume of a phase that took `duration_ms`; no rate for a phase of 0 ms.
    pub fn over(bytes: Option<u64>, rows: Option<u64>, duration_ms: u64) -> Volume {
        let per_s = |n: u64, scale: f64| {
            (duration_ms > 0).then(|| n as f64 / scale / (duration_ms as f64 / 1000.0))
        };
        Volume {
            bytes,
            rows,
            mb_per_s: bytes.and_then(|b| per_s(b, 1e6)),
            rows_per_s: rows.and_then(|r| per_s(r, 1.0)),
        }
    }
}

impl std::fmt::Display for Volume {
    /// `312.4 MB at 41.2 MB/s, 1,100,000 rows at 145,000 rows/s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(b) = self.bytes {
            parts.push(match self.mb_per_s {
                Some(r) => format!("{:.1} MB at {r:.1} MB/s", b as f64 / 1e6),
                None => format!("{:.1} MB", b as f64 / 1e6),
            });
        }
        if let Some(n) = self.rows {
            parts.push(match self.rows_per_s {
                Some(r) => format!(
                    "{} rows at {} rows/s",
                    thousands(n),
                    thousands(r.round() as u64)
                ),
                None => format!("{} rows", thousands(n)),
            });
        }
        f.write_str(&parts.join(", "))
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One table before the backup and after the restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReport {
    /// The table.
    pub name: String,
    /// Rows in the backup's snapshot.
    pub rows_before: u64,
    /// Rows after the restore (None when it was not observed).
    pub rows_after: Option<u64>,
    /// Content digest in the backup's snapshot.
    pub digest_before: String,
    /// Content digest after the restore.
    pub digest_after: Option<String>,
}

impl TableReport {
    /// Whether the digests are equal.
    pub fn digest_equal(&self) -> bool {
        self.digest_after.as_deref() == Some(self.digest_before.as_str())
    }
}

/// One gate's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateReport {
    /// The gate's name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What it found: the gate's own findings, structured (subject, kind, expected and
    /// actual values, detail), not flattened to text.
    pub findings: Vec<crate::verify::Finding>,
    /// Why it could not check (part of) what it checks, when it could not: such a gate is
    /// failed, and the run could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_run: Option<String>,
}

impl GateReport {
    /// The findings as text, one each, joined by `sep`.
    pub fn findings_text(&self, sep: &str) -> String {
        crate::verify::findings_text(&self.findings, sep)
    }
}

/// The load gate's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Requests per second.
    pub rps: f64,
    /// 95th percentile latency.
    pub p95_ms: f64,
    /// goose's own HTML report, relative to the report directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goose_report: Option<String>,
    /// Each request kind's latencies, from goose's per-request figures.
    #[serde(default)]
    pub endpoints: Vec<crate::facts::EndpointLatency>,
}

/// What the run's backup was, for the rebuild record (runbook 7.1) and its checklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEvidence {
    /// The backup's name (the runbook's `$BACKUP_DATE`).
    pub name: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Bytes of every file in its manifest.
    pub bytes: u64,
    /// Files in its manifest.
    pub files: usize,
    /// SHA-256 of `MANIFEST.json`.
    pub manifest_sha256: String,
    /// The database and server version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The pg_dump archive: path, size, sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_dump: Option<String>,
    /// The terraform state file, when the backup has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terraform_state: Option<String>,
    /// Off-site copies made and read back: where, and the sha256 read back.
    #[serde(default)]
    pub offsite: Vec<String>,
}

/// A whole rehearsal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The scenario.
    pub scenario: String,
    /// The cluster provider.
    pub provider: String,
    /// `pass` or `fail`.
    pub verdict: Outcome,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// The phases in order.
    pub phases: Vec<PhaseReport>,
    /// Tables before and after.
    pub tables: Vec<TableReport>,
    /// Gates in order.
    pub gates: Vec<GateReport>,
    /// The load gate's figures, when it ran.
    pub load: Option<LoadReport>,
    /// Recovery time: from the start of the destroy to the end of the gates.
    pub rto_ms: Option<u64>,
    /// Recovery point: from the moment writes stopped to the snapshot.
    pub rpo_ms: Option<u64>,
    /// Which clock both ends of the RPO were read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_clock: Option<String>,
    /// The restore's last wait, until every pod of the namespace was Ready (after the data and
    /// the workloads; for the snapshot rollback, from the restore's start): what the runbook's
    /// rollback criterion limits to 30 minutes. `None` when the run did not get that far (or
    /// the report is older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_ready_ms: Option<u64>,
    /// The peak resident set of the process that ran the rehearsal, in bytes
    /// ([`crate::process::own_peak_rss`]): what `rehearsal forecast --check` holds flat across
    /// sizes. `None` when it could not be read (or the report is older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// Why the verdict is not a pass, one line each: the rollback decision's reasons, every
    /// failed gate and phase, every criterion that could not be assessed. Empty exactly when
    /// the verdict is `pass` (see [`Report::conclude`]).
    #[serde(default)]
    pub rollback_reasons: Vec<String>,
    /// Rollback criteria that could not be assessed for lack of an observation.
    #[serde(default)]
    pub not_assessed: Vec<String>,
    /// The backup the run took, when it took one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupEvidence>,
}

impl Report {
    /// A concluded report of these phases and nothing else: no tables, gates, load or recovery
    /// figures. Its verdict follows from the phases (see [`Report::conclude`]); a scenario
    /// adds what it observed and concludes again.
    pub fn of_phases(
        scenario: &str,
        provider: &str,
        started_at: &str,
        phases: Vec<PhaseReport>,
    ) -> Report {
        let mut report = Report {
            scenario: scenario.to_owned(),
            provider: provider.to_owned(),
            verdict: Outcome::Fail,
            started_at: started_at.to_owned(),
            phases,
            tables: Vec::new(),
            gates: Vec::new(),
            load: None,
            rto_ms: None,
            rpo_ms: None,
            rpo_clock: None,
            pods_ready_ms: None,
            peak_rss_bytes: None,
            rollback_reasons: Vec::new(),
            not_assessed: Vec::new(),
            backup: None,
        };
        report.conclude();
        report
    }

    /// Whether something could not run: a phase that failed without a gate's verdict (an
    /// error, also one between phases), or a gate that could not check.
    pub fn could_not_run(&self) -> bool {
        self.phases
            .iter()
            .any(|p| p.status == PhaseStatus::Failed && p.gate.is_none())
            || self.gates.iter().any(|g| g.not_run.is_some())
    }

    /// Settles the verdict from the evidence and makes the reasons agree with it: every failed
    /// phase, every failed gate not already named by a reason (`gate <name> ...`) and every
    /// criterion not assessed becomes a reason. So a verdict other than `pass` always comes
    /// with its reasons, and `pass` means every phase and gate passed and nothing was left
    /// unassessed.
    pub fn conclude(&mut self) {
        let mut added = Vec::new();
        for phase in self
            .phases
            .iter()
            .filter(|p| p.status == PhaseStatus::Failed)
        {
            let detail = phase.detail.as_deref().unwrap_or("no detail");
            added.push(match &phase.gate {
                Some(gate) => format!("phase {} failed: gate {gate} failed", phase.name),
                None => format!("phase {} could not run: {detail}", phase.name),
            });
        }
        for gate in self.gates.iter().filter(|g| !g.passed) {
            let named = format!("gate {} ", gate.name);
            if self.rollback_reasons.iter().any(|r| r.starts_with(&named)) {
                continue;
            }
            added.push(match &gate.not_run {
                Some(why) => format!("gate {} could not run: {why}", gate.name),
                None if gate.findings.is_empty() => format!("gate {} failed", gate.name),
                None => format!("gate {} failed: {}", gate.name, gate.findings_text("; ")),
            });
        }
        for criterion in &self.not_assessed {
            if !self
                .rollback_reasons
                .iter()
                .any(|r| r.starts_with(criterion.as_str()))
            {
                added.push(format!("{criterion}: not assessed (no observation)"));
            }
        }
        // Idempotent: a reason already given is not given twice.
        for reason in added {
            if !self.rollback_reasons.contains(&reason) {
                self.rollback_reasons.push(reason);
            }
        }
        self.verdict = if self.could_not_run() {
            Outcome::CouldNotRun
        } else if !self.rollback_reasons.is_empty()
            || self.phases.iter().any(|p| p.status != PhaseStatus::Passed)
        {
            Outcome::Fail
        } else {
            Outcome::Pass
        };
        if self.verdict != Outcome::Pass && self.rollback_reasons.is_empty() {
            // Only skipped phases with nothing failed: say so rather than fail silently.
            let skipped: Vec<&str> = self
                .phases
                .iter()
                .filter(|p| p.status == PhaseStatus::Skipped)
                .map(|p| p.name.as_str())
                .collect();
            self.rollback_reasons
                .push(format!("phases did not run: {}", skipped.join(", ")));
        }
    }

    /// This report as [`Report::conclude`] settles it; the renderers use it, so no rendering
    /// can show a verdict without its reasons, whatever the caller filled in.
    pub(crate) fn concluded(&self) -> std::borrow::Cow<'_, Report> {
        let mut settled = self.clone();
        settled.conclude();
        if settled == *self {
            std::borrow::Cow::Borrowed(self)
        } else {
            std::borrow::Cow::Owned(settled)
        }
    }

    /// The report as pretty JSON (concluded: see [`Report::conclude`]).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&*self.concluded()).expect("a report always serialises")
    }
}

#[cfg(test)]
pub(crate) mod sample {
    use super::*;

    /// A report with one of everything, for renderer tests.
    pub(crate) fn report() -> Report {
        Report {
            scenario: "full_rebuild".into(),
            provider: "sim".into(),
            verdict: Outcome::Fail,
            started_at: "2026-11-26T05:00:00Z".into(),
            phases: vec![
                PhaseReport {
                    name: "backup".into(),
                    status: PhaseStatus::Passed,
                    start_ms: 0,
                    duration_ms: 1200,
                    detail: None,
                    gate: None,
                    volume: Some(Volume::over(Some(3_000_000), Some(120_000), 1200)),
                },
                PhaseReport {
                    name: "restore".into(),
                    status: PhaseStatus::Failed,
                    start_ms: 1200,
                    duration_ms: 800,
                    detail: Some("pg_restore <failed> & \"quoted\"".into()),
                    gate: None,
                    volume: None,
                },
            ],
            tables: vec![TableReport {
                name: "users".into(),
                rows_before: 10,
                rows_after: Some(9),
                digest_before: "aa".into(),
                digest_after: Some("bb".into()),
            }],
            gates: vec![
                GateReport {
                    name: "row-counts".into(),
                    passed: false,
                    findings: vec![
                        crate::verify::Finding::new(
                            "public.users",
                            crate::verify::FindingKind::Mismatch,
                            "row count differs",
                        )
                        .values(10, 9),
                    ],
                    not_run: None,
                },
                GateReport {
                    name: "schema".into(),
                    passed: true,
                    findings: vec![],
                    not_run: None,
                },
            ],
            load: Some(LoadReport {
                requests: 100,
                failures: 2,
                rps: 50.0,
                p95_ms: 12.5,
                goose_report: Some("goose.html".into()),
                endpoints: vec![crate::facts::EndpointLatency {
                    name: "GET list posts".into(),
                    p50_ms: 6.25,
                    p95_ms: 12.5,
                }],
            }),
            rto_ms: Some(2000),
            rpo_ms: Some(15),
            rpo_clock: Some("postgresql server".into()),
            pods_ready_ms: Some(1500),
            peak_rss_bytes: Some(100 << 20),
            rollback_reasons: vec!["data mismatch in users".into()],
            not_assessed: vec![],
            backup: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_fields() {
        let json: serde_json::Value = serde_json::from_str(&sample::report().to_json()).unwrap();
        for key in [
            "scenario",
            "provider",
            "verdict",
            "phases",
            "tables",
            "gates",
            "load",
            "rto_ms",
            "rpo_ms",
            "pods_ready_ms",
            "peak_rss_bytes",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["verdict"], "could_not_run", "the restore phase erred");
        assert_eq!(json["phases"][0]["duration_ms"], 1200);
        assert_eq!(json["phases"][0]["volume"]["bytes"], 3_000_000);
        assert_eq!(json["phases"][0]["volume"]["mb_per_s"], 2.5);
        assert_eq!(json["phases"][0]["volume"]["rows_per_s"], 100_000.0);
        assert!(json["phases"][1].get("volume").is_none());
        assert_eq!(json["load"]["p95_ms"], 12.5);
    }

    #[test]
    fn a_volume_gives_its_rates_and_none_over_no_time() {
        let v = Volume::over(Some(312_400_000), Some(1_100_000), 8_000);
        assert_eq!(
            v.to_string(),
            "312.4 MB at 39.0 MB/s, 1,100,000 rows at 137,500 rows/s"
        );
        let v = Volume::over(Some(1_000), None, 0);
        assert_eq!((v.mb_per_s, v.rows_per_s), (None, None));
        assert_eq!(v.to_string(), "0.0 MB");
        assert_eq!(
            Volume::over(None, Some(999), 1000).to_string(),
            "999 rows at 999 rows/s"
        );
    }

    #[test]
    fn verdict_is_pass_only_when_everything_passed() {
        let mut report = sample::report();
        report.rollback_reasons.clear();
        report.conclude();
        assert_eq!(
            report.verdict,
            Outcome::CouldNotRun,
            "the restore phase erred"
        );
        let mut report = sample::report();
        report.phases[1].gate = Some("row-counts".into());
        report.conclude();
        assert_eq!(report.verdict, Outcome::Fail);
        let mut report = sample::report();
        report
            .phases
            .iter_mut()
            .for_each(|p| p.status = PhaseStatus::Passed);
        report.gates.iter_mut().for_each(|g| g.passed = true);
        report.conclude();
        assert_eq!(
            report.verdict,
            Outcome::Fail,
            "a rollback reason still fails"
        );
        let mut report = sample::report();
        report
            .phases
            .iter_mut()
            .for_each(|p| p.status = PhaseStatus::Passed);
        report.gates.iter_mut().for_each(|g| g.passed = true);
        report.rollback_reasons.clear();
        report.conclude();
        assert_eq!(report.verdict, Outcome::Pass);
        assert!(report.rollback_reasons.is_empty());
    }

    #[test]
    fn conclude_is_idempotent_and_rendering_never_shows_a_bare_fail() {
        let mut report = sample::report();
        report.rollback_reasons.clear();
        report.verdict = Outcome::Fail;
        // A caller that forgot to conclude: the renderings still carry the reasons.
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["verdict"], "could_not_run");
        assert!(
            !json["rollback_reasons"].as_array().unwrap().is_empty(),
            "{json}"
        );
        assert!(render_html(&report).contains("Could not run because"));
        report.conclude();
        let once = report.clone();
        report.conclude();
        assert_eq!(report, once);
    }

    #[test]
    fn a_verdict_other_than_pass_always_has_reasons() {
        // Every way to fail, each with no reason given beforehand.
        type Break = fn(&mut Report);
        let cases: [(&str, Break); 5] = [
            ("failed gate", |r| r.gates[1].passed = false),
            ("gate that could not run", |r| {
                r.gates[1].passed = false;
                r.gates[1].not_run = Some("pg_amcheck did not start".into());
            }),
            ("failed phase", |r| r.phases[0].status = PhaseStatus::Failed),
            ("skipped phase", |r| {
                r.phases[0].status = PhaseStatus::Skipped
            }),
            ("not assessed", |r| {
                r.not_assessed = vec!["db_restore_duration".into()]
            }),
        ];
        for (what, break_it) in cases {
            let mut report = sample::report();
            report
                .phases
                .iter_mut()
                .for_each(|p| p.status = PhaseStatus::Passed);
            report.gates.iter_mut().for_each(|g| g.passed = true);
            report.rollback_reasons.clear();
            break_it(&mut report);
            report.conclude();
            assert_ne!(report.verdict, Outcome::Pass, "{what}");
            assert!(!report.rollback_reasons.is_empty(), "{what}: no reason");
        }
        let mut report = sample::report();
        report.gates[1].passed = false;
        report.gates[1].not_run = Some("pg_amcheck did not start".into());
        report.conclude();
        assert_eq!(report.verdict, Outcome::CouldNotRun);
        assert!(
            report
                .rollback_reasons
                .iter()
                .any(|r| r.contains("gate schema could not run: pg_amcheck did not start")),
            "{:?}",
            report.rollback_reasons
        );
    }
}
