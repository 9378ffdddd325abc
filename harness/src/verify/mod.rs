//! Verification gates: pure functions from observed data to a verdict with findings.
//!
//! Every gate takes facts that something else observed (the backup's recorded facts, the
//! restored database's facts, Redis and Kubernetes observations) and returns a [`Verdict`]:
//! whether it passed, and one [`Finding`] per defect, naming the table or object and both
//! values. Gates do no I/O, never panic, and never return `Err`: a failed check is a verdict,
//! not an error. [`decide`] turns verdicts and run observations into the runbook's rollback
//! decision ("롤백 결정 기준") with configurable thresholds.
//!
//! Verdicts, findings and decisions are `serde`-serialisable so reports can render them as
//! JSON, JUnit or HTML.

mod data;
mod integrity;
mod kubernetes;
mod redis;
mod resources;
mod rollback;
mod schema;
mod statistics;

use serde::{Deserialize, Serialize};

pub use data::{digests, marker_absent, row_counts, sequences};
pub use integrity::{Amcheck, AmcheckReport, referential_integrity};
pub use kubernetes::{kubernetes_objects, normalise_object};
pub use redis::{RedisFacts, redis};
pub use resources::{ResourceJudgement, judge_resources};
pub use rollback::{
    Action, Criterion, Decision, EndpointLatency, HealthSample, LoadBreach, LoadSample,
    PodObservation, RESOURCES_GATE, ResourceObservation, RollbackInputs, RollbackReason,
    RollbackThresholds, decide,
};
pub use schema::{schema, unified_diff};
pub use statistics::statistics;

/// Which gate produced a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Exact row count per table.
    RowCounts,
    /// Content digest per table.
    Digests,
    /// Normalised schema rendering.
    Schema,
    /// Sequences ahead of the columns they feed, and at the backed-up position.
    Sequences,
    /// Foreign keys hold; pg_amcheck finds no corruption.
    ReferentialIntegrity,
    /// Redis key count and digest.
    Redis,
    /// Restored Kubernetes objects equal the backed-up cleaned objects.
    KubernetesObjects,
    /// The marker row written after the backup is absent after restore.
    MarkerAbsent,
    /// Every restored table has planner statistics (ANALYZE ran after the load).
    Statistics,
}

impl Gate {
    /// A short, stable name for reports (`row_counts`, `schema`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Gate::RowCounts => "row_counts",
            Gate::Digests => "digests",
            Gate::Schema => "schema",
            Gate::Sequences => "sequences",
            Gate::ReferentialIntegrity => "referential_integrity",
            Gate::Redis => "redis",
            Gate::KubernetesObjects => "kubernetes_objects",
            Gate::MarkerAbsent => "marker_absent",
            Gate::Statistics => "statistics",
        }
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of defect a finding reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Present in the backup, absent after restore (a table, an object, a sequence).
    Missing,
    /// Present after restore, absent from the backup.
    Unexpected,
    /// Present in both with different values.
    Mismatch,
    /// The schema renderings differ.
    Drift,
    /// A constraint or structure is broken (orphan rows, corruption, a sequence behind its column).
    Broken,
    /// Input that the gate cannot judge (for example digests computed with different orderings).
    Incomparable,
    /// A check the gate needs could not run (a tool that did not start, say): the gate fails,
    /// and the run is reported as one that could not run, never as a pass.
    NotChecked,
    /// Evidence a gate records beside its verdict (what it saw when it passed, the slowest
    /// endpoint when it failed): not a defect by itself.
    Note,
    /// A measured figure over its limit (a threshold, a failure rate, a latency).
    OverLimit,
}

impl FindingKind {
    /// The kind's name, as in JSON (`missing`, `over_limit`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::Missing => "missing",
            FindingKind::Unexpected => "unexpected",
            FindingKind::Mismatch => "mismatch",
            FindingKind::Drift => "drift",
            FindingKind::Broken => "broken",
            FindingKind::Incomparable => "incomparable",
            FindingKind::NotChecked => "not_checked",
            FindingKind::Note => "note",
            FindingKind::OverLimit => "over_limit",
        }
    }
}

/// One defect, with the subject it concerns and both values where there are two.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What the finding is about: `public.users`, `ConfigMap titanium-prod/app-config`, ...
    pub subject: String,
    /// The kind of defect.
    pub kind: FindingKind,
    /// The value the backup recorded (or the limit), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// The value observed after restore, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
    /// A readable explanation; for drift, a unified diff.
    pub detail: String,
}

impl Finding {
    /// A finding about `subject`.
    pub fn new(subject: impl Into<String>, kind: FindingKind, detail: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            kind,
            expected: None,
            actual: None,
            detail: detail.into(),
        }
    }

    /// With the value expected (or the limit) and the value observed.
    pub fn values(mut self, expected: impl ToString, actual: impl ToString) -> Self {
        self.expected = Some(expected.to_string());
        self.actual = Some(actual.to_string());
        self
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.detail)?;
        if let (Some(expected), Some(actual)) = (&self.expected, &self.actual) {
            write!(f, " (expected {expected}, got {actual})")?;
        }
        Ok(())
    }
}

/// Findings as text, one each (`subject: detail (expected …, got …)`), joined by `sep`.
pub fn findings_text(findings: &[Finding], sep: &str) -> String {
    findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// The outcome of one gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The gate.
    pub gate: Gate,
    /// True exactly when there are no findings.
    pub passed: bool,
    /// Every defect found, in a stable order.
    pub findings: Vec<Finding>,
}

impl Verdict {
    /// A verdict from findings: passed when there are none.
    pub fn from_findings(gate: Gate, findings: Vec<Finding>) -> Self {
        Self {
            gate,
            passed: findings.is_empty(),
            findings,
        }
    }

    /// Why the gate could not check everything it needs, when it could not: the details of
    /// its [`FindingKind::NotChecked`] findings.
    pub fn not_checked(&self) -> Option<String> {
        let reasons: Vec<String> = self
            .findings_of(FindingKind::NotChecked)
            .map(ToString::to_string)
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Findings of one kind.
    pub fn findings_of(&self, kind: FindingKind) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.kind == kind)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.passed {
            return write!(f, "{}: passed", self.gate);
        }
        write!(
            f,
            "{}: failed with {} finding(s)",
            self.gate,
            self.findings.len()
        )?;
        for finding in &self.findings {
            write!(f, "\n  - {finding}")?;
        }
        Ok(())
    }
}
