//! The resource registry: which kinds the API server serves, under which paths and names.
//!
//! Built-in kinds are listed once in [`builtin_resources`]; a created
//! CustomResourceDefinition adds its own entries at run time, which is how discovery comes to
//! list Istio's `Gateway` or Prometheus' `ServiceMonitor`.

use std::collections::BTreeMap;

use serde_json::Value;

/// How an object's `metadata.name` is checked on create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 characters.
    Subdomain,
    /// DNS-1123 label: lowercase alphanumerics and `-`, at most 63 characters.
    Label,
    /// DNS-1035 label: a DNS-1123 label that starts with a letter (Services).
    Label1035,
    /// Path segment name: anything but `/`, `%`, `.` and `..` (RBAC objects).
    PathSegment,
}

/// One served resource: a kind under one group/version.
#[derive(Debug, Clone)]
pub(crate) struct ResourceType {
    /// API group; empty for the core group.
    pub(crate) group: String,
    /// API version, for example `v1`.
    pub(crate) version: String,
    /// Kind, for example `StatefulSet`.
    pub(crate) kind: String,
    /// Plural resource name used in paths, for example `statefulsets`.
    pub(crate) plural: String,
    /// Singular name.
    pub(crate) singular: String,
    /// Whether objects live in a namespace.
    pub(crate) namespaced: bool,
    /// Short names kubectl accepts, for example `sts`.
    pub(crate) short_names: Vec<String>,
    /// Categories, for example `all`.
    pub(crate) categories: Vec<String>,
    /// Subresources, for example `status`, `exec`, `log`.
    pub(crate) subresources: Vec<String>,
    /// Whether `metadata.generation` is kept (kinds with a spec).
    pub(crate) has_generation: bool,
    /// The name rule applied on create.
    pub(crate) name_rule: NameRule,
    /// True for kinds that are only ever created and never stored (access reviews).
    pub(crate) create_only: bool,
    /// True for kinds defined by a CustomResourceDefinition.
    pub(crate) custom: bool,
    /// The version objects of this group/resource are stored in (CRDs may serve several).
    pub(crate) storage_version: String,
    /// Extra printer columns of a CRD (`additionalPrinterColumns`), used for Tables.
    pub(crate) printer_columns: Vec<Value>,
}

impl ResourceType {
    /// The `apiVersion` field value: `v1` or `apps/v1`.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key shared by all versions of this resource: `group/plural`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    /// `plural.group` (or just `plural` in the core group), as Kubernetes messages name it.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether the kind has the given subresource.
    pub(crate) fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.iter().any(|s| s == sub)
    }

    /// Verbs listed in discovery.
    pub(crate) fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            vec!["create"]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }
}

struct Row {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    has_generation: bool,
    name_rule: NameRule,
}

// One row of the resource table, spelled out field by field so that the table reads as one.
#[allow(clippy::too_many_arguments)]
const fn row(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    has_generation: bool,
    name_rule: NameRule,
) -> Row {
    Row {
        group,
        version,
        kind,
        plural,
        namespaced,
        short,
        categories,
        subresources,
        has_generation,
        name_rule,
    }
}

use NameRule::{Label, Label1035, PathSegment, Subdomain};

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];
const STATUS: &[&str] = &["status"];
const WORKLOAD: &[&str] = &["scale", "status"];

