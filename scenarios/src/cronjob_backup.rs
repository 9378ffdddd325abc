//! `cronjob_backup`: the runbook's section 7.2 CronJob `postgresql-backup`, run on demand
//! (`kubectl create job --from=cronjob/postgresql-backup`) in the cluster; its dump, fetched from
//! the backup PVC, restores into a scratch database with counts and digests equal to the
//! cluster's database.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use harness::backup::PodRef;
use harness::cluster::{AnyCluster, Cluster};
use harness::facts;
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider};
use harness::report::{GateReport, Report, TableReport};
use harness::verify;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};

use crate::full_rebuild::Config;
use crate::run::{Observer, Run};
use crate::titanium::{self, NAMESPACE};

const JOB: &str = "rehearsal-cronjob-backup";
const READER: &str = "rehearsal-backup-reader";

/// The phases, in order.
pub const PHASES: [&str; 7] = [
    "create-cluster",
    "deploy",
    "seed",
    "run-cronjob",
    "fetch-dump",
    "restore-scratch",
    "gates",
];

/// The scenario's name in reports and on the command line.
pub const NAME: &str = "cronjob_backup";

/// Runs the scenario.
pub async fn run(config: &Config, observer: &dyn Observer) -> Report {
    let started_at = chrono::Utc::now().to_rfc3339();
    let mut run = Run::new(observer);
    let mut cluster = None;
    let mut tables = Vec::new();
    let mut gates = Vec::new();
    let outcome = steps(config, &mut run, &mut cluster, &mut tables, &mut gates).await;
    if let Err(err) = &outcome {
        tracing::warn!(error = %format!("{err:#}"), "cronjob_backup stopped");
    }
    crate::full_rebuild::teardown_all(cluster).await;
    // An error between phases becomes a failed phase of its own: it reaches the report.
    let phases = run.finish(outcome, &PHASES);
    let provider = config.provider.kind().to_string();
    let mut report = Report {
        tables,
        gates,
        ..Report::of_phases(NAME, &provider, &started_at, phases)
    };
    report.conclude();
    report
}

async fn steps(
    config: &Config,
    run: &mut Run<'_>,
    cluster: &mut Option<AnyCluster>,
    tables: &mut Vec<TableReport>,
    gates: &mut Vec<GateReport>,
) -> anyhow::Result<()> {
    let c = cluster.insert(
        run.phase("create-cluster", config.provider.create())
            .await?,
    );
    run.phase("deploy", crate::full_rebuild::deploy(c, config))
        .await?;
    run.phase("seed", crate::full_rebuild::seed(c, config))
        .await?;
    let client = c.client().await?;
    run.phase("run-cronjob", run_cronjob(c, &client, config.ready_timeout))
        .await?;
    let dump_dir = harness::keep::ScratchDir::new("harness-cronjob-dump-", "the CronJob's dump")?;
    let dump = dump_dir.path().join("titanium.sql");
    let bytes = run
        .phase(
            "fetch-dump",
            fetch_dump(&client, &dump, config.ready_timeout),
        )
        .await?;
    run.note(format!("{bytes} bytes"));
    let scratch = run
        .phase("restore-scratch", async {
            let scratch = LocalPostgres::start(LocalOptions {
                database: titanium::DATABASE.into(),
                ..LocalOptions::default()
            })
            .await?;
            scratch.tools().psql_file(&scratch.params(), &dump).await?;
            anyhow::Ok(scratch)
        })
        .await?;
    let verdicts = run
        .phase("gates", async {
            let db = titanium::database(c).await?;
            let expected = facts::table_facts(&db.params.connect().await?).await?;
            let restored = facts::table_facts(&scratch.params().connect().await?).await?;
            *tables = crate::full_rebuild::table_reports(&expected, &restored);
            anyhow::Ok(vec![
                verify::row_counts(&expected, &restored),
                verify::digests(&expected, &restored),
            ])
        })
        .await?;
    *gates = verdicts
        .iter()
        .map(crate::full_rebuild::gate_report)
        .collect();
    scratch.stop().await?;
    Ok(())
}

