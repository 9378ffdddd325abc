//! Kubernetes restore: the backed-up objects in Velero's order, applied with server-side
//! apply, with a deadline and a readable reason on every wait.
//!
//! [`KubeRestorePlan::new`] is pure: it sorts objects into phases and sets the replica counts
//! a quiesced backup recorded. [`restore_kubernetes`] runs a plan against a cluster through
//! kube-rs; the data steps (database, Redis) are the caller's, through [`DataRestorer`], so
//! this module does not care how the database is reached.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DynamicObject, ListParams, LogParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::RestoreError;

/// The annotation a restore puts on the namespace: which backup it is restoring. A namespace
/// carrying it for the same backup is resumed without `force`.
pub const RESTORE_ANNOTATION: &str = "rebuild-rehearsal/restored-from";

/// Groups whose kinds are built into Kubernetes; anything else is a custom resource.
const BUILTIN_GROUPS: [&str; 13] = [
    "",
    "apps",
    "batch",
    "rbac.authorization.k8s.io",
    "networking.k8s.io",
    "policy",
    "autoscaling",
    "storage.k8s.io",
    "apiextensions.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "scheduling.k8s.io",
    "admissionregistration.k8s.io",
];

/// What a plan step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Server-side apply the step's objects.
    Apply,
    /// Wait until the step's PVCs are Bound.
    WaitBound,
    /// Wait until the step's StatefulSets or Deployments have all replicas Ready.
    WaitReady,
    /// The caller restores the database.
    RestoreDatabase,
    /// The caller restores Redis.
    RestoreRedis,
    /// Wait until every pod of the namespace is Ready.
    WaitAllPodsReady,
}

/// One step: a phase name, what it does, and the objects it concerns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    /// `namespace`, `crds`, `rbac`, `secrets`, `configmaps`, `pvcs`, `postgresql`, `database`,
    /// `redis`, `workloads`, `custom-resources`, `pods`.
    pub phase: String,
    /// What it does.
    pub kind: StepKind,
    /// The objects it concerns, as `Kind namespace/name`.
    pub objects: Vec<String>,
    /// The manifests to apply (for [`StepKind::Apply`]).
    #[serde(skip)]
    pub manifests: Vec<Value>,
}

/// The ordered restore of a namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KubeRestorePlan {
    /// The namespace restored into.
    pub namespace: String,
    /// The backup id, recorded on the namespace.
    pub backup_id: String,
    /// The steps, in order.
    pub steps: Vec<PlanStep>,
    /// Replica counts set from the quiesce record (`Deployment name -> replicas`).
    pub replicas: BTreeMap<String, i32>,
}

/// Which objects are the database and Redis, which the plan restores before the rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRoles {
    /// The PostgreSQL StatefulSet (`postgresql`).
    pub postgres_statefulset: String,
    /// The Redis Deployment (`prod-redis-deployment`).
    pub redis_deployment: String,
}

impl Default for PlanRoles {
    fn default() -> Self {
        Self {
            postgres_statefulset: "postgresql".to_owned(),
            redis_deployment: "prod-redis-deployment".to_owned(),
        }
    }
}

fn kind_of(o: &Value) -> &str {
    o.get("kind").and_then(Value::as_str).unwrap_or("")
}

