//! The runbook's rollback criterion 4 ("리소스 부족"): node CPU over 90 % sustained, node
//! memory over 95 % sustained, a PersistentVolumeClaim over 90 % of its request. Pure: judges
//! what `facts::resources` observed.
//!
//! "Sustained" is defined here, once: a node's usage is over its limit sustained when every
//! one of its samples is over the limit, and there are at least
//! [`RollbackThresholds::sustained_samples`] of them spanning at least
//! [`RollbackThresholds::sustained_span`] (from the start of the first sample's window to the
//! last one's timestamp). Fewer samples, or a shorter span, cannot tell a spike from a
//! sustained load: the criterion is then not assessed, never met.

use super::rollback::{Criterion, RollbackReason, RollbackThresholds};
use super::{Finding, FindingKind};
use crate::facts::resources::samples_span;
use crate::facts::{NodeResourceSample, ResourceObservation};

/// The criterion's outcome: reasons to roll back, criteria it could not assess and why, and
/// the evidence (every sample and claim measured) for the report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceJudgement {
    /// Every crossed limit.
    pub reasons: Vec<RollbackReason>,
    /// The criteria without enough observation.
    pub not_assessed: Vec<Criterion>,
    /// Why each of those could not be assessed.
    pub not_run: Vec<String>,
    /// What was observed: one finding per sample and per claim, and one per crossed limit.
    pub evidence: Vec<Finding>,
}

impl ResourceJudgement {
    /// Every criterion assessed and none crossed.
    pub fn passed(&self) -> bool {
        self.reasons.is_empty() && self.not_assessed.is_empty()
    }
}

