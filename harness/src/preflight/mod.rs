//! The read-only preflight (the runbook's section 0, "필수 권한 및 요구사항 확인"): checks with a
//! go/no-go verdict, run against the real cluster before the maintenance window.
//!
//! It changes nothing: it only reads (`get`, `list`), asks the API server about permissions
//! (SelfSubjectAccessReview, which stores nothing), and runs read-only queries in the
//! PostgreSQL pod. Every check records its own outcome; the preflight itself never fails.

mod checks;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use checks::run;

/// Why the preflight could not run at all (as opposed to a failed check).
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The API server did not answer `/version`: no check could say anything.
    #[error("cannot reach the API server {server}: {detail}")]
    Unreachable {
        /// The server's URL, from the kubeconfig.
        server: String,
        /// Why, in one line (the client error and its causes, or the time limit).
        detail: String,
    },
    /// The API server answered `/version` with an error (credentials refused, ...).
    #[error("the API server {server} refused the preflight's first request: {detail}")]
    Refused {
        /// The server's URL, from the kubeconfig.
        server: String,
        /// Its answer.
        detail: String,
    },
}

/// Asks the API server at `server` (the URL `client` talks to, for the message) for its
/// version, within `timeout`. Run it before [`run`]: an unreachable server is "could not
/// run", not a list of failed checks.
///
/// # Errors
/// [`PreflightError::Unreachable`] naming the server and the cause.
pub async fn reach(
    client: &kube::Client,
    server: &str,
    timeout: std::time::Duration,
) -> Result<(), PreflightError> {
    let unreachable = |detail: String| PreflightError::Unreachable {
        server: server.to_owned(),
        detail,
    };
    match tokio::time::timeout(timeout, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(status))) => Err(PreflightError::Refused {
            server: server.to_owned(),
            detail: format!("{} ({})", status.message, status.code),
        }),
        Ok(Err(err)) => Err(unreachable(crate::error_chain(&err))),
        Err(_) => Err(unreachable(format!(
            "no answer to /version within {} s",
            timeout.as_secs()
        ))),
    }
}

/// A permission the runbook needs (`kubectl auth can-i VERB RESOURCE [-n NS]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// Verb (`create`, `get`, `delete`, ...).
    pub verb: String,
    /// Resource (plural), with a subresource as `pods/exec`.
    pub resource: String,
    /// API group (`""` for core, `apps`, ...).
    pub group: String,
    /// Namespace, or None for cluster-scoped resources.
    pub namespace: Option<String>,
}

impl Permission {
    fn new(verb: &str, resource: &str, group: &str, namespace: Option<&str>) -> Self {
        Self {
            verb: verb.into(),
            resource: resource.into(),
            group: group.into(),
            namespace: namespace.map(str::to_owned),
        }
    }

    /// The permissions the runbook lists, plus what the automated backup needs (exec and
    /// port-forward into the database pod).
    pub fn runbook(namespace: &str) -> Vec<Self> {
        let ns = Some(namespace);
        vec![
            Self::new("create", "statefulsets", "apps", ns),
            Self::new("delete", "statefulsets", "apps", ns),
            Self::new("create", "persistentvolumeclaims", "", ns),
            Self::new("delete", "persistentvolumeclaims", "", ns),
            Self::new("get", "secrets", "", ns),
            Self::new("create", "secrets", "", ns),
            Self::new("get", "configmaps", "", ns),
            Self::new("create", "configmaps", "", ns),
            Self::new("create", "namespaces", "", None),
            Self::new("delete", "namespaces", "", None),
            Self::new("create", "pods/exec", "", ns),
            Self::new("create", "pods/portforward", "", ns),
            Self::new("patch", "deployments", "apps", ns),
        ]
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        match &self.namespace {
            Some(ns) => write!(f, "{} {} -n {ns}", self.verb, resource),
            None => write!(f, "{} {}", self.verb, resource),
        }
    }
}

/// What to check.
#[derive(Clone, Debug)]
pub struct PreflightOptions {
    /// The application namespace (`titanium-prod`).
    pub namespace: String,
    /// The PostgreSQL pod (`postgresql-0`).
    pub pg_pod: String,
    /// Its container, when it has several.
    pub pg_container: Option<String>,
    /// Database user for the in-pod psql.
    pub pg_user: String,
    /// Database name.
    pub pg_database: String,
    /// Where the backup would be written (free space is checked there).
    pub backup_dir: PathBuf,
    /// The terraform working directory, when infrastructure is managed with terraform.
    pub terraform_dir: Option<PathBuf>,
    /// Permissions to ask about.
    pub permissions: Vec<Permission>,
    /// Assumed dump throughput, for the duration estimate (bytes per second).
    pub assumed_throughput: u64,
}

impl PreflightOptions {
    /// The runbook's defaults for `namespace`.
    pub fn runbook(namespace: &str, backup_dir: PathBuf) -> Self {
        Self {
            namespace: namespace.to_owned(),
            pg_pod: "postgresql-0".to_owned(),
            pg_container: None,
            pg_user: "postgres".to_owned(),
            pg_database: "titanium".to_owned(),
            backup_dir,
            terraform_dir: None,
            permissions: Permission::runbook(namespace),
            assumed_throughput: 50 * 1024 * 1024,
        }
    }
}

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Fine.
    Pass,
    /// Worth a look, not blocking.
    Warn,
    /// Blocks the maintenance.
    Fail,
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The check's name (`permission: create statefulsets.apps -n titanium-prod`).
    pub name: String,
    /// How it ended.
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
}

/// The backup estimate from the database size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// `pg_database_size`.
    pub database_bytes: u64,
    /// Expected size of the backup directory (custom dump + plain SQL + per-table files).
    pub backup_bytes: u64,
    /// Expected duration at the assumed throughput.
    pub seconds: f64,
    /// The assumption behind it.
    pub assumption: String,
}

/// The preflight's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreflightReport {
    /// The namespace checked.
    pub namespace: String,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// The estimate, when the database could be reached.
    pub estimate: Option<Estimate>,
}

impl PreflightReport {
    /// Go when no check failed.
    pub fn go(&self) -> bool {
        self.checks.iter().all(|c| c.status != CheckStatus::Fail)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == CheckStatus::Fail)
    }
}

impl std::fmt::Display for PreflightReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for check in &self.checks {
            let mark = match check.status {
                CheckStatus::Pass => "ok  ",
                CheckStatus::Warn => "warn",
                CheckStatus::Fail => "FAIL",
            };
            writeln!(f, "[{mark}] {}: {}", check.name, check.detail)?;
        }
        if let Some(e) = &self.estimate {
            writeln!(
                f,
                "estimate: database {:.1} MB -> backup about {:.1} MB in about {:.0} s ({})",
                e.database_bytes as f64 / 1e6,
                e.backup_bytes as f64 / 1e6,
                e.seconds,
                e.assumption
            )?;
        }
        write!(f, "verdict: {}", if self.go() { "GO" } else { "NO-GO" })
    }
}
