//! The only place the kubelet spawns processes. Every container process (and every exec
//! session) leads its own process group, so stopping it stops everything it started; and
//! every group is recorded for the reaper.
//!
//! The reaper is a tiny `sh` process started with the cluster. Its stdin is a pipe whose
//! write end only the simulator holds (close-on-exec, so no child inherits it). When the
//! simulator goes away in any manner, even SIGKILL, the pipe closes, `read` returns, and the
//! reaper SIGKILLs every process group listed in its file. A clean shutdown removes the
//! file first. This needs no `unsafe` (no `pre_exec`/`PR_SET_PDEATHSIG`) and also catches
//! grandchildren, which a parent-death signal would not.
//!
//! A process is recorded just after it is spawned, so a simulator killed between the two
//! leaves one process the file does not name. Every process the kubelet starts therefore
//! also carries [`MARKER_VAR`] in its environment, and the reaper of a killed simulator
//! kills whatever still carries its marker, a few times over, so that a process that was
//! still between fork and exec at the first look is caught at the next.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The environment variable that marks every process this kubelet starts.
pub(crate) const MARKER_VAR: &str = "SIMCLUSTER_REAPER";

const REAPER_SCRIPT: &str = r#"f=$1 m=$2
while read -r _; do :; done
[ -f "$f" ] || exit 0
while read -r g; do kill -9 -"$g" 2>/dev/null; done < "$f"
rm -f "$f"
for _ in 1 2 3 4 5; do
  for e in $(grep -lzxF "$m" /proc/[0-9]*/environ 2>/dev/null); do
    p=${e#/proc/}; p=${p%/environ}
    kill -9 -"$p" 2>/dev/null; kill -9 "$p" 2>/dev/null
  done
  sleep 0.2
done
"#;

/// The cluster's process-group reaper.
pub(crate) struct Reaper {
    file: PathBuf,
    /// The value of [`MARKER_VAR`] in every process this reaper answers for.
    marker: String,
    groups: Mutex<BTreeSet<i32>>,
    /// Set once the reaper is stopped: a group tracked after that (a pod task that was still
    /// starting a container while the kubelet shut down) is killed at once, since no reaper
    /// would take it if the simulator were then killed.
    stopped: std::sync::atomic::AtomicBool,
    child: Mutex<Option<std::process::Child>>,
}

impl Reaper {
    /// Start the reaper, recording groups in `file`.
    pub(crate) fn start(file: &Path) -> std::io::Result<Reaper> {
        use std::os::unix::process::CommandExt as _;
        let marker = file.display().to_string();
        let child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(REAPER_SCRIPT)
            .arg("simcluster-reaper")
            .arg(file)
            .arg(format!("{MARKER_VAR}={marker}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: a Ctrl-C in the terminal must not take the reaper down first.
            .process_group(0)
            .spawn()?;
        let r = Reaper {
            file: file.to_owned(),
            marker,
            groups: Mutex::new(BTreeSet::new()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            child: Mutex::new(Some(child)),
        };
        r.write(&BTreeSet::new())?;
        Ok(r)
    }

    fn write(&self, groups: &BTreeSet<i32>) -> std::io::Result<()> {
        let tmp = self.file.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        for g in groups {
            writeln!(f, "{g}")?;
        }
        f.flush()?;
        std::fs::rename(&tmp, &self.file)
    }

    fn update(&self, f: impl FnOnce(&mut BTreeSet<i32>)) {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut groups);
        // Once stopped, the file is gone for good: its absence tells the reaper all is done.
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.write(&groups) {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot record process groups for the reaper");
        }
    }

    /// The command for `spec`, marked as this reaper's (see the module's documentation).
    pub(crate) fn command(&self, spec: &Spawn) -> std::io::Result<tokio::process::Command> {
        let mut cmd = command(spec)?;
        cmd.env(MARKER_VAR, &self.marker);
        Ok(cmd)
    }

    /// Record a process group.
    pub(crate) fn track(&self, pgid: i32) {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Checked under the lock that `kill_all_and_stop` takes to set it: no group slips
        // between its snapshot and the end of the reaper.
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            drop(groups);
            tracing::warn!(pgid, "a process started after the kubelet stopped: killed");
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            return;
        }
        groups.insert(pgid);
        if let Err(e) = self.write(&groups) {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot record process groups for the reaper");
        }
    }

    /// Forget a process group that has ended.
    pub(crate) fn untrack(&self, pgid: i32) {
        self.update(|g| {
            g.remove(&pgid);
        });
    }

    /// Kill every recorded group now and stop the reaper.
    pub(crate) fn kill_all_and_stop(&self) {
        let groups: Vec<i32> = {
            let groups = self
                .groups
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.stopped
                .store(true, std::sync::atomic::Ordering::SeqCst);
            groups.iter().copied().collect()
        };
        for g in groups {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
        }
        // No file tells the reaper that the simulator stopped cleanly: it exits at once.
        if let Err(e) = std::fs::remove_file(&self.file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot remove the reaper's file");
        }
        if let Some(mut child) = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            // Closing stdin makes the reaper read EOF, find no file and exit.
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.kill_all_and_stop();
    }
}

/// How to start one process.
#[derive(Debug, Clone, Default)]
pub(crate) struct Spawn {
    /// The program: a path, or a name looked up in the `PATH` of `env`.
    pub(crate) program: String,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// The whole environment (nothing is inherited from the simulator).
    pub(crate) env: Vec<(String, String)>,
    /// Working directory.
    pub(crate) cwd: PathBuf,
    /// Run as this uid/gid (PostgreSQL refuses to run as root).
    pub(crate) run_as: Option<(u32, u32)>,
}

/// Find `program` in the `PATH` of `env`.
pub(crate) fn resolve(program: &str, env: &[(String, String)]) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/bin:/bin", |(_, v)| v.as_str());
    path.split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt as _;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Build the command: own process group, the given identity, environment and directory.
fn command(spec: &Spawn) -> std::io::Result<tokio::process::Command> {
    let program = resolve(&spec.program, &spec.env).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "exec: \"{}\": executable file not found in $PATH",
                spec.program
            ),
        )
    })?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .process_group(0)
        .kill_on_drop(false);
    if let Some((uid, gid)) = spec.run_as {
        cmd.uid(uid).gid(gid);
    }
    Ok(cmd)
}

