//! The Kubernetes gate: restored objects equal the backed-up, cleaned objects after both are
//! normalised (server-assigned fields removed).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Finding, FindingKind, Gate, Verdict};

/// Metadata fields the API server assigns; they differ on every cluster.
const SERVER_METADATA: [&str; 9] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
];

/// Annotations that tools and controllers write; they are not part of what was backed up.
const VOLATILE_ANNOTATION_PREFIXES: [&str; 7] = [
    // The restore's own record of which backup it restored (see `restore::RESTORE_ANNOTATION`).
    "rebuild-rehearsal/",
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "pv.kubernetes.io/",
    "volume.beta.kubernetes.io/",
    "volume.kubernetes.io/",
    "control-plane.alpha.kubernetes.io/",
];

/// Finalizers the API server's admission adds to every object of a kind (storage object in-use
/// protection); a backup taken without them and a restore with them declare the same object.
const SERVER_FINALIZERS: [&str; 2] = [
    "kubernetes.io/pvc-protection",
    "kubernetes.io/pv-protection",
];

/// Removes what a cluster assigns rather than what a user declared: server metadata,
/// volatile annotations, `status`, a Service's allocated cluster IPs (a headless `None` is
/// kept), a PVC's bound volume name, a ServiceAccount's token secrets, a Namespace's
/// finalizers and the storage protection finalizers. Idempotent.
pub fn normalise_object(object: &Value) -> Value {
    let mut object = object.clone();
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if kind == "ServiceAccount" {
            map.remove("secrets");
        }
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_METADATA {
            meta.remove(field);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.retain(|key, _| {
                !VOLATILE_ANNOTATION_PREFIXES
                    .iter()
                    .any(|p| key.starts_with(p))
            });
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
        if let Some(finalizers) = meta.get_mut("finalizers").and_then(Value::as_array_mut) {
            finalizers.retain(|f| !f.as_str().is_some_and(|f| SERVER_FINALIZERS.contains(&f)));
            if finalizers.is_empty() {
                meta.remove("finalizers");
            }
        }
        if meta
            .get("labels")
            .and_then(Value::as_object)
            .is_some_and(|l| l.is_empty())
        {
            meta.remove("labels");
        }
    }
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        match kind.as_str() {
            "Service" if spec.get("clusterIP").and_then(Value::as_str) != Some("None") => {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            "PersistentVolumeClaim" => {
                spec.remove("volumeName");
            }
            "Namespace" => {
                spec.remove("finalizers");
            }
            _ => {}
        }
        if spec.is_empty() {
            object.as_object_mut().map(|m| m.remove("spec"));
        }
    }
    object
}

/// `kind namespace/name` (or `kind name` when cluster-scoped), with the API group when it has one.
fn object_key(object: &Value) -> String {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("<no kind>");
    let meta = object.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<no name>");
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    let kind = if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    };
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Collects `path: expected -> actual` lines for every leaf that differs.
fn diff_values(
    path: &str,
    want: Option<&Value>,
    got: Option<&Value>,
    redact: bool,
    out: &mut Vec<String>,
) {
    match (want, got) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                diff_values(
                    &format!("{path}.{key}"),
                    a.get(key),
                    b.get(key),
                    redact,
                    out,
                );
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_values(&format!("{path}[{i}]"), Some(x), Some(y), redact, out);
            }
        }
        // A field the backup does not declare under `spec` (or a top-level `type`) is one the
        // API server defaulted on apply (`imagePullPolicy`, `strategy`, a PVC's class): not drift.
        (None, Some(_)) if path.starts_with(".spec.") || path == ".spec" || path == ".type" => {}
        (a, b) if a != b => {
            let show = |v: Option<&Value>| match v {
                None => "<absent>".to_owned(),
                Some(_) if redact => "<redacted>".to_owned(),
                Some(v) => v.to_string(),
            };
            out.push(format!(
                "{path}: backup {} -> restored {}",
                show(a),
                show(b)
            ));
        }
        _ => {}
    }
}

