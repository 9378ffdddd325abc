//! Seeding a newly deployed Titanium database whose load generator may have written first
//! (`rehearsal sim up`): the seed always lands in full, and only the load generator's own rows
//! are ever cleared for it.

use super::{DatasetSpec, LoadError, LoadStats, load_dataset};

/// The prefix of every account the load generator creates (`loadgen-<hex>`).
pub const LOAD_GENERATOR_PREFIX: &str = "loadgen-";

/// Why a new database could not be seeded.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The users table holds rows the load generator did not write: not ours to clear.
    #[error(
        "the users table already holds {rows} rows not written by the load generator; not seeding over them"
    )]
    NotNew {
        /// How many such rows.
        rows: i64,
    },
    /// A query failed.
    #[error("could not {what}")]
    Postgres {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Loading the dataset failed.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Loads `spec` into a newly deployed database, in full. Rows the load generator wrote before
/// it was stopped (its `loadgen-*` accounts and their posts) are removed first, so the seed's
/// ids are free; any other row makes it refuse and change nothing. The caller stops the load
/// generator first (no pod of it left).
///
/// # Errors
/// [`SeedError`]: the database is not new, or a query or the load failed.
pub async fn seed_new_database(
    client: &tokio_postgres::Client,
    spec: &DatasetSpec,
) -> Result<LoadStats, SeedError> {
    let pg = |what| move |source| SeedError::Postgres { what, source };
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM users WHERE NOT starts_with(username, $1)",
            &[&LOAD_GENERATOR_PREFIX],
        )
        .await
        .map_err(pg("count the users not written by the load generator"))?
        .get(0);
    if rows != 0 {
        return Err(SeedError::NotNew { rows });
    }
    client
        .batch_execute("TRUNCATE posts, users")
        .await
        .map_err(pg("remove the load generator's rows before seeding"))?;
    Ok(load_dataset(client, spec).await?)
}