/// Signal a whole process group, ignoring groups that are already gone.
pub(crate) fn signal_group(pgid: i32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid), sig);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Reaper, Spawn, command};

    fn sleeper(dir: &std::path::Path) -> Spawn {
        Spawn {
            program: "sleep".into(),
            args: vec!["300".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: dir.to_owned(),
            run_as: None,
        }
    }

    /// The simulator killed between spawning a process and recording its group: the file
    /// does not name it, and the marker alone lets the reaper find it. An unmarked process
    /// started the same way survives, which is the defect the marker mends.
    #[tokio::test]
    async fn a_process_the_file_does_not_name_yet_dies_with_a_killed_simulator() {
        let dir = tempfile::tempdir().unwrap();
        let reaper = Reaper::start(&dir.path().join("process-groups")).unwrap();
        let mut marked = reaper
            .command(&sleeper(dir.path()))
            .unwrap()
            .spawn()
            .unwrap();
        let mut unmarked = command(&sleeper(dir.path())).unwrap().spawn().unwrap();

        // What a SIGKILL of the simulator does: its end of the pipe closes, the file stays.
        let mut child = reaper.child.lock().unwrap().take().unwrap();
        drop(child.stdin.take());
        let status = child.wait().unwrap();
        assert!(status.success(), "the reaper: {status}");

        let marked_end = tokio::time::timeout(Duration::from_secs(10), marked.wait())
            .await
            .expect("the marked process outlived the reaper")
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&marked_end),
            Some(9)
        );
        assert!(
            unmarked.try_wait().unwrap().is_none(),
            "the unmarked process died too: the test would not see a missing marker"
        );
        unmarked.kill().await.unwrap();
    }

    /// A clean stop leaves no file (which tells the reaper there is nothing to search), and
    /// a group forgotten later does not write it again.
    #[test]
    fn a_clean_stop_removes_the_file_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("process-groups");
        let reaper = Reaper::start(&file).unwrap();
        assert!(file.exists());
        reaper.kill_all_and_stop();
        assert!(!file.exists());
        reaper.untrack(1);
        assert!(!file.exists(), "a late untrack wrote the file again");
    }
}
