//! A simulated Kubernetes cluster: an API server that the real kube-rs client and the real
//! kubectl use unchanged, embeddable in-process or run as the `simcluster` binary.
//!
//! [`SimCluster::start`] binds 127.0.0.1, seeds the objects a fresh cluster has (namespaces,
//! nodes from a kind configuration, the `kubernetes` service, a default StorageClass), starts
//! the built-in control loops and writes a kubeconfig. [`SimCluster::store`] reads the object
//! store directly (get and list), for benchmarks and tests that look past the API. Everything
//! else (the API handlers, controllers, the kubelet) is private to the crate: outside users
//! reach the cluster through its API. SIMULATION.md says what is simulated and how it differs
//! from a real cluster.

mod api;
mod config;
mod controllers;
mod kubelet;
mod metrics;
mod patch;
mod proto;
mod resources;
mod selector;
mod server;
mod status;
mod store;
mod table;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{AccessRule, AccessRuleError, KindConfigError, SimConfig};
pub use kubelet::{ImageMapError, KubeletError, check_state_dir_reachable};
pub use status::ApiError;
pub use store::Store;

use config::KindConfig;

/// Why a simulated cluster could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster name is not usable as a kubeconfig and node name.
    #[error(
        "invalid cluster name {name:?}: use lowercase letters, digits and '-' (at most 50 characters)"
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// The kind configuration is unusable.
    #[error(transparent)]
    KindConfig(#[from] KindConfigError),
    /// A file or directory could not be written.
    #[error("writing {path}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The port could not be bound.
    #[error("binding 127.0.0.1:{port}")]
    Bind {
        /// The port asked for (0 for any).
        port: u16,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server did not answer its own health check.
    #[error("the API server at {url} did not answer /version")]
    NotAnswering {
        /// The server URL.
        url: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("the API server failed")]
    Serve(#[source] std::io::Error),
    /// The simulated node (kubelet, workload controllers) could not start.
    #[error("starting the simulated node")]
    Node(#[source] kubelet::KubeletError),
    /// A background task panicked.
    #[error("a simulated cluster task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
    /// The machine's CPUs and memory (the node's capacity) could not be read from `/proc`.
    #[error("reading the machine's capacity from /proc")]
    Machine {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Seeding the cluster's initial objects failed.
    #[error("creating initial object {what}")]
    Seed {
        /// Which object.
        what: String,
        /// The cause.
        #[source]
        source: Box<ApiError>,
    },
}

/// A running simulated cluster. Dropping it stops the server; [`SimCluster::shutdown`] stops it
/// and waits.
pub struct SimCluster {
    name: String,
    url: String,
    kubeconfig: PathBuf,
    state_dir: PathBuf,
    store: Arc<Store>,
    stop: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
    controllers: Option<JoinHandle<()>>,
    workers: Option<controllers::workloads::Workers>,
}

impl std::fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCluster")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 50
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn create_private_dir(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let write = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(write)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(write)
}

fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let write = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write)?;
    }
    // Write next to the target and rename, so a reader never sees half a kubeconfig.
    let tmp = path.with_extension("tmp-simcluster");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write)?;
    f.write_all(text.as_bytes()).map_err(write)?;
    f.sync_all().map_err(write)?;
    std::fs::rename(&tmp, path).map_err(write)
}

/// The kubeconfig text for a cluster at `url`.
fn kubeconfig_yaml(name: &str, url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {url}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\ncurrent-context: {name}\npreferences: {{}}\nusers:\n- name: {name}\n  user: {{}}\n"
    )
}

async fn answers(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    if buf.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned(),
        ))
    }
}

