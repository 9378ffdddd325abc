//! The kind provider: drives the `kind` binary with duct (no SDK). `create cluster`, `load
//! docker-image` for the Titanium images, and `delete cluster` on drop (kept with
//! `HARNESS_KEEP=1`, with the command to delete it printed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Cluster, ClusterError, ProviderKind};
use crate::keep::{self, ScratchDir};

/// Overrides the `kind` program (a path or a name on PATH).
pub const KIND_BIN_ENV: &str = "HARNESS_KIND_BIN";

/// Options for [`KindCluster::create`].
#[derive(Clone, Debug)]
pub struct KindOptions {
    /// Cluster name; unique by default so parallel runs do not collide.
    pub name: String,
    /// A kind cluster configuration (`kind-config/*.yaml`).
    pub config: PathBuf,
    /// The `kind` program.
    pub kind_bin: PathBuf,
    /// How long `kind create cluster --wait` may wait for the control plane.
    pub wait: Duration,
    /// Docker endpoint checked before kind runs (`$DOCKER_HOST` or the default socket).
    pub docker_host: String,
}

impl KindOptions {
    /// Options for `config` with a unique name.
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Self {
            name: unique_name("rehearsal"),
            config: config.into(),
            kind_bin: std::env::var_os(KIND_BIN_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("kind")),
            wait: Duration::from_secs(300),
            docker_host: std::env::var("DOCKER_HOST")
                .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned()),
        }
    }
}

/// A unique, DNS-safe cluster name: `<prefix>-<pid>-<random>`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// The argument list of `kind create cluster` for these options and kubeconfig path.
pub fn create_args(options: &KindOptions, kubeconfig: &Path) -> Vec<String> {
    vec![
        "create".into(),
        "cluster".into(),
        "--name".into(),
        options.name.clone(),
        "--config".into(),
        options.config.display().to_string(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--wait".into(),
        format!("{}s", options.wait.as_secs()),
    ]
}

/// The argument list of `kind load docker-image`.
pub fn load_args(name: &str, image: &str) -> Vec<String> {
    vec![
        "load".into(),
        "docker-image".into(),
        image.to_owned(),
        "--name".into(),
        name.to_owned(),
    ]
}

/// The argument list of `kind delete cluster`.
pub fn delete_args(name: &str, kubeconfig: &Path) -> Vec<String> {
    vec![
        "delete".into(),
        "cluster".into(),
        "--name".into(),
        name.to_owned(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
    ]
}

/// A kind cluster this process created. Deleted on drop unless `HARNESS_KEEP=1`.
#[derive(Debug)]
pub struct KindCluster {
    options: KindOptions,
    kubeconfig: PathBuf,
    context: String,
    alive: bool,
    dir: ScratchDir,
}

impl KindCluster {
    /// Checks the prerequisites, then runs `kind create cluster`.
    ///
    /// # Errors
    /// [`ClusterError::ProgramMissing`] without kind, [`ClusterError::DockerUnavailable`]
    /// without Docker, [`ClusterError::KindConfig`] for a missing or malformed config, and
    /// [`ClusterError::Command`] with kind's own output when it fails.
    pub async fn create(options: KindOptions) -> Result<Self, ClusterError> {
        check_config(&options.config)?;
        let kind = resolve_kind(&options.kind_bin)?;
        check_docker(&options.docker_host)?;
        let dir = ScratchDir::new("harness-kind-", "kind cluster kubeconfig directory").map_err(
            |source| ClusterError::Io {
                action: "create",
                path: std::env::temp_dir(),
                source,
            },
        )?;
        let kubeconfig = dir.path().join("kubeconfig");
        run(&kind, create_args(&options, &kubeconfig)).await?;
        let context = format!("kind-{}", options.name);
        Ok(Self {
            options: KindOptions {
                kind_bin: kind,
                ..options
            },
            kubeconfig,
            context,
            alive: true,
            dir,
        })
    }

    /// Loads locally built images into the cluster's nodes (`kind load docker-image`).
    ///
    /// # Errors
    /// [`ClusterError::Command`] with kind's output.
    pub async fn load_images(&self, images: &[String]) -> Result<(), ClusterError> {
        for image in images {
            run(&self.options.kind_bin, load_args(&self.options.name, image)).await?;
        }
        Ok(())
    }

    /// The directory holding the kubeconfig.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Cluster for KindCluster {
    fn name(&self) -> &str {
        &self.options.name
    }

    fn provider(&self) -> ProviderKind {
        ProviderKind::Kind
    }

    fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn context(&self) -> &str {
        &self.context
    }

    async fn destroy(&mut self) -> Result<(), ClusterError> {
        if !self.alive {
            return Ok(());
        }
        run(
            &self.options.kind_bin,
            delete_args(&self.options.name, &self.kubeconfig),
        )
        .await?;
        self.alive = false;
        Ok(())
    }
}

impl Drop for KindCluster {
    fn drop(&mut self) {
        if !self.alive {
            return;
        }
        let args = delete_args(&self.options.name, &self.kubeconfig);
        if keep::keep_requested() {
            eprintln!(
                "{}: kind cluster `{}` kept; delete it with: {} {}",
                keep::KEEP_ENV,
                self.options.name,
                self.options.kind_bin.display(),
                args.join(" ")
            );
            return;
        }
        let result = duct::cmd(&self.options.kind_bin, &args)
            .stderr_to_stdout()
            .stdout_capture()
            .unchecked()
            .run();
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: kind delete cluster {} failed: {}",
                self.options.name,
                String::from_utf8_lossy(&out.stdout)
            ),
            Err(err) => eprintln!(
                "warning: could not run kind delete cluster {}: {err}",
                self.options.name
            ),
        }
    }
}

