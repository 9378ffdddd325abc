//! Private files and directories, and streaming SHA-256. Local tools run through
//! `crate::process::ToolRun`, re-exported here for the backup's modules.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

pub(crate) use crate::process::{ToolRun, cause_lines, tail, tool_version};

use super::BackupError;

/// Creates `path` (not its parents) with mode 0700. Fails when it exists.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                BackupError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                BackupError::Io {
                    action: "create directory",
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    // The umask may have narrowed the mode further; make it exactly 0700.
    crate::keep::set_private_dir(path).map_err(BackupError::io("chmod", path))
}

/// Creates `dir/rel`'s parent directories (0700) inside `dir`.
pub(crate) fn ensure_parent(dir: &Path, rel: &str) -> Result<PathBuf, BackupError> {
    let path = dir.join(rel);
    let mut current = dir.to_path_buf();
    if let Some(parent) = Path::new(rel).parent() {
        for part in parent.components() {
            current.push(part);
            if !current.exists() {
                create_private_dir(&current)?;
            }
        }
    }
    Ok(path)
}

/// Creates a new file with mode 0600 from the start (truncating an existing one).
pub(crate) fn create_private_file(path: &Path) -> Result<std::fs::File, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(BackupError::io("create", path))?;
    crate::keep::set_private_file(path).map_err(BackupError::io("chmod", path))?;
    Ok(file)
}

/// Runs `run` with its standard output going into a new private (0600) file at `out`.
pub(crate) async fn to_private_file(run: &ToolRun, out: &Path) -> Result<(), BackupError> {
    let file = create_private_file(out)?;
    Ok(run.to_file(file, out).await?)
}

/// Writes a whole small file with mode 0600.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), BackupError> {
    use std::io::Write;
    let mut file = create_private_file(path)?;
    file.write_all(contents)
        .map_err(BackupError::io("write", path))?;
    file.sync_all().map_err(BackupError::io("sync", path))
}

/// Size and hex SHA-256 of a file, read in 1 MiB pieces.
pub(crate) async fn sha256_file(path: &Path) -> Result<(u64, String), BackupError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(BackupError::io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(BackupError::io("read", path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}
