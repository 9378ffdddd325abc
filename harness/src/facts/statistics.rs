//! Planner statistics of each user table: whether `ANALYZE` (or autovacuum's analyze) has run
//! on it, and how many of its columns have statistics in `pg_stats`.
//!
//! pg_restore and psql load rows and build indexes but leave no statistics (PostgreSQL 15),
//! so a restored database plans its first queries on default estimates until autovacuum
//! reaches it. The statistics gate reads these facts.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::TablesError;

/// Planner statistics of one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStatistics {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// The later of `pg_stat_user_tables.last_analyze` and `last_autoanalyze`, as PostgreSQL
    /// prints it; `None` when neither is set (never analyzed, or the activity statistics were
    /// reset).
    pub last_analyzed: Option<String>,
    /// Columns with a row in `pg_stats` (what the planner uses). Zero for a table that was
    /// never analyzed, and also for an analyzed table without rows.
    pub columns_with_statistics: u64,
}

impl TableStatistics {
    /// `schema.name`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Whether the planner has statistics for it: an analyze is recorded, or `pg_stats` holds
    /// rows for its columns (which only ANALYZE writes; they survive a statistics reset).
    pub fn analyzed(&self) -> bool {
        self.last_analyzed.is_some() || self.columns_with_statistics > 0
    }
}

/// The planner statistics of every user table (the tables [`super::list_tables`] lists),
/// sorted by schema and name.
///
/// # Errors
/// [`TablesError::Query`] when the catalog cannot be read.
pub async fn table_statistics(client: &Client) -> Result<Vec<TableStatistics>, TablesError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, \
                    GREATEST(s.last_analyze, s.last_autoanalyze)::text, \
                    (SELECT count(*) FROM pg_stats p \
                      WHERE p.schemaname = n.nspname AND p.tablename = c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
             WHERE c.relkind = 'r' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                               AND d.objid = c.oid AND d.deptype = 'e') \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|source| TablesError::Query {
            what: "read the tables' planner statistics".to_owned(),
            source,
        })?;
    Ok(rows
        .iter()
        .map(|row| TableStatistics {
            schema: row.get(0),
            name: row.get(1),
            last_analyzed: row.get(2),
            columns_with_statistics: row.get::<_, i64>(3).unsigned_abs(),
        })
        .collect())
}
