//! The StatefulSet controller: pods `<name>-<ordinal>` created in order (each after the
//! previous one is Running and Ready, for `OrderedReady`), PVCs from `volumeClaimTemplates`
//! named `<template>-<name>-<ordinal>` that outlive the StatefulSet, rolling updates from the
//! highest ordinal down, and the status `kubectl rollout status` reads.

use std::sync::Arc;

use serde_json::{Value, json};

use super::events::{EventKind, record};
use super::replicaset::pod_from_template;
use super::{
    Ctx, create, delete, deleting, meta, owned_by, pod_phase, pod_ready, short_hash, write_status,
};
use crate::store::Store;

fn ordinal_of(sts_name: &str, pod_name: &str) -> Option<usize> {
    pod_name
        .strip_prefix(sts_name)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

pub(crate) fn reconcile(ctx: &Ctx) {
    let store = &ctx.store;
    let (sets, _) = store.list("apps/statefulsets", None);
    for sts in sets {
        if deleting(&sts) {
            continue;
        }
        reconcile_set(store, &StatefulSet::of(&sts));
    }
}

/// A StatefulSet as its controller reads it.
struct StatefulSet<'a> {
    sts: &'a Value,
    ns: &'a str,
    name: &'a str,
    want: usize,
    template: Value,
    claims: Vec<Value>,
    /// The revision of the current template and claims (`controller-revision-hash`).
    revision: String,
    /// `podManagementPolicy: Parallel`: pods do not wait for their predecessors.
    parallel: bool,
}

impl<'a> StatefulSet<'a> {
    /// Reads the fields the controller uses.
    fn of(sts: &'a Value) -> Self {
        let name = meta(sts, "name");
        let template = sts
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(Value::Null);
        let claims: Vec<Value> = sts
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let revision = format!("{name}-{}", short_hash(&json!([template, claims])));
        StatefulSet {
            sts,
            ns: meta(sts, "namespace"),
            name,
            want: sts
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .max(0) as usize,
            template,
            claims,
            revision,
            parallel: sts
                .pointer("/spec/podManagementPolicy")
                .and_then(Value::as_str)
                == Some("Parallel"),
        }
    }

    /// The pod with ordinal `i` among `pods`.
    fn by_ordinal<'p>(&self, pods: &'p [Arc<Value>], i: usize) -> Option<&'p Arc<Value>> {
        pods.iter()
            .find(|p| meta(p, "name") == format!("{}-{i}", self.name))
    }

    /// Records a Normal event of the StatefulSet controller.
    fn event(&self, store: &Store, reason: &str, message: &str) {
        record(
            store,
            self.sts,
            EventKind::Normal,
            reason,
            message,
            "statefulset-controller",
        );
    }
}

/// One StatefulSet: claims first (a pod must never start without them), then missing pods in
/// order, scale-down, the rolling update and the status.
fn reconcile_set(store: &Store, set: &StatefulSet<'_>) {
    let pods: Vec<_> = store
        .list("/pods", Some(set.ns))
        .0
        .into_iter()
        .filter(|p| owned_by(p, set.sts))
        .collect();
    create_claims(store, set);
    create_pods(store, set, &pods);
    let scaling_down = scale_down(store, set, &pods);
    if !scaling_down {
        roll(store, set, &pods);
    }
    write_set_status(store, set);
}

/// Creates every missing claim of the wanted ordinals from `volumeClaimTemplates`.
fn create_claims(store: &Store, set: &StatefulSet<'_>) {
    let (ns, name) = (set.ns, set.name);
    for i in 0..set.want {
        for c in &set.claims {
            let cname = format!("{}-{name}-{i}", meta(c, "name"));
            if store.get("/persistentvolumeclaims", ns, &cname).is_some() {
                continue;
            }
            let mut labels = set
                .sts
                .pointer("/spec/selector/matchLabels")
                .cloned()
                .unwrap_or_else(|| json!({}));
            if let Some(l) = c.pointer("/metadata/labels").and_then(Value::as_object) {
                for (k, v) in l {
                    labels[k] = v.clone();
                }
            }
            let pvc = json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": cname, "namespace": ns, "labels": labels},
                "spec": c.get("spec").cloned().unwrap_or_else(|| json!({})),
            });
            if create(store, "/persistentvolumeclaims", ns, pvc).is_some() {
                set.event(
                    store,
                    "SuccessfulCreate",
                    &format!("create Claim {cname} Pod {name}-{i} in StatefulSet {name} success"),
                );
            }
        }
    }
}

