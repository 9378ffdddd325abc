//! Deploying the Titanium stack the way the runbook does (`kubectl apply -k`), with the real
//! kubectl: `kubectl kustomize OVERLAY | kubectl apply --server-side -f -`, then waiting until
//! every workload in the namespace is ready, with a deadline and a message that names what is
//! not ready and why.

use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// The cluster infrastructure the runbook installs before the application (Phase 4.3):
/// `fixtures/k8s/infrastructure`, Istio's ingress gateway in `istio-system`.
pub fn infrastructure() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/k8s/infrastructure")
}

/// The namespace of the ingress gateway.
pub const INGRESS_NAMESPACE: &str = "istio-system";

/// What [`apply_infrastructure`] installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Infrastructure {
    /// CustomResourceDefinitions applied and Established.
    pub crds: usize,
    /// Objects of [`infrastructure`] applied (the ingress gateway and its access).
    pub objects: usize,
}

impl std::fmt::Display for Infrastructure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} CustomResourceDefinitions established; the ingress gateway ({} objects) ready \
             in {INGRESS_NAMESPACE}",
            self.crds, self.objects
        )
    }
}

/// Applies the CustomResourceDefinitions of `overlay` and waits until they are Established,
/// then the ingress gateway of [`infrastructure`] and waits until it is ready: the
/// cluster-wide infrastructure (Istio, the monitoring stack's CRDs) that the runbook installs
/// on a rebuilt cluster (Phase 4.3) before the application is restored. The gateway routes by
/// the application's Gateway and VirtualService once they exist.
///
/// # Errors
/// [`DeployError::Kubectl`] with kubectl's output; [`DeployError::NotReady`] when the gateway
/// is not ready within `timeout`.
pub async fn apply_infrastructure(
    cluster: &impl Cluster,
    overlay: &Path,
    timeout: Duration,
) -> Result<Infrastructure, DeployError> {
    let (crds, _) = render(cluster, overlay).await?;
    let count = crds.len();
    apply_crds(cluster, crds).await?;
    let (more_crds, objects) = render(cluster, &infrastructure()).await?;
    apply_crds(cluster, more_crds).await?;
    let applied = objects.len();
    run(
        kubectl(cluster, &APPLY),
        Some(list(objects)),
        "kubectl apply --server-side (infrastructure)",
    )
    .await?;
    let client = cluster.client().await?;
    wait_ready(&client, INGRESS_NAMESPACE, timeout).await?;
    Ok(Infrastructure {
        crds: count,
        objects: applied,
    })
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
/// every pod is Ready (through [`crate::ready::namespace`], the one way to wait).
///
/// # Errors
/// [`DeployError::NotReady`] naming each workload and pod that is not ready, with the pod's
/// conditions, container states, last events and log lines.
pub async fn wait_ready(
    client: &kube::Client,
    namespace: &str,
    timeout: Duration,
) -> Result<(), DeployError> {
    crate::ready::namespace(client, namespace, crate::ready::Deadline::new(timeout))
        .await
        .map_err(|err| match err {
            crate::ready::WaitError::NotReady { seconds, parts, .. } => DeployError::NotReady {
                namespace: namespace.to_owned(),
                seconds,
                details: parts.join(
                    "
",
                ),
            },
            crate::ready::WaitError::Api { what, source } => DeployError::Api { what, source },
        })
}
