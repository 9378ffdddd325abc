//! Private files and directories, streaming SHA-256, and the one place that runs local tools.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::process::GuardedSpawn;

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

/// A local tool invocation: program, arguments (never a secret), environment (secrets go
/// here), and where its standard output goes.
#[derive(Clone, Debug)]
pub(crate) struct ToolRun {
    pub(crate) tool: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) what: String,
}

impl ToolRun {
    pub(crate) fn new(tool: &str, program: PathBuf, what: impl Into<String>) -> Self {
        Self {
            tool: tool.to_owned(),
            program,
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            what: what.into(),
        }
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub(crate) fn envs<I, K, V>(mut self, env: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(env.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Its own process group, killed when dropped and when this process dies; start it with
    /// `crate::process::GuardedSpawn`.
    fn command(&self) -> tokio::process::Command {
        let mut cmd = crate::process::tokio_command(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    fn failed(&self, status: std::process::ExitStatus, stderr: &[u8]) -> BackupError {
        BackupError::Tool {
            tool: self.tool.clone(),
            what: self.what.clone(),
            status: status.to_string(),
            stderr: cause_lines(&String::from_utf8_lossy(stderr)),
        }
    }

    /// Runs the tool with its standard output going straight into a new private file: the
    /// kernel moves the bytes, nothing passes through this process.
    pub(crate) async fn to_file(&self, out: &Path) -> Result<(), BackupError> {
        let file = create_private_file(out)?;
        // Not `output()`: tokio's would replace the file with a pipe and buffer everything.
        let mut child = self
            .command()
            .stdout(Stdio::from(file))
            .stderr(Stdio::piped())
            .spawn_guarded()
            .map_err(|source| BackupError::Spawn {
                tool: self.tool.clone(),
                source,
            })?;
        let mut stderr = Vec::new();
        if let Some(mut pipe) = child.stderr.take() {
            // Bounded: keep at most 64 KiB of it, drain the rest.
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if stderr.len() < 64 * 1024 => stderr.extend_from_slice(&chunk[..n]),
                    Ok(_) => {}
                }
            }
        }
        let status = child.wait().await.map_err(|source| BackupError::Spawn {
            tool: self.tool.clone(),
            source,
        })?;
        if status.success() {
            Ok(())
        } else {
            // Name the file too: a tool writing into it may have failed on it (no space left).
            let mut failed = self.clone();
            failed.what = format!("{} into {}", self.what, out.display());
            Err(failed.failed(status, &stderr))
        }
    }

    /// Runs the tool and returns its (small) standard output.
    pub(crate) async fn output(&self) -> Result<String, BackupError> {
        let output = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output_guarded()
            .await
            .map_err(|source| BackupError::Spawn {
                tool: self.tool.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(self.failed(output.status, &output.stderr))
        }
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a failed tool said about the cause, without the query it was running: libpq tools
/// print `<tool>: error: ...` and `<tool>: detail: ...` lines, then `Command was:` (or
/// `Query was:`) with the whole statement, often many lines long, whose tail would otherwise
/// be all a message shows. Keeps the tool's own lines (at most 6, each at most 300 characters)
/// minus the statements; falls back to the last 12 lines when the tool printed none.
pub(crate) fn cause_lines(stderr: &str) -> String {
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

/// The first line of a tool's `--version` output, or why there is none.
pub(crate) async fn tool_version(tool: &str, program: &Path, flag: &str) -> String {
    match ToolRun::new(tool, program.to_path_buf(), "report its version")
        .args([flag])
        .output()
        .await
    {
        Ok(out) => out.lines().next().unwrap_or("").trim().to_owned(),
        Err(err) => format!("unknown ({err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::cause_lines;

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
}
