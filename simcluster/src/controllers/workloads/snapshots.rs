//! The snapshot controller and the simulated CSI driver's snapshots (what
//! external-snapshotter's snapshot-controller and csi-snapshotter sidecar do with a CSI driver
//! on a real cluster): a VolumeSnapshot of a bound claim of the `hostpath.csi.k8s.io` driver
//! gets a VolumeSnapshotContent `snapcontent-<snapshot uid>` and becomes `readyToUse` with its
//! `restoreSize`; a claim of that driver whose `dataSource` names a ready snapshot is
//! provisioned from it (`volumes`).
//!
//! A snapshot is crash-consistent, as a storage system's is: every container of every running
//! pod that mounts the claim is stopped (SIGSTOP to its process group) while the volume's
//! directory is copied, then continued. The copy is the volume as it was at one instant, so a
//! PostgreSQL data directory restored from it goes through crash recovery, as one restored
//! from a cloud disk snapshot does.
//!
//! Errors are those of the real controllers, written to `status.error` with a Warning Event:
//! an unknown class, a missing or unbound claim, a volume not of the class's CSI driver
//! (`snapshotting non-CSI volumes is not supported`). Pre-provisioned snapshots (a source
//! naming an existing VolumeSnapshotContent) are not taken over; they get an error that says
//! so.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::events::{EventKind, record};
use super::{Ctx, create, deleting, meta, referent_gone, write_status};
use crate::store::Store;

/// The simulated CSI driver: it provisions the default class `standard` and takes snapshots.
pub(crate) const CSI_DRIVER: &str = "hostpath.csi.k8s.io";
/// The VolumeSnapshotClass seeded for the driver (the name the runbook uses).
pub(crate) const SNAPSHOT_CLASS: &str = "csi-snapclass";

const SNAPSHOTS: &str = "snapshot.storage.k8s.io/volumesnapshots";
const CONTENTS: &str = "snapshot.storage.k8s.io/volumesnapshotcontents";
const CLASSES: &str = "snapshot.storage.k8s.io/volumesnapshotclasses";
const CONTROLLER: &str = "snapshot-controller";

/// One pass: take the snapshots not taken yet; drop the contents (and copies) of deleted
/// snapshots whose policy is `Delete`.
pub(crate) fn reconcile(ctx: &Ctx) {
    let store = &ctx.store;
    // Before the CRDs exist (a cluster whose seed failed) there is nothing to do.
    if store.registry().by_key(SNAPSHOTS).is_none() {
        return;
    }
    let (snapshots, _) = store.list(SNAPSHOTS, None);
    for vs in &snapshots {
        if deleting(vs)
            || vs
                .pointer("/status/boundVolumeSnapshotContentName")
                .and_then(Value::as_str)
                .is_some()
        {
            continue;
        }
        if let Err(message) = take(ctx, vs) {
            let current = vs.pointer("/status/error/message").and_then(Value::as_str);
            if current != Some(message.as_str()) {
                write_status(
                    store,
                    SNAPSHOTS,
                    vs,
                    json!({"readyToUse": false, "error": {"message": message, "time": now()}}),
                );
                record(
                    store,
                    vs,
                    EventKind::Warning,
                    "SnapshotCreationFailed",
                    &message,
                    CONTROLLER,
                );
            }
        }
    }
    let (contents, _) = store.list(CONTENTS, None);
    for content in &contents {
        if deleting(content) || !snapshot_gone(content, &snapshots) {
            continue;
        }
        if content
            .pointer("/spec/deletionPolicy")
            .and_then(Value::as_str)
            == Some("Delete")
        {
            let dir = ctx
                .cfg
                .state_dir
                .join("snapshots")
                .join(meta(content, "name"));
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %dir.display(), error = %e, "removing a snapshot failed");
            }
            super::delete(store, CONTENTS, "", meta(content, "name"));
        }
    }
}

/// Whether the snapshot a content was bound to no longer exists.
fn snapshot_gone(content: &Value, snapshots: &[Arc<Value>]) -> bool {
    referent_gone(content, "/spec/volumeSnapshotRef", snapshots).unwrap_or(true)
}

