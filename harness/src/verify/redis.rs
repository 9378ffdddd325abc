//! The Redis gate: key count and content digest equal between backup and restore, over every
//! logical database, every type and every key's expiry time (the digest is defined in
//! `backup::dataset_facts`).

use super::{Finding, FindingKind, Gate, Verdict};
pub use crate::facts::RedisFacts;

/// Redis: key count and digest equal; with per-key digests on both sides, each missing, extra
/// or changed key is named.
pub fn redis(expected: &RedisFacts, restored: &RedisFacts) -> Verdict {
    let mut findings = Vec::new();
    if expected.key_count != restored.key_count {
        findings.push(
            Finding::new("redis", FindingKind::Mismatch, "key count differs")
                .values(expected.key_count, restored.key_count),
        );
    }
    if expected.digest != restored.digest {
        findings.push(
            Finding::new("redis", FindingKind::Mismatch, "content digest differs")
                .values(&expected.digest, &restored.digest),
        );
    }
    if !expected.keys.is_empty() && !restored.keys.is_empty() {
        for (key, digest) in &expected.keys {
            match restored.keys.get(key) {
                None => findings.push(Finding::new(
                    format!("redis key {key}"),
                    FindingKind::Missing,
                    "key is missing after restore",
                )),
                Some(got) if got != digest => findings.push(
                    Finding::new(
                        format!("redis key {key}"),
                        FindingKind::Mismatch,
                        "value differs",
                    )
                    .values(digest, got),
                ),
                Some(_) => {}
            }
        }
        for key in restored
            .keys
            .keys()
            .filter(|k| !expected.keys.contains_key(*k))
        {
            findings.push(Finding::new(
                format!("redis key {key}"),
                FindingKind::Unexpected,
                "key is not in the backup",
            ));
        }
    }
    Verdict::from_findings(Gate::Redis, findings)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn facts(keys: &[(&str, &str)], digest: &str) -> RedisFacts {
        RedisFacts {
            key_count: keys.len() as u64,
            digest: digest.into(),
            keys: keys
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn equal_redis_passes() {
        let f = facts(&[("session:1", "a"), ("session:2", "b")], "d1");
        assert!(redis(&f, &f.clone()).passed);
    }

    #[test]
    fn an_extra_key_is_named() {
        let expected = facts(&[("session:1", "a")], "d1");
        let restored = facts(&[("session:1", "a"), ("stray", "z")], "d2");
        let verdict = redis(&expected, &restored);
        let subjects: Vec<_> = verdict
            .findings
            .iter()
            .map(|f| (f.subject.as_str(), f.kind))
            .collect();
        assert_eq!(
            subjects,
            [
                ("redis", FindingKind::Mismatch),
                ("redis", FindingKind::Mismatch),
                ("redis key stray", FindingKind::Unexpected)
            ]
        );
        assert_eq!(verdict.findings[0].expected.as_deref(), Some("1"));
        assert_eq!(verdict.findings[0].actual.as_deref(), Some("2"));
    }

    #[test]
    fn digest_only_facts_still_fail_on_difference() {
        let expected = RedisFacts {
            key_count: 3,
            digest: "d1".into(),
            keys: BTreeMap::new(),
        };
        let restored = RedisFacts {
            key_count: 3,
            digest: "d9".into(),
            keys: BTreeMap::new(),
        };
        let verdict = redis(&expected, &restored);
        assert_eq!(verdict.findings.len(), 1);
        assert_eq!(verdict.findings[0].detail, "content digest differs");
    }
}
