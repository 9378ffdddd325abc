//! Progress on the terminal: a spinner per phase with its elapsed time while it runs, then one
//! line per finished phase. Not a terminal: one plain line per finished phase.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use harness::report::{PhaseReport, PhaseStatus};
use indicatif::{ProgressBar, ProgressStyle};
use scenarios::Observer;

/// Draws phases as they run.
pub(crate) struct Progress {
    bar: Mutex<Option<ProgressBar>>,
    terminal: bool,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self {
            bar: Mutex::new(None),
            terminal: std::io::stderr().is_terminal(),
        }
    }
}

fn mark(status: PhaseStatus) -> &'static str {
    match status {
        PhaseStatus::Passed => "ok",
        PhaseStatus::Failed => "FAILED",
        PhaseStatus::Skipped => "skipped",
    }
}

impl Observer for Progress {
    fn phase_started(&self, name: &str) {
        if !self.terminal {
            return;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:<22} {elapsed}").expect("valid template"),
        );
        bar.set_message(name.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn phase_finished(&self, phase: &PhaseReport) {
        let line = format!(
            "{:<22} {:>9.1} s  {}",
            phase.name,
            phase.duration_ms as f64 / 1000.0,
            mark(phase.status)
        );
        match self.bar.lock().expect("progress lock").take() {
            Some(bar) => bar.finish_with_message(line),
            None => eprintln!("{line}"),
        }
    }
}