/// Takes one snapshot, or says why it cannot be taken (yet).
fn take(ctx: &Ctx, vs: &Value) -> Result<(), String> {
    let store = &ctx.store;
    let ns = meta(vs, "namespace");
    let name = meta(vs, "name");
    if let Some(content) = vs
        .pointer("/spec/source/volumeSnapshotContentName")
        .and_then(Value::as_str)
    {
        return Err(format!(
            "pre-provisioned snapshot content {content} is not taken over by the simulated \
             snapshot controller"
        ));
    }
    let class = snapshot_class(store, vs)?;
    let driver = class
        .get("driver")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let claim = vs
        .pointer("/spec/source/persistentVolumeClaimName")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("snapshot {ns}/{name} names no source"))?;
    let pvc = store.get("/persistentvolumeclaims", ns, claim).ok_or_else(|| {
        format!(
            "failed to get input parameters to create snapshot {name}: \"failed to retrieve PVC \
             {claim} from the lister: \\\"persistentvolumeclaim \\\\\\\"{claim}\\\\\\\" not \
             found\\\"\""
        )
    })?;
    let pv = pvc
        .pointer("/spec/volumeName")
        .and_then(Value::as_str)
        .filter(|_| pvc.pointer("/status/phase").and_then(Value::as_str) == Some("Bound"))
        .and_then(|v| store.get("/persistentvolumes", "", v))
        .ok_or_else(|| {
            format!(
                "failed to get input parameters to create snapshot {name}: \"the PVC {claim} \
                 is not yet bound to a PV, will not attempt to take a snapshot\""
            )
        })?;
    let Some(volume_driver) = pv.pointer("/spec/csi/driver").and_then(Value::as_str) else {
        return Err(format!(
            "snapshotting non-CSI volumes is not supported, snapshot:{ns}/{name}"
        ));
    };
    if volume_driver != driver {
        return Err(format!(
            "failed to take snapshot {ns}/{name}: the volume's driver {volume_driver} is not \
             the snapshot class's driver {driver}"
        ));
    }
    let source = super::volumes::volume_dir(&pv)
        .ok_or_else(|| format!("volume {} has no host directory", meta(&pv, "name")))?;
    record(
        store,
        vs,
        EventKind::Normal,
        "CreatingSnapshot",
        &format!("Waiting for a snapshot {ns}/{name} to be created by the CSI driver."),
        CONTROLLER,
    );
    let content_name = format!("snapcontent-{}", meta(vs, "uid"));
    let dir = ctx.cfg.state_dir.join("snapshots").join(&content_name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("clear {}: {e}", dir.display()))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    let frozen = Frozen::pods_of(store, ns, claim);
    let copied = copy_tree(&source, &dir);
    let paused = frozen.resume();
    if let Err(e) = copied {
        // A partial copy is never a snapshot.
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "removing a failed snapshot failed");
        }
        return Err(format!(
            "failed to take snapshot {ns}/{name}: copy the volume: {e}"
        ));
    }
    let capacity = pv
        .pointer("/spec/capacity/storage")
        .and_then(Value::as_str)
        .unwrap_or("0")
        .to_owned();
    let bytes = quantity_bytes(&capacity).unwrap_or(0);
    let taken = now();
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let content = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": content_name},
        "spec": {
            "deletionPolicy": class.get("deletionPolicy").cloned().unwrap_or(json!("Delete")),
            "driver": driver,
            "source": {"volumeHandle": pv.pointer("/spec/csi/volumeHandle").cloned().unwrap_or(Value::Null)},
            "volumeSnapshotClassName": meta(&class, "name"),
            "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "namespace": ns, "name": name, "uid": meta(vs, "uid"), "resourceVersion": meta(vs, "resourceVersion")},
        },
    });
    let content = match store.get(CONTENTS, "", &content_name) {
        Some(c) => c,
        None => Arc::new(
            create(store, CONTENTS, "", content)
                .ok_or_else(|| format!("create VolumeSnapshotContent {content_name}"))?,
        ),
    };
    write_status(
        store,
        CONTENTS,
        &content,
        json!({"creationTime": nanos, "readyToUse": true, "restoreSize": bytes,
               "snapshotHandle": content_name.trim_start_matches("snapcontent-")}),
    );
    record(
        store,
        vs,
        EventKind::Normal,
        "SnapshotCreated",
        &format!(
            "Snapshot {ns}/{name} was successfully created by the CSI driver ({paused} \
             container(s) paused for the copy)."
        ),
        CONTROLLER,
    );
    write_status(
        store,
        SNAPSHOTS,
        vs,
        json!({"boundVolumeSnapshotContentName": content_name, "creationTime": taken,
               "readyToUse": true, "restoreSize": capacity}),
    );
    record(
        store,
        vs,
        EventKind::Normal,
        "SnapshotReady",
        &format!("Snapshot {ns}/{name} is ready to use."),
        CONTROLLER,
    );
    Ok(())
}

