//! Choosing a provider at run time: [`ProviderSpec`] says which and how, [`AnyCluster`] is the
//! cluster it made. Scenarios hold an `AnyCluster` and use it only through the [`Cluster`]
//! trait.

use std::path::{Path, PathBuf};

use super::kind::{KindCluster, KindOptions};
use super::kubeconfig::KubeconfigCluster;
use super::local::{LocalCluster, LocalOptions};
use super::sim::{SimOptions, SimProvider};
use super::{Cluster, ClusterError, DestroyGate, ProviderKind};

/// How to get a cluster.
#[derive(Clone, Debug)]
pub enum ProviderSpec {
    /// A new simulated cluster from a kind configuration.
    Sim {
        /// The kind configuration.
        kind_config: Option<PathBuf>,
    },
    /// A new kind cluster from a kind configuration.
    Kind {
        /// The kind configuration.
        kind_config: PathBuf,
        /// Locally built images to load into it.
        images: Vec<String>,
    },
    /// A new real single-node Kubernetes as local processes.
    Local {
        /// The Kubernetes binaries (default: `$RR_K8S_BIN`, else the cache of
        /// `ci/k8s/build.sh`).
        bin_dir: Option<PathBuf>,
    },
    /// An existing cluster. "Creating" it attaches; "destroying" it deletes the rehearsal's
    /// namespaces, and only through a confirmed [`DestroyGate`].
    Kubeconfig {
        /// The kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`).
        path: Option<PathBuf>,
        /// The context (default: the current one).
        context: Option<String>,
        /// Namespaces a destroy deletes.
        namespaces: Vec<String>,
        /// The confirmation.
        gate: DestroyGate,
    },
}

impl ProviderSpec {
    /// Which provider this is.
    pub fn kind(&self) -> ProviderKind {
        match self {
            ProviderSpec::Sim { .. } => ProviderKind::Sim,
            ProviderSpec::Kind { .. } => ProviderKind::Kind,
            ProviderSpec::Local { .. } => ProviderKind::Local,
            ProviderSpec::Kubeconfig { .. } => ProviderKind::Kubeconfig,
        }
    }

    /// Creates (or attaches to) a cluster.
    ///
    /// # Errors
    /// As the provider's own constructor.
    pub async fn create(&self) -> Result<AnyCluster, ClusterError> {
        Ok(match self {
            ProviderSpec::Sim { kind_config } => AnyCluster::Sim(
                SimProvider::create(SimOptions {
                    kind_config: kind_config.clone(),
                    ..SimOptions::default()
                })
                .await?,
            ),
            ProviderSpec::Kind {
                kind_config,
                images,
            } => {
                let cluster = KindCluster::create(KindOptions::new(kind_config.clone())).await?;
                cluster.load_images(images).await?;
                AnyCluster::Kind(cluster)
            }
            ProviderSpec::Local { bin_dir } => AnyCluster::Local(Box::new(
                LocalCluster::create(LocalOptions {
                    bin_dir: bin_dir.clone(),
                    ..LocalOptions::default()
                })
                .await?,
            )),
            ProviderSpec::Kubeconfig {
                path,
                context,
                namespaces,
                gate,
            } => AnyCluster::Kubeconfig(KubeconfigCluster::attach(
                path.clone(),
                context.as_deref(),
                namespaces.clone(),
                gate.clone(),
            )?),
        })
    }
}

/// A cluster from any provider.
#[derive(Debug)]
pub enum AnyCluster {
    /// Simulated.
    Sim(SimProvider),
    /// kind.
    Kind(KindCluster),
    /// Existing.
    Kubeconfig(KubeconfigCluster),
    /// Local processes (boxed: it is the largest by far).
    Local(Box<LocalCluster>),
}

impl Cluster for AnyCluster {
    fn name(&self) -> &str {
        match self {
            AnyCluster::Sim(c) => c.name(),
            AnyCluster::Kind(c) => c.name(),
            AnyCluster::Kubeconfig(c) => c.name(),
            AnyCluster::Local(c) => c.name(),
        }
    }

    fn provider(&self) -> ProviderKind {
        match self {
            AnyCluster::Sim(c) => c.provider(),
            AnyCluster::Kind(c) => c.provider(),
            AnyCluster::Kubeconfig(c) => c.provider(),
            AnyCluster::Local(c) => c.provider(),
        }
    }

    fn kubeconfig(&self) -> &Path {
        match self {
            AnyCluster::Sim(c) => c.kubeconfig(),
            AnyCluster::Kind(c) => c.kubeconfig(),
            AnyCluster::Kubeconfig(c) => c.kubeconfig(),
            AnyCluster::Local(c) => c.kubeconfig(),
        }
    }

    fn context(&self) -> &str {
        match self {
            AnyCluster::Sim(c) => c.context(),
            AnyCluster::Kind(c) => c.context(),
            AnyCluster::Kubeconfig(c) => c.context(),
            AnyCluster::Local(c) => c.context(),
        }
    }

    async fn destroy(&mut self) -> Result<(), ClusterError> {
        match self {
            AnyCluster::Sim(c) => c.destroy().await,
            AnyCluster::Kind(c) => c.destroy().await,
            AnyCluster::Kubeconfig(c) => c.destroy().await,
            AnyCluster::Local(c) => c.destroy().await,
        }
    }
}
