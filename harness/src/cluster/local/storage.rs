//! Storage, a stand-in for a dynamic provisioner (rancher's local-path is not available
//! here): the default StorageClass `local-path`, and a loop in the harness that gives every
//! pending claim of that class a hostPath PersistentVolume under the cluster's volume
//! directory, pre-bound to the claim, and deletes the volume and its directory once a claim
//! is gone (reclaim policy `Delete`). See "Storage" in `simcluster/SIMULATION.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::ObjectMeta;
use tokio::task::JoinHandle;

use super::LocalError;

/// The StorageClass the overlays name, default for claims that name none.
pub const STORAGE_CLASS: &str = "local-path";

/// The provisioner name on the class and its volumes.
pub const PROVISIONER: &str = "rebuild-rehearsal.local/host-path";

/// Creates the StorageClass (default) and starts provisioning; provisioning stops on drop.
#[derive(Debug)]
pub(crate) struct Provisioner {
    task: JoinHandle<()>,
}

impl Provisioner {
    pub(crate) async fn start(client: kube::Client, volumes: PathBuf) -> Result<Self, LocalError> {
        let classes: Api<StorageClass> = Api::all(client.clone());
        let class = StorageClass {
            metadata: ObjectMeta {
                name: Some(STORAGE_CLASS.to_owned()),
                annotations: Some(BTreeMap::from([(
                    "storageclass.kubernetes.io/is-default-class".to_owned(),
                    "true".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            provisioner: PROVISIONER.to_owned(),
            reclaim_policy: Some("Delete".to_owned()),
            volume_binding_mode: Some("Immediate".to_owned()),
            ..StorageClass::default()
        };
        classes
            .create(&PostParams::default(), &class)
            .await
            .map_err(|source| LocalError::Api {
                what: format!("create StorageClass {STORAGE_CLASS}"),
                source,
            })?;
        super::daemon::mkdir(&volumes)?;
        let task = tokio::spawn(async move {
            loop {
                if let Err(err) = provision_once(&client, &volumes).await {
                    tracing::warn!(error = %crate::error_chain(&err), "local-path provisioner");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Ok(Self { task })
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One pass: a volume for each pending claim of the class, and the end of each released one.
async fn provision_once(client: &kube::Client, volumes: &Path) -> Result<(), kube::Error> {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let existing = pvs.list(&ListParams::default()).await?;
    for claim in claims.list(&ListParams::default()).await?.items {
        let spec = claim.spec.clone().unwrap_or_default();
        let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        let ours = spec.storage_class_name.as_deref() == Some(STORAGE_CLASS);
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        let name = format!("pvc-{uid}");
        if !pending || !ours || spec.volume_name.is_some() || uid.is_empty() {
            continue;
        }
        if existing
            .items
            .iter()
            .any(|pv| pv.metadata.name.as_deref() == Some(name.as_str()))
        {
            continue;
        }
        let ns = claim.metadata.namespace.clone().unwrap_or_default();
        let claim_name = claim.metadata.name.clone().unwrap_or_default();
        let dir = volumes.join(format!("{ns}_{claim_name}_{uid}"));
        if let Err(err) = make_volume_dir(&dir) {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot create a volume directory");
            continue;
        }
        let capacity = spec.resources.and_then(|r| r.requests).unwrap_or_default();
        let pv = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                annotations: Some(BTreeMap::from([(
                    "pv.kubernetes.io/provisioned-by".to_owned(),
                    PROVISIONER.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some(capacity),
                access_modes: spec.access_modes.clone(),
                host_path: Some(HostPathVolumeSource {
                    path: dir.display().to_string(),
                    type_: Some("DirectoryOrCreate".to_owned()),
                }),
                claim_ref: Some(ObjectReference {
                    namespace: Some(ns.clone()),
                    name: Some(claim_name.clone()),
                    uid: Some(uid.clone()),
                    ..ObjectReference::default()
                }),
                persistent_volume_reclaim_policy: Some("Delete".to_owned()),
                storage_class_name: Some(STORAGE_CLASS.to_owned()),
                volume_mode: spec.volume_mode.clone(),
                ..PersistentVolumeSpec::default()
            }),
            status: None,
        };
        match pvs.create(&PostParams::default(), &pv).await {
            Ok(_) => {
                tracing::info!(claim = %format!("{ns}/{claim_name}"), volume = %name, "provisioned")
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(err),
        }
    }
    for pv in existing.items {
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let ours = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
            .is_some_and(|p| p == PROVISIONER);
        if !released || !ours {
            continue;
        }
        let path = pv
            .spec
            .as_ref()
            .and_then(|s| s.host_path.as_ref())
            .map(|h| PathBuf::from(&h.path));
        if let Some(path) = path.filter(|p| p.starts_with(volumes))
            && let Err(err) = std::fs::remove_dir_all(&path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %path.display(), error = %err, "cannot remove a released volume");
            continue;
        }
        let name = pv.metadata.name.clone().unwrap_or_default();
        match pvs.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(volume = %name, "released volume deleted"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// A volume's directory, writable by any user a container runs as (PostgreSQL's entrypoint
/// takes it over as root; other images may not run as root).
fn make_volume_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
}
