//! The rollback decision: the runbook's criteria ("롤백 결정 기준") applied to gate verdicts and
//! run observations, with configurable thresholds. Proceed, or roll back with every reason.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Finding, FindingKind, Gate, Verdict};
pub use crate::facts::{
    EndpointLatency, HealthSample, LoadBreach, LoadSample, PodObservation, ResourceObservation,
};

/// The limits beyond which a restore is rolled back. [`Default`] is the runbook's limits with
/// exact data equality; [`RollbackThresholds::runbook`] also takes the runbook's 10 % row-count
/// tolerance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RollbackThresholds {
    /// Largest tolerated relative row-count difference per table (0.0: exact).
    pub max_count_difference: f64,
    /// Largest tolerated health-check failure rate (runbook: 5 %).
    pub max_health_failure_rate: f64,
    /// Largest tolerated API response time (runbook: 5 s).
    #[serde(with = "crate::facts::secs")]
    pub max_response_time: Duration,
    /// A pod restarted this many times or more triggers a rollback (runbook: 3).
    pub max_pod_restarts: u32,
    /// Longest tolerated database restore (runbook: 2 h).
    #[serde(with = "crate::facts::secs")]
    pub max_db_restore: Duration,
    /// Longest tolerated whole procedure (runbook: 6 h).
    #[serde(with = "crate::facts::secs")]
    pub max_total: Duration,
    /// Longest tolerated wait for every pod to become Ready (runbook: 30 min).
    #[serde(with = "crate::facts::secs")]
    pub max_pods_ready: Duration,
    /// Largest tolerated node CPU usage over allocatable, sustained (runbook: 90 %).
    pub max_node_cpu: f64,
    /// Largest tolerated node memory usage over allocatable, sustained (runbook: 95 %).
    pub max_node_memory: f64,
    /// Largest tolerated claim usage over its requested size (runbook: 90 %).
    pub max_pvc_usage: f64,
    /// "Sustained" needs at least this many samples of a node, every one over the limit
    /// (see `verify::resources`).
    pub sustained_samples: u32,
    /// ... spanning at least this long.
    #[serde(with = "crate::facts::secs")]
    pub sustained_span: Duration,
}

impl Default for RollbackThresholds {
    fn default() -> Self {
        Self {
            max_count_difference: 0.0,
            max_health_failure_rate: 0.05,
            max_response_time: Duration::from_secs(5),
            max_pod_restarts: 3,
            max_db_restore: Duration::from_secs(2 * 3600),
            max_total: Duration::from_secs(6 * 3600),
            max_pods_ready: Duration::from_secs(30 * 60),
            max_node_cpu: 0.90,
            max_node_memory: 0.95,
            max_pvc_usage: 0.90,
            sustained_samples: 3,
            sustained_span: Duration::from_secs(10),
        }
    }
}

impl RollbackThresholds {
    /// The runbook's thresholds exactly as written, including its 10 % count tolerance.
    pub fn runbook() -> Self {
        Self {
            max_count_difference: 0.10,
            ..Self::default()
        }
    }
}

/// Everything the decision looks at. Unset observations are reported as not assessed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RollbackInputs {
    /// Verdicts of the gates that ran.
    pub verdicts: Vec<Verdict>,
    /// Health checks, if made.
    pub health: Option<HealthSample>,
    /// Worst observed API response time, if measured.
    #[serde(with = "crate::facts::opt_secs")]
    pub max_response_time: Option<Duration>,
    /// Pods at decision time, if observed.
    pub pods: Option<Vec<PodObservation>>,
    /// How long the database restore took.
    #[serde(with = "crate::facts::opt_secs")]
    pub db_restore: Option<Duration>,
    /// How long the whole procedure took so far.
    #[serde(with = "crate::facts::opt_secs")]
    pub total: Option<Duration>,
    /// How long the wait for all pods to become Ready took (or had taken when it gave up).
    #[serde(with = "crate::facts::opt_secs")]
    pub pods_ready_wait: Option<Duration>,
    /// The load gate's outcome, if it ran.
    pub load: Option<LoadSample>,
    /// Node and claim usage (criterion 4), if observed.
    pub resources: Option<ResourceObservation>,
}

