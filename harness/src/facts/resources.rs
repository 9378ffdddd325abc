//! Resource usage of a cluster, for the runbook's rollback criterion 4 ("리소스 부족"): node
//! CPU and memory through the metrics API (`metrics.k8s.io`, what `kubectl top nodes` reads),
//! sampled over a window, and each PersistentVolumeClaim's bytes in use against its request.
//! Observed here, judged by `verify::decide`.
//!
//! Node usage is what `kubectl top nodes` prints: the NodeMetrics usage over the Node's
//! allocatable. A sample is one NodeMetrics answer; answers with the same `timestamp` are the
//! same sample, so polling faster than metrics-server's resolution adds nothing.
//!
//! A claim's usage is measured in the pod that mounts it: `du -sk` of the mount path, run
//! through the API's exec in a running container that mounts the claim (what an operator
//! would run on a real cluster; on the simulator the mount is the claim's host directory, so
//! the files are the volume's own). `du` counts the files' allocated blocks, not the file
//! system's own overhead, which `df` would add on a volume of its own. A claim no running
//! pod mounts is not in use: it is listed as such, not measured.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, ApiResource, AttachParams, DynamicObject, ListParams, ObjectList};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;

/// Why resource usage could not be observed.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// A list or exec through the API failed.
    #[error("{what}")]
    Kube {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A figure in an object could not be read.
    #[error("{what}: cannot read {value:?}")]
    Unreadable {
        /// Which figure.
        what: String,
        /// The value found.
        value: String,
    },
    /// A command run in a pod failed or printed what was not expected.
    #[error("{command} in pod {pod}: {detail}")]
    Exec {
        /// The pod, `namespace/name`.
        pod: String,
        /// The command.
        command: String,
        /// Its status or output.
        detail: String,
    },
}

/// One sample of one node: its usage as the metrics API reported it, and its allocatable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeResourceSample {
    /// The node's name.
    pub node: String,
    /// When the usage was measured (the NodeMetrics `timestamp`).
    pub timestamp: DateTime<Utc>,
    /// The window the CPU rate was measured over (the NodeMetrics `window`).
    #[serde(with = "crate::facts::secs")]
    pub window: Duration,
    /// CPU in use, in millicores.
    pub cpu_millicores: f64,
    /// The node's allocatable CPU, in millicores.
    pub cpu_allocatable_millicores: f64,
    /// Memory working set, in bytes.
    pub memory_bytes: f64,
    /// The node's allocatable memory, in bytes.
    pub memory_allocatable_bytes: f64,
    /// Where the usage was read: [`METRICS_API`] or [`KUBELET_SUMMARY`].
    #[serde(default)]
    pub source: String,
}

/// A sample's source: the metrics API (metrics-server, or the simulator's).
pub const METRICS_API: &str = "metrics.k8s.io";
/// A sample's source where the metrics API is not served: the kubelet's Summary API, the
/// `pods` system container (the cgroup every pod's cgroup is under).
pub const KUBELET_SUMMARY: &str = "kubelet /stats/summary, pods cgroup";

impl NodeResourceSample {
    /// CPU usage as a share of allocatable (`kubectl top nodes`' `CPU(%)` / 100).
    pub fn cpu_share(&self) -> f64 {
        self.cpu_millicores / self.cpu_allocatable_millicores
    }

    /// Memory usage as a share of allocatable (`MEMORY(%)` / 100).
    pub fn memory_share(&self) -> f64 {
        self.memory_bytes / self.memory_allocatable_bytes
    }
}

impl NodeResourceSample {
    /// The sample's figures, without the node's name.
    pub fn figures(&self) -> String {
        format!(
            "at {} (window {:.1} s, {}): CPU {:.0}m of {:.0}m ({:.1} %), memory {:.0} MiB of {:.0} MiB ({:.1} %)",
            self.timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.window.as_secs_f64(),
            self.source,
            self.cpu_millicores,
            self.cpu_allocatable_millicores,
            self.cpu_share() * 100.0,
            self.memory_bytes / 1048576.0,
            self.memory_allocatable_bytes / 1048576.0,
            self.memory_share() * 100.0,
        )
    }
}

