//! A forecast of the maintenance night at another database size, from rehearsals' reports.
//!
//! The model, stated in every forecast:
//! - The scale is the database's size, which the `seed` phase of every rehearsal records
//!   (`phases[seed].volume.bytes`, `pg_database_size` after the load).
//! - A phase that reports what it moved (`volume`: seed, backup, verify-backup, restore, gates)
//!   grows with the size: `duration = fixed + per_mb × MB`, fitted by least squares over the
//!   reports' sizes. From one size only (or reports all of one size), it is taken as
//!   proportional (`fixed = 0`), which overestimates phases whose fixed part is large.
//!   A fit that comes out decreasing is taken as fixed (the mean); one with a negative fixed
//!   part as proportional.
//! - Every other phase (cluster create and destroy, deploy, preflight, health and load, the
//!   decision) takes its mean duration over the reports, whatever the size.
//! - RTO is the sum from `destroy-cluster-a` to `health-and-load` (to `gates` in a scenario
//!   without a load gate), as the reports' `rto_ms` measures it. The night
//!   is every phase from `preflight` on (seed, the load generator and the cluster A this
//!   rehearsal creates do not happen on the real night).
//! - Every pod Ready: the reports' `pods_ready_ms` (the restore's last wait, until every pod
//!   of the namespace is Ready), fitted like a phase that grows with the size (fixed when it
//!   does not grow).
//! - The runbook's limits (rollback criteria): the database restore over 2 h (the whole
//!   `restore` phase is taken, which holds more than the database), the night over 6 h, every
//!   pod Ready after more than 30 min. A limit the reports give nothing to forecast is listed
//!   as not checked, never as within.
//! - Memory is flat: the peak RSS of the rehearsal's own process (`peak_rss_bytes`) at any
//!   size is forecast as that of the smallest report; `--check` measures the growth.
//! - Reports of one scenario and one provider only. The simulator's cluster phases (create,
//!   deploy, pods Ready) are the simulator's, not a real cluster's: a forecast from `sim`
//!   reports says so.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::report::{PhaseStatus, Report};
use crate::verify::RollbackThresholds;

/// Why a forecast cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForecastError {
    /// No report was given.
    #[error("no report to forecast from")]
    NoReports,
    /// A report has no seeded database size (made by another scenario, or before sizes were
    /// recorded).
    #[error(
        "report {report} records no database size (phase `seed` with a volume): rehearse again with this version"
    )]
    NoSize {
        /// The report.
        report: String,
    },
    /// A phase did not run to its end in a report, so its duration says nothing.
    #[error(
        "phase `{phase}` did not run to its end in report {report}: forecast from runs that did"
    )]
    PhaseDidNotRun {
        /// The phase.
        phase: String,
        /// The report.
        report: String,
    },
    /// Reports from different cluster providers.
    #[error(
        "report {report} was rehearsed on provider {provider}, {first} on {first_provider} (forecast from one provider's reports)"
    )]
    OtherProvider {
        /// The report that differs.
        report: String,
        /// Its provider.
        provider: String,
        /// The first report.
        first: String,
        /// The first report's provider.
        first_provider: String,
    },
    /// Some reports record the time until every pod was Ready and this one does not.
    #[error(
        "report {report} records no pods-Ready time (`pods_ready_ms`) and others do: rehearse again with this version"
    )]
    NoPodsReady {
        /// The report.
        report: String,
    },
    /// Reports of different scenarios, or with different phases.
    #[error(
        "report {report} has other phases than {first} (different scenarios cannot be combined)"
    )]
    OtherPhases {
        /// The report that differs.
        report: String,
        /// The first report.
        first: String,
    },
}

/// How one phase's duration grows with the database's size.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scaling {
    /// The same at every size: the mean of the reports.
    Fixed {
        /// Milliseconds.
        ms: f64,
    },
    /// `fixed_ms + ms_per_mb × MB`.
    Linear {
        /// The part that does not grow.
        fixed_ms: f64,
        /// Milliseconds per megabyte (10^6 bytes) of database.
        ms_per_mb: f64,
        /// How the line was found.
        fit: Fit,
    },
}

/// How a linear phase was fitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Least squares over two or more sizes.
    LeastSquares,
    /// Through zero: one size only, or least squares gave a negative fixed part.
    Proportional,
}

