//! Every wait on a restored object, each with a deadline and a readable reason when it runs
//! out: claims bound here; workloads and pods through `crate::ready`, the one way to wait.

use std::time::Instant;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams};

use super::apply::Waits;
use super::plan::KubeRestorePlan;
use crate::ready::{Deadline, Workload};
use crate::restore::RestoreError;

/// Observes the pods of `namespace` for the rollback decision (`verify::decide`): restarts,
/// waiting reasons such as `CrashLoopBackOff`, and readiness.
///
/// # Errors
/// [`RestoreError::Kube`] when the pods cannot be listed.
pub async fn observe_pods(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<crate::facts::PodObservation>, RestoreError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = api
        .list(&ListParams::default())
        .await
        .map_err(RestoreError::kube(format!("list pods in {namespace}")))?;
    let mut out: Vec<crate::facts::PodObservation> = pods
        .items
        .iter()
        .map(|pod| {
            let statuses = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            crate::facts::PodObservation {
                name: format!(
                    "{namespace}/{}",
                    pod.metadata.name.clone().unwrap_or_default()
                ),
                restarts: statuses
                    .iter()
                    .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
                    .sum(),
                waiting_reason: statuses.iter().find_map(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.clone())
                }),
                ready: crate::ready::pod_ready(pod),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Waits until the claim is Bound: `Ok(true)`. With `may_defer`, a claim whose storage class
/// binds on first consumer returns `Ok(false)` at once instead.
pub(super) async fn wait_pvc_bound(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    waits: &Waits,
    may_defer: bool,
) -> Result<bool, RestoreError> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    loop {
        let pvc = api.get(name).await.map_err(RestoreError::kube(format!(
            "get PersistentVolumeClaim {namespace}/{name}"
        )))?;
        let class = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone());
        let phase = pvc
            .status
            .and_then(|s| s.phase)
            .unwrap_or_else(|| "Pending".to_owned());
        if phase == "Bound" {
            return Ok(true);
        }
        if may_defer && let Some(class) = class {
            let classes: Api<StorageClass> = Api::all(client.clone());
            let mode = classes
                .get_opt(&class)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.volume_binding_mode);
            if mode.as_deref() == Some("WaitForFirstConsumer") {
                return Ok(false);
            }
        }
        if started.elapsed() >= waits.pvc_bound {
            let events = crate::ready::events_for(client, namespace, name).await;
            let events = if events.is_empty() {
                "no events".to_owned()
            } else {
                events.join(" | ")
            };
            return Err(RestoreError::NotReady {
                what: format!("PersistentVolumeClaim {namespace}/{name}"),
                seconds: waits.pvc_bound.as_secs(),
                detail: format!("phase {phase}; {events}"),
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
}

fn from_wait(err: crate::ready::WaitError) -> RestoreError {
    match err {
        crate::ready::WaitError::NotReady {
            what,
            seconds,
            parts,
        } => RestoreError::NotReady {
            what,
            seconds,
            detail: parts.join("; "),
        },
        crate::ready::WaitError::Api { what, source } => RestoreError::Kube { what, source },
    }
}

/// Waits until a restored StatefulSet or Deployment is ready (see [`crate::ready::workload`]).
pub(super) async fn wait_workload_ready(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    waits: &Waits,
) -> Result<(), RestoreError> {
    let kind = match kind {
        "StatefulSet" => Workload::StatefulSet,
        _ => Workload::Deployment,
    };
    let deadline = Deadline::new(waits.workload_ready).polling(waits.poll);
    crate::ready::workload(client, namespace, kind, name, deadline)
        .await
        .map_err(from_wait)
}

/// Waits until every pod of the restored namespace is ready (see [`crate::ready::pods`]).
pub(super) async fn wait_pods_ready(
    client: &kube::Client,
    namespace: &str,
    waits: &Waits,
) -> Result<(), RestoreError> {
    let deadline = Deadline::new(waits.pods_ready).polling(waits.poll);
    crate::ready::pods(client, namespace, deadline)
        .await
        .map_err(from_wait)
}

pub(super) fn data_timeout(what: &str, plan: &KubeRestorePlan, waits: &Waits) -> RestoreError {
    RestoreError::TimedOut {
        tool: "the restore".to_owned(),
        what: format!(
            "restoring {what} of namespace {} from backup {}",
            plan.namespace, plan.backup_id
        ),
        seconds: waits.data_restore.as_secs(),
    }
}
