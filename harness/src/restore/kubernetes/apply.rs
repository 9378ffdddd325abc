//! Running a restore plan against a cluster: server-side apply, phase by phase.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::plan::{KubeRestorePlan, RESTORE_ANNOTATION, StepKind, kind_of, label, name_of};
use super::wait::{data_timeout, wait_pods_ready, wait_pvc_bound, wait_workload_ready};
use crate::restore::RestoreError;

/// The data steps of a restore, supplied by the caller (who knows how to reach the database
/// and Redis in the rebuilt cluster).
pub trait DataRestorer: Send {
    /// Restores the database; called once the PostgreSQL StatefulSet is Ready.
    fn restore_database(
        &mut self,
    ) -> impl Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send;

    /// Restores Redis data; called once the Redis Deployment is Ready.
    fn restore_redis(
        &mut self,
    ) -> impl Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send;
}

/// Deadlines of the waits. Defaults follow the runbook (`kubectl wait --timeout=300s`; pods
/// Ready within 30 min is its rollback limit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waits {
    /// PVCs Bound.
    pub pvc_bound: Duration,
    /// A StatefulSet or Deployment Ready.
    pub workload_ready: Duration,
    /// Every pod Ready.
    pub pods_ready: Duration,
    /// A CRD's kinds served (discovery).
    pub crd_established: Duration,
    /// A data step (database load, Redis replay): the runbook's 2 h restore limit.
    #[serde(default = "default_data_restore")]
    pub data_restore: Duration,
    /// Poll interval.
    pub poll: Duration,
}

fn default_data_restore() -> Duration {
    crate::restore::DEFAULT_DEADLINE
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            pvc_bound: Duration::from_secs(300),
            workload_ready: Duration::from_secs(300),
            pods_ready: Duration::from_secs(30 * 60),
            crd_established: Duration::from_secs(60),
            data_restore: default_data_restore(),
            poll: Duration::from_millis(200),
        }
    }
}

/// How to run a Kubernetes restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeRestoreOptions {
    /// Apply over a namespace that holds workloads not restored from this backup.
    pub force: bool,
    /// Only report what exists and would be replaced; change nothing.
    pub dry_run: bool,
    /// Server-side apply field manager.
    pub field_manager: String,
    /// Deadlines.
    pub waits: Waits,
}

impl Default for KubeRestoreOptions {
    fn default() -> Self {
        Self {
            force: false,
            dry_run: false,
            field_manager: "rebuild-rehearsal".to_owned(),
            waits: Waits::default(),
        }
    }
}

/// What a Kubernetes restore did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KubeRestoreReport {
    /// Objects that existed before and were (or, in a dry run, would be) replaced.
    pub replaced: Vec<String>,
    /// Objects created.
    pub created: Vec<String>,
    /// Seconds per step, `phase:kind`.
    pub step_seconds: Vec<(String, f64)>,
    /// How long the database step took.
    pub db_restore_seconds: Option<f64>,
    /// How long the final wait for every pod took.
    pub pods_ready_seconds: Option<f64>,
    /// Total seconds.
    pub seconds: f64,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Claims left Pending because their storage class binds on first consumer and no pod
    /// uses them (as on a real cluster).
    pub unconsumed_claims: Vec<String>,
}

/// The Deployments and StatefulSets of the namespace.
async fn workloads_in(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<(&'static str, String)>, RestoreError> {
    let mut out = Vec::new();
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    for s in sts
        .list(&ListParams::default())
        .await
        .map_err(RestoreError::kube(format!(
            "list statefulsets in {namespace}"
        )))?
    {
        out.push(("StatefulSet", s.metadata.name.unwrap_or_default()));
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for d in deployments
        .list(&ListParams::default())
        .await
        .map_err(RestoreError::kube(format!(
            "list deployments in {namespace}"
        )))?
    {
        out.push(("Deployment", d.metadata.name.unwrap_or_default()));
    }
    Ok(out)
}

/// The claims that pods of the namespace mount.
async fn claims_in_use(
    client: &kube::Client,
    namespace: &str,
) -> Result<std::collections::BTreeSet<String>, RestoreError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = api
        .list(&ListParams::default())
        .await
        .map_err(RestoreError::kube(format!("list pods in {namespace}")))?;
    Ok(pods
        .items
        .iter()
        .flat_map(|p| p.spec.iter().flat_map(|s| s.volumes.iter().flatten()))
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
        })
        .collect())
}

/// Resolves the API resource of a kind, caching by group/version/kind.
struct Resolver {
    client: kube::Client,
    cache: HashMap<(String, String), (ApiResource, ApiCapabilities)>,
}

