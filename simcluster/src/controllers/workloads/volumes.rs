//! Dynamic provisioning: the StorageClasses `standard` (the default class, served by the
//! simulated CSI driver `hostpath.csi.k8s.io`, which also takes snapshots, see `snapshots`)
//! and `local-path` (`rancher.io/local-path`, as on kind), each claim bound to a
//! PersistentVolume backed by a directory under `<state_dir>/volumes/`, and that directory
//! removed with the volume when its claim goes (reclaim policy `Delete`; the claim goes only
//! when no running pod uses it, see the pvc-protection finalizer in `controllers`). A claim
//! naming a missing class stays Pending with a Warning Event, as on a real cluster. The CSI
//! driver provisions a claim whose `dataSource` is a VolumeSnapshot from the snapshot's copy;
//! `local-path` has no notion of data sources and provisions an empty directory.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};

use super::events::{EventKind, record};
use super::snapshots::{self, CSI_DRIVER};
use super::{Ctx, create, deleting, meta, modify, referent_gone, write_status};
use crate::store::Store;

/// The provisioner name written on the default classes.
pub(crate) const PROVISIONER: &str = "rancher.io/local-path";

/// The attribute of a CSI volume that names its host directory (the simulated driver's own).
pub(crate) const CSI_PATH_ATTRIBUTE: &str = "simcluster.io/host-path";

/// Create `local-path` and `standard` unless they exist; `local-path` is the default class
/// unless another class already is.
pub(crate) fn default_storage_classes(store: &Store) {
    for name in ["local-path", "standard"] {
        if store
            .get("storage.k8s.io/storageclasses", "", name)
            .is_some()
        {
            continue;
        }
        let default = default_class(store).is_none();
        let sc = json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": name,
                "annotations": {"storageclass.kubernetes.io/is-default-class": default.to_string()},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        });
        create(store, "storage.k8s.io/storageclasses", "", sc);
    }
}

/// The host directory of a bound claim, if it is bound to a volume of ours.
pub(crate) fn claim_dir(store: &Store, ns: &str, claim: &str) -> Option<PathBuf> {
    let pvc = store.get("/persistentvolumeclaims", ns, claim)?;
    if pvc.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
        return None;
    }
    let pv = store.get(
        "/persistentvolumes",
        "",
        pvc.pointer("/spec/volumeName")?.as_str()?,
    )?;
    volume_dir(&pv)
}

/// The host directory behind a PersistentVolume: a `hostPath` or `local` volume's path, or
/// the directory of a volume of the simulated CSI driver.
pub(crate) fn volume_dir(pv: &Value) -> Option<PathBuf> {
    pv.pointer("/spec/hostPath/path")
        .or_else(|| pv.pointer("/spec/local/path"))
        .or_else(|| {
            pv.pointer("/spec/csi")
                .filter(|c| c.get("driver").and_then(Value::as_str) == Some(CSI_DRIVER))
                .and_then(|c| {
                    c.pointer("/volumeAttributes")
                        .and_then(|a| a.get(CSI_PATH_ATTRIBUTE))
                })
        })
        .and_then(Value::as_str)
        .map(PathBuf::from)
}

fn default_class(store: &Store) -> Option<String> {
    let (classes, _) = store.list("storage.k8s.io/storageclasses", None);
    classes
        .iter()
        .find(|c| {
            c.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                .and_then(Value::as_str)
                == Some("true")
        })
        .map(|c| meta(c, "name").to_owned())
}

pub(crate) fn reconcile(ctx: &Ctx) {
    let store = &ctx.store;
    let (claims, _) = store.list("/persistentvolumeclaims", None);
    let (volumes, _) = store.list("/persistentvolumes", None);
    for pvc in &claims {
        if deleting(pvc) || pvc.pointer("/status/phase").and_then(Value::as_str) == Some("Bound") {
            continue;
        }
        // A claim naming an existing volume binds to it when that volume is free.
        if let Some(vol) = pvc
            .pointer("/spec/volumeName")
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
        {
            if let Some(pv) = volumes.iter().find(|v| meta(v, "name") == vol) {
                bind(store, pvc, pv);
            }
            continue;
        }
        provision(ctx, pvc);
    }
    // Volumes whose claim is gone: delete them (and their directory) or mark them Released.
    for pv in &volumes {
        if !deleting(pv) && claim_gone(pv, &claims) {
            release(ctx, pv);
        }
    }
}

