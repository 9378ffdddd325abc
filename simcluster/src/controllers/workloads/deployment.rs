//! The Deployment controller: one ReplicaSet per pod template (named and labelled with the
//! template's `pod-template-hash`), scaled to `spec.replicas`; a rolling update moves the
//! replicas over in the real controller's steps (maxSurge, maxUnavailable), Recreate removes
//! the old pods first. Status and conditions are the ones
//! `kubectl rollout status` and kube-rs `is_deployment_completed` read.

use std::sync::Arc;

use serde_json::{Value, json};

use super::events::{EventKind, record};
use super::{
    Ctx, create, deleting, meta, modify, now, owned_by, owner_ref, short_hash, write_status,
};
use crate::store::Store;

const REVISION: &str = "/metadata/annotations/deployment.kubernetes.io~1revision";

/// `maxSurge` resolved against `replicas` (a percentage rounds up), 0 for `Recreate`: what the
/// real controller adds to the replicas in a ReplicaSet's `max-replicas` annotation.
fn max_surge(d: &Value, replicas: i64) -> i64 {
    if d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate") {
        return 0;
    }
    match d.pointer("/spec/strategy/rollingUpdate/maxSurge") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(p)) => p
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .map_or(0, |p| (replicas * p + 99) / 100),
        _ => (replicas * 25 + 99) / 100,
    }
}

/// `maxUnavailable` resolved against `replicas` (a percentage rounds down); when both it and
/// maxSurge come to 0, 1, as the real `ResolveFenceposts` does.
fn max_unavailable(d: &Value, replicas: i64) -> i64 {
    if d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate") {
        return replicas;
    }
    let unavailable = match d.pointer("/spec/strategy/rollingUpdate/maxUnavailable") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(p)) => p
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .map_or(0, |p| replicas * p / 100),
        _ => replicas * 25 / 100,
    };
    if unavailable == 0 && max_surge(d, replicas) == 0 {
        1
    } else {
        unavailable.min(replicas)
    }
}

fn int(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

pub(crate) fn reconcile(ctx: &Ctx) {
    let store = &ctx.store;
    let (deps, _) = store.list("apps/deployments", None);
    if deps.is_empty() {
        return;
    }
    let (sets, _) = store.list("apps/replicasets", None);
    for d in deps {
        if deleting(&d) {
            continue;
        }
        reconcile_deployment(store, &d, &sets);
    }
}

/// One Deployment: its new ReplicaSet grown (or created), the old ones shrunk, the revision
/// and the status written.
fn reconcile_deployment(store: &Store, d: &Value, sets: &[Arc<Value>]) {
    let want = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0);
    let template = d.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    let hash = short_hash(&template);
    let mine: Vec<_> = sets
        .iter()
        .filter(|rs| owned_by(rs, d) && !deleting(rs))
        .cloned()
        .collect();
    let new_rs = mine.iter().find(|rs| {
        rs.pointer("/metadata/labels/pod-template-hash")
            .and_then(Value::as_str)
            == Some(hash.as_str())
    });
    let recreate = d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate");
    let old_sets: Vec<&Value> = mine
        .iter()
        .map(|rs| rs.as_ref())
        .filter(|rs| new_rs.is_none_or(|n| meta(n, "uid") != meta(rs, "uid")))
        .collect();
    let target = new_set_target(d, want, recreate, new_rs.map(AsRef::as_ref), &old_sets);
    let new_rs = match new_rs {
        Some(rs) => {
            scale_new_set(store, d, rs, target);
            Some(rs.clone())
        }
        None => {
            let set = NewSet {
                template: &template,
                hash: &hash,
                desired: want,
                replicas: target,
                revision: mine.len() + 1,
            };
            create_new_set(store, d, &set).map(Arc::new)
        }
    };
    let new_rs = new_rs.as_deref();
    record_revision(store, d, new_rs);
    let new_available = new_rs.map_or(0, |rs| int(rs, "/status/availableReplicas"));
    let new_spec = new_rs.map_or(0, |rs| int(rs, "/spec/replicas"));
    let sizes = if recreate {
        old_sets.iter().map(|rs| (*rs, 0)).collect()
    } else {
        rolling_old_set_sizes(d, want, &old_sets, new_spec, new_available)
    };
    scale_down(store, d, sizes);
    write_deployment_status(store, d, want, new_rs);
}

