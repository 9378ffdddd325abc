//! The checks themselves. Each one turns its own failure into a `Fail` check with the reason,
//! so one unreachable piece does not hide the others.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ListParams, PostParams};

use super::{Check, CheckStatus, Estimate, Permission, PreflightOptions, PreflightReport};
use crate::backup::{BackupError, PodRef};

fn check(name: impl Into<String>, status: CheckStatus, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
    }
}

/// Runs every check against the cluster behind `client`. Read-only.
pub async fn run(client: kube::Client, options: &PreflightOptions) -> PreflightReport {
    let mut checks = Vec::new();
    for permission in &options.permissions {
        checks.push(permission_check(&client, permission).await);
    }
    // Before anything slow: a destination that is missing or a file is NO-GO by itself.
    checks.push(backup_dir(&options.backup_dir));
    let local_pg_major = tools(&mut checks);
    checks.push(pvcs(&client, &options.namespace).await);
    let database = database(&client, options, local_pg_major, &mut checks).await;
    let estimate = database.map(|bytes| estimate(bytes, options.assumed_throughput));
    if let Some(e) = &estimate {
        checks.push(disk(&options.backup_dir, e.database_bytes));
    }
    if let Some(dir) = &options.terraform_dir {
        checks.push(terraform(dir));
    }
    PreflightReport {
        namespace: options.namespace.clone(),
        checks,
        estimate,
    }
}

