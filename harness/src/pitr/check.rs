//! Checking an archive (a verdict: gaps, checksums, timelines, the base backup's files), reading
//! its WAL with `pg_waldump` (where valid WAL ends, the last commit), and the recovery plan that
//! refuses a target the archive does not cover.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{
    BASE_DIR, BaseBackup, Lsn, MANIFEST, PitrError, PitrManifest, SEGMENTS, SegmentManifest,
    SegmentName, SegmentRecord, Target, WAL_DIR, io, read_json, sha256_file,
};
use crate::pg::PgTools;

/// One defect of an archive, naming its segment or file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveFinding {
    /// A recorded segment is not in `wal/`.
    Missing {
        /// The segment.
        segment: String,
    },
    /// A segment missing from the sequence.
    Gap {
        /// The first missing segment.
        missing: String,
        /// The segment before the gap.
        after: String,
        /// The segment after it.
        before: String,
    },
    /// A segment whose content is not what was recorded.
    Corrupted {
        /// The segment or base backup file.
        file: String,
        /// Recorded SHA-256 (size).
        expected: String,
        /// Found.
        actual: String,
    },
    /// A segment on disk with no checksum recorded.
    Unrecorded {
        /// The segment.
        segment: String,
    },
    /// Segments of more than one timeline.
    TimelinesMixed {
        /// The timelines found.
        timelines: Vec<u32>,
    },
    /// pg_waldump found invalid WAL before the archive's end.
    InvalidWal {
        /// The segment holding the invalid record.
        segment: String,
        /// pg_waldump's words.
        message: String,
    },
}

impl std::fmt::Display for ArchiveFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { segment } => write!(
                f,
                "missing WAL segment {segment}: recorded in {SEGMENTS} but not in {WAL_DIR}/"
            ),
            Self::Gap {
                missing,
                after,
                before,
            } => write!(
                f,
                "missing WAL segment {missing}: gap in the sequence between {after} and {before}"
            ),
            Self::Corrupted {
                file,
                expected,
                actual,
            } => write!(
                f,
                "corrupted {file}: expected sha256 {expected}, found {actual}"
            ),
            Self::Unrecorded { segment } => {
                write!(f, "WAL segment {segment} has no recorded checksum")
            }
            Self::TimelinesMixed { timelines } => write!(
                f,
                "the archive mixes timelines {}",
                timelines
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::InvalidWal { segment, message } => {
                write!(f, "corrupted WAL segment {segment}: pg_waldump: {message}")
            }
        }
    }
}

/// The verdict on an archive: passed when there are no findings.
#[derive(Clone, Debug)]
pub struct ArchiveCheck {
    /// Every defect found.
    pub findings: Vec<ArchiveFinding>,
    /// The base backup.
    pub base: BaseBackup,
    /// The segments.
    pub segments: SegmentManifest,
}

