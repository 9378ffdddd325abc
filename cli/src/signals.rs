//! SIGINT and SIGTERM stop a command through the same teardown as an error, then exit with
//! [`exit_codes::INTERRUPTED`] (130) or [`exit_codes::TERMINATED`] (143).
//!
//! The work future is dropped, so every Drop guard in it runs: scratch PostgreSQL servers get
//! their fast shutdown, tool process groups (pg_restore and its workers) are killed, simulated
//! clusters stop, scratch directories are removed. A second signal exits at once; children
//! still die with the process (`harness::process`) and the next run sweeps the directories.

use std::future::Future;
use std::time::Duration;

use crate::exit_codes;

/// Runs `work` on `runtime` until it finishes or a SIGINT/SIGTERM arrives, and returns the exit
/// code. The handlers are installed before the work starts, so no signal finds a child or a
/// scratch directory unguarded.
pub(crate) fn run(runtime: tokio::runtime::Runtime, work: impl Future<Output = i32>) -> i32 {
    let (code, interrupted) = runtime.block_on(async {
        let mut signals = match Interrupts::install() {
            Ok(signals) => signals,
            Err(err) => {
                eprintln!("error: cannot install the SIGINT/SIGTERM handlers: {err}");
                return (exit_codes::COULD_NOT_RUN, false);
            }
        };
        // The watcher runs on a worker thread, so a second signal is seen even while this
        // thread is busy tearing down.
        let (first, interrupted) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (name, code) = signals.next().await;
            eprintln!("{name} received: stopping and cleaning up (send it again to exit at once)");
            // Fails only when the work already finished; then there is nothing to stop.
            let _ = first.send(code);
            let (name, code) = signals.next().await;
            eprintln!("{name} received again: exiting now; the next run sweeps what is left");
            std::process::exit(code);
        });
        tokio::select! {
            code = work => (code, false),
            // Leaving this branch drops `work`: every Drop guard in it runs now.
            Ok(code) = interrupted => (code, true),
        }
    });
    if interrupted {
        // Tasks spawned by the work (a simulated cluster's kubelet) are dropped here, which
        // runs their teardown too. Blocking tasks (an archive being unpacked) cannot be
        // cancelled: they get a few seconds, then whatever they wrote after their scratch
        // directory was removed goes as well.
        runtime.shutdown_timeout(Duration::from_secs(5));
        harness::keep::remove_leftovers();
    }
    code
}

/// SIGINT and SIGTERM, caught for the whole run.
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal, with the exit code it maps to.
    async fn next(&mut self) -> (&'static str, i32) {
        tokio::select! {
            _ = self.int.recv() => ("SIGINT", exit_codes::INTERRUPTED),
            _ = self.term.recv() => ("SIGTERM", exit_codes::TERMINATED),
        }
    }
}
