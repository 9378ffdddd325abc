//! The one runner of command-line tools (pg_dump, pg_restore, psql, pg_amcheck,
//! pg_basebackup, pg_waldump, redis-server --version, ...): program, arguments (never a
//! secret), environment (secrets go here), an optional deadline, and where standard output
//! goes. Every run leads its own process group, forked by the spawner thread (see the module
//! above), and the whole group is killed when the run is dropped before it finished (a
//! cancelled future, a deadline): `pg_restore --jobs` workers go with their leader.
//!
//! A failed run says what the tool said about the cause ([`cause_lines`]), not the statement
//! it was running.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use super::GuardedSpawn as _;

/// Why a tool run did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The tool could not be started (missing, not executable).
    #[error("could not run {tool}")]
    Spawn {
        /// The tool.
        tool: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("{tool} failed ({status}) {what}: {stderr}")]
    Failed {
        /// The tool.
        tool: String,
        /// What it was run for.
        what: String,
        /// Its exit status.
        status: String,
        /// What it said about the cause ([`cause_lines`] of its standard error).
        stderr: String,
    },
    /// The tool did not finish before its deadline; its process group was killed.
    #[error("{tool} did not finish {what} within {seconds} s (stopped)")]
    TimedOut {
        /// The tool.
        tool: String,
        /// What it was run for.
        what: String,
        /// The deadline.
        seconds: u64,
    },
}

/// A tool invocation (see the module docs).
#[derive(Clone, Debug)]
pub struct ToolRun {
    /// The tool's name, for messages.
    pub tool: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment added to ours.
    pub env: Vec<(String, String)>,
    /// Its working directory, if not ours.
    pub dir: Option<PathBuf>,
    /// What it is run for, for messages (`dumping (custom format)`).
    pub what: String,
    /// How long it may run.
    pub deadline: Option<Duration>,
    /// Kept off the first CPU ([`super::pin_to_background`]): work beside a critical path.
    pub background: bool,
}

/// Kills a run's whole process group when dropped before the run finished.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // Already gone is as good as killed.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Standard error kept from a run: at most 64 KiB, the rest drained.
const STDERR_KEPT: usize = 64 * 1024;