/// Kubernetes objects: every backed-up (cleaned) object exists after restore and is equal to
/// it after normalisation; restored objects absent from the backup are findings too. Fields
/// absent from the backup but present after restore are tolerated under `spec` and as a
/// top-level `type` only, where the API server defaults them; everything the backup declares
/// must be equal, and extra data, labels or annotations are findings. Secret values never
/// appear in findings.
pub fn kubernetes_objects(backed_up: &[Value], restored: &[Value]) -> Verdict {
    let index = |objects: &[Value]| -> BTreeMap<String, Value> {
        objects
            .iter()
            .map(|o| (object_key(o), normalise_object(o)))
            .collect()
    };
    let want = index(backed_up);
    let got = index(restored);
    let mut findings = Vec::new();
    for (key, expected) in &want {
        match got.get(key) {
            None => findings.push(Finding::new(
                key,
                FindingKind::Missing,
                "object is missing after restore",
            )),
            Some(actual) => {
                let redact = expected.get("kind").and_then(Value::as_str) == Some("Secret");
                let mut paths = Vec::new();
                diff_values("", Some(expected), Some(actual), redact, &mut paths);
                if paths.is_empty() {
                    continue;
                }
                const SHOWN: usize = 20;
                let more = paths.len().saturating_sub(SHOWN);
                let mut detail = format!(
                    "object differs at {} path(s): {}",
                    paths.len(),
                    paths[..paths.len().min(SHOWN)].join("; ")
                );
                if more > 0 {
                    detail.push_str(&format!("; and {more} more"));
                }
                findings.push(Finding::new(key, FindingKind::Mismatch, detail));
            }
        }
    }
    for key in got.keys().filter(|k| !want.contains_key(*k)) {
        findings.push(Finding::new(
            key,
            FindingKind::Unexpected,
            "object exists after restore but not in the backup",
        ));
    }
    Verdict::from_findings(Gate::KubernetesObjects, findings)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config_map(level: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "app-config", "namespace": "titanium-prod", "labels": {"app": "titanium"}},
            "data": {"LOG_LEVEL": level, "DB_HOST": "postgresql-service"}
        })
    }

    fn served(mut object: Value) -> Value {
        let meta = object["metadata"].as_object_mut().unwrap();
        meta.insert("uid".into(), json!("5f0c..."));
        meta.insert("resourceVersion".into(), json!("4711"));
        meta.insert("creationTimestamp".into(), json!("2026-01-01T00:00:00Z"));
        meta.insert(
            "managedFields".into(),
            json!([{"manager": "rebuild-rehearsal"}]),
        );
        meta.insert(
            "annotations".into(),
            json!({"kubectl.kubernetes.io/last-applied-configuration": "{}"}),
        );
        object
    }

    #[test]
    fn restored_objects_equal_after_normalisation() {
        let service = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "prod-user-service", "namespace": "titanium-prod"},
            "spec": {"clusterIP": "10.96.247.138", "clusterIPs": ["10.96.247.138"], "ports": [{"port": 8001}]}});
        let mut restored_service = service.clone();
        restored_service["spec"]["clusterIP"] = json!("10.0.0.9");
        restored_service["spec"]["clusterIPs"] = json!(["10.0.0.9"]);
        restored_service["status"] = json!({"loadBalancer": {}});
        let verdict = kubernetes_objects(
            &[config_map("info"), service],
            &[served(config_map("info")), restored_service],
        );
        assert!(verdict.passed, "{verdict}");
    }

    #[test]
    fn changed_config_map_names_the_path_and_both_values() {
        let verdict = kubernetes_objects(&[config_map("info")], &[served(config_map("debug"))]);
        assert_eq!(verdict.findings.len(), 1);
        let f = &verdict.findings[0];
        assert_eq!(
            (f.subject.as_str(), f.kind),
            ("ConfigMap titanium-prod/app-config", FindingKind::Mismatch)
        );
        assert!(
            f.detail
                .contains(".data.LOG_LEVEL: backup \"info\" -> restored \"debug\""),
            "{}",
            f.detail
        );
    }

    #[test]
    fn missing_and_unexpected_objects() {
        let extra = json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "titanium-prod"}});
        let verdict = kubernetes_objects(&[config_map("info")], &[extra]);
        let found: Vec<_> = verdict
            .findings
            .iter()
            .map(|f| (f.subject.as_str(), f.kind))
            .collect();
        assert_eq!(
            found,
            [
                ("ConfigMap titanium-prod/app-config", FindingKind::Missing),
                (
                    "Gateway.networking.istio.io titanium-prod/gw",
                    FindingKind::Unexpected
                )
            ]
        );
    }

    #[test]
    fn secret_values_never_appear() {
        let secret = |v: &str| {
            json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "pg", "namespace": "titanium-prod"}, "data": {"password": v}})
        };
        let verdict = kubernetes_objects(&[secret("c2VjcmV0MQ==")], &[secret("c2VjcmV0Mg==")]);
        let text = serde_json::to_string(&verdict).unwrap();
        assert!(!verdict.passed);
        assert!(!text.contains("c2VjcmV0"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn server_defaults_in_spec_are_tolerated_but_extra_data_is_not() {
        let mut defaulted = config_map("info");
        defaulted["spec"] = json!({"replicas": 1});
        let mut restored = defaulted.clone();
        restored["spec"]["revisionHistoryLimit"] = json!(10);
        assert!(kubernetes_objects(&[defaulted.clone()], &[restored.clone()]).passed);
        restored["spec"]["replicas"] = json!(0);
        assert!(
            !kubernetes_objects(&[defaulted.clone()], &[restored]).passed,
            "declared fields must match"
        );
        let mut extra = defaulted.clone();
        extra["data"]["EXTRA"] = json!("1");
        let verdict = kubernetes_objects(&[defaulted], &[extra]);
        assert!(
            verdict.findings[0]
                .detail
                .contains(".data.EXTRA: backup <absent>"),
            "{verdict}"
        );
    }

    #[test]
    fn normalisation_is_idempotent_and_keeps_headless() {
        let headless = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pg", "namespace": "n"},
            "spec": {"clusterIP": "None"}});
        let once = normalise_object(&served(headless));
        assert_eq!(normalise_object(&once), once);
        assert_eq!(once["spec"]["clusterIP"], json!("None"));
        assert!(once["metadata"].get("annotations").is_none());
    }

    #[test]
    fn storage_protection_finalizers_are_ignored_but_others_are_not() {
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "n"}, "spec": {"accessModes": ["ReadWriteOnce"]}});
        let mut restored = served(pvc.clone());
        restored["metadata"]["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
        assert!(
            kubernetes_objects(std::slice::from_ref(&pvc), std::slice::from_ref(&restored)).passed
        );
        restored["metadata"]["finalizers"] =
            json!(["kubernetes.io/pvc-protection", "example.com/hold"]);
        let verdict = kubernetes_objects(&[pvc], &[restored]);
        assert!(
            !verdict.passed,
            "a finalizer nobody declared must be reported"
        );
        assert!(
            verdict.findings[0].detail.contains("example.com/hold"),
            "{verdict}"
        );
    }
}
