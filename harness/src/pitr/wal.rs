//! WAL positions and segment names, and [`WalReceiver`]: `pg_receivewal` on a replication slot
//! into the archive, each completed segment checksummed into `SEGMENTS.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{
    PitrError, SEGMENTS, SegmentManifest, SegmentRecord, WAL_DIR, io, private_dir, read_json,
    sha256_file, write_json,
};
use crate::pg::{ConnParams, PgTools};
use crate::process::GuardedSpawn as _;

/// A WAL position (`X/Y`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl std::str::FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an LSN (X/Y, hexadecimal)"))?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 {
                return Err(format!("{s:?} is not an LSN (X/Y, hexadecimal)"));
            }
            u64::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not an LSN (X/Y, hexadecimal)"))
        };
        Ok(Lsn((part(hi)? << 32) | part(lo)?))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A WAL segment file name: timeline and segment number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    /// The timeline.
    pub timeline: u32,
    /// The segment number (LSN / segment size).
    pub segno: u64,
}

impl SegmentName {
    /// Parses `TTTTTTTTXXXXXXXXYYYYYYYY` for a segment size.
    pub fn parse(name: &str, segment_size: u64) -> Option<Self> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_log = 0x1_0000_0000 / segment_size;
        (seg < per_log).then_some(Self {
            timeline,
            segno: log * per_log + seg,
        })
    }

    /// The segment holding `lsn`.
    pub fn of(timeline: u32, lsn: Lsn, segment_size: u64) -> Self {
        Self {
            timeline,
            segno: lsn.0 / segment_size,
        }
    }

    /// The file name.
    pub fn file_name(&self, segment_size: u64) -> String {
        let per_log = 0x1_0000_0000 / segment_size;
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.segno / per_log,
            self.segno % per_log
        )
    }
}