/// The new ReplicaSet's size, as `reconcileNewReplicaSet` chooses it: a rolling update grows
/// the new set while the total stays within replicas + maxSurge; Recreate starts it once the
/// old pods are gone.
fn new_set_target(
    d: &Value,
    want: i64,
    recreate: bool,
    new_rs: Option<&Value>,
    old_sets: &[&Value],
) -> i64 {
    let old_total: i64 = old_sets.iter().map(|rs| int(rs, "/spec/replicas")).sum();
    let old_pods: i64 = old_sets.iter().map(|rs| int(rs, "/status/replicas")).sum();
    let current_new = new_rs.map_or(0, |rs| int(rs, "/spec/replicas"));
    if current_new >= want {
        want
    } else if recreate {
        if old_total == 0 && old_pods == 0 {
            want
        } else {
            current_new
        }
    } else {
        let room = want + max_surge(d, want) - old_total - current_new;
        current_new + room.min(want - current_new).max(0)
    }
}

/// Scales the existing new ReplicaSet to `want`, with the desired- and max-replicas
/// annotations.
fn scale_new_set(store: &Store, d: &Value, rs: &Value, want: i64) {
    if int(rs, "/spec/replicas") == want {
        return;
    }
    let desired = int(d, "/spec/replicas").max(0);
    let max = (desired + max_surge(d, desired)).to_string();
    modify(store, "apps/replicasets", rs, |o| {
        o["spec"]["replicas"] = json!(want);
        let a = &mut o["metadata"]["annotations"];
        a["deployment.kubernetes.io/desired-replicas"] = json!(desired.to_string());
        a["deployment.kubernetes.io/max-replicas"] = json!(max);
    });
    record(
        store,
        d,
        EventKind::Normal,
        "ScalingReplicaSet",
        &format!("Scaled replica set {} to {want}", meta(rs, "name")),
        "deployment-controller",
    );
}

/// A ReplicaSet to create for the Deployment's current template.
struct NewSet<'a> {
    template: &'a Value,
    /// The template's `pod-template-hash`.
    hash: &'a str,
    /// The Deployment's replicas.
    desired: i64,
    /// The set's own replicas.
    replicas: i64,
    revision: usize,
}

/// Creates the ReplicaSet for the current template, `{name}-{hash}`, labelled and selected by
/// its hash.
fn create_new_set(store: &Store, d: &Value, set: &NewSet<'_>) -> Option<Value> {
    let hash = set.hash;
    let mut tpl = set.template.clone();
    tpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    let mut selector = d
        .pointer("/spec/selector")
        .cloned()
        .unwrap_or_else(|| json!({}));
    selector["matchLabels"]["pod-template-hash"] = json!(hash);
    let mut labels = set
        .template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    labels["pod-template-hash"] = json!(hash);
    let rs_name = format!("{}-{hash}", meta(d, "name"));
    let (desired, want) = (set.desired, set.replicas);
    let rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": rs_name,
            "namespace": meta(d, "namespace"),
            "labels": labels,
            "annotations": {"deployment.kubernetes.io/desired-replicas": desired.to_string(), "deployment.kubernetes.io/max-replicas": (desired + max_surge(d, desired)).to_string(), "deployment.kubernetes.io/revision": set.revision.to_string()},
            "ownerReferences": [owner_ref(d)],
        },
        "spec": {"replicas": want, "selector": selector, "template": tpl},
    });
    let created = create(store, "apps/replicasets", meta(d, "namespace"), rs);
    if created.is_some() {
        record(
            store,
            d,
            EventKind::Normal,
            "ScalingReplicaSet",
            &format!("Scaled up replica set {rs_name} to {want}"),
            "deployment-controller",
        );
    }
    created
}

