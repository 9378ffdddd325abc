//! `ANALYZE` after a database load: pg_restore and psql load rows and build indexes but write
//! no planner statistics (PostgreSQL 15), so without it the rebuilt database serves its first
//! traffic on default estimates until autovacuum gets to each table. The statistics gate
//! ([`crate::verify::statistics`]) checks that it ran.

use std::time::{Duration, Instant};

use super::RestoreError;
use crate::pg::ConnParams;

/// How long `ANALYZE` may run before the server cancels it. It samples at most 30,000 rows
/// per table (the default statistics target), so it takes seconds even for large tables; an
/// hour means it is stuck (waiting on a lock), and the restore must say so.
pub const ANALYZE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Runs `ANALYZE` on every table of the database behind `params` and returns how long it
/// took. The server enforces [`ANALYZE_TIMEOUT`] (`statement_timeout`).
///
/// # Errors
/// [`RestoreError::Postgres`] when the database cannot be reached or `ANALYZE` fails or times
/// out.
pub async fn analyze(params: &ConnParams) -> Result<Duration, RestoreError> {
    let started = Instant::now();
    let client = params.connect().await.map_err(RestoreError::pg(format!(
        "connect to {} to ANALYZE it",
        params.target()
    )))?;
    let sql = format!(
        "SET statement_timeout = '{}s'; ANALYZE",
        ANALYZE_TIMEOUT.as_secs()
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(RestoreError::query(format!(
            "ANALYZE {} after the load (planner statistics; limit {} s)",
            params.target(),
            ANALYZE_TIMEOUT.as_secs()
        )))?;
    let took = started.elapsed();
    tracing::info!(seconds = took.as_secs_f64(), "ANALYZE after the restore");
    Ok(took)
}