impl Scaling {
    /// The duration at `mb` megabytes.
    pub fn at(&self, mb: f64) -> f64 {
        match *self {
            Scaling::Fixed { ms } => ms,
            Scaling::Linear {
                fixed_ms,
                ms_per_mb,
                ..
            } => fixed_ms + ms_per_mb * mb,
        }
    }
}

/// One phase's model, with the samples it was fitted on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseModel {
    /// The phase.
    pub name: String,
    /// Its scaling.
    pub scaling: Scaling,
    /// (database MB, milliseconds) of each report.
    pub samples: Vec<(f64, u64)>,
}

/// The fitted model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Model {
    /// The scenario of the reports.
    pub scenario: String,
    /// The cluster provider the reports were rehearsed on.
    pub provider: String,
    /// The phases in the reports' order.
    pub phases: Vec<PhaseModel>,
    /// The time until every pod was Ready (named `pods Ready`), when the reports record it.
    pub pods_ready: Option<PhaseModel>,
    /// (database MB, bytes): the peak RSS of the smallest report, when every report records
    /// one.
    pub peak_rss: Option<(f64, u64)>,
}

/// The database size a report was rehearsed at, in bytes.
pub fn database_bytes(report: &Report) -> Option<u64> {
    report
        .phases
        .iter()
        .find(|p| p.name == "seed")
        .and_then(|p| p.volume)
        .and_then(|v| v.bytes)
}

