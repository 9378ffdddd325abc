//! The goose load gate: runs a profile in-process, bounded in users and time, and judges the
//! thresholds from goose's metrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use goose::config::GooseConfiguration;
use goose::metrics::GooseMetrics;
use goose::prelude::*;

use super::thresholds::{ThresholdOutcome, Thresholds};
use super::{LoadError, check_target, scenarios};
use crate::verify::{Finding, FindingKind};

/// Which of the runbook's k6 scripts the gate stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadProfile {
    /// `quick-test.js`: reads only (list users, list posts, read posts by id).
    Quick,
    /// `load-test.js`: readers and authors (sign up, log in, create posts), 3 to 1.
    Full,
    /// One GET path, requested as fast as it answers (the benchmark against `wrk`); the
    /// request is named `GET <path>`.
    Get {
        /// The path, such as `/blog/1`.
        path: String,
    },
}

/// Settings of the load gate; [`LoadGate::quick`] and [`LoadGate::full`] give defaults.
#[derive(Debug, Clone)]
pub struct LoadGate {
    /// The gateway, such as `http://127.0.0.1:8000`.
    pub base_url: String,
    /// The scenario mix.
    pub profile: LoadProfile,
    /// Concurrent goose users (at most 1000).
    pub users: usize,
    /// Users started per second.
    pub hatch_rate: usize,
    /// How long the users run once started (1 s to 1 h; whole seconds).
    pub run_time: Duration,
    /// Pause between a user's transactions, like k6's `sleep()`; zero for full speed.
    pub think_time: Duration,
    /// A request that takes this long fails.
    pub request_timeout: Duration,
    /// The rules; all must hold.
    pub thresholds: Thresholds,
    /// Where goose's HTML report is written (created 0700 if missing); no report when `None`.
    pub report_dir: Option<PathBuf>,
    /// Allow a target that is not on loopback.
    pub allow_remote: bool,
}

/// Figures of one request kind (or of all requests together).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFigures {
    /// goose's name: method and request name, such as `GET list posts`; `all` for the total.
    pub name: String,
    /// Requests made.
    pub requests: u64,
    /// Requests that failed (non-2xx or transport error).
    pub failures: u64,
    /// Requests per second over the run.
    pub rps: f64,
    /// Mean response time.
    pub avg_ms: f64,
    /// Median response time.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest response.
    pub max_ms: f64,
    /// Answers by status code (0 for a transport error).
    pub statuses: BTreeMap<u16, u64>,
    /// (bucket floor in µs, count), fastest first, for other percentiles.
    buckets: Vec<(u64, u64)>,
    min_us: u64,
    max_us: u64,
}

impl RequestFigures {
    /// Failures as a share of requests (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }

    /// The response time `q` (0..1) of the requests finished within, in milliseconds.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        percentile_us(&self.buckets, self.min_us, self.max_us, q) as f64 / 1000.0
    }
}

/// What a load run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadFigures {
    /// Wall time of the run, ramp-up included.
    pub duration: Duration,
    /// Most users running at once.
    pub users: usize,
    /// All requests together.
    pub overall: RequestFigures,
    /// Per request kind, by name.
    pub per_request: Vec<RequestFigures>,
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadVerdict {
    /// True when every threshold held and requests were made.
    pub passed: bool,
    /// One line per breach.
    pub findings: Vec<Finding>,
    /// Each threshold with the value it saw.
    pub thresholds: Vec<ThresholdOutcome>,
    /// The figures.
    pub figures: LoadFigures,
    /// goose's HTML report, when one was asked for.
    pub report: Option<PathBuf>,
}

impl LoadGate {
    /// `quick-test.js`: 4 readers for 10 s, 100 ms think time, thresholds p95 < 500 ms,
    /// failures < 1 %, at least 10 requests/s.
    pub fn quick(base_url: impl Into<String>) -> LoadGate {
        LoadGate {
            base_url: base_url.into(),
            profile: LoadProfile::Quick,
            users: 4,
            hatch_rate: 4,
            run_time: Duration::from_secs(10),
            think_time: Duration::from_millis(100),
            request_timeout: Duration::from_secs(10),
            thresholds: Thresholds::k6_defaults(10.0),
            report_dir: None,
            allow_remote: false,
        }
    }

    /// `load-test.js`: 8 users (readers and authors 3 to 1) for 30 s, 100 ms think time,
    /// thresholds p95 < 500 ms, failures < 1 %, at least 20 requests/s.
    pub fn full(base_url: impl Into<String>) -> LoadGate {
        LoadGate {
            profile: LoadProfile::Full,
            users: 8,
            hatch_rate: 8,
            run_time: Duration::from_secs(30),
            thresholds: Thresholds::k6_defaults(20.0),
            ..LoadGate::quick(base_url)
        }
    }