/// One rollback criterion of the runbook (plus failed gates it does not name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Row counts or contents differ from the backup.
    DataMismatch,
    /// A main table does not exist.
    MissingTable,
    /// Foreign keys are broken (or pg_amcheck found corruption).
    BrokenForeignKeys,
    /// Another gate failed (schema, sequences, Redis, Kubernetes objects, marker row).
    GateFailed,
    /// Health-check failure rate above the limit.
    HealthCheckFailures,
    /// API response time above the limit.
    ResponseTime,
    /// A pod restarted too often (CrashLoopBackOff).
    PodRestarts,
    /// Database restore took too long.
    DbRestoreDuration,
    /// The whole procedure took too long.
    TotalDuration,
    /// Pods did not become Ready in time.
    PodsNotReady,
    /// A threshold of the load gate (the runbook's k6 limits) did not hold.
    LoadThresholds,
    /// Node CPU over its limit, sustained.
    NodeCpu,
    /// Node memory over its limit, sustained.
    NodeMemory,
    /// A PersistentVolumeClaim over its limit of its requested size.
    PvcUsage,
}

impl Criterion {
    /// A short, stable name for reports (`data_mismatch`, `load_thresholds`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Criterion::DataMismatch => "data_mismatch",
            Criterion::MissingTable => "missing_table",
            Criterion::BrokenForeignKeys => "broken_foreign_keys",
            Criterion::GateFailed => "gate_failed",
            Criterion::HealthCheckFailures => "health_check_failures",
            Criterion::ResponseTime => "response_time",
            Criterion::PodRestarts => "pod_restarts",
            Criterion::DbRestoreDuration => "db_restore_duration",
            Criterion::TotalDuration => "total_duration",
            Criterion::PodsNotReady => "pods_not_ready",
            Criterion::LoadThresholds => "load_thresholds",
            Criterion::NodeCpu => "node_cpu",
            Criterion::NodeMemory => "node_memory",
            Criterion::PvcUsage => "pvc_usage",
        }
    }
}

impl std::fmt::Display for Criterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a rollback is needed: the criterion, what was observed, and the limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackReason {
    /// The criterion.
    pub criterion: Criterion,
    /// The gate whose verdict gave this reason, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// What was observed, naming tables, pods or gates.
    pub observed: String,
    /// The limit that was crossed.
    pub limit: String,
}

/// Proceed, or roll back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Every assessed criterion is within its limit.
    Proceed,
    /// At least one criterion is crossed.
    RollBack,
    /// No criterion is crossed, but some could not be assessed for lack of an observation:
    /// a decision that cannot say "proceed" (a check that could not run is never a pass).
    NotAssessed,
}

/// The decision with every reason, and the criteria that could not be assessed for lack of
/// an observation. Proceed only when every criterion was assessed and none is crossed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// Every crossed criterion (empty when proceeding or not assessed).
    pub reasons: Vec<RollbackReason>,
    /// Criteria without an observation.
    pub not_assessed: Vec<Criterion>,
}

impl Decision {
    /// True when the decision is to proceed.
    pub fn proceed(&self) -> bool {
        self.action == Action::Proceed
    }

    /// One line per reason not to proceed: every crossed criterion with what was observed and
    /// the limit, then every criterion that could not be assessed. Empty exactly when the
    /// decision is to proceed.
    pub fn explain(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.reasons.iter().map(ToString::to_string).collect();
        lines.extend(
            self.not_assessed
                .iter()
                .map(|c| format!("{c}: not assessed (no observation)")),
        );
        lines
    }
}

impl std::fmt::Display for RollbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Reasons from a gate name it first (`gate <name> (...)`), so a report can tell which
        // failed gates already have their reason; the load gate is not a `Gate` of this module
        // but its thresholds are its verdict.
        match (self.gate, self.criterion) {
            (Some(gate), criterion) => write!(f, "gate {gate} ({criterion}): ")?,
            (None, Criterion::LoadThresholds) => write!(f, "gate load (load_thresholds): ")?,
            // Criterion 4's evidence is the report's `resources` gate.
            (None, c @ (Criterion::NodeCpu | Criterion::NodeMemory | Criterion::PvcUsage)) => {
                write!(f, "gate {RESOURCES_GATE} ({c}): ")?
            }
            (None, criterion) => write!(f, "{criterion}: ")?,
        }
        write!(f, "{} (limit: {})", self.observed, self.limit)
    }
}