impl Model {
    /// Fits the model on `reports` (each with a label naming it in errors).
    ///
    /// # Errors
    /// [`ForecastError`] when a report cannot be used.
    pub fn fit(reports: &[(String, Report)]) -> Result<Model, ForecastError> {
        let (first_label, first) = reports.first().ok_or(ForecastError::NoReports)?;
        let names: Vec<&str> = first.phases.iter().map(|p| p.name.as_str()).collect();
        let mut sizes = Vec::with_capacity(reports.len());
        for (label, report) in reports {
            let bytes = database_bytes(report).ok_or_else(|| ForecastError::NoSize {
                report: label.clone(),
            })?;
            sizes.push(bytes as f64 / 1e6);
            let theirs: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
            if theirs != names || report.scenario != first.scenario {
                return Err(ForecastError::OtherPhases {
                    report: label.clone(),
                    first: first_label.clone(),
                });
            }
            if report.provider != first.provider {
                return Err(ForecastError::OtherProvider {
                    report: label.clone(),
                    provider: report.provider.clone(),
                    first: first_label.clone(),
                    first_provider: first.provider.clone(),
                });
            }
            if report.pods_ready_ms.is_some() != first.pods_ready_ms.is_some() {
                let without = if report.pods_ready_ms.is_none() {
                    label
                } else {
                    first_label
                };
                return Err(ForecastError::NoPodsReady {
                    report: without.clone(),
                });
            }
            if let Some(p) = report.phases.iter().find(|p| {
                p.status == PhaseStatus::Skipped
                    || (p.status == PhaseStatus::Failed && p.gate.is_none())
            }) {
                return Err(ForecastError::PhaseDidNotRun {
                    phase: p.name.clone(),
                    report: label.clone(),
                });
            }
        }
        let phases = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let samples: Vec<(f64, u64)> = reports
                    .iter()
                    .zip(&sizes)
                    .map(|((_, r), mb)| (*mb, r.phases[i].duration_ms))
                    .collect();
                let grows = reports.iter().any(|(_, r)| r.phases[i].volume.is_some());
                let scaling = if grows {
                    linear(&samples)
                } else {
                    Scaling::Fixed {
                        ms: mean(samples.iter().map(|s| s.1 as f64)),
                    }
                };
                PhaseModel {
                    name: (*name).to_owned(),
                    scaling,
                    samples,
                }
            })
            .collect();
        let pods_ready = first.pods_ready_ms.is_some().then(|| {
            let samples: Vec<(f64, u64)> = reports
                .iter()
                .zip(&sizes)
                .filter_map(|((_, r), mb)| Some((*mb, r.pods_ready_ms?)))
                .collect();
            PhaseModel {
                name: "pods Ready".to_owned(),
                scaling: linear(&samples),
                samples,
            }
        });
        let peak_rss = reports
            .iter()
            .zip(&sizes)
            .map(|((_, r), mb)| r.peak_rss_bytes.map(|bytes| (*mb, bytes)))
            .collect::<Option<Vec<_>>>()
            .and_then(|all| all.into_iter().min_by(|a, b| a.0.total_cmp(&b.0)));
        Ok(Model {
            scenario: first.scenario.clone(),
            provider: first.provider.clone(),
            phases,
            pods_ready,
            peak_rss,
        })
    }

    /// The forecast at `bytes` of database, judged against `limits`.
    pub fn predict(&self, bytes: u64, limits: &RollbackThresholds) -> Forecast {
        let mb = bytes as f64 / 1e6;
        let phases: Vec<(String, f64)> = self
            .phases
            .iter()
            .map(|p| (p.name.clone(), p.scaling.at(mb).max(0.0)))
            .collect();
        let rto_ms = rto(&phases);
        let night_ms = span(&phases, "preflight", "");
        let restore_ms = phases
            .iter()
            .find(|(n, _)| n == "restore")
            .map(|(_, ms)| *ms);
        let pods_ready_ms = self.pods_ready.as_ref().map(|p| p.scaling.at(mb).max(0.0));
        let mut checks = Vec::new();
        let mut not_checked = Vec::new();
        for (what, ms, limit, why) in [
            (
                "database restore (the whole restore phase)",
                restore_ms,
                limits.max_db_restore,
                "the reports have no `restore` phase",
            ),
            (
                "the night (preflight to decision)",
                night_ms,
                limits.max_total,
                "the reports have no `preflight` phase",
            ),
            (
                "every pod Ready (the restore's last wait)",
                pods_ready_ms,
                limits.max_pods_ready,
                "the reports record no pods-Ready time (`pods_ready_ms`): rehearse again with \
                 this version",
            ),
        ] {
            match ms {
                Some(ms) => checks.push(LimitCheck::new(what, ms, limit)),
                None => not_checked.push(format!("{what}: {why}")),
            }
        }
        let mut caveats = Vec::new();
        if self.provider == "sim" {
            caveats.push(
                "rehearsed on the simulator: its cluster create, deploy and pods-Ready times \
                 are the simulator's, not a real cluster's (rehearse with --provider local or \
                 kubeconfig for those)"
                    .to_owned(),
            );
        }
        Forecast {
            scenario: self.scenario.clone(),
            provider: self.provider.clone(),
            database_bytes: bytes,
            phases,
            rto_ms,
            night_ms,
            pods_ready_ms,
            peak_rss: self.peak_rss,
            checks,
            not_checked,
            caveats,
        }
    }

    /// The model, one line per phase.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for p in self.phases.iter().chain(&self.pods_ready) {
            let samples = p
                .samples
                .iter()
                .map(|(mb, ms)| format!("{:.1} s at {mb:.0} MB", *ms as f64 / 1000.0))
                .collect::<Vec<_>>()
                .join(", ");
            let how = match p.scaling {
                Scaling::Fixed { ms } => format!("fixed {:.1} s", ms / 1000.0),
                Scaling::Linear {
                    fixed_ms,
                    ms_per_mb,
                    fit,
                } => format!(
                    "{:.1} s + {:.3} s/MB ({})",
                    fixed_ms / 1000.0,
                    ms_per_mb / 1000.0,
                    match fit {
                        Fit::LeastSquares => "least squares",
                        Fit::Proportional => "proportional",
                    }
                ),
            };
            let _ = writeln!(out, "  {:<24} {how:<40} from {samples}", p.name);
        }
        out
    }
}

/// The sum of the durations from phase `from` to phase `to` (to the end when `to` is empty),
/// when `from` is there.
/// The RTO as the report's `rto_ms` counts it: from the destroy to the end of the health and
/// load gates (`health-and-load`), or of the data gates in a scenario without them.
fn rto(phases: &[(String, f64)]) -> Option<f64> {
    span(phases, "destroy-cluster-a", "health-and-load")
        .or_else(|| span(phases, "destroy-cluster-a", "gates"))
}

