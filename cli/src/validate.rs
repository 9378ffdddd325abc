//! Validation before work: every option is checked before anything starts. Single values are
//! checked by clap value parsers (below, used in main.rs); rules that involve several options
//! or the file system state are checked by [`check`]. Both end in exit code 2 (usage) with a
//! message naming the option, before a cluster, a server or a directory is touched.

use std::path::{Path, PathBuf};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use scenarios::Rehearsal;

use crate::{Command, SimCommand};

/// A database size: a number (decimals allowed) and a unit, `kB`/`MB`/`GB`/`TB` (powers of
/// 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024), case-insensitive: `500MB`, `1GB`,
/// `2.5GiB`. The size must make a dataset (see `harness::data::DatasetSpec::sized`).
pub(crate) fn size(s: &str) -> Result<u64, String> {
    let bytes = size_bytes(s)?;
    harness::data::DatasetSpec::sized(0, bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// `--scenario`: a rehearsal's name, one of [`Rehearsal::ALL`]'s (which `--help` and the error
/// for any other value list).
pub(crate) fn scenario() -> impl TypedValueParser<Value = Rehearsal> {
    PossibleValuesParser::new(Rehearsal::ALL.map(Rehearsal::name))
        .map(|name| Rehearsal::from_name(&name).expect("a possible value names a rehearsal"))
}

/// A database size to forecast for: as [`size`], any size from 1 MB.
pub(crate) fn any_size(s: &str) -> Result<u64, String> {
    let bytes = size_bytes(s)?;
    if bytes < 1_000_000 {
        return Err(format!("{s:?} is smaller than 1 MB"));
    }
    Ok(bytes)
}

fn size_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit: write e.g. 500MB or 1GB"))?;
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number: write e.g. 500MB or 1GB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use kB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    let bytes = number * scale;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    if bytes < 1.0 {
        return Err(format!("{s:?} is no size at all: write e.g. 500MB or 1GB"));
    }
    Ok(bytes.round() as u64)
}

/// A rehearsal's report: its directory (holding `report.json`) or the file, which must parse.
/// Returns the file.
pub(crate) fn report_json(s: &str) -> Result<PathBuf, String> {
    let given = PathBuf::from(s);
    let file = if given.is_dir() {
        given.join("report.json")
    } else {
        given
    };
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    serde_json::from_str::<harness::report::Report>(&text)
        .map_err(|e| format!("{} is not a rehearsal's report.json: {e}", file.display()))?;
    Ok(file)
}

/// A file to be created: it must not exist, and its directory must.
pub(crate) fn new_file(s: &str) -> Result<PathBuf, String> {
    let path = output_file(s)?;
    if path.exists() {
        return Err(format!("{s} exists (it is never overwritten)"));
    }
    Ok(path)
}

/// A Kubernetes namespace: an RFC 1123 label (lowercase letters, digits, `-`, at most 63).
pub(crate) fn namespace(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 63 {
        return Err("a namespace has 1 to 63 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || s.starts_with('-')
        || s.ends_with('-')
    {
        return Err(
            "a namespace is lowercase letters, digits and '-', starting and ending with a letter or digit"
                .into(),
        );
    }
    Ok(s.to_owned())
}

/// A Kubernetes object name (pod, deployment): an RFC 1123 subdomain.
pub(crate) fn object_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 253 {
        return Err("an object name has 1 to 253 characters".into());
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !s.split('.').all(ok_label) {
        return Err(
            "an object name is lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit"
                .into(),
        );
    }
    Ok(s.to_owned())
}

/// A label value (`app=VALUE`): at most 63 of letters, digits, `-`, `_`, `.`, alphanumeric at
/// both ends.
pub(crate) fn label_value(s: &str) -> Result<String, String> {
    let alnum_ends = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if s.is_empty()
        || s.len() > 63
        || !alnum_ends
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(
            "a label value has 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                .into(),
        );
    }
    Ok(s.to_owned())
}

/// A PostgreSQL database or user name: 1 to 63 bytes (longer names are silently truncated by
/// the server), no NUL.
pub(crate) fn pg_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 63 || s.contains('\0') {
        return Err("a PostgreSQL name has 1 to 63 bytes and no NUL".into());
    }
    Ok(s.to_owned())
}

/// A host name or address: not empty, no whitespace or NUL.
pub(crate) fn host(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err("a host is a name or an address without spaces".into());
    }
    Ok(s.to_owned())
}

