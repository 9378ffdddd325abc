//! The one way to wait on Kubernetes readiness: a workload's replicas, every pod of a
//! namespace, a whole namespace, a Deployment scaled to a count. Each wait polls with a
//! deadline and, when it runs out, says why as far as the cluster tells: the workload's
//! replica counts (or that its controller has not observed the spec yet), and for each pod
//! that is not Ready its phase, the conditions that are not True, container states and
//! restarts, its last events and last log lines.
//!
//! The restore (`restore::kubernetes`), the deployment of the Titanium stack (`deploy`) and
//! the scenarios' scaling all wait through here.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, LogParams};

/// A wait's deadline and poll interval.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    /// How long to wait in all.
    pub timeout: Duration,
    /// How often to look.
    pub poll: Duration,
}

impl Deadline {
    /// `timeout`, looking every 200 ms.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            poll: Duration::from_millis(200),
        }
    }

    /// The same timeout, looking every `poll`.
    pub fn polling(self, poll: Duration) -> Self {
        Self { poll, ..self }
    }
}

/// Why a wait ended without what it waited for.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed.
    #[error("{what} not ready after {seconds} s: {}", parts.join("; "))]
    NotReady {
        /// What was waited for (`Deployment titanium-prod/user-service`).
        what: String,
        /// The deadline.
        seconds: u64,
        /// Why, as far as the cluster tells: one part per workload or pod.
        parts: Vec<String>,
    },
    /// The cluster could not be asked.
    #[error("Kubernetes API call failed: {what}")]
    Api {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

fn api_err(what: String) -> impl FnOnce(kube::Error) -> WaitError {
    move |source| WaitError::Api { what, source }
}

/// The two kinds of workload a wait knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
}

impl Workload {
    /// The kind's name.
    pub fn kind(self) -> &'static str {
        match self {
            Workload::Deployment => "Deployment",
            Workload::StatefulSet => "StatefulSet",
        }
    }
}

/// A pod counts as ready when it is Ready, or when it ran to completion (a Job's pod).
pub fn pod_ready(pod: &Pod) -> bool {
    crate::facts::pod_succeeded(pod.status.as_ref()) || crate::facts::pod_ready(pod.status.as_ref())
}

/// A workload's replicas as its controller last reported them.
struct Replicas {
    want: i32,
    /// `None` while the controller has not observed the current spec (its status says nothing).
    ready: Option<i32>,
    updated: Option<i32>,
    selector: Option<std::collections::BTreeMap<String, String>>,
}

