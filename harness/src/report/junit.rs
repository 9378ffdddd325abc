//! JUnit XML: one test suite per rehearsal, one test case per gate and per phase that did not
//! pass, and one for the verdict. A gate that found defects is a failure; a gate or phase that
//! could not run is an error; a verdict other than pass is never without a failing case.

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use super::{Outcome, PhaseStatus, Report};

/// Renders `report` (concluded: see [`Report::conclude`]) as JUnit XML.
pub fn render_junit(report: &Report) -> String {
    let report = &*report.concluded();
    let suite_name = format!("rehearsal.{}.{}", report.scenario, report.provider);
    let mut suite = TestSuite::new(suite_name.as_str());
    // The recovery figures, for CI systems that chart suite properties.
    if let Some(rto) = report.rto_ms {
        suite.add_property(quick_junit::Property::new("rto_ms", rto.to_string()));
    }
    if let Some(ready) = report.pods_ready_ms {
        suite.add_property(quick_junit::Property::new(
            "pods_ready_ms",
            ready.to_string(),
        ));
    }
    if let Some(rpo) = report.rpo_ms {
        suite.add_property(quick_junit::Property::new("rpo_ms", rpo.to_string()));
        if let Some(clock) = &report.rpo_clock {
            suite.add_property(quick_junit::Property::new("rpo_clock", clock.as_str()));
        }
    }
    for gate in &report.gates {
        let status = if gate.passed {
            TestCaseStatus::success()
        } else if let Some(why) = &gate.not_run {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status
                .set_message(format!("could not run: {why}"))
                .set_description(gate.findings_text("\n"));
            status
        } else {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status
                .set_message(format!("{} finding(s)", gate.findings.len()))
                .set_description(gate.findings_text("\n"));
            status
        };
        let mut case = TestCase::new(format!("gate.{}", gate.name), status);
        case.set_classname(suite_name.as_str());
        // A passed gate's evidence (the markers proved, the RPO measured) as its output.
        if gate.passed && !gate.findings.is_empty() {
            case.set_system_out(gate.findings_text("\n"));
        }
        suite.add_test_case(case);
    }
    for phase in report
        .phases
        .iter()
        .filter(|p| p.status != PhaseStatus::Passed)
    {
        let status = match phase.status {
            PhaseStatus::Skipped => TestCaseStatus::skipped(),
            _ => {
                // A phase failed by its gate's verdict is a failure; any other is an error.
                let kind = if phase.gate.is_some() {
                    NonSuccessKind::Failure
                } else {
                    NonSuccessKind::Error
                };
                let mut status = TestCaseStatus::non_success(kind);
                status.set_message(
                    phase
                        .detail
                        .clone()
                        .unwrap_or_else(|| "phase failed".into()),
                );
                status
            }
        };
        let mut case = TestCase::new(format!("phase.{}", phase.name), status);
        case.set_classname(suite_name.as_str())
            .set_time(std::time::Duration::from_millis(phase.duration_ms));
        suite.add_test_case(case);
    }
    let status = match report.verdict {
        Outcome::Pass => TestCaseStatus::success(),
        verdict => {
            let (kind, label) = match verdict {
                Outcome::CouldNotRun => (NonSuccessKind::Error, "could not run"),
                _ => (NonSuccessKind::Failure, "roll back"),
            };
            let mut status = TestCaseStatus::non_success(kind);
            status
                .set_message(format!(
                    "{label}: {} reason(s)",
                    report.rollback_reasons.len()
                ))
                .set_description(report.rollback_reasons.join("\n"));
            status
        }
    };
    let mut case = TestCase::new("verdict", status);
    case.set_classname(suite_name.as_str());
    suite.add_test_case(case);
    let mut junit = quick_junit::Report::new("rebuild-rehearsal");
    junit.add_test_suite(suite);
    junit
        .to_string()
        .expect("JUnit serialisation of plain strings cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_case_per_gate_with_findings_on_failures() {
        let xml = render_junit(&super::super::sample::report());
        assert!(xml.contains("name=\"gate.row-counts\""), "{xml}");
        assert!(xml.contains("name=\"gate.schema\""), "{xml}");
        assert!(
            xml.contains("public.users: row count differs (expected 10, got 9)"),
            "{xml}"
        );
        assert!(xml.contains("name=\"phase.restore\""), "{xml}");
        assert!(xml.contains("&lt;failed&gt;"), "XML must be escaped: {xml}");
        assert!(xml.contains("name=\"verdict\""), "{xml}");
        // The failed gate is a failure; the erring phase and the verdict (could not run) are
        // errors.
        assert!(xml.contains("failures=\"1\""), "{xml}");
        assert!(xml.contains("errors=\"2\""), "{xml}");
    }

    #[test]
    fn a_gate_that_could_not_run_is_an_error() {
        let mut report = super::super::sample::report();
        report.phases.truncate(1);
        report.gates[1].passed = false;
        report.gates[1].not_run = Some("pg_amcheck did not start".into());
        report.conclude();
        let xml = render_junit(&report);
        assert!(
            xml.contains("could not run: pg_amcheck did not start"),
            "{xml}"
        );
        assert!(xml.contains("errors=\"2\""), "gate and verdict: {xml}");
    }

    #[test]
    fn the_rpo_is_a_suite_property_and_a_passed_gates_evidence_its_output() {
        let mut report = super::super::sample::report();
        report.rpo_ms = Some(120);
        report.rpo_clock = Some("postgresql server".into());
        report.gates.push(crate::report::GateReport {
            name: "pitr_rpo".into(),
            passed: true,
            findings: vec![crate::verify::Finding::new(
                "pitr_rpo",
                crate::verify::FindingKind::Note,
                "RPO 120 ms: last marker committed before the disaster 41",
            )],
            not_run: None,
        });
        let xml = render_junit(&report);
        assert!(xml.contains("name=\"rpo_ms\" value=\"120\""), "{xml}");
        assert!(
            xml.contains("name=\"rpo_clock\" value=\"postgresql server\""),
            "{xml}"
        );
        assert!(
            xml.contains("RPO 120 ms: last marker committed before the disaster 41"),
            "{xml}"
        );
    }
}
