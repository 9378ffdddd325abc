//! `REBUILD_RECORD.md`: the runbook's section 7.1 changelog entry and its checklist template
//! ("체크리스트 템플릿"), filled from what a run measured.
//!
//! Every checklist item is ticked only when the report holds the evidence for it, and the
//! evidence is written beside it; an item the run did not prove stays unticked with the reason
//! (did not run, failed, or cannot be rehearsed, such as 24 hours of monitoring).

use std::fmt::Write as _;

use super::{BackupEvidence, PhaseStatus, Report};

/// One line of the checklist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChecklistItem {
    /// The runbook's section (`Pre-Rebuild`, `Rebuild`, `Post-Rebuild`).
    pub section: &'static str,
    /// The runbook's own words.
    pub item: &'static str,
    /// Whether the run proved it.
    pub proved: bool,
    /// The evidence, or why it is not proved.
    pub evidence: String,
}

/// The runbook's checklist, each item judged from `report`.
///
/// Long by design: one `push` per line of the runbook's checklist, in its order, so it reads
/// as the checklist itself with the evidence each line needs.
pub fn checklist(report: &Report) -> Vec<ChecklistItem> {
    let phase = |name: &str| report.phases.iter().find(|p| p.name == name);
    let phase_ok = |name: &str, evidence: &str| -> (bool, String) {
        match phase(name) {
            Some(p) if p.status == PhaseStatus::Passed => {
                let detail = p
                    .detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                (
                    true,
                    format!(
                        "phase `{name}` passed in {:.1} s{detail}; {evidence}",
                        p.duration_ms as f64 / 1000.0
                    ),
                )
            }
            Some(p) if p.status == PhaseStatus::Failed => (
                false,
                format!(
                    "phase `{name}` failed: {}",
                    p.detail.as_deref().unwrap_or("no detail")
                ),
            ),
            Some(_) => (false, format!("phase `{name}` did not run")),
            None => (false, format!("this scenario has no `{name}` phase")),
        }
    };
    let gate_ok = |name: &str, evidence: String| -> (bool, String) {
        match report.gates.iter().find(|g| g.name == name) {
            Some(g) if g.passed => (true, format!("gate `{name}` passed; {evidence}")),
            Some(g) => {
                let why = g.not_run.clone().unwrap_or_else(|| g.findings_text("; "));
                (false, format!("gate `{name}` failed: {why}"))
            }
            None => (false, format!("gate `{name}` did not run")),
        }
    };
    let backup = report.backup.as_ref();
    let counts = report
        .tables
        .iter()
        .map(|t| format!("{} {}", t.name, t.rows_before))
        .collect::<Vec<_>>()
        .join(", ");
    let counts_after = report
        .tables
        .iter()
        .map(|t| match t.rows_after {
            Some(after) => format!("{} {} → {}", t.name, t.rows_before, after),
            None => format!("{} {} → not observed", t.name, t.rows_before),
        })
        .collect::<Vec<_>>()
        .join(", ");

    let mut items = Vec::new();
    let mut push = |section, item, (proved, evidence): (bool, String)| {
        items.push(ChecklistItem {
            section,
            item,
            proved,
            evidence,
        })
    };
    const PRE: &str = "Pre-Rebuild";
    const REBUILD: &str = "Rebuild";
    const POST: &str = "Post-Rebuild";

    push(
        PRE,
        "PostgreSQL pg_dump 백업 완료",
        match backup.and_then(|b| b.postgres_dump.as_ref()) {
            Some(dump) => phase_ok("backup", &format!("dump {dump}")),
            None => (false, "the run recorded no pg_dump archive".into()),
        },
    );
    push(
        PRE,
        "백업 파일 무결성 검증",
        phase_ok(
            "verify-backup",
            &match backup {
                Some(b) => format!(
                    "{} files checked against MANIFEST.json (sha256 {})",
                    b.files,
                    short(&b.manifest_sha256)
                ),
                None => "no backup recorded".into(),
            },
        ),
    );
    push(
        PRE,
        "데이터 카운트 기록",
        if report.tables.is_empty() {
            (false, "no table was counted".into())
        } else {
            (
                true,
                format!("exact counts in the backup's snapshot: {counts}"),
            )
        },
    );
    push(
        PRE,
        "Terraform 상태 백업",
        match backup.and_then(|b| b.terraform_state.as_ref()) {
            Some(state) => (true, format!("terraform state in the backup: {state}")),
            None => (
                false,
                "not rehearsed by this run: the backup has no terraform part".into(),
            ),
        },
    );
    push(
        PRE,
        "오프사이트 백업 완료",
        match backup.map(|b| b.offsite.as_slice()) {
            Some(copies) if !copies.is_empty() => {
                (true, format!("copied and read back: {}", copies.join("; ")))
            }
            _ => (false, "no off-site copy was made and read back".into()),
        },
    );
    push(
        REBUILD,
        "새 클러스터 생성",
        phase_ok("create-cluster-b", "a new cluster answered"),
    );
    push(
        REBUILD,
        "Terraform apply 성공",
        (false, "not rehearsed by this run: the rebuilt infrastructure is applied with kubectl (`deploy-infrastructure`)".into()),
    );
    push(
        REBUILD,
        "PostgreSQL StatefulSet Running",
        phase_ok(
            "restore",
            "the restore waited for the postgresql StatefulSet to be Ready before loading data",
        ),
    );
    // A pod whose claim is not Bound cannot start, so the database pod's readiness (the restore
    // waits for it) and the objects gate (every claim of the backup exists again) prove it.
    let objects = gate_ok(
        "kubernetes_objects",
        "every PersistentVolumeClaim of the backup exists again".into(),
    );
    let ready = phase_ok(
        "restore",
        "the postgresql pod became Ready, which it cannot with an unbound claim",
    );
    push(
        REBUILD,
        "PVC Bound 확인",
        match (objects, ready) {
            ((true, objects), (true, ready)) => (true, format!("{objects}; {ready}")),
            ((false, why), _) | (_, (false, why)) => (false, why),
        },
    );
    push(
        POST,
        "데이터 복구 성공",
        phase_ok("restore", "the database and Redis were restored"),
    );
    push(
        POST,
        "데이터 카운트 일치 확인",
        gate_ok("row_counts", counts_after.to_string()),
    );
    push(
        POST,
        "API Health Check 통과",
        gate_ok(
            "health",
            "every service answered its health endpoint".into(),
        ),
    );
    push(
        POST,
        "k6 부하 테스트 통과",
        gate_ok(
            "load",
            match &report.load {
                Some(l) => format!(
                    "replaced by the goose load gate with the runbook's k6 thresholds: {} requests, {} failed, p95 {:.1} ms",
                    l.requests, l.failures, l.p95_ms
                ),
                None => "no load figures".into(),
            },
        ),
    );
    push(
        POST,
        "24시간 모니터링 완료",
        (
            false,
            "cannot be rehearsed: 24 hours of monitoring happen after the night".into(),
        ),
    );
    push(
        POST,
        "문서 업데이트",
        (
            true,
            "this record was written from the run's measured facts".into(),
        ),
    );
    push(
        POST,
        "팀 공유",
        (
            false,
            "cannot be rehearsed: sharing with the team is a person's step".into(),
        ),
    );
    items
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `REBUILD_RECORD.md`: the runbook's 7.1 entry (date, Summary, Backup Details, Data
/// Verification, Issues, Next Steps) and the checklist, from `report` (concluded first).
pub fn render_rebuild_record(report: &Report) -> String {
    let report = report.concluded();
    let date = report.started_at.get(..10).unwrap_or(&report.started_at);
    let mut out = String::new();
    let _ = writeln!(out, "## {date} - Solid Cloud Cluster Rebuild (rehearsal)\n");
    let _ = writeln!(
        out,
        "Rehearsed by rebuild-rehearsal: scenario `{}` on provider `{}`, verdict **{}**.\n",
        report.scenario,
        report.provider,
        match report.verdict {
            super::Outcome::Pass => "PASS",
            super::Outcome::Fail => "FAIL",
            super::Outcome::CouldNotRun => "COULD NOT RUN",
        }
    );
    write_summary(&mut out, &report);
    write_backup_details(&mut out, &report);
    write_data_verification(&mut out, &report);
    write_resources(&mut out, &report);
    let _ = writeln!(out, "\n### Issues");
    if report.rollback_reasons.is_empty() {
        let _ = writeln!(out, "- None");
    } else {
        for reason in &report.rollback_reasons {
            let _ = writeln!(out, "- {reason}");
        }
    }
    let checklist = checklist(&report);
    write_next_steps(&mut out, &checklist);
    write_checklist(&mut out, &checklist);
    out
}

/// `### Summary`: whether the cluster was rebuilt and every table restored, RTO and RPO.
fn write_summary(out: &mut String, report: &Report) {
    let _ = writeln!(out, "### Summary");
    let rebuilt = report
        .phases
        .iter()
        .any(|p| p.name == "create-cluster-b" && p.status == PhaseStatus::Passed);
    let restored = report
        .tables
        .iter()
        .all(|t| t.rows_after == Some(t.rows_before) && t.digest_equal())
        && !report.tables.is_empty();
    let _ = writeln!(
        out,
        "- Solid Cloud 클러스터 재구축: {}",
        if rebuilt {
            "완료 (rehearsed)"
        } else {
            "not completed"
        }
    );
    let _ = writeln!(
        out,
        "- PostgreSQL 데이터 전체 복구: {}",
        if restored {
            "성공 (every table's count and content digest equal)"
        } else {
            "not proved"
        }
    );
    if let Some(rto) = report.rto_ms {
        let _ = writeln!(
            out,
            "- RTO {:.1} s (from the destroy to the end of the gates)",
            rto as f64 / 1000.0
        );
    }
    if let Some(ready) = report.pods_ready_ms {
        let _ = writeln!(
            out,
            "- Every pod Ready after a wait of {:.1} s (runbook limit: 30 min)",
            ready as f64 / 1000.0
        );
    }
    if let Some(rpo) = report.rpo_ms {
        let clock = report.rpo_clock.as_deref().unwrap_or("unknown clock");
        let _ = writeln!(out, "- RPO {rpo} ms ({clock})");
    }
}

/// `### Backup Details`: name, date, database, tables, size and the manifest's SHA-256.
fn write_backup_details(out: &mut String, report: &Report) {
    let _ = writeln!(out, "\n### Backup Details");
    match &report.backup {
        Some(b) => {
            let _ = writeln!(out, "- Backup Date: {} ({})", b.name, b.started_at);
            let _ = writeln!(
                out,
                "- Database: {}",
                b.database.as_deref().unwrap_or("not recorded")
            );
            let tables: Vec<&str> = report.tables.iter().map(|t| t.name.as_str()).collect();
            let _ = writeln!(out, "- Tables: {}", tables.join(", "));
            let _ = writeln!(
                out,
                "- Backup Size: {} in {} files ({} bytes)",
                human_bytes(b.bytes),
                b.files,
                b.bytes
            );
            let _ = writeln!(out, "- MANIFEST.json sha256: {}", b.manifest_sha256);
        }
        None => {
            let _ = writeln!(out, "- no backup was recorded");
        }
    }
}

/// `### Data Verification`: each table's rows before and after and whether its digest is
/// equal.
fn write_data_verification(out: &mut String, report: &Report) {
    let _ = writeln!(out, "\n### Data Verification");
    if report.tables.is_empty() {
        let _ = writeln!(out, "- no table was compared");
        return;
    }
    let _ = writeln!(out, "| table | rows before | rows after | digest equal |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    for t in &report.tables {
        let after = t
            .rows_after
            .map_or_else(|| "not observed".to_owned(), |n| n.to_string());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            t.name,
            t.rows_before,
            after,
            if t.digest_equal() { "yes" } else { "no" }
        );
    }
}