/// Records the current ReplicaSet's revision on the Deployment, which
/// `kubectl rollout history` reads.
fn record_revision(store: &Store, d: &Value, new_rs: Option<&Value>) {
    let revision = new_rs.and_then(|rs| rs.pointer(REVISION)).cloned();
    if let Some(rev) = revision.filter(|r| d.pointer(REVISION) != Some(r)) {
        modify(store, "apps/deployments", d, |o| {
            o["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = rev;
        });
    }
}

/// The old sets' sizes in a rolling update, as `reconcileOldReplicaSets` chooses them: scaled
/// down only as far as maxUnavailable allows, unhealthy replicas first, then what the
/// available pods above the minimum can spare. (Recreate removes the old pods at once.)
fn rolling_old_set_sizes<'a>(
    d: &Value,
    want: i64,
    old_sets: &[&'a Value],
    new_spec: i64,
    new_available: i64,
) -> Vec<(&'a Value, i64)> {
    let old_total: i64 = old_sets.iter().map(|rs| int(rs, "/spec/replicas")).sum();
    let min_available = want - max_unavailable(d, want);
    let new_unavailable = (new_spec - new_available).max(0);
    let mut budget = old_total + new_spec - min_available - new_unavailable;
    let mut sizes: Vec<i64> = old_sets
        .iter()
        .map(|rs| int(rs, "/spec/replicas"))
        .collect();
    for (rs, size) in old_sets.iter().zip(sizes.iter_mut()) {
        let unhealthy = (*size - int(rs, "/status/availableReplicas")).max(0);
        let cut = unhealthy.min(budget.max(0));
        *size -= cut;
        budget -= cut;
    }
    let available: i64 = old_sets
        .iter()
        .map(|rs| int(rs, "/status/availableReplicas"))
        .sum::<i64>()
        + new_available;
    let mut spare = (available - min_available).max(0);
    for size in &mut sizes {
        let cut = (*size).min(spare);
        *size -= cut;
        spare -= cut;
    }
    old_sets.iter().copied().zip(sizes).collect()
}

/// Scales each old ReplicaSet to its new size, with an event for each change.
fn scale_down(store: &Store, d: &Value, sizes: Vec<(&Value, i64)>) {
    for (rs, size) in sizes {
        if int(rs, "/spec/replicas") != size {
            modify(store, "apps/replicasets", rs, |o| {
                o["spec"]["replicas"] = json!(size);
            });
            record(
                store,
                d,
                EventKind::Normal,
                "ScalingReplicaSet",
                &format!("Scaled down replica set {} to {size}", meta(rs, "name")),
                "deployment-controller",
            );
        }
    }
}

/// The Deployment's status from all its ReplicaSets: the counts and the `Available` and
/// `Progressing` conditions (their times kept while they do not change).
fn write_deployment_status(store: &Store, d: &Value, want: i64, new_rs: Option<&Value>) {
    let new_available = new_rs.map_or(0, |rs| int(rs, "/status/availableReplicas"));
    let new_replicas = new_rs.map_or(0, |rs| int(rs, "/status/replicas"));
    let all: Vec<_> = store
        .list("apps/replicasets", Some(meta(d, "namespace")))
        .0
        .into_iter()
        .filter(|rs| owned_by(rs, d))
        .collect();
    let replicas: i64 = all.iter().map(|rs| int(rs, "/status/replicas")).sum();
    let ready: i64 = all.iter().map(|rs| int(rs, "/status/readyReplicas")).sum();
    let available: i64 = all
        .iter()
        .map(|rs| int(rs, "/status/availableReplicas"))
        .sum();
    let complete = new_replicas == want && new_available >= want && replicas == want;
    let old = d.get("status").cloned().unwrap_or_else(|| json!({}));
    let cond = |ty: &str, status: bool, reason: &str, message: String| {
        let s = if status { "True" } else { "False" };
        let prev = old
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
            .cloned();
        let (trans, upd) = match &prev {
            Some(p) if p["status"] == s && p["reason"] == reason => {
                (p["lastTransitionTime"].clone(), p["lastUpdateTime"].clone())
            }
            Some(p) if p["status"] == s => (p["lastTransitionTime"].clone(), json!(now())),
            _ => (json!(now()), json!(now())),
        };
        json!({"type": ty, "status": s, "reason": reason, "message": message, "lastTransitionTime": trans, "lastUpdateTime": upd})
    };
    let rs_name = new_rs
        .map(|rs| meta(rs, "name").to_owned())
        .unwrap_or_default();
    let available_cond = if available >= want {
        cond(
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        cond(
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    let progressing = if complete {
        cond(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
        )
    } else {
        cond(
            "Progressing",
            true,
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs_name}\" is progressing."),
        )
    };
    let mut status = json!({
        "observedGeneration": d.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": replicas,
        "updatedReplicas": new_replicas,
        "readyReplicas": ready,
        "availableReplicas": available,
        "conditions": [available_cond, progressing],
    });
    if replicas - available > 0 {
        status["unavailableReplicas"] = json!(replicas - available);
    }
    write_status(store, "apps/deployments", d, status);
}
