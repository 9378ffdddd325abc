//! `base_backup`: `pg_basebackup` in tar format into `<archive>/base`, recorded in `PITR.json`
//! with its start and stop LSN, timeline and WAL range.

use std::path::Path;

use super::{
    BASE_DIR, BaseBackup, FileSum, MANIFEST, PitrError, PitrManifest, SegmentName, io, private_dir,
    server_now, sha256_file, write_json,
};
use crate::pg::{ConnParams, PgTools};

/// Takes a base backup of the server behind `params` into `<archive>/base` (tar, WAL streamed
/// alongside, fast checkpoint) and writes `PITR.json`.
///
/// # Errors
/// The server unreachable, `pg_basebackup` failing, or its report lacking the WAL range.
pub async fn base_backup(
    tools: &PgTools,
    params: &ConnParams,
    archive: &Path,
) -> Result<BaseBackup, PitrError> {
    let dir = archive.join(BASE_DIR);
    if dir.exists() {
        return Err(PitrError::Io {
            action: "write a base backup into",
            path: dir,
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the archive already holds a base backup",
            ),
        });
    }
    private_dir(archive)?;
    let client = params.connect().await?;
    let server_version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(|source| PitrError::Query {
            what: "read server_version".into(),
            source,
        })?
        .get(0);
    let segment_size: i64 = client
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'",
            &[],
        )
        .await
        .map_err(|source| PitrError::Query {
            what: "read wal_segment_size".into(),
            source,
        })?
        .get(0);
    let segment_size = u64::try_from(segment_size).unwrap_or(16 * 1024 * 1024);
    let started_at = server_now(&client).await?;
    let tool = tools.tool("pg_basebackup")?;
    let out = crate::process::ToolRun::new("pg_basebackup", &tool, "taking a base backup")
        .args(["-D".to_owned(), dir.display().to_string()])
        .args(["-Ft", "-X", "stream", "-c", "fast", "-v", "-w"])
        .args(["-h", &params.host, "-p", &params.port.to_string()])
        .args(["-U", &params.user])
        .envs(params.libpq_env())
        .capture()
        .await
        .map_err(|e| io("run", &tool)(std::io::Error::other(e.to_string())))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(PitrError::Tool {
            tool: "pg_basebackup",
            status: out.status.to_string(),
            output: super::tail(&stderr, 10),
        });
    }
    let finished_at = server_now(&client).await?;
    let (start_lsn, timeline) = wal_point(&stderr, "write-ahead log start point: ")?;
    let (stop_lsn, _) = wal_point(&stderr, "write-ahead log end point: ")?;
    crate::keep::set_private_dir(&dir).map_err(io("chmod", &dir))?;
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io("list", &dir))?
        .collect::<Result<_, _>>()
        .map_err(io("list", &dir))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        crate::keep::set_private_file(&path).map_err(io("chmod", &path))?;
        let (size, sha256) = sha256_file(&path)?;
        files.push(FileSum {
            path: entry.file_name().to_string_lossy().into_owned(),
            size,
            sha256,
        });
    }
    let base = BaseBackup {
        user: params.user.clone(),
        server_version,
        start_lsn: start_lsn.to_string(),
        stop_lsn: stop_lsn.to_string(),
        timeline,
        wal_start: SegmentName::of(timeline, start_lsn, segment_size).file_name(segment_size),
        wal_end: SegmentName::of(timeline, stop_lsn, segment_size).file_name(segment_size),
        started_at,
        finished_at,
        files,
    };
    write_json(
        &archive.join(MANIFEST),
        &PitrManifest {
            format: 1,
            base: base.clone(),
        },
    )?;
    Ok(base)
}

/// `write-ahead log start point: 0/2000028 on timeline 1` from pg_basebackup's `-v` output.
fn wal_point(stderr: &str, prefix: &str) -> Result<(super::Lsn, u32), PitrError> {
    let missing = || PitrError::Tool {
        tool: "pg_basebackup",
        status: "exit 0".into(),
        output: format!(
            "no `{prefix}` line in its output: {}",
            super::tail(stderr, 10)
        ),
    };
    let rest = stderr
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, r)| r))
        .ok_or_else(missing)?;
    let mut words = rest.split_whitespace();
    let lsn = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(missing)?;
    let timeline = match (words.next(), words.next(), words.next()) {
        (Some("on"), Some("timeline"), Some(t)) => t.parse().map_err(|_| missing())?,
        _ => 0,
    };
    Ok((lsn, timeline))
}

#[cfg(test)]
mod tests {
    #[test]
    fn wal_points_are_read_from_pg_basebackups_report() {
        let out = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                   pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n\
                   pg_basebackup: write-ahead log end point: 0/2000100\n";
        let (start, tli) = super::wal_point(out, "write-ahead log start point: ").unwrap();
        assert_eq!((start.to_string().as_str(), tli), ("0/2000028", 1));
        let (end, _) = super::wal_point(out, "write-ahead log end point: ").unwrap();
        assert_eq!(end.to_string(), "0/2000100");
        assert!(super::wal_point("", "write-ahead log end point: ").is_err());
    }
}
