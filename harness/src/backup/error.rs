//! Errors of the backup engine: what could not run, named with where it happened.

use std::path::PathBuf;

use crate::facts::TablesError;
use crate::pg::PgError;

/// Why a backup, an off-site copy or a verification could not run. A backup that fails with
/// any of these is left under its `.partial` name, with `FAILED.txt` saying why.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file system operation failed (disk full, permission denied, ...).
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The destination already holds a backup or a failed attempt of this name.
    #[error("{} already exists; choose another backup name or move it away", path.display())]
    Exists {
        /// The existing path.
        path: PathBuf,
    },

    /// The backup name is not a single path component (it would write outside the
    /// destination).
    #[error("invalid backup name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Nothing was configured to back up.
    #[error(
        "nothing to back up: configure at least one of postgres, redis, kubernetes or terraform"
    )]
    NothingToBackUp,

    /// The archive's gzip level is not one gzip has.
    #[error("the archive's gzip level is {level}; gzip's levels are 0 (stored) to 9")]
    CompressionLevel {
        /// The level asked for.
        level: u32,
    },

    /// A physical backup was asked for without what it needs.
    #[error("a physical backup needs a PostgreSQL source and quiesced writers (--quiesce): {why}")]
    PhysicalNeeds {
        /// What is missing.
        why: &'static str,
    },

    /// A PostgreSQL connection or query failed (unreachable, authentication failed, ...).
    #[error("postgres: {what}")]
    Postgres {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: PgError,
    },

    /// Counting or digesting tables failed.
    #[error("table facts")]
    Facts(#[from] TablesError),

    /// Rendering the schema failed.
    #[error("schema rendering")]
    Schema(#[from] crate::facts::SchemaError),

    /// A tool (pg_dump, redis-cli, terraform, ...) could not be started.
    #[error("could not run {tool}")]
    Spawn {
        /// The tool.
        tool: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A tool ran and failed.
    #[error("{tool} failed ({status}) while {what}: {stderr}")]
    Tool {
        /// The tool.
        tool: String,
        /// What it was run for.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error (never holds a password: none is ever passed to it).
        stderr: String,
    },

    /// The namespace a pod was looked for in does not exist.
    #[error("namespace {namespace} does not exist (looking for pod {pod} in it)")]
    NamespaceNotFound {
        /// Namespace.
        namespace: String,
        /// The pod looked for.
        pod: String,
    },

    /// A pod named in the options does not exist.
    #[error("pod {namespace}/{name} not found")]
    PodNotFound {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },

    /// A Kubernetes API call failed.
    #[error("kubernetes: {what}")]
    Kube {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },

    /// A port-forward gave no usable stream.
    #[error("port-forward to {target}: {detail}")]
    PortForward {
        /// The pod and port.
        target: String,
        /// What went wrong.
        detail: String,
    },

    /// The exec stream into a pod ended without the command's exit status.
    #[error("exec stream of `{command}` in pod {namespace}/{pod} was cut off after {bytes} bytes")]
    ExecCutOff {
        /// Namespace.
        namespace: String,
        /// Pod.
        pod: String,
        /// The program run.
        command: String,
        /// Bytes received before the cut.
        bytes: u64,
    },

    /// Redis could not be reached or answered with an error.
    #[error("redis: {what}")]
    Redis {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: redis::RedisError,
    },

    /// A scratch process (redis-server) did not become ready.
    #[error("{what} did not become ready within {seconds} s: {detail}")]
    NotReady {
        /// The process.
        what: String,
        /// The deadline.
        seconds: u64,
        /// Its last output.
        detail: String,
    },

    /// A deployment's pods cannot be told apart, so the quiesce cannot wait for them.
    #[error("deployment {namespace}/{name} has no usable pod selector: {detail}")]
    QuiesceSelector {
        /// Namespace.
        namespace: String,
        /// Deployment.
        name: String,
        /// What is wrong with the selector.
        detail: String,
    },

    /// A deployment's pods were not gone in time.
    #[error(
        "deployment {namespace}/{name} still has {replicas} pod(s) after {seconds} s \
         (terminating pods count: they can still write)"
    )]
    QuiesceTimeout {
        /// Namespace.
        namespace: String,
        /// Deployment.
        name: String,
        /// Pods still present, terminating ones included.
        replicas: i32,
        /// The deadline.
        seconds: u64,
    },

    /// Encryption or decryption failed (wrong passphrase or identity, corrupt file).
    #[error("age: {what}: {detail}")]
    Age {
        /// What was being done.
        what: String,
        /// What age said.
        detail: String,
    },

    /// A configured secret (passphrase file, environment variable) could not be read.
    #[error("secret {name} is not available: {detail}")]
    SecretMissing {
        /// The file or variable.
        name: String,
        /// Why.
        detail: String,
    },

    /// An off-site copy failed.
    #[error("off-site copy to {target} failed: {detail}")]
    Offsite {
        /// The target (never with credentials).
        target: String,
        /// What went wrong.
        detail: String,
    },

    /// A backup could not be read for verification (no manifest, unreadable manifest).
    #[error("{} is not a readable backup: {detail}", path.display())]
    NotABackup {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// JSON could not be written or read.
    #[error("json {what}")]
    Json {
        /// What was being serialised.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl BackupError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn pg(what: impl Into<String>) -> impl FnOnce(PgError) -> Self {
        let what = what.into();
        move |source| Self::Postgres { what, source }
    }

    pub(crate) fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Kube { what, source }
    }

    pub(crate) fn redis(what: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Self {
        let what = what.into();
        move |source| Self::Redis { what, source }
    }
}

impl From<crate::process::ToolError> for BackupError {
    fn from(err: crate::process::ToolError) -> Self {
        use crate::process::ToolError;
        match err {
            ToolError::Spawn { tool, source } => BackupError::Spawn { tool, source },
            ToolError::Failed {
                tool,
                what,
                status,
                stderr,
            } => BackupError::Tool {
                tool,
                what,
                status,
                stderr,
            },
            ToolError::TimedOut {
                tool,
                what,
                seconds,
            } => BackupError::Tool {
                tool,
                what,
                status: format!("stopped after {seconds} s"),
                stderr: String::new(),
            },
        }
    }
}