fn span(phases: &[(String, f64)], from: &str, to: &str) -> Option<f64> {
    let start = phases.iter().position(|(n, _)| n == from)?;
    let end = if to.is_empty() {
        phases.len() - 1
    } else {
        phases.iter().position(|(n, _)| n == to)?
    };
    (end >= start).then(|| phases[start..=end].iter().map(|(_, ms)| ms).sum())
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

fn linear(samples: &[(f64, u64)]) -> Scaling {
    let n = samples.len() as f64;
    let mx = mean(samples.iter().map(|s| s.0));
    let my = mean(samples.iter().map(|s| s.1 as f64));
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    let proportional = || {
        let sxy: f64 = samples.iter().map(|s| s.0 * s.1 as f64).sum();
        let sxx0: f64 = samples.iter().map(|s| s.0 * s.0).sum();
        if sxx0 > 0.0 {
            Scaling::Linear {
                fixed_ms: 0.0,
                ms_per_mb: sxy / sxx0,
                fit: Fit::Proportional,
            }
        } else {
            Scaling::Fixed { ms: my }
        }
    };
    if n < 2.0 || sxx <= f64::EPSILON * mx.abs().max(1.0) {
        return proportional();
    }
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    let slope = sxy / sxx;
    if slope <= 0.0 {
        return Scaling::Fixed { ms: my };
    }
    let fixed = my - slope * mx;
    if fixed < 0.0 {
        return proportional();
    }
    Scaling::Linear {
        fixed_ms: fixed,
        ms_per_mb: slope,
        fit: Fit::LeastSquares,
    }
}

/// One limit of the runbook against the forecast.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimitCheck {
    /// What is limited.
    pub what: String,
    /// The forecast, in milliseconds.
    pub forecast_ms: f64,
    /// The limit, in milliseconds.
    pub limit_ms: f64,
    /// Whether the forecast passes the limit.
    pub exceeded: bool,
}

impl LimitCheck {
    fn new(what: &str, forecast_ms: f64, limit: Duration) -> Self {
        let limit_ms = limit.as_secs_f64() * 1000.0;
        Self {
            what: what.to_owned(),
            forecast_ms,
            limit_ms,
            exceeded: forecast_ms > limit_ms,
        }
    }
}

/// A forecast.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Forecast {
    /// The scenario forecast.
    pub scenario: String,
    /// The provider the reports were rehearsed on.
    pub provider: String,
    /// The database size forecast for.
    pub database_bytes: u64,
    /// Each phase's forecast duration in milliseconds.
    pub phases: Vec<(String, f64)>,
    /// RTO: `destroy-cluster-a` to `health-and-load` (or `gates` when a scenario has no load gate).
    pub rto_ms: Option<f64>,
    /// The night: `preflight` to the end.
    pub night_ms: Option<f64>,
    /// The restore's last wait, until every pod was Ready.
    pub pods_ready_ms: Option<f64>,
    /// (database MB, bytes): the peak RSS of the rehearsal's process, forecast flat, so that
    /// of the smallest report it was made from.
    pub peak_rss: Option<(f64, u64)>,
    /// The runbook's limits.
    pub checks: Vec<LimitCheck>,
    /// The runbook's limits the reports give nothing to forecast, each with why: not checked,
    /// so not within.
    pub not_checked: Vec<String>,
    /// What the reader must know about where the timings come from.
    pub caveats: Vec<String>,
}

impl Forecast {
    /// Whether a limit is forecast to be exceeded.
    pub fn exceeds_a_limit(&self) -> bool {
        self.checks.iter().any(|c| c.exceeded)
    }

    /// Whether a limit could not be forecast (see [`Forecast::not_checked`]).
    pub fn left_a_limit_unchecked(&self) -> bool {
        !self.not_checked.is_empty()
    }

    /// This forecast against what a rehearsal at that size measured.
    pub fn against(&self, actual: &Report) -> Accuracy {
        let phases = self
            .phases
            .iter()
            .filter_map(|(name, ms)| {
                let p = actual.phases.iter().find(|p| &p.name == name)?;
                Some((name.clone(), *ms, p.duration_ms))
            })
            .collect::<Vec<_>>();
        let measured: Vec<(String, f64)> = actual
            .phases
            .iter()
            .map(|p| (p.name.clone(), p.duration_ms as f64))
            .collect();
        Accuracy {
            phases,
            rto: self.rto_ms.zip(rto(&measured)),
            night: self.night_ms.zip(span(&measured, "preflight", "")),
            pods_ready: self
                .pods_ready_ms
                .zip(actual.pods_ready_ms.map(|ms| ms as f64)),
            peak_rss: self
                .peak_rss
                .map(|(_, bytes)| bytes as f64)
                .zip(actual.peak_rss_bytes.map(|bytes| bytes as f64)),
        }
    }
}