/// The name criterion 4's evidence goes under in a report's gates.
pub const RESOURCES_GATE: &str = "resources";

fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 3600.0 {
        format!("{:.2} h", secs / 3600.0)
    } else if secs >= 60.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{secs:.3} s")
    }
}

/// Applies the rollback criteria. Pure: the caller observes, this only judges.
pub fn decide(inputs: &RollbackInputs, thresholds: &RollbackThresholds) -> Decision {
    let mut judgement = Judgement::default();
    judgement.gates(&inputs.verdicts, thresholds);
    judgement.health(inputs, thresholds);
    judgement.response_time(inputs, thresholds);
    judgement.load(inputs);
    judgement.pods(inputs, thresholds);
    judgement.durations(inputs, thresholds);
    let resources = super::resources::judge_resources(inputs.resources.as_ref(), thresholds);
    judgement.reasons.extend(resources.reasons);
    judgement.not_assessed.extend(resources.not_assessed);
    let Judgement {
        reasons,
        not_assessed,
    } = judgement;
    let action = if !reasons.is_empty() {
        Action::RollBack
    } else if !not_assessed.is_empty() {
        Action::NotAssessed
    } else {
        Action::Proceed
    };
    Decision {
        action,
        reasons,
        not_assessed,
    }
}

/// What [`decide`] has found so far: the reasons to roll back, in the order the criteria are
/// judged, and the criteria nothing observed.
#[derive(Default)]
struct Judgement {
    reasons: Vec<RollbackReason>,
    not_assessed: Vec<Criterion>,
}

impl Judgement {
    /// Records a breached criterion that no gate stands for.
    fn reason(&mut self, criterion: Criterion, observed: String, limit: String) {
        self.reasons.push(RollbackReason {
            criterion,
            gate: None,
            observed,
            limit,
        });
    }

    /// The data criteria, from the gates' verdicts: a reason for every failed gate.
    fn gates(&mut self, verdicts: &[Verdict], thresholds: &RollbackThresholds) {
        let data_gates = [Gate::RowCounts, Gate::Digests];
        if !verdicts.iter().any(|v| data_gates.contains(&v.gate)) {
            self.not_assessed.push(Criterion::DataMismatch);
        }
        if !verdicts
            .iter()
            .any(|v| v.gate == Gate::ReferentialIntegrity)
        {
            self.not_assessed.push(Criterion::BrokenForeignKeys);
        }
        for verdict in verdicts.iter().filter(|v| !v.passed) {
            self.reasons.extend(gate_reasons(verdict, thresholds));
        }
    }

    /// The share of failed health checks.
    fn health(&mut self, inputs: &RollbackInputs, thresholds: &RollbackThresholds) {
        match inputs.health {
            Some(h) if h.attempts > 0 => {
                let rate = f64::from(h.failures) / f64::from(h.attempts);
                if rate > thresholds.max_health_failure_rate {
                    self.reason(
                        Criterion::HealthCheckFailures,
                        format!(
                            "{} of {} health checks failed ({:.1} %)",
                            h.failures,
                            h.attempts,
                            rate * 100.0
                        ),
                        format!(
                            "at most {:.1} %",
                            thresholds.max_health_failure_rate * 100.0
                        ),
                    );
                }
            }
            _ => self.not_assessed.push(Criterion::HealthCheckFailures),
        }
    }

