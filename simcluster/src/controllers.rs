//! Built-in control loops of the API server side: namespace termination, garbage collection
//! of dependents (background, foreground and orphan propagation), the `default`
//! ServiceAccount and the `kube-root-ca.crt` ConfigMap of each namespace, and the storage
//! object in-use protection (the `kubernetes.io/pvc-protection` and `kubernetes.io/pv-protection`
//! finalizers are removed once nothing uses the claim or volume).
//!
//! The loop wakes on store events that can matter (deletions, owner references, pending
//! deletions, namespaces), then reconciles everything once. It writes only through `api`.

pub(crate) mod workloads;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::api::{self, DeleteOptions, Propagation, WriteOptions};
use crate::store::{EventType, Mutation, Store, WatchEvent};

fn meta<'a>(obj: &'a Value, f: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(f))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn relevant(ev: &WatchEvent) -> bool {
    let pod_done = ev.key == "/pods"
        && matches!(
            ev.object.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
    ev.kind == EventType::Deleted
        || pod_done
        || ev.key == "/namespaces"
        || ev.object.pointer("/metadata/ownerReferences").is_some()
        || ev.object.pointer("/metadata/deletionTimestamp").is_some()
}

/// Run the control loops until `stop` is cancelled.
pub(crate) async fn run(store: Arc<Store>, stop: CancellationToken) {
    let mut rx = store.subscribe();
    reconcile(&store);
    loop {
        let mut dirty = false;
        tokio::select! {
            () = stop.cancelled() => return,
            r = rx.recv() => match r {
                Ok(ev) => dirty |= relevant(&ev),
                Err(RecvError::Lagged(_)) => dirty = true,
                Err(RecvError::Closed) => return,
            },
        }
        loop {
            match rx.try_recv() {
                Ok(ev) => dirty |= relevant(&ev),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => dirty = true,
                Err(_) => break,
            }
        }
        if dirty {
            reconcile(&store);
        }
    }
}

/// One pass of every loop.
pub(crate) fn reconcile(store: &Store) {
    default_service_accounts(store);
    root_ca_config_maps(store);
    storage_protection(store);
    garbage_collect(store);
    terminate_namespaces(store);
}

fn default_service_accounts(store: &Store) {
    let Some(rt) = store.registry().by_kind("v1", "ServiceAccount").cloned() else {
        return;
    };
    let (namespaces, _) = store.list("/namespaces", None);
    for ns in namespaces {
        if ns.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let name = meta(&ns, "name");
        if store.get("/serviceaccounts", name, "default").is_none() {
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}});
            if let Err(e) = api::create(store, &rt, name, sa, &WriteOptions::default())
                && e.code != 409
                && e.code != 403
            {
                tracing::warn!(namespace = name, error = %e, "creating the default service account failed");
            }
        }
    }
}

/// The finalizer the `StorageObjectInUseProtection` admission step puts on every claim.
pub(crate) const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The finalizer the same admission step puts on every PersistentVolume.
pub(crate) const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// The name of the ConfigMap kube-controller-manager's root CA publisher keeps in every
/// namespace.
const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// A self-signed certificate whose key was thrown away when it was made: the simulator serves
/// plain HTTP, so nothing verifies against it, but pods and clients that read
/// `kube-root-ca.crt` find a well-formed PEM certificate as on a real cluster.
const ROOT_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBlTCCATugAwIBAgIUJNH7Rga8bGfY+ieOgbhyJSmPhp8wCgYIKoZIzj0EAwIw\nHzEdMBsGA1UEAwwUc2ltY2x1c3Rlci11bnVzZWQtY2EwIBcNMjYxMjAzMDU1ODA1\nWhgPMjEyNjExMDkwNTU4MDVaMB8xHTAbBgNVBAMMFHNpbWNsdXN0ZXItdW51c2Vk\nLWNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEoQnGTTKxyfc/5wIb0YXJF6Hn\nMhnOUscjRNghfWT3GXEal9tLl2JNKoX6tYGYJtMMhJGxC1Thq+PFcYouMIbGAqNT\nMFEwHQYDVR0OBBYEFKIXdzUpuRQvPY2Mn7CRmkm/WPzbMB8GA1UdIwQYMBaAFKIX\ndzUpuRQvPY2Mn7CRmkm/WPzbMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID\nSAAwRQIhANKKvsIC5dLyXjlfgd5H3dr+oQ54DqcxbikEx5ALIqtyAiAEo/GgxFVW\n1EC7lCArH6/nnrO2tKM4S6kT2DXfr7CMCw==\n-----END CERTIFICATE-----";

