//! Deploying the Titanium stack the way the runbook does (`kubectl apply -k`), with the real
//! kubectl: `kubectl kustomize OVERLAY | kubectl apply --server-side -f -`, then waiting until
//! every workload in the namespace is ready, with a deadline and a message that names what is
//! not ready and why.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::cluster::Cluster;

/// What went wrong while deploying.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// kubectl failed; its own output is included.
    #[error("`{command}` failed ({status}):\n{output}")]
    Kubectl {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error.
        output: String,
    },
    /// kubectl could not be started.
    #[error("could not run kubectl (install kubectl 1.29 or newer)")]
    Spawn(#[source] std::io::Error),
    /// The cluster could not be reached.
    #[error("cluster")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {what}")]
    Api {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Workloads did not become ready in time.
    #[error("not ready after {seconds} s in namespace {namespace}:\n{details}")]
    NotReady {
        /// The namespace.
        namespace: String,
        /// The deadline.
        seconds: u64,
        /// One line per workload or pod that is not ready, with its conditions and last events.
        details: String,
    },
}

/// The kustomize overlay for a provider (`fixtures/k8s/overlays/<name>`).
pub fn overlay(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/k8s/overlays")
        .join(name)
}

fn kubectl(cluster: &impl Cluster, args: &[&str]) -> duct::Expression {
    let mut all = vec![
        "--kubeconfig".to_owned(),
        cluster.kubeconfig().display().to_string(),
        "--context".to_owned(),
        cluster.context().to_owned(),
    ];
    // A private discovery cache: a rebuilt cluster may reuse an address with other resources.
    all.push("--cache-dir".to_owned());
    all.push(
        cluster
            .kubeconfig()
            .with_extension("kubectl-cache")
            .display()
            .to_string(),
    );
    all.extend(args.iter().map(|a| (*a).to_owned()));
    duct::cmd("kubectl", all)
}

/// Renders `overlay` with `kubectl kustomize` and applies it server-side. CustomResourceDefinitions
/// go first and are waited for until Established, then everything else: in one apply, kubectl
/// cannot map custom resources whose CRDs it has not seen yet ("ensure CRDs are installed
/// first"), on a real cluster as here.
///
/// # Errors
/// [`DeployError::Kubectl`] with kubectl's output when rendering, waiting or applying fails.
pub async fn apply_kustomize(cluster: &impl Cluster, overlay: &Path) -> Result<(), DeployError> {
    let (crds, rest) = render(cluster, overlay).await?;
    apply_crds(cluster, crds).await?;
    run(
        kubectl(cluster, &APPLY),
        Some(list(rest)),
        "kubectl apply --server-side",
    )
    .await?;
    Ok(())
}

/// Applies only the CustomResourceDefinitions of `overlay` and waits until they are
/// Established: the cluster-wide infrastructure (Istio, the monitoring stack's CRDs) that the
/// runbook installs on a rebuilt cluster (Phase 4.3) before the application is restored.
///
/// # Errors
/// [`DeployError::Kubectl`] with kubectl's output.
pub async fn apply_infrastructure(
    cluster: &impl Cluster,
    overlay: &Path,
) -> Result<usize, DeployError> {
    let (crds, _) = render(cluster, overlay).await?;
    let count = crds.len();
    apply_crds(cluster, crds).await?;
    Ok(count)
}

const APPLY: [&str; 6] = [
    "apply",
    "--server-side",
    "--field-manager",
    "rebuild-rehearsal",
    "-f",
    "-",
];

/// Renders `overlay` and splits it into CRDs and everything else.
async fn render(
    cluster: &impl Cluster,
    overlay: &Path,
) -> Result<(Vec<serde_json::Value>, Vec<serde_json::Value>), DeployError> {
    let overlay_arg = overlay.display().to_string();
    let rendered = run(
        kubectl(cluster, &["kustomize", &overlay_arg]),
        None,
        &format!("kubectl kustomize {overlay_arg}"),
    )
    .await?;
    let text = String::from_utf8_lossy(&rendered);
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).map_err(|err| DeployError::Kubectl {
            command: format!("kubectl kustomize {overlay_arg}"),
            status: "rendered YAML did not parse".into(),
            output: err.to_string(),
        })?;
    Ok(docs
        .into_iter()
        .filter(|d| !d.is_null())
        .partition(|d| d["kind"] == "CustomResourceDefinition"))
}

async fn apply_crds(
    cluster: &impl Cluster,
    crds: Vec<serde_json::Value>,
) -> Result<(), DeployError> {
    if crds.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = crds
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .map(|n| format!("crd/{n}"))
        .collect();
    run(
        kubectl(cluster, &APPLY),
        Some(list(crds)),
        "kubectl apply --server-side (CRDs)",
    )
    .await?;
    let mut wait = vec!["wait", "--for", "condition=Established", "--timeout", "60s"];
    wait.extend(names.iter().map(String::as_str));
    run(
        kubectl(cluster, &wait),
        None,
        "kubectl wait --for condition=Established",
    )
    .await?;
    Ok(())
}