impl std::fmt::Display for NodeResourceSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.node, self.figures())
    }
}

/// A claim's bytes in use against its requested size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvcUsage {
    /// `namespace/name` of the claim.
    pub claim: String,
    /// The pod (and container) it was measured in, or `None` when no running pod mounts it.
    pub measured_in: Option<String>,
    /// The mount path measured.
    pub mount_path: Option<String>,
    /// Bytes in use (`du -sk` × 1024); `None` when not in use.
    pub used_bytes: Option<u64>,
    /// `spec.resources.requests.storage`, in bytes.
    pub requested_bytes: u64,
}

impl PvcUsage {
    /// Used over requested, when measured.
    pub fn share(&self) -> Option<f64> {
        self.used_bytes
            .map(|u| u as f64 / self.requested_bytes as f64)
    }
}

impl PvcUsage {
    /// What was measured, without the claim's name.
    pub fn measurement(&self) -> String {
        match (self.used_bytes, self.share(), &self.measured_in) {
            (Some(used), Some(share), Some(pod)) => format!(
                "{used} of {} bytes requested ({:.1} %), du -sk {} in {pod}",
                self.requested_bytes,
                share * 100.0,
                self.mount_path.as_deref().unwrap_or("?"),
            ),
            _ => format!(
                "{} bytes requested, not in use (no running pod mounts it): not measured",
                self.requested_bytes
            ),
        }
    }
}

impl std::fmt::Display for PvcUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.claim, self.measurement())
    }
}

/// What was observed of a cluster's resources, or why it could not be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceObservation {
    /// Every node's samples in time order, or why the metrics API gave none.
    pub nodes: Result<Vec<NodeResourceSample>, String>,
    /// Every claim of the namespace, or why they could not be measured.
    pub pvcs: Result<Vec<PvcUsage>, String>,
}

/// How long and how often to sample the nodes.
#[derive(Clone, Copy, Debug)]
pub struct SampleWindow {
    /// Distinct samples wanted per node.
    pub samples: u32,
    /// Time the samples must span (from the start of the first one's window to the last's
    /// timestamp).
    pub span: Duration,
    /// Give up after this long, with what was gathered.
    pub deadline: Duration,
}

/// The time a node's samples cover: from the start of the first one's window to the last
/// one's timestamp. Zero for no sample.
pub fn samples_span(samples: &[&NodeResourceSample]) -> Duration {
    match (samples.first(), samples.last()) {
        (Some(first), Some(last)) => {
            let span = last.timestamp - first.timestamp;
            span.to_std().unwrap_or_default() + first.window
        }
        _ => Duration::ZERO,
    }
}

/// A Kubernetes quantity (`250m`, `123456789n`, `2`, `1Gi`, `512Ki`, `1e3`) as a number of
/// base units (cores or bytes).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in suffixes {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    q.parse::<f64>().ok()
}

fn quantity(what: String, value: Option<&str>) -> Result<f64, ResourceError> {
    let value = value.unwrap_or("");
    parse_quantity(value).ok_or_else(|| ResourceError::Unreadable {
        what,
        value: value.to_owned(),
    })
}

/// The metrics API's NodeMetrics resource.
fn node_metrics_resource() -> ApiResource {
    ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "NodeMetrics".into(),
        plural: "nodes".into(),
    }
}