fn pct(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

/// Judges criterion 4 from `observed` (`None`: nothing was observed).
pub fn judge_resources(
    observed: Option<&ResourceObservation>,
    thresholds: &RollbackThresholds,
) -> ResourceJudgement {
    let mut j = ResourceJudgement::default();
    let Some(observed) = observed else {
        j.not_assessed = vec![
            Criterion::NodeCpu,
            Criterion::NodeMemory,
            Criterion::PvcUsage,
        ];
        j.not_run.push("resource usage was not observed".into());
        return j;
    };
    match &observed.nodes {
        Ok(samples) => nodes(&mut j, samples, thresholds),
        Err(why) => {
            j.not_assessed
                .extend([Criterion::NodeCpu, Criterion::NodeMemory]);
            j.not_run.push(format!("node usage: {why}"));
        }
    }
    match &observed.pvcs {
        Ok(claims) => {
            for claim in claims {
                j.evidence.push(Finding::new(
                    format!("PersistentVolumeClaim {}", claim.claim),
                    FindingKind::Note,
                    claim.measurement(),
                ));
                if let Some(share) = claim.share()
                    && share > thresholds.max_pvc_usage
                {
                    let limit = format!("at most {} of the request", pct(thresholds.max_pvc_usage));
                    j.evidence.push(
                        Finding::new(
                            format!("PersistentVolumeClaim {}", claim.claim),
                            FindingKind::OverLimit,
                            format!("{} used", pct(share)),
                        )
                        .values(&limit, pct(share)),
                    );
                    j.reasons.push(RollbackReason {
                        criterion: Criterion::PvcUsage,
                        gate: None,
                        observed: format!("claim {}", claim),
                        limit,
                    });
                }
            }
        }
        Err(why) => {
            j.not_assessed.push(Criterion::PvcUsage);
            j.not_run.push(format!("claim usage: {why}"));
        }
    }
    j
}

/// Node CPU and memory, per node, against their limits sustained.
fn nodes(j: &mut ResourceJudgement, samples: &[NodeResourceSample], t: &RollbackThresholds) {
    let mut names: Vec<&str> = samples.iter().map(|s| s.node.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        j.not_assessed
            .extend([Criterion::NodeCpu, Criterion::NodeMemory]);
        j.not_run
            .push("node usage: the metrics API reported no node".into());
        return;
    }
    let needed = format!(
        "{} samples over at least {:.0} s",
        t.sustained_samples,
        t.sustained_span.as_secs_f64()
    );
    let mut short = false;
    for name in names {
        let mut of_node: Vec<&NodeResourceSample> =
            samples.iter().filter(|s| s.node == name).collect();
        of_node.sort_by_key(|s| s.timestamp);
        for s in &of_node {
            j.evidence.push(Finding::new(
                format!("node {name}"),
                FindingKind::Note,
                s.figures(),
            ));
        }
        let span = samples_span(&of_node);
        if of_node.len() < t.sustained_samples as usize || span < t.sustained_span {
            short = true;
            j.not_run.push(format!(
                "node {name}: {} sample(s) spanning {:.1} s; sustained needs {needed}",
                of_node.len(),
                span.as_secs_f64()
            ));
            continue;
        }
        let over = |criterion, what: &str, limit: f64, share: fn(&NodeResourceSample) -> f64| {
            let shares: Vec<f64> = of_node.iter().map(|s| share(s)).collect();
            shares.iter().all(|s| *s > limit).then(|| {
                let shown: Vec<String> = shares.iter().map(|s| pct(*s)).collect();
                let limit = format!("at most {} sustained ({needed})", pct(limit));
                let observed = format!(
                    "node {name} {what} over the limit in all {} samples over {:.1} s: {}",
                    shares.len(),
                    span.as_secs_f64(),
                    shown.join(", ")
                );
                (criterion, observed, limit)
            })
        };
        let crossed = [
            over(Criterion::NodeCpu, "CPU", t.max_node_cpu, |s| s.cpu_share()),
            over(Criterion::NodeMemory, "memory", t.max_node_memory, |s| {
                s.memory_share()
            }),
        ];
        for (criterion, observed, limit) in crossed.into_iter().flatten() {
            j.evidence.push(
                Finding::new(format!("node {name}"), FindingKind::OverLimit, &observed)
                    .values(&limit, &observed),
            );
            j.reasons.push(RollbackReason {
                criterion,
                gate: None,
                observed,
                limit,
            });
        }
    }
    if short {
        j.not_assessed
            .extend([Criterion::NodeCpu, Criterion::NodeMemory]);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use chrono::{DateTime, Utc};

    use super::super::rollback::{Action, RollbackInputs, decide};
    use super::*;
    use crate::facts::PvcUsage;

    /// A node's sample `i` seconds in, at the given CPU and memory shares of a 2-CPU, 16 GiB
    /// node, measured over a 2 s window.
    fn sample(i: i64, cpu: f64, memory: f64) -> NodeResourceSample {
        let t0 = DateTime::parse_from_rfc3339("2026-12-04T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        NodeResourceSample {
            node: "titanium-control-plane".into(),
            timestamp: t0 + chrono::Duration::seconds(i),
            window: Duration::from_secs(2),
            cpu_millicores: cpu * 2000.0,
            cpu_allocatable_millicores: 2000.0,
            memory_bytes: memory * 16.0 * 1024.0 * 1024.0 * 1024.0,
            memory_allocatable_bytes: 16.0 * 1024.0 * 1024.0 * 1024.0,
            source: crate::facts::resources::METRICS_API.into(),
        }
    }

    fn claim(used: u64, requested: u64) -> PvcUsage {
        PvcUsage {
            claim: "titanium-prod/postgresql-pvc".into(),
            measured_in: Some("titanium-prod/postgresql-0 container postgresql".into()),
            mount_path: Some("/var/lib/postgresql/data".into()),
            used_bytes: Some(used),
            requested_bytes: requested,
        }
    }

    /// Six samples over 12 s at 20 % CPU and 30 % memory, a claim at half its request.
    pub(crate) fn quiet() -> ResourceObservation {
        ResourceObservation {
            nodes: Ok((0..6).map(|i| sample(i * 2, 0.2, 0.3)).collect()),
            pvcs: Ok(vec![claim(512, 1024)]),
        }
    }

    fn with(resources: Option<ResourceObservation>) -> RollbackInputs {
        let mut inputs = super::super::rollback::tests::clean();
        inputs.resources = resources;
        inputs
    }

    fn check(resources: ResourceObservation, expected: &[Criterion]) -> Vec<String> {
        let decision = decide(&with(Some(resources)), &RollbackThresholds::default());
        let got: Vec<Criterion> = decision.reasons.iter().map(|r| r.criterion).collect();
        assert_eq!(got, expected, "{decision:#?}");
        assert!(decision.not_assessed.is_empty(), "{decision:#?}");
        decision.explain()
    }

    #[test]
    fn quiet_resources_proceed() {
        check(quiet(), &[]);
    }

    #[test]
    fn node_cpu_over_90_percent_sustained_rolls_back_with_its_samples() {
        let mut r = quiet();
        r.nodes = Ok((0..6).map(|i| sample(i * 2, 0.95, 0.3)).collect());
        let text = check(r, &[Criterion::NodeCpu]).join("\n");
        assert!(
            text.contains("gate resources (node_cpu): node titanium-control-plane CPU over the limit in all 6 samples over 12.0 s: 95.0 %"),
            "{text}"
        );
        assert!(text.contains("at most 90.0 % sustained"), "{text}");
    }

    #[test]
    fn one_sample_under_the_limit_is_not_sustained() {
        let mut r = quiet();
        let mut samples: Vec<_> = (0..6).map(|i| sample(i * 2, 0.95, 0.97)).collect();
        samples[3] = sample(6, 0.89, 0.94);
        r.nodes = Ok(samples);
        check(r, &[]);
    }

    #[test]
    fn node_memory_over_95_percent_sustained_rolls_back() {
        let mut r = quiet();
        r.nodes = Ok((0..6).map(|i| sample(i * 2, 0.2, 0.96)).collect());
        let text = check(r, &[Criterion::NodeMemory]).join("\n");
        assert!(
            text.contains("memory over the limit in all 6 samples"),
            "{text}"
        );
        // The limit is exclusive, as the runbook writes it ("> 95%").
        let mut r = quiet();
        r.nodes = Ok((0..6).map(|i| sample(i * 2, 0.2, 0.95)).collect());
        check(r, &[]);
    }

    #[test]
    fn a_claim_over_90_percent_of_its_request_rolls_back_with_its_bytes() {
        let mut r = quiet();
        r.pvcs = Ok(vec![claim(950 * 1024, 1024 * 1024)]);
        let text = check(r, &[Criterion::PvcUsage]).join("\n");
        assert!(
            text.contains("gate resources (pvc_usage): claim titanium-prod/postgresql-pvc: 972800 of 1048576 bytes requested (92.8 %)"),
            "{text}"
        );
        let mut r = quiet();
        r.pvcs = Ok(vec![claim(900, 1000)]);
        check(r, &[]);
    }

    #[test]
    fn a_claim_nobody_mounts_is_listed_not_judged() {
        let mut r = quiet();
        let mut unused = claim(0, 1024);
        unused.used_bytes = None;
        unused.measured_in = None;
        r.pvcs = Ok(vec![unused]);
        check(r.clone(), &[]);
        let j = judge_resources(Some(&r), &RollbackThresholds::default());
        assert!(
            j.evidence
                .iter()
                .any(|f| f.detail.contains("not in use (no running pod mounts it)")),
            "{j:#?}"
        );
    }

    fn not_assessed(resources: Option<ResourceObservation>, expected: &[Criterion], why: &str) {
        let decision = decide(&with(resources.clone()), &RollbackThresholds::default());
        assert_eq!(decision.action, Action::NotAssessed, "{decision:#?}");
        assert_eq!(decision.not_assessed, expected, "{decision:#?}");
        let j = judge_resources(resources.as_ref(), &RollbackThresholds::default());
        assert!(!j.passed());
        assert!(j.not_run.iter().any(|n| n.contains(why)), "{j:#?}");
    }

    #[test]
    fn missing_metrics_are_not_assessed_never_a_pass() {
        let mut r = quiet();
        r.nodes = Err(
            "list nodes.metrics.k8s.io: 404 the server could not find the requested resource"
                .into(),
        );
        not_assessed(
            Some(r),
            &[Criterion::NodeCpu, Criterion::NodeMemory],
            "node usage: list nodes.metrics.k8s.io",
        );
        let mut r = quiet();
        r.nodes = Ok(vec![]);
        not_assessed(
            Some(r),
            &[Criterion::NodeCpu, Criterion::NodeMemory],
            "reported no node",
        );
        let mut r = quiet();
        r.pvcs = Err("du -sk /data in pod titanium-prod/x: exit code 1".into());
        not_assessed(Some(r), &[Criterion::PvcUsage], "claim usage: du -sk");
        not_assessed(
            None,
            &[
                Criterion::NodeCpu,
                Criterion::NodeMemory,
                Criterion::PvcUsage,
            ],
            "not observed",
        );
    }

    #[test]
    fn too_few_samples_cannot_tell_a_spike_from_a_sustained_load() {
        let mut r = quiet();
        // Every sample over the limit, but only two of them, over 4 s.
        r.nodes = Ok((0..2).map(|i| sample(i * 2, 0.99, 0.99)).collect());
        not_assessed(
            Some(r),
            &[Criterion::NodeCpu, Criterion::NodeMemory],
            "2 sample(s) spanning 4.0 s; sustained needs 3 samples over at least 10 s",
        );
    }
}