    fn validate(&self) -> Result<(), LoadError> {
        let bad = |setting, reason: &str| {
            Err(LoadError::InvalidSetting {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.users == 0 || self.users > 1000 {
            return bad("users", "must be 1 to 1000");
        }
        if self.hatch_rate == 0 {
            return bad("hatch_rate", "must be at least 1");
        }
        if self.run_time < Duration::from_secs(1) || self.run_time > Duration::from_secs(3600) {
            return bad("run_time", "must be 1 s to 1 h");
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout", "must be positive");
        }
        if let LoadProfile::Get { path } = &self.profile
            && !path.starts_with('/')
        {
            return bad("profile", "the path must start with /");
        }
        if self.profile == LoadProfile::Full && self.users < 4 {
            return bad(
                "users",
                "the full profile needs at least 4 users (3 readers to 1 author)",
            );
        }
        Ok(())
    }

    /// Runs goose and judges the thresholds.
    ///
    /// # Errors
    /// [`LoadError`] when the settings are invalid or goose cannot run; a failing service is
    /// a red verdict, not an error.
    #[tracing::instrument(name = "load_gate", skip(self), fields(base_url = %self.base_url, profile = ?self.profile))]
    pub async fn run(&self) -> Result<LoadVerdict, LoadError> {
        let base = check_target(&self.base_url, self.allow_remote)?;
        self.validate()?;
        let report = self.report_path()?;
        let config = self.goose_config(&base, report.as_deref());
        let goose_err = |e: GooseError| LoadError::Goose(Box::new(e));
        let attack = GooseAttack::initialize_with_config(config).map_err(goose_err)?;
        let attack = self.register_scenarios(attack).map_err(goose_err)?;
        let started = Instant::now();
        let metrics = attack.execute().await.map_err(goose_err)?;
        let duration = started.elapsed();
        let figures = figures(&metrics, duration);

        let outcomes = self.thresholds.judge(&figures);
        let mut findings: Vec<Finding> = outcomes
            .iter()
            .filter(|o| !o.passed)
            .map(|o| match o.observed {
                Some(v) => Finding::new(
                    format!("threshold {}", o.rule),
                    FindingKind::OverLimit,
                    format!("failed: observed {v:.3}"),
                ),
                None => Finding::new(
                    format!("threshold {}", o.rule),
                    FindingKind::NotChecked,
                    "failed: no such request was made",
                ),
            })
            .collect();
        // The slowest request kind is the evidence a reader needs first: it names the
        // endpoint to look at.
        if !findings.is_empty()
            && let Some(r) = slowest_request(&figures)
        {
            findings.push(Finding::new(
                format!("slowest endpoint {}", r.name),
                FindingKind::Note,
                format!("p50 {:.1} ms, p95 {:.1} ms", r.p50_ms, r.p95_ms),
            ));
        }
        if figures.overall.requests == 0 {
            findings.push(Finding::new(
                "load",
                FindingKind::NotChecked,
                "no request was made",
            ));
        }
        let report = report.filter(|p| p.is_file());
        let verdict = LoadVerdict {
            passed: findings.is_empty(),
            findings,
            thresholds: outcomes,
            figures,
            report,
        };
        tracing::info!(
            passed = verdict.passed,
            requests = verdict.figures.overall.requests,
            failures = verdict.figures.overall.failures,
            rps = verdict.figures.overall.rps,
            p95_ms = verdict.figures.overall.p95_ms,
            "load gate judged"
        );
        Ok(verdict)
    }

    /// Where goose's HTML report goes (a new file in the private report directory), if
    /// anywhere.
    fn report_path(&self) -> Result<Option<PathBuf>, LoadError> {
        let Some(dir) = &self.report_dir else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir).map_err(|source| LoadError::ReportDir {
            path: dir.clone(),
            source,
        })?;
        crate::keep::set_private_dir(dir).map_err(|source| LoadError::ReportDir {
            path: dir.clone(),
            source,
        })?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let profile = match self.profile {
            LoadProfile::Quick => "quick",
            LoadProfile::Full => "full",
            LoadProfile::Get { .. } => "get",
        };
        Ok(Some(dir.join(format!("goose-{profile}-{stamp}.html"))))
    }

    /// goose's settings for this gate against `base`: users, ramp, run time, timeout, the
    /// report, and no metrics or controllers the verdict does not read.
    fn goose_config(&self, base: &reqwest::Url, report: Option<&Path>) -> GooseConfiguration {
        let mut config = GooseConfiguration::default();
        config.host = Some(base.as_str().trim_end_matches('/').to_owned());
        config.users = Some(self.users);
        config.increase_rate = Some(self.hatch_rate.to_string());
        config.run_time = Some(self.run_time.as_secs().to_string());
        config.timeout = Some(format!("{:.3}", self.request_timeout.as_secs_f64()));
        config.quiet = 1;
        config.no_print_metrics = true;
        // No controller ports: telnet is on by default; the WebSocket controller is off by
        // default in goose 0.19 (its `no_websocket` only prints a deprecation warning).
        config.no_telnet = true;
        // Count every request, ramp-up and on-start ones (sign up) included, as k6 does;
        // goose otherwise resets its metrics once all users are running.
        config.no_reset_metrics = true;
        // The verdict reads request metrics only; the rest costs time on every request, which
        // a load generator sharing the machine with the services cannot spare.
        config.no_transaction_metrics = true;
        config.no_scenario_metrics = true;
        config.no_percentiles_over_time = true;
        // The services do not compress; skip the decompression layer.
        config.no_gzip = true;
        if let Some(path) = report {
            config.report_file = vec![path.to_string_lossy().into_owned()];
        }
        config
    }

    /// The profile's scenarios, each with the think time between requests.
    fn register_scenarios(&self, attack: GooseAttack) -> Result<GooseAttack, GooseError> {
        let with_wait = |s: Scenario| -> Result<Scenario, GooseError> {
            if self.think_time.is_zero() {
                Ok(s)
            } else {
                s.set_wait_time(self.think_time, self.think_time)
            }
        };
        Ok(match &self.profile {
            LoadProfile::Quick => attack.register_scenario(with_wait(scenarios::browse(1)?)?),
            LoadProfile::Full => attack
                .register_scenario(with_wait(scenarios::browse(3)?)?)
                .register_scenario(with_wait(scenarios::author(1)?)?),
            LoadProfile::Get { path } => {
                attack.register_scenario(with_wait(scenarios::get_endpoint(path)?)?)
            }
        })
    }
}

/// The request kind with the highest 95th percentile (the median breaks ties).
fn slowest_request(figures: &LoadFigures) -> Option<&RequestFigures> {
    figures
        .per_request
        .iter()
        .filter(|r| r.requests > 0)
        .max_by(|a, b| {
            a.p95_ms
                .total_cmp(&b.p95_ms)
                .then(a.p50_ms.total_cmp(&b.p50_ms))
        })
}

impl LoadVerdict {
    /// The request kind with the highest 95th percentile, if any request was made.
    pub fn slowest_request(&self) -> Option<&RequestFigures> {
        slowest_request(&self.figures)
    }

    /// What the rollback decision needs of this verdict: the thresholds that did not hold,
    /// the slowest response and the slowest request kind.
    pub fn sample(&self) -> crate::facts::LoadSample {
        crate::facts::LoadSample {
            breaches: self
                .thresholds
                .iter()
                .filter(|t| !t.passed)
                .map(|t| crate::facts::LoadBreach {
                    rule: t.rule.clone(),
                    observed: t.observed,
                })
                .collect(),
            requests: self.figures.overall.requests,
            max_response_time: Duration::from_secs_f64(
                self.figures.overall.max_ms.max(0.0) / 1000.0,
            ),
            slowest: self
                .slowest_request()
                .map(|r| crate::facts::EndpointLatency {
                    name: r.name.clone(),
                    p50_ms: r.p50_ms,
                    p95_ms: r.p95_ms,
                }),
        }
    }
}

/// Turns goose's metrics into figures; percentiles come from goose's time buckets (each at
/// most 0.78 % wide), the total's from all buckets merged.
pub(crate) fn figures(metrics: &GooseMetrics, duration: Duration) -> LoadFigures {
    let secs = duration.as_secs_f64().max(1e-9);
    let mut per_request = Vec::new();
    let mut all_buckets: BTreeMap<u64, u64> = BTreeMap::new();
    let mut all_statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let (mut requests, mut failures, mut total_us) = (0u64, 0u64, 0u64);
    let (mut min_us, mut max_us) = (u64::MAX, 0u64);
    for (name, agg) in &metrics.requests {
        let raw = &agg.raw_data;
        let buckets: Vec<(u64, u64)> = raw.times_us.iter().map(|(b, c)| (*b, *c as u64)).collect();
        for (b, c) in &buckets {
            *all_buckets.entry(*b).or_default() += c;
        }
        let statuses: BTreeMap<u16, u64> = agg
            .status_code_counts
            .iter()
            .map(|(s, n)| (*s, *n as u64))
            .collect();
        for (s, n) in &statuses {
            *all_statuses.entry(*s).or_default() += n;
        }
        let n = (agg.success_count + agg.fail_count) as u64;
        requests += n;
        failures += agg.fail_count as u64;
        total_us += raw.total_time_us;
        if raw.counter > 0 {
            min_us = min_us.min(raw.minimum_time_us);
            max_us = max_us.max(raw.maximum_time_us);
        }
        per_request.push(request_figures(
            name.clone(),
            n,
            agg.fail_count as u64,
            secs,
            raw.total_time_us,
            raw.counter as u64,
            buckets,
            statuses,
            raw.minimum_time_us,
            raw.maximum_time_us,
        ));
    }
    per_request.sort_by(|a, b| a.name.cmp(&b.name));
    let counted: u64 = all_buckets.values().sum();
    let overall = request_figures(
        "all".to_owned(),
        requests,
        failures,
        secs,
        total_us,
        counted,
        all_buckets.into_iter().collect(),
        all_statuses,
        if min_us == u64::MAX { 0 } else { min_us },
        max_us,
    );
    LoadFigures {
        duration,
        users: metrics.maximum_users,
        overall,
        per_request,
    }
}

#[expect(clippy::too_many_arguments)]
fn request_figures(
    name: String,
    requests: u64,
    failures: u64,
    secs: f64,
    total_us: u64,
    timed: u64,
    buckets: Vec<(u64, u64)>,
    statuses: BTreeMap<u16, u64>,
    min_us: u64,
    max_us: u64,
) -> RequestFigures {
    let ms = |us: u64| us as f64 / 1000.0;
    RequestFigures {
        rps: requests as f64 / secs,
        avg_ms: if timed == 0 {
            0.0
        } else {
            ms(total_us) / timed as f64
        },
        p50_ms: ms(percentile_us(&buckets, min_us, max_us, 0.50)),
        p95_ms: ms(percentile_us(&buckets, min_us, max_us, 0.95)),
        p99_ms: ms(percentile_us(&buckets, min_us, max_us, 0.99)),
        max_ms: ms(max_us),
        name,
        requests,
        failures,
        statuses,
        buckets,
        min_us,
        max_us,
    }
}

/// The nearest-rank percentile over (bucket floor, count) pairs, clamped to the measured
/// minimum and maximum.
fn percentile_us(buckets: &[(u64, u64)], min_us: u64, max_us: u64, q: f64) -> u64 {
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return 0;
    }
    let mut sorted = buckets.to_vec();
    sorted.sort_unstable();
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (value, count) in sorted {
        seen += count;
        if seen >= rank {
            return value.clamp(min_us, max_us);
        }
    }
    max_us
}

impl std::fmt::Display for LoadVerdict {
    /// A table of the figures, then the thresholds and findings, as a report prints them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fig = &self.figures;
        writeln!(
            f,
            "load gate {}: {} users, {:.1} s",
            if self.passed { "PASSED" } else { "FAILED" },
            fig.users,
            fig.duration.as_secs_f64()
        )?;
        writeln!(
            f,
            "  {:<22} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "request", "count", "failed", "rps", "p50 ms", "p95 ms", "p99 ms"
        )?;
        for r in fig.per_request.iter().chain(std::iter::once(&fig.overall)) {
            writeln!(
                f,
                "  {:<22} {:>8} {:>8} {:>9.1} {:>9.2} {:>9.2} {:>9.2}",
                r.name, r.requests, r.failures, r.rps, r.p50_ms, r.p95_ms, r.p99_ms
            )?;
        }
        for t in &self.thresholds {
            let seen = t
                .observed
                .map_or("no request".to_owned(), |v| format!("{v:.3}"));
            writeln!(
                f,
                "  {} {} (observed {seen})",
                if t.passed { "ok  " } else { "FAIL" },
                t.rule
            )?;
        }
        for finding in &self.findings {
            writeln!(f, "  finding: {finding}")?;
        }
        if let Some(report) = &self.report {
            writeln!(f, "  report: {}", report.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::percentile_us;

    #[test]
    fn nearest_rank_percentiles() {
        // 100 samples: 90 at 1 ms, 9 at 10 ms, 1 at 100 ms.
        let buckets = [(100_000, 1), (1_000, 90), (10_000, 9)];
        assert_eq!(percentile_us(&buckets, 1_000, 100_000, 0.50), 1_000);
        assert_eq!(percentile_us(&buckets, 1_000, 100_000, 0.90), 1_000);
        assert_eq!(percentile_us(&buckets, 1_000, 100_000, 0.95), 10_000);
        assert_eq!(percentile_us(&buckets, 1_000, 100_000, 0.99), 10_000);
        assert_eq!(percentile_us(&buckets, 1_000, 100_000, 1.0), 100_000);
        assert_eq!(percentile_us(&[], 0, 0, 0.95), 0);
    }
}