/// `kube-root-ca.crt` in every namespace that is not terminating, recreated when deleted and
/// reset when its data is changed, as the real publisher does.
fn root_ca_config_maps(store: &Store) {
    let Some(rt) = store.registry().by_kind("v1", "ConfigMap").cloned() else {
        return;
    };
    let data = json!({"ca.crt": ROOT_CA_PEM});
    let (namespaces, _) = store.list("/namespaces", None);
    for ns in namespaces {
        if ns.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let name = meta(&ns, "name");
        let result = match store.get("/configmaps", name, ROOT_CA_CONFIG_MAP) {
            None => {
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ROOT_CA_CONFIG_MAP, "namespace": name}, "data": data});
                api::create(store, &rt, name, cm, &WriteOptions::default()).map(drop)
            }
            Some(cm) if cm.get("data") != Some(&data) => {
                let mut fixed = cm.as_ref().clone();
                fixed["data"] = data.clone();
                api::update(
                    store,
                    &rt,
                    name,
                    ROOT_CA_CONFIG_MAP,
                    fixed,
                    None,
                    &WriteOptions::default(),
                )
                .map(drop)
            }
            Some(_) => Ok(()),
        };
        if let Err(e) = result
            && e.code != 409
            && e.code != 403
        {
            tracing::warn!(namespace = name, error = %e, "publishing kube-root-ca.crt failed");
        }
    }
}

/// The pvc-protection and pv-protection controllers: a claim being deleted keeps its
/// finalizer while a scheduled pod that has not finished uses it; a volume being deleted keeps
/// its finalizer while it is `Bound`.
fn storage_protection(store: &Store) {
    let (claims, _) = store.list("/persistentvolumeclaims", None);
    for pvc in claims
        .iter()
        .filter(|c| c.pointer("/metadata/deletionTimestamp").is_some())
    {
        if !api::finalizers(pvc).iter().any(|f| f == PVC_PROTECTION) {
            continue;
        }
        let ns = meta(pvc, "namespace");
        let in_use = store.list("/pods", Some(ns)).0.iter().any(|p| {
            p.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
                && !matches!(
                    p.pointer("/status/phase").and_then(Value::as_str),
                    Some("Succeeded" | "Failed")
                )
                && p.pointer("/spec/volumes")
                    .and_then(Value::as_array)
                    .is_some_and(|vs| {
                        vs.iter().any(|v| {
                            v.pointer("/persistentVolumeClaim/claimName")
                                .and_then(Value::as_str)
                                == Some(meta(pvc, "name"))
                        })
                    })
        });
        if !in_use {
            remove_finalizer(store, "/persistentvolumeclaims", pvc, PVC_PROTECTION);
        }
    }
    let (volumes, _) = store.list("/persistentvolumes", None);
    for pv in volumes
        .iter()
        .filter(|v| v.pointer("/metadata/deletionTimestamp").is_some())
    {
        let bound = pv.pointer("/status/phase").and_then(Value::as_str) == Some("Bound");
        if !bound && api::finalizers(pv).iter().any(|f| f == PV_PROTECTION) {
            remove_finalizer(store, "/persistentvolumes", pv, PV_PROTECTION);
        }
    }
}

fn delete_obj(store: &Store, key: &str, obj: &Value, propagation: Propagation) {
    let Some(rt) = store.registry().by_key(key).cloned() else {
        return;
    };
    let opts = DeleteOptions {
        propagation: Some(propagation),
        uid: Some(meta(obj, "uid").to_owned()),
        ..DeleteOptions::default()
    };
    if let Err(e) = api::delete(store, &rt, meta(obj, "namespace"), meta(obj, "name"), &opts)
        && e.code != 404
        && e.code != 409
    {
        tracing::warn!(kind = rt.kind, name = meta(obj, "name"), error = %e, "garbage collection failed");
    }
}