/// One answer of the metrics API joined with the Nodes' allocatable, as `kubectl top nodes`
/// joins them.
async fn node_samples(
    client: &kube::Client,
    metrics: ObjectList<DynamicObject>,
) -> Result<Vec<NodeResourceSample>, ResourceError> {
    let nodes = list_nodes(client).await?;
    let mut out = Vec::new();
    for m in metrics.items {
        let name = m.metadata.name.clone().unwrap_or_default();
        let Some(node) = nodes
            .items
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&name))
        else {
            continue;
        };
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let alloc = |k: &str| allocatable.and_then(|a| a.get(k)).map(|q| q.0.as_str());
        let field = |p: &str| m.data.pointer(p).and_then(|v| v.as_str());
        let timestamp = field("/timestamp")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .ok_or_else(|| ResourceError::Unreadable {
                what: format!("NodeMetrics {name} timestamp"),
                value: field("/timestamp").unwrap_or("").to_owned(),
            })?
            .with_timezone(&Utc);
        let window = field("/window")
            .and_then(|w| w.strip_suffix('s'))
            .and_then(|w| w.parse::<f64>().ok())
            .filter(|w| w.is_finite() && *w >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| ResourceError::Unreadable {
                what: format!("NodeMetrics {name} window"),
                value: field("/window").unwrap_or("").to_owned(),
            })?;
        out.push(NodeResourceSample {
            timestamp,
            window,
            cpu_millicores: quantity(format!("NodeMetrics {name} usage.cpu"), field("/usage/cpu"))?
                * 1000.0,
            cpu_allocatable_millicores: quantity(
                format!("Node {name} allocatable cpu"),
                alloc("cpu"),
            )? * 1000.0,
            memory_bytes: quantity(
                format!("NodeMetrics {name} usage.memory"),
                field("/usage/memory"),
            )?,
            memory_allocatable_bytes: quantity(
                format!("Node {name} allocatable memory"),
                alloc("memory"),
            )?,
            source: METRICS_API.to_owned(),
            node: name,
        });
    }
    Ok(out)
}

async fn list_nodes(client: &kube::Client) -> Result<ObjectList<Node>, ResourceError> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .list(&ListParams::default())
        .await
        .map_err(|source| ResourceError::Kube {
            what: "list nodes".into(),
            source,
        })
}

/// The metrics API's NodeMetrics, or `None` when the API server does not serve the group
/// (404: no metrics-server behind an APIService).
async fn list_node_metrics(
    client: &kube::Client,
) -> Result<Option<ObjectList<DynamicObject>>, ResourceError> {
    let metrics: Api<DynamicObject> = Api::all_with(client.clone(), &node_metrics_resource());
    match metrics.list(&ListParams::default()).await {
        Ok(list) => Ok(Some(list)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(source) => Err(ResourceError::Kube {
            what: "list nodes.metrics.k8s.io (the metrics API)".into(),
            source,
        }),
    }
}

/// The cumulative CPU time and the memory working set of one node's `pods` system container,
/// as the kubelet's Summary API reports them.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PodsCgroup {
    time: DateTime<Utc>,
    cpu_core_nanoseconds: f64,
    memory_working_set_bytes: f64,
}

/// The `pods` system container of a Summary API answer (`/stats/summary`).
fn pods_cgroup(node: &str, summary: &serde_json::Value) -> Result<PodsCgroup, ResourceError> {
    let unreadable = |what: &str, value: Option<&serde_json::Value>| ResourceError::Unreadable {
        what: format!("node {node} /stats/summary {what}"),
        value: value.map(ToString::to_string).unwrap_or_default(),
    };
    let pods = summary
        .pointer("/node/systemContainers")
        .and_then(|c| c.as_array())
        .and_then(|c| c.iter().find(|c| c["name"] == "pods"))
        .ok_or_else(|| unreadable("systemContainers[name=pods]", summary.pointer("/node")))?;
    let time = pods
        .pointer("/cpu/time")
        .and_then(|t| t.as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .ok_or_else(|| unreadable("pods cpu.time", pods.pointer("/cpu/time")))?
        .with_timezone(&Utc);
    let number = |p: &str| {
        pods.pointer(p)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| unreadable(p, pods.pointer(p)))
    };
    Ok(PodsCgroup {
        time,
        cpu_core_nanoseconds: number("/cpu/usageCoreNanoSeconds")?,
        memory_working_set_bytes: number("/memory/workingSetBytes")?,
    })
}