    /// The slowest response, of the health probes and the load gate's requests: the load gate
    /// is where a slow endpoint shows.
    fn response_time(&mut self, inputs: &RollbackInputs, thresholds: &RollbackThresholds) {
        let load_max = inputs
            .load
            .as_ref()
            .filter(|l| l.requests > 0)
            .map(|l| (l.max_response_time, l.slowest.as_ref()));
        let slowest = match (inputs.max_response_time, load_max) {
            (Some(h), Some((l, endpoint))) if l > h => Some((l, "load gate", endpoint)),
            (Some(h), _) => Some((h, "health probes", None)),
            (None, Some((l, endpoint))) => Some((l, "load gate", endpoint)),
            (None, None) => None,
        };
        match slowest {
            Some((t, source, endpoint)) if t > thresholds.max_response_time => self.reason(
                Criterion::ResponseTime,
                format!(
                    "slowest response ({source}) took {}{}",
                    fmt_duration(t),
                    endpoint
                        .map(|e| format!("; slowest endpoint {e}"))
                        .unwrap_or_default()
                ),
                format!("at most {}", fmt_duration(thresholds.max_response_time)),
            ),
            Some(_) => {}
            None => self.not_assessed.push(Criterion::ResponseTime),
        }
    }

    /// The load gate's thresholds: a reason per breach, or one for a gate that made no
    /// request.
    fn load(&mut self, inputs: &RollbackInputs) {
        match &inputs.load {
            Some(load) if load.requests == 0 => self.reason(
                Criterion::LoadThresholds,
                "the load gate made no request".into(),
                "every load threshold holds".into(),
            ),
            Some(load) => {
                for breach in &load.breaches {
                    let observed = breach
                        .observed
                        .map_or("no request of its scope".to_owned(), |v| format!("{v:.3}"));
                    let slowest = load
                        .slowest
                        .as_ref()
                        .map(|e| format!("; slowest endpoint {e}"))
                        .unwrap_or_default();
                    self.reason(
                        Criterion::LoadThresholds,
                        format!("threshold {} observed {observed}{slowest}", breach.rule),
                        breach.rule.clone(),
                    );
                }
            }
            None => self.not_assessed.push(Criterion::LoadThresholds),
        }
    }

    /// Pod restarts, and pods not Ready when observed.
    fn pods(&mut self, inputs: &RollbackInputs, thresholds: &RollbackThresholds) {
        let Some(pods) = &inputs.pods else {
            self.not_assessed.push(Criterion::PodRestarts);
            return;
        };
        for pod in pods
            .iter()
            .filter(|p| p.restarts >= thresholds.max_pod_restarts)
        {
            let state = pod
                .waiting_reason
                .as_deref()
                .map(|r| format!(", {r}"))
                .unwrap_or_default();
            self.reason(
                Criterion::PodRestarts,
                format!("pod {} restarted {} times{state}", pod.name, pod.restarts),
                format!("fewer than {} restarts", thresholds.max_pod_restarts),
            );
        }
        let not_ready: Vec<&str> = pods
            .iter()
            .filter(|p| !p.ready)
            .map(|p| p.name.as_str())
            .collect();
        if !not_ready.is_empty() {
            let waited = inputs
                .pods_ready_wait
                .map(|d| format!(" after {}", fmt_duration(d)))
                .unwrap_or_default();
            self.reason(
                Criterion::PodsNotReady,
                format!("pods not Ready{waited}: {}", not_ready.join(", ")),
                format!(
                    "every pod Ready within {}",
                    fmt_duration(thresholds.max_pods_ready)
                ),
            );
        }
    }

    /// The database restore, the whole procedure and the wait for Ready pods against their
    /// limits (the last only when no pod was seen not Ready).
    fn durations(&mut self, inputs: &RollbackInputs, thresholds: &RollbackThresholds) {
        self.timed(
            Criterion::DbRestoreDuration,
            inputs.db_restore,
            thresholds.max_db_restore,
            "database restore",
        );
        self.timed(
            Criterion::TotalDuration,
            inputs.total,
            thresholds.max_total,
            "whole procedure",
        );
        let already_not_ready = self
            .reasons
            .iter()
            .any(|r| r.criterion == Criterion::PodsNotReady);
        match inputs.pods_ready_wait {
            Some(d) if d > thresholds.max_pods_ready && !already_not_ready => self.reason(
                Criterion::PodsNotReady,
                format!("pods became Ready only after {}", fmt_duration(d)),
                format!("at most {}", fmt_duration(thresholds.max_pods_ready)),
            ),
            Some(_) => {}
            None => self.not_assessed.push(Criterion::PodsNotReady),
        }
    }

