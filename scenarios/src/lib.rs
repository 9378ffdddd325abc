//! The rehearsals: each scenario is a list of named phases over the harness's `Cluster` and
//! `PostgresProvider` traits. A scenario never reaches into a provider's internals, so the same
//! scenario runs on the simulated cluster, kind, or an existing cluster.

pub mod cronjob_backup;
pub mod full_rebuild;
pub mod pitr;
mod rehearsal;
pub mod roundtrip;
pub mod run;
pub mod runbook;
pub mod titanium;

pub use rehearsal::Rehearsal;
pub use run::{Observer, PhaseFailed, Quiet, Run};
