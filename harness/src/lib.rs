//! The rehearsal harness: cluster and PostgreSQL providers, the Titanium dataset, backup,
//! restore, verification gates, the load gate and reports.
//!
//! Scenarios compose these parts; the CLI only parses arguments and prints.

pub mod backup;
pub mod cluster;
pub mod data;
pub mod deploy;
pub mod facts;
pub mod forecast;
pub mod keep;
pub mod load;
pub mod oci;
pub mod pg;
pub mod pitr;
pub mod preflight;
pub mod process;
pub mod ready;
pub mod report;
pub mod restore;
pub mod runbook;
pub mod testing;
pub mod verify;

/// The log filter of the `rehearsal` binary and the `full_rebuild` test binary when
/// `REHEARSAL_LOG` is not set: warnings, without kube's request layer, which logs every failed
/// request at ERROR (the error is returned to the harness, which waits or reports it once,
/// with what was being done).
pub const DEFAULT_LOG_FILTER: &str = "warn,kube_client::client::builder=off";

/// An error and every cause in its chain on one line (`could not copy to X: No space left on
/// device`), each cause once: a cause whose text the line already holds is not repeated. Used
/// wherever an error becomes a string (a finding, a report line), so the cause is never lost.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}