/// Options of [`WalReceiver::start`].
#[derive(Clone, Debug)]
pub struct ReceiverOptions {
    /// The physical replication slot (created when missing, reserving WAL at once).
    pub slot: String,
    /// Deadline for the receiver to be streaming.
    pub ready_timeout: Duration,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        Self {
            slot: "rehearsal_pitr".into(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// `pg_receivewal --synchronous --slot` writing into `<archive>/wal`, and a task recording every
/// completed segment's SHA-256 in `SEGMENTS.json`. Dropping it kills the receiver; [`stop`]
/// ends it cleanly and seals its last, partial segment.
///
/// [`stop`]: WalReceiver::stop
#[derive(Debug)]
pub struct WalReceiver {
    child: Option<tokio::process::Child>,
    archive: PathBuf,
    params: ConnParams,
    stop_sync: CancellationToken,
    sync_task: Option<tokio::task::JoinHandle<()>>,
}

impl WalReceiver {
    /// Creates the slot when missing, starts `pg_receivewal`, and returns once the server lists
    /// it in `pg_stat_replication` as streaming.
    ///
    /// # Errors
    /// The server unreachable, the tool missing or failing, or not streaming in time.
    pub async fn start(
        tools: &PgTools,
        params: &ConnParams,
        archive: &Path,
        options: &ReceiverOptions,
    ) -> Result<Self, PitrError> {
        private_dir(archive)?;
        let wal = archive.join(WAL_DIR);
        private_dir(&wal)?;
        let client = params.connect().await?;
        let query = |what: &'static str| {
            move |source| PitrError::Query {
                what: what.into(),
                source,
            }
        };
        let segment_size: i64 = client
            .query_one(
                "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'",
                &[],
            )
            .await
            .map_err(query("read wal_segment_size"))?
            .get(0);
        let timeline: i32 = client
            .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
            .await
            .map_err(query("read the server's timeline"))?
            .get(0);
        refuse_mixing(
            archive,
            &wal,
            u32::try_from(timeline).unwrap_or(0),
            segment_size,
        )?;
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&options.slot],
            )
            .await
            .map_err(query("create the replication slot"))?;
        let manifest_path = archive.join(SEGMENTS);
        let mut manifest: SegmentManifest = if manifest_path.exists() {
            read_json(&manifest_path)?
        } else {
            SegmentManifest::default()
        };
        manifest.segment_size = u64::try_from(segment_size).unwrap_or(0);
        manifest.slot.clone_from(&options.slot);
        write_json(&manifest_path, &manifest)?;

        let pg_receivewal = tools.tool("pg_receivewal")?;
        let mut cmd = crate::process::tokio_command(&pg_receivewal);
        cmd.arg("-D")
            .arg(&wal)
            .args(["--slot", &options.slot, "--synchronous", "--no-loop", "-w"])
            .args(["-h", &params.host, "-p", &params.port.to_string()])
            .args(["-U", &params.user, "-s", "1"])
            // The password only through the environment (PGPASSWORD), never argv.
            .envs(params.libpq_env())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn_guarded().map_err(io("start", &pg_receivewal))?;
        let stop_sync = CancellationToken::new();
        let mut receiver = Self {
            child: Some(child),
            archive: archive.to_path_buf(),
            params: params.clone(),
            stop_sync: stop_sync.clone(),
            sync_task: None,
        };
        receiver.wait_streaming(&client, options).await?;
        let archive = archive.to_path_buf();
        receiver.sync_task = Some(tokio::spawn(async move {
            loop {
                if let Err(err) = sync_segments(&archive, false) {
                    tracing::warn!(error = %crate::error_chain(&err), "WAL segment manifest");
                }
                tokio::select! {
                    () = stop_sync.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }));
        Ok(receiver)
    }

    async fn wait_streaming(
        &mut self,
        client: &tokio_postgres::Client,
        options: &ReceiverOptions,
    ) -> Result<(), PitrError> {
        let deadline = Instant::now() + options.ready_timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let output = match self.child.take() {
                    Some(child) => child.wait_with_output().await.map_or_else(
                        |e| e.to_string(),
                        |o| String::from_utf8_lossy(&o.stderr).into_owned(),
                    ),
                    None => String::new(),
                };
                return Err(PitrError::Tool {
                    tool: "pg_receivewal",
                    status: status.to_string(),
                    output: super::tail(&output, 10),
                });
            }
            let streaming: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication r \
                     JOIN pg_replication_slots s ON s.active_pid = r.pid \
                     WHERE s.slot_name = $1 AND r.state = 'streaming'",
                    &[&options.slot],
                )
                .await
                .map_err(|source| PitrError::Query {
                    what: "read pg_stat_replication".into(),
                    source,
                })?
                .get(0);
            if streaming > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PitrError::Timeout {
                    what: format!("pg_receivewal to stream from slot {}", options.slot),
                    seconds: options.ready_timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the receiver has flushed WAL up to the server's current flush position:
    /// every transaction committed before this call (with `synchronous_commit` on, the
    /// default, a commit returns only once its WAL is flushed) is in the archive. Not the
    /// insert position: after a segment switch it points past WAL the server has not written
    /// yet, which would only arrive with the next record.
    ///
    /// # Errors
    /// The server unreachable, or not flushed within `timeout`.
    pub async fn wait_flushed(&self, timeout: Duration) -> Result<Lsn, PitrError> {
        let client = self.params.connect().await?;
        let target: String = client
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await
            .map_err(|source| PitrError::Query {
                what: "read the WAL flush position".into(),
                source,
            })?
            .get(0);
        let deadline = Instant::now() + timeout;
        loop {
            let done: bool = client
                .query_one(
                    "SELECT coalesce(bool_or(flush_lsn >= $1::text::pg_lsn), false) \
                     FROM pg_stat_replication WHERE application_name = 'pg_receivewal'",
                    &[&target],
                )
                .await
                .map_err(|source| PitrError::Query {
                    what: "read pg_stat_replication".into(),
                    source,
                })?
                .get(0);
            if done {
                return target.parse().map_err(|message| PitrError::Manifest {
                    path: self.archive.join(SEGMENTS),
                    message,
                });
            }
            if Instant::now() >= deadline {
                return Err(PitrError::Timeout {
                    what: format!("pg_receivewal to flush up to {target}"),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the receiver (SIGINT: it flushes and exits) or collects it when it already ended
    /// (the server went away), then seals its last segment: the `.partial` file takes the
    /// segment's name, and every segment is in `SEGMENTS.json` with its SHA-256.
    ///
    /// # Errors
    /// The archive could not be written.
    pub async fn stop(mut self) -> Result<SegmentManifest, PitrError> {
        if let Some(child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SIGINT: pg_receivewal flushes what it has and exits.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            match tokio::time::timeout(Duration::from_secs(15), child.wait_with_output()).await {
                Ok(Ok(out)) => tracing::info!(
                    status = %out.status,
                    stderr = %super::tail(&String::from_utf8_lossy(&out.stderr), 3),
                    "pg_receivewal ended"
                ),
                Ok(Err(err)) => tracing::warn!(error = %err, "pg_receivewal"),
                // kill_on_drop ended it when the future was dropped.
                Err(_) => tracing::warn!("pg_receivewal did not stop within 15 s; killed"),
            }
        }
        self.stop_sync.cancel();
        if let Some(task) = self.sync_task.take() {
            let _ = task.await;
        }
        let sealed = sync_segments(&self.archive, true)?;
        self.drop_slot(&sealed.slot).await;
        Ok(sealed)
    }

    /// Drops the replication slot when the server is still there: a slot nobody reads keeps
    /// every later WAL segment on the server's disk. After a disaster there is no server and
    /// nothing to drop; a slot that could not be dropped is named in a warning.
    async fn drop_slot(&self, slot: &str) {
        let dropped = async {
            let client = self.params.connect().await?;
            client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND NOT active",
                    &[&slot],
                )
                .await
                .map_err(|source| PitrError::Query {
                    what: format!("drop replication slot {slot}"),
                    source,
                })
        };
        match tokio::time::timeout(Duration::from_secs(5), dropped).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(
                slot,
                error = %crate::error_chain(&err),
                "replication slot not dropped (the server is gone, or drop it by hand)"
            ),
            Err(_) => tracing::warn!(slot, "replication slot not dropped: no answer in 5 s"),
        }
    }
}

impl Drop for WalReceiver {
    fn drop(&mut self) {
        self.stop_sync.cancel();
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
        }
    }
}

/// Refuses a destination that holds another timeline's segments, or a sealed archive: one
/// archive never mixes timelines or continues after its end.
fn refuse_mixing(
    archive: &Path,
    wal: &Path,
    timeline: u32,
    segment_size: i64,
) -> Result<(), PitrError> {
    let size = u64::try_from(segment_size).unwrap_or(0);
    let mut findings = Vec::new();
    let manifest_path = archive.join(SEGMENTS);
    if manifest_path.exists() {
        let manifest: SegmentManifest = read_json(&manifest_path)?;
        if let Some(at) = manifest.sealed_at {
            findings.push(format!("the archive was sealed at {at}: start a new one"));
        }
    }
    for entry in std::fs::read_dir(wal).map_err(io("list", wal))? {
        let name = entry.map_err(io("list", wal))?.file_name();
        let name = name.to_string_lossy();
        if let Some(segment) = SegmentName::parse(name.trim_end_matches(".partial"), size)
            && segment.timeline != timeline
        {
            findings.push(format!(
                "WAL segment {name} is of timeline {}, the server is on timeline {timeline}: \
                 refusing to mix timelines in one archive",
                segment.timeline
            ));
        }
    }
    if findings.is_empty() {
        Ok(())
    } else {
        Err(PitrError::Defective {
            archive: archive.to_path_buf(),
            findings,
        })
    }
}

/// Records every completed segment not yet in `SEGMENTS.json`; with `seal`, the `.partial`
/// segment too, renamed to its segment name.
fn sync_segments(archive: &Path, seal: bool) -> Result<SegmentManifest, PitrError> {
    let path = archive.join(SEGMENTS);
    let mut manifest: SegmentManifest = read_json(&path)?;
    let wal = archive.join(WAL_DIR);
    let mut names: Vec<String> = std::fs::read_dir(&wal)
        .map_err(io("list", &wal))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(io("list", &wal))?;
    names.sort();
    let mut changed = false;
    for name in names {
        let (segment, partial) = match name.strip_suffix(".partial") {
            Some(segment) if seal => (segment.to_owned(), true),
            Some(_) => continue,
            None => (name.clone(), false),
        };
        if SegmentName::parse(&segment, manifest.segment_size).is_none()
            || manifest.segments.iter().any(|s| s.name == segment)
        {
            continue;
        }
        let file = wal.join(&segment);
        if partial {
            std::fs::rename(wal.join(&name), &file).map_err(io("seal", &file))?;
        }
        crate::keep::set_private_file(&file).map_err(io("chmod", &file))?;
        let (size, sha256) = sha256_file(&file)?;
        manifest.segments.push(SegmentRecord {
            name: segment,
            size,
            sha256,
            partial,
        });
        changed = true;
    }
    if seal {
        manifest.sealed_at = Some(chrono::Utc::now().to_rfc3339());
        changed = true;
    }
    if changed {
        manifest.segments.sort_by(|a, b| a.name.cmp(&b.name));
        write_json(&path, &manifest)?;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 * 1024 * 1024;

    #[test]
    fn segment_names_round_trip() {
        let name = SegmentName::parse("000000010000000200000003", MB16).unwrap();
        assert_eq!((name.timeline, name.segno), (1, 2 * 256 + 3));
        assert_eq!(name.file_name(MB16), "000000010000000200000003");
        let lsn: Lsn = "2/3000148".parse().unwrap();
        assert_eq!(SegmentName::of(1, lsn, MB16), name);
        assert_eq!(lsn.to_string(), "2/3000148");
        assert!(SegmentName::parse("00000001000000020000010A", MB16).is_none());
        assert!("nope".parse::<Lsn>().is_err());
    }
}
