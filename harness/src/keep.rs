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
///
/// Next to the directory `<dir>.owner` records the owning process (pid and start time), so
/// that what a SIGKILL left behind is recognised and removed by a later run ([`sweep_stale`],
/// called once per process before its first scratch directory is made). The record is outside
/// the directory because some users need it to hold nothing but their own files (an unpacked
/// archive must contain exactly one directory).
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    what: &'static str,
    armed: bool,
}

impl ScratchDir {
    /// Creates a new directory under the system temp dir (`$TMPDIR`, else `/tmp`), named after
    /// `prefix`, after sweeping stale scratch directories there once per process.
    ///
    /// # Errors
    /// Fails when the directory or its owner record cannot be created.
    pub fn new(prefix: &str, what: &'static str) -> std::io::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::DirBuilderExt;
        sweep_stale_once();
        // The owner record first, complete, then the directory: a process killed at any point
        // leaves at most a record the sweep understands, never a directory without one.
        for _ in 0..16 {
            let (mut file, record) = tempfile::Builder::new()
                .prefix(prefix)
                .suffix(OWNER_SUFFIX)
                .tempfile()?
                .keep()
                .map_err(|err| err.error)?;
            let written = file
                .write_all(OwnerId::current().render().as_bytes())
                .and_then(|()| file.sync_all());
            if let Err(err) = written {
                remove_file_if_present(&record)?;
                return Err(err);
            }
            // The record is `<prefix><random>.owner`: the directory is the same without suffix.
            let name = record.file_name().unwrap_or_default().to_string_lossy();
            let path = record.with_file_name(name.strip_suffix(OWNER_SUFFIX).unwrap_or(&name));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(err) => {
                    remove_file_if_present(&record)?;
                    if err.kind() == std::io::ErrorKind::AlreadyExists {
                        continue;
                    }
                    return Err(err);
                }
            }
            created().push(path.clone());
            let dir = Self {
                path,
                what,
                armed: true,
            };
            // On an error `dir` is dropped, which removes the directory and the record again.
            set_private_dir(&dir.path)?;
            return Ok(dir);
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("no free scratch directory name with prefix {prefix}"),
        ))
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory now, even with [`keep_requested`] ("destroy means destroy"),
    /// retrying briefly while the last writers of killed processes finish. The owner record
    /// goes last, so a directory that could not be removed is swept by a later run.
    ///
    /// # Errors
    /// The error of the last removal attempt.
    pub fn remove(mut self) -> std::io::Result<()> {
        self.armed = false;
        remove_scratch(&self.path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if keep_requested() {
            created().retain(|p| p != &self.path);
            // Kept on purpose: without its owner record no sweep will take it.
            if let Err(err) = remove_file_if_present(&owner_record(&self.path)) {
                eprintln!(
                    "warning: could not remove the owner record of {}: {err}",
                    self.path.display()
                );
            }
            eprintln!("{KEEP_ENV}: kept {} at {}", self.what, self.path.display());
        } else if let Err(err) = remove_scratch(&self.path) {
            eprintln!(
                "warning: could not remove {} at {}: {err} (a later run removes it)",
                self.what,
                self.path.display()
            );
        }
    }
}

/// Every scratch directory this process made (and did not keep on purpose).
fn created() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    static CREATED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    CREATED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes what is left of this process's scratch directories, for the last moment of an
/// interrupted run: a blocking task that could not be cancelled (an archive being unpacked)
/// may have written into a directory again after its guard removed it. Directories kept with
/// `HARNESS_KEEP` are not touched.
pub fn remove_leftovers() {
    if keep_requested() {
        return;
    }
    let paths = std::mem::take(&mut *created());
    for path in paths {
        if (path.exists() || owner_record(&path).exists())
            && let Err(err) = remove_scratch(&path)
        {
            eprintln!(
                "warning: could not remove {}: {err} (a later run removes it)",
                path.display()
            );
        }
    }
}

/// The suffix of the owner record kept next to every scratch directory (`<dir>.owner`).
pub const OWNER_SUFFIX: &str = ".owner";

/// The owner record of scratch directory `dir`.
pub fn owner_record(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(OWNER_SUFFIX);
    dir.with_file_name(name)
}

/// Removes a scratch directory (retrying while killed writers finish), then its owner record.
fn remove_scratch(path: &Path) -> std::io::Result<()> {
    let mut attempts = 0;
    loop {
        match std::fs::remove_dir_all(path) {
            Ok(()) => break,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
            Err(_) if attempts < 20 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(err) => return Err(err),
        }
    }
    remove_file_if_present(&owner_record(path))
}