/// The sample between two readings of a node's pods cgroup: the CPU rate over the time
/// between them, as metrics-server computes it from two scrapes. `None` when `now` is not
/// later than `before` (the kubelet's stats had not been refreshed).
fn summary_sample(
    node: &Node,
    before: &PodsCgroup,
    now: &PodsCgroup,
) -> Result<Option<NodeResourceSample>, ResourceError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let Ok(window) = (now.time - before.time).to_std() else {
        return Ok(None);
    };
    if window.is_zero() {
        return Ok(None);
    }
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let alloc = |k: &str| allocatable.and_then(|a| a.get(k)).map(|q| q.0.as_str());
    let cpu_seconds = (now.cpu_core_nanoseconds - before.cpu_core_nanoseconds).max(0.0) / 1e9;
    Ok(Some(NodeResourceSample {
        timestamp: now.time,
        window,
        cpu_millicores: cpu_seconds / window.as_secs_f64() * 1000.0,
        cpu_allocatable_millicores: quantity(format!("Node {name} allocatable cpu"), alloc("cpu"))?
            * 1000.0,
        memory_bytes: now.memory_working_set_bytes,
        memory_allocatable_bytes: quantity(
            format!("Node {name} allocatable memory"),
            alloc("memory"),
        )?,
        source: KUBELET_SUMMARY.to_owned(),
        node: name,
    }))
}

/// Samples from the kubelets' Summary API through the API server's node proxy, for clusters
/// without the metrics API: each node's reading is compared with its previous one in `last`.
async fn summary_samples(
    client: &kube::Client,
    last: &mut BTreeMap<String, PodsCgroup>,
) -> Result<Vec<NodeResourceSample>, ResourceError> {
    let mut out = Vec::new();
    for node in list_nodes(client).await?.items {
        let name = node.metadata.name.clone().unwrap_or_default();
        let path = format!("/api/v1/nodes/{name}/proxy/stats/summary?only_cpu_and_memory=true");
        let request =
            http::Request::get(&path)
                .body(Vec::new())
                .map_err(|e| ResourceError::Unreadable {
                    what: "request".into(),
                    value: format!("{path}: {e}"),
                })?;
        let summary: serde_json::Value =
            client
                .request(request)
                .await
                .map_err(|source| ResourceError::Kube {
                    what: format!("GET {path} (the kubelet's Summary API, through the API server)"),
                    source,
                })?;
        let now = pods_cgroup(&name, &summary)?;
        if let Some(before) = last.get(&name)
            && let Some(sample) = summary_sample(&node, before, &now)?
        {
            out.push(sample);
        }
        if last.get(&name).is_none_or(|b| b.time < now.time) {
            last.insert(name, now);
        }
    }
    Ok(out)
}