/// Runs kind with duct, capturing its combined output for the error.
async fn run(kind: &Path, args: Vec<String>) -> Result<(), ClusterError> {
    let kind = kind.to_path_buf();
    let command = format!("{} {}", kind.display(), args.join(" "));
    tracing::info!(%command, "running kind");
    let out = tokio::task::spawn_blocking(move || {
        duct::cmd(&kind, &args)
            .stderr_to_stdout()
            .stdout_capture()
            .unchecked()
            .run()
    })
    .await
    .map_err(|err| ClusterError::Command {
        command: command.clone(),
        status: "did not finish".into(),
        output: err.to_string(),
    })?
    .map_err(|err| ClusterError::Command {
        command: command.clone(),
        status: "could not start".into(),
        output: err.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Command {
            command,
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    }
}

/// Finds the kind program.
///
/// # Errors
/// [`ClusterError::ProgramMissing`] saying how to install it.
pub fn resolve_kind(bin: &Path) -> Result<PathBuf, ClusterError> {
    which::which(bin).map_err(|_| ClusterError::ProgramMissing {
        program: bin.display().to_string(),
        install: "install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation, e.g. `go install sigs.k8s.io/kind@v0.24.0`) or set HARNESS_KIND_BIN".to_owned(),
    })
}

/// Checks that the Docker daemon answers on `host`.
///
/// # Errors
/// [`ClusterError::DockerUnavailable`].
pub fn check_docker(host: &str) -> Result<(), ClusterError> {
    let Some(path) = host.strip_prefix("unix://") else {
        return Ok(());
    };
    std::os::unix::net::UnixStream::connect(path)
        .map(|_| ())
        .map_err(|err| ClusterError::DockerUnavailable {
            endpoint: host.to_owned(),
            detail: err.to_string(),
        })
}

/// Checks that a kind config exists and is a kind `Cluster` document.
///
/// # Errors
/// [`ClusterError::KindConfig`] naming the file and the problem.
pub fn check_config(path: &Path) -> Result<(), ClusterError> {
    let text = std::fs::read_to_string(path).map_err(|err| ClusterError::KindConfig {
        path: path.to_path_buf(),
        detail: err.to_string(),
    })?;
    let doc: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|err| ClusterError::KindConfig {
            path: path.to_path_buf(),
            detail: format!("not valid YAML: {err}"),
        })?;
    let kind = doc.get("kind").and_then(|v| v.as_str());
    let api = doc.get("apiVersion").and_then(|v| v.as_str());
    if kind != Some("Cluster") || !api.is_some_and(|a| a.starts_with("kind.x-k8s.io/")) {
        return Err(ClusterError::KindConfig {
            path: path.to_path_buf(),
            detail: format!(
                "expected kind: Cluster, apiVersion: kind.x-k8s.io/v1alpha4; found kind {kind:?}, apiVersion {api:?}"
            ),
        });
    }
    Ok(())
}
