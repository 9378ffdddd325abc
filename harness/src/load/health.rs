//! The runbook's health check (rollback criteria, "서비스 가용성 문제"): N probes per health
//! endpoint, failing above a failure rate or a latency.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{LoadError, check_target};
use crate::verify::{Finding, FindingKind};

/// The health endpoints the runbook curls through the ingress (section 6.1).
pub const RUNBOOK_HEALTH_PATHS: [&str; 3] =
    ["/api/users/health", "/blog/health", "/api/auth/health"];

/// Settings of the health gate; [`HealthGate::new`] gives the runbook's.
#[derive(Debug, Clone)]
pub struct HealthGate {
    /// The gateway or ingress, such as `http://127.0.0.1:8000`.
    pub base_url: String,
    /// Paths probed, default [`RUNBOOK_HEALTH_PATHS`].
    pub paths: Vec<String>,
    /// Probes per path (runbook: 10).
    pub probes: u32,
    /// Pause between probes of one path (runbook: `sleep 2`).
    pub interval: Duration,
    /// Highest failure share that passes (runbook: 5 %, "실패율 > 5%").
    pub max_failure_rate: f64,
    /// A probe slower than this is slow, and any slow probe fails the gate (runbook: 5 s).
    pub slow_after: Duration,
    /// A probe that takes this long is abandoned and counted as failed and slow.
    pub timeout: Duration,
    /// Allow a target that is not on loopback.
    pub allow_remote: bool,
}

/// What the probes of one path saw.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointHealth {
    /// The path.
    pub path: String,
    /// Probes sent.
    pub probes: u32,
    /// Probes without a 2xx answer in time.
    pub failures: u32,
    /// Probes slower than `slow_after`.
    pub slow: u32,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u32>,
    /// Median latency.
    pub median: Duration,
    /// Slowest probe.
    pub slowest: Duration,
    /// The last transport error, if any (no secrets: URLs here carry none).
    pub last_error: Option<String>,
}

impl EndpointHealth {
    /// Failed probes as a share of all probes.
    pub fn failure_rate(&self) -> f64 {
        f64::from(self.failures) / f64::from(self.probes.max(1))
    }
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthVerdict {
    /// True when every path passed.
    pub passed: bool,
    /// One line per breach, naming the path and the figure.
    pub findings: Vec<Finding>,
    /// The figures per path.
    pub endpoints: Vec<EndpointHealth>,
}

impl HealthGate {
    /// The runbook's check against `base_url`: 10 probes 2 s apart per health endpoint,
    /// failing above 5 % failures or on a probe slower than 5 s.
    pub fn new(base_url: impl Into<String>) -> HealthGate {
        HealthGate {
            base_url: base_url.into(),
            paths: RUNBOOK_HEALTH_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
            probes: 10,
            interval: Duration::from_secs(2),
            max_failure_rate: 0.05,
            slow_after: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            allow_remote: false,
        }
    }