/// A forecast set against a rehearsal at the forecast size.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Accuracy {
    /// (phase, forecast ms, measured ms).
    pub phases: Vec<(String, f64, u64)>,
    /// (forecast, measured) RTO as the phases sum it, in milliseconds.
    pub rto: Option<(f64, f64)>,
    /// (forecast, measured) night, in milliseconds.
    pub night: Option<(f64, f64)>,
    /// (forecast, measured) time until every pod was Ready, in milliseconds.
    pub pods_ready: Option<(f64, f64)>,
    /// (forecast, measured) peak RSS of the rehearsal's process, in bytes: see
    /// [`Accuracy::peak_rss_growth`].
    pub peak_rss: Option<(f64, f64)>,
}

impl Accuracy {
    /// How much more memory the rehearsal's process needed at the checked size than at the
    /// smallest size forecast from (`+0.05`: 5 % more).
    pub fn peak_rss_growth(&self) -> Option<f64> {
        self.peak_rss
            .map(|(forecast, measured)| relative_error(measured, forecast))
    }
}

/// The relative error of `forecast` against `measured` (`+0.10`: 10 % too long).
pub fn relative_error(forecast: f64, measured: f64) -> f64 {
    if measured == 0.0 {
        if forecast == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        forecast / measured - 1.0
    }
}