impl Replicas {
    fn of(
        generation: Option<i64>,
        observed: Option<i64>,
        want: Option<i32>,
        ready: Option<i32>,
        updated: Option<i32>,
        selector: Option<std::collections::BTreeMap<String, String>>,
    ) -> Self {
        let current = observed.unwrap_or(0) >= generation.unwrap_or(0);
        Self {
            want: want.unwrap_or(1),
            ready: current.then(|| ready.unwrap_or(0)),
            updated: current.then(|| updated.unwrap_or(0)),
            selector,
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.is_some_and(|r| r >= self.want)
    }

    fn describe(&self) -> String {
        match self.ready {
            None => "the controller has not observed the applied spec".to_owned(),
            Some(ready) => format!("{ready}/{} replicas ready", self.want),
        }
    }
}

async fn replicas(
    client: &kube::Client,
    namespace: &str,
    kind: Workload,
    name: &str,
) -> Result<Replicas, WaitError> {
    let what = format!("get {} {namespace}/{name}", kind.kind());
    Ok(match kind {
        Workload::StatefulSet => {
            let s = Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(api_err(what))?;
            let status = s.status.unwrap_or_default();
            Replicas::of(
                s.metadata.generation,
                status.observed_generation,
                s.spec.replicas,
                status.ready_replicas,
                status.updated_replicas,
                s.spec.selector.match_labels,
            )
        }
        Workload::Deployment => {
            let d = Api::<Deployment>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(api_err(what))?;
            let status = d.status.unwrap_or_default();
            Replicas::of(
                d.metadata.generation,
                status.observed_generation,
                d.spec.replicas,
                status.ready_replicas,
                status.updated_replicas,
                d.spec.selector.match_labels,
            )
        }
    })
}

/// The pods matching `selector` (all of the namespace's when `None`).
async fn pods_of(
    client: &kube::Client,
    namespace: &str,
    selector: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Vec<Pod>, WaitError> {
    let mut params = ListParams::default();
    let labels = selector
        .map(|s| {
            s.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    if !labels.is_empty() {
        params = params.labels(&labels);
    }
    Ok(Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&params)
        .await
        .map_err(api_err(format!("list pods in {namespace}")))?
        .items)
}

/// Looks with `look` every `deadline.poll` until it finds nothing pending (`None`); past the
/// deadline, `explain` turns what is still pending into the parts of [`WaitError::NotReady`].
///
/// The closures return boxed futures (`Send` spelled out), so a wait can run in a spawned task.
async fn poll<'a, S: 'a>(
    deadline: Deadline,
    what: String,
    mut look: impl FnMut() -> BoxFuture<'a, Result<Option<S>, WaitError>>,
    explain: impl FnOnce(S) -> BoxFuture<'a, Result<Vec<String>, WaitError>>,
) -> Result<(), WaitError> {
    let started = Instant::now();
    loop {
        match look().await? {
            None => return Ok(()),
            Some(pending) if started.elapsed() >= deadline.timeout => {
                return Err(WaitError::NotReady {
                    what,
                    seconds: deadline.timeout.as_secs(),
                    parts: explain(pending).await?,
                });
            }
            Some(_) => tokio::time::sleep(deadline.poll).await,
        }
    }
}

/// Waits until `kind` `namespace/name` has every replica ready (as observed by its controller
/// for the current spec).
///
/// # Errors
/// [`WaitError::NotReady`] with the replica counts and, for each pod that is not ready, why
/// ([`explain_pod`]); with no pod at all, the workload's own events.
pub async fn workload(
    client: &kube::Client,
    namespace: &str,
    kind: Workload,
    name: &str,
    deadline: Deadline,
) -> Result<(), WaitError> {
    poll(
        deadline,
        format!("{} {namespace}/{name}", kind.kind()),
        || {
            Box::pin(async move {
                let r = replicas(client, namespace, kind, name).await?;
                Ok((!r.is_ready()).then_some(r))
            })
        },
        |r: Replicas| {
            Box::pin(async move {
                let mut parts = vec![r.describe()];
                parts.extend(
                    explain_workload_pods(client, namespace, name, r.selector.as_ref()).await?,
                );
                Ok(parts)
            })
        },
    )
    .await
}

/// Why each of a workload's pods is not ready; with no pod at all, the workload's events.
async fn explain_workload_pods(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    selector: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Vec<String>, WaitError> {
    let pods = pods_of(client, namespace, selector).await?;
    let mut detail = Vec::new();
    if pods.is_empty() {
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
    for pod in pods.iter().filter(|p| !pod_ready(p)) {
        detail.push(explain_pod(client, pod).await);
    }
    Ok(detail)
}

/// Waits until every pod of `namespace` is Ready (or ran to completion).
///
/// # Errors
/// [`WaitError::NotReady`] explaining each pod that is not.
pub async fn pods(
    client: &kube::Client,
    namespace: &str,
    deadline: Deadline,
) -> Result<(), WaitError> {
    poll(
        deadline,
        format!("pods in namespace {namespace}"),
        || {
            Box::pin(async move {
                let not_ready: Vec<Pod> = pods_of(client, namespace, None)
                    .await?
                    .into_iter()
                    .filter(|p| !pod_ready(p))
                    .collect();
                Ok((!not_ready.is_empty()).then_some(not_ready))
            })
        },
        |not_ready: Vec<Pod>| Box::pin(async move { Ok(explain_pods(client, &not_ready).await) }),
    )
    .await
}

/// [`explain_pod`] of each of `pods`.
async fn explain_pods(client: &kube::Client, pods: &[Pod]) -> Vec<String> {
    let mut parts = Vec::new();
    for pod in pods {
        parts.push(explain_pod(client, pod).await);
    }
    parts
}

/// Waits until every Deployment and StatefulSet of `namespace` has its replicas ready and
/// every pod is Ready (or ran to completion).
///
/// # Errors
/// [`WaitError::NotReady`] naming each workload that is not ready, with its replica counts,
/// and explaining each pod that is not.
pub async fn namespace(
    client: &kube::Client,
    namespace: &str,
    deadline: Deadline,
) -> Result<(), WaitError> {
    poll(
        deadline,
        format!("namespace {namespace}"),
        || {
            Box::pin(async move {
                let mut workloads = Vec::new();
                for kind in [Workload::Deployment, Workload::StatefulSet] {
                    for name in workload_names(client, namespace, kind).await? {
                        let r = replicas(client, namespace, kind, &name).await?;
                        if !r.is_ready() {
                            workloads.push(format!("{} {name}: {}", kind.kind(), r.describe()));
                        }
                    }
                }
                let pods: Vec<Pod> = pods_of(client, namespace, None)
                    .await?
                    .into_iter()
                    .filter(|p| !pod_ready(p))
                    .collect();
                Ok((!workloads.is_empty() || !pods.is_empty()).then_some((workloads, pods)))
            })
        },
        |(mut workloads, pods): (Vec<String>, Vec<Pod>)| {
            Box::pin(async move {
                workloads.extend(explain_pods(client, &pods).await);
                Ok(workloads)
            })
        },
    )
    .await
}

async fn workload_names(
    client: &kube::Client,
    namespace: &str,
    kind: Workload,
) -> Result<Vec<String>, WaitError> {
    let what = format!("list {}s in {namespace}", kind.kind());
    let names = match kind {
        Workload::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .map_err(api_err(what))?
            .items
            .into_iter()
            .map(|d| d.metadata.name)
            .collect::<Vec<_>>(),
        Workload::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .map_err(api_err(what))?
            .items
            .into_iter()
            .map(|s| s.metadata.name)
            .collect(),
    };
    Ok(names.into_iter().flatten().collect())
}

/// Waits until Deployment `namespace/name` has `replicas` ready and updated replicas, or, for
/// zero, until none of its pods is left (terminating pods count).
///
/// # Errors
/// [`WaitError::NotReady`] with the replica counts and the pods that are not ready or left.
pub async fn deployment_scaled(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    replicas: i32,
    deadline: Deadline,
) -> Result<(), WaitError> {
    poll(
        deadline,
        format!("Deployment {namespace}/{name} at {replicas} replicas"),
        || {
            Box::pin(async move {
                let r = self::replicas(client, namespace, Workload::Deployment, name).await?;
                if replicas == 0 {
                    let left = pods_of(client, namespace, r.selector.as_ref()).await?;
                    return Ok((!left.is_empty()).then_some((r, left)));
                }
                let settled = r.ready.is_some_and(|n| n >= replicas)
                    && r.updated.is_some_and(|n| n >= replicas);
                Ok((!settled).then_some((r, Vec::new())))
            })
        },
        |(r, left): (Replicas, Vec<Pod>)| {
            Box::pin(async move {
                if replicas == 0 {
                    let names: Vec<String> = left
                        .iter()
                        .filter_map(|p| p.metadata.name.clone())
                        .collect();
                    return Ok(vec![format!(
                        "{} pod(s) left (terminating pods count): {}",
                        names.len(),
                        names.join(", ")
                    )]);
                }
                let mut parts = vec![r.describe()];
                parts.extend(
                    explain_workload_pods(client, namespace, name, r.selector.as_ref()).await?,
                );
                Ok(parts)
            })
        },
    )
    .await
}

/// Recent events about one object, newest last, as `reason: message`. Best effort: events
/// that cannot be listed are left out of an explanation, never its verdict.
pub(crate) async fn events_for(client: &kube::Client, namespace: &str, name: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let mut events = match api.list(&params).await {
        Ok(list) => list.items,
        Err(err) => return vec![format!("events could not be listed: {err}")],
    };
    events.sort_by_key(|e| {
        e.metadata
            .resource_version
            .as_deref()
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
                e.reason.as_deref().unwrap_or_default(),
                e.message.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

/// Why a pod is not Ready: phase, the conditions that are not True, each container's state
/// (waiting with its reason, terminated with its exit code) and restarts, the last events and
/// the last log lines.
pub(crate) async fn explain_pod(client: &kube::Client, pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut parts = pod_state(pod);
    let events = events_for(client, &ns, &name).await;
    if !events.is_empty() {
        parts.push(format!("events: {}", events.join(" | ")));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let params = LogParams {
        tail_lines: Some(5),
        ..LogParams::default()
    };
    if let Ok(logs) = pods.logs(&name, &params).await {
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

/// A pod's phase, the conditions that are not True and each container's state, from its
/// status alone.
fn pod_state(pod: &Pod) -> Vec<String> {
    let status = pod.status.clone().unwrap_or_default();
    let mut parts = vec![format!(
        "phase {}",
        status.phase.as_deref().unwrap_or("Unknown")
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
        parts.push(if why.is_empty() {
            format!("{} {}", c.type_, c.status)
        } else {
            format!("{} {} ({why})", c.type_, c.status)
        });
    }
    for cs in status.container_statuses.iter().flatten() {
        let state = cs.state.as_ref();
        let what = if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            format!(
                "waiting: {}{}",
                w.reason.as_deref().unwrap_or_default(),
                w.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            format!(
                "terminated: exit {}{}",
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )
        } else if cs.ready {
            continue;
        } else {
            "running, not ready".to_owned()
        };
        parts.push(format!(
            "container {} {what} (restarts {})",
            cs.name, cs.restart_count
        ));
    }
    if status.container_statuses.as_ref().is_none_or(Vec::is_empty) {
        parts.push("no container status".to_owned());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
        PodCondition, PodStatus,
    };

    fn pod(status: PodStatus) -> Pod {
        Pod {
            status: Some(status),
            ..Pod::default()
        }
    }

    #[test]
    fn a_pod_state_names_phase_false_conditions_and_each_container() {
        let p = pod(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![
                PodCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    reason: Some("ContainersNotReady".into()),
                    ..PodCondition::default()
                },
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    ..PodCondition::default()
                },
            ]),
            container_statuses: Some(vec![
                ContainerStatus {
                    name: "app".into(),
                    restart_count: 3,
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("CrashLoopBackOff".into()),
                            message: None,
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                },
                ContainerStatus {
                    name: "init".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 2,
                            reason: Some("Error".into()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                },
                ContainerStatus {
                    name: "sidecar".into(),
                    ready: true,
                    ..ContainerStatus::default()
                },
            ]),
            ..PodStatus::default()
        });
        assert_eq!(
            pod_state(&p),
            [
                "phase Running",
                "Ready False (ContainersNotReady)",
                "container app waiting: CrashLoopBackOff (restarts 3)",
                "container init terminated: exit 2 (Error) (restarts 0)",
            ]
        );
        assert!(!pod_ready(&p));
    }

    #[test]
    fn a_pod_without_status_says_so_and_a_finished_pod_counts_as_ready() {
        assert_eq!(
            pod_state(&Pod::default()),
            ["phase Unknown", "no container status"]
        );
        let done = pod(PodStatus {
            phase: Some("Succeeded".into()),
            ..PodStatus::default()
        });
        assert!(pod_ready(&done));
    }

    #[test]
    fn replicas_say_nothing_until_the_controller_observed_the_spec() {
        let stale = Replicas::of(Some(2), Some(1), Some(1), Some(1), Some(1), None);
        assert!(!stale.is_ready());
        assert_eq!(
            stale.describe(),
            "the controller has not observed the applied spec"
        );
        let short = Replicas::of(Some(2), Some(2), Some(3), Some(1), Some(3), None);
        assert!(!short.is_ready());
        assert_eq!(short.describe(), "1/3 replicas ready");
        let ready = Replicas::of(Some(2), Some(2), None, Some(1), Some(1), None);
        assert!(ready.is_ready(), "replicas default to 1");
    }
}
