//! The Kubernetes part of a backup: every namespaced resource of the namespace found through
//! discovery (custom resources included), raw and cleaned; and the optional quiesce of the
//! namespace's writers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::discovery::{Discovery, Scope, verbs};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::BackupError;
use super::clean::clean_objects;
use super::files::{create_private_file, ensure_parent};

/// The namespace to back up and the client to reach it.
#[derive(Clone)]
pub struct KubeSource {
    /// The client.
    pub client: kube::Client,
    /// The namespace (`titanium-prod`).
    pub namespace: String,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// What the manifest records of the Kubernetes part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeManifest {
    /// Namespace.
    pub namespace: String,
    /// Every object as the API returned it (a `v1` `List`, JSON).
    pub raw: String,
    /// Cleaned for re-apply (a `v1` `List`, JSON).
    pub clean_json: String,
    /// Cleaned for re-apply, multi-document YAML for `kubectl apply -f`.
    pub clean_yaml: String,
    /// Objects per `group/version/Kind` in the raw set.
    pub counts: BTreeMap<String, u64>,
    /// Objects left out of the cleaned set, with why.
    pub skipped: Vec<String>,
    /// Resources that could not be listed (a verdict, not a failure: the API may forbid some).
    pub unlisted: Vec<String>,
}

/// Every object of every namespaced resource in a namespace, found through discovery (custom
/// resources included), sorted by apiVersion, kind and name.
#[derive(Clone, Debug, Default)]
pub struct NamespaceObjects {
    /// The objects, with `apiVersion` and `kind` set.
    pub objects: Vec<Value>,
    /// Objects per `group/version/Kind`.
    pub counts: BTreeMap<String, u64>,
    /// Resources that could not be listed, with why.
    pub unlisted: Vec<String>,
}

/// Lists everything in `source`'s namespace through discovery that can be listed and created
/// (what a restore can apply). Read-only.
///
/// # Errors
/// [`BackupError::Kube`] when discovery fails (a resource that cannot be listed is recorded in
/// `unlisted` instead).
pub async fn list_namespace(source: &KubeSource) -> Result<NamespaceObjects, BackupError> {
    let ns = &source.namespace;
    let discovery = Discovery::new(source.client.clone())
        .run()
        .await
        .map_err(BackupError::kube("discover the API resources"))?;
    let mut objects: Vec<Value> = Vec::new();
    let mut counts = BTreeMap::new();
    let mut unlisted = Vec::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            // What cannot be created cannot be restored: read-only views such as
            // metrics-server's PodMetrics (`metrics.k8s.io`, get and list only) are not
            // objects of the namespace.
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::CREATE)
            {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(source.client.clone(), ns, &resource);
            let list = match api.list(&ListParams::default()).await {
                Ok(list) => list,
                Err(err) => {
                    unlisted.push(format!(
                        "{}/{}: {err}",
                        resource.api_version, resource.plural
                    ));
                    continue;
                }
            };
            for mut item in list.items {
                // List items come without type information: put it back.
                item.types = Some(kube::api::TypeMeta {
                    api_version: resource.api_version.clone(),
                    kind: resource.kind.clone(),
                });
                let value = serde_json::to_value(&item).map_err(|source| BackupError::Json {
                    what: format!("encode {}", resource.kind),
                    source,
                })?;
                *counts
                    .entry(format!("{}/{}", resource.api_version, resource.kind))
                    .or_insert(0) += 1;
                objects.push(value);
            }
        }
    }
    objects.sort_by(|a, b| {
        let key = |o: &Value| {
            (
                o.get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                o.get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                o.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(NamespaceObjects {
        objects,
        counts,
        unlisted,
    })
}

pub(crate) async fn backup_namespace(
    source: &KubeSource,
    dir: &Path,
) -> Result<KubeManifest, BackupError> {
    let ns = &source.namespace;
    let NamespaceObjects {
        objects,
        counts,
        unlisted,
    } = list_namespace(source).await?;
    let (clean, skipped) = clean_objects(&objects);

    let raw = "kubernetes/resources-raw.json".to_owned();
    let clean_json = "kubernetes/resources-clean.json".to_owned();
    let clean_yaml = "kubernetes/resources-clean.yaml".to_owned();
    write_list(&ensure_parent(dir, &raw)?, &objects)?;
    write_list(&dir.join(&clean_json), &clean)?;
    let path = dir.join(&clean_yaml);
    let mut file = std::io::BufWriter::new(create_private_file(&path)?);
    for obj in &clean {
        let yaml = serde_saphyr::to_string(obj).map_err(|err| BackupError::Io {
            action: "encode YAML for",
            path: path.clone(),
            source: std::io::Error::other(err.to_string()),
        })?;
        write!(file, "---\n{yaml}").map_err(BackupError::io("write", &path))?;
    }
    file.flush().map_err(BackupError::io("write", &path))?;
    Ok(KubeManifest {
        namespace: ns.clone(),
        raw,
        clean_json,
        clean_yaml,
        counts,
        skipped,
        unlisted,
    })
}

fn write_list(path: &Path, items: &[Value]) -> Result<(), BackupError> {
    let list =
        serde_json::json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items });
    let file = std::io::BufWriter::new(create_private_file(path)?);
    serde_json::to_writer_pretty(file, &list).map_err(|source| BackupError::Json {
        what: format!("write {}", path.display()),
        source,
    })
}

/// Which Deployments to scale to zero before the snapshot.
#[derive(Clone, Debug)]
pub struct QuiesceOptions {
    /// Deployments left running (for example the Redis deployment, which is backed up).
    pub keep: Vec<String>,
    /// How long to wait for each to reach zero replicas.
    pub timeout: Duration,
}

impl Default for QuiesceOptions {
    fn default() -> Self {
        Self {
            keep: Vec::new(),
            timeout: Duration::from_secs(120),
        }
    }
}

/// The replica counts a quiesce changed, so a restore can bring them back, and when writes
/// stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuiesceRecord {
    /// Namespace.
    pub namespace: String,
    /// Deployment name to the replicas it had.
    pub replicas: BTreeMap<String, i32>,
    /// When the last pod of theirs was gone, on this machine's clock (RFC 3339): no writer
    /// ran after this.
    pub writes_stopped_at: String,
    /// The same moment on the PostgreSQL server's clock (`clock_timestamp()` read right after
    /// the last pod was gone), when the backup has a PostgreSQL part: the RPO is measured
    /// from it to the snapshot, both on one clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_stopped_server_at: Option<String>,
}