async fn permission_check(client: &kube::Client, permission: &Permission) -> Check {
    let name = format!("permission: {permission}");
    let (resource, subresource) = match permission.resource.split_once('/') {
        Some((r, s)) => (r.to_owned(), Some(s.to_owned())),
        None => (permission.resource.clone(), None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(permission.verb.clone()),
                resource: Some(resource),
                subresource,
                group: Some(permission.group.clone()),
                namespace: permission.namespace.clone(),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    match api.create(&PostParams::default(), &review).await {
        Ok(answer) => match answer.status {
            Some(status) if status.allowed => check(name, CheckStatus::Pass, "allowed"),
            Some(status) => check(
                name,
                CheckStatus::Fail,
                format!(
                    "denied{}",
                    status.reason.map(|r| format!(": {r}")).unwrap_or_default()
                ),
            ),
            None => check(name, CheckStatus::Fail, "the API server returned no status"),
        },
        Err(err) => check(
            name,
            CheckStatus::Fail,
            format!("could not ask the API server: {err}"),
        ),
    }
}

/// Checks kubectl, terraform and the local pg_dump; returns pg_dump's major version.
fn tools(checks: &mut Vec<Check>) -> Option<u32> {
    let kubectl = duct::cmd!("kubectl", "version", "--client", "-o", "json")
        .stdout_capture()
        .stderr_null()
        .unchecked()
        .run();
    checks.push(match kubectl {
        Ok(out) if out.status.success() => {
            let version = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v["clientVersion"]["gitVersion"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown version".into());
            check("tool: kubectl", CheckStatus::Pass, version)
        }
        _ => check(
            "tool: kubectl",
            CheckStatus::Fail,
            "kubectl not found; install kubectl",
        ),
    });
    let terraform = duct::cmd!("terraform", "version", "-json")
        .stdout_capture()
        .stderr_null()
        .unchecked()
        .run();
    checks.push(match terraform {
        Ok(out) if out.status.success() => {
            let version = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v["terraform_version"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown version".into());
            check("tool: terraform", CheckStatus::Pass, version)
        }
        _ => check(
            "tool: terraform",
            CheckStatus::Warn,
            "terraform not found; needed only when infrastructure is managed with terraform",
        ),
    });
    match crate::pg::PgTools::discover().and_then(|tools| tools.tool("pg_dump").map(|p| (tools, p)))
    {
        Ok((tools, path)) => match tools.major_version() {
            Ok(major) => {
                checks.push(check(
                    "tool: pg_dump",
                    CheckStatus::Pass,
                    format!("{} (major {major})", path.display()),
                ));
                Some(major)
            }
            Err(err) => {
                checks.push(check("tool: pg_dump", CheckStatus::Fail, err.to_string()));
                None
            }
        },
        Err(err) => {
            checks.push(check("tool: pg_dump", CheckStatus::Fail, err.to_string()));
            None
        }
    }
}

async fn pvcs(client: &kube::Client, namespace: &str) -> Check {
    let name = format!("pvcs bound in {namespace}");
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    match api.list(&ListParams::default()).await {
        Ok(list) if list.items.is_empty() => {
            check(name, CheckStatus::Warn, "no PersistentVolumeClaims found")
        }
        Ok(list) => {
            let unbound: Vec<String> = list
                .items
                .iter()
                .filter(|pvc| pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound"))
                .map(|pvc| {
                    let phase = pvc
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.clone())
                        .unwrap_or_else(|| "no phase".into());
                    format!(
                        "{} ({phase})",
                        pvc.metadata.name.clone().unwrap_or_default()
                    )
                })
                .collect();
            if unbound.is_empty() {
                check(
                    name,
                    CheckStatus::Pass,
                    format!("{} bound", list.items.len()),
                )
            } else {
                check(
                    name,
                    CheckStatus::Fail,
                    format!("not bound: {}", unbound.join(", ")),
                )
            }
        }
        Err(err) => check(
            name,
            CheckStatus::Fail,
            format!("could not list PVCs: {err}"),
        ),
    }
}

/// Reaches the database through `kubectl exec`'s API (psql inside the pod, as the runbook
/// does), records its version and table counts, and returns its size in bytes.
async fn database(
    client: &kube::Client,
    options: &PreflightOptions,
    local_pg_major: Option<u32>,
    checks: &mut Vec<Check>,
) -> Option<u64> {
    let psql = Psql {
        pod: PodRef {
            client: client.clone(),
            namespace: options.namespace.clone(),
            pod: options.pg_pod.clone(),
            container: options.pg_container.clone(),
        },
        options,
    };
    let name = format!("postgres in pod {}/{}", options.namespace, options.pg_pod);
    let facts = match psql
        .run(
            "SELECT current_setting('server_version_num'), pg_database_size(current_database()), current_setting('server_version')",
            "read the server version",
        )
        .await
    {
        Ok(out) => out,
        Err(err) => {
            checks.push(check(name, CheckStatus::Fail, err.to_string()));
            return None;
        }
    };
    let fields: Vec<&str> = facts.trim().split('\t').collect();
    let (Some(num), Some(size), Some(version)) = (
        fields.first().and_then(|v| v.parse::<u32>().ok()),
        fields.get(1).and_then(|v| v.parse::<u64>().ok()),
        fields.get(2),
    ) else {
        checks.push(check(
            name,
            CheckStatus::Fail,
            format!("unexpected answer from psql: {facts:?}"),
        ));
        return None;
    };
    checks.push(check(
        name,
        CheckStatus::Pass,
        format!(
            "PostgreSQL {version}, database {} is {size} bytes",
            options.pg_database
        ),
    ));
    checks.push(tools_match(local_pg_major, num / 10_000));
    checks.push(table_counts(&psql).await);
    Some(size)
}

/// psql in the database's pod, as the preflight's user on its database, tab-separated and
/// unaligned.
struct Psql<'a> {
    pod: PodRef,
    options: &'a PreflightOptions,
}

impl Psql<'_> {
    /// Runs `sql` and returns what psql printed; `what` names it in an error.
    async fn run(&self, sql: &str, what: &str) -> Result<String, BackupError> {
        let command = vec![
            "psql".to_owned(),
            "-X".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "-U".into(),
            self.options.pg_user.clone(),
            "-d".into(),
            self.options.pg_database.clone(),
            "-At".into(),
            "-F".into(),
            "\t".into(),
            "-c".into(),
            sql.to_owned(),
        ];
        self.pod.exec_output(command, what).await
    }
}

/// Whether the local pg_dump (major `local`) can dump the server (major `server_major`).
fn tools_match(local_pg_major: Option<u32>, server_major: u32) -> Check {
    match local_pg_major {
        Some(local) if local == server_major => check(
            "pg_dump matches server",
            CheckStatus::Pass,
            format!("both major {local}"),
        ),
        Some(local) if local > server_major => check(
            "pg_dump matches server",
            CheckStatus::Warn,
            format!(
                "local tools are major {local}, the server {server_major}: dumps restore, but test with the server's version"
            ),
        ),
        Some(local) => check(
            "pg_dump matches server",
            CheckStatus::Fail,
            format!(
                "local pg_dump is major {local}, older than the server's {server_major}: it cannot dump it"
            ),
        ),
        None => check(
            "pg_dump matches server",
            CheckStatus::Fail,
            "no local pg_dump",
        ),
    }
}

/// Exact row counts of every table in schema `public`.
async fn table_counts(psql: &Psql<'_>) -> Check {
    let list = match psql
        .run(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            "list tables",
        )
        .await
    {
        Ok(list) => list,
        Err(err) => return check("table counts", CheckStatus::Fail, err.to_string()),
    };
    let names: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    if names.is_empty() {
        return check(
            "table counts",
            CheckStatus::Fail,
            "the database has no tables in schema public",
        );
    }
    let sql = names
        .iter()
        .map(|t| {
            format!(
                "SELECT '{t}', count(*) FROM public.{}",
                crate::pg::quote_ident(t)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    match psql.run(&sql, "count rows").await {
        Ok(counts) => {
            let detail = counts
                .lines()
                .map(|l| l.replace('\t', "="))
                .collect::<Vec<_>>()
                .join(", ");
            check("table counts", CheckStatus::Pass, detail)
        }
        Err(err) => check("table counts", CheckStatus::Fail, err.to_string()),
    }
}

fn estimate(database_bytes: u64, throughput: u64) -> Estimate {
    // Custom format compresses text-heavy tables to about a third; plain SQL, per-table and
    // data-only files are about the database's size each once, so the directory holds roughly
    // 2.4x before the archive is compressed.
    let backup_bytes = database_bytes.saturating_mul(12) / 5;
    Estimate {
        database_bytes,
        backup_bytes,
        seconds: backup_bytes as f64 / throughput.max(1) as f64,
        assumption: format!(
            "backup ~2.4x the database size, written at {:.0} MB/s",
            throughput as f64 / 1e6
        ),
    }
}

/// The backup destination must be an existing, writable directory: a typo in the path would
/// otherwise only show on the maintenance night, after the application was stopped.
fn backup_dir(path: &Path) -> Check {
    let name = format!("backup directory {}", path.display());
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => check(
            name,
            CheckStatus::Fail,
            "it exists and is not a directory; give a directory with --backup-dir",
        ),
        Ok(_) => match nix::unistd::access(path, nix::unistd::AccessFlags::W_OK) {
            Ok(()) => check(name, CheckStatus::Pass, "exists and is writable"),
            Err(err) => check(
                name,
                CheckStatus::Fail,
                format!("exists but is not writable: {err}"),
            ),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => check(
            name,
            CheckStatus::Fail,
            "does not exist; create it (mode 0700) or give another --backup-dir",
        ),
        Err(err) => check(name, CheckStatus::Fail, format!("cannot inspect it: {err}")),
    }
}

/// The nearest existing directory at or above `path`.
fn existing_ancestor(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    while !current.exists() {
        if !current.pop() {
            return PathBuf::from("/");
        }
    }
    current
}

fn disk(backup_dir: &Path, database_bytes: u64) -> Check {
    let dir = existing_ancestor(backup_dir);
    let name = format!("free disk at {}", dir.display());
    match nix::sys::statvfs::statvfs(&dir) {
        Ok(stat) => {
            let free = stat.blocks_available() * stat.fragment_size();
            let needed = database_bytes.saturating_mul(2);
            let detail = format!(
                "{:.1} GB free, need at least {:.1} GB (twice the database)",
                free as f64 / 1e9,
                needed as f64 / 1e9
            );
            check(
                name,
                if free >= needed {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Fail
                },
                detail,
            )
        }
        Err(err) => check(name, CheckStatus::Fail, format!("statvfs failed: {err}")),
    }
}

fn terraform(dir: &Path) -> Check {
    let name = format!("terraform state in {}", dir.display());
    let out = duct::cmd!(
        "terraform",
        format!("-chdir={}", dir.display()),
        "state",
        "list"
    )
    .stdout_capture()
    .stderr_capture()
    .unchecked()
    .run();
    match out {
        Ok(out) if out.status.success() => {
            let count = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count();
            check(
                name,
                CheckStatus::Pass,
                format!("readable, {count} resources"),
            )
        }
        Ok(out) => check(
            name,
            CheckStatus::Fail,
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ),
        Err(err) => check(
            name,
            CheckStatus::Fail,
            format!("could not run terraform: {err}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_scales_with_the_database() {
        let e = estimate(1_000_000_000, 50_000_000);
        assert_eq!(e.backup_bytes, 2_400_000_000);
        assert!((e.seconds - 48.0).abs() < 1e-9);
    }

    #[test]
    fn disk_check_uses_the_nearest_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/c");
        assert_eq!(existing_ancestor(&missing), dir.path());
        assert_eq!(disk(&missing, 1).status, CheckStatus::Pass);
        assert_eq!(disk(&missing, u64::MAX / 4).status, CheckStatus::Fail);
    }

    #[test]
    fn a_missing_backup_dir_or_a_file_is_no_go_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(backup_dir(dir.path()).status, CheckStatus::Pass);
        let missing = backup_dir(&dir.path().join("missing"));
        assert_eq!(missing.status, CheckStatus::Fail);
        assert!(
            missing.detail.contains("does not exist"),
            "{}",
            missing.detail
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let file = backup_dir(&file);
        assert_eq!(file.status, CheckStatus::Fail);
        assert!(file.detail.contains("not a directory"), "{}", file.detail);
    }

    /// The check runs even when nothing else can (no database, no API server): before, the
    /// destination was only looked at once the database size was known.
    #[tokio::test]
    async fn run_reports_a_missing_backup_dir_without_a_reachable_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let mut options = PreflightOptions::runbook("titanium-prod", dir.path().join("missing"));
        options.permissions.clear();
        let report = run(client, &options).await;
        let check = report
            .checks
            .iter()
            .find(|c| c.name.starts_with("backup directory"))
            .unwrap_or_else(|| panic!("no backup directory check:\n{report}"));
        assert_eq!(check.status, CheckStatus::Fail, "{report}");
        assert!(!report.go());
    }

    #[test]
    fn runbook_permissions_include_the_four_it_lists() {
        let names: Vec<String> = Permission::runbook("titanium-prod")
            .iter()
            .map(ToString::to_string)
            .collect();
        for wanted in [
            "create statefulsets.apps -n titanium-prod",
            "create persistentvolumeclaims -n titanium-prod",
            "get secrets -n titanium-prod",
            "create namespaces",
        ] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing from {names:?}"
            );
        }
    }
}
