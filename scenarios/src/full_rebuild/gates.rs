//! The gates after the restore: every data gate against the backup's facts, the health and
//! load gates, the pods, and the rollback decision over them; their verdicts into the report.

use super::*;

/// Every gate on cluster B, and with PITR the marker stream's gate (returned beside them),
/// which runs first: it drops its schema, so that the other gates compare the application's
/// data with the backup.
pub(super) async fn gates_on_b(
    scenario: Scenario,
    b: &impl Cluster,
    config: &Config,
    backup: &BackupReport,
    marker: &MarkerRow,
    markers: Option<&crate::pitr::Markers>,
    recovered_to: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<(Gates, Option<GateReport>)> {
    let markers_gate = match (markers, recovered_to) {
        (Some(markers), Some(t)) => {
            let db = titanium::database(b).await?;
            Some(crate::pitr::markers_gate(&db.params, markers, t).await?)
        }
        _ => None,
    };
    let absent = (scenario != Scenario::Pitr).then_some(marker);
    let gates = run_gates(b, backup, absent, config, scenario != Scenario::Rollback).await?;
    Ok((gates, markers_gate))
}

/// The health and load gates' verdicts and the load figures, into the report.
pub(super) fn record_service(state: &mut State, service: &Service) {
    state.gates.push(GateReport {
        name: "health".into(),
        passed: service.health.passed,
        findings: service.health.findings.clone(),
        not_run: None,
    });
    state.gates.push(GateReport {
        name: "load".into(),
        passed: service.load.passed,
        findings: service.load.findings.clone(),
        not_run: None,
    });
    state.load = Some(load_report(&service.load));
}

/// The rollback decision over the gates, the health and load gates, the pods, the durations
/// and the resources (criterion 4), with the resources' evidence as a gate for the report.
pub(super) async fn decide(
    b: &impl Cluster,
    config: &Config,
    judged: Judged<'_>,
) -> anyhow::Result<(Decision, GateReport)> {
    let pods = observe_pods(b).await?;
    let resources = observe_resources(b, &config.thresholds).await?;
    let endpoints = &judged.service.health.endpoints;
    let attempts: u32 = endpoints.iter().map(|e| e.probes).sum();
    let failures: u32 = endpoints.iter().map(|e| e.failures).sum();
    let slowest = endpoints.iter().map(|e| e.slowest).max();
    let inputs = RollbackInputs {
        verdicts: judged.gates.verdicts.clone(),
        health: Some(HealthSample { attempts, failures }),
        max_response_time: slowest,
        pods: Some(pods),
        db_restore: judged.restored.db_restore,
        total: Some(judged.destroy_started.elapsed()),
        pods_ready_wait: judged.restored.pods_ready,
        load: Some(judged.service.load.sample()),
        resources: Some(resources),
    };
    let evidence = verify::judge_resources(inputs.resources.as_ref(), &config.thresholds);
    let gate = GateReport {
        name: verify::RESOURCES_GATE.into(),
        passed: evidence.passed(),
        findings: evidence.evidence,
        not_run: (!evidence.not_run.is_empty()).then(|| evidence.not_run.join("; ")),
    };
    Ok((verify::decide(&inputs, &config.thresholds), gate))
}

/// Node usage through the metrics API over the window "sustained" needs, and every claim's
/// usage in the pod that mounts it. What could not be observed is kept with why: the
/// criterion is then not assessed, never met.
pub(super) async fn observe_resources(
    cluster: &impl Cluster,
    thresholds: &verify::RollbackThresholds,
) -> anyhow::Result<facts::ResourceObservation> {
    use harness::facts::resources::{SampleWindow, observe_nodes, observe_pvcs};
    let client = cluster.client().await?;
    let window = SampleWindow {
        samples: thresholds.sustained_samples,
        span: thresholds.sustained_span,
        // metrics-server's default resolution is 15 s: time for a few of its samples.
        deadline: thresholds.sustained_span + Duration::from_secs(60),
    };
    let why = |e: facts::resources::ResourceError| format!("{:#}", anyhow::Error::from(e));
    Ok(facts::ResourceObservation {
        nodes: observe_nodes(&client, window).await.map_err(why),
        pvcs: observe_pvcs(&client, NAMESPACE).await.map_err(why),
    })
}

/// Which gate of the health-and-load phase failed, and why, when one did.
pub(super) fn service_failure(service: &Service) -> Option<(String, String)> {
    let through = &service.ingress;
    if !service.load.passed {
        return Some((
            "load".into(),
            format!(
                "{} (through {through})",
                findings_text(&service.load.findings, "; ")
            ),
        ));
    }
    if !service.health.passed {
        return Some((
            "health".into(),
            format!(
                "{} (through {through})",
                findings_text(&service.health.findings, "; ")
            ),
        ));
    }
    None
}

/// The load gate's figures for the report, with each request kind's latencies.
pub(super) fn load_report(load: &harness::load::LoadVerdict) -> LoadReport {
    let overall = &load.figures.overall;
    LoadReport {
        requests: overall.requests,
        failures: overall.failures,
        rps: overall.rps,
        p95_ms: overall.p95_ms,
        goose_report: load
            .report
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
        endpoints: load
            .figures
            .per_request
            .iter()
            .map(|r| verify::EndpointLatency {
                name: r.name.clone(),
                p50_ms: r.p50_ms,
                p95_ms: r.p95_ms,
            })
            .collect(),
    }
}

/// Each table of `before` with what `after` holds of it.
pub(crate) fn table_reports(
    before: &[facts::TableFacts],
    after: &[facts::TableFacts],
) -> Vec<TableReport> {
    before
        .iter()
        .map(|b| {
            let a = after
                .iter()
                .find(|t| t.name == b.name && t.schema == b.schema);
            TableReport {
                name: b.name.clone(),
                rows_before: b.rows,
                rows_after: a.map(|t| t.rows),
                digest_before: b.digest.clone(),
                digest_after: a.map(|t| t.digest.clone()),
            }
        })
        .collect()
}

pub(crate) fn gate_report(verdict: &Verdict) -> GateReport {
    GateReport {
        name: verdict.gate.to_string(),
        passed: verdict.passed,
        findings: verdict.findings.clone(),
        not_run: verdict.not_checked(),
    }
}

/// Runs every gate. With `resume_writer`, the load generator is brought back to its recorded
/// replica count after the data gates (and before the Kubernetes gate, which expects it).
pub(super) async fn run_gates(
    cluster: &impl Cluster,
    backup: &BackupReport,
    marker: Option<&MarkerRow>,
    config: &Config,
    resume_writer: bool,
) -> anyhow::Result<Gates> {
    run_gates_expecting(cluster, backup, marker, config, resume_writer, &|_, _| {}).await
}

/// The Kubernetes objects a scenario changes on purpose: `(backed up, restored)` adjusted
/// before the objects gate compares them.
pub(super) type ExpectedChanges =
    dyn Fn(&mut Vec<serde_json::Value>, &mut Vec<serde_json::Value>) + Sync;

/// [`run_gates`] with the objects gate comparing after `expected` adjusted both sides.
pub(super) async fn run_gates_expecting(
    cluster: &impl Cluster,
    backup: &BackupReport,
    marker: Option<&MarkerRow>,
    config: &Config,
    resume_writer: bool,
    expected: &ExpectedChanges,
) -> anyhow::Result<Gates> {
    let manifest = &backup.manifest;
    let pg = manifest.postgres.as_ref().context("no PostgreSQL part")?;
    let db = titanium::database(cluster).await?;
    let client = db.params.connect().await?;
    let tables = facts::table_facts_as(&client, pg.digest_version).await?;
    let sequences = facts::sequence_facts(&client).await?;
    let schema_after = facts::render_schema(&client).await?;
    let foreign_keys = facts::foreign_key_checks(&client).await?;
    // pg_amcheck that cannot run fails the integrity gate with why; it is never left out.
    let amcheck: verify::Amcheck = match PgTools::discover() {
        Ok(tools) => facts::run_amcheck(&tools, &db.params).await.into(),
        Err(err) => Err::<verify::AmcheckReport, _>(err).into(),
    };
    let mut verdicts = vec![
        verify::row_counts(&pg.tables, &tables),
        verify::digests(&pg.tables, &tables),
        verify::schema(&pg.schema, &schema_after),
        verify::sequences(&pg.sequences, &sequences),
        verify::referential_integrity(&foreign_keys, &amcheck),
        verify::statistics(&pg.tables, &facts::table_statistics(&client).await?),
    ];
    if let Some(marker) = marker {
        verdicts.push(verify::marker_absent(
            &marker.subject(),
            marker.count(&client).await?,
        ));
    }
    if let Some(redis) = &manifest.redis {
        let forward = titanium::forward_to(cluster, "redis", 6379).await?;
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{}/", forward.port()))?
            .get_multiplexed_async_connection()
            .await?;
        let restored = backup::dataset_facts(&mut conn).await?;
        let expected = verify::RedisFacts {
            key_count: redis.keys,
            digest: redis.digest.clone(),
            keys: BTreeMap::new(),
        };
        verdicts.push(verify::redis(&expected, &restored));
    }
    // The data is compared; the load generator may write again, at its recorded count.
    let recorded = manifest
        .quiesce
        .as_ref()
        .map(|q| q.replicas.clone())
        .unwrap_or_default();
    if resume_writer && let Some(&replicas) = recorded.get(LOAD_GENERATOR) {
        titanium::scale(
            &cluster.client().await?,
            LOAD_GENERATOR,
            replicas,
            config.ready_timeout,
        )
        .await?;
    }
    if let Some(kube) = &manifest.kubernetes {
        let list: serde_json::Value =
            serde_json::from_slice(&std::fs::read(backup.dir.join(&kube.clean_json))?)?;
        let mut backed_up = list["items"]
            .as_array()
            .cloned()
            .with_context(|| format!("{} has no `items` list", kube.clean_json))?;
        // The backup was taken quiesced: the state to restore is the one before the quiesce.
        for object in &mut backed_up {
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if object["kind"] == "Deployment"
                && let Some(&replicas) = recorded.get(&name)
            {
                let held = !resume_writer && name == LOAD_GENERATOR;
                object["spec"]["replicas"] = serde_json::json!(if held { 0 } else { replicas });
            }
        }
        let source = KubeSource {
            client: cluster.client().await?,
            namespace: NAMESPACE.into(),
        };
        let (mut restored, _) =
            backup::clean::clean_objects(&backup::list_namespace(&source).await?.objects);
        expected(&mut backed_up, &mut restored);
        verdicts.push(verify::kubernetes_objects(&backed_up, &restored));
    }
    Ok(Gates { verdicts, tables })
}

pub(super) async fn health_and_load(
    cluster: &impl Cluster,
    config: &Config,
) -> anyhow::Result<Service> {
    // Through the ingress, as production traffic: a VirtualService lost in the restore
    // leaves the gateway without routes, and the health gate sees its 404s.
    let ingress = titanium::ingress(cluster).await?;
    let base = ingress.base_url.clone();
    let mut health = HealthGate::new(&base);
    health.probes = config.health_probes;
    health.interval = Duration::from_millis(100);
    let health = health.run().await?;
    let mut load = LoadGate::quick(&base);
    load.users = config.load_users;
    load.hatch_rate = config.load_users;
    load.run_time = config.load_time;
    load.report_dir = Some(config.report_dir.clone());
    let load = load.run().await?;
    Ok(Service {
        health,
        load,
        ingress: ingress.path.clone(),
    })
}

pub(super) async fn observe_pods(cluster: &impl Cluster) -> anyhow::Result<Vec<PodObservation>> {
    Ok(harness::restore::observe_pods(&cluster.client().await?, NAMESPACE).await?)
}
