//! Data gates: exact row counts, content digests, sequences and the marker-row negative control.

use std::collections::BTreeMap;

use super::{Finding, FindingKind, Gate, Verdict};
use crate::facts::{SequenceFacts, TableFacts};

fn qualified(schema: &str, name: &str) -> String {
    format!("{schema}.{name}")
}

fn by_name(tables: &[TableFacts]) -> BTreeMap<String, &TableFacts> {
    tables
        .iter()
        .map(|t| (qualified(&t.schema, &t.name), t))
        .collect()
}

/// Findings for tables present on one side only; calls `compare` for tables on both.
fn per_table(
    expected: &[TableFacts],
    restored: &[TableFacts],
    mut compare: impl FnMut(&str, &TableFacts, &TableFacts, &mut Vec<Finding>),
) -> Vec<Finding> {
    let expected = by_name(expected);
    let restored = by_name(restored);
    let mut findings = Vec::new();
    for (name, want) in &expected {
        match restored.get(name) {
            None => findings.push(
                Finding::new(
                    name.clone(),
                    FindingKind::Missing,
                    "table is missing after restore",
                )
                .values(format!("{} rows", want.rows), "no table"),
            ),
            Some(got) => compare(name, want, got, &mut findings),
        }
    }
    for (name, got) in &restored {
        if !expected.contains_key(name) {
            findings.push(
                Finding::new(
                    name.clone(),
                    FindingKind::Unexpected,
                    "table exists after restore but not in the backup",
                )
                .values("no table", format!("{} rows", got.rows)),
            );
        }
    }
    findings
}

/// Row counts: exact equality per table. The runbook tolerates a 10 % difference; a rehearsal
/// does not: one missing row is a finding.
pub fn row_counts(expected: &[TableFacts], restored: &[TableFacts]) -> Verdict {
    let findings = per_table(expected, restored, |name, want, got, findings| {
        if want.rows != got.rows {
            let diff = i128::from(got.rows) - i128::from(want.rows);
            findings.push(
                Finding::new(
                    name,
                    FindingKind::Mismatch,
                    format!("row count differs by {diff:+}"),
                )
                .values(want.rows, got.rows),
            );
        }
    });
    Verdict::from_findings(Gate::RowCounts, findings)
}

/// Content digests: equal per table. Digests ordered by different keys cannot be compared and
/// are reported as such rather than as a mismatch.
pub fn digests(expected: &[TableFacts], restored: &[TableFacts]) -> Verdict {
    let findings = per_table(expected, restored, |name, want, got, findings| {
        if want.ordered_by != got.ordered_by {
            findings.push(
                Finding::new(
                    name,
                    FindingKind::Incomparable,
                    "digests were computed over different row orders",
                )
                .values(want.ordered_by.join(","), got.ordered_by.join(",")),
            );
        } else if want.digest != got.digest {
            findings.push(
                Finding::new(
                    name,
                    FindingKind::Mismatch,
                    "content digest differs: at least one row changed",
                )
                .values(&want.digest, &got.digest),
            );
        }
    });
    Verdict::from_findings(Gate::Digests, findings)
}

/// The value `nextval` hands out next.
fn next_value(seq: &SequenceFacts) -> i64 {
    if seq.is_called {
        seq.last_value.saturating_add(1)
    } else {
        seq.last_value
    }
}

/// Sequences: every restored sequence's next value lies above the largest value of the column
/// it feeds (else the next insert collides), and no sequence is behind where the backup left
/// it (else it hands out ids that were already used before the backup). Sequences of the
/// backup missing after restore are findings too.
pub fn sequences(backed_up: &[SequenceFacts], restored: &[SequenceFacts]) -> Verdict {
    let key = |s: &SequenceFacts| qualified(&s.schema, &s.name);
    let restored_by: BTreeMap<String, &SequenceFacts> =
        restored.iter().map(|s| (key(s), s)).collect();
    let mut findings = Vec::new();
    for want in backed_up {
        let name = key(want);
        match restored_by.get(&name) {
            None => findings.push(
                Finding::new(
                    &name,
                    FindingKind::Missing,
                    "sequence is missing after restore",
                )
                .values(format!("next value {}", next_value(want)), "no sequence"),
            ),
            Some(got) if next_value(got) < next_value(want) => findings.push(
                Finding::new(
                    &name,
                    FindingKind::Mismatch,
                    "sequence is behind its backed-up position",
                )
                .values(
                    format!("next value {}", next_value(want)),
                    format!("next value {}", next_value(got)),
                ),
            ),
            Some(_) => {}
        }
    }
    for got in restored {
        if let Some(max) = got.column_max
            && next_value(got) <= max
        {
            let column = got.owned_by.as_deref().unwrap_or("its column");
            findings.push(
                Finding::new(
                    key(got),
                    FindingKind::Broken,
                    format!("next value is not above max({column}): the next insert would collide"),
                )
                .values(
                    format!("next value > {max}"),
                    format!("next value {}", next_value(got)),
                ),
            );
        }
    }
    Verdict::from_findings(Gate::Sequences, findings)
}

