//! Built-in control loops of the API server side: namespace termination, garbage collection
//! of dependents (background, foreground and orphan propagation) and the `default`
//! ServiceAccount of each namespace.
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
    ev.kind == EventType::Deleted
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
            if let Err(e) = api::create(store, &rt, name, sa, &WriteOptions::default()) {
                if e.code != 409 && e.code != 403 {
                    tracing::warn!(namespace = name, error = %e, "creating the default service account failed");
                }
            }
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
    if let Err(e) = api::delete(store, &rt, meta(obj, "namespace"), meta(obj, "name"), &opts) {
        if e.code != 404 && e.code != 409 {
            tracing::warn!(kind = rt.kind, name = meta(obj, "name"), error = %e, "garbage collection failed");
        }
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
    ) {
        if e.code != 404 && e.code != 409 {
            tracing::warn!(kind = rt.kind, name = meta(obj, "name"), error = %e, "removing finalizer failed");
        }
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
