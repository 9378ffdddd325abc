//! JUnit XML: one test suite per rehearsal, one test case per gate and per failed phase.

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use super::{PhaseStatus, Report};

/// Renders `report` as JUnit XML.
pub fn render_junit(report: &Report) -> String {
    let suite_name = format!("rehearsal.{}.{}", report.scenario, report.provider);
    let mut suite = TestSuite::new(suite_name.as_str());
    for gate in &report.gates {
        let status = if gate.passed {
            TestCaseStatus::success()
        } else {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status
                .set_message(format!("{} finding(s)", gate.findings.len()))
                .set_description(gate.findings.join("\n"));
            status
        };
        let mut case = TestCase::new(format!("gate.{}", gate.name), status);
        case.set_classname(suite_name.as_str());
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
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
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
        assert!(xml.contains("users: 10 before, 9 after"), "{xml}");
        assert!(xml.contains("name=\"phase.restore\""), "{xml}");
        assert!(xml.contains("&lt;failed&gt;"), "XML must be escaped: {xml}");
        assert!(xml.contains("failures=\"1\""), "{xml}");
    }
}
