//! The ReplicaSet controller: keeps `spec.replicas` pods from the template, owned by the
//! ReplicaSet, and reports how many are ready and available.

use serde_json::{Value, json};

use super::events::{EventKind, record};
use super::{
    Ctx, create, delete, deleting, meta, owned_by, owner_ref, pod_phase, pod_ready, write_status,
};

/// Pods that count for an owner: owned, not terminating, not finished.
pub(crate) fn active_pods(
    pods: &[std::sync::Arc<Value>],
    owner: &Value,
) -> Vec<std::sync::Arc<Value>> {
    pods.iter()
        .filter(|p| {
            owned_by(p, owner) && !deleting(p) && !matches!(pod_phase(p), "Succeeded" | "Failed")
        })
        .cloned()
        .collect()
}

/// A pod object from a template, owned by `owner`.
pub(crate) fn pod_from_template(
    owner: &Value,
    template: &Value,
    name: Option<&str>,
    generate_name: &str,
    extra_labels: &Value,
) -> Value {
    let mut md = template
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if !md.is_object() {
        md = json!({});
    }
    if let Some(extra) = extra_labels.as_object() {
        if !md.get("labels").is_some_and(Value::is_object) {
            md["labels"] = json!({});
        }
        for (k, v) in extra {
            md["labels"][k] = v.clone();
        }
    }
    match name {
        Some(n) => md["name"] = json!(n),
        None => md["generateName"] = json!(generate_name),
    }
    md["namespace"] = json!(meta(owner, "namespace"));
    md["ownerReferences"] = json!([owner_ref(owner)]);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": md,
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
    })
}

pub(crate) fn reconcile(ctx: &Ctx) {
    let store = &ctx.store;
    let (sets, _) = store.list("apps/replicasets", None);
    if sets.is_empty() {
        return;
    }
    let (pods, _) = store.list("/pods", None);
    for rs in sets {
        if deleting(&rs) {
            continue;
        }
        let ns = meta(&rs, "namespace");
        let want = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
        let mut mine = active_pods(&pods, &rs);
        if mine.len() < want {
            let template = rs.pointer("/spec/template").cloned().unwrap_or(Value::Null);
            for _ in mine.len()..want {
                let pod = pod_from_template(
                    &rs,
                    &template,
                    None,
                    &format!("{}-", meta(&rs, "name")),
                    &Value::Null,
                );
                if let Some(p) = create(store, "/pods", ns, pod) {
                    record(
                        store,
                        &rs,
                        EventKind::Normal,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", meta(&p, "name")),
                        "replicaset-controller",
                    );
                }
            }
        } else if mine.len() > want {
            // Remove unready pods first, then the youngest, as the real controller prefers.
            mine.sort_by_key(|p| {
                (
                    pod_ready(p),
                    std::cmp::Reverse(meta(p, "creationTimestamp").to_owned()),
                )
            });
            for p in &mine[..mine.len() - want] {
                delete(store, "/pods", ns, meta(p, "name"));
                record(
                    store,
                    &rs,
                    EventKind::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {}", meta(p, "name")),
                    "replicaset-controller",
                );
            }
        }
        let mine = active_pods(&store.list("/pods", Some(ns)).0, &rs);
        let ready = mine.iter().filter(|p| pod_ready(p)).count();
        let status = json!({
            "replicas": mine.len(),
            "fullyLabeledReplicas": mine.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        });
        write_status(store, "apps/replicasets", &rs, status);
    }
}
