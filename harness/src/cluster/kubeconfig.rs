//! The kubeconfig provider: attach to an existing cluster by context. It reads and lists, and
//! never deletes or overwrites anything unless a [`DestroyGate`] was confirmed for it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{Cluster, ClusterError, DestroyGate, ProviderKind};

/// Reads and parses a kubeconfig file.
///
/// # Errors
/// [`ClusterError::Kubeconfig`] naming the file and what is wrong with it.
pub fn read(path: &Path) -> Result<Kubeconfig, ClusterError> {
    Kubeconfig::read_from(path).map_err(|source| ClusterError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    })
}

/// The context to use: `wanted` if it exists, else the file's current context.
///
/// # Errors
/// [`ClusterError::NoSuchContext`] or [`ClusterError::NoCurrentContext`], listing the contexts
/// the file has.
pub fn resolve_context(
    config: &Kubeconfig,
    path: &Path,
    wanted: Option<&str>,
) -> Result<String, ClusterError> {
    let available = config
        .contexts
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    match wanted
        .map(str::to_owned)
        .or_else(|| config.current_context.clone())
    {
        Some(context) if config.contexts.iter().any(|c| c.name == context) => Ok(context),
        Some(context) => Err(ClusterError::NoSuchContext {
            path: path.to_path_buf(),
            context,
            available,
        }),
        None => Err(ClusterError::NoCurrentContext {
            path: path.to_path_buf(),
            available,
        }),
    }
}

/// A kube-rs client for `context` (or the current context) in the kubeconfig at `path`.
///
/// # Errors
/// Fails when the file is unreadable or malformed, or the context is missing.
pub async fn client_for(path: &Path, context: Option<&str>) -> Result<kube::Client, ClusterError> {
    let config = read(path)?;
    let context = resolve_context(&config, path, context)?;
    let options = KubeConfigOptions {
        context: Some(context.clone()),
        ..KubeConfigOptions::default()
    };
    let client_config = kube::Config::from_custom_kubeconfig(config, &options)
        .await
        .map_err(|source| ClusterError::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    kube::Client::try_from(client_config).map_err(|source| ClusterError::Client { context, source })
}

/// The default kubeconfig path: the first entry of `$KUBECONFIG`, else `~/.kube/config`.
pub fn default_path() -> PathBuf {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).next())
        .filter(|p| !p.as_os_str().is_empty())
    {
        return first;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".kube").join("config")
}

/// An existing cluster, reached through a kubeconfig context.
#[derive(Debug)]
pub struct KubeconfigCluster {
    path: PathBuf,
    context: String,
    namespaces: Vec<String>,
    gate: DestroyGate,
}

impl KubeconfigCluster {
    /// Attaches to `context` (or the current one) in `path` (or the default kubeconfig).
    /// Destroying it deletes `namespaces`, and only with a confirmed `gate`.
    ///
    /// # Errors
    /// Fails when the kubeconfig is unreadable, malformed or lacks the context.
    pub fn attach(
        path: Option<PathBuf>,
        context: Option<&str>,
        namespaces: Vec<String>,
        gate: DestroyGate,
    ) -> Result<Self, ClusterError> {
        let path = path.unwrap_or_else(default_path);
        let config = read(&path)?;
        let context = resolve_context(&config, &path, context)?;
        Ok(Self {
            path,
            context,
            namespaces,
            gate,
        })
    }
}

impl Cluster for KubeconfigCluster {
    fn name(&self) -> &str {
        &self.context
    }

    fn provider(&self) -> ProviderKind {
        ProviderKind::Kubeconfig
    }

    fn kubeconfig(&self) -> &Path {
        &self.path
    }

    fn context(&self) -> &str {
        &self.context
    }

    /// Deletes the rehearsal's namespaces and waits until they are gone. An existing cluster
    /// itself is never deleted: it is not ours.
    async fn destroy(&mut self) -> Result<(), ClusterError> {
        self.gate.check(&self.context)?;
        let client = self.client().await?;
        let api: Api<Namespace> = Api::all(client);
        for ns in &self.namespaces {
            match api.delete(ns, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => continue,
                Err(source) => {
                    return Err(ClusterError::Api {
                        what: format!("delete namespace {ns}"),
                        source,
                    });
                }
            }
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                match api.get_opt(ns).await {
                    Ok(None) => break,
                    Ok(Some(_)) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Ok(Some(_)) => {
                        return Err(ClusterError::NotGone {
                            cluster: self.context.clone(),
                            detail: format!("namespace {ns} still exists after 600 s"),
                        });
                    }
                    Err(source) => {
                        return Err(ClusterError::Api {
                            what: format!("get namespace {ns}"),
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