    /// A duration against its limit.
    fn timed(
        &mut self,
        criterion: Criterion,
        observed: Option<Duration>,
        limit: Duration,
        what: &str,
    ) {
        match observed {
            Some(d) if d > limit => self.reason(
                criterion,
                format!("{what} took {}", fmt_duration(d)),
                format!("at most {}", fmt_duration(limit)),
            ),
            Some(_) => {}
            None => self.not_assessed.push(criterion),
        }
    }
}

/// The reasons one failed gate gives: one per finding that breaches a criterion, and always at
/// least one (also when it has no finding or every finding is within a tolerance), so a failed
/// gate never leaves the decision silent.
fn gate_reasons(verdict: &Verdict, thresholds: &RollbackThresholds) -> Vec<RollbackReason> {
    let mut reasons = Vec::new();
    let mut reason = |criterion, observed: String, limit: String| {
        reasons.push(RollbackReason {
            criterion,
            gate: Some(verdict.gate),
            observed,
            limit,
        })
    };
    for finding in &verdict.findings {
        let shown = finding.to_string();
        match verdict.gate {
            Gate::RowCounts if finding.kind == FindingKind::Missing => {
                reason(
                    Criterion::MissingTable,
                    shown,
                    "every backed-up table exists".into(),
                );
            }
            Gate::RowCounts if finding.kind == FindingKind::Mismatch => {
                let relative = count_difference(finding);
                if relative > thresholds.max_count_difference {
                    reason(
                        Criterion::DataMismatch,
                        format!("{shown}; {:.2} % difference", relative * 100.0),
                        format!(
                            "at most {:.2} % difference",
                            thresholds.max_count_difference * 100.0
                        ),
                    );
                }
            }
            Gate::RowCounts | Gate::Digests => {
                reason(
                    Criterion::DataMismatch,
                    format!("{}: {shown}", verdict.gate),
                    "equal to the backup".into(),
                );
            }
            Gate::ReferentialIntegrity => {
                reason(
                    Criterion::BrokenForeignKeys,
                    shown,
                    "no orphan rows, no corruption".into(),
                );
            }
            gate => reason(
                Criterion::GateFailed,
                format!("{gate}: {shown}"),
                format!("gate {gate} passes"),
            ),
        }
    }
    if reasons.is_empty() {
        let observed = if verdict.findings.is_empty() {
            format!("gate {} failed without a finding", verdict.gate)
        } else {
            let shown: Vec<String> = verdict.findings.iter().map(ToString::to_string).collect();
            format!(
                "gate {} failed (within the tolerance of the rollback criteria): {}",
                verdict.gate,
                shown.join("; ")
            )
        };
        reasons.push(RollbackReason {
            criterion: Criterion::GateFailed,
            gate: Some(verdict.gate),
            observed,
            limit: format!("gate {} passes", verdict.gate),
        });
    }
    reasons
}

