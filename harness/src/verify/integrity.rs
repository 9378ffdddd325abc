//! Referential integrity: foreign-key checks observed in the restored database, and
//! `pg_amcheck` output.

use super::{Finding, FindingKind, Gate, Verdict};
use crate::facts::ForeignKeyCheck;
pub use crate::facts::{Amcheck, AmcheckReport};

/// Referential integrity: every foreign key has no orphan rows and is validated, and
/// `pg_amcheck` (when requested) ran and reported no corruption.
pub fn referential_integrity(foreign_keys: &[ForeignKeyCheck], amcheck: &Amcheck) -> Verdict {
    let mut findings = Vec::new();
    for fk in foreign_keys {
        let subject = format!("{} constraint {}", fk.table, fk.constraint);
        if fk.orphan_rows > 0 {
            let mut detail = format!(
                "{} row(s) reference ({}) values missing from {}",
                fk.orphan_rows,
                fk.columns.join(", "),
                fk.referenced
            );
            if !fk.sample.is_empty() {
                detail.push_str(&format!("; for example {}", fk.sample.join(", ")));
            }
            findings.push(
                Finding::new(&subject, FindingKind::Broken, detail)
                    .values("0 orphan rows", fk.orphan_rows),
            );
        }
        if !fk.validated {
            findings.push(
                Finding::new(
                    &subject,
                    FindingKind::Broken,
                    "foreign key is NOT VALID: existing rows were never checked",
                )
                .values("validated", "not valid"),
            );
        }
    }
    match amcheck {
        Amcheck::NotRequested => {}
        Amcheck::Ran(report) => findings.extend(amcheck_findings(report)),
        Amcheck::CouldNotRun(why) => findings.push(Finding::new(
            "pg_amcheck",
            FindingKind::NotChecked,
            format!("could not check for corruption: pg_amcheck did not run: {why}"),
        )),
    }
    Verdict::from_findings(Gate::ReferentialIntegrity, findings)
}

/// Parses pg_amcheck's report: a header line per damaged relation (`heap table "db.s.t", ...:`
/// or `btree index "db.s.i":`) followed by indented detail lines.
fn amcheck_findings(report: &AmcheckReport) -> Vec<Finding> {
    let mut findings: Vec<Finding> = Vec::new();
    for line in report.output.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let indented = line.starts_with(' ') || line.starts_with('\t');
        match findings.last_mut() {
            Some(last) if indented => {
                if !last.detail.is_empty() {
                    last.detail.push_str("; ");
                }
                last.detail.push_str(line.trim());
            }
            _ => {
                let subject = line.trim().trim_end_matches(':').to_owned();
                findings.push(Finding::new(
                    format!("pg_amcheck: {subject}"),
                    FindingKind::Broken,
                    "",
                ));
            }
        }
    }
    for finding in &mut findings {
        if finding.detail.is_empty() {
            finding.detail = "reported by pg_amcheck".to_owned();
        }
    }
    if report.exit_code != 0 && findings.is_empty() {
        findings.push(Finding::new(
            "pg_amcheck",
            FindingKind::Broken,
            format!(
                "pg_amcheck exited with status {} without a report",
                report.exit_code
            ),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fk(orphans: u64, validated: bool) -> ForeignKeyCheck {
        ForeignKeyCheck {
            constraint: "posts_author_fkey".into(),
            table: "public.posts".into(),
            columns: vec!["author".into()],
            referenced: "public.users".into(),
            validated,
            orphan_rows: orphans,
            sample: if orphans > 0 {
                vec!["(ghost)".into()]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn clean_foreign_keys_and_amcheck_pass() {
        let clean = AmcheckReport {
            exit_code: 0,
            output: String::new(),
        };
        let verdict = referential_integrity(&[fk(0, true)], &Amcheck::Ran(clean));
        assert!(verdict.passed, "{verdict}");
    }

    #[test]
    fn orphan_rows_are_a_finding() {
        let verdict = referential_integrity(&[fk(2, true)], &Amcheck::NotRequested);
        assert_eq!(verdict.findings.len(), 1);
        let f = &verdict.findings[0];
        assert_eq!(f.subject, "public.posts constraint posts_author_fkey");
        assert_eq!(f.kind, FindingKind::Broken);
        assert!(
            f.detail.contains("(ghost)") && f.detail.contains("public.users"),
            "{}",
            f.detail
        );
        assert_eq!(f.actual.as_deref(), Some("2"));
    }

    #[test]
    fn not_valid_constraint_is_a_finding() {
        let verdict = referential_integrity(&[fk(0, false)], &Amcheck::NotRequested);
        assert!(verdict.findings[0].detail.contains("NOT VALID"));
    }

    #[test]
    fn amcheck_corruption_is_parsed_per_relation() {
        let output = "btree index \"titanium.public.idx_posts_author\":\n    ERROR:  item order invariant violated for index \"idx_posts_author\"\nheap table \"titanium.public.posts\", block 3, offset 7:\n    xmin 9 precedes relation freeze threshold 0:700\n";
        let report = AmcheckReport {
            exit_code: 2,
            output: output.into(),
        };
        let verdict = referential_integrity(&[], &Amcheck::Ran(report));
        let subjects: Vec<_> = verdict
            .findings
            .iter()
            .map(|f| f.subject.as_str())
            .collect();
        assert_eq!(
            subjects,
            [
                "pg_amcheck: btree index \"titanium.public.idx_posts_author\"",
                "pg_amcheck: heap table \"titanium.public.posts\", block 3, offset 7"
            ]
        );
        assert!(verdict.findings[0].detail.contains("invariant violated"));
    }

    #[test]
    fn amcheck_failure_without_report_is_a_finding() {
        let report = AmcheckReport {
            exit_code: 1,
            output: String::new(),
        };
        let verdict = referential_integrity(&[], &Amcheck::Ran(report));
        assert!(verdict.findings[0].detail.contains("status 1"));
    }

    #[test]
    fn amcheck_that_could_not_run_fails_the_gate_with_why() {
        let verdict = referential_integrity(
            &[fk(0, true)],
            &Amcheck::from(Err::<AmcheckReport, _>(std::io::Error::from(
                std::io::ErrorKind::PermissionDenied,
            ))),
        );
        assert!(!verdict.passed, "{verdict}");
        assert_eq!(verdict.findings[0].kind, FindingKind::NotChecked);
        let why = verdict.not_checked().expect("a could-not-check reason");
        assert!(why.contains("permission denied"), "{why}");
        assert!(why.contains("could not check"), "{why}");
    }
}