/// Creates missing pods in ordinal order: for `OrderedReady`, the next only once the previous
/// one is Running and Ready; a failed or succeeded pod is deleted to be created again.
fn create_pods(store: &Store, set: &StatefulSet<'_>, pods: &[Arc<Value>]) {
    for i in 0..set.want {
        match set.by_ordinal(pods, i) {
            Some(p) if deleting(p) => break,
            Some(p) if matches!(pod_phase(p), "Failed" | "Succeeded") => {
                delete(store, "/pods", set.ns, meta(p, "name"));
                break;
            }
            Some(p) => {
                if !set.parallel && (!pod_ready(p) || pod_phase(p) != "Running") {
                    break;
                }
            }
            None => {
                let pod_name = format!("{}-{i}", set.name);
                if create(store, "/pods", set.ns, new_pod(set, i)).is_some() {
                    set.event(
                        store,
                        "SuccessfulCreate",
                        &format!(
                            "create Pod {pod_name} in StatefulSet {} successful",
                            set.name
                        ),
                    );
                }
                if !set.parallel {
                    break;
                }
            }
        }
    }
}

/// The pod of ordinal `i`: the template with its stable hostname, the service's subdomain and
/// a volume for each of its claims.
fn new_pod(set: &StatefulSet<'_>, i: usize) -> Value {
    let name = set.name;
    let pod_name = format!("{name}-{i}");
    let labels = json!({
        "controller-revision-hash": set.revision,
        "statefulset.kubernetes.io/pod-name": pod_name,
        "apps.kubernetes.io/pod-index": i.to_string(),
    });
    let mut pod = pod_from_template(set.sts, &set.template, Some(&pod_name), "", &labels);
    pod["spec"]["hostname"] = json!(pod_name);
    if let Some(svc) = set.sts.pointer("/spec/serviceName").and_then(Value::as_str) {
        pod["spec"]["subdomain"] = json!(svc);
    }
    let vols = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut vols: Vec<Value> = vols
        .into_iter()
        .filter(|v| {
            !set.claims
                .iter()
                .any(|c| v["name"] == c["metadata"]["name"])
        })
        .collect();
    for c in &set.claims {
        vols.push(json!({"name": meta(c, "name"), "persistentVolumeClaim": {"claimName": format!("{}-{name}-{i}", meta(c, "name"))}}));
    }
    if !vols.is_empty() {
        pod["spec"]["volumes"] = Value::Array(vols);
    }
    pod
}

/// Scales down from the highest ordinal, one pod at a time; whether any pod is beyond the
/// wanted replicas.
fn scale_down(store: &Store, set: &StatefulSet<'_>, pods: &[Arc<Value>]) -> bool {
    let name = set.name;
    let mut extra: Vec<_> = pods
        .iter()
        .filter(|p| ordinal_of(name, meta(p, "name")).is_none_or(|i| i >= set.want))
        .collect();
    extra.sort_by_key(|p| {
        std::cmp::Reverse(ordinal_of(name, meta(p, "name")).unwrap_or(usize::MAX))
    });
    if let Some(p) = extra.first()
        && !deleting(p)
    {
        delete(store, "/pods", set.ns, meta(p, "name"));
        set.event(
            store,
            "SuccessfulDelete",
            &format!(
                "delete Pod {} in StatefulSet {name} successful",
                meta(p, "name")
            ),
        );
    }
    !extra.is_empty()
}

/// The rolling update: replaces the highest outdated pod once all others are ready.
fn roll(store: &Store, set: &StatefulSet<'_>, pods: &[Arc<Value>]) {
    let all_ready = (0..set.want).all(|i| {
        set.by_ordinal(pods, i)
            .is_some_and(|p| pod_ready(p) && !deleting(p))
    });
    if all_ready
        && let Some(p) = (0..set.want)
            .rev()
            .filter_map(|i| set.by_ordinal(pods, i))
            .find(|p| {
                p.pointer("/metadata/labels/controller-revision-hash")
                    .and_then(Value::as_str)
                    != Some(set.revision.as_str())
            })
    {
        delete(store, "/pods", set.ns, meta(p, "name"));
    }
}

/// The status `kubectl rollout status` reads, from the pods as they are now.
fn write_set_status(store: &Store, set: &StatefulSet<'_>) {
    let revision = &set.revision;
    let pods: Vec<_> = store
        .list("/pods", Some(set.ns))
        .0
        .into_iter()
        .filter(|p| owned_by(p, set.sts) && !deleting(p))
        .collect();
    let ready = pods.iter().filter(|p| pod_ready(p)).count();
    let updated = pods
        .iter()
        .filter(|p| {
            p.pointer("/metadata/labels/controller-revision-hash")
                .and_then(Value::as_str)
                == Some(revision.as_str())
        })
        .count();
    let current_revision = if updated == pods.len() && pods.len() == set.want {
        revision.clone()
    } else {
        set.sts
            .pointer("/status/currentRevision")
            .and_then(Value::as_str)
            .unwrap_or(revision)
            .to_owned()
    };
    let status = json!({
        "observedGeneration": set.sts.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": pods.len(),
        "readyReplicas": ready,
        "currentReplicas": if current_revision == *revision { updated } else { pods.len() - updated },
        "updatedReplicas": updated,
        "availableReplicas": ready,
        "currentRevision": current_revision,
        "updateRevision": revision,
        "collisionCount": 0,
    });
    write_status(store, "apps/statefulsets", set.sts, status);
}