/// Creates the objects a fresh cluster has: the four system namespaces, a Node per node of the
/// kind configuration (one control plane without one), the `kubernetes` Service and its
/// Endpoints (the API server's address), and the default StorageClass.
fn seed(
    store: &Store,
    name: &str,
    kind: Option<&KindConfig>,
    port: u16,
    service_ip: &str,
) -> Result<(), Error> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        seed_object(
            store,
            "v1",
            "Namespace",
            "",
            json!({"metadata": {"name": ns}}),
        )?;
    }
    let default_nodes;
    let nodes = match kind {
        Some(k) => k.node_names(name),
        None => {
            default_nodes = KindConfig {
                kind: "Cluster".into(),
                api_version: "kind.x-k8s.io/v1alpha4".into(),
                name: None,
                nodes: vec![config::KindNode {
                    role: "control-plane".into(),
                    image: None,
                    extra_port_mappings: Vec::new(),
                    labels: Default::default(),
                }],
            };
            default_nodes.node_names(name)
        }
    };
    let has_workers = nodes.iter().any(|(_, n)| n.role == "worker");
    let capacity = metrics::capacity().map_err(|source| Error::Machine { source })?;
    for (node_name, node) in &nodes {
        seed_object(
            store,
            "v1",
            "Node",
            "",
            node_object(node_name, node, has_workers, capacity),
        )?;
    }
    seed_object(
        store,
        "v1",
        "Service",
        "default",
        json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": service_ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        }),
    )?;
    // The API server's own Endpoints, as its endpoint reconciler writes them: the proxy
    // forwards the `kubernetes` Service (443) to the API server's port on 127.0.0.1.
    seed_object(
        store,
        "v1",
        "Endpoints",
        "default",
        json!({
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
        }),
    )?;
    seed_object(
        store,
        "storage.k8s.io/v1",
        "StorageClass",
        "",
        json!({
            "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": controllers::workloads::snapshots::CSI_DRIVER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        }),
    )?;
    // The CSI snapshot API and a snapshot class for the CSI driver, as a managed cluster
    // ships them.
    let crds: Vec<Value> = serde_saphyr::from_multiple(include_str!("seed/snapshot-crds.yaml"))
        .map_err(|e| Error::Seed {
            what: "the snapshot CustomResourceDefinitions".into(),
            source: Box::new(ApiError::internal(e.to_string())),
        })?;
    for crd in crds.into_iter().filter(|d| !d.is_null()) {
        seed_object(
            store,
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            crd,
        )?;
    }
    seed_object(
        store,
        "snapshot.storage.k8s.io/v1",
        "VolumeSnapshotClass",
        "",
        json!({
            "metadata": {"name": controllers::workloads::snapshots::SNAPSHOT_CLASS},
            "driver": controllers::workloads::snapshots::CSI_DRIVER,
            "deletionPolicy": "Delete",
        }),
    )?;
    Ok(())
}

/// Creates one initial object through the API.
fn seed_object(
    store: &Store,
    api_version: &str,
    kind_name: &str,
    ns: &str,
    obj: Value,
) -> Result<(), Error> {
    let rt = store
        .registry()
        .by_kind(api_version, kind_name)
        .cloned()
        .ok_or_else(|| Error::Seed {
            what: kind_name.to_owned(),
            source: Box::new(ApiError::internal("kind not registered")),
        })?;
    let what = format!("{kind_name} {}", obj["metadata"]["name"]);
    match api::create(store, &rt, ns, obj, &api::WriteOptions::default()) {
        Ok(_) => Ok(()),
        Err(source) => Err(Error::Seed {
            what,
            source: Box::new(source),
        }),
    }
}

/// A Ready Node as kind's would be: its version from the node image's tag, its labels, a
/// control plane tainted when there are workers, and the machine's CPUs and memory as its
/// capacity and allocatable (every simulated node is this one machine).
fn node_object(
    node_name: &str,
    node: &config::KindNode,
    has_workers: bool,
    capacity: metrics::Capacity,
) -> Value {
    let version = node
        .image
        .as_deref()
        .and_then(|i| i.split('@').next())
        .and_then(|i| i.rsplit_once(':'))
        .map(|(_, tag)| tag.to_owned())
        .filter(|t| t.starts_with('v'))
        .unwrap_or_else(|| server::GIT_VERSION.to_owned());
    let mut labels = json!({"kubernetes.io/hostname": node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"});
    for (k, v) in &node.labels {
        labels[k] = json!(v);
    }
    let mut spec =
        json!({"podCIDR": "10.244.0.0/24", "providerID": format!("simcluster://{node_name}")});
    if node.role == "control-plane" {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
        if has_workers {
            spec["taints"] =
                json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]);
        }
    }
    let now = api::now();
    let resources = json!({
        "cpu": capacity.cpus.to_string(),
        "memory": format!("{}Ki", capacity.memory_bytes / 1024),
        "pods": "110",
        "ephemeral-storage": "100Gi",
    });
    json!({
        "metadata": {"name": node_name, "labels": labels},
        "spec": spec,
        "status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node_name}],
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": version, "kubeProxyVersion": version, "containerRuntimeVersion": "simcluster://1", "operatingSystem": "linux", "architecture": "amd64", "osImage": "simcluster", "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        },
    })
}

