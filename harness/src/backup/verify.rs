//! `verify_backup()`: the checks behind `rehearsal verify BACKUP`. A failed check is a finding
//! in the returned verdict; `Err` only means the verification itself could not run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BackupError;
use super::archive::{DecryptionKey, unpack_archive};
use super::files::{ToolRun, sha256_file, tail};
use super::manifest::{MANIFEST_JSON, MANIFEST_SHA256, Manifest, list_files};
use super::redis::{rdb_facts, rdb_path};
use crate::facts::{DigestVersion, TableFacts, table_facts_as};
use crate::keep::ScratchDir;
use crate::pg::{ConnParams, PgTools, quote_ident};

/// Where `verify` restores, and how to open an encrypted archive.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// A scratch PostgreSQL server (superuser): a database is created there and dropped after.
    pub scratch: ConnParams,
    /// pg_restore of the scratch server's version.
    pub tools: PgTools,
    /// For `.age` archives.
    pub decryption: Option<DecryptionKey>,
}

/// One check that did not hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What was checked (`file postgres/titanium.dump`, `table public.users rows`).
    pub check: String,
    /// What the manifest (or the archive's checksum) says.
    pub expected: String,
    /// What was found.
    pub found: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {}, found {}",
            self.check, self.expected, self.found
        )
    }
}

/// The verdict of a verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// What was verified.
    pub backup: PathBuf,
    /// True only when every check held.
    pub passed: bool,
    /// The checks that did not hold, in the order they were made.
    pub findings: Vec<Finding>,
    /// Files whose size and SHA-256 were checked.
    pub files_checked: usize,
    /// Tables whose count and digest were compared after the restore.
    pub tables_checked: usize,
    /// Whether the Redis RDB was loaded and compared.
    pub redis_checked: bool,
    /// Whether a server was started on the physical copy and its tables compared.
    pub physical_checked: bool,
}

/// How long a server on a physical copy may take to start (its crash recovery included).
const PHYSICAL_START: std::time::Duration = std::time::Duration::from_secs(120);

impl VerifyReport {
    /// The first mismatch, the one to name.
    pub fn first_mismatch(&self) -> Option<&Finding> {
        self.findings.first()
    }
}

fn finding(
    check: impl Into<String>,
    expected: impl Into<String>,
    found: impl Into<String>,
) -> Finding {
    Finding {
        check: check.into(),
        expected: expected.into(),
        found: found.into(),
    }
}