fn remove_file_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// A process, by pid and start time (clock ticks after boot, from `/proc/<pid>/stat`): a pid
/// alone could have been reused by an unrelated process since. With its pid namespace, so that
/// a process in another namespace sharing the temp dir (a container) is never taken for gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerId {
    /// The process id.
    pub pid: i32,
    /// Its start time; 0 when unknown (then the pid alone decides).
    pub start: u64,
    /// Its pid namespace (the inode of `/proc/<pid>/ns/pid`); 0 when unknown.
    pub pid_ns: u64,
}

impl OwnerId {
    /// This process.
    pub fn current() -> Self {
        let pid = std::process::id() as i32;
        Self {
            pid,
            start: proc_stat(pid).map_or(0, |s| s.start),
            pid_ns: own_pid_namespace(),
        }
    }

    /// The record's text: `pid start pid_ns`.
    pub fn render(&self) -> String {
        format!("{} {} {}\n", self.pid, self.start, self.pid_ns)
    }

    /// Parses a record written by [`OwnerId::render`]; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok().filter(|&p: &i32| p > 0)?;
        let start = words.next()?.parse().ok()?;
        let pid_ns = words.next()?.parse().ok()?;
        words
            .next()
            .is_none()
            .then_some(Self { pid, start, pid_ns })
    }

    /// True while the process runs (a zombie has finished running), and whenever that cannot
    /// be told: an owner in another pid namespace counts as alive, so nothing of it is swept.
    pub fn alive(&self) -> bool {
        let ours = own_pid_namespace();
        if self.pid_ns != 0 && ours != 0 && self.pid_ns != ours {
            return true;
        }
        proc_stat(self.pid)
            .is_some_and(|s| s.state != 'Z' && (self.start == 0 || s.start == self.start))
    }
}

/// The inode of this process's pid namespace; 0 when `/proc` does not say.
fn own_pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

struct ProcStat {
    state: char,
    start: u64,
}

/// State and start time of a process from `/proc/<pid>/stat`; `None` when it does not exist.
fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses, so split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        // Field 22 of the whole line; the rest starts at field 3.
        start: fields.get(19)?.parse().ok()?,
    })
}

/// What [`sweep_stale`] removed: a scratch directory whose owner is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swept {
    /// The directory.
    pub dir: PathBuf,
    /// The process that owned it.
    pub owner: OwnerId,
    /// PostgreSQL servers still running on it, now stopped.
    pub servers_stopped: Vec<i32>,
}

fn sweep_stale_once() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        sweep_stale(&std::env::temp_dir());
    });
}

/// Removes the scratch directories under `root` whose owner process is gone (killed with
/// SIGKILL, say), after stopping a PostgreSQL server still running on one of them. Only
/// directories with an owner record owned by this user are considered; kept directories
/// (`HARNESS_KEEP`) have none. Each removal is logged; a failure is logged and retried by the
/// next sweep.
pub fn sweep_stale(root: &Path) -> Vec<Swept> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let uid = nix::unistd::geteuid().as_raw();
    let mut swept = Vec::new();
    for entry in entries.flatten() {
        let record = entry.path();
        let Some(name) = record.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(dir_name) = name.strip_suffix(OWNER_SUFFIX) else {
            continue;
        };
        if dir_name.is_empty()
            || !entry
                .metadata()
                .is_ok_and(|m| m.is_file() && m.uid() == uid)
        {
            continue;
        }
        let dir = root.join(dir_name);
        let Some(owner) = std::fs::read_to_string(&record)
            .ok()
            .and_then(|text| OwnerId::parse(&text))
        else {
            // A process killed between creating its record and writing it leaves an empty
            // record and no directory: nothing of anyone's is behind it, so it goes. (A live
            // process in that instant only loses the sweep of a later SIGKILL of its own.) A
            // record that cannot be read beside a directory is left: its owner cannot be told.
            if !dir.exists()
                && let Err(err) = remove_file_if_present(&record)
            {
                tracing::warn!(record = %record.display(), error = %err, "cannot remove an unreadable owner record");
            }
            continue;
        };
        if owner.alive() {
            continue;
        }
        if !dir.exists() {
            // Killed between writing the record and making the directory.
            if let Err(err) = remove_file_if_present(&record) {
                tracing::warn!(record = %record.display(), error = %err, "cannot remove a stale owner record");
            }
            continue;
        }
        let servers_stopped = stop_postgres_on(&dir);
        match remove_scratch(&dir) {
            Ok(()) => {
                tracing::warn!(
                    dir = %dir.display(),
                    owner_pid = owner.pid,
                    servers_stopped = ?servers_stopped,
                    "removed a scratch directory left behind by a process that is gone"
                );
                swept.push(Swept {
                    dir,
                    owner,
                    servers_stopped,
                });
            }
            Err(err) => tracing::warn!(
                dir = %dir.display(),
                owner_pid = owner.pid,
                error = %err,
                "cannot remove a scratch directory left behind by a process that is gone"
            ),
        }
    }
    swept
}

