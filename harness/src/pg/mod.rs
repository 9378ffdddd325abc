//! PostgreSQL providers behind one small trait: start, connection parameters, stop.
//!
//! [`LocalPostgres`] runs a private server process from the machine's PostgreSQL binaries;
//! [`ContainerPostgres`] runs a container through testcontainers. Code above this boundary only
//! sees [`ConnParams`] and the [`PostgresProvider`] trait.

mod container;
mod error;
mod local;
mod params;
mod tools;

pub use container::{ContainerOptions, ContainerPostgres, DEFAULT_IMAGE, IMAGE_ENV};
pub use error::PgError;
pub use local::{LocalOptions, LocalPostgres};
pub use params::{ConnParams, Secret};
pub use tools::{BIN_ENV, PgTools};

/// A running PostgreSQL server that the harness owns.
///
/// Providers stop their server on drop as well (also when a test panics); `stop` is the
/// explicit, checked form.
pub trait PostgresProvider: Sized + Send {
    /// Options for [`PostgresProvider::start`].
    type Options: Default + Send;

    /// Starts a server and waits until it accepts connections.
    ///
    /// # Errors
    /// Fails with a [`PgError`] that names what is missing or what went wrong.
    fn start(options: Self::Options) -> impl Future<Output = Result<Self, PgError>> + Send;

    /// Parameters for connecting as the superuser to the default database.
    fn params(&self) -> ConnParams;

    /// Stops the server and removes what it wrote.
    ///
    /// # Errors
    /// Fails when the server does not stop cleanly.
    fn stop(self) -> impl Future<Output = Result<(), PgError>> + Send;
}

/// Creates database `name` on the server behind `params` (owner: the connecting user).
///
/// # Errors
/// Fails when the server is unreachable or the database exists.
pub async fn create_database(params: &ConnParams, name: &str) -> Result<(), PgError> {
    let client = params.connect().await?;
    let sql = format!("CREATE DATABASE {}", quote_ident(name));
    client
        .batch_execute(&sql)
        .await
        .map_err(|source| PgError::Query {
            what: format!("create database {name}"),
            source,
        })
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
