//! The post-restore gates: health probes and a goose load test with k6-style thresholds.
//!
//! The runbook checks a rebuilt cluster in two steps (section 6): `curl` the health endpoints
//! through the ingress, then run k6's `quick-test.js` and `load-test.js`; its rollback
//! criteria give the limits (health failures above 5 %, responses slower than 5 s). Here:
//!
//! - [`HealthGate`] sends N probes to each health endpoint and judges failure rate and
//!   latency.
//! - [`LoadGate`] runs goose in-process ([`goose::GooseAttack::initialize_with_config`], never
//!   parsing process arguments), bounded in users and time, against loopback only unless
//!   asked otherwise, and judges [`Thresholds`] written like k6's (`http_req_duration:
//!   p(95)<500`, `http_req_failed: rate<0.01`, `http_reqs: rate>=20`).
//!
//! A gate returns a verdict (`passed` plus findings and the figures); `Err` means the gate
//! could not run at all. Both verdicts print as a table (`Display`).
//!
//! Throughput is measured, not asserted: `cargo run --release -p harness --example load_bench`
//! runs `wrk` and the goose gate on the same gateway endpoint for the same time and prints both.

mod gate;
mod health;
mod scenarios;
mod thresholds;

pub use gate::{LoadFigures, LoadGate, LoadProfile, LoadVerdict, RequestFigures};
pub use health::{EndpointHealth, HealthGate, HealthVerdict, RUNBOOK_HEALTH_PATHS};
pub use thresholds::{
    Comparison, Metric, Stat, Threshold, ThresholdError, ThresholdOutcome, Thresholds,
};

/// Why a gate could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The target URL does not parse or is not http(s).
    #[error("invalid target url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The target is not on loopback and the gate was not allowed to leave it.
    #[error("target {host} is not a loopback address; set allow_remote to load-test it")]
    NotLoopback {
        /// The host of the URL.
        host: String,
    },
    /// A setting is out of its bounds.
    #[error("invalid gate setting {setting}: {reason}")]
    InvalidSetting {
        /// The field.
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// A threshold does not parse.
    #[error(transparent)]
    Threshold(#[from] ThresholdError),
    /// The HTTP client could not be built.
    #[error("cannot build the http client")]
    Client(#[source] reqwest::Error),
    /// goose refused the configuration or failed while running.
    #[error("goose load test failed to run")]
    Goose(#[source] Box<goose::GooseError>),
    /// The report directory could not be created.
    #[error("cannot create report directory {path}")]
    ReportDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `url` is http(s) and, unless `allow_remote`, on loopback.
pub(crate) fn check_target(url: &str, allow_remote: bool) -> Result<reqwest::Url, LoadError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| LoadError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(LoadError::InvalidUrl {
            url: url.to_owned(),
            reason: "scheme must be http or https".into(),
        });
    }
    let Some(host) = parsed.host_str() else {
        return Err(LoadError::InvalidUrl {
            url: url.to_owned(),
            reason: "no host".into(),
        });
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    };
    if !loopback && !allow_remote {
        return Err(LoadError::NotLoopback {
            host: host.to_owned(),
        });
    }
    Ok(parsed)
}