impl ArchiveCheck {
    /// No defect found.
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Checks an archive: the base backup's files and every segment against their recorded
/// SHA-256, the sequence from the base backup's first segment on without a gap, one timeline,
/// and no unrecorded segment.
///
/// # Errors
/// When it cannot check: a manifest missing or unreadable.
pub fn check_archive(archive: &Path) -> Result<ArchiveCheck, PitrError> {
    let manifest: PitrManifest = read_json(&archive.join(MANIFEST))?;
    let segments: SegmentManifest = read_json(&archive.join(SEGMENTS))?;
    let size = segments.segment_size;
    if size == 0 || (0x1_0000_0000 % size) != 0 {
        return Err(PitrError::Manifest {
            path: archive.join(SEGMENTS),
            message: format!("segment_size {size} is not a power of two dividing 4 GiB"),
        });
    }
    let mut findings = Vec::new();
    for file in &manifest.base.files {
        let path = archive.join(BASE_DIR).join(&file.path);
        compare(
            &path,
            &format!("base backup file {}", file.path),
            file.size,
            &file.sha256,
            &mut findings,
        )?;
    }
    let wal = archive.join(WAL_DIR);
    for record in &segments.segments {
        let path = wal.join(&record.name);
        if !path.exists() {
            findings.push(ArchiveFinding::Missing {
                segment: record.name.clone(),
            });
            continue;
        }
        compare(
            &path,
            &format!("WAL segment {}", record.name),
            record.size,
            &record.sha256,
            &mut findings,
        )?;
    }
    let on_disk: Vec<String> = std::fs::read_dir(&wal)
        .map_err(io("list", &wal))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(io("list", &wal))?;
    for name in on_disk {
        let segment = name.trim_end_matches(".partial");
        if SegmentName::parse(segment, size).is_some()
            && !segments.segments.iter().any(|s| s.name == name)
        {
            findings.push(ArchiveFinding::Unrecorded { segment: name });
        }
    }
    let mut parsed: Vec<SegmentName> = segments
        .segments
        .iter()
        .filter_map(|s| SegmentName::parse(&s.name, size))
        .collect();
    parsed.sort();
    let mut timelines: Vec<u32> = parsed.iter().map(|s| s.timeline).collect();
    timelines.dedup();
    if timelines.len() > 1 {
        findings.push(ArchiveFinding::TimelinesMixed { timelines });
    }
    // The sequence starts at the base backup's first segment.
    if let Some(start) = SegmentName::parse(&manifest.base.wal_start, size) {
        parsed.retain(|s| s.segno >= start.segno);
        let first = parsed.first().copied();
        if first.is_none_or(|f| f.segno > start.segno) {
            findings.push(ArchiveFinding::Gap {
                missing: manifest.base.wal_start.clone(),
                after: format!("the base backup ({})", manifest.base.start_lsn),
                before: first.map_or_else(|| "the end".to_owned(), |f| f.file_name(size)),
            });
        }
    }
    for pair in parsed.windows(2) {
        if pair[1].timeline == pair[0].timeline && pair[1].segno > pair[0].segno + 1 {
            let missing = SegmentName {
                timeline: pair[0].timeline,
                segno: pair[0].segno + 1,
            };
            findings.push(ArchiveFinding::Gap {
                missing: missing.file_name(size),
                after: pair[0].file_name(size),
                before: pair[1].file_name(size),
            });
        }
    }
    Ok(ArchiveCheck {
        findings,
        base: manifest.base,
        segments,
    })
}

fn compare(
    path: &Path,
    what: &str,
    size: u64,
    sha256: &str,
    findings: &mut Vec<ArchiveFinding>,
) -> Result<(), PitrError> {
    if !path.exists() {
        findings.push(ArchiveFinding::Corrupted {
            file: what.to_owned(),
            expected: format!("{sha256} ({size} bytes)"),
            actual: "no such file".into(),
        });
        return Ok(());
    }
    let (found_size, found) = sha256_file(path)?;
    if found_size != size || found != sha256 {
        findings.push(ArchiveFinding::Corrupted {
            file: what.to_owned(),
            expected: format!("{sha256} ({size} bytes)"),
            actual: format!("{found} ({found_size} bytes)"),
        });
    }
    Ok(())
}

/// What an archive covers: recovery targets between these are possible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveRange {
    /// The earliest target time: the base backup's end (server clock).
    pub from_time: DateTime<Utc>,
    /// The last commit in the archive.
    pub to_time: Option<DateTime<Utc>>,
    /// The earliest target LSN: the base backup's stop point.
    pub from_lsn: Lsn,
    /// Where valid WAL ends.
    pub to_lsn: Lsn,
    /// The first segment.
    pub first_segment: String,
    /// The last segment.
    pub last_segment: String,
}

impl std::fmt::Display for ArchiveRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let to_time = self
            .to_time
            .map_or_else(|| "no commit".to_owned(), |t| t.to_rfc3339());
        write!(
            f,
            "it covers times from {} (base backup end) to {to_time} (last commit), LSN {} to {}, \
             segments {} to {}",
            self.from_time.to_rfc3339(),
            self.from_lsn,
            self.to_lsn,
            self.first_segment,
            self.last_segment
        )
    }
}

/// A checked archive and a target it covers.
#[derive(Clone, Debug)]
pub struct RecoveryPlan {
    /// The archive.
    pub archive: PathBuf,
    /// The target.
    pub target: Target,
    /// The base backup.
    pub base: BaseBackup,
    /// The segments recovery reads, in order.
    pub segments: Vec<SegmentRecord>,
    /// What the archive covers.
    pub range: ArchiveRange,
}