/// Provisions a volume for `pvc` from its storage class (or the default one) and binds it,
/// or records why not yet.
fn provision(ctx: &Ctx, pvc: &Value) {
    let store = &ctx.store;
    let ns = meta(pvc, "namespace");
    let name = meta(pvc, "name");
    let Some((class, sc)) = provisioning_class(store, pvc) else {
        return;
    };
    let provisioner = sc
        .get("provisioner")
        .and_then(Value::as_str)
        .unwrap_or(PROVISIONER)
        .to_owned();
    if sc.get("volumeBindingMode").and_then(Value::as_str) == Some("WaitForFirstConsumer")
        && !has_consumer(store, ns, name)
    {
        record(
            store,
            pvc,
            EventKind::Normal,
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
            "persistentvolume-controller",
        );
        return;
    }
    // The CSI driver restores a snapshot named as the claim's data source; it must be ready
    // before anything is provisioned (the claim stays Pending and is retried). With
    // WaitForFirstConsumer the provisioner is not asked before a pod uses the claim.
    let source = if provisioner == CSI_DRIVER {
        match snapshots::restore_source(store, &ctx.cfg.state_dir, pvc) {
            Ok(source) => source,
            Err(why) => {
                record(
                    store,
                    pvc,
                    EventKind::Warning,
                    "ProvisioningFailed",
                    &format!("failed to provision volume with StorageClass \"{class}\": {why}"),
                    &provisioner,
                );
                return;
            }
        }
    } else {
        None
    };
    let pv_name = format!("pvc-{}", meta(pvc, "uid"));
    let dir = ctx
        .cfg
        .state_dir
        .join("volumes")
        .join(format!("{ns}_{name}_{pv_name}"));
    let made = std::fs::create_dir_all(&dir).and_then(|()| match &source {
        Some(from) => snapshots::copy_tree(from, &dir),
        None => Ok(()),
    });
    if let Err(e) = made {
        record(
            store,
            pvc,
            EventKind::Warning,
            "ProvisioningFailed",
            &format!("cannot create {}: {e}", dir.display()),
            &provisioner,
        );
        // A half-made copy must not be taken for a volume on the next attempt.
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "removing a failed volume failed");
        }
        return;
    }
    let source_spec = if provisioner == CSI_DRIVER {
        json!({"csi": {
            "driver": CSI_DRIVER,
            "volumeHandle": meta(pvc, "uid"),
            "fsType": "ext4",
            "volumeAttributes": {CSI_PATH_ATTRIBUTE: dir.to_string_lossy()},
        }})
    } else {
        json!({"hostPath": {"path": dir.to_string_lossy(), "type": "DirectoryOrCreate"}})
    };
    let mut pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "annotations": {"pv.kubernetes.io/provisioned-by": provisioner},
        },
        "spec": {
            "capacity": {"storage": pvc.pointer("/spec/resources/requests/storage").cloned().unwrap_or(json!("1Gi"))},
            "accessModes": pvc.pointer("/spec/accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"])),
            "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy").cloned().unwrap_or(json!("Delete")),
            "storageClassName": class,
            "volumeMode": "Filesystem",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": meta(pvc, "uid")},
        },
    });
    if let (Some(spec), Some(extra)) = (pv["spec"].as_object_mut(), source_spec.as_object()) {
        spec.extend(extra.clone());
    }
    let pv = match store.get("/persistentvolumes", "", &pv_name) {
        Some(pv) => Some(pv),
        None => create(store, "/persistentvolumes", "", pv).map(std::sync::Arc::new),
    };
    if let Some(pv) = pv {
        record(
            store,
            pvc,
            EventKind::Normal,
            "ProvisioningSucceeded",
            &format!("Successfully provisioned volume {pv_name}"),
            &provisioner,
        );
        bind(store, pvc, &pv);
    }
}