/// Verifies a backup directory or archive (`.tar.gz`, `.tar.gz.age`): the archive's checksum
/// when its `.sha256` is beside it; the manifest's own checksum; every file's size and SHA-256;
/// no file missing or extra; the custom dump restored into a fresh database on the scratch
/// server, with every table's row count and digest equal to the manifest's; the Redis RDB's key
/// count and digest.
///
/// # Errors
/// Only when the verification cannot run (scratch server unreachable, no temp directory).
pub async fn verify_backup(
    path: &Path,
    options: &VerifyOptions,
) -> Result<VerifyReport, BackupError> {
    let mut report = VerifyReport {
        backup: path.to_path_buf(),
        passed: false,
        findings: Vec::new(),
        files_checked: 0,
        tables_checked: 0,
        redis_checked: false,
        physical_checked: false,
    };
    let Some(opened) = open_backup(path, options.decryption.as_ref(), &mut report.findings).await?
    else {
        return Ok(report);
    };
    let dir = opened.dir.clone();

    let Some(manifest) = check_manifest(&dir, &mut report.findings) else {
        return Ok(report);
    };
    report.files_checked = check_files(&dir, &manifest, None, &mut report.findings).await?;

    // The restore.
    if let Some(pg) = &manifest.postgres {
        let restored =
            restore_and_observe(&dir.join(&pg.custom_dump), pg.digest_version, options).await?;
        match restored {
            Err(detail) => report.findings.push(finding(
                format!("restore of {}", pg.custom_dump),
                "pg_restore succeeds",
                detail,
            )),
            Ok(found) => {
                report.tables_checked =
                    compare_tables(&pg.tables, &found.tables, &mut report.findings);
                let mut gates = vec![crate::verify::sequences(&pg.sequences, &found.sequences)];
                if !pg.schema.is_empty() {
                    gates.push(crate::verify::schema(&pg.schema, &found.schema));
                }
                for verdict in gates {
                    for f in verdict.findings {
                        report.findings.push(finding(
                            format!("{} {}: {}", verdict.gate.name(), f.subject, f.detail),
                            f.expected.unwrap_or_default(),
                            f.actual.unwrap_or_default(),
                        ));
                    }
                }
            }
        }
    }
    // The physical copy: a server started on it must hold what the snapshot recorded.
    if let Some((pg, physical)) = manifest
        .postgres
        .as_ref()
        .and_then(|pg| pg.physical.as_ref().map(|p| (pg, p)))
    {
        let observed = Box::pin(super::physical::observe(
            &dir,
            physical,
            &pg.database,
            pg.digest_version,
            PHYSICAL_START,
        ))
        .await?;
        match observed {
            Err(detail) => report.findings.push(finding(
                format!("physical copy {}", physical.file),
                "a server starts on it and its database can be read",
                detail,
            )),
            Ok(found) => {
                let mut physical_findings = Vec::new();
                compare_tables(&pg.tables, &found.tables, &mut physical_findings);
                let sequences = crate::verify::sequences(&pg.sequences, &found.sequences);
                for f in sequences.findings {
                    physical_findings.push(finding(
                        format!("{} {}: {}", sequences.gate.name(), f.subject, f.detail),
                        f.expected.unwrap_or_default(),
                        f.actual.unwrap_or_default(),
                    ));
                }
                report.physical_checked = true;
                report
                    .findings
                    .extend(physical_findings.into_iter().map(|mut f| {
                        f.check = format!("physical copy: {}", f.check);
                        f
                    }));
            }
        }
    }
    if let Some(redis) = &manifest.redis {
        let rdb = rdb_path(&dir, redis);
        match rdb_facts(&rdb).await {
            Ok(facts) => {
                report.redis_checked = true;
                let expected = crate::verify::RedisFacts {
                    key_count: redis.keys,
                    digest: redis.digest.clone(),
                    keys: Default::default(),
                };
                for f in crate::verify::redis(&expected, &facts).findings {
                    report.findings.push(finding(
                        format!("{}: {}", f.subject, f.detail),
                        f.expected.unwrap_or_default(),
                        f.actual.unwrap_or_default(),
                    ));
                }
            }
            Err(err) => report.findings.push(finding(
                format!("redis {}", redis.rdb),
                "a loadable RDB",
                err.to_string(),
            )),
        }
    }
    report.passed = report.findings.is_empty();
    Ok(report)
}

/// A backup ready to be read: a directory as given, or an archive unpacked into a scratch
/// directory that is removed when this is dropped.
#[derive(Debug)]
pub struct OpenedBackup {
    /// The backup directory.
    pub dir: PathBuf,
    _unpacked: Option<ScratchDir>,
}

/// Opens a backup directory or archive (`.tar.gz`, `.tar.gz.age`) for reading, shared by
/// `verify` and `restore`. An archive is checked against its `.sha256` when one is beside it,
/// and unpacked from its own bytes only: every member a regular file or directory inside the
/// scratch directory, one top-level directory. `None` when the archive is unusable; every
/// check that did not hold is pushed to `findings`.
///
/// # Errors
/// When `path` does not exist, or the archive cannot be read or unpacked for a reason that is
/// not the archive's (no scratch directory).
pub async fn open_backup(
    path: &Path,
    decryption: Option<&DecryptionKey>,
    findings: &mut Vec<Finding>,
) -> Result<Option<OpenedBackup>, BackupError> {
    if path.is_dir() {
        return Ok(Some(OpenedBackup {
            dir: path.to_path_buf(),
            _unpacked: None,
        }));
    }
    if !path.is_file() {
        return Err(BackupError::NotABackup {
            path: path.to_path_buf(),
            detail: "no such file or directory".to_owned(),
        });
    }
    let sidecar = PathBuf::from(format!("{}.sha256", path.display()));
    if sidecar.exists() {
        let text = std::fs::read_to_string(&sidecar).map_err(BackupError::io("read", &sidecar))?;
        let expected = text.split_whitespace().next().unwrap_or("").to_owned();
        let (_, found) = sha256_file(path).await?;
        if found != expected {
            findings.push(finding(
                format!("archive {} sha256", path.display()),
                expected,
                found,
            ));
        }
    }
    let scratch = ScratchDir::new("harness-verify-", "unpacked backup").map_err(
        BackupError::io("create a scratch directory in", std::env::temp_dir()),
    )?;
    let (archive, into, key) = (
        path.to_path_buf(),
        scratch.path().to_path_buf(),
        decryption.cloned(),
    );
    let unpacked =
        tokio::task::spawn_blocking(move || unpack_archive(&archive, &into, key.as_ref()))
            .await
            .expect("unpack task does not panic");
    match unpacked {
        Ok(top) => Ok(Some(OpenedBackup {
            dir: top,
            _unpacked: Some(scratch),
        })),
        Err(detail) => {
            findings.push(finding(
                format!("archive {}", path.display()),
                "a complete archive",
                detail,
            ));
            Ok(None)
        }
    }
}