/// Checks the archive, reads its WAL with `pg_waldump`, and accepts `target` only when the
/// archive covers it.
///
/// # Errors
/// [`PitrError::Defective`] naming each defective or missing segment;
/// [`PitrError::NotCovered`] naming the range the archive covers; or why it could not check.
pub async fn plan(
    tools: &PgTools,
    archive: &Path,
    target: &Target,
) -> Result<RecoveryPlan, PitrError> {
    let check = check_archive(archive)?;
    let defective = |findings: Vec<ArchiveFinding>| PitrError::Defective {
        archive: archive.to_path_buf(),
        findings: findings.iter().map(ToString::to_string).collect(),
    };
    if !check.passed() {
        return Err(defective(check.findings));
    }
    let size = check.segments.segment_size;
    let start =
        SegmentName::parse(&check.base.wal_start, size).ok_or_else(|| PitrError::Manifest {
            path: archive.join(MANIFEST),
            message: format!("wal_start {} is not a segment name", check.base.wal_start),
        })?;
    let segments: Vec<SegmentRecord> = check
        .segments
        .segments
        .iter()
        .filter(|s| SegmentName::parse(&s.name, size).is_some_and(|n| n.segno >= start.segno))
        .cloned()
        .collect();
    let last = segments.last().cloned().ok_or_else(|| {
        defective(vec![ArchiveFinding::Gap {
            missing: check.base.wal_start.clone(),
            after: "the base backup".into(),
            before: "the end".into(),
        }])
    })?;
    let scan = waldump(tools, archive, &check.base, size).await?;
    let end_segment = SegmentName::of(check.base.timeline, scan.end, size).file_name(size);
    // Valid WAL must run into the last segment: ending earlier is a corrupted segment.
    if end_segment < last.name && !scan.missing_next {
        return Err(defective(vec![ArchiveFinding::InvalidWal {
            segment: end_segment,
            message: scan.message,
        }]));
    }
    let parse_lsn = |text: &str| {
        text.parse::<Lsn>().map_err(|message| PitrError::Manifest {
            path: archive.join(MANIFEST),
            message,
        })
    };
    let from_time = DateTime::parse_from_rfc3339(&check.base.finished_at)
        .map_err(|e| PitrError::Manifest {
            path: archive.join(MANIFEST),
            message: format!("finished_at: {e}"),
        })?
        .with_timezone(&Utc);
    let range = ArchiveRange {
        from_time,
        to_time: scan.last_commit,
        from_lsn: parse_lsn(&check.base.stop_lsn)?,
        to_lsn: scan.end,
        first_segment: check.base.wal_start.clone(),
        last_segment: last.name.clone(),
    };
    let covered = match target {
        Target::Time(t) => *t >= range.from_time && range.to_time.is_some_and(|end| *t <= end),
        Target::Lsn(l) => *l >= range.from_lsn && *l <= range.to_lsn,
        Target::Latest => true,
    };
    if !covered {
        return Err(PitrError::NotCovered {
            target: target.to_string(),
            range: range.to_string(),
        });
    }
    Ok(RecoveryPlan {
        archive: archive.to_path_buf(),
        target: target.clone(),
        base: check.base,
        segments,
        range,
    })
}

/// What `pg_waldump` read.
struct WalScan {
    end: Lsn,
    last_commit: Option<DateTime<Utc>>,
    message: String,
    /// Reading ended at a segment that is not in the archive (the archive ends at a boundary).
    missing_next: bool,
}

/// Reads the archive's transaction records from the base backup's start to where valid WAL
/// ends.
async fn waldump(
    tools: &PgTools,
    archive: &Path,
    base: &BaseBackup,
    segment_size: u64,
) -> Result<WalScan, PitrError> {
    let tool = tools.tool("pg_waldump")?;
    let wal = archive.join(WAL_DIR);
    // Its end of WAL is an error it prints: read its output whatever its status.
    let out = crate::process::ToolRun::new("pg_waldump", &tool, "reading the archived WAL")
        .args(["-p".to_owned(), wal.display().to_string()])
        .args(["-s", &base.start_lsn, "-t", &base.timeline.to_string()])
        .args(["-r", "Transaction"])
        // Commit times in UTC, whatever this machine's zone.
        .envs([("TZ", "UTC")])
        .capture()
        .await
        .map_err(|e| io("run", &tool)(std::io::Error::other(e.to_string())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut last_commit = None;
    for line in stdout.lines() {
        if let Some((_, rest)) = line.split_once("desc: COMMIT ") {
            let stamp: String = rest.split(';').next().unwrap_or_default().trim().to_owned();
            let stamp = stamp.trim_end_matches(" UTC");
            if let Ok(t) = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f") {
                last_commit = Some(t.and_utc());
            }
        }
    }
    let message = stderr
        .lines()
        .find(|l| l.contains("error"))
        .map(|l| l.trim_start_matches("pg_waldump: error: ").to_owned())
        .ok_or_else(|| PitrError::Tool {
            tool: "pg_waldump",
            status: out.status.to_string(),
            output: format!("no end of WAL reported: {}", super::tail(&stderr, 5)),
        })?;
    let lsns: Vec<Lsn> = message
        .split(|c: char| c.is_whitespace() || c == ':' || c == ',')
        .filter_map(|w| w.parse().ok())
        .collect();
    // "could not find file "<segment>"": the archive ends at that segment's start.
    let missing_next = message.contains("could not find file");
    let end = if missing_next {
        message
            .split('"')
            .nth(1)
            .and_then(|name| SegmentName::parse(name, segment_size))
            .map(|s| Lsn(s.segno * segment_size))
    } else {
        lsns.last().copied()
    }
    .ok_or_else(|| PitrError::Tool {
        tool: "pg_waldump",
        status: out.status.to_string(),
        output: format!("no WAL position in {message:?}"),
    })?;
    Ok(WalScan {
        end,
        last_commit,
        message,
        missing_next,
    })
}
