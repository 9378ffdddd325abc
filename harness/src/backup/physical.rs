//! The physical backup, runbook 1.2B done correctly. The runbook tars the live data directory,
//! which is inconsistent by nature (tar says "file changed as we read it": pages and WAL
//! written while it reads). Here `pg_basebackup` takes it: a checkpoint, the data files copied
//! between `pg_backup_start` and `pg_backup_stop` by the server's own protocol, and the WAL of
//! that interval included (`-X fetch`), so the copy starts as a consistent server. Through
//! Kubernetes it runs inside the pod, as `pg_dump` does, over the pod's local socket (the
//! image's `local replication` rule), its tar stream written here as `postgres/physical/base.tar`.
//!
//! `verify` starts a scratch server on the copy and compares its tables with the counts and
//! digests the logical snapshot recorded: equal only when nothing wrote between the two, so a
//! physical backup needs the writers quiesced (checked with the options).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::BackupError;
use super::postgres::PgSource;
use super::verify::Restored;
use crate::keep::ScratchDir;
use crate::pg::{LocalOptions, LocalPostgres, PostgresProvider as _};

/// Where the physical copy goes, relative to the backup directory.
pub const PHYSICAL_TAR: &str = "postgres/physical/base.tar";

/// The physical copy in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalBackup {
    /// The tar of the data directory with its WAL, relative to the backup directory.
    pub file: String,
    /// How it was taken.
    pub method: String,
    /// The server's superuser, which the copy's server starts as.
    pub user: String,
}

/// Takes the physical copy of `source` into `dir/postgres/physical/base.tar`.
///
/// # Errors
/// `pg_basebackup` failing (its own words), the file not writable.
pub(crate) async fn take(source: &PgSource, dir: &Path) -> Result<PhysicalBackup, BackupError> {
    let out = dir.join(PHYSICAL_TAR);
    let parent = out.parent().expect("the tar has a parent directory");
    std::fs::create_dir_all(parent).map_err(BackupError::io("create", parent))?;
    crate::keep::set_private_dir(parent).map_err(BackupError::io("protect", parent))?;
    let args = [
        "-D",
        "-",
        "-Ft",
        "-X",
        "fetch",
        "-c",
        "fast",
        "--no-password",
    ]
    .map(str::to_owned)
    .to_vec();
    source
        .dump(
            "pg_basebackup",
            args,
            "taking the physical backup (pg_basebackup)",
            &out,
            false,
        )
        .await?;
    Ok(PhysicalBackup {
        file: PHYSICAL_TAR.to_owned(),
        method: "pg_basebackup -Ft -X fetch -c fast (a checkpoint, pg_backup_start/stop, the \
                 WAL between them included)"
            .to_owned(),
        user: source.user().to_owned(),
    })
}

/// Starts a scratch server on the physical copy in `dir` and observes database `dbname` as the
/// backup observed its source. `Ok(Err(..))` is a copy that does not start or cannot be read (a
/// finding); the server and its directory are gone when this returns.
///
/// # Errors
/// No scratch directory could be made.
pub(crate) async fn observe(
    dir: &Path,
    physical: &PhysicalBackup,
    dbname: &str,
    version: crate::facts::DigestVersion,
    timeout: Duration,
) -> Result<Result<Restored, String>, BackupError> {
    let staging = ScratchDir::new("harness-physical-", "physical backup staging directory")
        .map_err(BackupError::io("create", std::env::temp_dir()))?;
    let data = staging.path().join("data");
    let tar = dir.join(&physical.file);
    if let Err(e) = unpack(&tar, &data) {
        return Ok(Err(format!("unpack {}: {e}", physical.file)));
    }
    if let Err(e) = only_local_access(&data) {
        return Ok(Err(format!("prepare the copy's data directory: {e}")));
    }
    let server = match LocalPostgres::start(LocalOptions {
        user: physical.user.clone(),
        data_from: Some(data),
        settings: vec![("fsync".into(), "off".into())],
        start_timeout: timeout,
        ..LocalOptions::default()
    })
    .await
    {
        Ok(server) => server,
        Err(err) => {
            return Ok(Err(format!(
                "a server on the physical copy did not start: {}",
                crate::error_chain(&err)
            )));
        }
    };
    drop(staging);
    let mut params = server.socket_params();
    params.dbname = dbname.to_owned();
    let observed = async {
        let client = params.connect().await.map_err(|e| e.to_string())?;
        let tables = crate::facts::table_facts_as(&client, version)
            .await
            .map_err(|e| e.to_string())?;
        let sequences = crate::facts::sequence_facts(&client)
            .await
            .map_err(|e| e.to_string())?;
        let schema = crate::facts::render_schema(&client)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(Restored {
            tables,
            sequences,
            schema,
        })
    }
    .await;
    if let Err(err) = server.stop().await {
        tracing::warn!(error = %crate::error_chain(&err), "stopping the physical copy's server failed");
    }
    Ok(observed)
}

/// Unpacks `tar` into `into` (created 0700); no member may leave it.
fn unpack(tar: &Path, into: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(into)?;
    std::fs::set_permissions(into, std::fs::Permissions::from_mode(0o700))?;
    let mut archive = tar::Archive::new(std::fs::File::open(tar)?);
    archive.set_preserve_permissions(true);
    for entry in archive.entries()? {
        if !entry?.unpack_in(into)? {
            return Err(std::io::Error::other(
                "a member's path leaves the data directory",
            ));
        }
    }
    Ok(())
}

/// The copy's access rules replaced by the private socket only (the source's rules name
/// another cluster's addresses), and no lock or standby file of the source.
fn only_local_access(data: &Path) -> std::io::Result<()> {
    crate::keep::write_private(&data.join("pg_hba.conf"), b"local all all trust\n")?;
    for stale in ["postmaster.pid", "standby.signal", "recovery.signal"] {
        let path = data.join(stale);
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}