/// Stops the PostgreSQL servers whose data directory is `dir` or `dir/data` (as
/// `LocalPostgres` lays it out), found through `postmaster.pid` and confirmed by the process's
/// command line naming that data directory: immediate shutdown (SIGQUIT), then SIGKILL of its
/// process group after five seconds. Returns the pids stopped.
fn stop_postgres_on(dir: &Path) -> Vec<i32> {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let mut stopped = Vec::new();
    for data in [dir.to_path_buf(), dir.join("data")] {
        let Ok(text) = std::fs::read_to_string(data.join("postmaster.pid")) else {
            continue;
        };
        let mut lines = text.lines();
        let (Some(Ok(pid)), Some(data_dir)) = (lines.next().map(str::parse::<i32>), lines.next())
        else {
            continue;
        };
        let owner = OwnerId {
            pid,
            start: 0,
            pid_ns: 0,
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let names_data_dir = cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == data_dir.as_bytes());
        if pid <= 0 || !owner.alive() || !names_data_dir {
            continue;
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while owner.alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if owner.alive() {
            // The postmaster leads its own group (crate::process), backends included.
            if killpg(Pid::from_raw(pid), Signal::SIGKILL).is_err() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        stopped.push(pid);
    }
    stopped
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid of a process that has finished and been reaped: an owner that is gone.
    fn gone() -> OwnerId {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        OwnerId {
            pid: child.id() as i32,
            start: 0,
            pid_ns: 0,
        }
    }

    fn scratch_with_owner(root: &Path, name: &str, owner: Option<OwnerId>) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("data.bin"), b"left behind").unwrap();
        if let Some(owner) = owner {
            std::fs::write(owner_record(&dir), owner.render()).unwrap();
        }
        dir
    }

    #[test]
    fn sweep_removes_only_directories_whose_owner_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let stale = scratch_with_owner(root.path(), "harness-verify-stale", Some(gone()));
        let live = scratch_with_owner(root.path(), "harness-verify-live", Some(OwnerId::current()));
        // A pid that runs, but a different start time: the pid was reused, the owner is gone.
        let reused = scratch_with_owner(
            root.path(),
            "harness-pg-reused",
            Some(OwnerId {
                start: OwnerId::current().start + 1,
                ..OwnerId::current()
            }),
        );
        let unowned = scratch_with_owner(root.path(), "harness-pg-kept", None);
        // A gone pid, but in another pid namespace: it cannot be told, so it stays.
        let elsewhere = scratch_with_owner(
            root.path(),
            "harness-pg-container",
            Some(OwnerId {
                pid_ns: OwnerId::current().pid_ns + 1,
                ..gone()
            }),
        );
        // Killed between writing its record and making its directory: only the record is left.
        let lone_record = owner_record(&root.path().join("harness-pg-unborn"));
        std::fs::write(&lone_record, gone().render()).unwrap();
        // Killed between creating its record and writing it: an empty record, no directory.
        let empty_record = owner_record(&root.path().join("harness-verify-unwritten"));
        std::fs::write(&empty_record, "").unwrap();

        let swept = sweep_stale(root.path());

        let mut dirs: Vec<&Path> = swept.iter().map(|s| s.dir.as_path()).collect();
        dirs.sort();
        assert_eq!(dirs, [reused.as_path(), stale.as_path()]);
        assert!(!stale.exists() && !owner_record(&stale).exists());
        assert!(!reused.exists() && !owner_record(&reused).exists());
        assert!(
            live.exists() && owner_record(&live).exists(),
            "a live owner's directory stays"
        );
        assert!(
            unowned.exists(),
            "a directory without owner record (kept) stays"
        );
        assert!(!lone_record.exists(), "a lone stale record goes");
        assert!(
            !empty_record.exists(),
            "an empty record without a directory goes"
        );
        assert!(
            elsewhere.exists(),
            "another pid namespace's directory stays"
        );
    }

    #[test]
    fn a_scratch_dir_records_its_owner_and_takes_the_record_along() {
        let dir = ScratchDir::new("harness-keep-test-", "test directory").unwrap();
        let path = dir.path().to_path_buf();
        let record = std::fs::read_to_string(owner_record(&path)).unwrap();
        assert_eq!(OwnerId::parse(&record), Some(OwnerId::current()));
        assert!(OwnerId::current().alive());
        drop(dir);
        assert!(!path.exists(), "the directory is removed");
        assert!(!owner_record(&path).exists(), "and its owner record");
    }

    #[test]
    fn owner_records_parse_only_their_own_format() {
        let id = OwnerId {
            pid: 42,
            start: 777,
            pid_ns: 4026531836,
        };
        assert_eq!(OwnerId::parse(&id.render()), Some(id));
        for bad in ["", "42", "42 1", "x 1 1", "0 1 1", "-1 1 1", "42 1 1 extra"] {
            assert_eq!(OwnerId::parse(bad), None, "{bad:?}");
        }
        assert!(!gone().alive());
    }
}