impl ToolRun {
    /// `program` run as `tool`, for `what`.
    pub fn new(tool: &str, program: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Self {
            tool: tool.to_owned(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            what: what.into(),
            deadline: None,
            background: false,
        }
    }

    /// Kept off the first CPU this process may use, beside a critical path that has it.
    #[must_use]
    pub fn background(mut self) -> Self {
        self.background = true;
        self
    }

    /// With these arguments too.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// With these environment variables too.
    #[must_use]
    pub fn envs<I, K, V>(mut self, env: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(env.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// In this working directory.
    #[must_use]
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Stopped (its whole process group) after `deadline`.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = super::tokio_command(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    fn spawn_error(&self) -> impl FnOnce(std::io::Error) -> ToolError + '_ {
        move |source| ToolError::Spawn {
            tool: self.tool.clone(),
            source,
        }
    }

    /// The failure of a run that exited with `status`, from its standard error.
    pub fn failed(&self, status: ExitStatus, stderr: &[u8]) -> ToolError {
        ToolError::Failed {
            tool: self.tool.clone(),
            what: self.what.clone(),
            status: status.to_string(),
            stderr: cause_lines(&String::from_utf8_lossy(stderr)),
        }
    }

    /// `run`, stopped at the deadline if there is one.
    async fn within_deadline<T>(
        &self,
        run: impl Future<Output = Result<T, ToolError>>,
    ) -> Result<T, ToolError> {
        match self.deadline {
            Some(deadline) => {
                tokio::time::timeout(deadline, run)
                    .await
                    .map_err(|_| ToolError::TimedOut {
                        tool: self.tool.clone(),
                        what: self.what.clone(),
                        seconds: deadline.as_secs(),
                    })?
            }
            None => run.await,
        }
    }

    /// Runs it with standard output going to `stdout` (a file, `Stdio::null()`, a pipe the
    /// caller reads is not supported here) and returns its status and kept standard error,
    /// within the deadline.
    async fn run_with(&self, stdout: Stdio) -> Result<(ExitStatus, Vec<u8>), ToolError> {
        let mut child = self
            .command()
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn_guarded()
            .map_err(self.spawn_error())?;
        if self.background
            && let Some(pid) = child.id()
        {
            super::pin_process_to_background(pid);
        }
        let mut guard = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()));
        let stderr_pipe = child.stderr.take();
        let finished = async {
            let stderr = match stderr_pipe {
                Some(pipe) => read_kept(pipe, STDERR_KEPT).await,
                None => Vec::new(),
            };
            let status = child.wait().await.map_err(self.spawn_error())?;
            Ok::<_, ToolError>((status, stderr))
        };
        let result = self.within_deadline(finished).await?;
        guard.0 = None;
        Ok(result)
    }

    /// Runs it with its standard output going straight into `file` (the kernel moves the
    /// bytes, nothing passes through this process); `path` names the file in a failure (a
    /// tool writing into it may have failed on it: no space left).
    ///
    /// # Errors
    /// As the type says.
    pub async fn to_file(&self, file: std::fs::File, path: &Path) -> Result<(), ToolError> {
        let (status, stderr) = self.run_with(Stdio::from(file)).await?;
        if status.success() {
            Ok(())
        } else {
            let mut failed = self.clone();
            failed.what = format!("{} into {}", self.what, path.display());
            Err(failed.failed(status, &stderr))
        }
    }

    /// Starts it with `stdin` as its standard input and its standard output a pipe the caller
    /// reads ([`ToolStream::stdout`]) as the tool writes; [`ToolStream::finish`] then waits for
    /// it. Dropping the stream before `finish` kills the tool's process group. No deadline
    /// applies here: the caller bounds the whole read.
    ///
    /// # Errors
    /// When it cannot start.
    pub fn stream(&self, stdin: Vec<u8>) -> Result<ToolStream, ToolError> {
        let mut child = self
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_guarded()
            .map_err(self.spawn_error())?;
        let guard = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()));
        let input = child.stdin.take();
        // The input is small (a pg_restore list): written and closed beside the read.
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            match input {
                Some(mut pipe) => pipe.write_all(&stdin).await,
                None => Ok(()),
            }
        });
        let stderr = child
            .stderr
            .take()
            .map(|pipe| tokio::spawn(read_kept(pipe, STDERR_KEPT)));
        let stdout = child.stdout.take();
        Ok(ToolStream {
            run: self.clone(),
            child,
            guard,
            writer,
            stderr,
            stdout,
        })
    }

    /// Runs it, its standard output discarded.
    ///
    /// # Errors
    /// As the type says.
    pub async fn run(&self) -> Result<(), ToolError> {
        let (status, stderr) = self.run_with(Stdio::null()).await?;
        if status.success() {
            Ok(())
        } else {
            Err(self.failed(status, &stderr))
        }
    }

    /// Runs it and returns its whole output, whatever its exit status: for a tool whose
    /// failure the caller reads (pg_amcheck's findings, pg_waldump's end of WAL).
    ///
    /// # Errors
    /// When it cannot start or passes its deadline.
    pub async fn capture(&self) -> Result<Output, ToolError> {
        let child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_guarded()
            .map_err(self.spawn_error())?;
        let mut guard = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()));
        let finished = async { child.wait_with_output().await.map_err(self.spawn_error()) };
        let output = self.within_deadline(finished).await?;
        guard.0 = None;
        Ok(output)
    }

    /// Runs it and returns its (small) standard output.
    ///
    /// # Errors
    /// As the type says; a failure carries its standard error's cause lines.
    pub async fn output(&self) -> Result<String, ToolError> {
        let out = self.capture().await?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(self.failed(out.status, &out.stderr))
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of the file at `path` (at most its last 64 KiB), or why it cannot be
/// read.
pub fn file_tail(path: &Path, n: usize) -> String {
    let read = || -> std::io::Result<String> {
        use std::io::{Seek as _, SeekFrom};
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => tail(&text, n),
        Err(e) => format!("({} could not be read: {e})", path.display()),
    }
}

/// What a failed tool said about the cause, without the query it was running: libpq tools
/// print `<tool>: error: ...` and `<tool>: detail: ...` lines, then `Command was:` (or
/// `Query was:`) with the whole statement, often many lines long, whose tail would otherwise
/// be all a message shows. Keeps the tool's own lines (at most 6, each at most 300 characters)
/// minus the statements; falls back to the last 12 lines when the tool printed none.
pub fn cause_lines(stderr: &str) -> String {
    let mut kept = Vec::new();
    for line in stderr.lines() {
        // `<tool>: ...` (or `ERROR:  ...`); anything else continues a statement or a message.
        let Some((head, rest)) = line.split_once(": ") else {
            continue;
        };
        if head.is_empty() || head.contains(char::is_whitespace) {
            continue;
        }
        let statement = ["Command was:", "Query was:"]
            .iter()
            .any(|s| rest.trim_start_matches("detail: ").starts_with(s));
        if statement {
            continue;
        }
        let mut line = line.trim_end().to_owned();
        if line.len() > 300 {
            let mut cut = 300;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" ...");
        }
        kept.push(line);
        if kept.len() == 6 {
            break;
        }
    }
    if kept.is_empty() {
        tail(stderr, 12)
    } else {
        kept.join("\n")
    }
}