/// Scales every Deployment of the namespace except `options.keep` to zero and waits until no
/// pod of theirs can write: terminating pods count until each of their containers has
/// stopped (see `can_still_write`), since a pod still shutting down can still write
/// (`status.replicas` drops to zero as soon as deletion starts).
///
/// # Errors
/// When the API refuses, or a deployment's pods are not gone in time.
pub async fn quiesce(
    source: &KubeSource,
    options: &QuiesceOptions,
) -> Result<QuiesceRecord, BackupError> {
    let ns = &source.namespace;
    let api: Api<Deployment> = Api::namespaced(source.client.clone(), ns);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(BackupError::kube(format!("list deployments in {ns}")))?;
    let mut replicas = BTreeMap::new();
    let mut selectors = BTreeMap::new();
    for d in &list.items {
        let Some(name) = d.metadata.name.clone() else {
            continue;
        };
        if options.keep.contains(&name) {
            continue;
        }
        let bad_selector = |detail: String| BackupError::QuiesceSelector {
            namespace: ns.clone(),
            name: name.clone(),
            detail,
        };
        let selector =
            Selector::try_from(d.spec.selector.clone()).map_err(|e| bad_selector(e.to_string()))?;
        // An empty selector would select every pod of the namespace, the kept ones too.
        if selector.selects_all() {
            return Err(bad_selector("it is empty and selects every pod".into()));
        }
        let count = d.spec.replicas.unwrap_or(1);
        replicas.insert(name.clone(), count);
        selectors.insert(name, selector);
    }
    for name in replicas.keys() {
        scale(&api, ns, name, 0).await?;
    }
    let pods: Api<Pod> = Api::namespaced(source.client.clone(), ns);
    for (name, selector) in &selectors {
        let deadline = Instant::now() + options.timeout;
        let params = ListParams::default().labels_from(selector);
        loop {
            let left = pods.list(&params).await.map_err(BackupError::kube(format!(
                "list the pods of deployment {ns}/{name}"
            )))?;
            let writers: Vec<&Pod> = left.items.iter().filter(|p| can_still_write(p)).collect();
            if writers.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(BackupError::QuiesceTimeout {
                    namespace: ns.clone(),
                    name: name.clone(),
                    replicas: i32::try_from(writers.len()).unwrap_or(i32::MAX),
                    seconds: options.timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(QuiesceRecord {
        namespace: ns.clone(),
        replicas,
        writes_stopped_at: chrono::Utc::now().to_rfc3339(),
        writes_stopped_server_at: None,
    })
}

/// Whether a pod of a scaled-down workload may still write: anything but a finished pod, or a
/// deleted one whose every container (init and regular) has stopped ([`stopped`]). A deleted
/// pod's containers are never restarted, and a real kubelet reports them stopped within a
/// second or two while the pod object itself can stay for tens of seconds more (its sandbox
/// and volumes torn down). A container not reported yet counts as running.
fn can_still_write(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return true;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return false;
    }
    if pod.metadata.deletion_timestamp.is_none() {
        return true;
    }
    let spec = pod.spec.as_ref();
    let declared = spec.map_or(0, |s| {
        s.containers.len() + s.init_containers.as_ref().map_or(0, Vec::len)
    });
    let statuses: Vec<_> = status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .collect();
    let all_stopped = statuses.len() >= declared && statuses.iter().all(|c| stopped(c));
    !all_stopped
}

/// Whether a container of a deleted pod has stopped: it is reported terminated, or the kubelet
/// killed and removed it and says so. Kubelet 1.20 reports such a container as `waiting`
/// (ContainerCreating) with a last state terminated, reason `ContainerStatusUnknown` ("The
/// container could not be located when the pod was deleted. The container used to be
/// Running"), until the pod object goes: on the local provider the quiesce waited 25 s and
/// 54 s for such pods, most of its 30-60 s backup phase. Any other `waiting` (a restart after
/// a crash, not yet stopped by the deletion) still counts as running.
fn stopped(c: &k8s_openapi::api::core::v1::ContainerStatus) -> bool {
    let Some(state) = &c.state else {
        return false;
    };
    if state.running.is_some() {
        return false;
    }
    if state.terminated.is_some() {
        return true;
    }
    let removed_by_the_deletion = c
        .last_state
        .as_ref()
        .and_then(|last| last.terminated.as_ref())
        .and_then(|t| t.reason.as_deref())
        == Some("ContainerStatusUnknown");
    state.waiting.is_some() && removed_by_the_deletion
}

/// Scales the Deployments of a [`QuiesceRecord`] back to their recorded replicas.
///
/// # Errors
/// When the API refuses.
pub async fn resume(client: &kube::Client, record: &QuiesceRecord) -> Result<(), BackupError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &record.namespace);
    for (name, count) in &record.replicas {
        scale(&api, &record.namespace, name, *count).await?;
    }
    Ok(())
}

async fn scale(
    api: &Api<Deployment>,
    ns: &str,
    name: &str,
    replicas: i32,
) -> Result<(), BackupError> {
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(BackupError::kube(format!(
            "scale deployment {ns}/{name} to {replicas}"
        )))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod with containers `a` and `b`, deleted or not, and the given container states.
    fn pod(deleted: bool, phase: &str, states: &[serde_json::Value]) -> Pod {
        let statuses: Vec<serde_json::Value> = states
            .iter()
            .zip(["a", "b"])
            .map(|(state, name)| {
                serde_json::json!({"name": name, "ready": false,
                "restartCount": 0, "image": "i", "imageID": "", "state": state})
            })
            .collect();
        let mut metadata = serde_json::json!({"name": "p"});
        if deleted {
            metadata["deletionTimestamp"] = "2026-12-04T13:28:52Z".into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": metadata,
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": phase, "containerStatuses": statuses},
        }))
        .unwrap()
    }

    /// `pod` with each container's last state set.
    fn with_last_states(pod: Pod, lasts: &[serde_json::Value]) -> Pod {
        let mut value = serde_json::to_value(pod).unwrap();
        for (status, last) in value["status"]["containerStatuses"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .zip(lasts)
        {
            status["lastState"] = last.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_deleted_pods_container_the_kubelet_removed_has_stopped_and_a_pending_restart_has_not() {
        let creating = serde_json::json!({"waiting": {"reason": "ContainerCreating"}});
        // What kubelet 1.20 reported for every container of a deleted pod once it had killed
        // and removed it, until the pod object went (local provider, 25-54 s).
        let removed = serde_json::json!({"terminated": {"exitCode": 137,
            "reason": "ContainerStatusUnknown",
            "message": "The container could not be located when the pod was deleted.  The container used to be Running"}});
        let crashed = serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error"}});
        let both_removed = || {
            with_last_states(
                pod(true, "Running", &[creating.clone(), creating.clone()]),
                &[removed.clone(), removed.clone()],
            )
        };
        assert!(!can_still_write(&both_removed()));
        // Not deleted: the same statuses are a restart on its way.
        let mut live = both_removed();
        live.metadata.deletion_timestamp = None;
        assert!(can_still_write(&live));
        // A crashed container waiting for its restart, or one never started, may still run.
        assert!(can_still_write(&with_last_states(
            pod(true, "Running", &[creating.clone(), creating.clone()]),
            &[removed.clone(), crashed],
        )));
        assert!(can_still_write(&pod(
            true,
            "Pending",
            &[creating.clone(), creating]
        )));
    }

    #[test]
    fn only_finished_pods_and_deleted_ones_with_every_container_terminated_cannot_write() {
        let running = serde_json::json!({"running": {"startedAt": "2026-12-04T13:28:49Z"}});
        let done = serde_json::json!({"terminated": {"exitCode": 0}});
        // Stopped: every container of a deleted pod terminated, or the pod finished.
        assert!(!can_still_write(&pod(
            true,
            "Running",
            &[done.clone(), done.clone()]
        )));
        assert!(!can_still_write(&pod(
            false,
            "Succeeded",
            &[done.clone(), done.clone()]
        )));
        // May write: one container still running, one not reported yet, or not deleted (its
        // containers would be restarted).
        assert!(can_still_write(&pod(
            true,
            "Running",
            &[done.clone(), running.clone()]
        )));
        assert!(can_still_write(&pod(
            true,
            "Running",
            std::slice::from_ref(&done)
        )));
        assert!(can_still_write(&pod(
            false,
            "Running",
            &[done.clone(), done]
        )));
        assert!(can_still_write(&pod(
            false,
            "Running",
            &[running.clone(), running]
        )));
    }
}
