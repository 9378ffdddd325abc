//! What is observed of a running cluster and its services after a restore: pods, health
//! checks, and the load gate's figures. Observers fill these in; `verify::decide` judges them.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodStatus;
use serde::{Deserialize, Serialize};

/// Whether a pod's `Ready` condition is `True`: the one test of a pod's readiness that every
/// wait and observation uses. A pod without a status is not ready.
pub fn pod_ready(status: Option<&PodStatus>) -> bool {
    status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether a pod has finished successfully (`Succeeded`, a Job's pod): it is not waited on and
/// counts as ready.
pub fn pod_succeeded(status: Option<&PodStatus>) -> bool {
    status.and_then(|s| s.phase.as_deref()) == Some("Succeeded")
}

/// Health checks made after the restore (the runbook: 10 tries of `/api/users/health`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSample {
    /// Checks made.
    pub attempts: u32,
    /// Checks that failed.
    pub failures: u32,
}

/// One pod as observed at decision time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodObservation {
    /// `namespace/name`.
    pub name: String,
    /// Restart count summed over its containers.
    pub restarts: u32,
    /// A container's waiting reason, such as `CrashLoopBackOff`.
    pub waiting_reason: Option<String>,
    /// Whether the pod is Ready.
    pub ready: bool,
}

/// What the load gate observed, as the decision needs it: the thresholds that failed with
/// what was observed, its slowest response, and its slowest request kind as evidence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadSample {
    /// Each threshold that did not hold: the rule as written and the value observed (`None`
    /// when no request of its scope was made).
    pub breaches: Vec<LoadBreach>,
    /// Requests made; a load gate that made none has not measured anything.
    pub requests: u64,
    /// The slowest response the load gate measured.
    #[serde(with = "crate::facts::secs")]
    pub max_response_time: Duration,
    /// The request kind with the highest 95th percentile, if any request was made.
    pub slowest: Option<EndpointLatency>,
}

/// One k6-style threshold that did not hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadBreach {
    /// The rule as written (`http_req_duration: p(95)<500`).
    pub rule: String,
    /// The value observed, if any request of the rule's scope was made.
    pub observed: Option<f64>,
}

/// Latency figures of one request kind of the load gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointLatency {
    /// goose's name: `GET list posts`.
    pub name: String,
    /// Median response time in milliseconds.
    pub p50_ms: f64,
    /// 95th percentile in milliseconds.
    pub p95_ms: f64,
}

impl std::fmt::Display for EndpointLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (p50 {:.1} ms, p95 {:.1} ms)",
            self.name, self.p50_ms, self.p95_ms
        )
    }
}