impl SimCluster {
    /// Start a cluster: bind, seed, serve, check it answers, then write the kubeconfig.
    ///
    /// # Errors
    /// An invalid name or kind configuration, an unusable state dir or kubeconfig path, a
    /// port that cannot be bound, or a server that does not answer.
    pub async fn start(cfg: SimConfig) -> Result<SimCluster, Error> {
        if !valid_cluster_name(&cfg.name) {
            return Err(Error::InvalidName { name: cfg.name });
        }
        let kind = cfg
            .kind_config
            .as_deref()
            .map(KindConfig::load)
            .transpose()?;
        create_private_dir(&cfg.state_dir)?;
        let port = cfg.port.unwrap_or(0);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|source| Error::Bind { port, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { port, source })?;
        let url = format!("http://{addr}");
        let store = Arc::new(Store::new());
        let network = kubelet::NetworkLease::acquire()
            .map_err(|e| Error::Node(kubelet::KubeletError::PodNetwork(e)))?;
        seed(
            &store,
            &cfg.name,
            kind.as_ref(),
            addr.port(),
            &network.kubernetes_service_ip(),
        )?;
        controllers::reconcile(&store);
        let stop = CancellationToken::new();
        let subresources: Arc<server::SubresourceMap> = Arc::default();
        let metrics = Arc::new(metrics::Metrics::default());
        let workers = controllers::workloads::Workers::start(
            store.clone(),
            &cfg.state_dir,
            kind.as_ref(),
            network,
            metrics.clone(),
        )
        .map_err(Error::Node)?;
        workers.register(&subresources);
        let state = Arc::new(server::ServerState {
            store: store.clone(),
            deny: cfg.deny.clone(),
            subresources,
            metrics,
            address: addr.to_string(),
            stop: stop.clone(),
        });
        let s = stop.clone();
        let server = tokio::spawn(server::serve(listener, state, async move {
            s.cancelled().await
        }));
        let controllers = tokio::spawn(controllers::run(store.clone(), stop.clone()));
        let cluster = SimCluster {
            name: cfg.name.clone(),
            url: url.clone(),
            kubeconfig: cfg.kubeconfig.clone(),
            state_dir: cfg.state_dir.clone(),
            store,
            stop,
            server: Some(server),
            controllers: Some(controllers),
            workers: Some(workers),
        };
        answers(addr).await.map_err(|source| Error::NotAnswering {
            url: url.clone(),
            source,
        })?;
        write_private(&cfg.kubeconfig, &kubeconfig_yaml(&cfg.name, &url))?;
        write_private(
            &cfg.state_dir.join("server.json"),
            &json!({"name": cfg.name, "url": url, "kubeconfig": cfg.kubeconfig, "pid": std::process::id()}).to_string(),
        )?;
        tracing::info!(name = cfg.name, url, kubeconfig = %cfg.kubeconfig.display(), "simulated cluster up");
        Ok(cluster)
    }

    /// The API server URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The kubeconfig written for this cluster.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster name (also its kubeconfig context).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The object store, to read objects without going through the API.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Stop serving (open watches end) and wait for every task.
    ///
    /// # Errors
    /// The server failed or a task panicked.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(mut w) = self.workers.take() {
            w.shutdown().await;
        }
        self.stop.cancel();
        if let Some(c) = self.controllers.take() {
            c.await.map_err(Error::Task)?;
        }
        if let Some(s) = self.server.take() {
            s.await.map_err(Error::Task)?.map_err(Error::Serve)?;
        }
        Ok(())
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
