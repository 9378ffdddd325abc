//! The checks a document implies about each command it runs: it exited 0 and so did every
//! command of its pipeline; no tool reported an error it did not exit with (psql without
//! `ON_ERROR_STOP`); `tar` did not read a file that changed under it; a file it wrote is not
//! empty; a count it writes "after" equals the one it wrote "before"; a `kubectl wait` met its
//! condition.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::shell::Outcome;
use crate::report::runbook::Verdict;

/// Size and modification time of every file under the scratch directory.
#[derive(Clone, Debug, Default)]
pub(crate) struct Files(BTreeMap<PathBuf, (u64, SystemTime)>);

impl Files {
    /// Walks `dir`, leaving out `skip` (the session's control directory).
    pub(crate) fn snapshot(dir: &Path, skip: &Path) -> Self {
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.starts_with(skip) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file() {
                    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    files.insert(path, (meta.len(), mtime));
                }
            }
        }
        Self(files)
    }

    /// Files that are new or changed in `self` compared with `before`.
    pub(crate) fn written_since<'a>(&'a self, before: &'a Files) -> Vec<(&'a Path, u64)> {
        self.0
            .iter()
            .filter(|(p, v)| before.0.get(*p) != Some(*v))
            .map(|(p, (len, _))| (p.as_path(), *len))
            .collect()
    }
}

/// A command's verdict, the reason in the tool's words, and what the checks found.
#[derive(Clone, Debug)]
pub(crate) struct Judgement {
    pub(crate) verdict: Verdict,
    pub(crate) reason: Option<String>,
    pub(crate) findings: Vec<String>,
}

/// `text` without terminal colour sequences and box-drawing frames (terraform's).
pub(crate) fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if !"│╷╵".contains(c) {
            out.push(c);
        }
    }
    out
}

/// The last `n` non-empty lines of `text`, in plain text.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let text = plain(text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Lines in which a tool reports an error (psql's `ERROR:`, `FATAL:`, `error:`).
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.contains("ERROR:")
                || l.contains("FATAL:")
                || l.contains("error:")
                || l.trim_start().starts_with("Error:")
        })
        .collect()
}

