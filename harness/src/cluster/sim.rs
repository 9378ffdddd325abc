//! The simulated cluster provider (the default): an in-process `simcluster` API server with its
//! controllers and kubelet, its state in a private scratch directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use simcluster::{AccessRule, SimCluster, SimConfig};

use super::{Cluster, ClusterError, ProviderKind};
use crate::keep::ScratchDir;

/// Options for [`SimProvider::create`].
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// Cluster name; unique when unset.
    pub name: Option<String>,
    /// A kind cluster configuration describing the nodes and port mappings.
    pub kind_config: Option<PathBuf>,
    /// Permissions the cluster denies (to rehearse a preflight that must say NO-GO).
    pub deny: Vec<AccessRule>,
}

/// A simulated cluster owned by this process. Dropping it stops everything it started and
/// removes its state (kept with `HARNESS_KEEP=1`).
#[derive(Debug)]
pub struct SimProvider {
    cluster: Option<SimCluster>,
    name: String,
    url: String,
    kubeconfig: PathBuf,
    state_dir: PathBuf,
    dir: Option<ScratchDir>,
}

impl SimProvider {
    /// Starts a simulated cluster.
    ///
    /// # Errors
    /// [`ClusterError::Sim`] naming what failed (bad kind config, port, state directory).
    pub async fn create(options: SimOptions) -> Result<Self, ClusterError> {
        let name = options
            .name
            .unwrap_or_else(|| super::kind::unique_name("sim"));
        let dir = ScratchDir::new("harness-sim-", "simulated cluster state").map_err(|source| {
            ClusterError::Io {
                action: "create",
                path: std::env::temp_dir(),
                source,
            }
        })?;
        // Traversable but not listable (0711): the simulated PostgreSQL pods run as the
        // unprivileged `postgres` account, which must reach its volume below this directory.
        // Everything inside stays private (the kubeconfig is 0600, the state dir the
        // simulator's own).
        set_mode(dir.path(), 0o711).map_err(|source| ClusterError::Io {
            action: "chmod",
            path: dir.path().to_path_buf(),
            source,
        })?;
        let state_dir = dir.path().join("state");
        let kubeconfig = dir.path().join("kubeconfig");
        let mut config = SimConfig::new(name.clone(), state_dir.clone(), kubeconfig.clone());
        config.kind_config = options.kind_config;
        config.deny = options.deny;
        let cluster = SimCluster::start(config)
            .await
            .map_err(|err| ClusterError::Sim {
                name: name.clone(),
                detail: crate::error_chain(&err),
            })?;
        let url = cluster.url();
        Ok(Self {
            cluster: Some(cluster),
            name,
            url,
            kubeconfig,
            state_dir,
            dir: Some(dir),
        })
    }

    /// The API server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The cluster's state directory (volumes, logs).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

impl Cluster for SimProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn provider(&self) -> ProviderKind {
        ProviderKind::Sim
    }

    fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn context(&self) -> &str {
        &self.name
    }

    /// Stops the server, its controllers and every pod process, removes the state directory,
    /// and checks that the API no longer answers and the volumes are gone.
    async fn destroy(&mut self) -> Result<(), ClusterError> {
        let Some(cluster) = self.cluster.take() else {
            return Ok(());
        };
        cluster.shutdown().await.map_err(|err| ClusterError::Sim {
            name: self.name.clone(),
            detail: crate::error_chain(&err),
        })?;
        if let Some(dir) = self.dir.take() {
            // Removed even with HARNESS_KEEP: destroy means destroy.
            let path = dir.path().to_path_buf();
            dir.remove().map_err(|source| ClusterError::Io {
                action: "remove",
                path,
                source,
            })?;
        }
        let address = self.url.trim_start_matches("http://").to_owned();
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
        if self.state_dir.exists() {
            return Err(ClusterError::NotGone {
                cluster: self.name.clone(),
                detail: format!("{} still exists", self.state_dir.display()),
            });
        }
        Ok(())
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

impl Drop for SimProvider {
    /// Without [`Cluster::destroy`] (a panic, an early return): the simulator is dropped, which
    /// kills its processes at once, and the state is removed, retrying briefly while the last
    /// writers of the killed processes finish.
    fn drop(&mut self) {
        drop(self.cluster.take());
        let Some(dir) = self.dir.take() else { return };
        if crate::keep::keep_requested() {
            return; // ScratchDir's own drop keeps it and says where.
        }
        let path = dir.path().to_path_buf();
        // Retries briefly while the last writers of the killed processes finish.
        if let Err(err) = dir.remove() {
            eprintln!(
                "warning: could not remove simulated cluster state at {}: {err}",
                path.display()
            );
        }
    }
}
