//! The order of a restore: objects sorted into phases, the way Velero does.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::restore::RestoreError;

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

pub(super) fn kind_of(o: &Value) -> &str {
    o.get("kind").and_then(Value::as_str).unwrap_or("")
}

pub(super) fn name_of(o: &Value) -> &str {
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

pub(super) fn label(o: &Value) -> String {
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
            .map(|p| with_ns(p, namespace));
        let redis = objects
            .iter()
            .find(|o| kind_of(o) == "Deployment" && name_of(o) == roles.redis_deployment)
            .cloned();
        for object in objects {
            check_object(object)?;
            if kind_of(object) == "Namespace" {
                // Keep the backed-up labels and annotations; the name is the target's.
                namespace_object = object.clone();
                namespace_object["metadata"]["name"] = json!(namespace);
                continue;
            }
            let object = retarget(object, namespace, replicas);
            let bucket = bucket_of(&object, roles, postgres.as_ref(), redis.as_ref());
            buckets.entry(bucket).or_default().push(object);
        }
        let annotations = namespace_object["metadata"]
            .as_object_mut()
            .map(|m| m.entry("annotations").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut);
        if let Some(annotations) = annotations {
            annotations.insert(RESTORE_ANNOTATION.to_owned(), json!(backup_id));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            backup_id: backup_id.to_owned(),
            steps: steps_of(namespace_object, buckets),
            replicas: replicas.clone(),
        })
    }
}

/// Refuses an object without `apiVersion`, `kind` or a name.
fn check_object(object: &Value) -> Result<(), RestoreError> {
    let valid = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| !v.is_empty())
        && !kind_of(object).is_empty()
        && !name_of(object).is_empty();
    if valid {
        return Ok(());
    }
    let shown: String = object.to_string().chars().take(120).collect();
    Err(RestoreError::InvalidObject {
        object: shown,
        detail: "needs apiVersion, kind and metadata.name".to_owned(),
    })
}

/// The object as it is restored: moved into `namespace` unless cluster-scoped, and a
/// Deployment listed in `replicas` at that count.
fn retarget(object: &Value, namespace: &str, replicas: &BTreeMap<String, i32>) -> Value {
    let mut object = object.clone();
    let kind = kind_of(&object).to_owned();
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
    object
}

/// The bucket that orders a retargeted object: 1 CRDs, 2 RBAC, 3 Secrets, 4 ConfigMaps,
/// 5 PVCs, 6 the PostgreSQL StatefulSet (`postgres`, retargeted) and its Services, 8 the Redis
/// Deployment (`redis`) and its Services, 10 other workloads and Services, 11 CronJobs and
/// custom resources.
fn bucket_of(
    object: &Value,
    roles: &PlanRoles,
    postgres: Option<&Value>,
    redis: Option<&Value>,
) -> u8 {
    let is_custom = !BUILTIN_GROUPS.contains(&group_of(object));
    match kind_of(object) {
        "CustomResourceDefinition" => 1,
        "ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding" => 2,
        "Secret" => 3,
        "ConfigMap" => 4,
        "PersistentVolumeClaim" => 5,
        "StatefulSet" if Some(object) == postgres => 6,
        "Service" if postgres.is_some_and(|p| selects(object, p)) => 6,
        "Deployment" if name_of(object) == roles.redis_deployment => 8,
        "Service" if redis.is_some_and(|r| selects(object, r)) => 8,
        "CronJob" => 11,
        _ if is_custom => 11,
        _ => 10,
    }
}

/// The plan's steps from the buckets, in order, with the waits and data restores between them.
fn steps_of(namespace_object: Value, mut buckets: BTreeMap<u8, Vec<Value>>) -> Vec<PlanStep> {
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
    steps
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
