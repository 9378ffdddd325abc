//! Every wait on a restored object, each with a deadline and a readable reason when it runs
//! out: claims bound, workloads ready, pods observed.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, LogParams};

use super::apply::Waits;
use super::plan::KubeRestorePlan;
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
                ready: pod_ready(pod),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Recent events about one object, newest last, as `reason: message`.
async fn events_for(client: &kube::Client, namespace: &str, name: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let mut events = api.list(&params).await.map(|l| l.items).unwrap_or_default();
    events.sort_by_key(|e| {
        e.metadata
            .resource_version
            .clone()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    });
    events
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            )
        })
        .collect()
}

/// Why a pod is not Ready: phase, conditions that are not True, container waiting reasons,
/// last events and log lines.
async fn explain_pod(client: &kube::Client, pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let mut parts = vec![format!(
        "phase {}",
        status.phase.clone().unwrap_or_else(|| "Unknown".to_owned())
    )];
    for c in status
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status != "True")
    {
        let why = [c.reason.clone(), c.message.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        parts.push(format!(
            "{} {}{}",
            c.type_,
            c.status,
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        ));
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            parts.push(format!(
                "container {} waiting: {}{} (restarts {})",
                cs.name,
                waiting.reason.clone().unwrap_or_default(),
                waiting
                    .message
                    .clone()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default(),
                cs.restart_count
            ));
        }
    }
    let events = events_for(client, &ns, &name).await;
    if !events.is_empty() {
        parts.push(format!("events: {}", events.join(" | ")));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if let Ok(logs) = pods
        .logs(
            &name,
            &LogParams {
                tail_lines: Some(5),
                ..LogParams::default()
            },
        )
        .await
    {
        let logs = logs.trim();
        if !logs.is_empty() {
            parts.push(format!(
                "last log lines: {}",
                logs.lines().collect::<Vec<_>>().join(" / ")
            ));
        }
    }
    format!("pod {name}: {}", parts.join("; "))
}

fn pod_ready(pod: &Pod) -> bool {
    crate::facts::pod_succeeded(pod.status.as_ref()) || crate::facts::pod_ready(pod.status.as_ref())
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
            let events = events_for(client, namespace, name).await;
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

pub(super) async fn wait_workload_ready(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    waits: &Waits,
) -> Result<(), RestoreError> {
    let started = Instant::now();
    loop {
        let (want, ready, selector) = readiness(client, namespace, kind, name).await?;
        if ready >= want {
            return Ok(());
        }
        if started.elapsed() >= waits.workload_ready {
            let detail = not_ready_detail(client, namespace, name, want, ready, selector).await;
            return Err(RestoreError::NotReady {
                what: format!("{kind} {namespace}/{name}"),
                seconds: waits.workload_ready.as_secs(),
                detail,
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
}

/// A StatefulSet's (for `kind` "StatefulSet") or else a Deployment's wanted and ready
/// replicas, and its selector's labels. Ready is -1 while the status is older than the spec
/// (the controller has not seen the apply yet): such a status says nothing.
async fn readiness(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<(i32, i32, Option<BTreeMap<String, String>>), RestoreError> {
    Ok(match kind {
        "StatefulSet" => {
            let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
            let s = api.get(name).await.map_err(RestoreError::kube(format!(
                "get StatefulSet {namespace}/{name}"
            )))?;
            let want = s.spec.replicas.unwrap_or(1);
            let observed = s
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            let current = observed >= s.metadata.generation.unwrap_or(0);
            let ready = if current {
                s.status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0)
            } else {
                -1
            };
            (want, ready, s.spec.selector.match_labels.clone())
        }
        _ => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
            let d = api.get(name).await.map_err(RestoreError::kube(format!(
                "get Deployment {namespace}/{name}"
            )))?;
            let want = d.spec.replicas.unwrap_or(1);
            let observed = d
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            let current = observed >= d.metadata.generation.unwrap_or(0);
            let ready = if current {
                d.status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0)
            } else {
                -1
            };
            (want, ready, d.spec.selector.match_labels.clone())
        }
    })
}

/// Why a workload is not ready: its replica counts, then its events when it has no pods, or
/// what each of its un-Ready pods waits for.
async fn not_ready_detail(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    want: i32,
    ready: i32,
    selector: Option<BTreeMap<String, String>>,
) -> String {
    let mut detail = vec![if ready < 0 {
        "the controller has not observed the applied spec".to_owned()
    } else {
        format!("{ready}/{want} replicas ready")
    }];
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = selector
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    if listed.is_empty() {
        let events = events_for(client, namespace, name).await;
        detail.push(format!(
            "no pods; {}",
            if events.is_empty() {
                "no events".to_owned()
            } else {
                events.join(" | ")
            }
        ));
    }
    for pod in listed.iter().filter(|p| !pod_ready(p)) {
        detail.push(explain_pod(client, pod).await);
    }
    detail.join("; ")
}

pub(super) async fn wait_pods_ready(
    client: &kube::Client,
    namespace: &str,
    waits: &Waits,
) -> Result<(), RestoreError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    loop {
        let pods = api
            .list(&ListParams::default())
            .await
            .map_err(RestoreError::kube(format!("list pods in {namespace}")))?;
        let not_ready: Vec<&Pod> = pods.items.iter().filter(|p| !pod_ready(p)).collect();
        if not_ready.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= waits.pods_ready {
            let mut detail = Vec::new();
            for pod in not_ready {
                detail.push(explain_pod(client, pod).await);
            }
            return Err(RestoreError::NotReady {
                what: format!("pods in namespace {namespace}"),
                seconds: waits.pods_ready.as_secs(),
                detail: detail.join("; "),
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
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