/// The checks of a backup directory that come before any of its data is read, shared by
/// `verify` and `restore`: it is a completed backup (not `.partial`, no `FAILED.txt`), its
/// manifest matches `MANIFEST.json.sha256`, and the manifest is readable. Returns the manifest
/// when it could be read; every check that did not hold is pushed to `findings`.
pub(crate) fn check_manifest(dir: &Path, findings: &mut Vec<Finding>) -> Option<Manifest> {
    if dir.extension().is_some_and(|e| e == "partial") {
        findings.push(finding(
            "backup state",
            "a completed backup",
            "an incomplete .partial backup",
        ));
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("FAILED.txt")) {
        findings.push(finding(
            "backup state",
            "a completed backup",
            format!(
                "a failed backup (FAILED.txt: {})",
                text.lines().next().unwrap_or("").trim()
            ),
        ));
    } else if dir.join("FAILED.txt").exists() {
        findings.push(finding(
            "backup state",
            "a completed backup",
            "a failed backup (FAILED.txt present)",
        ));
    }
    match (
        std::fs::read_to_string(dir.join(MANIFEST_SHA256)),
        std::fs::read(dir.join(MANIFEST_JSON)),
    ) {
        (Ok(text), Ok(json)) => {
            let expected = text.split_whitespace().next().unwrap_or("").to_owned();
            let found = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&json));
            if expected != found {
                findings.push(finding(
                    format!("{MANIFEST_JSON} sha256 (edited manifest)"),
                    expected,
                    found,
                ));
            }
        }
        (Err(err), _) => findings.push(finding(MANIFEST_SHA256, "present", err.to_string())),
        (_, Err(err)) => findings.push(finding(MANIFEST_JSON, "present", err.to_string())),
    }
    match Manifest::read(dir) {
        Ok(m) => Some(m),
        Err(err) => {
            findings.push(finding(
                MANIFEST_JSON,
                "a readable manifest",
                err.to_string(),
            ));
            None
        }
    }
}

/// Checks the size and SHA-256 of the manifest's files against the manifest: all of them, and
/// no file beside them, when `only` is `None`; else exactly the files in `only` (relative
/// paths), each of which must be listed in the manifest. Returns how many files were read.
///
/// # Errors
/// Only when a file that exists cannot be read (a finding cannot be made about it).
pub(crate) async fn check_files(
    dir: &Path,
    manifest: &Manifest,
    only: Option<&[String]>,
    findings: &mut Vec<Finding>,
) -> Result<usize, BackupError> {
    let mut checked = 0;
    if let Some(only) = only {
        for rel in only {
            if !manifest.files.iter().any(|e| e.path == *rel) {
                findings.push(finding(
                    format!("file {rel}"),
                    "listed in the manifest",
                    "not listed",
                ));
            }
        }
    }
    let selected = manifest
        .files
        .iter()
        .filter(|e| only.is_none_or(|only| only.contains(&e.path)));
    for entry in selected {
        let file = dir.join(&entry.path);
        // A symlink could point at anything: a backup's files are regular files.
        let regular = std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_file());
        if !regular {
            let found = if file.exists() {
                "not a regular file"
            } else {
                "missing"
            };
            findings.push(finding(format!("file {}", entry.path), "present", found));
            continue;
        }
        let (size, sha256) = sha256_file(&file).await?;
        checked += 1;
        if size != entry.size {
            findings.push(finding(
                format!("file {} size", entry.path),
                entry.size.to_string(),
                size.to_string(),
            ));
        } else if sha256 != entry.sha256 {
            findings.push(finding(
                format!("file {} sha256", entry.path),
                entry.sha256.clone(),
                sha256,
            ));
        }
    }
    if only.is_none() {
        for rel in list_files(dir)? {
            if !manifest.files.iter().any(|e| e.path == rel) && rel != "FAILED.txt" {
                findings.push(finding(
                    format!("file {rel}"),
                    "not in the backup",
                    "present",
                ));
            }
        }
    }
    Ok(checked)
}

