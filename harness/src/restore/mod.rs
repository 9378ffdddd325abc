//! Restore engine: ordered, idempotent restore of a backup into a rebuilt cluster.
//!
//! - [`restore_database`] loads a database from a custom archive (pg_restore, parallel) or a
//!   plain SQL dump or per-table CSV (psql, one transaction), idempotently: over an init script's empty
//!   tables, twice, or after an interrupted run. It refuses a database holding data unless
//!   forced, and `dry_run` returns the [`DbRestorePlan`] without changing anything. After
//!   the load it runs [`analyze`] (timed as `analyze_seconds`): a restore writes no planner
//!   statistics of its own.
//! - [`replay_rdb`] restores Redis from an RDB by `DUMP`/`RESTORE` through any reachable Redis.
//! - [`MarkerRow`] is the negative control: written after the backup, absent after restore.
//! - [`KubeRestorePlan`] orders backed-up Kubernetes objects the way Velero does (namespace,
//!   CRDs, RBAC, Secrets, ConfigMaps, PVCs, the PostgreSQL StatefulSet, then the data, Redis,
//!   the remaining workloads and custom resources), and [`restore_kubernetes`] applies it with
//!   server-side apply, waiting on each readiness condition with a deadline.
//!
//! The restore's inputs are explicit structs (paths and facts), not a backup directory, so
//! it does not depend on how a backup lays out its files; [`RestoreInputs::from_backup`] is
//! the one place that reads a backup's manifest to fill them.

mod analyze;
mod database;
mod error;
mod inputs;
mod kubernetes;
mod redis;

pub use analyze::{ANALYZE_TIMEOUT, analyze};
pub use database::{
    ArchiveProof, CsvArchive, CsvFile, DEFAULT_DEADLINE, DbArchive, DbRestoreInput,
    DbRestoreOptions, DbRestorePlan, DbRestoreReport, LoadedAs, MarkerRow, PlannedAction,
    TableLoad, TargetState, default_jobs, plan_database_restore, restore_database,
};
pub use error::RestoreError;
pub use inputs::{RestoreInputs, RestoreMethod};
pub use kubernetes::{
    DataRestorer, KubeRestoreOptions, KubeRestorePlan, KubeRestoreReport, PlanRoles, PlanStep,
    RESTORE_ANNOTATION, StepKind, Waits, observe_pods, restore_kubernetes,
};
pub use redis::replay_rdb;