/// Samples every node's usage until each has `window.samples` distinct samples spanning
/// `window.span`, or `window.deadline` passes (then with what was gathered: the judgement
/// says whether it was enough).
///
/// # Errors
/// [`ResourceError`] when the metrics API or the Nodes cannot be listed, or an answer cannot
/// be read.
pub async fn observe_nodes(
    client: &kube::Client,
    window: SampleWindow,
) -> Result<Vec<NodeResourceSample>, ResourceError> {
    let started = Instant::now();
    let mut by_node: BTreeMap<String, Vec<NodeResourceSample>> = BTreeMap::new();
    // Without the metrics API (no metrics-server: kind, the local provider), the kubelets'
    // Summary API, which is what metrics-server reads.
    let mut summaries: Option<BTreeMap<String, PodsCgroup>> = None;
    loop {
        let samples = match &mut summaries {
            Some(last) => summary_samples(client, last).await?,
            None => match list_node_metrics(client).await? {
                Some(metrics) => node_samples(client, metrics).await?,
                None => {
                    tracing::info!(
                        "metrics.k8s.io is not served; reading the kubelets' /stats/summary"
                    );
                    let mut last = BTreeMap::new();
                    let first = summary_samples(client, &mut last).await?;
                    summaries = Some(last);
                    first
                }
            },
        };
        for s in samples {
            let samples = by_node.entry(s.node.clone()).or_default();
            if samples.last().is_none_or(|l| l.timestamp < s.timestamp) {
                samples.push(s);
            }
        }
        let enough = !by_node.is_empty()
            && by_node.values().all(|s| {
                let refs: Vec<&NodeResourceSample> = s.iter().collect();
                s.len() >= window.samples as usize && samples_span(&refs) >= window.span
            });
        if enough || started.elapsed() >= window.deadline {
            return Ok(by_node.into_values().flatten().collect());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every claim of `namespace` with its bytes in use, measured in a running pod that mounts
/// it.
///
/// # Errors
/// [`ResourceError`] when claims or pods cannot be listed, or the measurement in a pod that
/// mounts a claim fails.
pub async fn observe_pvcs(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<PvcUsage>, ResourceError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claims = claims
        .list(&ListParams::default())
        .await
        .map_err(|source| ResourceError::Kube {
            what: format!("list persistentvolumeclaims in {namespace}"),
            source,
        })?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let running = pods
        .list(&ListParams::default().fields("status.phase=Running"))
        .await
        .map_err(|source| ResourceError::Kube {
            what: format!("list running pods in {namespace}"),
            source,
        })?;
    let mut out = Vec::new();
    for claim in &claims.items {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let requested = claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.as_str());
        let requested_bytes = quantity(
            format!("PersistentVolumeClaim {namespace}/{name} requests.storage"),
            requested,
        )? as u64;
        let mut usage = PvcUsage {
            claim: format!("{namespace}/{name}"),
            measured_in: None,
            mount_path: None,
            used_bytes: None,
            requested_bytes,
        };
        if let Some((pod, container, path)) = mount_of(&running.items, &name) {
            let kib = du_kib(&pods, namespace, &pod, &container, &path).await?;
            usage.measured_in = Some(format!("{namespace}/{pod} container {container}"));
            usage.mount_path = Some(path);
            usage.used_bytes = Some(kib * 1024);
        }
        out.push(usage);
    }
    Ok(out)
}

/// A running pod, container and mount path through which the claim is mounted.
fn mount_of(pods: &[Pod], claim: &str) -> Option<(String, String, String)> {
    pods.iter().find_map(|pod| {
        let spec = pod.spec.as_ref()?;
        let volume = spec.volumes.as_ref()?.iter().find(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == claim)
        })?;
        spec.containers.iter().find_map(|c| {
            let mount = c
                .volume_mounts
                .as_ref()?
                .iter()
                .find(|m| m.name == volume.name)?;
            Some((
                pod.metadata.name.clone()?,
                c.name.clone(),
                mount.mount_path.clone(),
            ))
        })
    })
}

