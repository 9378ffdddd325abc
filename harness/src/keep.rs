//! The one escape hatch for teardown: `HARNESS_KEEP=1` leaves clusters, servers and
//! directories in place for debugging, and says where they are.

use std::path::{Path, PathBuf};

/// The environment variable that keeps resources after a test or rehearsal.
pub const KEEP_ENV: &str = "HARNESS_KEEP";

static KEEP_FLAG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when the user asked to keep resources (`HARNESS_KEEP=1`, `true` or `yes`, or a
/// command-line `--keep` through [`request_keep`]).
pub fn keep_requested() -> bool {
    KEEP_FLAG.load(std::sync::atomic::Ordering::Relaxed)
        || std::env::var(KEEP_ENV)
            .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
            .unwrap_or(false)
}

/// Keeps resources for the rest of this process, as `HARNESS_KEEP=1` does (the CLI's `--keep`).
pub fn request_keep() {
    KEEP_FLAG.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A private temporary directory (mode 0700) that is removed on drop unless
/// [`keep_requested`] is true, in which case its path is printed to stderr.
#[derive(Debug)]
pub struct ScratchDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    what: &'static str,
}

impl ScratchDir {
    /// Creates a new directory under the system temp dir, named after `prefix`.
    ///
    /// # Errors
    /// Fails when the directory cannot be created.
    pub fn new(prefix: &str, what: &'static str) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        set_private_dir(dir.path())?;
        let path = dir.path().to_path_buf();
        Ok(Self {
            dir: Some(dir),
            path,
            what,
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if keep_requested() {
                let kept = dir.keep();
                eprintln!("{KEEP_ENV}: kept {} at {}", self.what, kept.display());
            } else if let Err(err) = dir.close() {
                eprintln!(
                    "warning: could not remove {} at {}: {err}",
                    self.what,
                    self.path.display()
                );
            }
        }
    }
}

/// Sets a directory's mode to 0700.
///
/// # Errors
/// Fails when the permissions cannot be changed.
pub fn set_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Sets a file's mode to 0600.
///
/// # Errors
/// Fails when the permissions cannot be changed.
pub fn set_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Writes `contents` to a new file created with mode 0600 from the start, so a secret is never
/// readable by others, not even for a moment.
///
/// # Errors
/// Fails when the file cannot be created or written.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