impl Resolver {
    async fn resolve(
        &mut self,
        object: &Value,
        deadline: Duration,
        poll: Duration,
    ) -> Result<(ApiResource, ApiCapabilities), RestoreError> {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let kind = kind_of(object).to_owned();
        if let Some(found) = self.cache.get(&(api_version.clone(), kind.clone())) {
            return Ok(found.clone());
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let gvk = GroupVersionKind::gvk(group, version, &kind);
        let started = Instant::now();
        loop {
            // Custom resources are served only once their CRD is established: retry until then.
            match kube::discovery::pinned_kind(&self.client, &gvk).await {
                Ok(found) => {
                    self.cache.insert((api_version, kind), found.clone());
                    return Ok(found);
                }
                Err(err) if started.elapsed() >= deadline => {
                    return Err(RestoreError::NotReady {
                        what: format!("API kind {kind} ({api_version})"),
                        seconds: deadline.as_secs(),
                        detail: format!(
                            "the server does not serve it ({err}); is its CustomResourceDefinition in the backup?"
                        ),
                    });
                }
                Err(_) => tokio::time::sleep(poll).await,
            }
        }
    }
}

fn dynamic_api(
    client: &kube::Client,
    resource: &ApiResource,
    caps: &ApiCapabilities,
    object: &Value,
) -> Api<DynamicObject> {
    match (
        caps.scope.clone(),
        object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str),
    ) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, resource),
        _ => Api::all_with(client.clone(), resource),
    }
}