/// `du -sk PATH` in a container: the KiB its files occupy.
async fn du_kib(
    pods: &Api<Pod>,
    namespace: &str,
    pod: &str,
    container: &str,
    path: &str,
) -> Result<u64, ResourceError> {
    let command = vec!["du".to_owned(), "-sk".to_owned(), path.to_owned()];
    let shown = format!("du -sk {path}");
    let exec_error = |detail: String| ResourceError::Exec {
        pod: format!("{namespace}/{pod}"),
        command: shown.clone(),
        detail,
    };
    let params = AttachParams::default()
        .container(container)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut process =
        pods.exec(pod, command, &params)
            .await
            .map_err(|source| ResourceError::Kube {
                what: format!("exec {shown} in pod {namespace}/{pod}"),
                source,
            })?;
    let mut stdout = process.stdout().expect("stdout was requested");
    let mut stderr = process.stderr().expect("stderr was requested");
    let status = process.take_status().expect("status is taken once");
    let mut out = String::new();
    let mut err = String::new();
    let (read_out, _) = tokio::join!(
        stdout.read_to_string(&mut out),
        stderr.read_to_string(&mut err)
    );
    read_out.map_err(|e| exec_error(format!("reading its output: {e}")))?;
    let status = status
        .await
        .ok_or_else(|| exec_error("the stream ended without an exit status".into()))?;
    process
        .join()
        .await
        .map_err(|e| exec_error(format!("the session failed: {e}")))?;
    if status.status.as_deref() != Some("Success") {
        let why = status.message.or(status.reason).unwrap_or_default();
        return Err(exec_error(format!("{why}; stderr: {}", err.trim())));
    }
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| exec_error(format!("unexpected output {:?}", out.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubectl_reads_them() {
        for (q, v) in [
            ("250m", 0.25),
            ("244274809n", 0.244274809),
            ("2", 2.0),
            ("1Mi", 1048576.0),
            ("24683664Ki", 24683664.0 * 1024.0),
            ("10Gi", 10.0 * 1024f64.powi(3)),
            ("1k", 1000.0),
        ] {
            let got = parse_quantity(q).unwrap();
            assert!((got - v).abs() < 1e-9 * v.max(1.0), "{q}: {got} != {v}");
        }
        assert_eq!(parse_quantity("ten"), None);
        assert_eq!(parse_quantity(""), None);
    }

    /// A Summary API answer as a kubelet 1.2x gives it (trimmed), the pods cgroup at `time`.
    fn summary(time: &str, cpu_ns: u64, working_set: u64) -> serde_json::Value {
        serde_json::json!({"node": {"nodeName": "localhost",
            "systemContainers": [{"name": "pods",
                "cpu": {"time": time, "usageNanoCores": 0, "usageCoreNanoSeconds": cpu_ns},
                "memory": {"time": time, "workingSetBytes": working_set}}],
            "cpu": {"time": time, "usageCoreNanoSeconds": 99_000_000_000_000u64},
            "memory": {"time": time, "workingSetBytes": 4_000_000_000u64}}})
    }

    #[test]
    fn summary_samples_are_the_pods_cgroups_rate_between_two_readings() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "localhost"},
            "status": {"allocatable": {"cpu": "2", "memory": "24581264Ki"}}}))
        .unwrap();
        let a = pods_cgroup(
            "localhost",
            &summary("2026-12-04T12:23:32Z", 5_000_000_000, 1 << 30),
        )
        .unwrap();
        let b = pods_cgroup(
            "localhost",
            &summary("2026-12-04T12:23:42Z", 23_000_000_000, 1 << 29),
        )
        .unwrap();
        let s = summary_sample(&node, &a, &b).unwrap().unwrap();
        // 18 s of CPU in 10 s: 1800m of 2000m, the node's own 99 000 s not counted.
        assert_eq!(s.window, Duration::from_secs(10));
        assert!((s.cpu_millicores - 1800.0).abs() < 1e-6, "{s}");
        assert!((s.cpu_share() - 0.9).abs() < 1e-9);
        assert_eq!(s.memory_bytes, (1u64 << 29) as f64);
        assert_eq!(s.memory_allocatable_bytes, 24581264.0 * 1024.0);
        assert_eq!(s.source, KUBELET_SUMMARY);
        // The same reading again is no new sample; an answer without the pods cgroup is an
        // error naming it.
        assert_eq!(summary_sample(&node, &b, &b).unwrap(), None);
        let err = pods_cgroup(
            "localhost",
            &serde_json::json!({"node": {"systemContainers": []}}),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("systemContainers[name=pods]"),
            "{err}"
        );
    }
}