/// Judges one command that ran.
pub(crate) fn judge(
    text: &str,
    outcome: &Outcome,
    deadline: Duration,
    written: &[(&Path, u64)],
) -> Judgement {
    let mut findings: Vec<String> = stdin_not_passed(text).into_iter().collect();
    if let Some((verdict, reason)) = failure(outcome, deadline) {
        return Judgement {
            verdict,
            reason: Some(reason),
            findings,
        };
    }
    let stderr = plain(&outcome.stderr);
    let errors = error_lines(&stderr);
    if !errors.is_empty() {
        findings.push(format!(
            "exit status 0, but the tool reported {} error(s): {}",
            errors.len(),
            errors
                .iter()
                .take(3)
                .copied()
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    if text.contains("kubectl wait") && !outcome.stdout.contains("condition met") {
        findings.push("`kubectl wait` printed no \"condition met\"".into());
    }
    for (path, len) in written {
        if *len == 0 {
            findings.push(format!("it wrote an empty file: {}", path.display()));
        }
    }
    findings.extend(compare_before_after(written));
    let verdict = if findings.is_empty() {
        Verdict::Ok
    } else {
        Verdict::Unsafe
    };
    Judgement {
        verdict,
        reason: None,
        findings,
    }
}

/// What the tool said, for a reason: its error lines when it printed some, else the end of
/// what it printed.
fn tool_words(outcome: &Outcome) -> Option<String> {
    let words = |s: &str| -> Option<String> {
        let t = tail(s, 3);
        (!t.is_empty()).then_some(t)
    };
    let stderr = plain(&outcome.stderr);
    let errors_said: Vec<&str> = error_lines(&stderr)
        .into_iter()
        .map(str::trim)
        .take(3)
        .collect();
    if errors_said.is_empty() {
        words(&outcome.stderr).or_else(|| words(&outcome.stdout))
    } else {
        Some(errors_said.join(" | "))
    }
}

/// The verdict and reason of a command that did not succeed: tar archiving changing files
/// (unsafe), a deadline passed, a non-zero exit status, or a pipeline stage that failed behind
/// the pipe's status 0; `None` when it succeeded.
fn failure(outcome: &Outcome, deadline: Duration) -> Option<(Verdict, String)> {
    if outcome.stderr.contains("file changed as we read it") {
        // GNU tar exits 1 here and still writes the archive: an archive of live data.
        return Some((
            Verdict::Unsafe,
            format!(
                "tar archived files that changed while it read them: the archive is not a \
                 consistent copy ({})",
                tail(&outcome.stderr, 2)
            ),
        ));
    }
    let tool_words = tool_words(outcome);
    if outcome.timed_out {
        return Some((
            Verdict::Failed,
            format!(
                "did not finish within its deadline of {} s and was killed{}",
                deadline.as_secs(),
                tool_words
                    .map(|w| format!("; last output: {w}"))
                    .unwrap_or_default()
            ),
        ));
    }
    if outcome.status != Some(0) {
        let status = outcome
            .status
            .map_or("unknown".to_owned(), |s| s.to_string());
        let ended = if outcome.ended_shell {
            " (it ended the shell session, which was started again)"
        } else {
            ""
        };
        return Some((
            Verdict::Failed,
            format!(
                "exit status {status}{ended}: {}",
                tool_words.unwrap_or_else(|| "(no output)".into())
            ),
        ));
    }
    if outcome.pipeline.len() > 1
        && let Some((i, status)) = outcome
            .pipeline
            .iter()
            .enumerate()
            .find(|(i, s)| **s != 0 && !(**s == 141 && *i + 1 < outcome.pipeline.len()))
    {
        return Some((
            Verdict::Failed,
            format!(
                "command {} of the pipeline exited {status} (PIPESTATUS {:?}), hidden by the \
                 pipe's exit status 0: {}",
                i + 1,
                outcome.pipeline,
                tool_words.unwrap_or_else(|| "(no output)".into())
            ),
        ));
    }
    None
}

/// A `kubectl exec` fed from a pipe or a `<` redirection without `-i`: kubectl does not pass
/// its input to the pod, so the command in the pod reads nothing.
fn stdin_not_passed(text: &str) -> Option<String> {
    let at = text.find("kubectl exec")?;
    let rest = &text[at..];
    let options = rest.split(" -- ").next().unwrap_or(rest);
    let has_stdin = options
        .split_whitespace()
        .any(|w| w == "--stdin" || (w.starts_with('-') && !w.starts_with("--") && w.contains('i')));
    if has_stdin {
        return None;
    }
    let before = text[..at].trim_end().trim_end_matches('\\').trim_end();
    let piped = before.ends_with('|');
    // A `<` redirection outside quotes (`psql -c "SELECT a < b"` is not one).
    let chars: Vec<char> = rest.chars().collect();
    let (mut single, mut double) = (false, false);
    let mut redirected = false;
    for (i, c) in chars.iter().enumerate() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '<' if !single
                && !double
                && chars.get(i + 1) != Some(&'<')
                && chars.get(i + 1) != Some(&'(')
                && (i == 0 || chars[i - 1] != '<') =>
            {
                redirected = true;
            }
            _ => {}
        }
    }
    (piped || redirected).then(|| {
        "its input is not passed to the pod: `kubectl exec` without `-i` (--stdin) gives the \
         command in the pod no standard input, so it reads nothing"
            .to_owned()
    })
}

/// For a written file whose name says `after` next to one that says `before`: do they hold
/// the same figures? A count taken before the backup must equal the one after the restore.
fn compare_before_after(written: &[(&Path, u64)]) -> Vec<String> {
    let mut findings = Vec::new();
    for (path, _) in written {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.contains("after") {
            continue;
        }
        let before = path.with_file_name(name.replace("after", "before"));
        let (Ok(b), Ok(a)) = (
            std::fs::read_to_string(&before),
            std::fs::read_to_string(path),
        ) else {
            continue;
        };
        let figures = |text: &str| -> Vec<String> {
            text.lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|l| l.chars().any(|c| c.is_ascii_digit()) && !l.starts_with('('))
                .collect()
        };
        let (fb, fa) = (figures(&b), figures(&a));
        if fb != fa {
            let differing: Vec<String> = fb
                .iter()
                .zip(fa.iter())
                .filter(|(x, y)| x != y)
                .map(|(x, y)| format!("`{x}` before, `{y}` after"))
                .collect();
            findings.push(format!(
                "the figures in {} differ from {}: {}",
                path.display(),
                before.display(),
                if differing.is_empty() {
                    format!("{} lines before, {} after", fb.len(), fa.len())
                } else {
                    differing.join("; ")
                }
            ));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(status: i32, pipeline: &[i32], stderr: &str) -> Outcome {
        Outcome {
            status: Some(status),
            pipeline: pipeline.to_vec(),
            stderr: stderr.into(),
            ..Outcome::default()
        }
    }

    fn verdict(o: &Outcome) -> Verdict {
        judge("x", o, Duration::from_secs(1), &[]).verdict
    }

    #[test]
    fn each_check_goes_red_on_its_defect() {
        assert_eq!(verdict(&ran(0, &[0], "")), Verdict::Ok);
        assert_eq!(verdict(&ran(2, &[2], "x: unknown flag")), Verdict::Failed);
        assert_eq!(verdict(&ran(0, &[1, 0], "")), Verdict::Failed);
        assert_eq!(verdict(&ran(0, &[141, 0], "")), Verdict::Ok);
        assert_eq!(
            verdict(&ran(
                0,
                &[0],
                "psql:<stdin>:5: ERROR:  relation \"users\" already exists"
            )),
            Verdict::Unsafe
        );
        assert_eq!(
            verdict(&ran(1, &[1], "tar: ./pg_wal: file changed as we read it")),
            Verdict::Unsafe
        );
        let timed = Outcome {
            timed_out: true,
            ..Outcome::default()
        };
        assert_eq!(verdict(&timed), Verdict::Failed);
        let empty = judge(
            "x > f",
            &ran(0, &[0], ""),
            Duration::from_secs(1),
            &[(Path::new("/s/f"), 0)],
        );
        assert_eq!(empty.verdict, Verdict::Unsafe);
    }

    #[test]
    fn before_and_after_counts_are_compared() {
        let dir = tempfile::tempdir().unwrap();
        let before = dir.path().join("count-before-1.txt");
        let after = dir.path().join("count-after-1.txt");
        std::fs::write(&before, " users | 10\n posts | 20\n(2 rows)\n").unwrap();
        std::fs::write(&after, " users | 10\n posts | 20\n(2 rows)\n").unwrap();
        assert!(compare_before_after(&[(&after, 1)]).is_empty());
        std::fs::write(&after, " users | 10\n posts | 19\n(2 rows)\n").unwrap();
        let f = compare_before_after(&[(&after, 1)]);
        assert!(
            f[0].contains("`posts | 20` before, `posts | 19` after"),
            "{f:?}"
        );
    }
}

#[cfg(test)]
mod stdin_tests {
    use super::*;

    fn verdict(text: &str, pipeline: &[i32]) -> Verdict {
        let ran = Outcome {
            status: Some(0),
            pipeline: pipeline.to_vec(),
            ..Outcome::default()
        };
        judge(text, &ran, Duration::from_secs(1), &[]).verdict
    }

    #[test]
    fn input_that_never_reaches_the_pod_is_unsafe() {
        assert_eq!(
            verdict("kubectl exec p -- psql -f - < dump.sql", &[0]),
            Verdict::Unsafe
        );
        assert_eq!(
            verdict("cat d.sql | \\\n  kubectl exec p -- psql", &[0, 0]),
            Verdict::Unsafe
        );
        assert_eq!(
            verdict("cat d.sql | kubectl exec -i p -- psql", &[0, 0]),
            Verdict::Ok
        );
        assert_eq!(
            verdict("kubectl exec -it p -- psql < d.sql", &[0]),
            Verdict::Ok
        );
        assert_eq!(
            verdict("kubectl exec p -- psql -c \"SELECT 1 < 2\"", &[0]),
            Verdict::Ok
        );
        assert_eq!(
            verdict("kubectl exec p -- psql -c 'SELECT 1' > out.txt", &[0]),
            Verdict::Ok
        );
    }
}