/// The negative control: the marker row written after the backup (`marker`, for example
/// `public.users username=rehearsal-marker-<run id>`) must be absent after restore, proving the
/// data came from the backup and not from leftovers. `found` is how many matching rows the
/// restored database holds.
pub fn marker_absent(marker: &str, found: u64) -> Verdict {
    let findings = if found == 0 {
        Vec::new()
    } else {
        vec![
            Finding::new(
                marker,
                FindingKind::Unexpected,
                "marker row written after the backup is present: the data did not (only) come from the backup",
            )
            .values(0, found),
        ]
    };
    Verdict::from_findings(Gate::MarkerAbsent, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, rows: u64, digest: &str) -> TableFacts {
        TableFacts {
            schema: "public".into(),
            name: name.into(),
            rows,
            digest: digest.into(),
            ordered_by: vec!["id".into()],
        }
    }

    fn titanium() -> Vec<TableFacts> {
        vec![table("users", 1000, "aa11"), table("posts", 10_000, "bb22")]
    }

    fn seq(name: &str, last: i64, called: bool, max: Option<i64>) -> SequenceFacts {
        SequenceFacts {
            schema: "public".into(),
            name: name.into(),
            last_value: last,
            is_called: called,
            owned_by: Some(format!("public.{}.id", name.trim_end_matches("_id_seq"))),
            column_max: max,
        }
    }

    #[test]
    fn row_counts_pass_when_equal() {
        let verdict = row_counts(&titanium(), &titanium());
        assert!(verdict.passed, "{verdict}");
        assert_eq!(verdict.gate, Gate::RowCounts);
    }

    #[test]
    fn one_missing_row_is_a_finding() {
        let mut restored = titanium();
        restored[1].rows -= 1;
        let verdict = row_counts(&titanium(), &restored);
        assert!(!verdict.passed);
        assert_eq!(verdict.findings.len(), 1);
        let f = &verdict.findings[0];
        assert_eq!(
            (f.subject.as_str(), f.kind),
            ("public.posts", FindingKind::Mismatch)
        );
        assert_eq!(
            (f.expected.as_deref(), f.actual.as_deref()),
            (Some("10000"), Some("9999"))
        );
        assert!(f.detail.contains("-1"), "{}", f.detail);
    }

    #[test]
    fn missing_and_extra_tables_are_findings() {
        let restored = vec![table("users", 1000, "aa11"), table("comments", 0, "x")];
        let verdict = row_counts(&titanium(), &restored);
        let kinds: Vec<_> = verdict
            .findings
            .iter()
            .map(|f| (f.subject.as_str(), f.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("public.posts", FindingKind::Missing),
                ("public.comments", FindingKind::Unexpected)
            ]
        );
    }

    #[test]
    fn digests_pass_when_equal_and_fail_on_one_changed_byte() {
        assert!(digests(&titanium(), &titanium()).passed);
        let mut restored = titanium();
        restored[0].digest = "aa12".into();
        let verdict = digests(&titanium(), &restored);
        assert_eq!(verdict.findings.len(), 1);
        let f = &verdict.findings[0];
        assert_eq!(
            (f.subject.as_str(), f.kind),
            ("public.users", FindingKind::Mismatch)
        );
        assert_eq!(
            (f.expected.as_deref(), f.actual.as_deref()),
            (Some("aa11"), Some("aa12"))
        );
    }

    #[test]
    fn digests_over_different_orders_are_incomparable() {
        let mut restored = titanium();
        restored[0].ordered_by = vec![];
        let verdict = digests(&titanium(), &restored);
        assert_eq!(verdict.findings[0].kind, FindingKind::Incomparable);
    }

    #[test]
    fn sequences_pass_at_backed_up_values() {
        let backed_up = vec![
            seq("users_id_seq", 1000, true, Some(1000)),
            seq("posts_id_seq", 1, false, None),
        ];
        assert!(sequences(&backed_up, &backed_up).passed);
    }

    #[test]
    fn sequence_left_at_one_is_a_finding() {
        let backed_up = vec![seq("users_id_seq", 1000, true, Some(1000))];
        let restored = vec![seq("users_id_seq", 1, false, Some(1000))];
        let verdict = sequences(&backed_up, &restored);
        let kinds: Vec<_> = verdict.findings.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [FindingKind::Mismatch, FindingKind::Broken]);
        assert!(
            verdict.findings[1].detail.contains("public.users.id"),
            "{}",
            verdict.findings[1].detail
        );
        assert_eq!(verdict.findings[1].actual.as_deref(), Some("next value 1"));
    }

    #[test]
    fn sequence_missing_after_restore_is_a_finding() {
        let backed_up = vec![seq("users_id_seq", 10, true, Some(10))];
        let verdict = sequences(&backed_up, &[]);
        assert_eq!(verdict.findings[0].kind, FindingKind::Missing);
    }

    #[test]
    fn uncalled_sequence_on_empty_table_passes() {
        let restored = vec![seq("posts_id_seq", 1, false, None)];
        assert!(sequences(&restored, &restored).passed);
    }

    #[test]
    fn marker_absent_passes_at_zero_and_fails_when_present() {
        assert!(marker_absent("public.users username=m-1", 0).passed);
        let verdict = marker_absent("public.users username=m-1", 1);
        assert!(!verdict.passed);
        assert_eq!(verdict.findings[0].actual.as_deref(), Some("1"));
    }
}