/// `kubectl create job --from=cronjob/postgresql-backup`, then waits until the Job succeeded.
async fn run_cronjob(
    cluster: &impl Cluster,
    client: &kube::Client,
    timeout: Duration,
) -> anyhow::Result<()> {
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let args = [
        "--kubeconfig",
        &kubeconfig,
        "--context",
        cluster.context(),
        "-n",
        NAMESPACE,
        "create",
        "job",
        JOB,
        "--from=cronjob/postgresql-backup",
    ];
    let out = duct::cmd("kubectl", args)
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .context("run kubectl")?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
    if !out.status.success() {
        // kubectl since 1.21 reads the CronJob as batch/v1 only; Kubernetes 1.20 (the local
        // provider) serves batch/v1beta1. There the Job is made as kubectl makes it.
        ensure!(
            !serves_batch_v1_cronjobs(client).await?,
            "kubectl create job failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tracing::info!("the server has no batch/v1 CronJob; creating the Job from batch/v1beta1");
        jobs.create(&PostParams::default(), &job_from_v1beta1(client).await?)
            .await
            .context("create the Job from the batch/v1beta1 CronJob")?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let status = jobs.get(JOB).await?.status.unwrap_or_default();
        if status.succeeded.unwrap_or(0) >= 1 {
            return Ok(());
        }
        if status.failed.unwrap_or(0) >= 1 && status.active.unwrap_or(0) == 0 {
            bail!("job {JOB} failed: {:?}", status.conditions);
        }
        if Instant::now() >= deadline {
            bail!(
                "job {JOB} did not complete in {} s: {status:?}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the server serves CronJobs as batch/v1 (Kubernetes 1.21 and later).
async fn serves_batch_v1_cronjobs(client: &kube::Client) -> anyhow::Result<bool> {
    let resources = client
        .list_api_group_resources("batch/v1")
        .await
        .context("discover batch/v1")?;
    Ok(resources.resources.iter().any(|r| r.name == "cronjobs"))
}

/// What `kubectl create job --from=cronjob/postgresql-backup` makes, from a batch/v1beta1
/// CronJob: its job template as a Job, annotated as a manual instantiation, owned by it.
async fn job_from_v1beta1(client: &kube::Client) -> anyhow::Result<Job> {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("batch", "v1beta1", "CronJob"),
        "cronjobs",
    );
    let cronjobs: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
    let cronjob = cronjobs
        .get("postgresql-backup")
        .await
        .context("read CronJob postgresql-backup (batch/v1beta1)")?;
    let template = &cronjob.data["spec"]["jobTemplate"];
    let job = serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": JOB,
            "namespace": NAMESPACE,
            "labels": template["metadata"]["labels"],
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "ownerReferences": [{
                "apiVersion": "batch/v1beta1",
                "kind": "CronJob",
                "name": "postgresql-backup",
                "uid": cronjob.metadata.uid,
                "controller": true,
            }],
        },
        "spec": template["spec"],
    });
    serde_json::from_value(job).context("the CronJob's job template is not a Job spec")
}

/// Mounts the backup PVC in a reader pod and streams the newest dump out of it through exec.
async fn fetch_dump(
    client: &kube::Client,
    to: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let reader: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": READER, "labels": {"app": READER}},
        "spec": {
            "containers": [{"name": "reader", "image": "busybox:1.36", "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "backup", "mountPath": "/backup", "readOnly": true}]}],
            "volumes": [{"name": "backup", "persistentVolumeClaim": {"claimName": "postgresql-backup-pvc"}}],
        }
    }))?;
    pods.create(&PostParams::default(), &reader)
        .await
        .context("create the reader pod")?;
    let deadline = Instant::now() + timeout;
    while titanium::ready_pod(client, READER).await.is_err() {
        ensure!(
            Instant::now() < deadline,
            "the reader pod did not become Ready in {} s",
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pod = PodRef {
        client: client.clone(),
        namespace: NAMESPACE.into(),
        pod: READER.into(),
        container: None,
    };
    let listing = pod
        .exec_output(
            vec!["sh".into(), "-c".into(), "ls -1 /backup".into()],
            "list the backups",
        )
        .await?;
    let newest = listing
        .lines()
        .filter(|l| l.starts_with("titanium-") && l.ends_with(".sql"))
        .max()
        .context("no titanium-*.sql in the backup PVC")?
        .to_owned();
    let bytes = pod
        .exec_to_file(
            vec!["cat".into(), format!("/backup/{newest}")],
            "read the dump",
            to,
        )
        .await?;
    pods.delete(READER, &DeleteParams::default())
        .await
        .context("delete the reader pod")?;
    ensure!(bytes > 0, "the CronJob's dump {newest} is empty");
    Ok(bytes)
}
