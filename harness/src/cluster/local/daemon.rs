//! The provider's long-running processes (etcd, the API server, containerd, the kubelet, ...)
//! and its short tools (openssl, ip, iptables, ctr), all started through [`crate::process`]:
//! each daemon leads its own process group and dies with the harness.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::LocalError;

/// A running component, its output in a log file.
#[derive(Debug)]
pub(crate) struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program args`, output to `log`.
    pub(crate) fn start(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Self, LocalError> {
        let out = std::fs::File::create(log).map_err(|source| LocalError::Io {
            action: "create",
            path: log.to_owned(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| LocalError::Io {
            action: "open",
            path: log.to_owned(),
            source,
        })?;
        let mut cmd = crate::process::server_command(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        tracing::debug!(component = name, program = %program.display(), "starting");
        let child = crate::process::spawn(cmd).map_err(|source| LocalError::Spawn {
            component: name.to_owned(),
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// Its pid, while it runs.
    pub(crate) fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// `Ok` while it runs; [`LocalError::Exited`] with the end of its log once it has exited.
    pub(crate) fn check(&mut self) -> Result<(), LocalError> {
        let Some(child) = self.child.as_mut() else {
            return Err(self.exited("stopped".to_owned()));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited(status.to_string())),
            Err(err) => Err(self.exited(format!("cannot wait: {err}"))),
        }
    }

    fn exited(&self, status: String) -> LocalError {
        LocalError::Exited {
            component: self.name.clone(),
            status,
            log: self.log.clone(),
            tail: tail(&self.log, 15),
        }
    }

    /// Stops it: SIGTERM to its process group, SIGKILL after `grace`, then reaps it.
    pub(crate) fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let started = Instant::now();
        if matches!(child.try_wait(), Ok(None)) {
            signal_group(pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        // The group may hold helpers even when the leader is gone.
        signal_group(pid, Signal::SIGKILL);
        if let Err(err) = child.wait() {
            tracing::warn!(component = %self.name, error = %err, "cannot reap");
        }
        tracing::info!(component = %self.name, seconds = started.elapsed().as_secs_f64(), "stopped");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if crate::keep::keep_requested() {
            if let Some(child) = self.child.take() {
                eprintln!(
                    "{}: kept {} running (pid {}, log {})",
                    crate::keep::KEEP_ENV,
                    self.name,
                    child.id(),
                    self.log.display()
                );
            }
            return;
        }
        self.stop(Duration::from_secs(5));
    }
}

fn signal_group(pid: Pid, signal: Signal) {
    if killpg(pid, signal).is_err() {
        // Not (or no longer) a group leader: the process itself.
        let _ = kill(pid, signal);
    }
}

/// The last `lines` lines of a log file, or why it cannot be read.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// Runs a short tool to completion through [`crate::process`] and returns its standard
/// output; a failure carries the combined output.
pub(crate) fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, LocalError> {
    run_with_input(program, args, None)
}

/// [`run`] with `input` on standard input.
pub(crate) fn run_with_input<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    input: Option<&[u8]>,
) -> Result<String, LocalError> {
    use std::io::Write;
    let command = std::iter::once(program.to_owned())
        .chain(
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned()),
        )
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = crate::process::command(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = crate::process::spawn(cmd).map_err(|err| LocalError::Command {
        command: command.clone(),
        status: "could not start".to_owned(),
        output: err.to_string(),
    })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input).map_err(|err| LocalError::Command {
            command: command.clone(),
            status: "could not write its input".to_owned(),
            output: err.to_string(),
        })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|err| LocalError::Command {
            command: command.clone(),
            status: "could not wait".to_owned(),
            output: err.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LocalError::Command {
            command,
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .trim()
            .to_owned(),
        })
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub(crate) fn free_port() -> Result<u16, LocalError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| LocalError::Io {
            action: "bind a free port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })
}

/// Polls `probe` every 250 ms until it returns `Ok(true)`, failing when `timeout` passes (with
/// the probe's last word) or when one of `daemons` exits.
pub(crate) async fn wait_for<F, Fut>(
    component: &str,
    timeout: Duration,
    daemons: &mut [&mut Daemon],
    mut probe: F,
) -> Result<(), LocalError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        for daemon in daemons.iter_mut() {
            daemon.check()?;
        }
        let last = match probe().await {
            Ok(true) => return Ok(()),
            Ok(false) => "not yet".to_owned(),
            Err(detail) => detail,
        };
        if Instant::now() >= deadline {
            return Err(LocalError::NotReady {
                component: component.to_owned(),
                seconds: timeout.as_secs(),
                detail: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates a directory and its parents.
pub(crate) fn mkdir(path: &Path) -> Result<(), LocalError> {
    std::fs::create_dir_all(path).map_err(|source| LocalError::Io {
        action: "create",
        path: path.to_owned(),
        source,
    })
}

/// Writes a file that holds no secret.
pub(crate) fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), LocalError> {
    std::fs::write(path, contents).map_err(|source| LocalError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}