/// A row-count mismatch's relative difference from the expected count (infinite when either
/// side is not a number, or the expected count is zero and the actual is not).
fn count_difference(finding: &Finding) -> f64 {
    let parse = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<f64>().ok());
    match (parse(&finding.expected), parse(&finding.actual)) {
        (Some(want), Some(got)) if want > 0.0 => (got - want).abs() / want,
        (Some(want), Some(got)) if want == got => 0.0,
        _ => f64::INFINITY,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{Finding, FindingKind};
    use super::*;

    fn h(secs: u64) -> Duration {
        Duration::from_secs(secs * 3600)
    }

    pub(crate) fn clean() -> RollbackInputs {
        RollbackInputs {
            verdicts: vec![
                Verdict::from_findings(Gate::RowCounts, vec![]),
                Verdict::from_findings(Gate::Digests, vec![]),
                Verdict::from_findings(Gate::ReferentialIntegrity, vec![]),
            ],
            health: Some(HealthSample {
                attempts: 10,
                failures: 0,
            }),
            max_response_time: Some(Duration::from_millis(80)),
            pods: Some(vec![PodObservation {
                name: "titanium-prod/api-0".into(),
                restarts: 0,
                waiting_reason: None,
                ready: true,
            }]),
            db_restore: Some(Duration::from_secs(40 * 60)),
            total: Some(h(2)),
            pods_ready_wait: Some(Duration::from_secs(5 * 60)),
            load: Some(LoadSample {
                breaches: vec![],
                requests: 500,
                max_response_time: Duration::from_millis(120),
                slowest: Some(EndpointLatency {
                    name: "GET list posts".into(),
                    p50_ms: 12.0,
                    p95_ms: 40.0,
                }),
            }),
            resources: Some(super::super::resources::tests::quiet()),
        }
    }

    fn check(inputs: RollbackInputs, expected: &[Criterion]) -> Decision {
        let decision = decide(&inputs, &RollbackThresholds::default());
        let got: Vec<Criterion> = decision.reasons.iter().map(|r| r.criterion).collect();
        assert_eq!(got, expected, "{decision:#?}");
        assert_eq!(decision.proceed(), expected.is_empty());
        decision
    }

    #[test]
    fn clean_run_proceeds_with_everything_assessed() {
        let decision = check(clean(), &[]);
        assert!(
            decision.not_assessed.is_empty(),
            "{:?}",
            decision.not_assessed
        );
    }

    #[test]
    fn every_criterion_rolls_back_with_its_reason() {
        let mut inputs = clean();
        inputs.verdicts = vec![
            Verdict::from_findings(
                Gate::RowCounts,
                vec![
                    Finding::new(
                        "public.posts",
                        FindingKind::Missing,
                        "table is missing after restore",
                    ),
                    Finding::new("public.users", FindingKind::Mismatch, "row count differs")
                        .values(1000, 999),
                ],
            ),
            Verdict::from_findings(
                Gate::ReferentialIntegrity,
                vec![Finding::new(
                    "public.posts constraint posts_author_fkey",
                    FindingKind::Broken,
                    "orphans",
                )],
            ),
            Verdict::from_findings(
                Gate::Schema,
                vec![Finding::new(
                    "index public.idx",
                    FindingKind::Missing,
                    "diff",
                )],
            ),
        ];
        inputs.health = Some(HealthSample {
            attempts: 10,
            failures: 1,
        });
        inputs.max_response_time = Some(Duration::from_millis(5001));
        inputs.pods = Some(vec![PodObservation {
            name: "titanium-prod/auth-1".into(),
            restarts: 3,
            waiting_reason: Some("CrashLoopBackOff".into()),
            ready: false,
        }]);
        inputs.db_restore = Some(h(2) + Duration::from_secs(1));
        inputs.total = Some(h(6) + Duration::from_secs(1));
        inputs.pods_ready_wait = Some(Duration::from_secs(31 * 60));
        inputs.load.as_mut().unwrap().breaches = vec![LoadBreach {
            rule: "http_req_duration: p(95)<500".into(),
            observed: Some(745.0),
        }];
        let decision = check(
            inputs,
            &[
                Criterion::MissingTable,
                Criterion::DataMismatch,
                Criterion::BrokenForeignKeys,
                Criterion::GateFailed,
                Criterion::HealthCheckFailures,
                Criterion::ResponseTime,
                Criterion::LoadThresholds,
                Criterion::PodRestarts,
                Criterion::PodsNotReady,
                Criterion::DbRestoreDuration,
                Criterion::TotalDuration,
            ],
        );
        let text = serde_json::to_string(&decision).unwrap();
        assert!(text.contains("\"action\":\"roll_back\""), "{text}");
        assert!(decision.reasons[7].observed.contains("CrashLoopBackOff"));
        assert!(
            decision.reasons[8]
                .observed
                .contains("titanium-prod/auth-1")
        );
    }

    #[test]
    fn limits_are_inclusive_as_the_runbook_writes_them() {
        let mut inputs = clean();
        inputs.max_response_time = Some(Duration::from_secs(5));
        inputs.db_restore = Some(h(2));
        inputs.total = Some(h(6));
        inputs.pods_ready_wait = Some(Duration::from_secs(30 * 60));
        inputs.pods.as_mut().unwrap()[0].restarts = 2;
        check(inputs, &[]);
    }

    #[test]
    fn count_tolerance_is_configurable() {
        let mut inputs = clean();
        inputs.verdicts = vec![Verdict::from_findings(
            Gate::RowCounts,
            vec![Finding::new("public.users", FindingKind::Mismatch, "x").values(1000, 950)],
        )];
        let criteria = |thresholds| -> Vec<Criterion> {
            decide(&inputs, &thresholds)
                .reasons
                .iter()
                .map(|r| r.criterion)
                .collect()
        };
        assert_eq!(
            criteria(RollbackThresholds::default()),
            [Criterion::DataMismatch]
        );
        // Within the tolerance the data criterion holds; the failed gate is still a reason.
        assert_eq!(
            criteria(RollbackThresholds::runbook()),
            [Criterion::GateFailed]
        );
    }

    #[test]
    fn no_inputs_is_not_a_proceed() {
        let decision = decide(&RollbackInputs::default(), &RollbackThresholds::default());
        assert!(!decision.proceed(), "{decision:?}");
        assert_eq!(decision.action, Action::NotAssessed);
        assert_eq!(
            decision.not_assessed.len(),
            12,
            "{:?}",
            decision.not_assessed
        );
        let explained = decision.explain();
        assert!(
            explained
                .iter()
                .any(|l| l.contains("db_restore_duration: not assessed")),
            "{explained:?}"
        );
    }

    #[test]
    fn missing_timings_are_not_within_their_limits() {
        for unset in ["db_restore", "pods_ready_wait"] {
            let mut inputs = clean();
            match unset {
                "db_restore" => inputs.db_restore = None,
                _ => inputs.pods_ready_wait = None,
            }
            let decision = decide(&inputs, &RollbackThresholds::default());
            assert!(!decision.proceed(), "{unset}: {decision:?}");
            assert_eq!(decision.not_assessed.len(), 1, "{unset}: {decision:?}");
        }
    }

    #[test]
    fn a_failed_gate_always_gives_a_reason() {
        // Within the runbook's 10 % tolerance the count criterion holds, but the gate failed:
        // the decision must still say why it does not proceed.
        let mut inputs = clean();
        inputs.verdicts.push(Verdict::from_findings(
            Gate::RowCounts,
            vec![Finding::new("public.users", FindingKind::Mismatch, "x").values(1000, 990)],
        ));
        inputs.verdicts.push(Verdict {
            gate: Gate::Redis,
            passed: false,
            findings: vec![],
        });
        let decision = decide(&inputs, &RollbackThresholds::runbook());
        let gates: Vec<_> = decision.reasons.iter().map(|r| r.gate).collect();
        assert_eq!(
            gates,
            [Some(Gate::RowCounts), Some(Gate::Redis)],
            "{decision:#?}"
        );
        assert!(!decision.proceed());
    }

    #[test]
    fn a_failed_load_gate_is_a_reason_with_its_evidence() {
        let mut inputs = clean();
        let load = inputs.load.as_mut().unwrap();
        load.breaches = vec![LoadBreach {
            rule: "http_req_duration: p(95)<500".into(),
            observed: Some(745.0),
        }];
        load.slowest = Some(EndpointLatency {
            name: "GET list posts".into(),
            p50_ms: 627.0,
            p95_ms: 1210.0,
        });
        load.max_response_time = Duration::from_millis(5_300);
        let decision = check(
            inputs,
            &[Criterion::ResponseTime, Criterion::LoadThresholds],
        );
        let text = decision.explain().join("\n");
        for needle in [
            "http_req_duration: p(95)<500",
            "745.000",
            "GET list posts (p50 627.0 ms, p95 1210.0 ms)",
            "load gate) took 5.300 s",
            "gate load (load_thresholds): threshold http_req_duration: p(95)<500 observed 745.000",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn thresholds_round_trip_as_seconds() {
        let json = serde_json::to_value(RollbackThresholds::default()).unwrap();
        assert_eq!(json["max_db_restore"], serde_json::json!(7200.0));
        let back: RollbackThresholds =
            serde_json::from_value(serde_json::json!({"max_response_time": 2.5})).unwrap();
        assert_eq!(back.max_response_time, Duration::from_millis(2500));
        assert_eq!(back.max_pod_restarts, 3);
    }
}
