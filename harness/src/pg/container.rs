//! `ContainerPostgres`: PostgreSQL in a Docker container, through testcontainers.
//!
//! The image must honour the official `postgres` image's contract (`POSTGRES_PASSWORD`,
//! `POSTGRES_USER`, `POSTGRES_DB`, `/docker-entrypoint-initdb.d`). No registry is reachable
//! here, so CI builds one locally (`ci/images/postgres/`) and points `HARNESS_PG_IMAGE` at it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt, TestcontainersError};

use super::{ConnParams, PgError, PostgresProvider, Secret};
use crate::keep;

/// Selects the image (`NAME:TAG`).
pub const IMAGE_ENV: &str = "HARNESS_PG_IMAGE";

/// The production image, used when `HARNESS_PG_IMAGE` is unset.
pub const DEFAULT_IMAGE: &str = "postgres:15-alpine";

/// Options for [`ContainerPostgres`].
#[derive(Clone, Debug)]
pub struct ContainerOptions {
    /// Image reference; defaults to `$HARNESS_PG_IMAGE`, else [`DEFAULT_IMAGE`].
    pub image: String,
    /// `POSTGRES_USER`.
    pub user: String,
    /// `POSTGRES_PASSWORD`; a random one when unset.
    pub password: Option<Secret>,
    /// `POSTGRES_DB`.
    pub database: String,
    /// Files copied into `/docker-entrypoint-initdb.d/`, run once on the empty data directory.
    pub init_sql: Vec<PathBuf>,
    /// How long to wait for the server to accept connections from the host.
    pub start_timeout: Duration,
}

impl Default for ContainerOptions {
    fn default() -> Self {
        Self {
            image: std::env::var(IMAGE_ENV).unwrap_or_else(|_| DEFAULT_IMAGE.to_owned()),
            user: "postgres".to_owned(),
            password: None,
            database: "postgres".to_owned(),
            init_sql: Vec::new(),
            start_timeout: Duration::from_secs(90),
        }
    }
}

impl ContainerOptions {
    /// The Titanium database with its schema init script.
    pub fn titanium() -> Self {
        Self {
            database: "titanium".to_owned(),
            init_sql: vec![crate::data::schema_sql_path()],
            ..Self::default()
        }
    }
}

/// A PostgreSQL container. Dropping it removes the container (kept with `HARNESS_KEEP=1`).
pub struct ContainerPostgres {
    container: Option<ContainerAsync<GenericImage>>,
    image: String,
    params: ConnParams,
}

impl std::fmt::Debug for ContainerPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerPostgres")
            .field("image", &self.image)
            .field("params", &self.params)
            .finish()
    }
}

impl ContainerPostgres {
    /// The image this container runs.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The container id.
    pub fn id(&self) -> Option<&str> {
        self.container.as_ref().map(|c| c.id())
    }
}

impl PostgresProvider for ContainerPostgres {
    type Options = ContainerOptions;

    async fn start(options: ContainerOptions) -> Result<Self, PgError> {
        let image_ref = options.image.clone();
        docker_reachable()?;
        let (name, tag) = match image_ref.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
            _ => (image_ref.clone(), "latest".to_owned()),
        };
        let password = options
            .password
            .clone()
            .unwrap_or_else(|| Secret::new(uuid::Uuid::new_v4().simple().to_string()));
        let mut request = GenericImage::new(name, tag)
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::Nothing)
            .with_env_var("POSTGRES_USER", &options.user)
            .with_env_var("POSTGRES_PASSWORD", password.expose())
            .with_env_var("POSTGRES_DB", &options.database)
            .with_startup_timeout(options.start_timeout);
        for (i, file) in options.init_sql.iter().enumerate() {
            let contents = std::fs::read(file).map_err(|source| PgError::Io {
                action: "read",
                path: file.clone(),
                source,
            })?;
            let base = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("{i:03}.sql"));
            request = request.with_copy_to(
                format!("/docker-entrypoint-initdb.d/{i:03}-{base}"),
                contents,
            );
        }
        let container = request
            .start()
            .await
            .map_err(|err| classify(&image_ref, err))?;
        let port = container
            .get_host_port_ipv4(5432.tcp())
            .await
            .map_err(|err| PgError::Container {
                image: image_ref.clone(),
                detail: err.to_string(),
            })?;
        let params = ConnParams {
            host: "127.0.0.1".to_owned(),
            port,
            user: options.user.clone(),
            password: Some(password),
            dbname: options.database.clone(),
        };
        let server = Self {
            container: Some(container),
            image: image_ref,
            params,
        };
        server.wait_ready(options.start_timeout).await?;
        Ok(server)
    }

    fn params(&self) -> ConnParams {
        self.params.clone()
    }

    async fn stop(mut self) -> Result<(), PgError> {
        if let Some(container) = self.container.take() {
            container.rm().await.map_err(|err| PgError::Container {
                image: self.image.clone(),
                detail: err.to_string(),
            })?;
        }
        Ok(())
    }
}

impl ContainerPostgres {
    /// Waits until the final server accepts TCP connections from the host. The entrypoint's
    /// temporary server for init scripts listens on its socket only, so a TCP answer means the
    /// init scripts have run.
    async fn wait_ready(&self, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.params.connect().await {
                Ok(client) => {
                    if client.simple_query("SELECT 1").await.is_ok() {
                        return Ok(());
                    }
                }
                Err(err @ PgError::AuthFailed { .. }) => return Err(err),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                let logs = match &self.container {
                    Some(c) => {
                        String::from_utf8_lossy(&c.stderr_to_vec().await.unwrap_or_default())
                            .into_owned()
                    }
                    None => String::new(),
                };
                return Err(PgError::StartTimeout {
                    port: self.params.port,
                    seconds: timeout.as_secs(),
                    log_tail: super::error::tail(&logs, 15),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ContainerPostgres {
    fn drop(&mut self) {
        if keep::keep_requested()
            && let Some(container) = self.container.take()
        {
            eprintln!(
                "{}: container {} ({}) left running at {}",
                keep::KEEP_ENV,
                container.id(),
                self.image,
                self.params.target()
            );
            std::mem::forget(container);
        }
        // Otherwise testcontainers removes the container when `container` drops.
    }
}

/// Checks that the Docker daemon's socket answers before testcontainers tries, so the error
/// says what to do.
fn docker_reachable() -> Result<(), PgError> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
    if let Some(path) = host.strip_prefix("unix://") {
        std::os::unix::net::UnixStream::connect(path)
            .map(|_| ())
            .map_err(|err| PgError::DockerUnavailable {
                detail: format!("{path}: {err}"),
            })
    } else {
        Ok(())
    }
}

fn classify(image: &str, err: TestcontainersError) -> PgError {
    let detail = err.to_string();
    let lower = detail.to_ascii_lowercase();
    if lower.contains("failed to pull")
        || lower.contains("no such image")
        || lower.contains("pull access denied")
    {
        PgError::ImageUnavailable {
            image: image.to_owned(),
            detail,
        }
    } else if lower.contains("docker client") || lower.contains("connection refused") {
        PgError::DockerUnavailable { detail }
    } else {
        PgError::Container {
            image: image.to_owned(),
            detail,
        }
    }
}
