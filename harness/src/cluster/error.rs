//! Errors of the cluster providers.

use std::path::PathBuf;

/// What went wrong while creating, reaching or destroying a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// An unknown provider name.
    #[error("unknown cluster provider `{name}`; expected sim, kind, local or kubeconfig")]
    UnknownProvider {
        /// The name given.
        name: String,
    },

    /// The kubeconfig file could not be read or parsed.
    #[error("cannot use kubeconfig {}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },

    /// The requested context is not in the kubeconfig.
    #[error("context `{context}` not found in {}; available: {available}", path.display())]
    NoSuchContext {
        /// The file.
        path: PathBuf,
        /// The context asked for.
        context: String,
        /// The contexts it has, comma separated.
        available: String,
    },

    /// No context was given and the kubeconfig has no current context.
    #[error("{} has no current-context; pass --context (available: {available})", path.display())]
    NoCurrentContext {
        /// The file.
        path: PathBuf,
        /// The contexts it has.
        available: String,
    },

    /// The kube client could not be built.
    #[error("cannot build a Kubernetes client for context `{context}`")]
    Client {
        /// The context.
        context: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },

    /// A program the provider needs is not installed.
    #[error("`{program}` not found on PATH: {install}")]
    ProgramMissing {
        /// The program.
        program: String,
        /// How to install it.
        install: String,
    },

    /// Docker is not reachable.
    #[error(
        "Docker is not reachable at {endpoint} ({detail}); kind needs a running Docker daemon (install docker.io and start dockerd)"
    )]
    DockerUnavailable {
        /// The socket or host tried.
        endpoint: String,
        /// What failed.
        detail: String,
    },

    /// An external command failed; its own output is included.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        /// The command line (no secrets are ever passed on command lines).
        command: String,
        /// Its exit status.
        status: String,
        /// Its combined output.
        output: String,
    },

    /// A kind cluster configuration is missing or malformed.
    #[error("kind config {}: {detail}", path.display())]
    KindConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// Destroying an existing cluster was not confirmed.
    #[error("refusing to destroy `{cluster}`: {reason}")]
    DestroyRefused {
        /// The cluster.
        cluster: String,
        /// Why.
        reason: String,
    },

    /// The simulated cluster failed.
    #[error("simulated cluster `{name}`: {detail}")]
    Sim {
        /// Its name.
        name: String,
        /// What failed.
        detail: String,
    },

    /// The local cluster failed.
    #[error("local cluster")]
    Local(#[source] super::local::LocalError),

    /// The cluster is still reachable after destroy.
    #[error("cluster `{cluster}` still answers after destroy: {detail}")]
    NotGone {
        /// The cluster.
        cluster: String,
        /// What still answered.
        detail: String,
    },

    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {what}")]
    Api {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },

    /// A file system operation failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