const BUILTINS: &[Row] = &[
    row(
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        &["ns"],
        NONE,
        &["finalize", "status"],
        false,
        Label,
    ),
    row(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        true,
        &["cm"],
        NONE,
        NONE,
        false,
        Subdomain,
    ),
    row(
        "", "v1", "Secret", "secrets", true, NONE, NONE, NONE, false, Subdomain,
    ),
    row(
        "",
        "v1",
        "Service",
        "services",
        true,
        &["svc"],
        ALL,
        &["proxy", "status"],
        false,
        Label1035,
    ),
    row(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        true,
        &["ep"],
        NONE,
        NONE,
        false,
        Subdomain,
    ),
    row(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        false,
        &["pv"],
        NONE,
        STATUS,
        false,
        Subdomain,
    ),
    row(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
        &["pvc"],
        NONE,
        STATUS,
        false,
        Subdomain,
    ),
    row(
        "",
        "v1",
        "Pod",
        "pods",
        true,
        &["po"],
        ALL,
        &[
            "attach",
            "binding",
            "eviction",
            "exec",
            "log",
            "portforward",
            "proxy",
            "status",
        ],
        false,
        Subdomain,
    ),
    row(
        "",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        NONE,
        NONE,
        false,
        Subdomain,
    ),
    row(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        &["sa"],
        NONE,
        &["token"],
        false,
        Subdomain,
    ),
    row(
        "",
        "v1",
        "Node",
        "nodes",
        false,
        &["no"],
        NONE,
        &["proxy", "status"],
        false,
        Subdomain,
    ),
    row(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        true,
        &["rc"],
        ALL,
        WORKLOAD,
        true,
        Subdomain,
    ),
    row(
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        true,
        &["quota"],
        NONE,
        STATUS,
        false,
        Subdomain,
    ),
    row(
        "",
        "v1",
        "LimitRange",
        "limitranges",
        true,
        &["limits"],
        NONE,
        NONE,
        false,
        Subdomain,
    ),
    row(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        &["deploy"],
        ALL,
        WORKLOAD,
        true,
        Subdomain,
    ),
    row(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        &["rs"],
        ALL,
        WORKLOAD,
        true,
        Subdomain,
    ),
    row(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        true,
        &["sts"],
        ALL,
        WORKLOAD,
        true,
        Subdomain,
    ),
    row(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        true,
        &["ds"],
        ALL,
        STATUS,
        true,
        Subdomain,
    ),
    row(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
        NONE,
        NONE,
        NONE,
        false,
        Subdomain,
    ),
    row(
        "batch", "v1", "Job", "jobs", true, NONE, ALL, STATUS, true, Subdomain,
    ),
    row(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        true,
        &["cj"],
        ALL,
        STATUS,
        true,
        Subdomain,
    ),
    row(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        &["hpa"],
        ALL,
        STATUS,
        false,
        Subdomain,
    ),
    row(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        &["pdb"],
        NONE,
        STATUS,
        true,
        Subdomain,
    ),
    row(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        true,
        &["ing"],
        NONE,
        STATUS,
        true,
        Subdomain,
    ),
    row(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        false,
        NONE,
        NONE,
        NONE,
        true,
        Subdomain,
    ),
    row(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        true,
        &["netpol"],
        NONE,
        NONE,
        true,
        Subdomain,
    ),
    row(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        false,
        &["sc"],
        NONE,
        NONE,
        false,
        Subdomain,
    ),
    row(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        true,
        NONE,
        NONE,
        NONE,
        false,
        PathSegment,
    ),
    row(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        NONE,
        NONE,
        NONE,
        false,
        PathSegment,
    ),
    row(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
        NONE,
        NONE,
        NONE,
        false,
        PathSegment,
    ),
    row(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        NONE,
        NONE,
        NONE,
        false,
        PathSegment,
    ),
    row(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        NONE,
        NONE,
        NONE,
        false,
        Subdomain,
    ),
    row(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        NONE,
        STATUS,
        true,
        Subdomain,
    ),
    row(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        false,
        NONE,
        NONE,
        NONE,
        false,
        Subdomain,
    ),
];

/// The built-in kinds the server serves.
pub(crate) fn builtin_resources() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|r| ResourceType {
            group: r.group.to_owned(),
            version: r.version.to_owned(),
            kind: r.kind.to_owned(),
            plural: r.plural.to_owned(),
            singular: r.kind.to_lowercase(),
            namespaced: r.namespaced,
            short_names: r.short.iter().map(|s| (*s).to_owned()).collect(),
            categories: r.categories.iter().map(|s| (*s).to_owned()).collect(),
            subresources: r.subresources.iter().map(|s| (*s).to_owned()).collect(),
            has_generation: r.has_generation,
            name_rule: r.name_rule,
            create_only: r.kind == "SelfSubjectAccessReview",
            custom: false,
            storage_version: r.version.to_owned(),
            printer_columns: Vec::new(),
        })
        .collect()
}

/// All served resources, built-in and custom, indexed by group/version.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    by_gv: BTreeMap<(String, String), Vec<ResourceType>>,
}

impl Default for Registry {
    fn default() -> Self {
        let mut reg = Registry {
            by_gv: BTreeMap::new(),
        };
        for r in builtin_resources() {
            reg.insert(r);
        }
        reg
    }
}

impl Registry {
    fn insert(&mut self, r: ResourceType) {
        let list = self
            .by_gv
            .entry((r.group.clone(), r.version.clone()))
            .or_default();
        list.retain(|x| x.plural != r.plural);
        list.push(r);
        list.sort_by(|a, b| a.plural.cmp(&b.plural));
    }