/// The snapshot's class: the one it names, else the default class.
fn snapshot_class(store: &Store, vs: &Value) -> Result<Arc<Value>, String> {
    match vs
        .pointer("/spec/volumeSnapshotClassName")
        .and_then(Value::as_str)
    {
        Some(class) => store.get(CLASSES, "", class).ok_or_else(|| {
            format!(
                "Failed to get snapshot class with error \
                 volumesnapshotclass.snapshot.storage.k8s.io \"{class}\" not found"
            )
        }),
        None => store
            .list(CLASSES, None)
            .0
            .into_iter()
            .find(|c| {
                c.pointer("/metadata/annotations/snapshot.storage.kubernetes.io~1is-default-class")
                    .and_then(Value::as_str)
                    == Some("true")
            })
            .ok_or_else(|| {
                "Failed to set default snapshot class with error cannot find default snapshot \
                 class"
                    .to_owned()
            }),
    }
}

/// Where a claim of the CSI driver is provisioned from: `None` for an empty volume, the
/// snapshot's copy for a `dataSource` (or `dataSourceRef`) naming a VolumeSnapshot.
///
/// # Errors
/// The external provisioner's reasons, retried until they clear: the snapshot missing or not
/// ready, the claim smaller than the snapshot, a data source the driver does not restore.
pub(crate) fn restore_source(
    store: &Store,
    state_dir: &Path,
    pvc: &Value,
) -> Result<Option<PathBuf>, String> {
    let Some(source) = pvc
        .pointer("/spec/dataSourceRef")
        .or_else(|| pvc.pointer("/spec/dataSource"))
        .filter(|s| !s.is_null())
    else {
        return Ok(None);
    };
    let kind = source
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let group = source
        .get("apiGroup")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = source
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if (kind, group) != ("VolumeSnapshot", "snapshot.storage.k8s.io") {
        return Err(format!(
            "the simulated CSI driver restores only VolumeSnapshots; data source {kind} \
             {name} (group \"{group}\") is not one"
        ));
    }
    let handle = format!("error getting handle for DataSource Type VolumeSnapshot by Name {name}");
    let vs = store
        .get(SNAPSHOTS, meta(pvc, "namespace"), name)
        .ok_or_else(|| {
            format!(
                "{handle}: error getting snapshot {name} from api server: \
                 volumesnapshots.snapshot.storage.k8s.io \"{name}\" not found"
            )
        })?;
    let content = vs
        .pointer("/status/boundVolumeSnapshotContentName")
        .and_then(Value::as_str)
        .filter(|_| vs.pointer("/status/readyToUse").and_then(Value::as_bool) == Some(true))
        .ok_or_else(|| format!("{handle}: snapshot {name} is not Ready"))?;
    let requested = pvc
        .pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .unwrap_or("0");
    let size = vs
        .pointer("/status/restoreSize")
        .and_then(Value::as_str)
        .unwrap_or("0");
    if let (Some(req), Some(min)) = (quantity_bytes(requested), quantity_bytes(size))
        && req < min
    {
        return Err(format!(
            "requested volume size {req} is less than the size {min} for the source snapshot \
             {name}"
        ));
    }
    let dir = state_dir.join("snapshots").join(content);
    if !dir.is_dir() {
        return Err(format!("{handle}: snapshot content {content} has no data"));
    }
    Ok(Some(dir))
}

