//! Running a scenario as named phases: each phase is timed, logged with a tracing span, told to
//! an observer (the CLI's progress display), and recorded in the report. The first failing
//! phase ends the run; the phases after it are recorded as skipped.

use std::fmt::Display;
use std::time::{Duration, Instant};

use harness::report::{PhaseReport, PhaseStatus};
use tracing::Instrument;

/// Told about phases as they start and end. The CLI draws progress from it; tests print.
pub trait Observer: Send + Sync {
    /// A phase started.
    fn phase_started(&self, _name: &str) {}
    /// A phase ended.
    fn phase_finished(&self, _phase: &PhaseReport) {}
}

/// An observer that does nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {}

/// A phase failed; the run stops.
#[derive(Debug, thiserror::Error)]
#[error("phase `{phase}` failed: {message}")]
pub struct PhaseFailed {
    /// The phase.
    pub phase: String,
    /// Its error, with its causes.
    pub message: String,
}

/// The phases of one scenario run so far.
pub struct Run<'a> {
    started: Instant,
    phases: Vec<PhaseReport>,
    observer: &'a dyn Observer,
}

impl<'a> Run<'a> {
    /// Starts the clock.
    pub fn new(observer: &'a dyn Observer) -> Self {
        Self {
            started: Instant::now(),
            phases: Vec::new(),
            observer,
        }
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Runs one phase, recording its outcome.
    ///
    /// # Errors
    /// [`PhaseFailed`] with the error's whole chain when the phase fails.
    pub async fn phase<T, E, F>(&mut self, name: &str, work: F) -> Result<T, PhaseFailed>
    where
        E: Into<anyhow::Error>,
        F: Future<Output = Result<T, E>>,
    {
        self.observer.phase_started(name);
        let start = self.started.elapsed();
        let span = tracing::info_span!("phase", name);
        let result = work.instrument(span).await;
        let duration = self.started.elapsed() - start;
        let (status, detail, outcome) = match result {
            Ok(value) => (PhaseStatus::Passed, None, Ok(value)),
            Err(err) => {
                let message = format!("{:#}", err.into());
                (
                    PhaseStatus::Failed,
                    Some(message.clone()),
                    Err(PhaseFailed {
                        phase: name.to_owned(),
                        message,
                    }),
                )
            }
        };
        let report = PhaseReport {
            name: name.to_owned(),
            status,
            start_ms: millis(start),
            duration_ms: millis(duration),
            detail,
        };
        self.observer.phase_finished(&report);
        self.phases.push(report);
        outcome
    }

    /// Adds a detail line to the last phase (a summary of what it did).
    pub fn note(&mut self, detail: impl Display) {
        if let Some(last) = self.phases.last_mut() {
            last.detail = Some(detail.to_string());
        }
    }

    /// Records `names` as skipped (after a failure).
    pub fn skip(&mut self, names: &[&str]) {
        let at = millis(self.started.elapsed());
        for name in names {
            if self.phases.iter().any(|p| p.name == *name) {
                continue;
            }
            self.phases.push(PhaseReport {
                name: (*name).to_owned(),
                status: PhaseStatus::Skipped,
                start_ms: at,
                duration_ms: 0,
                detail: None,
            });
        }
    }

    /// The phases recorded.
    pub fn into_phases(self) -> Vec<PhaseReport> {
        self.phases
    }

    /// The phases recorded so far.
    pub fn phases(&self) -> &[PhaseReport] {
        &self.phases
    }
}

/// Whole milliseconds.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_are_timed_and_failures_carry_their_cause() {
        let mut run = Run::new(&Quiet);
        let v: u32 = run
            .phase("first", async { Ok::<_, anyhow::Error>(7) })
            .await
            .unwrap();
        assert_eq!(v, 7);
        let err = run
            .phase("second", async {
                Err::<(), _>(anyhow::anyhow!("inner cause").context("outer"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.phase, "second");
        assert!(
            err.message.contains("outer") && err.message.contains("inner cause"),
            "{}",
            err.message
        );
        run.skip(&["first", "second", "third"]);
        let phases = run.into_phases();
        let statuses: Vec<_> = phases.iter().map(|p| (p.name.as_str(), p.status)).collect();
        assert_eq!(
            statuses,
            [
                ("first", PhaseStatus::Passed),
                ("second", PhaseStatus::Failed),
                ("third", PhaseStatus::Skipped)
            ]
        );
    }
}
