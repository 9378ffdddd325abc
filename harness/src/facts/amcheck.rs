//! What became of `pg_amcheck`: its report, or why it could not run.

use serde::{Deserialize, Serialize};

/// What `pg_amcheck` printed and how it exited, as observed by whoever ran it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmcheckReport {
    /// Its exit status (0: no corruption found).
    pub exit_code: i32,
    /// Its standard output and standard error.
    pub output: String,
}

/// What became of `pg_amcheck` for the integrity gate. There is no way to say "it did not
/// start, so leave it out": a check that was asked for and could not run fails the gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amcheck {
    /// The gate checks foreign keys only; pg_amcheck was not part of it.
    NotRequested,
    /// pg_amcheck ran and reported.
    Ran(AmcheckReport),
    /// pg_amcheck was asked for and could not run, with why.
    CouldNotRun(String),
}

impl<E: std::error::Error> From<Result<AmcheckReport, E>> for Amcheck {
    /// The outcome of an attempt to run pg_amcheck: its report, or why it could not run (the
    /// error's whole chain).
    fn from(result: Result<AmcheckReport, E>) -> Self {
        match result {
            Ok(report) => Amcheck::Ran(report),
            Err(err) => Amcheck::CouldNotRun(crate::error_chain(&err)),
        }
    }
}
