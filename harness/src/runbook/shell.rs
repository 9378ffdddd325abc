//! One persistent bash session for a whole runbook, so that `export` and `cd` carry over from
//! block to block as they do for the person typing them.
//!
//! The session is confined: bash runs under `unshare --mount` in a private mount namespace in
//! which every mount but `/proc`, `/sys` and `/dev` is remounted read-only, the scratch
//! directory is bind-mounted read-write over itself, and `/tmp` is the scratch directory's own
//! `tmp/`. Nothing the runbook runs can write to the host outside the scratch directory (the
//! cluster it talks to is a separate process, outside the namespace). Each command has a
//! deadline; a command that passes it is killed with the whole session, which is then started
//! again with the variables and working directory saved after the previous command.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::RunbookError;

/// Where and how the session runs.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// The scratch directory: the only place the session can write.
    pub scratch: PathBuf,
    /// `$HOME` of the session (inside `scratch`): `~/...` paths of the document land here.
    pub home: PathBuf,
    /// Extra environment (e.g. `KUBECONFIG`).
    pub env: Vec<(String, String)>,
}

/// How one command ended.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Its exit status (`$?`); `None` when it was killed at its deadline.
    pub status: Option<i32>,
    /// The exit status of each command of its last pipeline (`PIPESTATUS`).
    pub pipeline: Vec<i32>,
    /// Its standard output (at most 1 MiB, the end kept).
    pub stdout: String,
    /// Its standard error (at most 1 MiB, the end kept).
    pub stderr: String,
    /// How long it ran.
    pub duration: Duration,
    /// It passed its deadline and was killed.
    pub timed_out: bool,
    /// It ended the shell (`exit`, `set -e`): the session was started again.
    pub ended_shell: bool,
}

/// A running confined bash session.
#[derive(Debug)]
pub struct Session {
    options: SessionOptions,
    control: PathBuf,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
    seq: u64,
    reaped: bool,
}

const DONE: &str = "__RB_DONE__";
const MAX_OUTPUT: u64 = 1 << 20;

