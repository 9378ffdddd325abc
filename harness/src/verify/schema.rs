//! The schema gate: compares two normalised schema renderings and reports drift per object,
//! each with a readable unified diff.
//!
//! A rendering (see `facts::schema`) is a sequence of blocks: a header line naming one object
//! (`table public.users`) followed by indented lines describing it. Comparing block by block
//! names the object that drifted; a rendering without that shape still compares line by line.

use std::collections::BTreeMap;

use similar::TextDiff;

use super::{Finding, FindingKind, Gate, Verdict};

/// A unified diff of two texts (3 lines of context), labelled `backup` and `restored`.
pub fn unified_diff(backup: &str, restored: &str) -> String {
    TextDiff::from_lines(backup, restored)
        .unified_diff()
        .context_radius(3)
        .header("backup", "restored")
        .to_string()
}

/// Splits a rendering into blocks keyed by their header line, in order of appearance.
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let indented = line.starts_with(' ') || line.starts_with('\t');
        match blocks.last_mut() {
            Some((_, body)) if indented || line.is_empty() => {
                body.push_str(line);
                body.push('\n');
            }
            _ => blocks.push((line.to_owned(), format!("{line}\n"))),
        }
    }
    blocks
}

/// Schema: the restored database's rendering equals the backup's. Each object that differs is
/// a finding whose detail is the unified diff of that object's block.
pub fn schema(backup: &str, restored: &str) -> Verdict {
    if backup == restored {
        return Verdict::from_findings(Gate::Schema, Vec::new());
    }
    let want = blocks(backup);
    let got = blocks(restored);
    let got_map: BTreeMap<&str, &str> = got.iter().map(|(h, b)| (h.as_str(), b.as_str())).collect();
    let want_map: BTreeMap<&str, &str> =
        want.iter().map(|(h, b)| (h.as_str(), b.as_str())).collect();
    let mut findings = Vec::new();
    for (header, body) in &want {
        match got_map.get(header.as_str()) {
            None => findings.push(Finding::new(
                header,
                FindingKind::Missing,
                unified_diff(body, ""),
            )),
            Some(other) if other != body => findings.push(Finding::new(
                header,
                FindingKind::Drift,
                unified_diff(body, other),
            )),
            Some(_) => {}
        }
    }
    for (header, body) in &got {
        if !want_map.contains_key(header.as_str()) {
            findings.push(Finding::new(
                header,
                FindingKind::Unexpected,
                unified_diff("", body),
            ));
        }
    }
    if findings.is_empty() {
        // Same blocks, different order or duplicated headers: report the whole diff.
        findings.push(Finding::new(
            "schema",
            FindingKind::Drift,
            unified_diff(backup, restored),
        ));
    }
    Verdict::from_findings(Gate::Schema, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKUP: &str = "table public.users\n  column id integer not null\n  column email character varying(100) not null\n\
                          index public.idx_users_username\n  CREATE INDEX idx_users_username ON public.users USING btree (username)\n";

    #[test]
    fn identical_renderings_pass() {
        assert!(schema(BACKUP, BACKUP).passed);
    }

    #[test]
    fn changed_column_type_is_drift_with_a_diff() {
        let restored = BACKUP.replace("character varying(100)", "text");
        let verdict = schema(BACKUP, &restored);
        assert_eq!(verdict.findings.len(), 1);
        let f = &verdict.findings[0];
        assert_eq!(
            (f.subject.as_str(), f.kind),
            ("table public.users", FindingKind::Drift)
        );
        assert!(
            f.detail
                .contains("-  column email character varying(100) not null"),
            "{}",
            f.detail
        );
        assert!(
            f.detail.contains("+  column email text not null"),
            "{}",
            f.detail
        );
        assert!(
            f.detail.starts_with("--- backup\n+++ restored\n"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn dropped_index_is_missing() {
        let restored = "table public.users\n  column id integer not null\n  column email character varying(100) not null\n";
        let verdict = schema(BACKUP, restored);
        assert_eq!(verdict.findings.len(), 1);
        assert_eq!(
            verdict.findings[0].subject,
            "index public.idx_users_username"
        );
        assert_eq!(verdict.findings[0].kind, FindingKind::Missing);
    }

    #[test]
    fn extra_object_is_unexpected() {
        let restored = format!("{BACKUP}view public.v\n  SELECT 1;\n");
        let verdict = schema(BACKUP, &restored);
        assert_eq!(verdict.findings[0].kind, FindingKind::Unexpected);
        assert_eq!(verdict.findings[0].subject, "view public.v");
    }

    #[test]
    fn reordered_blocks_still_fail() {
        let blocks = blocks(BACKUP);
        let reordered = format!("{}{}", blocks[1].1, blocks[0].1);
        let verdict = schema(BACKUP, &reordered);
        assert!(!verdict.passed);
        assert_eq!(verdict.findings[0].subject, "schema");
    }
}
