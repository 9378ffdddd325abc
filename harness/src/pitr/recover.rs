//! `recover`: a PostgreSQL server started from the base backup with `restore_command` and the
//! plan's recovery target, returned once promoted.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{BASE_DIR, PitrError, RecoveryPlan, Target, WAL_DIR, io, sha256_file};
use crate::keep::ScratchDir;
use crate::pg::{LocalOptions, LocalPostgres, PostgresProvider as _};

/// A server recovered to the plan's target and promoted. Dropping it stops the server and
/// removes its directory.
#[derive(Debug)]
pub struct Recovered {
    /// The server (connect through `socket_params`: its `pg_hba.conf` trusts only the private
    /// socket).
    pub server: LocalPostgres,
    /// From start to promotion.
    pub duration: Duration,
    /// The server log's line saying where recovery stopped, when it wrote one.
    pub stopped: Option<String>,
}

/// Extracts the base backup, stages the plan's segments (each checked against its SHA-256 as
/// it is copied), configures recovery (`restore_command`, the target,
/// `recovery_target_action = promote`) and starts the server; waits until it is promoted.
///
/// # Errors
/// A segment that changed since the plan was checked, the server failing to start or to reach
/// the target (with its log), or no promotion within `timeout`.
pub async fn recover(plan: &RecoveryPlan, timeout: Duration) -> Result<Recovered, PitrError> {
    let started = Instant::now();
    let staging = ScratchDir::new("harness-pitr-", "PITR staging directory")
        .map_err(io("create", &std::env::temp_dir()))?;
    let data = staging.path().join("data");
    super::private_dir(&data)?;
    let base = plan.archive.join(BASE_DIR);
    extract(&base.join("base.tar"), &data)?;
    let pg_wal = data.join("pg_wal");
    super::private_dir(&pg_wal)?;
    if base.join("pg_wal.tar").exists() {
        extract(&base.join("pg_wal.tar"), &pg_wal)?;
    }
    // The segments go inside the data directory, so they belong to the server's account.
    stage_segments(plan, &data.join("pitr_wal"))?;
    configure_recovery(&data, &plan.target)?;
    let target = plan.target.to_string();
    let server = LocalPostgres::start(LocalOptions {
        user: plan.base.user.clone(),
        data_from: Some(data),
        durable: true,
        settings: vec![("fsync".into(), "off".into())],
        start_timeout: timeout,
        ..LocalOptions::default()
    })
    .await
    .map_err(|err| PitrError::Recovery {
        target: target.clone(),
        message: crate::error_chain(&err),
    })?;
    drop(staging);
    wait_promoted(&server, target, started + timeout, timeout).await?;
    let stopped = server
        .log()
        .lines()
        .find(|l| l.contains("recovery stopping") || l.contains("last completed transaction"))
        .map(str::to_owned);
    Ok(Recovered {
        server,
        duration: started.elapsed(),
        stopped,
    })
}

/// The plan's segments copied into `staged` (created, inside the data directory so they
/// belong to the server's account), each checked against its recorded size and SHA-256.
fn stage_segments(plan: &RecoveryPlan, staged: &Path) -> Result<(), PitrError> {
    super::private_dir(staged)?;
    for segment in &plan.segments {
        let from = plan.archive.join(WAL_DIR).join(&segment.name);
        let to = staged.join(&segment.name);
        std::fs::copy(&from, &to).map_err(io("copy", &from))?;
        let (size, sha256) = sha256_file(&to)?;
        if size != segment.size || sha256 != segment.sha256 {
            return Err(PitrError::Defective {
                archive: plan.archive.clone(),
                findings: vec![format!(
                    "corrupted WAL segment {}: it changed after the check (sha256 {sha256})",
                    segment.name
                )],
            });
        }
    }
    Ok(())
}

/// The data directory set up for recovery to `target`: only the private socket in
/// pg_hba.conf (the source's rules name addresses of another cluster), the recovery settings,
/// `recovery.signal`, and no stale `postmaster.pid` or `standby.signal`.
fn configure_recovery(data: &Path, target: &Target) -> Result<(), PitrError> {
    let hba = data.join("pg_hba.conf");
    crate::keep::write_private(&hba, b"local all all trust\n").map_err(io("write", &hba))?;
    let auto = data.join("postgresql.auto.conf");
    let mut conf = if auto.exists() {
        std::fs::read_to_string(&auto).map_err(io("read", &auto))?
    } else {
        String::new()
    };
    conf.push_str(&recovery_settings(target));
    crate::keep::write_private(&auto, conf.as_bytes()).map_err(io("write", &auto))?;
    let signal = data.join("recovery.signal");
    crate::keep::write_private(&signal, b"").map_err(io("write", &signal))?;
    for stale in ["postmaster.pid", "standby.signal"] {
        let path = data.join(stale);
        if path.exists() {
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
        }
    }
    Ok(())
}

/// Waits until the server has left recovery (promoted), or fails at `deadline` with the end
/// of its log.
async fn wait_promoted(
    server: &LocalPostgres,
    target: String,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), PitrError> {
    let client = server.socket_params().connect().await?;
    loop {
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|source| PitrError::Query {
                what: "ask whether recovery has ended".into(),
                source,
            })?
            .get(0);
        if !in_recovery {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(PitrError::Recovery {
                target,
                message: format!(
                    "not promoted within {} s; last log lines:\n{}",
                    timeout.as_secs(),
                    super::tail(&server.log(), 10)
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `postgresql.auto.conf` lines for `target`.
fn recovery_settings(target: &Target) -> String {
    let mut conf = String::from(
        "\n# rebuild-rehearsal: point-in-time recovery\n\
         restore_command = 'cp \"pitr_wal/%f\" \"%p\"'\n\
         recovery_target_timeline = 'latest'\n",
    );
    match target {
        Target::Time(t) => {
            conf.push_str(&format!(
                "recovery_target_time = '{}'\nrecovery_target_inclusive = on\n\
                 recovery_target_action = 'promote'\n",
                t.format("%Y-%m-%d %H:%M:%S%.6f+00")
            ));
        }
        Target::Lsn(l) => {
            conf.push_str(&format!(
                "recovery_target_lsn = '{l}'\nrecovery_target_inclusive = on\n\
                 recovery_target_action = 'promote'\n"
            ));
        }
        // No target: recovery replays everything, then the server is promoted.
        Target::Latest => {}
    }
    conf
}

fn extract(tar_file: &Path, into: &Path) -> Result<(), PitrError> {
    let file = std::fs::File::open(tar_file).map_err(io("open", tar_file))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    // Members are checked: no absolute or `..` paths (unpack_in refuses them).
    for entry in archive.entries().map_err(io("read", tar_file))? {
        let mut entry = entry.map_err(io("read", tar_file))?;
        let unpacked = entry.unpack_in(into).map_err(io("extract", tar_file))?;
        if !unpacked {
            return Err(PitrError::Manifest {
                path: tar_file.to_path_buf(),
                message: "a member's path leaves the data directory".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_time_target_is_inclusive_and_promotes() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-03T06:10:00.123456Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let conf = super::recovery_settings(&super::Target::Time(t));
        assert!(conf.contains("recovery_target_time = '2026-12-03 06:10:00.123456+00'"));
        assert!(conf.contains("recovery_target_action = 'promote'"));
        assert!(
            !super::recovery_settings(&super::Target::Latest).contains("recovery_target_time =")
        );
    }
}
