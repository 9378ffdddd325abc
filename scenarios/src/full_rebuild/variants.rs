//! The scenarios beside the spine: point-in-time recovery, schema drift, rollback (a defect
//! injected, rejected, and the restore done again).

use super::*;

/// PITR: a recovery to the WAL archive's end, whose gate proves the markers and whose last
/// recovered marker gives the RPO.
pub(super) async fn recover_to_latest(
    run: &mut Run<'_>,
    state: &mut State,
    config: &Config,
    tools: &PgTools,
    markers: &crate::pitr::Markers,
) -> anyhow::Result<()> {
    let (gate, rpo) = run
        .judged_phase("recover-to-latest", async {
            let (gate, rpo) = crate::pitr::latest(tools, config, markers).await?;
            let failed = (!gate.passed).then(|| (gate.name.clone(), gate.findings_text("; ")));
            anyhow::Ok(((gate, rpo), failed))
        })
        .await?;
    run.note(format!("RPO {rpo} ms"));
    state.gates.push(gate);
    // The PITR figure: from the last marker committed before the disaster to the last
    // one recovered, both on cluster A's server clock.
    state.rpo_ms = Some(rpo);
    Ok(())
}

/// schema_drift: the gates must report the drift; the gates that caught it are recorded as
/// detections.
pub(super) async fn record_drift(
    run: &mut Run<'_>,
    state: &mut State,
    gates: &Gates,
) -> anyhow::Result<()> {
    run.phase("schema-drift-reported", async {
        expect_drift(&gates.verdicts)
    })
    .await?;
    for verdict in &gates.verdicts {
        let findings = verdict.findings.clone();
        state.gates.push(match verdict.gate {
            Gate::Schema => GateReport {
                name: "schema-drift-detected".into(),
                passed: true,
                findings,
                not_run: None,
            },
            Gate::KubernetesObjects if !verdict.passed => GateReport {
                name: "init-script-change-detected".into(),
                passed: true,
                findings,
                not_run: None,
            },
            _ => gate_report(verdict),
        });
    }
    Ok(())
}

/// rollback: a defect injected after the restore must be rejected by a data gate; then the
/// runbook's rollback (restore again) and the gates once more, whose verdicts are returned.
pub(super) async fn rehearse_rollback(
    run: &mut Run<'_>,
    state: &mut State,
    b: &impl Cluster,
    config: &Config,
    tools: &PgTools,
    backup: &BackupReport,
    marker: &MarkerRow,
) -> anyhow::Result<Gates> {
    let defect = run.phase("inject-defect", inject_defect(b)).await?;
    run.note(&defect);
    let rejected = run
        .phase(
            "gates-reject-defect",
            run_gates(b, backup, Some(marker), config, false),
        )
        .await?;
    state.gates.extend(
        rejected
            .verdicts
            .iter()
            .filter(|v| !v.passed)
            .map(|v| GateReport {
                name: format!("{} (defect: {defect}) rejected", v.gate),
                passed: true,
                findings: v.findings.clone(),
                not_run: None,
            }),
    );
    // The defect is rejected when a data gate failed on it (a gate that could not run
    // rejects nothing).
    let rejected_by_data = rejected.verdicts.iter().any(|v| {
        !v.passed && v.not_checked().is_none() && matches!(v.gate, Gate::RowCounts | Gate::Digests)
    });
    if !rejected_by_data {
        state.gates.push(GateReport {
            name: "defect-rejected".into(),
            passed: false,
            findings: vec![Finding::new(
                "defect",
                FindingKind::Missing,
                format!("the gates passed a restore with {defect}"),
            )],
            not_run: None,
        });
        anyhow::bail!("the gates did not reject the injected defect ({defect})");
    }
    run.phase("rollback-restore", rollback_restore(b, backup, tools))
        .await?;
    run.phase(
        "gates-after-rollback",
        run_gates(b, backup, Some(marker), config, true),
    )
    .await
    .map_err(Into::into)
}

/// Cluster B's init script, as a changed manifest would carry it: one column widened.
pub(super) fn drift_init_script(objects: &mut [serde_json::Value]) -> anyhow::Result<()> {
    let mut changed = false;
    for object in objects.iter_mut().filter(|o| o["kind"] == "ConfigMap") {
        if let Some(data) = object["data"].as_object_mut() {
            for value in data.values_mut() {
                if let Some(text) = value.as_str().filter(|t| t.contains(DRIFT_FROM)) {
                    *value = serde_json::Value::String(text.replace(DRIFT_FROM, DRIFT_TO));
                    changed = true;
                }
            }
        }
    }
    ensure!(
        changed,
        "no ConfigMap in the backup holds `{DRIFT_FROM}` to change"
    );
    Ok(())
}

/// The schema gate must fail, naming posts.title and both types; every other gate must pass.
pub(super) fn expect_drift(verdicts: &[Verdict]) -> anyhow::Result<()> {
    let schema = verdicts
        .iter()
        .find(|v| v.gate == Gate::Schema)
        .context("no schema verdict")?;
    ensure!(
        !schema.passed,
        "the schema gate did not report the changed column"
    );
    let text: String = schema
        .findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    ensure!(
        text.contains("posts")
            && text.contains("title")
            && text.contains("200")
            && text.contains("300"),
        "the schema gate's findings do not name posts.title 200 -> 300:\n{text}"
    );
    // The Kubernetes gate rightly reports the changed init-script ConfigMap too; anything else
    // failing is a defect of the restore.
    let expected_elsewhere = |v: &&Verdict| {
        v.gate == Gate::KubernetesObjects
            && v.findings
                .iter()
                .all(|f| f.to_string().contains("postgresql-init-script"))
    };
    let others: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.passed && v.gate != Gate::Schema)
        .filter(|v| !expected_elsewhere(v))
        .map(ToString::to_string)
        .collect();
    ensure!(
        others.is_empty(),
        "other gates failed too: {}",
        others.join("; ")
    );
    Ok(())
}

/// One row lost after the restore: the defect the count and digest gates exist for.
pub(super) async fn inject_defect(cluster: &impl Cluster) -> anyhow::Result<String> {
    let db = titanium::database(cluster).await?;
    let client = db.params.connect().await?;
    let id: i32 = client
        .query_one(
            "DELETE FROM posts WHERE id = (SELECT max(id) FROM posts) RETURNING id",
            &[],
        )
        .await?
        .get(0);
    Ok(format!("post {id} deleted"))
}

/// The runbook's rollback option 1: drop the database, create it again, restore from the backup.
pub(super) async fn rollback_restore(
    cluster: &impl Cluster,
    backup: &BackupReport,
    tools: &PgTools,
) -> anyhow::Result<()> {
    let db = titanium::database(cluster).await?;
    let admin = db.params.with_dbname("postgres").connect().await?;
    // Two statements: DROP DATABASE cannot run inside the implicit transaction of a batch.
    admin
        .batch_execute("DROP DATABASE titanium WITH (FORCE)")
        .await?;
    admin.batch_execute("CREATE DATABASE titanium").await?;
    let input =
        DbRestoreInput::custom_of(&backup.dir, &backup.manifest).context("no PostgreSQL part")?;
    restore_database(tools, &db.params, &input, &DbRestoreOptions::default()).await?;
    Ok(())
}
