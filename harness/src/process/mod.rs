//! Child processes that cannot outlive the harness: every server and tool the harness starts
//! (PostgreSQL, initdb, pg_restore, pg_dump, psql) leads its own process group and receives
//! SIGKILL when the harness process dies, even by SIGKILL.
//!
//! How, without `unsafe` (no `pre_exec` + `prctl`): the program runs under util-linux
//! `setpriv --pdeathsig KILL -- program args`, which sets `PR_SET_PDEATHSIG` and then `exec`s
//! the program (same pid, so signals and `wait` reach the program itself).
//!
//! The kernel sends the parent-death signal when the *thread* that forked the child exits, not
//! the process. Tokio's blocking-pool threads exit after ten idle seconds, and a test's thread
//! ends with the test, so a child forked from one of them would be killed early. Every child is
//! therefore forked by one dedicated thread, `harness-spawner`, which lives as long as the
//! process: the signal fires exactly when the process goes away.
//!
//! Grandchildren (PostgreSQL backends, pg_restore's `--jobs` workers) are not covered by the
//! parent-death signal; they sit in the child's process group, which teardown kills as a whole,
//! and they exit on their own when their parent dies (PostgreSQL backends watch the postmaster,
//! pg_restore workers read their leader's pipe). What a SIGKILL still leaves on disk is swept
//! by the next run (see [`crate::keep`]), which also stops a PostgreSQL server that escaped
//! (the harness killed in the instant between the fork and setpriv's `prctl`).

mod affinity;
mod tool;

use affinity::pin_process_to_background;
pub use affinity::{pin_to_background, restore_affinity};
pub(crate) use tool::read_kept;
pub use tool::{ToolError, ToolRun, ToolStream, cause_lines, file_tail, tail, tool_version};

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// The signal a child receives when the harness dies.
const PDEATHSIG: &str = "KILL";

/// `setpriv`, found once. `None` when it is missing (not Linux, no util-linux): children then
/// still lead their own process group, but a SIGKILL of the harness leaves them running until
/// the next run's sweep; a warning says so once.
fn setpriv() -> Option<&'static PathBuf> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let found = which::which("setpriv").ok();
            if found.is_none() {
                tracing::warn!(
                    "setpriv (util-linux) not found: child processes will not be killed if this \
                     process is killed with SIGKILL"
                );
            }
            found
        })
        .as_ref()
}

/// The peak resident set of this process since it started (Linux `VmHWM`), in bytes: the
/// memory a rehearsal's own process needed, its children (servers, tools, simulated pods) not
/// included.
///
/// # Errors
/// When `/proc/self/status` cannot be read or holds no `VmHWM` line in kB.
pub fn own_peak_rss() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "/proc/self/status has no VmHWM line in kB",
            )
        })
}

/// A command for `program` that leads its own process group and dies with the harness. Spawn
/// it with [`spawn`] (not `Command::spawn`/`output`/`status`), so that the long-lived spawner
/// thread is its parent.
pub fn command(program: impl AsRef<OsStr>) -> std::process::Command {
    with_parent_death(program, true)
}

/// [`command`] for a server that `HARNESS_KEEP=1` (or `--keep`) asks to leave running after
/// this process ends: then it gets no parent-death signal (and its directory no owner record,
/// so no sweep takes it); otherwise it is exactly [`command`].
pub fn server_command(program: impl AsRef<OsStr>) -> std::process::Command {
    with_parent_death(program, !crate::keep::keep_requested())
}

fn with_parent_death(program: impl AsRef<OsStr>, die_with_us: bool) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    // A program that cannot be executed is spawned as itself, so that the spawn fails with the
    // OS's own error (not found, permission denied) as callers expect, instead of setpriv
    // starting and exiting 126/127, which would read as "the tool ran and failed".
    let setpriv = if die_with_us && executable(program.as_ref()) {
        setpriv()
    } else {
        None
    };
    let mut cmd = match setpriv {
        Some(setpriv) => {
            let mut cmd = std::process::Command::new(setpriv);
            cmd.args(["--pdeathsig", PDEATHSIG, "--"]).arg(program);
            cmd
        }
        None => std::process::Command::new(program),
    };
    // Its own group: a Ctrl-C in the terminal reaches only the harness, which then stops the
    // child in order (a server gets its fast shutdown, the directory is removed after it).
    cmd.process_group(0);
    cmd
}

