//! Facts: everything observed, and nothing judged. Of a database: per-table row counts and
//! content digests, sequences, a normalised schema rendering, foreign-key checks, pg_amcheck,
//! and planner statistics; of Redis: its keyspace digest; of a cluster after a restore: pods,
//! health checks, the load gate's figures and resource usage (`resources`). The backup records them inside its
//! snapshot; the restore observes them again; `verify` compares the two without doing any I/O
//! itself.

mod amcheck;
mod durations;
mod observed;
mod redis;
pub mod resources;
pub mod schema;
pub mod statistics;
pub mod tables;

pub use durations::{opt_secs, secs};

use serde::{Deserialize, Serialize};

/// Row count and content digest of one table, observed in one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFacts {
    /// Schema name (`public`).
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Exact row count.
    pub rows: u64,
    /// Hex SHA-256 over the table's rows (see [`tables`] for the exact definition).
    pub digest: String,
    /// The primary-key columns the digest ordered rows by; empty when the digest is
    /// order-independent (every table in [`tables::DigestVersion::RowsV2`]).
    pub ordered_by: Vec<String>,
}

/// A sequence and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceFacts {
    /// Schema name.
    pub schema: String,
    /// Sequence name.
    pub name: String,
    /// `last_value`.
    pub last_value: i64,
    /// `is_called`: whether `last_value` has been handed out.
    pub is_called: bool,
    /// The `table.column` that owns it, if any.
    pub owned_by: Option<String>,
    /// The largest value in the owning column, if any.
    pub column_max: Option<i64>,
}

pub use amcheck::{Amcheck, AmcheckReport};
pub use observed::{
    EndpointLatency, HealthSample, LoadBreach, LoadSample, PodObservation, pod_ready, pod_succeeded,
};
pub use redis::RedisFacts;
pub use resources::{NodeResourceSample, PvcUsage, ResourceObservation};
pub use schema::{ForeignKeyCheck, SchemaError, foreign_key_checks, render_schema, run_amcheck};
pub use statistics::{TableStatistics, table_statistics};
pub use tables::{
    DUMP_ENV, DigestVersion, RowDigest, TableRef, TablesError, digest_table, list_tables,
    sequence_facts, table_facts, table_facts_as,
};
