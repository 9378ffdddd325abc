//! The rehearsal harness: cluster and PostgreSQL providers, the Titanium dataset, backup,
//! restore, verification gates, the load gate and reports.
//!
//! Scenarios compose these parts; the CLI only parses arguments and prints.

pub mod backup;
pub mod cluster;
pub mod data;
pub mod deploy;
pub mod facts;
pub mod keep;
pub mod load;
pub mod pg;
pub mod preflight;
pub mod process;
pub mod report;
pub mod restore;
pub mod testing;
pub mod verify;
