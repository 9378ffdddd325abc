//! The `local` provider: a real single-node Kubernetes (the binaries of `ci/k8s/build.sh`,
//! v1.20.2 from Debian's source package, or official release binaries) running as local
//! processes on 127.0.0.1.
//!
//! - [`ControlPlane`]: etcd, kube-apiserver (TLS, client certificates, `Node,RBAC`),
//!   kube-controller-manager, kube-scheduler. Usable on its own.
//! - the node (`node.rs`): containerd, a CNI bridge, the kubelet, kube-proxy (iptables), the
//!   images imported into containerd (`images.rs`);
//! - two stand-ins in the harness for what has no package here: cluster DNS (`dns.rs`) and a
//!   hostPath provisioner for the default StorageClass `local-path` (`storage.rs`);
//! - teardown (`teardown.rs`): on `destroy`, on drop and on the CLI's signals, and a sweep of
//!   what a killed run left. One local cluster runs per machine at a time (a node lock; the
//!   kubelet's cgroups and kube-proxy's iptables chains are host-wide).
//!
//! Needs root and the Debian packages containerd, runc, containernetworking-plugins,
//! etcd-server, iptables, iproute2 and openssl (`ci/setup` installs them).

mod api_relay;
mod binaries;
mod control_plane;
mod daemon;
mod dns;
mod error;
mod images;
mod node;
mod pki;
mod storage;
mod teardown;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use binaries::{
    K8S_BIN_ENV, K8S_IMAGES_ENV, K8S_PROGRAMS, bin_dir, cache_root, images_dir, minor_version,
    titanium,
};
pub use control_plane::{ControlPlane, ControlPlaneOptions, SERVICE_CIDR};
pub use dns::CLUSTER_DOMAIN;
pub use error::LocalError;
pub use images::{PAUSE_IMAGE, TITANIUM_ROLES};
pub use node::{BRIDGE, GATEWAY, NODE_NAME, POD_CIDR};
pub use pki::CertPair;
pub use storage::{PROVISIONER, STORAGE_CLASS};

use super::{Cluster, ClusterError, ProviderKind};
use node::{Node, NodeOptions};
use storage::Provisioner;

/// The lock file that lets one local cluster run per machine.
pub const NODE_LOCK: &str = "/run/rebuild-rehearsal-local.lock";

/// Options for [`LocalCluster::create`].
#[derive(Clone, Debug, Default)]
pub struct LocalOptions {
    /// Cluster (and kubeconfig context) name; unique when unset.
    pub name: Option<String>,
    /// The Kubernetes binaries (default: `$RR_K8S_BIN`, else the cache of `ci/k8s/build.sh`).
    pub bin_dir: Option<PathBuf>,
    /// The image file systems (default: `$RR_K8S_IMAGES`, else the cache of
    /// `ci/k8s/images.sh`).
    pub images_dir: Option<PathBuf>,
    /// The `titanium` binary (default: the workspace's build).
    pub titanium: Option<PathBuf>,
    /// How long to wait for another local cluster to go (default 15 minutes).
    pub lock_wait: Option<Duration>,
}

/// The programs the provider runs, with the Debian package of each.
const PROGRAMS: [(&str, &str); 8] = [
    ("etcd", "etcd-server"),
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("iptables", "iptables"),
    ("ip", "iproute2"),
    ("openssl", "openssl"),
    ("umount", "mount"),
];

/// Fails with the first program of `programs` not on PATH.
pub(crate) fn require_programs(
    programs: &[(&'static str, &'static str)],
) -> Result<(), LocalError> {
    for (program, package) in programs {
        if which::which(program).is_err() {
            return Err(LocalError::ProgramMissing { program, package });
        }
    }
    Ok(())
}

/// A local cluster this process started. Dropping it tears it down (kept with
/// `HARNESS_KEEP=1`).
#[derive(Debug)]
pub struct LocalCluster {
    name: String,
    // Drop order: the provisioner and node before the control plane, the lock last.
    provisioner: Option<Provisioner>,
    node: Option<Node>,
    control_plane: Option<ControlPlane>,
    kubeconfig: PathBuf,
    url: String,
    pids: Vec<i32>,
    dirs: Vec<PathBuf>,
    started_in: Duration,
    _lock: Option<NodeLock>,
}

impl LocalCluster {
    /// Takes the node lock (waiting for another local cluster to go), sweeps what an earlier
    /// run left, starts the control plane and the node, imports the images, creates the
    /// default StorageClass and starts its provisioner.
    ///
    /// # Errors
    /// [`ClusterError::Local`] naming what failed (root, a program, the binaries, a
    /// component's exit with the end of its log, a deadline).
    pub async fn create(options: LocalOptions) -> Result<Self, ClusterError> {
        Self::start(options).await.map_err(ClusterError::Local)
    }

