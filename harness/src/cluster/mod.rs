//! Cluster providers behind one small trait: the simulator (default), kind, a real Kubernetes
//! as local processes (`local`), and an existing kubeconfig context.
//!
//! Code above this boundary (scenarios, backup, restore) sees a [`Cluster`]: a name, a
//! kubeconfig, a kube-rs client, and `destroy`. It never knows which provider runs.

pub mod any;
mod confirm;
mod error;
pub mod forward;
pub mod kind;
pub mod kubeconfig;
pub mod local;
pub mod sim;

use std::path::Path;

pub use any::{AnyCluster, ProviderSpec};
pub use confirm::{DestroyGate, confirm_destroy};
pub use error::ClusterError;

/// Which provider a cluster comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The built-in simulated cluster.
    Sim,
    /// A kind cluster (Kubernetes in Docker).
    Kind,
    /// An existing cluster reached through a kubeconfig context.
    Kubeconfig,
    /// A real single-node Kubernetes running as local processes.
    Local,
}

impl ProviderKind {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Sim => "sim",
            ProviderKind::Kind => "kind",
            ProviderKind::Kubeconfig => "kubeconfig",
            ProviderKind::Local => "local",
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = ClusterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sim" => Ok(ProviderKind::Sim),
            "kind" => Ok(ProviderKind::Kind),
            "kubeconfig" => Ok(ProviderKind::Kubeconfig),
            "local" => Ok(ProviderKind::Local),
            other => Err(ClusterError::UnknownProvider {
                name: other.to_owned(),
            }),
        }
    }
}

/// A running Kubernetes cluster the harness can use.
pub trait Cluster: Send + Sync {
    /// The cluster's name (kind cluster name, simulator name, or kubeconfig context).
    fn name(&self) -> &str;

    /// Which provider made it.
    fn provider(&self) -> ProviderKind;

    /// The kubeconfig file that reaches it (for kubectl, and for the user).
    fn kubeconfig(&self) -> &Path;

    /// The context in [`Cluster::kubeconfig`] to use.
    fn context(&self) -> &str;

    /// A kube-rs client for the cluster.
    ///
    /// # Errors
    /// Fails when the kubeconfig cannot be read or names no usable context.
    fn client(&self) -> impl Future<Output = Result<kube::Client, ClusterError>> + Send {
        kubeconfig::client_for(self.kubeconfig(), Some(self.context()))
    }

    /// Destroys the cluster and everything in it, and checks it is gone.
    ///
    /// # Errors
    /// Fails when the provider refuses (an existing cluster without confirmation) or the
    /// teardown fails.
    fn destroy(&mut self) -> impl Future<Output = Result<(), ClusterError>> + Send;
}
