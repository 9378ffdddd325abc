//! Errors of the PostgreSQL providers.

use std::path::PathBuf;

/// What went wrong while starting, using or stopping a PostgreSQL server.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server binaries (initdb, postgres) were not found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found; searched {searched}; install them \
         with `apt-get install postgresql-15` (Debian/Ubuntu) or set HARNESS_PG_BIN to the directory \
         that holds them"
    )]
    BinariesMissing {
        /// The places that were searched, comma separated.
        searched: String,
    },

    /// A client tool (psql, pg_dump, ...) was not found next to the server binaries or on PATH.
    #[error(
        "PostgreSQL tool `{tool}` not found in {bin_dir} or on PATH; install postgresql-client-15"
    )]
    ToolMissing {
        /// The tool's name.
        tool: String,
        /// The directory searched first.
        bin_dir: PathBuf,
    },

    /// A file system operation failed.
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

    /// initdb failed.
    #[error("initdb failed ({status}): {output}")]
    InitDb {
        /// Its exit status.
        status: String,
        /// The last lines of its output.
        output: String,
    },

    /// The server process exited while starting.
    #[error("postgres exited during start-up ({status}); last log lines:\n{log_tail}")]
    Exited {
        /// Its exit status.
        status: String,
        /// The last lines of the server log.
        log_tail: String,
    },

    /// The server did not accept connections in time.
    #[error(
        "postgres on port {port} did not accept connections within {seconds} s; last log lines:\n{log_tail}"
    )]
    StartTimeout {
        /// The port it should listen on.
        port: u16,
        /// The deadline.
        seconds: u64,
        /// The last lines of the server log.
        log_tail: String,
    },

    /// The server rejected the password.
    #[error("authentication failed for user {user} at {target}: wrong password or user")]
    AuthFailed {
        /// The user.
        user: String,
        /// host:port/dbname.
        target: String,
    },

    /// The server could not be reached.
    #[error("could not connect to PostgreSQL at {target}")]
    Connect {
        /// host:port/dbname.
        target: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A query failed.
    #[error("query failed: {what}")]
    Query {
        /// What the query was for.
        what: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A tool such as psql exited with an error.
    #[error("{tool} failed ({status}) on {what}: {stderr}")]
    Tool {
        /// The tool.
        tool: String,
        /// What it was run for.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },

    /// Docker could not be reached.
    #[error(
        "Docker is not reachable ({detail}); install docker.io and start dockerd (ci/run does both)"
    )]
    DockerUnavailable {
        /// What was tried.
        detail: String,
    },

    /// The container image is not present and cannot be pulled.
    #[error(
        "container image {image} is not available ({detail}); no registry is reachable here: build it \
         with `ci/images/postgres/build.sh` and set HARNESS_PG_IMAGE=rebuild-rehearsal/postgres:15"
    )]
    ImageUnavailable {
        /// The image reference.
        image: String,
        /// What Docker said.
        detail: String,
    },

    /// Any other container failure.
    #[error("container {image}: {detail}")]
    Container {
        /// The image reference.
        image: String,
        /// What testcontainers said.
        detail: String,
    },
}

impl PgError {
    /// Classifies a connection error: wrong password, or unreachable.
    pub(crate) fn from_connect(user: &str, target: String, source: tokio_postgres::Error) -> Self {
        let auth = source
            .as_db_error()
            .map(|db| {
                let code = db.code().code();
                code == "28P01" || code == "28000"
            })
            .unwrap_or(false);
        if auth {
            PgError::AuthFailed {
                user: user.to_owned(),
                target,
            }
        } else {
            PgError::Connect { target, source }
        }
    }
}

pub(crate) use crate::process::tail;
