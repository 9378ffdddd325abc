//! The statistics gate: every restored table has planner statistics, so the rebuilt database
//! does not serve its first traffic on default estimates (issue 20: nothing ran `ANALYZE`
//! after pg_restore).

use crate::facts::{TableFacts, TableStatistics};

use super::{Finding, FindingKind, Gate, Verdict};

/// Every table of the backup (`expected`) must be found in `observed` with statistics
/// ([`TableStatistics::analyzed`]); each one without is named. A table the statistics could
/// not be read for is a finding, never a pass.
pub fn statistics(expected: &[TableFacts], observed: &[TableStatistics]) -> Verdict {
    let mut findings = Vec::new();
    for table in expected {
        let subject = format!("{}.{}", table.schema, table.name);
        match observed
            .iter()
            .find(|s| s.schema == table.schema && s.name == table.name)
        {
            None => findings.push(Finding::new(
                subject,
                FindingKind::Missing,
                "no statistics could be read: the table is not in the restored database",
            )),
            Some(stats) if !stats.analyzed() => findings.push(
                Finding::new(
                    subject,
                    FindingKind::Missing,
                    "no planner statistics: ANALYZE has not run since the restore",
                )
                .values("analyzed", "never analyzed, nothing in pg_stats"),
            ),
            Some(_) => {}
        }
    }
    Verdict::from_findings(Gate::Statistics, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> TableFacts {
        TableFacts {
            schema: "public".into(),
            name: name.into(),
            rows: 10,
            digest: "d".into(),
            ordered_by: vec!["id".into()],
        }
    }

    fn stats(name: &str, last_analyzed: Option<&str>, columns: u64) -> TableStatistics {
        TableStatistics {
            schema: "public".into(),
            name: name.into(),
            last_analyzed: last_analyzed.map(str::to_owned),
            columns_with_statistics: columns,
        }
    }

    fn check(observed: &[TableStatistics], failing: &[(&str, &str)]) {
        let verdict = statistics(&[table("users"), table("posts")], observed);
        let got: Vec<(&str, &str)> = verdict
            .findings
            .iter()
            .map(|f| (f.subject.as_str(), f.detail.as_str()))
            .collect();
        assert_eq!(got, failing, "{verdict}");
        assert_eq!(verdict.passed, failing.is_empty());
        assert_eq!(verdict.gate, Gate::Statistics);
    }

    #[test]
    fn analyzed_tables_pass() {
        check(
            &[
                stats("users", Some("2026-12-02 13:00:00+00"), 0),
                // Statistics in pg_stats survive a reset of the activity statistics.
                stats("posts", None, 6),
            ],
            &[],
        );
    }

    #[test]
    fn a_table_never_analyzed_is_named() {
        check(
            &[
                stats("users", Some("2026-12-02 13:00:00+00"), 5),
                stats("posts", None, 0),
            ],
            &[(
                "public.posts",
                "no planner statistics: ANALYZE has not run since the restore",
            )],
        );
    }

    #[test]
    fn a_table_without_facts_is_not_a_pass() {
        check(
            &[stats("users", None, 5)],
            &[(
                "public.posts",
                "no statistics could be read: the table is not in the restored database",
            )],
        );
    }
}