    /// Probes every path (paths in parallel, probes of a path one after the other).
    ///
    /// # Errors
    /// [`LoadError`] when the settings are invalid or the HTTP client cannot be built;
    /// unreachable or failing services are findings in the verdict, not errors.
    #[tracing::instrument(name = "health_gate", skip(self), fields(base_url = %self.base_url))]
    pub async fn run(&self) -> Result<HealthVerdict, LoadError> {
        let base = check_target(&self.base_url, self.allow_remote)?;
        if self.probes == 0 || self.probes > 10_000 {
            return Err(LoadError::InvalidSetting {
                setting: "probes",
                reason: "must be 1 to 10000".into(),
            });
        }
        if !(0.0..=1.0).contains(&self.max_failure_rate) {
            return Err(LoadError::InvalidSetting {
                setting: "max_failure_rate",
                reason: "must be 0 to 1".into(),
            });
        }
        if self.paths.is_empty() {
            return Err(LoadError::InvalidSetting {
                setting: "paths",
                reason: "no path to probe".into(),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(LoadError::Client)?;
        let base = base.as_str().trim_end_matches('/').to_owned();
        let probes = self
            .paths
            .iter()
            .map(|path| self.probe_path(&client, &base, path));
        let endpoints = futures::future::join_all(probes).await;
        let mut findings = Vec::new();
        for e in &endpoints {
            if e.failure_rate() > self.max_failure_rate {
                let statuses: Vec<String> =
                    e.statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
                findings.push(
                    Finding::new(
                        e.path.clone(),
                        FindingKind::OverLimit,
                        format!(
                            "{} of {} probes failed ({:.0} % > {:.0} %); answers {}{}",
                            e.failures,
                            e.probes,
                            e.failure_rate() * 100.0,
                            self.max_failure_rate * 100.0,
                            if statuses.is_empty() {
                                "none".to_owned()
                            } else {
                                statuses.join(", ")
                            },
                            e.last_error
                                .as_ref()
                                .map(|m| format!("; last error: {m}"))
                                .unwrap_or_default(),
                        ),
                    )
                    .values(
                        format!("at most {:.0} % failed", self.max_failure_rate * 100.0),
                        format!("{:.0} % failed", e.failure_rate() * 100.0),
                    ),
                );
            }
            if e.slow > 0 {
                findings.push(
                    Finding::new(
                        e.path.clone(),
                        FindingKind::OverLimit,
                        format!(
                            "{} of {} probes slower than {:?} (slowest {:?})",
                            e.slow, e.probes, self.slow_after, e.slowest
                        ),
                    )
                    .values(
                        format!("under {:?}", self.slow_after),
                        format!("{:?}", e.slowest),
                    ),
                );
            }
        }
        let verdict = HealthVerdict {
            passed: findings.is_empty(),
            findings,
            endpoints,
        };
        tracing::info!(
            passed = verdict.passed,
            findings = verdict.findings.len(),
            "health gate judged"
        );
        Ok(verdict)
    }

    async fn probe_path(&self, client: &reqwest::Client, base: &str, path: &str) -> EndpointHealth {
        let url = format!("{base}{path}");
        let mut latencies = Vec::with_capacity(self.probes as usize);
        let mut health = EndpointHealth {
            path: path.to_owned(),
            probes: self.probes,
            failures: 0,
            slow: 0,
            statuses: BTreeMap::new(),
            median: Duration::ZERO,
            slowest: Duration::ZERO,
            last_error: None,
        };
        for i in 0..self.probes {
            if i > 0 {
                tokio::time::sleep(self.interval).await;
            }
            let started = Instant::now();
            let ok = match client.get(&url).send().await {
                Ok(response) => {
                    *health
                        .statuses
                        .entry(response.status().as_u16())
                        .or_default() += 1;
                    // Read the body too: a health answer is complete only when it has arrived.
                    let status_ok = response.status().is_success();
                    match response.bytes().await {
                        Ok(_) => status_ok,
                        Err(e) => {
                            health.last_error = Some(e.to_string());
                            false
                        }
                    }
                }
                Err(e) => {
                    health.last_error = Some(if e.is_timeout() {
                        format!("timed out after {:?}", self.timeout)
                    } else {
                        e.to_string()
                    });
                    false
                }
            };
            let elapsed = started.elapsed();
            if !ok {
                health.failures += 1;
            }
            if elapsed > self.slow_after {
                health.slow += 1;
            }
            latencies.push(elapsed);
        }
        latencies.sort();
        health.median = latencies[latencies.len() / 2];
        health.slowest = *latencies.last().unwrap_or(&Duration::ZERO);
        health
    }
}

impl std::fmt::Display for HealthVerdict {
    /// One line per endpoint, then the findings.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "health gate {}",
            if self.passed { "PASSED" } else { "FAILED" }
        )?;
        for e in &self.endpoints {
            writeln!(
                f,
                "  {:<22} {}/{} failed, {} slow, median {:?}, slowest {:?}",
                e.path, e.failures, e.probes, e.slow, e.median, e.slowest
            )?;
        }
        for finding in &self.findings {
            writeln!(f, "  finding: {finding}")?;
        }
        Ok(())
    }
}