    async fn start(options: LocalOptions) -> Result<Self, LocalError> {
        let started = Instant::now();
        if !nix::unistd::geteuid().is_root() {
            return Err(LocalError::NotRoot);
        }
        require_programs(&PROGRAMS)?;
        let bin_dir = bin_dir(options.bin_dir.as_deref())?;
        let images_dir = images_dir(options.images_dir.as_deref())?;
        let titanium = titanium(options.titanium.as_deref())?;
        let name = options
            .name
            .unwrap_or_else(|| super::kind::unique_name("local"));
        let lock = lock(options.lock_wait.unwrap_or(Duration::from_secs(900))).await?;
        tokio::task::spawn_blocking(node::sweep)
            .await
            .map_err(|err| LocalError::Leftover {
                what: format!("a sweep that did not finish: {err}"),
            })??;
        let control_plane = ControlPlane::start(ControlPlaneOptions {
            bin_dir: bin_dir.clone(),
            context: name.clone(),
            timeout: Duration::from_secs(90),
        })
        .await?;
        let node = Node::start(
            &control_plane,
            NodeOptions {
                bin_dir,
                images_dir,
                titanium,
                timeout: Duration::from_secs(180),
            },
        )
        .await?;
        let client = control_plane.client().await?;
        let provisioner = Provisioner::start(client, node.volumes()).await?;
        let mut pids = control_plane.pids();
        pids.extend(node.pids());
        let started_in = started.elapsed();
        tracing::info!(cluster = %name, seconds = started_in.as_secs_f64(), "local cluster ready");
        Ok(Self {
            kubeconfig: control_plane.kubeconfig_path().to_owned(),
            url: control_plane.url().to_owned(),
            dirs: vec![control_plane.dir().to_owned(), node.dir().to_owned()],
            name,
            provisioner: Some(provisioner),
            node: Some(node),
            control_plane: Some(control_plane),
            pids,
            started_in,
            _lock: Some(lock),
        })
    }

    /// The API server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long [`LocalCluster::create`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The control plane (for users and certificates of its CA).
    pub fn control_plane(&self) -> Option<&ControlPlane> {
        self.control_plane.as_ref()
    }

    /// The directories holding the cluster's state and logs (control plane, node).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The pids of the cluster's own processes (etcd, API server, controller manager,
    /// scheduler, containerd, kubelet, kube-proxy) as started.
    pub fn pids(&self) -> &[i32] {
        &self.pids
    }
}

impl Cluster for LocalCluster {
    fn name(&self) -> &str {
        &self.name
    }

    fn provider(&self) -> ProviderKind {
        ProviderKind::Local
    }

    fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn context(&self) -> &str {
        &self.name
    }

    /// Stops the provisioner and DNS, tears the node down (pods, shims, mounts, cgroups,
    /// bridge, iptables), stops the control plane, removes both directories, and checks:
    /// the API refuses connections, no process of the cluster runs, the directories are gone.
    async fn destroy(&mut self) -> Result<(), ClusterError> {
        let Some(control_plane) = self.control_plane.take() else {
            return Ok(());
        };
        self.provisioner = None;
        let node = self.node.take();
        let result = tokio::task::spawn_blocking(move || {
            let node = node.map_or(Ok(()), Node::stop);
            let control_plane = control_plane.stop();
            node.and(control_plane)
        })
        .await
        .map_err(|err| {
            ClusterError::Local(LocalError::Leftover {
                what: format!("a teardown that did not finish: {err}"),
            })
        })?;
        self._lock = None;
        result.map_err(ClusterError::Local)?;
        let address = self.url.trim_start_matches("https://").to_owned();
        let connect = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&address),
        )
        .await;
        if let Ok(Ok(_)) = connect {
            return Err(ClusterError::NotGone {
                cluster: self.name.clone(),
                detail: format!("{} still accepts connections", self.url),
            });
        }
        let running: Vec<i32> = self
            .pids
            .iter()
            .copied()
            .filter(|pid| {
                crate::keep::OwnerId {
                    pid: *pid,
                    start: 0,
                    pid_ns: 0,
                }
                .alive()
            })
            .collect();
        if !running.is_empty() {
            return Err(ClusterError::NotGone {
                cluster: self.name.clone(),
                detail: format!("processes {running:?} still run"),
            });
        }
        if let Some(dir) = self.dirs.iter().find(|d| d.exists()) {
            return Err(ClusterError::NotGone {
                cluster: self.name.clone(),
                detail: format!("{} still exists", dir.display()),
            });
        }
        Ok(())
    }
}

/// Sweeps what a local cluster killed without its teardown (SIGKILL) left on this machine:
/// pod processes and containerd shims, mounts under `harness-k8s-node-*` directories, the
/// `kubepods` cgroups, the bridge and the `KUBE-*`/`CNI-*` iptables chains. Takes the node
/// lock first (waiting up to `wait`), so a running local cluster is never touched.
/// [`LocalCluster::create`] does the same before it starts.
///
/// # Errors
/// [`LocalError::Locked`] when another local cluster holds the node, or
/// [`LocalError::Leftover`] naming what could not be removed.
pub async fn sweep(wait: Duration) -> Result<(), LocalError> {
    let _lock = lock(wait).await?;
    tokio::task::spawn_blocking(node::sweep)
        .await
        .map_err(|err| LocalError::Leftover {
            what: format!("a sweep that did not finish: {err}"),
        })?
}

/// The node lock, held while the cluster lives.
struct NodeLock(
    #[expect(dead_code, reason = "held for its drop")] nix::fcntl::Flock<std::fs::File>,
);

impl std::fmt::Debug for NodeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeLock({NODE_LOCK})")
    }
}

/// Takes the node lock, polling every half second until `wait` has passed.
async fn lock(wait: Duration) -> Result<NodeLock, LocalError> {
    use nix::fcntl::{Flock, FlockArg};
    let path = PathBuf::from(NODE_LOCK);
    let deadline = Instant::now() + wait;
    let mut announced = false;
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LocalError::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(NodeLock(locked)),
            Err((_, errno)) if errno != nix::errno::Errno::EWOULDBLOCK => {
                return Err(LocalError::Io {
                    action: "lock",
                    path,
                    source: std::io::Error::from(errno),
                });
            }
            Err(_) if Instant::now() < deadline => {
                if !announced {
                    tracing::info!(lock = %path.display(), "waiting for another local cluster to go");
                    announced = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(_) => {
                return Err(LocalError::Locked {
                    path,
                    seconds: wait.as_secs(),
                });
            }
        }
    }
}