/// The first line of a tool's `--version` output (`flag`), or why there is none.
pub async fn tool_version(tool: &str, program: &Path, flag: &str) -> String {
    match ToolRun::new(tool, program, "report its version")
        .args([flag])
        .output()
        .await
    {
        Ok(out) => out.lines().next().unwrap_or("").trim().to_owned(),
        Err(err) => format!("unknown ({err})"),
    }
}

/// Reads `pipe` to its end (or its first read error: a tool's diagnostics, not a verdict)
/// and keeps the first `limit` bytes; the rest is drained so that the writer never blocks.
pub(crate) async fn read_kept(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    limit: usize,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) if kept.len() < limit => kept.extend_from_slice(&chunk[..n]),
            Ok(_) => {}
        }
    }
    kept
}

/// A running tool whose standard output is read as it comes (see [`ToolRun::stream`]).
pub struct ToolStream {
    run: ToolRun,
    child: tokio::process::Child,
    guard: GroupGuard,
    writer: tokio::task::JoinHandle<std::io::Result<()>>,
    stderr: Option<tokio::task::JoinHandle<Vec<u8>>>,
    /// Its standard output; taken by the reader.
    pub stdout: Option<tokio::process::ChildStdout>,
}

impl ToolStream {
    /// Waits for the tool to exit (its standard output should have been read to the end).
    ///
    /// # Errors
    /// [`ToolError::Failed`] when it exited unsuccessfully or its standard input could not be
    /// written, [`ToolError::Spawn`] when it could not be waited for.
    pub async fn finish(mut self) -> Result<(), ToolError> {
        drop(self.stdout.take());
        let status = self.child.wait().await.map_err(self.run.spawn_error())?;
        self.guard.0 = None;
        let stderr = match self.stderr.take() {
            Some(task) => task.await.map_err(|e| ToolError::Spawn {
                tool: self.run.tool.clone(),
                source: std::io::Error::other(e),
            })?,
            None => Vec::new(),
        };
        if !status.success() {
            return Err(self.run.failed(status, &stderr));
        }
        let written = (&mut self.writer).await.map_err(|e| ToolError::Spawn {
            tool: self.run.tool.clone(),
            source: std::io::Error::other(e),
        })?;
        written.map_err(|source| ToolError::Failed {
            tool: self.run.tool.clone(),
            what: format!("{} (writing its standard input)", self.run.what),
            status: status.to_string(),
            stderr: source.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pg_dump's standard error when its server session was killed in the middle of a COPY
    /// (as PostgreSQL 15 prints it): the cause is above a long statement.
    #[test]
    fn cause_lines_drop_the_statement_and_keep_the_cause() {
        let stderr = "pg_dump: error: Dumping the contents of table \"posts\" failed: PQgetResult() failed.\n\
pg_dump: detail: Error message from server: FATAL:  terminating connection due to administrator command\n\
pg_dump: detail: Command was: COPY public.posts (id, user_id, title, body, created_at,\n\
    updated_at, published) TO stdout;\n\
    -- a long query's tail\n";
        let lines = cause_lines(stderr);
        assert!(lines.contains("terminating connection"), "{lines}");
        assert!(lines.contains("Dumping the contents of table"), "{lines}");
        assert!(
            !lines.contains("COPY") && !lines.contains("long query"),
            "{lines}"
        );
        // A tool that prints nothing in its own name keeps its last lines.
        assert_eq!(cause_lines("a\nb\n"), "a\nb");
    }

    #[tokio::test]
    async fn a_run_fails_with_its_cause_and_a_deadline_stops_the_whole_group() {
        let sh = which::which("sh").expect("sh");
        let failed = ToolRun::new("sh", &sh, "failing on purpose")
            .args(["-c", "echo 'sh: error: it broke' >&2; exit 3"])
            .run()
            .await
            .expect_err("exit 3 is a failure");
        assert!(
            matches!(&failed, ToolError::Failed { status, stderr, .. }
                if status.contains('3') && stderr == "sh: error: it broke"),
            "{failed:?}"
        );
        // A child that outlives the leader's kill unless the group goes: its pid file names it.
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let err = ToolRun::new("sh", &sh, "sleeping")
            .args(["-c", &script])
            .deadline(Duration::from_millis(500))
            .run()
            .await
            .expect_err("past its deadline");
        assert!(matches!(err, ToolError::TimedOut { .. }), "{err:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("the child wrote its pid")
            .trim()
            .parse()
            .expect("a pid");
        let mut gone = false;
        for _ in 0..50 {
            // Gone, or a zombie waiting for whoever adopted it to reap it.
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')));
            if zombie || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the grandchild {pid} outlived its group's deadline");
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
    }
}