/// `### Resources`: the runbook's rollback criterion 4 (`kubectl top`, PVC usage) with its
/// evidence, when the run judged it.
fn write_resources(out: &mut String, report: &Report) {
    let Some(gate) = report
        .gates
        .iter()
        .find(|g| g.name == crate::verify::RESOURCES_GATE)
    else {
        return;
    };
    let _ = writeln!(out, "\n### Resources (롤백 결정 기준 4. 리소스 부족)");
    let _ = match (&gate.not_run, gate.passed) {
        (_, true) => writeln!(out, "- within every limit"),
        (Some(why), false) => writeln!(out, "- could not be assessed: {why}"),
        (None, false) => writeln!(out, "- over a limit: roll back"),
    };
    for finding in &gate.findings {
        let _ = writeln!(out, "- {finding}");
    }
}

/// `### Next Steps`: every checklist item the run did not prove, with why.
fn write_next_steps(out: &mut String, checklist: &[ChecklistItem]) {
    let _ = writeln!(out, "\n### Next Steps");
    let open: Vec<&ChecklistItem> = checklist.iter().filter(|i| !i.proved).collect();
    if open.is_empty() {
        let _ = writeln!(out, "- None: every checklist item was proved");
    }
    for item in open {
        let _ = writeln!(out, "- {} ({})", item.item, item.evidence);
    }
}