/// Refuses a namespace with workloads unless it is being restored from the same backup or
/// `force` is set.
async fn check_namespace(
    client: &kube::Client,
    plan: &KubeRestorePlan,
    force: bool,
) -> Result<(), RestoreError> {
    let ns = &plan.namespace;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let Some(existing) = namespaces
        .get_opt(ns)
        .await
        .map_err(RestoreError::kube(format!("get namespace {ns}")))?
    else {
        return Ok(());
    };
    let marked = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESTORE_ANNOTATION));
    if force || marked == Some(&plan.backup_id) {
        return Ok(());
    }
    let mut held = Vec::new();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for d in deployments
        .list(&ListParams::default())
        .await
        .map_err(RestoreError::kube(format!("list deployments in {ns}")))?
    {
        held.push(format!(
            "Deployment {}",
            d.metadata.name.unwrap_or_default()
        ));
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    for s in statefulsets
        .list(&ListParams::default())
        .await
        .map_err(RestoreError::kube(format!("list statefulsets in {ns}")))?
    {
        held.push(format!(
            "StatefulSet {}",
            s.metadata.name.unwrap_or_default()
        ));
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    for c in claims
        .list(&ListParams::default())
        .await
        .map_err(RestoreError::kube(format!("list claims in {ns}")))?
    {
        held.push(format!(
            "PersistentVolumeClaim {}",
            c.metadata.name.unwrap_or_default()
        ));
    }
    if held.is_empty() {
        return Ok(());
    }
    let detail = match marked {
        Some(other) => format!(
            "restored earlier from backup {other}; holds {}",
            held.join(", ")
        ),
        None => format!("holds {}", held.join(", ")),
    };
    Err(RestoreError::NotEmpty {
        target: format!("namespace {ns}"),
        detail,
    })
}

/// Runs `plan` against the cluster behind `client`: server-side apply per step, the waits
/// with their deadlines, and the caller's data steps. With `options.dry_run`, only reports
/// which objects exist and would be replaced.
///
/// # Errors
/// [`RestoreError::NotEmpty`] for a namespace holding workloads (without `force`; nothing is
/// changed), [`RestoreError::NotReady`] naming what did not become ready and why,
/// [`RestoreError::Kube`] when the API refuses, [`RestoreError::Step`] when a data step fails.
pub async fn restore_kubernetes(
    client: &kube::Client,
    plan: &KubeRestorePlan,
    data: &mut impl DataRestorer,
    options: &KubeRestoreOptions,
) -> Result<KubeRestoreReport, RestoreError> {
    let started = Instant::now();
    let mut report = KubeRestoreReport {
        dry_run: options.dry_run,
        ..KubeRestoreReport::default()
    };
    if !options.dry_run {
        check_namespace(client, plan, options.force).await?;
    }
    let mut resolver = Resolver {
        client: client.clone(),
        cache: HashMap::new(),
    };
    let waits = &options.waits;
    // Claims whose storage class binds on first consumer (kind's local-path does): they cannot
    // be Bound before their pod exists, so they are checked once the pods are Ready.
    let mut deferred: Vec<String> = Vec::new();
    for step in &plan.steps {
        let step_started = Instant::now();
        let span = tracing::info_span!("restore_step", phase = %step.phase, kind = ?step.kind);
        let _guard = span.enter();
        match step.kind {
            StepKind::Apply => {
                apply_objects(client, &mut resolver, &step.manifests, options, &mut report).await?;
            }
            _ if options.dry_run => {}
            StepKind::WaitBound => {
                deferred.extend(
                    wait_claims_bound(client, &plan.namespace, &step.objects, waits).await?,
                );
            }
            StepKind::WaitReady => {
                for object in &step.objects {
                    let name = object.rsplit('/').next().unwrap_or_default();
                    let kind = object.split_whitespace().next().unwrap_or_default();
                    wait_workload_ready(client, &plan.namespace, kind, name, waits).await?;
                }
            }
            StepKind::RestoreDatabase => {
                // A data step that hangs (a dead port-forward, a stuck server) is stopped at the
                // deadline and named, not waited on forever.
                tokio::time::timeout(waits.data_restore, data.restore_database())
                    .await
                    .map_err(|_| data_timeout("the database", plan, waits))?
                    .map_err(|source| RestoreError::Step {
                        step: "database restore".to_owned(),
                        source,
                    })?;
                report.db_restore_seconds = Some(step_started.elapsed().as_secs_f64());
            }
            StepKind::RestoreRedis => {
                tokio::time::timeout(waits.data_restore, data.restore_redis())
                    .await
                    .map_err(|_| data_timeout("Redis", plan, waits))?
                    .map_err(|source| RestoreError::Step {
                        step: "redis restore".to_owned(),
                        source,
                    })?;
            }
            StepKind::WaitAllPodsReady => {
                let ns = &plan.namespace;
                let unconsumed = wait_all_pods_ready(client, ns, waits, &deferred).await?;
                report.unconsumed_claims.extend(unconsumed);
                report.pods_ready_seconds = Some(step_started.elapsed().as_secs_f64());
            }
        }
        report.step_seconds.push((
            format!("{}:{:?}", step.phase, step.kind),
            step_started.elapsed().as_secs_f64(),
        ));
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Server-side applies each object of an Apply step (with `options.dry_run`, only looks
/// whether it exists), recording it as created or replaced.
async fn apply_objects(
    client: &kube::Client,
    resolver: &mut Resolver,
    manifests: &[Value],
    options: &KubeRestoreOptions,
    report: &mut KubeRestoreReport,
) -> Result<(), RestoreError> {
    let waits = &options.waits;
    let params = PatchParams::apply(&options.field_manager).force();
    for object in manifests {
        let (resource, caps) = resolver
            .resolve(object, waits.crd_established, waits.poll)
            .await?;
        let api = dynamic_api(client, &resource, &caps, object);
        let name = name_of(object);
        let shown = label(object);
        let exists = api
            .get_opt(name)
            .await
            .map_err(RestoreError::kube(format!("get {shown}")))?
            .is_some();
        if exists {
            report.replaced.push(shown.clone())
        } else {
            report.created.push(shown.clone())
        }
        if options.dry_run {
            continue;
        }
        api.patch(name, &params, &Patch::Apply(object))
            .await
            .map_err(RestoreError::kube(format!("apply {shown}")))?;
    }
    Ok(())
}

/// Waits for each claim of a WaitBound step to be Bound; returns those whose storage class
/// binds on first consumer (kind's local-path does), to check once the pods are Ready.
async fn wait_claims_bound(
    client: &kube::Client,
    namespace: &str,
    objects: &[String],
    waits: &Waits,
) -> Result<Vec<String>, RestoreError> {
    let mut deferred = Vec::new();
    for object in objects {
        let name = object.rsplit('/').next().unwrap_or_default();
        if !wait_pvc_bound(client, namespace, name, waits, true).await? {
            tracing::info!(
                pvc = name,
                "storage class binds on first consumer; checking Bound after the pods"
            );
            deferred.push(name.to_owned());
        }
    }
    Ok(deferred)
}

/// Every workload at its replica count first (a Deployment that has not created its pods yet
/// has no pod to be un-Ready), then every pod, within one deadline; then the `deferred`
/// claims Bound. Returns the deferred claims no pod uses (their class has not bound them).
async fn wait_all_pods_ready(
    client: &kube::Client,
    namespace: &str,
    waits: &Waits,
    deferred: &[String],
) -> Result<Vec<String>, RestoreError> {
    let deadline = Instant::now() + waits.pods_ready;
    for (kind, name) in workloads_in(client, namespace).await? {
        let remaining = Waits {
            workload_ready: deadline.saturating_duration_since(Instant::now()),
            ..waits.clone()
        };
        wait_workload_ready(client, namespace, kind, &name, &remaining).await?;
    }
    let remaining = Waits {
        pods_ready: deadline.saturating_duration_since(Instant::now()),
        ..waits.clone()
    };
    wait_pods_ready(client, namespace, &remaining).await?;
    let consumed = claims_in_use(client, namespace).await?;
    let mut unconsumed = Vec::new();
    for name in deferred {
        if consumed.contains(name) {
            wait_pvc_bound(client, namespace, name, waits, false).await?;
        } else {
            tracing::warn!(pvc = %name, "no pod uses this claim, so its storage class has not bound it");
            unconsumed.push(name.clone());
        }
    }
    Ok(unconsumed)
}
