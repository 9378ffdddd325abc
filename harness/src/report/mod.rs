//! The rehearsal report: what ran, how long each phase took, what every gate found, and the
//! before/after figures of every table. Rendered as JSON (the machine-readable record), JUnit
//! (one test case per gate, for CI systems) and HTML (for people).

mod html;
mod junit;

use serde::{Deserialize, Serialize};

pub use html::render_html;
pub use junit::render_junit;

/// The overall outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every phase ran and every gate passed.
    Pass,
    /// A gate failed or a phase could not run.
    Fail,
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
    /// What it found, one line each.
    pub findings: Vec<String>,
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
    /// The rollback decision's reasons (empty when the decision is to proceed).
    #[serde(default)]
    pub rollback_reasons: Vec<String>,
}

impl Report {
    /// The verdict the phases and gates imply: pass only when every phase passed and every
    /// gate passed.
    pub fn implied_verdict(&self) -> Outcome {
        let phases_ok = self.phases.iter().all(|p| p.status == PhaseStatus::Passed);
        let gates_ok = self.gates.iter().all(|g| g.passed);
        if phases_ok && gates_ok && self.rollback_reasons.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Fail
        }
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
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
                },
                PhaseReport {
                    name: "restore".into(),
                    status: PhaseStatus::Failed,
                    start_ms: 1200,
                    duration_ms: 800,
                    detail: Some("pg_restore <failed> & \"quoted\"".into()),
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
                    findings: vec!["users: 10 before, 9 after".into()],
                },
                GateReport {
                    name: "schema".into(),
                    passed: true,
                    findings: vec![],
                },
            ],
            load: Some(LoadReport {
                requests: 100,
                failures: 2,
                rps: 50.0,
                p95_ms: 12.5,
                goose_report: Some("goose.html".into()),
            }),
            rto_ms: Some(2000),
            rpo_ms: Some(15),
            rollback_reasons: vec!["data mismatch in users".into()],
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
            "scenario", "provider", "verdict", "phases", "tables", "gates", "load", "rto_ms",
            "rpo_ms",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["verdict"], "fail");
        assert_eq!(json["phases"][0]["duration_ms"], 1200);
        assert_eq!(json["load"]["p95_ms"], 12.5);
    }

    #[test]
    fn verdict_is_pass_only_when_everything_passed() {
        let mut report = sample::report();
        assert_eq!(report.implied_verdict(), Outcome::Fail);
        report
            .phases
            .iter_mut()
            .for_each(|p| p.status = PhaseStatus::Passed);
        report.gates.iter_mut().for_each(|g| g.passed = true);
        assert_eq!(
            report.implied_verdict(),
            Outcome::Fail,
            "a rollback reason still fails"
        );
        report.rollback_reasons.clear();
        assert_eq!(report.implied_verdict(), Outcome::Pass);
    }
}