/// `## Cluster Rebuild Checklist`: the runbook's checklist by section, ticked where proved,
/// each with its evidence.
fn write_checklist(out: &mut String, checklist: &[ChecklistItem]) {
    let _ = writeln!(out, "\n## Cluster Rebuild Checklist");
    let mut section = "";
    for item in checklist {
        if item.section != section {
            section = item.section;
            let _ = writeln!(out, "\n### {section}");
        }
        let _ = writeln!(
            out,
            "- [{}] {} — {}",
            if item.proved { "x" } else { " " },
            item.item,
            item.evidence
        );
    }
}

impl BackupEvidence {
    /// The evidence of a backup directory's manifest: `files` are the manifest's entries
    /// (path, size, sha256).
    pub fn new(
        name: &str,
        started_at: &str,
        manifest_sha256: &str,
        files: &[(String, u64, String)],
    ) -> Self {
        BackupEvidence {
            name: name.to_owned(),
            started_at: started_at.to_owned(),
            bytes: files.iter().map(|f| f.1).sum(),
            files: files.len(),
            manifest_sha256: manifest_sha256.to_owned(),
            database: None,
            postgres_dump: None,
            terraform_state: None,
            offsite: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    fn passing() -> Report {
        let mut report = sample::report();
        for p in &mut report.phases {
            p.status = PhaseStatus::Passed;
            p.gate = None;
        }
        report.gates = [
            "row_counts",
            "digests",
            "kubernetes_objects",
            "health",
            "load",
        ]
        .into_iter()
        .map(|name| crate::report::GateReport {
            name: name.into(),
            passed: true,
            findings: vec![],
            not_run: None,
        })
        .collect();
        for t in &mut report.tables {
            t.rows_after = Some(t.rows_before);
            t.digest_after = Some(t.digest_before.clone());
        }
        report.rollback_reasons.clear();
        report.not_assessed.clear();
        report.backup = Some(BackupEvidence {
            database: Some("titanium (PostgreSQL 15.18)".into()),
            postgres_dump: Some("postgres/titanium.dump (1.0 MiB, sha256 abc)".into()),
            offsite: vec!["dir /x/offsite (sha256 read back)".into()],
            ..BackupEvidence::new(
                "titanium-backup",
                "2026-11-26T05:00:00Z",
                "f00d",
                &[("a".into(), 2048, "s".into())],
            )
        });
        report.conclude();
        report
    }

    #[test]
    fn an_item_is_ticked_only_with_its_evidence() {
        let report = passing();
        let items = checklist(&report);
        let by_name = |n: &str| items.iter().find(|i| i.item == n).unwrap();
        assert!(by_name("데이터 카운트 일치 확인").proved);
        assert!(by_name("오프사이트 백업 완료").proved);
        assert!(!by_name("24시간 모니터링 완료").proved, "never rehearsable");
        assert!(
            !by_name("Terraform 상태 백업").proved,
            "the backup has no terraform part"
        );

        // The same report with the row-count gate red: the item is unticked, with the finding.
        let mut red = report.clone();
        let gate = red.gates.iter_mut().find(|g| g.name == "row_counts");
        if let Some(gate) = gate {
            gate.passed = false;
            gate.findings = vec![
                crate::verify::Finding::new(
                    "public.users",
                    crate::verify::FindingKind::Mismatch,
                    "row count differs",
                )
                .values(200, 199),
            ];
        } else {
            red.gates.push(crate::report::GateReport {
                name: "row_counts".into(),
                passed: false,
                findings: vec![
                    crate::verify::Finding::new(
                        "public.users",
                        crate::verify::FindingKind::Mismatch,
                        "row count differs",
                    )
                    .values(200, 199),
                ],
                not_run: None,
            });
        }
        red.conclude();
        let items = checklist(&red);
        let item = items
            .iter()
            .find(|i| i.item == "데이터 카운트 일치 확인")
            .unwrap();
        assert!(!item.proved);
        assert!(item.evidence.contains("got 199"), "{}", item.evidence);
        let text = render_rebuild_record(&red);
        assert!(text.contains("- [ ] 데이터 카운트 일치 확인"), "{text}");
        assert!(
            text.contains("### Issues\n- gate row_counts failed"),
            "{text}"
        );
    }

    #[test]
    fn the_record_has_the_runbook_sections() {
        let text = render_rebuild_record(&passing());
        for heading in [
            "## 2026-11-26 - Solid Cloud Cluster Rebuild",
            "### Summary",
            "### Backup Details",
            "### Data Verification",
            "### Issues",
            "### Next Steps",
            "## Cluster Rebuild Checklist",
            "### Pre-Rebuild",
            "### Rebuild",
            "### Post-Rebuild",
        ] {
            assert!(text.contains(heading), "{heading} missing:\n{text}");
        }
        assert!(
            text.contains("- Backup Size: 2.0 KiB in 1 files (2048 bytes)"),
            "{text}"
        );
        assert!(
            text.contains("- [x] PostgreSQL pg_dump 백업 완료"),
            "{text}"
        );
        assert!(
            !text.contains("### Resources"),
            "not judged, not shown:\n{text}"
        );
    }

    #[test]
    fn the_resources_criterion_shows_with_its_evidence() {
        use crate::verify::{Finding, FindingKind};
        let mut report = passing();
        report.gates.push(crate::report::GateReport {
            name: crate::verify::RESOURCES_GATE.into(),
            passed: false,
            findings: vec![Finding::new(
                "PersistentVolumeClaim titanium-prod/small",
                FindingKind::OverLimit,
                "92.8 % used",
            )],
            not_run: None,
        });
        let text = render_rebuild_record(&report);
        assert!(
            text.contains("### Resources (롤백 결정 기준 4. 리소스 부족)\n- over a limit: roll back\n- PersistentVolumeClaim titanium-prod/small: 92.8 % used"),
            "{text}"
        );
        report.gates.last_mut().unwrap().not_run = Some("the metrics API is missing".into());
        let text = render_rebuild_record(&report);
        assert!(
            text.contains("- could not be assessed: the metrics API is missing"),
            "{text}"
        );
    }
}