fn remove_finalizer(store: &Store, key: &str, obj: &Value, finalizer: &str) {
    let Some(rt) = store.registry().by_key(key).cloned() else {
        return;
    };
    let fins: Vec<String> = api::finalizers(obj)
        .into_iter()
        .filter(|f| f != finalizer)
        .collect();
    let patch =
        json!({"metadata": {"finalizers": fins, "resourceVersion": meta(obj, "resourceVersion")}});
    let body = patch.to_string();
    if let Err(e) = api::patch(
        store,
        &rt,
        meta(obj, "namespace"),
        meta(obj, "name"),
        crate::patch::PatchType::Merge,
        body.as_bytes(),
        None,
        &WriteOptions::default(),
    ) && e.code != 404
        && e.code != 409
    {
        tracing::warn!(kind = rt.kind, name = meta(obj, "name"), error = %e, "removing finalizer failed");
    }
}

fn garbage_collect(store: &Store) {
    let all = store.all_objects();
    let by_uid: HashMap<&str, &Arc<Value>> = all.iter().map(|(_, o)| (meta(o, "uid"), o)).collect();
    let mut referenced: HashSet<String> = HashSet::new();
    for (key, obj) in &all {
        let Some(refs) = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
        else {
            continue;
        };
        if refs.is_empty() || obj.pointer("/metadata/deletionTimestamp").is_some() {
            for r in refs {
                referenced.insert(
                    r.get("uid")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            continue;
        }
        let mut keep = Vec::new();
        let mut foreground_owner = false;
        let mut alive = 0;
        let mut orphaning = 0;
        for r in refs {
            let uid = r.get("uid").and_then(Value::as_str).unwrap_or_default();
            match by_uid.get(uid) {
                Some(owner)
                    if meta(owner, "name")
                        == r.get("name").and_then(Value::as_str).unwrap_or_default() =>
                {
                    let fins = api::finalizers(owner);
                    let deleting = owner.pointer("/metadata/deletionTimestamp").is_some();
                    if deleting && fins.iter().any(|f| f == "orphan") {
                        orphaning += 1;
                        continue;
                    }
                    if deleting && fins.iter().any(|f| f == "foregroundDeletion") {
                        foreground_owner = true;
                    }
                    referenced.insert(uid.to_owned());
                    alive += 1;
                    keep.push(r.clone());
                }
                _ => {}
            }
        }
        if foreground_owner
            && alive == keep.len()
            && keep.iter().all(|r| {
                by_uid
                    .get(r.get("uid").and_then(Value::as_str).unwrap_or_default())
                    .is_some_and(|o| o.pointer("/metadata/deletionTimestamp").is_some())
            })
        {
            delete_obj(store, key, obj, Propagation::Foreground);
        } else if alive == 0 && orphaning == 0 {
            delete_obj(store, key, obj, Propagation::Background);
        } else if keep.len() != refs.len() {
            let ns = meta(obj, "namespace").to_owned();
            let name = meta(obj, "name").to_owned();
            let uid = meta(obj, "uid").to_owned();
            let keep = keep.clone();
            let _ = store.mutate(key, &ns, &name, |_, cur| match cur {
                Some(c) if meta(c, "uid") == uid => {
                    let mut o = c.as_ref().clone();
                    o["metadata"]["ownerReferences"] = Value::Array(keep);
                    Ok(Mutation::Put(o))
                }
                _ => Ok(Mutation::Unchanged),
            });
        }
    }
    // Owners waiting for their dependents.
    for (key, obj) in &all {
        if obj.pointer("/metadata/deletionTimestamp").is_none() {
            continue;
        }
        let fins = api::finalizers(obj);
        for f in ["foregroundDeletion", "orphan"] {
            if fins.iter().any(|x| x == f) && !referenced.contains(meta(obj, "uid")) {
                remove_finalizer(store, key, obj, f);
            }
        }
    }
}

fn terminate_namespaces(store: &Store) {
    let (namespaces, _) = store.list("/namespaces", None);
    for ns in namespaces {
        if ns.pointer("/metadata/deletionTimestamp").is_none() {
            continue;
        }
        let name = meta(&ns, "name").to_owned();
        let keys = store.keys_in_namespace(&name);
        if keys.is_empty() {
            api::finalize_namespace(store, &name);
            continue;
        }
        for key in keys {
            let (items, _) = store.list(&key, Some(&name));
            for item in items {
                if item.pointer("/metadata/deletionTimestamp").is_none() {
                    delete_obj(store, &key, &item, Propagation::Background);
                }
            }
        }
    }
}