impl std::fmt::Display for Forecast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "forecast of {} at {:.1} MB of database:",
            self.scenario,
            self.database_bytes as f64 / 1e6
        )?;
        for (name, ms) in &self.phases {
            writeln!(f, "  {name:<24} {:>10.1} s", ms / 1000.0)?;
        }
        if let Some(ms) = self.rto_ms {
            writeln!(f, "  {:<24} {:>10.1} s", "RTO", ms / 1000.0)?;
        }
        if let Some(ms) = self.night_ms {
            writeln!(f, "  {:<24} {:>10.1} s", "night", ms / 1000.0)?;
        }
        if let Some(ms) = self.pods_ready_ms {
            writeln!(f, "  {:<24} {:>10.1} s", "pods Ready", ms / 1000.0)?;
        }
        if let Some((mb, bytes)) = self.peak_rss {
            writeln!(
                f,
                "  {:<24} {:>10.1} MB (flat: the rehearsal process's at {mb:.0} MB)",
                "peak RSS",
                bytes as f64 / 1e6
            )?;
        }
        for c in &self.checks {
            writeln!(
                f,
                "  {}: {:.1} min forecast, limit {:.0} min: {}",
                c.what,
                c.forecast_ms / 60_000.0,
                c.limit_ms / 60_000.0,
                if c.exceeded { "EXCEEDED" } else { "within" }
            )?;
        }
        for what in &self.not_checked {
            writeln!(f, "  NOT CHECKED: {what}")?;
        }
        for caveat in &self.caveats {
            writeln!(f, "  note: {caveat}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Accuracy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "forecast against the rehearsal at that size:")?;
        for (name, forecast, measured) in &self.phases {
            writeln!(
                f,
                "  {name:<24} forecast {:>9.1} s, measured {:>9.1} s, error {:+6.1} %",
                forecast / 1000.0,
                *measured as f64 / 1000.0,
                relative_error(*forecast, *measured as f64) * 100.0
            )?;
        }
        for (label, pair) in [
            ("RTO", self.rto),
            ("night", self.night),
            ("pods Ready", self.pods_ready),
        ] {
            if let Some((forecast, measured)) = pair {
                writeln!(
                    f,
                    "  {label:<24} forecast {:>9.1} s, measured {:>9.1} s, error {:+6.1} %",
                    forecast / 1000.0,
                    measured / 1000.0,
                    relative_error(forecast, measured) * 100.0
                )?;
            }
        }
        if let Some((forecast, measured)) = self.peak_rss {
            writeln!(
                f,
                "  {:<24} smallest report {:>7.1} MB, measured {:>8.1} MB, growth {:+6.1} %",
                "peak RSS",
                forecast / 1e6,
                measured / 1e6,
                relative_error(measured, forecast) * 100.0
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{PhaseReport, Volume};

    /// A report at `mb` whose `backup` and `restore` take `per_mb` ms per MB over a fixed
    /// second, and whose other phases take a fixed time; every pod is Ready 500 ms after the
    /// restore ends.
    fn report(mb: u64, per_mb: u64) -> Report {
        let phase = |name: &str, ms: u64, volume: Option<Volume>| PhaseReport {
            name: name.into(),
            status: PhaseStatus::Passed,
            start_ms: 0,
            duration_ms: ms,
            detail: None,
            gate: None,
            volume,
        };
        let bytes = mb * 1_000_000;
        let grows = |ms| Some(Volume::over(Some(bytes), None, ms));
        let mut report = Report::of_phases(
            "full_rebuild",
            "sim",
            "",
            vec![
                phase("seed", 100 + mb, grows(100 + mb)),
                phase("preflight", 500, None),
                phase("backup", 1000 + per_mb * mb, grows(1000 + per_mb * mb)),
                phase("destroy-cluster-a", 2000, None),
                phase("restore", 1000 + per_mb * mb, grows(1000 + per_mb * mb)),
                phase("gates", 300, None),
                phase("health-and-load", 4000, None),
                phase("decide", 10, None),
            ],
        );
        report.pods_ready_ms = Some(1000 + per_mb * mb + 500);
        report.peak_rss_bytes = Some(100_000_000 + mb * 10_000);
        report
    }

    fn labelled(reports: Vec<Report>) -> Vec<(String, Report)> {
        reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| (format!("r{i}"), r))
            .collect()
    }

    #[test]
    fn two_sizes_forecast_a_third_exactly_when_phases_are_linear() {
        let model = Model::fit(&labelled(vec![report(100, 20), report(200, 20)])).unwrap();
        let forecast = model.predict(400_000_000, &RollbackThresholds::default());
        let accuracy = forecast.against(&report(400, 20));
        for (name, f, m) in &accuracy.phases {
            assert!((f - *m as f64).abs() < 1e-6, "{name}: {f} vs {m}");
        }
        let (f, m) = accuracy.rto.unwrap();
        assert!((f - m).abs() < 1e-6);
        // As the report's rto_ms: the destroy to the end of the health and load gates.
        assert_eq!(m, 2000.0 + 9000.0 + 300.0 + 4000.0);
        let (f, m) = accuracy.pods_ready.unwrap();
        assert!((f - m).abs() < 1e-6, "{f} vs {m}");
        // Memory is forecast flat: the 100 MB report's 101 MB, against 104 MB at 400 MB.
        assert_eq!(forecast.peak_rss, Some((100.0, 101_000_000)));
        let growth = accuracy.peak_rss_growth().unwrap();
        assert!((growth - 3.0 / 101.0).abs() < 1e-9, "{growth}");
        assert!(!forecast.exceeds_a_limit());
        assert!(!forecast.left_a_limit_unchecked());
        assert_eq!(forecast.checks.len(), 3);
        // Rehearsed on the simulator: said with the forecast.
        assert!(
            forecast
                .to_string()
                .contains("note: rehearsed on the simulator")
        );
    }

    #[test]
    fn pods_ready_past_thirty_minutes_exceeds_the_runbook_limit() {
        // 0.2 s per MB: at 10 GB the restore takes 2,001 s (under 2 h), but every pod is Ready
        // only after 2,001.5 s, over 30 min.
        let model = Model::fit(&labelled(vec![report(100, 200), report(200, 200)])).unwrap();
        let forecast = model.predict(10_000_000_000, &RollbackThresholds::runbook());
        let exceeded: Vec<&str> = forecast
            .checks
            .iter()
            .filter(|c| c.exceeded)
            .map(|c| c.what.as_str())
            .collect();
        assert_eq!(exceeded, ["every pod Ready (the restore's last wait)"]);
        assert!((forecast.pods_ready_ms.unwrap() - 2_001_500.0).abs() < 1e-3);
        let at_1gb = model.predict(1_000_000_000, &RollbackThresholds::runbook());
        assert!(!at_1gb.exceeds_a_limit());
    }

    #[test]
    fn a_limit_without_a_figure_is_not_checked_rather_than_within() {
        let mut old = vec![report(100, 20), report(200, 20)];
        for r in &mut old {
            r.pods_ready_ms = None;
        }
        // One report without a peak RSS: no memory forecast (the check then cannot check).
        old[1].peak_rss_bytes = None;
        let forecast = Model::fit(&labelled(old))
            .unwrap()
            .predict(400_000_000, &RollbackThresholds::runbook());
        assert!(forecast.left_a_limit_unchecked());
        assert!(!forecast.exceeds_a_limit());
        assert_eq!(forecast.peak_rss, None);
        assert_eq!(forecast.against(&report(400, 20)).peak_rss_growth(), None);
        assert!(forecast.not_checked[0].starts_with("every pod Ready"));
        assert!(
            forecast
                .to_string()
                .contains("NOT CHECKED: every pod Ready")
        );
    }

    #[test]
    fn one_size_is_proportional_and_overestimates_the_fixed_part() {
        let model = Model::fit(&labelled(vec![report(100, 20)])).unwrap();
        let restore = model.phases.iter().find(|p| p.name == "restore").unwrap();
        assert_eq!(
            restore.scaling,
            Scaling::Linear {
                fixed_ms: 0.0,
                ms_per_mb: 30.0,
                fit: Fit::Proportional
            }
        );
        let preflight = model.phases.iter().find(|p| p.name == "preflight").unwrap();
        assert_eq!(preflight.scaling, Scaling::Fixed { ms: 500.0 });
        let accuracy = model
            .predict(400_000_000, &RollbackThresholds::default())
            .against(&report(400, 20));
        let (f, m) = accuracy.rto.unwrap();
        assert!(relative_error(f, m) > 0.1, "{f} vs {m}");
    }

    #[test]
    fn a_restore_past_two_hours_exceeds_the_runbook_limit() {
        // 20 s per MB: 10 GB is 200,000 s of restore.
        let model = Model::fit(&labelled(vec![report(100, 20_000), report(200, 20_000)])).unwrap();
        let forecast = model.predict(10_000_000_000, &RollbackThresholds::default());
        assert!(forecast.exceeds_a_limit());
        let restore = &forecast.checks[0];
        assert!(restore.exceeded && restore.what.contains("restore"));
        assert!(forecast.to_string().contains("EXCEEDED"));
    }

    #[test]
    fn reports_that_cannot_be_used_are_named() {
        assert_eq!(Model::fit(&[]).unwrap_err(), ForecastError::NoReports);
        let mut no_size = report(100, 20);
        no_size.phases[0].volume = None;
        assert_eq!(
            Model::fit(&labelled(vec![no_size])).unwrap_err(),
            ForecastError::NoSize {
                report: "r0".into()
            }
        );
        let mut skipped = report(200, 20);
        skipped.phases[4].status = PhaseStatus::Skipped;
        assert_eq!(
            Model::fit(&labelled(vec![report(100, 20), skipped])).unwrap_err(),
            ForecastError::PhaseDidNotRun {
                phase: "restore".into(),
                report: "r1".into()
            }
        );
        let mut elsewhere = report(200, 20);
        elsewhere.provider = "local".into();
        assert!(matches!(
            Model::fit(&labelled(vec![report(100, 20), elsewhere])).unwrap_err(),
            ForecastError::OtherProvider { provider, first_provider, .. }
                if provider == "local" && first_provider == "sim"
        ));
        let mut older = report(200, 20);
        older.pods_ready_ms = None;
        assert_eq!(
            Model::fit(&labelled(vec![report(100, 20), older.clone()])).unwrap_err(),
            ForecastError::NoPodsReady {
                report: "r1".into()
            }
        );
        assert_eq!(
            Model::fit(&labelled(vec![older, report(100, 20)])).unwrap_err(),
            ForecastError::NoPodsReady {
                report: "r0".into()
            }
        );
        let mut other = report(200, 20);
        other.phases.pop();
        assert!(matches!(
            Model::fit(&labelled(vec![report(100, 20), other])).unwrap_err(),
            ForecastError::OtherPhases { .. }
        ));
    }

    #[test]
    fn a_decreasing_fit_is_fixed_and_a_negative_fixed_part_proportional() {
        assert_eq!(
            linear(&[(100.0, 1000), (200.0, 900)]),
            Scaling::Fixed { ms: 950.0 }
        );
        assert!(matches!(
            linear(&[(100.0, 100), (200.0, 400)]),
            Scaling::Linear {
                fit: Fit::Proportional,
                ..
            }
        ));
    }
}