/// A `v1 List` of objects, which kubectl applies as one input.
fn list(items: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}))
        .expect("JSON values serialise")
}

async fn run(
    expression: duct::Expression,
    stdin: Option<Vec<u8>>,
    command: &str,
) -> Result<Vec<u8>, DeployError> {
    let expression = match stdin {
        Some(bytes) => expression.stdin_bytes(bytes),
        None => expression.stdin_null(),
    };
    let out = tokio::task::spawn_blocking(move || {
        expression
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
    })
    .await
    .expect("kubectl task")
    .map_err(DeployError::Spawn)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(DeployError::Kubectl {
            command: command.to_owned(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Waits until every Deployment and StatefulSet in `namespace` has its replicas ready and
/// every pod is Ready.
///
/// # Errors
/// [`DeployError::NotReady`] naming each workload and pod that is not ready, with the pod's
/// conditions and container states.
pub async fn wait_ready(
    client: &kube::Client,
    namespace: &str,
    timeout: Duration,
) -> Result<(), DeployError> {
    let deadline = Instant::now() + timeout;
    loop {
        let pending = not_ready(client, namespace, Instant::now() >= deadline).await?;
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DeployError::NotReady {
                namespace: namespace.to_owned(),
                seconds: timeout.as_secs(),
                details: pending.join("\n"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last events and log lines of a pod, indented, for a not-ready message. Best effort:
/// what cannot be read is left out.
async fn pod_evidence(client: &kube::Client, namespace: &str, pod: &str) -> Vec<String> {
    use k8s_openapi::api::core::v1::Event;
    let mut lines = Vec::new();
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
        .await;
    if let Ok(events) = events {
        for e in events.items.iter().rev().take(3).rev() {
            lines.push(format!(
                "    event {}: {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            ));
        }
    }
    let params = kube::api::LogParams {
        tail_lines: Some(5),
        ..kube::api::LogParams::default()
    };
    if let Ok(log) = Api::<Pod>::namespaced(client.clone(), namespace)
        .logs(pod, &params)
        .await
    {
        lines.extend(log.lines().map(|l| format!("    log: {l}")));
    }
    lines
}

async fn not_ready(
    client: &kube::Client,
    namespace: &str,
    with_evidence: bool,
) -> Result<Vec<String>, DeployError> {
    let api_err = |what: &str| {
        let what = format!("{what} in {namespace}");
        move |source| DeployError::Api { what, source }
    };
    let mut pending = Vec::new();
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(api_err("list deployments"))?;
    for d in deployments {
        let want = d.spec.replicas.unwrap_or(1);
        let ready = d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        if ready < want {
            pending.push(format!(
                "deployment {}: {ready}/{want} ready",
                d.metadata.name.unwrap_or_default()
            ));
        }
    }
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(api_err("list statefulsets"))?;
    for s in statefulsets {
        let want = s.spec.replicas.unwrap_or(1);
        let ready = s
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        if ready < want {
            pending.push(format!(
                "statefulset {}: {ready}/{want} ready",
                s.metadata.name.unwrap_or_default()
            ));
        }
    }
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(api_err("list pods"))?;
    for p in pods {
        if crate::facts::pod_succeeded(p.status.as_ref()) {
            continue;
        }
        if !crate::facts::pod_ready(p.status.as_ref()) {
            let status = p.status.clone().unwrap_or_default();
            let containers: Vec<String> = status
                .container_statuses
                .iter()
                .flatten()
                .map(|c| {
                    let state = c.state.as_ref();
                    let why = state
                        .and_then(|s| {
                            s.waiting.as_ref().map(|w| {
                                format!("waiting: {}", w.reason.clone().unwrap_or_default())
                            })
                        })
                        .or_else(|| {
                            state.and_then(|s| {
                                s.terminated
                                    .as_ref()
                                    .map(|t| format!("terminated: exit {}", t.exit_code))
                            })
                        })
                        .unwrap_or_else(|| "running, not ready".into());
                    format!("{} {why}, restarts {}", c.name, c.restart_count)
                })
                .collect();
            let name = p.metadata.name.clone().unwrap_or_default();
            pending.push(format!(
                "pod {name}: phase {}; {}",
                status.phase.unwrap_or_else(|| "unknown".into()),
                if containers.is_empty() {
                    "no container status".into()
                } else {
                    containers.join("; ")
                }
            ));
            if with_evidence {
                pending.extend(pod_evidence(client, namespace, &name).await);
            }
        }
    }
    Ok(pending)
}
