//! Errors of the `local` provider.

use std::path::PathBuf;

/// What went wrong while starting, using or tearing down a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The provider needs root (containerd, kubelet, iptables, mounts).
    #[error("the local provider needs root (containerd, the kubelet and iptables do)")]
    NotRoot,

    /// The Kubernetes binaries or the image file systems are not where they should be.
    #[error("{what} not found: {detail}")]
    NotFound {
        /// What was looked for.
        what: &'static str,
        /// Where, and how to make it.
        detail: String,
    },

    /// A program is not installed.
    #[error("`{program}` not found on PATH: install the Debian package {package} (ci/setup does)")]
    ProgramMissing {
        /// The program.
        program: &'static str,
        /// The package that provides it.
        package: &'static str,
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

    /// A process could not be started.
    #[error("could not start {component}")]
    Spawn {
        /// The component (etcd, kube-apiserver, ...).
        component: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A short tool failed; its output is included.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line (no secrets are passed on command lines).
        command: String,
        /// Its exit status.
        status: String,
        /// Its combined output, trimmed.
        output: String,
    },

    /// A component exited while it should run.
    #[error("{component} exited ({status}); the end of its log {}:\n{tail}", log.display())]
    Exited {
        /// The component.
        component: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },

    /// A component did not become ready in time.
    #[error("{component} not ready after {seconds} s: {detail}")]
    NotReady {
        /// The component.
        component: String,
        /// The deadline.
        seconds: u64,
        /// The last observation.
        detail: String,
    },

    /// Another local cluster holds the node.
    #[error("another local cluster holds {} (waited {seconds} s); only one runs per machine", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// How long this one waited.
        seconds: u64,
    },

    /// The images could not be packed.
    #[error("could not pack the node's images")]
    Images(#[source] crate::oci::OciError),

    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {what}")]
    Api {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },

    /// The client could not be built from the admin kubeconfig.
    #[error("cannot reach the local API server with its admin kubeconfig: {detail}")]
    Client {
        /// What failed.
        detail: String,
    },

    /// Teardown left something behind.
    #[error("teardown left {what}")]
    Leftover {
        /// What is still there.
        what: String,
    },
}
