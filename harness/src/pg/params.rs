//! Connection parameters, and a secret type that never prints itself.

use std::fmt;

use super::PgError;

/// A password or other secret. Its `Debug` and `Display` print `***`; only
/// [`Secret::expose`] gives the value, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that must hand it on (an environment variable,
    /// a connection config, a file with mode 0600).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How to reach a PostgreSQL database.
#[derive(Clone, Debug)]
pub struct ConnParams {
    /// Host name or address (or a socket directory).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password, when the server asks for one.
    pub password: Option<Secret>,
    /// Database name.
    pub dbname: String,
}

impl ConnParams {
    /// The same server and user, another database.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        Self {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }

    /// `host:port/dbname`, for messages. Never contains the password.
    pub fn target(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }

    /// A tokio-postgres configuration.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("rebuild-rehearsal")
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        config
    }

    /// Connects, and drives the connection on a background task.
    ///
    /// # Errors
    /// [`PgError::AuthFailed`] for a wrong password, [`PgError::Connect`] otherwise.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, PgError> {
        let (client, connection) = self
            .config()
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|source| PgError::from_connect(&self.user, self.target(), source))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "postgres connection ended");
            }
        });
        Ok(client)
    }

    /// The libpq environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`) for
    /// psql, pg_dump and friends. Passwords go through the environment, never through argv.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.dbname.clone()),
            ("PGCONNECT_TIMEOUT", "10".to_owned()),
        ];
        if let Some(password) = &self.password {
            env.push(("PGPASSWORD", password.expose().to_owned()));
        }
        env
    }
}
