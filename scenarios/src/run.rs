//! Running a scenario as named phases: each phase is timed, logged with a tracing span, told to
//! an observer (the CLI's progress display), and recorded in the report. The first phase that
//! could not run ends the run; the phases after it are recorded as skipped. A phase whose gate
//! judged red is failed but lets the run go on to its decision. An error between phases is
//! recorded as a failed phase of its own, so it reaches the report.

use std::fmt::Display;
use std::time::{Duration, Instant};

use harness::report::{PhaseReport, PhaseStatus, Volume};
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

/// The name of the phase that records an error between phases.
pub const OUTSIDE_PHASES: &str = "outside-phases";

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
        self.run_phase(name, async { work.await.map(|v| (v, None)) })
            .await
    }

    /// Runs one phase that ends in gate verdicts: `work` returns its value and, when a gate
    /// failed, which one and why. A failed gate fails the phase (naming the gate; the observer
    /// is told so) but the value is returned, so the run can still decide; an `Err` is a phase
    /// that could not run.
    ///
    /// # Errors
    /// [`PhaseFailed`] when the work returns an error.
    pub async fn judged_phase<T, E, F>(&mut self, name: &str, work: F) -> Result<T, PhaseFailed>
    where
        E: Into<anyhow::Error>,
        F: Future<Output = Result<(T, Option<(String, String)>), E>>,
    {
        self.run_phase(name, work).await
    }

    async fn run_phase<T, E, F>(&mut self, name: &str, work: F) -> Result<T, PhaseFailed>
    where
        E: Into<anyhow::Error>,
        F: Future<Output = Result<(T, Option<(String, String)>), E>>,
    {
        self.observer.phase_started(name);
        let start = self.started.elapsed();
        let span = tracing::info_span!("phase", name);
        let result = work.instrument(span).await;
        let duration = self.started.elapsed() - start;
        let (status, detail, gate, outcome) = match result {
            Ok((value, None)) => (PhaseStatus::Passed, None, None, Ok(value)),
            Ok((value, Some((gate, why)))) => (
                PhaseStatus::Failed,
                Some(format!("gate {gate} failed: {why}")),
                Some(gate),
                Ok(value),
            ),
            Err(err) => {
                let message = format!("{:#}", err.into());
                (
                    PhaseStatus::Failed,
                    Some(message.clone()),
                    None,
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
            gate,
            volume: None,
        };
        self.observer.phase_finished(&report);
        self.phases.push(report);
        outcome
    }

    /// Ends the run: an error that no phase recorded (one between phases) becomes a failed
    /// phase `outside-phases` naming where it happened, and the phases of `planned` that did
    /// not run are recorded as skipped.
    pub fn finish(mut self, outcome: anyhow::Result<()>, planned: &[&str]) -> Vec<PhaseReport> {
        if let Err(err) = outcome
            && err.downcast_ref::<PhaseFailed>().is_none()
        {
            let at = millis(self.started.elapsed());
            let place = match self.phases.last() {
                Some(last) => format!("after phase `{}`", last.name),
                None => "before the first phase".to_owned(),
            };
            let report = PhaseReport {
                name: OUTSIDE_PHASES.to_owned(),
                status: PhaseStatus::Failed,
                start_ms: at,
                duration_ms: 0,
                detail: Some(format!("error {place}: {err:#}")),
                gate: None,
                volume: None,
            };
            self.observer.phase_finished(&report);
            self.phases.push(report);
        }
        self.skip(planned);
        self.phases
    }

    /// Adds a detail line to the last phase (a summary of what it did).
    pub fn note(&mut self, detail: impl Display) {
        if let Some(last) = self.phases.last_mut() {
            last.detail = Some(detail.to_string());
        }
    }

    /// Records what the last phase moved (see [`Volume`]), for its throughput.
    pub fn measure(&mut self, bytes: Option<u64>, rows: Option<u64>) {
        if let Some(last) = self.phases.last_mut() {
            last.volume = Some(Volume::over(bytes, rows, last.duration_ms));
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
                gate: None,
                volume: None,
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
    use std::sync::Mutex;

    use harness::report::{Outcome, Report, render_html, render_junit};

    use super::*;

    /// Remembers every phase it is told about, as the CLI's progress display would print it.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, PhaseStatus)>>);

    impl Observer for Recorder {
        fn phase_finished(&self, phase: &PhaseReport) {
            self.0
                .lock()
                .unwrap()
                .push((phase.name.clone(), phase.status));
        }
    }

    fn report(phases: Vec<PhaseReport>) -> Report {
        Report::of_phases("full_rebuild", "sim", "2026-12-02T00:00:00Z", phases)
    }

    #[tokio::test]
    async fn an_error_between_phases_is_a_run_that_could_not_run() {
        let recorder = Recorder::default();
        let mut run = Run::new(&recorder);
        run.phase("first", async { Ok::<_, anyhow::Error>(()) })
            .await
            .unwrap();
        // As `steps` fails between phases: a `?` on something no phase wraps.
        let outcome: anyhow::Result<()> =
            Err(anyhow::anyhow!("no pg_dump on PATH").context("find the PostgreSQL tools"));
        let phases = run.finish(outcome, &["first", "second"]);
        let statuses: Vec<_> = phases.iter().map(|p| (p.name.as_str(), p.status)).collect();
        assert_eq!(
            statuses,
            [
                ("first", PhaseStatus::Passed),
                (OUTSIDE_PHASES, PhaseStatus::Failed),
                ("second", PhaseStatus::Skipped)
            ]
        );
        let detail = phases[1].detail.as_deref().unwrap();
        assert!(
            detail.contains("after phase `first`") && detail.contains("no pg_dump on PATH"),
            "{detail}"
        );
        assert_eq!(
            recorder.0.lock().unwrap().last().cloned(),
            Some((OUTSIDE_PHASES.to_owned(), PhaseStatus::Failed)),
            "the progress display is told"
        );
        let report = report(phases);
        assert_eq!(report.verdict, Outcome::CouldNotRun);
        assert!(
            report
                .rollback_reasons
                .iter()
                .any(|r| r.contains("no pg_dump on PATH")),
            "{:?}",
            report.rollback_reasons
        );
        let junit = render_junit(&report);
        assert!(junit.contains("name=\"phase.outside-phases\""), "{junit}");
        assert!(junit.contains("<error"), "an errored test case: {junit}");
        assert!(render_html(&report).contains("COULD NOT RUN"));
    }

    #[tokio::test]
    async fn a_phase_error_is_recorded_once_and_not_repeated_by_finish() {
        let mut run = Run::new(&Quiet);
        let err = run
            .phase("restore", async {
                Err::<(), _>(anyhow::anyhow!("pg_restore failed"))
            })
            .await
            .unwrap_err();
        let phases = run.finish(Err(err.into()), &["restore", "gates"]);
        let names: Vec<_> = phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["restore", "gates"]);
        assert_eq!(report(phases).verdict, Outcome::CouldNotRun);
    }

    /// The report of a run whose load gate failed (issue 20's 1M-post run): the phase is
    /// failed, the verdict is a roll back, and the reasons name the threshold, the observed
    /// value and the slowest endpoint, once.
    #[tokio::test]
    async fn a_failed_load_gate_is_a_failed_phase_and_a_reason_with_its_evidence() {
        use harness::verify::{self, EndpointLatency, LoadBreach, LoadSample};
        let mut run = Run::new(&Quiet);
        let why = "threshold http_req_duration: p(95)<500 failed: observed 745.000; slowest \
                   endpoint GET list posts (p50 627.0 ms, p95 1210.0 ms)";
        let sample = run
            .judged_phase("health-and-load", async {
                let sample = LoadSample {
                    breaches: vec![LoadBreach {
                        rule: "http_req_duration: p(95)<500".into(),
                        observed: Some(745.0),
                    }],
                    requests: 900,
                    max_response_time: Duration::from_millis(1300),
                    slowest: Some(EndpointLatency {
                        name: "GET list posts".into(),
                        p50_ms: 627.0,
                        p95_ms: 1210.0,
                    }),
                };
                anyhow::Ok((sample, Some(("load".to_owned(), why.to_owned()))))
            })
            .await
            .unwrap();
        let decision = verify::decide(
            &verify::RollbackInputs {
                load: Some(sample),
                ..verify::RollbackInputs::default()
            },
            &verify::RollbackThresholds::runbook(),
        );
        let mut report = report(run.finish(Ok(()), &["health-and-load"]));
        report.gates.push(harness::report::GateReport {
            name: "load".into(),
            passed: false,
            findings: vec![verify::Finding::new(
                "threshold http_req_duration: p(95)<500",
                verify::FindingKind::OverLimit,
                why,
            )],
            not_run: None,
        });
        report.rollback_reasons = decision.explain();
        report.conclude();
        assert_eq!(report.verdict, Outcome::Fail);
        assert_eq!(report.phases[0].status, PhaseStatus::Failed);
        let load: Vec<&String> = report
            .rollback_reasons
            .iter()
            .filter(|r| r.starts_with("gate load"))
            .collect();
        assert_eq!(load.len(), 1, "one reason for the load gate: {load:?}");
        for needle in [
            "http_req_duration: p(95)<500",
            "observed 745.000",
            "slowest endpoint GET list posts (p50 627.0 ms, p95 1210.0 ms)",
        ] {
            assert!(
                load[0].contains(needle),
                "{needle} missing from {}",
                load[0]
            );
        }
        let html = render_html(&report);
        assert!(html.contains("FAIL / ROLL BACK") && html.contains("observed 745.000"));
    }

    #[tokio::test]
    async fn a_failed_gate_fails_its_phase_once_and_lets_the_run_decide() {
        let recorder = Recorder::default();
        let mut run = Run::new(&recorder);
        let value = run
            .judged_phase("health-and-load", async {
                let why = "threshold http_req_duration: p(95)<500 failed: observed 745.000";
                anyhow::Ok((42, Some(("load".to_owned(), why.to_owned()))))
            })
            .await
            .unwrap();
        assert_eq!(value, 42, "the run goes on with the figures");
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [("health-and-load".to_owned(), PhaseStatus::Failed)],
            "told once, as failed (never `ok`)"
        );
        let phases = run.finish(Ok(()), &["health-and-load"]);
        assert_eq!(phases[0].gate.as_deref(), Some("load"));
        let report = report(phases);
        assert_eq!(
            report.verdict,
            Outcome::Fail,
            "a gate failed: not could-not-run"
        );
        assert!(!report.rollback_reasons.is_empty());
    }

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