/// Quotes `s` for bash, in single quotes.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Session {
    /// Starts the confined session and checks it answers.
    ///
    /// # Errors
    /// [`RunbookError::Confine`] when the mount namespace or a read-only remount cannot be
    /// set up (e.g. not root), with unshare's or mount's words; [`RunbookError::Shell`] when
    /// it cannot be spawned.
    pub fn start(options: SessionOptions) -> Result<Self, RunbookError> {
        let control = options.scratch.join(".runbook");
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| RunbookError::Shell { what, source }
        };
        std::fs::create_dir_all(&control).map_err(io("create the control directory"))?;
        std::fs::create_dir_all(options.scratch.join("tmp")).map_err(io("create tmp/"))?;
        std::fs::create_dir_all(&options.home).map_err(io("create the session's home"))?;
        let mut session = Self::spawn(options, control)?;
        let check = session
            .run(
                "r=0; test -w \"$HOME\" || { echo \"$HOME is not writable\" >&2; r=1; }; \
                 if test -w /usr; then echo '/usr is writable' >&2; r=1; fi; (exit $r)",
                // Remounting every mount read-only takes long on a loaded machine with many
                // mounts (a local cluster's kubelet adds dozens).
                Duration::from_secs(120),
            )
            .map_err(|err| RunbookError::Confine {
                detail: crate::error_chain(&err),
            })?;
        if check.status != Some(0) {
            let log = std::fs::read_to_string(session.control.join("shell.stderr"))
                .unwrap_or_else(|err| format!("(its log cannot be read: {err})"));
            let how = if check.timed_out {
                "did not answer within 120 s".to_owned()
            } else {
                match check.status {
                    Some(code) => format!("exited {code}"),
                    None => "ended without a status".to_owned(),
                }
            };
            return Err(RunbookError::Confine {
                detail: format!(
                    "the confined shell is not as required (home writable, /usr read-only): the \
                     check {how} ({}); its log: {}",
                    check.stderr.trim(),
                    log.trim()
                ),
            });
        }
        Ok(session)
    }

    fn spawn(options: SessionOptions, control: PathBuf) -> Result<Self, RunbookError> {
        let scratch = options.scratch.display().to_string();
        // /tmp becomes scratch/tmp; when the scratch directory itself is under /tmp, it is
        // bind-mounted at its own path inside that new /tmp first, so it stays reachable.
        let under_tmp = options
            .scratch
            .strip_prefix("/tmp")
            .ok()
            .map(|rest| rest.display().to_string());
        let keep_scratch = match &under_tmp {
            Some(rest) => format!(
                "mkdir -p {inner} && mount --bind {s} {inner} && \
                 mount -o remount,bind,rw {inner} || fail 'bind the scratch directory in tmp'",
                s = quote(&scratch),
                inner = quote(&format!("{scratch}/tmp/{rest}")),
            ),
            None => "true".to_owned(),
        };
        let setup = format!(
            r#"fail() {{ echo "confine: $1" >&2; exit 97; }}
for m in $(awk '{{print $5}}' /proc/self/mountinfo | sort -u); do
  case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null || mount -o remount,ro "$m" || fail "remount $m read-only"
done
mount --bind {s} {s} && mount -o remount,bind,rw {s} || fail 'bind the scratch directory'
{keep_scratch}
mount --rbind {s}/tmp /tmp && mount -o remount,bind,rw /tmp || fail 'private /tmp'
cd "$HOME" || fail 'cd home'
umask 077
exec bash --noprofile --norc"#,
            s = quote(&scratch),
        );
        let stderr = std::fs::File::create(control.join("shell.stderr")).map_err(|source| {
            RunbookError::Shell {
                what: "create the shell's log".into(),
                source,
            }
        })?;
        let mut cmd = crate::process::command("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "bash"])
            .args(["--noprofile", "--norc", "-c", &setup])
            // A clean environment: nothing of the harness's (credentials, PGPASSWORD, its
            // KUBECONFIG) leaks into the document's commands or their output.
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("LANG", "C.UTF-8")
            .env(
                "USER",
                std::env::var_os("USER").unwrap_or_else(|| "root".into()),
            )
            .env("HOME", &options.home)
            .env("TMPDIR", "/tmp")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr);
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = crate::process::spawn(cmd).map_err(|source| RunbookError::Shell {
            what: "start unshare (util-linux)".into(),
            source,
        })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            options,
            control,
            child,
            stdin,
            lines: rx,
            seq: 0,
            reaped: false,
        })
    }

    /// The session's scratch directory.
    pub fn scratch(&self) -> &Path {
        &self.options.scratch
    }

    /// The session's `$HOME`.
    pub fn home(&self) -> &Path {
        &self.options.home
    }

    /// The working directory after the last command.
    pub fn cwd(&self) -> PathBuf {
        std::fs::read_to_string(self.control.join("cwd"))
            .map(|s| PathBuf::from(s.trim_end_matches('\n')))
            .unwrap_or_else(|_| self.options.home.clone())
    }

    /// Runs `text` as the next command of the session, killing it (and restarting the
    /// session) at `deadline`.
    ///
    /// # Errors
    /// [`RunbookError::Shell`] when the session cannot be written to or restarted.
    pub fn run(&mut self, text: &str, deadline: Duration) -> Result<Outcome, RunbookError> {
        self.seq += 1;
        let n = self.seq;
        let ctl = |name: String| self.control.join(name);
        let (script, out, err) = (
            ctl(format!("cmd-{n}.sh")),
            ctl(format!("out-{n}")),
            ctl(format!("err-{n}")),
        );
        let body =
            format!("__rb_rc=; __rb_ps=\n{text}\n__rb_ps=\"${{PIPESTATUS[*]}}\" __rb_rc=$?\n");
        crate::keep::write_private(&script, body.as_bytes()).map_err(|source| {
            RunbookError::Shell {
                what: format!("write {}", script.display()),
                source,
            }
        })?;
        let line = format!(
            // A syntax error in a sourced file can leave bash's parser confused and end the
            // session at the next line it reads: it is checked with `bash -n` first.
            "if bash -n {script} 2>{err}; then {{ source {script}; }} >{out} 2>{err} </dev/null; \
             __rb_src=$?; else __rb_src=2; fi; \
             declare -p >{state} 2>/dev/null; pwd >{cwd}; \
             printf '{DONE} %s %s %s\\n' {n} \"${{__rb_rc:-$__rb_src}}\" \"${{__rb_ps:-$__rb_src}}\"\n",
            script = quote(&script.display().to_string()),
            out = quote(&out.display().to_string()),
            err = quote(&err.display().to_string()),
            state = quote(&ctl("state".into()).display().to_string()),
            cwd = quote(&ctl("cwd".into()).display().to_string()),
        );
        let started = Instant::now();
        let mut outcome = Outcome::default();
        let sent = self
            .stdin
            .write_all(line.as_bytes())
            .and_then(|()| self.stdin.flush());
        match sent {
            Ok(()) => self.wait_done(n, started + deadline, &mut outcome),
            // The shell is gone (an earlier `exit`): record it, restart below.
            Err(_) => outcome.ended_shell = true,
        }
        outcome.duration = started.elapsed();
        // bash names the script it sources in its own errors: say `bash`, as a terminal would.
        let script_name = script.display().to_string();
        outcome.stdout = read_tail(&out).replace(&script_name, "bash");
        outcome.stderr = read_tail(&err).replace(&script_name, "bash");
        if outcome.timed_out || outcome.ended_shell {
            self.restart()?;
        }
        Ok(outcome)
    }

    fn wait_done(&mut self, n: u64, deadline: Instant, outcome: &mut Outcome) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let mut words = line.split_whitespace();
                    if words.next() != Some(DONE) || words.next() != Some(&n.to_string()) {
                        continue;
                    }
                    outcome.status = words.next().and_then(|s| s.parse().ok());
                    outcome.pipeline = words.filter_map(|s| s.parse().ok()).collect();
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    outcome.timed_out = true;
                    self.kill();
                    return;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The command ended the shell: its status is the shell's.
                    outcome.ended_shell = true;
                    outcome.status = self.child.wait().ok().and_then(|s| s.code());
                    self.reaped = true;
                    return;
                }
            }
        }
    }

    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        self.reaped = true;
        let pid = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        if let Err(err) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            tracing::warn!(error = %err, "kill the runbook shell's process group");
        }
        if let Err(err) = self.child.wait() {
            tracing::warn!(error = %err, "wait for the runbook shell");
        }
    }

    /// Starts a new session with the variables and directory saved after the last command
    /// that completed.
    fn restart(&mut self) -> Result<(), RunbookError> {
        self.kill();
        let fresh = Self::spawn(self.options.clone(), self.control.clone())?;
        let seq = self.seq;
        *self = fresh;
        self.seq = seq;
        let state = quote(&self.control.join("state").display().to_string());
        let cwd = quote(&self.control.join("cwd").display().to_string());
        let restore = format!(
            "source {state} 2>/dev/null; cd \"$(cat {cwd} 2>/dev/null || echo \"$HOME\")\""
        );
        let outcome = self.run(&restore, Duration::from_secs(20))?;
        if outcome.status.is_none() {
            return Err(RunbookError::Shell {
                what: "restore the session's variables and directory".into(),
                source: std::io::Error::other("the restarted shell did not answer"),
            });
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last MiB of a file; a missing file (the command never ran) reads as empty.
fn read_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_OUTPUT && file.seek(SeekFrom::Start(len - MAX_OUTPUT)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if let Err(err) = file.read_to_end(&mut bytes) {
        return format!("(output could not be read: {err})");
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
