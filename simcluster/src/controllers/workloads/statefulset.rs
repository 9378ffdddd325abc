//! The StatefulSet controller: pods `<name>-<ordinal>` created in order (each after the
//! previous one is Running and Ready, for `OrderedReady`), PVCs from `volumeClaimTemplates`
//! named `<template>-<name>-<ordinal>` that outlive the StatefulSet, rolling updates from the
//! highest ordinal down, and the status `kubectl rollout status` reads.

use serde_json::{Value, json};

use super::events::{EventKind, record};
use super::replicaset::pod_from_template;
use super::{
    Ctx, create, delete, deleting, meta, owned_by, pod_phase, pod_ready, short_hash, write_status,
};

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
        let ns = meta(&sts, "namespace");
        let name = meta(&sts, "name");
        let want = sts
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
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
        let parallel = sts
            .pointer("/spec/podManagementPolicy")
            .and_then(Value::as_str)
            == Some("Parallel");
        let pods: Vec<_> = store
            .list("/pods", Some(ns))
            .0
            .into_iter()
            .filter(|p| owned_by(p, &sts))
            .collect();
        let by_ordinal = |i: usize| {
            pods.iter()
                .find(|p| meta(p, "name") == format!("{name}-{i}"))
        };

        // PVCs first: a pod must never start without its claims.
        for i in 0..want {
            for c in &claims {
                let cname = format!("{}-{name}-{i}", meta(c, "name"));
                if store.get("/persistentvolumeclaims", ns, &cname).is_none() {
                    let mut labels = sts
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
                        record(
                            store,
                            &sts,
                            EventKind::Normal,
                            "SuccessfulCreate",
                            &format!(
                                "create Claim {cname} Pod {name}-{i} in StatefulSet {name} success"
                            ),
                            "statefulset-controller",
                        );
                    }
                }
            }
        }

        // Create missing pods in order.
        for i in 0..want {
            match by_ordinal(i) {
                Some(p) if deleting(p) => break,
                Some(p) if matches!(pod_phase(p), "Failed" | "Succeeded") => {
                    delete(store, "/pods", ns, meta(p, "name"));
                    break;
                }
                Some(p) => {
                    if !parallel && (!pod_ready(p) || pod_phase(p) != "Running") {
                        break;
                    }
                }
                None => {
                    let pod_name = format!("{name}-{i}");
                    let labels = json!({
                        "controller-revision-hash": revision,
                        "statefulset.kubernetes.io/pod-name": pod_name,
                        "apps.kubernetes.io/pod-index": i.to_string(),
                    });
                    let mut pod = pod_from_template(&sts, &template, Some(&pod_name), "", &labels);
                    pod["spec"]["hostname"] = json!(pod_name);
                    if let Some(svc) = sts.pointer("/spec/serviceName").and_then(Value::as_str) {
                        pod["spec"]["subdomain"] = json!(svc);
                    }
                    let vols = pod["spec"]["volumes"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let mut vols: Vec<Value> = vols
                        .into_iter()
                        .filter(|v| !claims.iter().any(|c| v["name"] == c["metadata"]["name"]))
                        .collect();
                    for c in &claims {
                        vols.push(json!({"name": meta(c, "name"), "persistentVolumeClaim": {"claimName": format!("{}-{name}-{i}", meta(c, "name"))}}));
                    }
                    if !vols.is_empty() {
                        pod["spec"]["volumes"] = Value::Array(vols);
                    }
                    if create(store, "/pods", ns, pod).is_some() {
                        record(
                            store,
                            &sts,
                            EventKind::Normal,
                            "SuccessfulCreate",
                            &format!("create Pod {pod_name} in StatefulSet {name} successful"),
                            "statefulset-controller",
                        );
                    }
                    if !parallel {
                        break;
                    }
                }
            }
        }

        // Scale down from the highest ordinal, one at a time.
        let mut extra: Vec<_> = pods
            .iter()
            .filter(|p| ordinal_of(name, meta(p, "name")).is_none_or(|i| i >= want))
            .collect();
        extra.sort_by_key(|p| {
            std::cmp::Reverse(ordinal_of(name, meta(p, "name")).unwrap_or(usize::MAX))
        });
        if let Some(p) = extra.first()
            && !deleting(p)
        {
            delete(store, "/pods", ns, meta(p, "name"));
            record(
                store,
                &sts,
                EventKind::Normal,
                "SuccessfulDelete",
                &format!(
                    "delete Pod {} in StatefulSet {name} successful",
                    meta(p, "name")
                ),
                "statefulset-controller",
            );
        }

        // Rolling update: replace the highest outdated pod once all others are ready.
        let all_ready =
            (0..want).all(|i| by_ordinal(i).is_some_and(|p| pod_ready(p) && !deleting(p)));
        if all_ready
            && extra.is_empty()
            && let Some(p) = (0..want).rev().filter_map(by_ordinal).find(|p| {
                p.pointer("/metadata/labels/controller-revision-hash")
                    .and_then(Value::as_str)
                    != Some(revision.as_str())
            })
        {
            delete(store, "/pods", ns, meta(p, "name"));
        }

        let pods: Vec<_> = store
            .list("/pods", Some(ns))
            .0
            .into_iter()
            .filter(|p| owned_by(p, &sts) && !deleting(p))
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
        let current_revision = if updated == pods.len() && pods.len() == want {
            revision.clone()
        } else {
            sts.pointer("/status/currentRevision")
                .and_then(Value::as_str)
                .unwrap_or(&revision)
                .to_owned()
        };
        let status = json!({
            "observedGeneration": sts.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "replicas": pods.len(),
            "readyReplicas": ready,
            "currentReplicas": if current_revision == revision { updated } else { pods.len() - updated },
            "updatedReplicas": updated,
            "availableReplicas": ready,
            "currentRevision": current_revision,
            "updateRevision": revision,
            "collisionCount": 0,
        });
        write_status(store, "apps/statefulsets", &sts, status);
    }
}