/// Compares the manifest's tables with the restored ones through the row-count and digest
/// gates of [`crate::verify`]; returns how many tables were compared.
pub(crate) fn compare_tables(
    expected: &[TableFacts],
    found: &[TableFacts],
    findings: &mut Vec<Finding>,
) -> usize {
    use crate::verify::FindingKind;
    let compared = expected
        .iter()
        .filter(|t| {
            found
                .iter()
                .any(|f| f.schema == t.schema && f.name == t.name)
        })
        .count();
    let counts = crate::verify::row_counts(expected, found);
    let digests = crate::verify::digests(expected, found);
    let structural =
        |kind: FindingKind| matches!(kind, FindingKind::Missing | FindingKind::Unexpected);
    for (what, f) in counts.findings.iter().map(|f| ("rows", f)).chain(
        digests
            .findings
            .iter()
            .filter(|f| !structural(f.kind))
            .map(|f| ("digest", f)),
    ) {
        let (check, expected, found) = match f.kind {
            FindingKind::Missing => (
                format!("table {}", f.subject),
                "restored".to_owned(),
                "missing".to_owned(),
            ),
            FindingKind::Unexpected => (
                format!("table {}", f.subject),
                "not in the backup".to_owned(),
                "present".to_owned(),
            ),
            _ => (
                format!("table {} {what}", f.subject),
                f.expected.clone().unwrap_or_default(),
                f.actual
                    .clone()
                    .map(|a| format!("{a} ({})", f.detail))
                    .unwrap_or_else(|| f.detail.clone()),
            ),
        };
        findings.push(finding(check, expected, found));
    }
    compared
}

static SCRATCH_COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Restores a custom dump into a new database on the scratch server and reads its table
/// facts; the database is dropped afterwards. `Ok(Err(..))` is a failed restore (a finding).
async fn restore_and_observe(
    dump: &Path,
    version: DigestVersion,
    options: &VerifyOptions,
) -> Result<Result<Restored, String>, BackupError> {
    let n = SCRATCH_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let db = format!("rr_verify_{}_{n}", std::process::id());
    crate::pg::create_database(&options.scratch, &db)
        .await
        .map_err(BackupError::pg("create the scratch database"))?;
    let result = restore_into(
        dump,
        &options.scratch.with_dbname(&db),
        &options.tools,
        version,
    )
    .await;
    let admin = options
        .scratch
        .connect()
        .await
        .map_err(BackupError::pg("connect to the scratch server"))?;
    let _ = admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&db)
        ))
        .await;
    result
}

/// What a restored database holds, observed as the backup observed its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// Row counts and digests.
    pub tables: Vec<TableFacts>,
    /// Sequences.
    pub sequences: Vec<crate::facts::SequenceFacts>,
    /// The normalised schema rendering.
    pub schema: String,
}

/// Restores `dump` into the (empty) database of `target` with pg_restore and observes its
/// tables (digests by the definition `version`, the backup's), sequences and schema.
///
/// # Errors
/// `Err` when the server cannot be reached; `Ok(Err(..))` when pg_restore fails.
pub async fn restore_into(
    dump: &Path,
    target: &ConnParams,
    tools: &PgTools,
    version: DigestVersion,
) -> Result<Result<Restored, String>, BackupError> {
    let pg_restore = tools
        .tool("pg_restore")
        .map_err(BackupError::pg("find pg_restore"))?;
    let run = ToolRun::new(
        "pg_restore",
        pg_restore,
        format!("restoring {}", dump.display()),
    )
    .args([
        "--exit-on-error".to_owned(),
        "--no-owner".to_owned(),
        "--no-privileges".to_owned(),
        "--jobs=2".to_owned(),
        "-d".to_owned(),
        target.dbname.clone(),
        dump.display().to_string(),
    ])
    .envs(target.libpq_env());
    if let Err(err) = run.output().await {
        return Ok(Err(tail(&err.to_string(), 6)));
    }
    let client = target
        .connect()
        .await
        .map_err(BackupError::pg("connect to the restored database"))?;
    let tables = table_facts_as(&client, version).await?;
    let sequences = crate::facts::sequence_facts(&client).await?;
    let schema = crate::facts::render_schema(&client).await?;
    Ok(Ok(Restored {
        tables,
        sequences,
        schema,
    }))
}