/// The claim's storage class (its own or the default) when this provisioner serves it; else
/// `None`, with the event that says why.
fn provisioning_class(store: &Store, pvc: &Value) -> Option<(String, Arc<Value>)> {
    let class = match pvc
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
    {
        Some(c) => Some(c.to_owned()),
        None => default_class(store),
    };
    let Some(class) = class.filter(|c| !c.is_empty()) else {
        record(
            store,
            pvc,
            EventKind::Normal,
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set",
            "persistentvolume-controller",
        );
        return None;
    };
    let Some(sc) = store.get("storage.k8s.io/storageclasses", "", &class) else {
        record(
            store,
            pvc,
            EventKind::Warning,
            "ProvisioningFailed",
            &format!("storageclass.storage.k8s.io \"{class}\" not found"),
            "persistentvolume-controller",
        );
        return None;
    };
    if !matches!(
        sc.get("provisioner").and_then(Value::as_str),
        Some(PROVISIONER | CSI_DRIVER)
    ) {
        record(
            store,
            pvc,
            EventKind::Normal,
            "ExternalProvisioning",
            &format!(
                "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator",
                sc.get("provisioner")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            ),
            "persistentvolume-controller",
        );
        return None;
    }
    Some((class, sc))
}

/// Whether the volume was bound to a claim that no longer exists (a volume without a claim
/// reference is not).
fn claim_gone(pv: &Value, claims: &[Arc<Value>]) -> bool {
    referent_gone(pv, "/spec/claimRef", claims).unwrap_or(false)
}

/// A volume whose claim is gone: deleted with its directory when this provisioner made it and
/// its policy is Delete, else marked Released.
fn release(ctx: &Ctx, pv: &Value) {
    let store = &ctx.store;
    let policy = pv
        .pointer("/spec/persistentVolumeReclaimPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Retain");
    let ours = pv
        .pointer("/metadata/annotations/pv.kubernetes.io~1provisioned-by")
        .and_then(Value::as_str)
        .is_some_and(|p| p == PROVISIONER || p == CSI_DRIVER);
    if policy == "Delete" && ours {
        // Released first: the pv-protection finalizer holds a `Bound` volume.
        write_status(
            store,
            "/persistentvolumes",
            pv,
            json!({"phase": "Released"}),
        );
        if let Some(path) = volume_dir(pv) {
            // Only ever remove directories this provisioner created.
            if path.starts_with(ctx.cfg.state_dir.join("volumes"))
                && let Err(e) = std::fs::remove_dir_all(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "removing a released volume failed");
            }
        }
        super::delete(store, "/persistentvolumes", "", meta(pv, "name"));
    } else if pv.pointer("/status/phase").and_then(Value::as_str) != Some("Released") {
        write_status(
            store,
            "/persistentvolumes",
            pv,
            json!({"phase": "Released"}),
        );
    }
}

fn has_consumer(store: &Store, ns: &str, claim: &str) -> bool {
    store.list("/pods", Some(ns)).0.iter().any(|p| {
        !deleting(p)
            && p.pointer("/spec/volumes")
                .and_then(Value::as_array)
                .is_some_and(|vs| {
                    vs.iter().any(|v| {
                        v.pointer("/persistentVolumeClaim/claimName")
                            .and_then(Value::as_str)
                            == Some(claim)
                    })
                })
    })
}

fn bind(store: &Store, pvc: &Value, pv: &Value) {
    let pv_name = meta(pv, "name").to_owned();
    modify(store, "/persistentvolumes", pv, |o| {
        o["spec"]["claimRef"] = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta(pvc, "namespace"), "name": meta(pvc, "name"), "uid": meta(pvc, "uid")});
        o["status"] = json!({"phase": "Bound"});
    });
    let capacity = pv.pointer("/spec/capacity").cloned().unwrap_or(json!({}));
    let modes = pv
        .pointer("/spec/accessModes")
        .cloned()
        .unwrap_or(json!([]));
    modify(store, "/persistentvolumeclaims", pvc, |o| {
        o["spec"]["volumeName"] = json!(pv_name);
        if o.pointer("/spec/storageClassName").is_none()
            && let Some(c) = pv.pointer("/spec/storageClassName")
        {
            o["spec"]["storageClassName"] = c.clone();
        }
        o["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
        o["status"] = json!({"phase": "Bound", "accessModes": modes, "capacity": capacity});
    });
}