/// Whether `program` names an executable file: a path when it holds a `/`, else a match on
/// `PATH` (as `execvp` looks it up).
fn executable(program: &OsStr) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::path::Path::new(program);
    if path.components().count() > 1 || program.as_encoded_bytes().contains(&b'/') {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    } else {
        which::which(program).is_ok()
    }
}

/// The tokio flavour of [`command`]; spawn it with [`spawn_tokio`]. It is also killed when
/// dropped (`kill_on_drop`), so a cancelled future does not leave it running.
pub fn tokio_command(program: impl AsRef<OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(command(program));
    cmd.kill_on_drop(true);
    cmd
}

/// Spawns a command built by [`command`] from the spawner thread.
///
/// # Errors
/// The spawn error (program missing, not executable).
pub fn spawn(mut cmd: std::process::Command) -> std::io::Result<std::process::Child> {
    on_spawner(move || cmd.spawn())
}

/// Spawns a command built by [`tokio_command`] from the spawner thread, registered with the
/// caller's tokio runtime.
///
/// # Errors
/// The spawn error (program missing, not executable).
pub fn spawn_tokio(mut cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let handle = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    on_spawner(move || {
        let _runtime = handle.enter();
        cmd.spawn()
    })
}

/// The end of a builder chain on a [`tokio_command`]: spawn or run it from the spawner thread
/// (`Command::spawn` and `Command::output` would fork from the calling thread).
pub trait GuardedSpawn {
    /// Like `spawn`, from the spawner thread.
    ///
    /// # Errors
    /// The spawn error.
    fn spawn_guarded(&mut self) -> std::io::Result<tokio::process::Child>;

    /// Like `output`: standard input empty, standard output and error captured.
    ///
    /// # Errors
    /// The spawn or wait error.
    fn output_guarded(
        &mut self,
    ) -> impl Future<Output = std::io::Result<std::process::Output>> + Send;
}

impl GuardedSpawn for tokio::process::Command {
    fn spawn_guarded(&mut self) -> std::io::Result<tokio::process::Child> {
        // The command moves to the spawner thread; a spent placeholder stays behind.
        let cmd = std::mem::replace(self, tokio::process::Command::new("/bin/false"));
        spawn_tokio(cmd)
    }

    fn output_guarded(
        &mut self,
    ) -> impl Future<Output = std::io::Result<std::process::Output>> + Send {
        use std::process::Stdio;
        self.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = self.spawn_guarded();
        async move { child?.wait_with_output().await }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the spawner thread and returns its result. Spawning takes a fork and an exec,
/// so the caller blocks only for that long, as it would with `Command::spawn`.
fn on_spawner<T: Send + 'static>(
    job: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("harness-spawner".to_owned())
            .spawn(move || {
                // Never returns while the process lives: the sender is in a static.
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(err) = started {
            // Without the thread every spawn below fails with this reason.
            tracing::error!(error = %err, "cannot start the harness-spawner thread");
        }
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::sync_channel(1);
    let send = sender
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send(Box::new(move || {
            // The caller waits on `answer`; it cannot have gone away.
            let _ = reply.send(job());
        }));
    if send.is_err() {
        return Err(std::io::Error::other(
            "the harness-spawner thread is not running",
        ));
    }
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the harness-spawner thread stopped"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child started from a short-lived thread outlives that thread: the spawner thread is
    /// its parent, so the thread's exit does not fire the parent-death signal.
    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() {
        let mut child = std::thread::spawn(|| {
            let mut cmd = command("sh");
            cmd.args(["-c", "echo ready; exec sleep 30"])
                .stdout(std::process::Stdio::piped());
            let mut child = spawn(cmd).unwrap();
            // Once `sh` speaks, setpriv has set the parent-death signal: only then may this
            // thread exit, or the test would race setpriv instead of testing the design.
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().unwrap()),
                &mut line,
            )
            .unwrap();
            assert_eq!(line, "ready\n");
            child
        })
        .join()
        .unwrap();
        // The child must stay alive after its requesting thread is gone: a parent-death signal
        // tied to that thread arrives within moments of its exit, so half a second of watching
        // tells the two designs apart.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        while std::time::Instant::now() < deadline {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child died with the thread that asked for it"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(child.id() as i32)));
        assert_eq!(
            pgid.unwrap().as_raw(),
            child.id() as i32,
            "the child leads its own process group"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