    /// The resource served at `group/version/plural`.
    pub(crate) fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.by_gv
            .get(&(group.to_owned(), version.to_owned()))?
            .iter()
            .find(|r| r.plural == plural)
    }

    /// The resource of an `apiVersion` and `kind`, as found in an object or an owner reference.
    pub(crate) fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        let (group, version) = split_api_version(api_version);
        self.by_gv
            .get(&(group.to_owned(), version.to_owned()))?
            .iter()
            .find(|r| r.kind == kind)
    }

    /// The storage-version entry for a storage key (`group/plural`).
    pub(crate) fn by_key(&self, key: &str) -> Option<&ResourceType> {
        self.all()
            .find(|r| r.key() == key && r.version == r.storage_version)
    }

    /// Every served resource.
    pub(crate) fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.by_gv.values().flatten()
    }

    /// Served group/versions, core first, in a stable order.
    pub(crate) fn group_versions(&self) -> Vec<(String, String)> {
        self.by_gv.keys().cloned().collect()
    }

    /// Resources of one group/version.
    pub(crate) fn resources(&self, group: &str, version: &str) -> Option<&[ResourceType]> {
        self.by_gv
            .get(&(group.to_owned(), version.to_owned()))
            .map(Vec::as_slice)
    }

    /// Whether a group/version is served.
    #[cfg(test)]
    pub(crate) fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.by_gv
            .contains_key(&(group.to_owned(), version.to_owned()))
    }

    /// Add or replace the resources a CustomResourceDefinition defines.
    pub(crate) fn add_crd(&mut self, crd: &Value) {
        self.remove_crd(crd);
        for r in crd_resources(crd) {
            self.insert(r);
        }
    }

    /// Remove the resources a CustomResourceDefinition defined.
    pub(crate) fn remove_crd(&mut self, crd: &Value) {
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let plural = crd
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for ((g, _), list) in self.by_gv.iter_mut() {
            if g == group {
                list.retain(|r| !(r.custom && r.plural == plural));
            }
        }
        self.by_gv.retain(|_, list| !list.is_empty());
    }
}

/// Split `apps/v1` into (`apps`, `v1`) and `v1` into (``, `v1`).
pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The served resources a CustomResourceDefinition object defines.
pub(crate) fn crd_resources(crd: &Value) -> Vec<ResourceType> {
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let names = spec.get("names").cloned().unwrap_or(Value::Null);
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let plural = names
        .get("plural")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| kind.to_lowercase());
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .or(versions.first())
        .and_then(|v| v.get("name").and_then(Value::as_str))
        .unwrap_or("v1")
        .to_owned();
    versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
        .map(|v| {
            let mut subresources = Vec::new();
            if let Some(sub) = v.get("subresources") {
                if sub.get("status").is_some() {
                    subresources.push("status".to_owned());
                }
                if sub.get("scale").is_some() {
                    subresources.push("scale".to_owned());
                }
            }
            ResourceType {
                group: group.clone(),
                version: v
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("v1")
                    .to_owned(),
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                namespaced,
                short_names: strings(names.get("shortNames")),
                categories: strings(names.get("categories")),
                subresources,
                has_generation: true,
                name_rule: NameRule::Subdomain,
                create_only: false,
                custom: true,
                storage_version: storage_version.clone(),
                printer_columns: v
                    .get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_adds_and_removes_its_resources() {
        let crd = json!({"spec": {"group": "networking.istio.io", "scope": "Namespaced",
            "names": {"kind": "Gateway", "plural": "gateways", "shortNames": ["gw"]},
            "versions": [{"name": "v1beta1", "served": true, "storage": true}, {"name": "v1alpha3", "served": true, "storage": false}]}});
        let mut reg = Registry::default();
        reg.add_crd(&crd);
        let r = reg
            .lookup("networking.istio.io", "v1alpha3", "gateways")
            .expect("served");
        assert_eq!(r.storage_version, "v1beta1");
        assert_eq!(r.short_names, vec!["gw"]);
        assert_eq!(
            reg.by_key("networking.istio.io/gateways")
                .map(|r| r.version.as_str()),
            Some("v1beta1")
        );
        reg.remove_crd(&crd);
        assert!(
            reg.lookup("networking.istio.io", "v1beta1", "gateways")
                .is_none()
        );
        assert!(!reg.has_group_version("networking.istio.io", "v1beta1"));
    }

    #[test]
    fn builtins_resolve_by_kind() {
        let reg = Registry::default();
        assert_eq!(
            reg.by_kind("apps/v1", "StatefulSet")
                .map(|r| r.plural.as_str()),
            Some("statefulsets")
        );
        assert_eq!(
            reg.by_kind("v1", "Service").map(|r| r.qualified()),
            Some("services".to_owned())
        );
    }
}
