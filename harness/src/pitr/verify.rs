//! `verify_archive`: `rehearsal verify` of a PITR archive. The archive is checked, then
//! replayed into a scratch server twice, to the base backup's end and to the archive's end;
//! at each point every database is counted table by table and checked with `pg_amcheck`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Lsn, MANIFEST, PitrError, PitrManifest, Target, read_json};
use crate::pg::{PgTools, PostgresProvider as _};

/// What `verify_archive` found.
#[derive(Clone, Debug)]
pub struct ArchiveVerification {
    /// The archive.
    pub archive: PathBuf,
    /// Each point replayed to.
    pub points: Vec<VerifiedPoint>,
    /// Every defect, and every check that could not run.
    pub findings: Vec<String>,
}

impl ArchiveVerification {
    /// Every check ran and found nothing.
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }
}

/// One recovery of the archive.
#[derive(Clone, Debug)]
pub struct VerifiedPoint {
    /// The target.
    pub target: String,
    /// Per database, its tables (`schema.table`) with their rows.
    pub databases: Vec<(String, Vec<(String, u64)>)>,
    /// Seconds from start to promotion.
    pub recovery_seconds: f64,
}

/// Checks the archive, then replays it into scratch servers to the base backup's end and to
/// the archive's end, counting every table and running `pg_amcheck` at both.
///
/// # Errors
/// When it cannot start: the manifest unreadable. Defects and checks that could not run are
/// findings.
pub async fn verify_archive(
    tools: &PgTools,
    archive: &Path,
) -> Result<ArchiveVerification, PitrError> {
    let manifest: PitrManifest = read_json(&archive.join(MANIFEST))?;
    let stop: Lsn = manifest
        .base
        .stop_lsn
        .parse()
        .map_err(|message| PitrError::Manifest {
            path: archive.join(MANIFEST),
            message,
        })?;
    let mut report = ArchiveVerification {
        archive: archive.to_path_buf(),
        points: Vec::new(),
        findings: Vec::new(),
    };
    for target in [Target::Lsn(stop), Target::Latest] {
        match verify_point(tools, archive, &target, &mut report.findings).await {
            Ok(point) => report.points.push(point),
            Err(err) => {
                report
                    .findings
                    .push(format!("{target}: {}", crate::error_chain(&err)));
                // A defective archive is not replayed a second time.
                break;
            }
        }
    }
    Ok(report)
}

async fn verify_point(
    tools: &PgTools,
    archive: &Path,
    target: &Target,
    findings: &mut Vec<String>,
) -> Result<VerifiedPoint, PitrError> {
    let plan = super::plan(tools, archive, target).await?;
    let recovered = super::recover(&plan, Duration::from_secs(600)).await?;
    let socket = recovered.server.socket_params();
    let client = socket.connect().await?;
    let names: Vec<String> = client
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(|source| PitrError::Query {
            what: "list the databases".into(),
            source,
        })?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut databases = Vec::new();
    for name in names {
        let params = socket.with_dbname(&name);
        let db = params.connect().await?;
        let tables = match crate::facts::table_facts(&db).await {
            Ok(tables) => tables
                .iter()
                .map(|t| (format!("{}.{}", t.schema, t.name), t.rows))
                .collect(),
            Err(err) => {
                findings.push(format!(
                    "{target}: database {name} could not be read: {}",
                    crate::error_chain(&err)
                ));
                Vec::new()
            }
        };
        match crate::facts::run_amcheck(tools, &params).await {
            Ok(amcheck) if amcheck.exit_code == 0 => {}
            Ok(amcheck) => findings.push(format!(
                "{target}: pg_amcheck found corruption in database {name} (exit {}): {}",
                amcheck.exit_code,
                super::tail(&amcheck.output, 5)
            )),
            Err(err) => findings.push(format!(
                "{target}: pg_amcheck could not run on database {name}: {}",
                crate::error_chain(&err)
            )),
        }
        databases.push((name, tables));
    }
    drop(client);
    let recovery_seconds = recovered.duration.as_secs_f64();
    recovered.server.stop().await?;
    Ok(VerifiedPoint {
        target: target.to_string(),
        databases,
        recovery_seconds,
    })
}
