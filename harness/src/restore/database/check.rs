//! Proving the input intact before anything changes: a custom archive by the digest its
//! backup recorded or by reading it through, plain SQL and CSV files by their heads.

use super::*;

/// Checks the archive without changing anything, and lists a custom archive's entries; says
/// how a custom archive's data was proven intact.
pub(super) async fn check_archive(
    tools: &PgTools,
    input: &DbRestoreInput,
    deadline: Duration,
) -> Result<(Vec<String>, Option<ArchiveProof>), RestoreError> {
    let archive = &input.archive;
    let path = archive.path();
    let unreadable = |source| RestoreError::ArchiveUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    let bad = |detail: String| RestoreError::BadArchive {
        path: path.to_path_buf(),
        format: archive.format(),
        detail,
    };
    match archive {
        DbArchive::Custom(_) => {
            if meta.is_dir() {
                return Err(bad("it is a directory".to_owned()));
            }
            let program = tools
                .tool("pg_restore")
                .map_err(RestoreError::pg("find pg_restore"))?;
            let what = format!("listing {}", path.display());
            let list = run_checked(&program, &["-l"], path, deadline, what).await?;
            if !list.status.success() {
                return Err(bad(String::from_utf8_lossy(&list.stderr).trim().to_owned()));
            }
            // The table of contents is read from the head of the file only. The rest is
            // proven by the digest the backup recorded, or else read through once (every data
            // block decompressed, so zlib's checksums catch a flipped byte and the end a
            // truncation) before anything is dropped.
            let proof = match &input.recorded_sha256 {
                Some(recorded) => {
                    let what = format!("hashing {}", path.display());
                    let (_, actual) = within(deadline, "sha256", what, async {
                        crate::backup::sha256_file(path)
                            .await
                            .map_err(|e| bad(format!("could not hash it: {e}")))
                    })
                    .await?;
                    if actual != *recorded {
                        return Err(bad(format!(
                            "its SHA-256 is {actual}, not the {recorded} its backup recorded \
                             (changed or damaged since the backup)"
                        )));
                    }
                    ArchiveProof::RecordedSha256 { sha256: actual }
                }
                None => {
                    let what = format!("reading {} through", path.display());
                    let whole =
                        run_checked(&program, &["-f", "/dev/null"], path, deadline, what).await?;
                    if !whole.status.success() {
                        let stderr = String::from_utf8_lossy(&whole.stderr);
                        return Err(bad(format!(
                            "reading it through failed ({}): {}",
                            whole.status,
                            stderr.trim()
                        )));
                    }
                    ArchiveProof::ReadThrough
                }
            };
            let entries = String::from_utf8_lossy(&list.stdout)
                .lines()
                .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
                // `<dump id>; <table oid> <oid> <desc> <schema> <name> <owner>`: drop the ids.
                .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
                .collect();
            Ok((entries, Some(proof)))
        }
        DbArchive::Csv(csv) => {
            check_plain_head(archive, path, &meta)?;
            for table in &csv.tables {
                check_csv(archive, table)?;
            }
            Ok((Vec::new(), None))
        }
        DbArchive::PlainSql(_) => {
            check_plain_head(archive, path, &meta)?;
            Ok((Vec::new(), None))
        }
    }
}

/// Runs `pg_restore ARGS PATH` (reading only), its output captured, within `deadline`.
pub(super) async fn run_checked(
    program: &Path,
    args: &[&str],
    path: &Path,
    deadline: Duration,
    what: String,
) -> Result<std::process::Output, RestoreError> {
    crate::process::ToolRun::new("pg_restore", program, what)
        .args(args.iter().copied())
        .args([path.display().to_string()])
        .deadline(deadline)
        .capture()
        .await
        .map_err(|err| from_tool(err, path))
}

/// The first line of `path` (at most 64 KiB), without its line end.
pub(super) fn first_line(path: &Path) -> Result<String, std::io::Error> {
    use std::io::Read;
    let mut head = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head))?;
    let head = &head[..n];
    let end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    Ok(String::from_utf8_lossy(&head[..end])
        .trim_end_matches('\r')
        .to_owned())
}

/// A column name as PostgreSQL's CSV output writes it in the header row.
pub(super) fn csv_field(name: &str) -> String {
    if name.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_owned()
    }
}

/// A CSV file psql's `\copy` can name (its path is quoted there) and whose header row names
/// the recorded columns.
pub(super) fn check_csv(archive: &DbArchive, table: &CsvFile) -> Result<(), RestoreError> {
    let path = &table.path;
    let bad = |detail: String| RestoreError::BadArchive {
        path: path.to_path_buf(),
        format: archive.format(),
        detail,
    };
    let shown = path.display().to_string();
    if shown.contains(['\'', '\n', '\r']) || path.to_str().is_none() {
        return Err(bad(
            "its path holds a quote, a line break or non-UTF-8 bytes, which psql's \\copy cannot name"
                .to_owned(),
        ));
    }
    let meta = std::fs::metadata(path).map_err(|source| RestoreError::ArchiveUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(bad("it is not a regular file".to_owned()));
    }
    let header = first_line(path).map_err(|source| RestoreError::ArchiveUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let expected = table
        .columns
        .iter()
        .map(|c| csv_field(c))
        .collect::<Vec<_>>()
        .join(",");
    if header != expected {
        return Err(bad(format!(
            "its header row is `{header}`, the backup recorded the columns of {}.{} as `{expected}`",
            table.schema, table.name
        )));
    }
    Ok(())
}

pub(super) fn check_plain_head(
    archive: &DbArchive,
    path: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), RestoreError> {
    use std::io::Read;
    let bad = |detail: String| RestoreError::BadArchive {
        path: path.to_path_buf(),
        format: archive.format(),
        detail,
    };
    let unreadable = |source| RestoreError::ArchiveUnreadable {
        path: path.to_path_buf(),
        source,
    };
    if !meta.is_file() {
        return Err(bad("it is not a regular file".to_owned()));
    }
    let mut head = vec![0u8; 4096];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(unreadable)?;
    let head = String::from_utf8_lossy(&head[..n]);
    if head.starts_with("PGDMP") {
        return Err(bad(
            "it is a custom-format archive; restore it as one, not with --from-sql".to_owned(),
        ));
    }
    if !head.contains("PostgreSQL database dump") {
        return Err(bad("it does not start like pg_dump's plain output (no \"PostgreSQL database dump\" header)".to_owned()));
    }
    Ok(())
}