/// A kubeconfig context name: not empty.
pub(crate) fn context(s: &str) -> Result<String, String> {
    if s.trim().is_empty() || s.contains('\0') {
        return Err("a context name is not empty".into());
    }
    Ok(s.to_owned())
}

/// A backup name: one path component, the harness's own rule.
pub(crate) fn backup_name(s: &str) -> Result<String, String> {
    harness::backup::check_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// A simulated cluster name: the simulator's rule (lowercase letters, digits, `-`, at most
/// 50), which also keeps it a single path component under the sim home.
pub(crate) fn sim_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 50
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        return Err(
            "a cluster name is 1 to 50 lowercase letters, digits and '-', not starting or ending with '-'"
                .into(),
        );
    }
    Ok(s.to_owned())
}

/// An age recipient, parsed the way the backup will parse it (x25519, `age1...`).
pub(crate) fn age_recipient(s: &str) -> Result<String, String> {
    s.parse::<age::x25519::Recipient>()
        .map_err(|e| format!("not an age x25519 recipient (age1...): {e}"))?;
    Ok(s.to_owned())
}

/// A path that must name an existing regular file (or a link to one).
pub(crate) fn existing_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(format!("{s} is not a regular file")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

/// A passphrase file: readable, with a passphrase on its first line.
pub(crate) fn passphrase_file(s: &str) -> Result<PathBuf, String> {
    let path = existing_file(s)?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{s}: {e}"))?;
    if text.lines().next().is_none_or(|l| l.trim().is_empty()) {
        return Err(format!("{s}: the first line (the passphrase) is empty"));
    }
    Ok(path)
}

/// A path that must name an existing directory.
pub(crate) fn existing_dir(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(format!("{s} is not a directory")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

/// A path that must exist (a backup directory or archive).
pub(crate) fn existing_path(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match std::fs::metadata(&path) {
        Ok(_) => Ok(path),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

/// What `restore` reads: a backup directory, or a `.tar.gz` archive of one. Anything else is a
/// usage error here, before a server or cluster is asked anything.
pub(crate) fn backup_dir_or_archive(s: &str) -> Result<PathBuf, String> {
    let path = existing_path(s)?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(m) if m.is_file() && s.ends_with(".tar.gz") => Ok(path),
        Ok(_) => Err(format!(
            "{s} is neither a backup directory nor a .tar.gz archive"
        )),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

/// A moment for `--to-time`: RFC 3339 with a time zone (`2026-12-03T06:10:00Z`,
/// `2026-12-03T15:10:00+09:00`).
pub(crate) fn rfc3339(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            format!("{s:?} is not an RFC 3339 time with a zone (2026-12-03T06:10:00Z): {e}")
        })
}

/// A WAL position for `--to-lsn` (`0/3000148`).
pub(crate) fn lsn(s: &str) -> Result<harness::pitr::Lsn, String> {
    s.parse()
}

/// A directory that is created when missing: it must not be an existing non-directory.
pub(crate) fn dir_or_missing(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if s.is_empty() {
        return Err("the path is empty".into());
    }
    match std::fs::metadata(&path) {
        Ok(m) if !m.is_dir() => Err(format!("{s} exists and is not a directory")),
        _ => Ok(path),
    }
}

/// A file to be written: not a directory, and its directory exists.
pub(crate) fn output_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if path.is_dir() {
        return Err(format!("{s} is a directory"));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(format!("{} is not an existing directory", parent.display()));
    }
    Ok(path)
}

/// `--k8s-bin` only with `--provider local`; with it, the binaries it finds (given, or by
/// default) must all be there.
fn k8s_bin(provider: &str, given: Option<&Path>) -> Result<(), String> {
    match (provider, given) {
        ("local", given) => harness::cluster::local::bin_dir(given)
            .map(|_| ())
            .map_err(|e| format!("--provider local: {e}")),
        (_, Some(_)) => Err(format!(
            "--k8s-bin applies only to --provider local (the provider is {provider})"
        )),
        (_, None) => Ok(()),
    }
}

/// The rules across the provider options of `run` and `runbook`.
fn providers(args: &crate::ProviderArgs) -> Result<(), String> {
    k8s_bin(&args.provider, args.k8s_bin.as_deref())?;
    if args.provider != "kubeconfig" {
        for (given, option) in [
            (args.kubeconfig.is_some(), "--kubeconfig"),
            (args.context.is_some(), "--context"),
            (args.allow_destroy, "--allow-destroy"),
        ] {
            if given {
                return Err(format!(
                    "{option} applies only to --provider kubeconfig (the provider is {})",
                    args.provider
                ));
            }
        }
    }
    if !matches!(args.provider.as_str(), "kubeconfig" | "local") && !args.kind_config.is_file() {
        return Err(format!(
            "--kind-config {}: no such file (run from the repository root, or give its path)",
            args.kind_config.display()
        ));
    }
    Ok(())
}

/// Cross-option and file-system rules, checked after parsing and before any work.
///
/// # Errors
/// A message naming the option(s) at fault.
pub(crate) fn check(command: &Command) -> Result<(), String> {
    match command {
        Command::Run(args) => {
            if let Some(dir) = &args.report {
                report_dir_is_new(dir)?;
            }
            providers(&args.clusters)
        }
        Command::Runbook(args) => {
            if let Some(dir) = &args.report {
                report_dir_is_new(dir)?;
            }
            providers(&args.clusters)?;
            // The document is read and its sections matched before anything starts.
            let blocks = harness::runbook::parse_file(&args.file).map_err(|e| e.to_string())?;
            harness::runbook::select(blocks, args.from.as_deref(), args.only.as_deref())
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        Command::Backup(args) => {
            if let Some(name) = &args.name {
                let existing = [name.clone(), format!("{name}.partial")]
                    .into_iter()
                    .map(|n| args.out.join(n))
                    .find(|p| p.exists());
                if let Some(path) = existing {
                    return Err(format!(
                        "--name {name}: {} already exists; choose another name",
                        path.display()
                    ));
                }
            }
            if args.offsite_dir.iter().any(|d| d == &args.out) {
                return Err(
                    "--offsite-dir must be another directory than --out (an off-site copy beside the backup protects nothing)"
                        .into(),
                );
            }
            Ok(())
        }
        Command::Restore(args) => {
            let archive = args.backup.join(harness::pitr::MANIFEST);
            match (args.pitr_target(), archive.is_file()) {
                (Some(_), false) => Err(format!(
                    "--to-time, --to-lsn and --to-latest need a PITR archive: {} has no {}",
                    args.backup.display(),
                    harness::pitr::MANIFEST
                )),
                (Some(_), true) if args.from_sql || args.method != crate::MethodArg::Custom => {
                    Err("--from-sql and --method restore a dump; they do not apply with --to-time, --to-lsn or --to-latest".into())
                }
                (None, true) => Err(format!(
                    "{} is a PITR archive: give --to-time, --to-lsn or --to-latest",
                    args.backup.display()
                )),
                _ => Ok(()),
            }
        }
        Command::Verify(args) => {
            let encrypted = args.backup.to_string_lossy().ends_with(".age");
            let key = args.passphrase_file.is_some() || args.identity.is_some();
            if encrypted && !key {
                return Err(format!(
                    "{} is encrypted: give --passphrase-file or --identity",
                    args.backup.display()
                ));
            }
            if !encrypted && key {
                return Err(format!(
                    "--passphrase-file / --identity apply only to an encrypted archive (.tar.gz.age), not {}",
                    args.backup.display()
                ));
            }
            Ok(())
        }
        Command::Sim(SimCommand::Up { users, posts, .. }) if *users == 0 && *posts > 0 => Err(
            format!("--posts {posts} needs --users of at least 1: every post has an author"),
        ),
        _ => Ok(()),
    }
}

/// `--report DIR` must not hold an earlier run: a report (PASS or not) is never overwritten.
/// An empty directory or a missing one is fine.
fn report_dir_is_new(dir: &Path) -> Result<(), String> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(format!(
                "--report {}: the directory is not empty (it may hold an earlier run's report, which is never overwritten); give a new or empty directory",
                dir.display()
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("--report {}: {e}", dir.display())),
    }
}

/// Creates the report directory for a run: the given one (refused when it is not empty, checked
/// again here in case it filled since validation), else a new `target/rehearsal/<timestamp>/`
/// (with a `-N` suffix when two runs start in the same second).
///
/// # Errors
/// It cannot be created, or it holds an earlier run.
pub(crate) fn create_report_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    let create = |dir: &Path| -> std::io::Result<()> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::create_dir(dir)
    };
    match given {
        Some(dir) => match create(dir) {
            Ok(()) => Ok(dir.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                report_dir_is_new(dir).map_err(anyhow::Error::msg)?;
                Ok(dir.to_path_buf())
            }
            Err(e) => Err(e).with_context(|| format!("create {}", dir.display())),
        },
        None => {
            let base = PathBuf::from("target/rehearsal")
                .join(chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string());
            for n in 1..100 {
                let dir = if n == 1 {
                    base.clone()
                } else {
                    PathBuf::from(format!("{}-{n}", base.display()))
                };
                match create(&dir) {
                    Ok(()) => return Ok(dir),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e).with_context(|| format!("create {}", dir.display())),
                }
            }
            anyhow::bail!("{}-N: no free report directory name", base.display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_name_parses_to_its_rehearsal() {
        use clap::Parser as _;
        use scenarios::full_rebuild::Scenario;
        for rehearsal in Rehearsal::ALL {
            let args = ["rehearsal", "run", "--scenario", rehearsal.name()];
            let cli = crate::Cli::try_parse_from(args).expect("a scenario's name parses");
            let Command::Run(run) = cli.command else {
                panic!("{args:?} is not `run`");
            };
            assert_eq!(run.scenario, rehearsal);
        }
        let cli = crate::Cli::try_parse_from(["rehearsal", "run"]).expect("no --scenario parses");
        let Command::Run(run) = cli.command else {
            panic!("not `run`");
        };
        assert_eq!(run.scenario, Rehearsal::Rebuild(Scenario::FullRebuild));
        let err = crate::Cli::try_parse_from(["rehearsal", "run", "--scenario", "full-rebuild"])
            .expect_err("only the listed spellings parse");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(namespace("titanium-prod").is_ok());
        for bad in ["", "Titanium", "a/b", "-a", "a-", &"a".repeat(64)] {
            assert!(namespace(bad).is_err(), "{bad:?}");
        }
        assert!(object_name("postgresql-0").is_ok());
        assert!(object_name("a.b-c").is_ok());
        for bad in ["", "a..b", "A", "a/b", ".a"] {
            assert!(object_name(bad).is_err(), "{bad:?}");
        }
        assert!(label_value("redis").is_ok());
        assert!(label_value("a_b.C").is_ok());
        assert!(label_value("-x").is_err());
    }

    #[test]
    fn sizes_parse_in_both_unit_systems_and_must_make_a_dataset() {
        assert_eq!(size("1GB"), Ok(1_000_000_000));
        assert_eq!(size("500mb"), Ok(500_000_000));
        assert_eq!(size("2.5GiB"), Ok(2_684_354_560));
        assert_eq!(size(" 64 MiB "), Ok(64 * 1024 * 1024));
        for bad in ["", "1", "GB", "1.2.3GB", "1XB", "-1GB", "0GB", "1kB", "1TB"] {
            assert!(size(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(size("1XB").unwrap_err().contains("unknown unit"));
        assert!(size("1kB").unwrap_err().contains("smaller than"));
        assert!(size("1TB").unwrap_err().contains("more than"));
        assert!(size("0GB").unwrap_err().contains("no size at all"));
        assert!(
            any_size("99999999999999999999TB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn report_dirs_holding_a_run_are_refused_and_defaults_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(report_dir_is_new(&empty).is_ok());
        assert!(report_dir_is_new(&dir.path().join("missing")).is_ok());
        std::fs::write(empty.join("report.json"), "{}").unwrap();
        assert!(report_dir_is_new(&empty).is_err());
        assert!(create_report_dir(Some(&empty)).is_err());
        let nested = dir.path().join("a/b");
        assert_eq!(create_report_dir(Some(&nested)).unwrap(), nested);
    }
}