/// The container process groups of the running pods that mount a claim, stopped until
/// [`Frozen::resume`] (or drop).
struct Frozen {
    groups: Vec<i32>,
}

impl Frozen {
    fn pods_of(store: &Store, ns: &str, claim: &str) -> Frozen {
        let mut groups = Vec::new();
        for pod in store.list("/pods", Some(ns)).0 {
            let mounts = pod
                .pointer("/spec/volumes")
                .and_then(Value::as_array)
                .is_some_and(|vs| {
                    vs.iter().any(|v| {
                        v.pointer("/persistentVolumeClaim/claimName")
                            .and_then(Value::as_str)
                            == Some(claim)
                    })
                });
            if !mounts {
                continue;
            }
            let statuses = pod
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for status in statuses {
                if status.pointer("/state/running").is_none() {
                    continue;
                }
                if let Some(pgid) = status
                    .get("containerID")
                    .and_then(Value::as_str)
                    .and_then(|id| id.strip_prefix("simcluster://"))
                    .and_then(|n| n.parse::<i32>().ok())
                    .filter(|n| *n > 1)
                    && killpg(Pid::from_raw(pgid), Signal::SIGSTOP).is_ok()
                {
                    groups.push(pgid);
                }
            }
        }
        Frozen { groups }
    }

    /// Continues every stopped group; returns how many there were.
    fn resume(mut self) -> usize {
        let n = self.groups.len();
        self.thaw();
        n
    }

    fn thaw(&mut self) {
        for pgid in self.groups.drain(..) {
            if let Err(e) = killpg(Pid::from_raw(pgid), Signal::SIGCONT) {
                tracing::warn!(pgid, error = %e, "continuing a paused container failed");
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// Copies a directory tree with its modes, owners and symbolic links (`cp -a` without
/// extended attributes). `to` must not exist.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta = std::fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else if meta.is_dir() {
        match std::fs::create_dir(to) {
            Ok(()) => {}
            // The provisioner creates the volume's directory before filling it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && to.is_dir() => {}
            Err(e) => return Err(e),
        }
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else if meta.is_file() {
        std::fs::copy(from, to)?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else {
        // Sockets and FIFOs (a server's lock socket) are not data.
        return Ok(());
    }
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))
}

/// A storage quantity in bytes: `10Gi`, `500M`, `1024`.
pub(crate) fn quantity_bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let factor: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    if let Ok(n) = number.parse::<u128>() {
        return n.checked_mul(factor);
    }
    let f: f64 = number.parse().ok()?;
    // Whole bytes; a fractional quantity rounds up, as Kubernetes does.
    Some((f * factor as f64).ceil() as u128)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("10Gi"), Some(10 << 30));
        assert_eq!(quantity_bytes("1Mi"), Some(1 << 20));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1024"), Some(1024));
        assert_eq!(quantity_bytes("1.5Ki"), Some(1536));
        assert_eq!(quantity_bytes("10Xi"), None);
    }

    #[test]
    fn copy_tree_keeps_modes_links_and_contents() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("from");
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::write(from.join("sub/f"), b"data").unwrap();
        std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(from.join("sub/f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::symlink("sub/f", from.join("link")).unwrap();
        let to = tmp.path().join("to");
        copy_tree(&from, &to).unwrap();
        assert_eq!(std::fs::read(to.join("sub/f")).unwrap(), b"data");
        assert_eq!(
            std::fs::read_link(to.join("link")).unwrap(),
            Path::new("sub/f")
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&to), 0o700);
        assert_eq!(mode(&to.join("sub/f")), 0o600);
    }
}