fn name_of(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn group_of(o: &Value) -> &str {
    o.get("apiVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.rsplit_once('/'))
        .map(|(g, _)| g)
        .unwrap_or("")
}

fn label(o: &Value) -> String {
    match o.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{} {ns}/{}", kind_of(o), name_of(o)),
        None => format!("{} {}", kind_of(o), name_of(o)),
    }
}

/// The name of the workload a Service selects, if its selector matches the workload's pod labels.
fn selects(service: &Value, workload: &Value) -> bool {
    let Some(selector) = service.pointer("/spec/selector").and_then(Value::as_object) else {
        return false;
    };
    let Some(labels) = workload
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
    else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl KubeRestorePlan {
    /// Orders `objects` (cleaned, as the backup wrote them) for restore into `namespace`:
    /// namespace, CRDs, ServiceAccounts/RBAC, Secrets, ConfigMaps, PVCs (wait Bound), the
    /// PostgreSQL StatefulSet and its Services (wait Ready), the database, the Redis
    /// Deployment and its Services (wait Ready), Redis data, the remaining workloads and
    /// Services, custom resources (Istio, ServiceMonitor, CronJob), then every pod Ready.
    /// Deployments listed in `replicas` get that replica count. Namespaced objects are moved
    /// into `namespace`.
    ///
    /// # Errors
    /// [`RestoreError::InvalidObject`] for an object without `apiVersion`, `kind` or a name.
    pub fn new(
        objects: &[Value],
        namespace: &str,
        backup_id: &str,
        replicas: &BTreeMap<String, i32>,
        roles: &PlanRoles,
    ) -> Result<Self, RestoreError> {
        let mut buckets: BTreeMap<u8, Vec<Value>> = BTreeMap::new();
        let mut namespace_object =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        let postgres = objects
            .iter()
            .find(|o| kind_of(o) == "StatefulSet" && name_of(o) == roles.postgres_statefulset)
            .cloned();
        let redis = objects
            .iter()
            .find(|o| kind_of(o) == "Deployment" && name_of(o) == roles.redis_deployment)
            .cloned();
        for object in objects {
            let valid = object
                .get("apiVersion")
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
                && !kind_of(object).is_empty()
                && !name_of(object).is_empty();
            if !valid {
                let shown: String = object.to_string().chars().take(120).collect();
                return Err(RestoreError::InvalidObject {
                    object: shown,
                    detail: "needs apiVersion, kind and metadata.name".to_owned(),
                });
            }
            let mut object = object.clone();
            let kind = kind_of(&object).to_owned();
            if kind == "Namespace" {
                // Keep the backed-up labels and annotations; the name is the target's.
                namespace_object = object;
                namespace_object["metadata"]["name"] = json!(namespace);
                continue;
            }
            let cluster_scoped = matches!(
                kind.as_str(),
                "CustomResourceDefinition"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "PersistentVolume"
                    | "StorageClass"
            );
            if !cluster_scoped {
                object["metadata"]["namespace"] = json!(namespace);
            }
            if kind == "Deployment"
                && let Some(count) = replicas.get(name_of(&object))
            {
                object["spec"]["replicas"] = json!(count);
            }
            let is_custom = !BUILTIN_GROUPS.contains(&group_of(&object));
            let bucket = match kind.as_str() {
                "CustomResourceDefinition" => 1,
                "ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole"
                | "ClusterRoleBinding" => 2,
                "Secret" => 3,
                "ConfigMap" => 4,
                "PersistentVolumeClaim" => 5,
                "StatefulSet"
                    if Some(&object)
                        == postgres.as_ref().map(|p| with_ns(p, namespace)).as_ref() =>
                {
                    6
                }
                "Service" if postgres.as_ref().is_some_and(|p| selects(&object, p)) => 6,
                "Deployment" if name_of(&object) == roles.redis_deployment => 8,
                "Service" if redis.as_ref().is_some_and(|r| selects(&object, r)) => 8,
                "CronJob" => 11,
                _ if is_custom => 11,
                _ => 10,
            };
            buckets.entry(bucket).or_default().push(object);
        }
        let annotations = namespace_object["metadata"]
            .as_object_mut()
            .map(|m| m.entry("annotations").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut);
        if let Some(annotations) = annotations {
            annotations.insert(RESTORE_ANNOTATION.to_owned(), json!(backup_id));
        }

        let mut steps = Vec::new();
        let apply = |phase: &str, objects: Vec<Value>| PlanStep {
            phase: phase.to_owned(),
            kind: StepKind::Apply,
            objects: objects.iter().map(label).collect(),
            manifests: objects,
        };
        let wait = |phase: &str, kind, objects: &[Value]| PlanStep {
            phase: phase.to_owned(),
            kind,
            objects: objects.iter().map(label).collect(),
            manifests: Vec::new(),
        };
        steps.push(apply("namespace", vec![namespace_object]));
        for (bucket, phase) in [(1, "crds"), (2, "rbac"), (3, "secrets"), (4, "configmaps")] {
            if let Some(objects) = buckets.remove(&bucket) {
                steps.push(apply(phase, objects));
            }
        }
        if let Some(pvcs) = buckets.remove(&5) {
            steps.push(apply("pvcs", pvcs.clone()));
            steps.push(wait("pvcs", StepKind::WaitBound, &pvcs));
        }
        if let Some(objects) = buckets.remove(&6) {
            let workloads: Vec<Value> = objects
                .iter()
                .filter(|o| kind_of(o) == "StatefulSet")
                .cloned()
                .collect();
            steps.push(apply("postgresql", objects));
            steps.push(wait("postgresql", StepKind::WaitReady, &workloads));
        }
        steps.push(wait("database", StepKind::RestoreDatabase, &[]));
        if let Some(objects) = buckets.remove(&8) {
            let workloads: Vec<Value> = objects
                .iter()
                .filter(|o| kind_of(o) == "Deployment")
                .cloned()
                .collect();
            steps.push(apply("redis", objects));
            steps.push(wait("redis", StepKind::WaitReady, &workloads));
            steps.push(wait("redis", StepKind::RestoreRedis, &[]));
        }
        if let Some(objects) = buckets.remove(&10) {
            steps.push(apply("workloads", objects));
        }
        if let Some(objects) = buckets.remove(&11) {
            steps.push(apply("custom-resources", objects));
        }
        steps.push(wait("pods", StepKind::WaitAllPodsReady, &[]));
        Ok(Self {
            namespace: namespace.to_owned(),
            backup_id: backup_id.to_owned(),
            steps,
            replicas: replicas.clone(),
        })
    }
}

fn with_ns(object: &Value, namespace: &str) -> Value {
    let mut object = object.clone();
    object["metadata"]["namespace"] = json!(namespace);
    object
}

impl fmt::Display for KubeRestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kubernetes restore into namespace {} from backup {}",
            self.namespace, self.backup_id
        )?;
        for (i, step) in self.steps.iter().enumerate() {
            let what = match step.kind {
                StepKind::Apply => "apply",
                StepKind::WaitBound => "wait until Bound",
                StepKind::WaitReady => "wait until Ready",
                StepKind::RestoreDatabase => "restore the database",
                StepKind::RestoreRedis => "restore Redis data",
                StepKind::WaitAllPodsReady => "wait until every pod is Ready",
            };
            writeln!(f, "{:>3}. [{}] {what}", i + 1, step.phase)?;
            for object in &step.objects {
                writeln!(f, "       - {object}")?;
            }
        }
        if !self.replicas.is_empty() {
            let counts: Vec<String> = self
                .replicas
                .iter()
                .map(|(n, r)| format!("{n}={r}"))
                .collect();
            writeln!(
                f,
                "  replicas from the quiesce record: {}",
                counts.join(", ")
            )?;
        }
        Ok(())
    }
}

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
    super::DEFAULT_DEADLINE
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
    let params = PatchParams::apply(&options.field_manager).force();
    // Claims whose storage class binds on first consumer (kind's local-path does): they cannot
    // be Bound before their pod exists, so they are checked once the pods are Ready.
    let mut deferred: Vec<String> = Vec::new();
    for step in &plan.steps {
        let step_started = Instant::now();
        let span = tracing::info_span!("restore_step", phase = %step.phase, kind = ?step.kind);
        let _guard = span.enter();
        match step.kind {
            StepKind::Apply => {
                for object in &step.manifests {
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
            }
            _ if options.dry_run => {}
            StepKind::WaitBound => {
                for object in &step.objects {
                    let name = object.rsplit('/').next().unwrap_or_default();
                    if !wait_pvc_bound(client, &plan.namespace, name, waits, true).await? {
                        tracing::info!(
                            pvc = name,
                            "storage class binds on first consumer; checking Bound after the pods"
                        );
                        deferred.push(name.to_owned());
                    }
                }
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
                // Every workload at its replica count first (a Deployment that has not created
                // its pods yet has no pod to be un-Ready), then every pod, within one deadline.
                let deadline = Instant::now() + waits.pods_ready;
                for (kind, name) in workloads_in(client, &plan.namespace).await? {
                    let remaining = Waits {
                        workload_ready: deadline.saturating_duration_since(Instant::now()),
                        ..waits.clone()
                    };
                    wait_workload_ready(client, &plan.namespace, kind, &name, &remaining).await?;
                }
                let remaining = Waits {
                    pods_ready: deadline.saturating_duration_since(Instant::now()),
                    ..waits.clone()
                };
                wait_pods_ready(client, &plan.namespace, &remaining).await?;
                let consumed = claims_in_use(client, &plan.namespace).await?;
                for name in &deferred {
                    if consumed.contains(name) {
                        wait_pvc_bound(client, &plan.namespace, name, waits, false).await?;
                    } else {
                        tracing::warn!(pvc = %name, "no pod uses this claim, so its storage class has not bound it");
                        report.unconsumed_claims.push(name.clone());
                    }
                }
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

/// Observes the pods of `namespace` for the rollback decision (`verify::decide`): restarts,
/// waiting reasons such as `CrashLoopBackOff`, and readiness.
///
/// # Errors
/// [`RestoreError::Kube`] when the pods cannot be listed.
pub async fn observe_pods(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<crate::facts::PodObservation>, RestoreError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = api
        .list(&ListParams::default())
        .await
        .map_err(RestoreError::kube(format!("list pods in {namespace}")))?;
    let mut out: Vec<crate::facts::PodObservation> = pods
        .items
        .iter()
        .map(|pod| {
            let statuses = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            crate::facts::PodObservation {
                name: format!(
                    "{namespace}/{}",
                    pod.metadata.name.clone().unwrap_or_default()
                ),
                restarts: statuses
                    .iter()
                    .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
                    .sum(),
                waiting_reason: statuses.iter().find_map(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.clone())
                }),
                ready: pod_ready(pod),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Recent events about one object, newest last, as `reason: message`.
async fn events_for(client: &kube::Client, namespace: &str, name: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let mut events = api.list(&params).await.map(|l| l.items).unwrap_or_default();
    events.sort_by_key(|e| {
        e.metadata
            .resource_version
            .clone()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    });
    events
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            )
        })
        .collect()
}

/// Why a pod is not Ready: phase, conditions that are not True, container waiting reasons,
/// last events and log lines.
async fn explain_pod(client: &kube::Client, pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let mut parts = vec![format!(
        "phase {}",
        status.phase.clone().unwrap_or_else(|| "Unknown".to_owned())
    )];
    for c in status
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status != "True")
    {
        let why = [c.reason.clone(), c.message.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        parts.push(format!(
            "{} {}{}",
            c.type_,
            c.status,
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        ));
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            parts.push(format!(
                "container {} waiting: {}{} (restarts {})",
                cs.name,
                waiting.reason.clone().unwrap_or_default(),
                waiting
                    .message
                    .clone()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default(),
                cs.restart_count
            ));
        }
    }
    let events = events_for(client, &ns, &name).await;
    if !events.is_empty() {
        parts.push(format!("events: {}", events.join(" | ")));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if let Ok(logs) = pods
        .logs(
            &name,
            &LogParams {
                tail_lines: Some(5),
                ..LogParams::default()
            },
        )
        .await
    {
        let logs = logs.trim();
        if !logs.is_empty() {
            parts.push(format!(
                "last log lines: {}",
                logs.lines().collect::<Vec<_>>().join(" / ")
            ));
        }
    }
    format!("pod {name}: {}", parts.join("; "))
}

fn pod_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Succeeded")
        || status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the claim is Bound: `Ok(true)`. With `may_defer`, a claim whose storage class
/// binds on first consumer returns `Ok(false)` at once instead.
async fn wait_pvc_bound(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    waits: &Waits,
    may_defer: bool,
) -> Result<bool, RestoreError> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    loop {
        let pvc = api.get(name).await.map_err(RestoreError::kube(format!(
            "get PersistentVolumeClaim {namespace}/{name}"
        )))?;
        let class = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone());
        let phase = pvc
            .status
            .and_then(|s| s.phase)
            .unwrap_or_else(|| "Pending".to_owned());
        if phase == "Bound" {
            return Ok(true);
        }
        if may_defer && let Some(class) = class {
            let classes: Api<StorageClass> = Api::all(client.clone());
            let mode = classes
                .get_opt(&class)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.volume_binding_mode);
            if mode.as_deref() == Some("WaitForFirstConsumer") {
                return Ok(false);
            }
        }
        if started.elapsed() >= waits.pvc_bound {
            let events = events_for(client, namespace, name).await;
            let events = if events.is_empty() {
                "no events".to_owned()
            } else {
                events.join(" | ")
            };
            return Err(RestoreError::NotReady {
                what: format!("PersistentVolumeClaim {namespace}/{name}"),
                seconds: waits.pvc_bound.as_secs(),
                detail: format!("phase {phase}; {events}"),
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
}

async fn wait_workload_ready(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    waits: &Waits,
) -> Result<(), RestoreError> {
    let started = Instant::now();
    loop {
        let (want, ready, selector) = match kind {
            "StatefulSet" => {
                let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
                let s = api.get(name).await.map_err(RestoreError::kube(format!(
                    "get StatefulSet {namespace}/{name}"
                )))?;
                let want = s.spec.replicas.unwrap_or(1);
                // A status older than the spec (the controller has not seen the apply yet) says nothing.
                let observed = s
                    .status
                    .as_ref()
                    .and_then(|s| s.observed_generation)
                    .unwrap_or(0);
                let current = observed >= s.metadata.generation.unwrap_or(0);
                let ready = if current {
                    s.status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0)
                } else {
                    -1
                };
                (want, ready, s.spec.selector.match_labels.clone())
            }
            _ => {
                let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
                let d = api.get(name).await.map_err(RestoreError::kube(format!(
                    "get Deployment {namespace}/{name}"
                )))?;
                let want = d.spec.replicas.unwrap_or(1);
                // A status older than the spec (the controller has not seen the apply yet) says nothing.
                let observed = d
                    .status
                    .as_ref()
                    .and_then(|s| s.observed_generation)
                    .unwrap_or(0);
                let current = observed >= d.metadata.generation.unwrap_or(0);
                let ready = if current {
                    d.status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0)
                } else {
                    -1
                };
                (want, ready, d.spec.selector.match_labels.clone())
            }
        };
        if ready >= want {
            return Ok(());
        }
        if started.elapsed() >= waits.workload_ready {
            let mut detail = vec![if ready < 0 {
                "the controller has not observed the applied spec".to_owned()
            } else {
                format!("{ready}/{want} replicas ready")
            }];
            let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let selector = selector
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let listed = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            if listed.is_empty() {
                let events = events_for(client, namespace, name).await;
                detail.push(format!(
                    "no pods; {}",
                    if events.is_empty() {
                        "no events".to_owned()
                    } else {
                        events.join(" | ")
                    }
                ));
            }
            for pod in listed.iter().filter(|p| !pod_ready(p)) {
                detail.push(explain_pod(client, pod).await);
            }
            return Err(RestoreError::NotReady {
                what: format!("{kind} {namespace}/{name}"),
                seconds: waits.workload_ready.as_secs(),
                detail: detail.join("; "),
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
}

async fn wait_pods_ready(
    client: &kube::Client,
    namespace: &str,
    waits: &Waits,
) -> Result<(), RestoreError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    loop {
        let pods = api
            .list(&ListParams::default())
            .await
            .map_err(RestoreError::kube(format!("list pods in {namespace}")))?;
        let not_ready: Vec<&Pod> = pods.items.iter().filter(|p| !pod_ready(p)).collect();
        if not_ready.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= waits.pods_ready {
            let mut detail = Vec::new();
            for pod in not_ready {
                detail.push(explain_pod(client, pod).await);
            }
            return Err(RestoreError::NotReady {
                what: format!("pods in namespace {namespace}"),
                seconds: waits.pods_ready.as_secs(),
                detail: detail.join("; "),
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
}

fn data_timeout(what: &str, plan: &KubeRestorePlan, waits: &Waits) -> RestoreError {
    RestoreError::TimedOut {
        tool: "the restore".to_owned(),
        what: format!(
            "restoring {what} of namespace {} from backup {}",
            plan.namespace, plan.backup_id
        ),
        seconds: waits.data_restore.as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(api_version: &str, kind: &str, name: &str) -> Value {
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": "titanium-prod"}})
    }

    fn workload(kind: &str, name: &str, app: &str, replicas: i32) -> Value {
        let mut o = obj("apps/v1", kind, name);
        o["spec"] = json!({"replicas": replicas, "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}}});
        o
    }

    fn service(name: &str, app: &str) -> Value {
        let mut o = obj("v1", "Service", name);
        o["spec"] = json!({"selector": {"app": app}, "ports": [{"port": 80}]});
        o
    }

    /// The Titanium namespace as the backup writes it, in a scrambled order.
    fn titanium() -> Vec<Value> {
        vec![
            obj(
                "networking.istio.io/v1beta1",
                "VirtualService",
                "titanium-vs",
            ),
            workload(
                "Deployment",
                "prod-user-service-deployment",
                "user-service",
                0,
            ),
            service("prod-user-service", "user-service"),
            obj("batch/v1", "CronJob", "postgres-backup"),
            obj("monitoring.coreos.com/v1", "ServiceMonitor", "titanium"),
            service("prod-redis-service", "redis"),
            workload("Deployment", "prod-redis-deployment", "redis", 1),
            service("postgresql-service", "postgresql"),
            workload("StatefulSet", "postgresql", "postgresql", 1),
            obj("v1", "PersistentVolumeClaim", "postgresql-pvc"),
            obj("v1", "ConfigMap", "app-config"),
            obj("v1", "Secret", "postgresql-secret"),
            obj("rbac.authorization.k8s.io/v1", "RoleBinding", "titanium"),
            obj("v1", "ServiceAccount", "titanium"),
            obj("networking.istio.io/v1beta1", "Gateway", "titanium-gw"),
        ]
    }

    fn check(plan: &KubeRestorePlan, expected: &[(&str, StepKind, &[&str])]) {
        let got: Vec<(String, StepKind, Vec<String>)> = plan
            .steps
            .iter()
            .map(|s| (s.phase.clone(), s.kind, s.objects.clone()))
            .collect();
        let want: Vec<(String, StepKind, Vec<String>)> = expected
            .iter()
            .map(|(p, k, o)| {
                (
                    (*p).to_owned(),
                    *k,
                    o.iter().map(|s| (*s).to_owned()).collect(),
                )
            })
            .collect();
        assert_eq!(got, want, "{plan}");
    }

    #[test]
    fn titanium_restores_in_velero_order() {
        let replicas = BTreeMap::from([("prod-user-service-deployment".to_owned(), 2)]);
        let plan = KubeRestorePlan::new(
            &titanium(),
            "titanium-prod",
            "b1",
            &replicas,
            &PlanRoles::default(),
        )
        .unwrap();
        check(
            &plan,
            &[
                ("namespace", StepKind::Apply, &["Namespace titanium-prod"]),
                (
                    "rbac",
                    StepKind::Apply,
                    &[
                        "RoleBinding titanium-prod/titanium",
                        "ServiceAccount titanium-prod/titanium",
                    ],
                ),
                (
                    "secrets",
                    StepKind::Apply,
                    &["Secret titanium-prod/postgresql-secret"],
                ),
                (
                    "configmaps",
                    StepKind::Apply,
                    &["ConfigMap titanium-prod/app-config"],
                ),
                (
                    "pvcs",
                    StepKind::Apply,
                    &["PersistentVolumeClaim titanium-prod/postgresql-pvc"],
                ),
                (
                    "pvcs",
                    StepKind::WaitBound,
                    &["PersistentVolumeClaim titanium-prod/postgresql-pvc"],
                ),
                (
                    "postgresql",
                    StepKind::Apply,
                    &[
                        "Service titanium-prod/postgresql-service",
                        "StatefulSet titanium-prod/postgresql",
                    ],
                ),
                (
                    "postgresql",
                    StepKind::WaitReady,
                    &["StatefulSet titanium-prod/postgresql"],
                ),
                ("database", StepKind::RestoreDatabase, &[]),
                (
                    "redis",
                    StepKind::Apply,
                    &[
                        "Service titanium-prod/prod-redis-service",
                        "Deployment titanium-prod/prod-redis-deployment",
                    ],
                ),
                (
                    "redis",
                    StepKind::WaitReady,
                    &["Deployment titanium-prod/prod-redis-deployment"],
                ),
                ("redis", StepKind::RestoreRedis, &[]),
                (
                    "workloads",
                    StepKind::Apply,
                    &[
                        "Deployment titanium-prod/prod-user-service-deployment",
                        "Service titanium-prod/prod-user-service",
                    ],
                ),
                (
                    "custom-resources",
                    StepKind::Apply,
                    &[
                        "VirtualService titanium-prod/titanium-vs",
                        "CronJob titanium-prod/postgres-backup",
                        "ServiceMonitor titanium-prod/titanium",
                        "Gateway titanium-prod/titanium-gw",
                    ],
                ),
                ("pods", StepKind::WaitAllPodsReady, &[]),
            ],
        );
        let user = plan.steps[12]
            .manifests
            .iter()
            .find(|o| kind_of(o) == "Deployment")
            .unwrap();
        assert_eq!(
            user["spec"]["replicas"],
            json!(2),
            "replicas come back from the quiesce record"
        );
        let ns = &plan.steps[0].manifests[0];
        assert_eq!(
            ns["metadata"]["annotations"][RESTORE_ANNOTATION],
            json!("b1")
        );
    }

    #[test]
    fn crds_come_right_after_the_namespace_and_objects_move_namespace() {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gateways.networking.istio.io"}});
        let objects = vec![obj("v1", "ConfigMap", "c"), crd];
        let plan = KubeRestorePlan::new(
            &objects,
            "rehearsal-1",
            "b",
            &BTreeMap::new(),
            &PlanRoles::default(),
        )
        .unwrap();
        let phases: Vec<&str> = plan.steps.iter().map(|s| s.phase.as_str()).collect();
        assert_eq!(
            phases,
            ["namespace", "crds", "configmaps", "database", "pods"]
        );
        assert_eq!(
            plan.steps[2].manifests[0]["metadata"]["namespace"],
            json!("rehearsal-1")
        );
        assert!(
            plan.steps[1].manifests[0]["metadata"]
                .get("namespace")
                .is_none(),
            "CRDs are cluster-scoped"
        );
    }

    #[test]
    fn an_object_without_a_name_is_refused() {
        let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
        let err = KubeRestorePlan::new(&[bad], "ns", "b", &BTreeMap::new(), &PlanRoles::default())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("needs apiVersion, kind and metadata.name"),
            "{err}"
        );
    }

    #[test]
    fn the_plan_prints_every_step_in_order() {
        let plan = KubeRestorePlan::new(
            &titanium(),
            "titanium-prod",
            "b1",
            &BTreeMap::new(),
            &PlanRoles::default(),
        )
        .unwrap();
        let text = plan.to_string();
        let pvc = text.find("wait until Bound").unwrap();
        let db = text.find("restore the database").unwrap();
        let crs = text.find("[custom-resources]").unwrap();
        assert!(pvc < db && db < crs, "{text}");
    }
}
