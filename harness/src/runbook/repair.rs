//! Generic repair strategies, each derived from the error a tool printed, never from the
//! document's text: drop an option the tool says it does not know, drop a resource type the
//! server says it does not have, drop `-t` when the tool says there is no terminal, add
//! `-n $NAMESPACE` to a kubectl command that found nothing without one, run a command that
//! names a relative path from an earlier working directory where that path exists. The run
//! executes each candidate in the session and keeps the first that succeeds.

use std::path::{Path, PathBuf};

/// A corrected command and the strategy that produced it (with the tool's words).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) command: String,
    pub(crate) strategy: String,
}

/// What a strategy may know about the session.
pub(crate) struct Context<'a> {
    /// `$NAMESPACE` in the session, if set.
    pub(crate) namespace: Option<&'a str>,
    /// Working directories of earlier commands, most recent first.
    pub(crate) earlier_dirs: &'a [PathBuf],
    /// The working directory the command failed in.
    pub(crate) cwd: &'a Path,
    /// The failed program's own help text, when its error says it waited for an answer.
    pub(crate) help: Option<&'a str>,
    /// The session's `$HOME`: a directory under it is written `~/...` in a suggestion.
    pub(crate) home: &'a Path,
}

/// Whether a tool's error says it asked for an answer and read end of file.
pub(crate) fn asked_for_answer(stderr: &str) -> bool {
    let s = stderr.to_lowercase();
    (s.contains("approval")
        || s.contains("confirm")
        || s.contains("enter a value")
        || s.contains("prompt"))
        && s.contains("eof")
}

/// The text between the first `open` after `marker` and the next `close`.
fn quoted_after<'a>(text: &'a str, marker: &str, close: &[char]) -> Option<&'a str> {
    let start = text.find(marker)? + marker.len();
    let rest = &text[start..];
    let end = rest.find(|c| close.contains(&c))?;
    Some(&rest[..end])
}

/// Options the tool says it does not know, as they would appear in the command.
fn unknown_options(stderr: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in stderr.lines() {
        let option = if let Some(o) = quoted_after(line, "unrecognized option '", &['\'']) {
            Some(o.to_owned())
        } else if let Some(o) = quoted_after(line, "unrecognized option `", &['\'', '`']) {
            Some(o.to_owned())
        } else if let Some(o) = quoted_after(line, "unknown flag: ", &[' ', '\n']).or_else(|| {
            line.find("unknown flag: ")
                .map(|i| line[i + "unknown flag: ".len()..].trim())
        }) {
            Some(o.to_owned())
        } else if let Some(o) = quoted_after(line, "unknown shorthand flag: '", &['\'']) {
            Some(format!("-{o}"))
        } else if let Some(o) = quoted_after(line, "invalid option -- '", &['\'']) {
            Some(format!("-{o}"))
        } else {
            line.find("flag provided but not defined: ").map(|i| {
                line[i + "flag provided but not defined: ".len()..]
                    .trim()
                    .to_owned()
            })
        };
        if let Some(o) = option.map(|o| o.split('=').next().unwrap_or("").to_owned())
            && !o.is_empty()
            && !found.contains(&o)
        {
            found.push(o);
        }
    }
    found
}

/// `text` without the option `option` (and its `=value`). `None` when it does not occur as a
/// word of its own.
fn drop_option(text: &str, option: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut dropped = false;
    for line in text.split('\n') {
        let words: Vec<&str> = line.split(' ').collect();
        let kept: Vec<&str> = words
            .iter()
            .copied()
            .filter(|w| {
                let hit = *w == option || w.starts_with(&format!("{option}="));
                dropped |= hit;
                !hit
            })
            .collect();
        out.push(kept.join(" "));
    }
    dropped.then(|| out.join("\n"))
}

/// Candidates for a command that failed with `stderr`, one strategy after another.
pub(crate) fn candidates(text: &str, stderr: &str, ctx: &Context<'_>) -> Vec<Candidate> {
    let mut out = Vec::new();
    out.extend(drop_unknown_options(text, stderr));
    out.extend(drop_missing_resource_types(text, stderr));
    out.extend(drop_tty(text, stderr));
    out.extend(add_namespace(text, stderr, ctx));
    out.extend(answer_prompt(text, stderr, ctx));
    out.extend(split_transaction(text, stderr));
    out.extend(connect_to_postgres(text, stderr));
    out.extend(run_in_earlier_dir(text, stderr, ctx));
    out
}

/// The last non-empty line of `s`, trimmed: what a strategy quotes of the tool's error.
fn last_words(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// Strategy 1: an option the tool names as unknown: dropped.
fn drop_unknown_options(text: &str, stderr: &str) -> Option<Candidate> {
    let unknown = unknown_options(stderr);
    if unknown.is_empty() {
        return None;
    }
    let mut fixed = text.to_owned();
    for o in &unknown {
        if let Some(f) = drop_option(&fixed, o) {
            fixed = f;
        }
    }
    (fixed != text).then(|| Candidate {
        command: fixed,
        strategy: format!(
            "drop the option(s) the tool does not know ({}): {}",
            unknown.join(", "),
            last_words(stderr)
        ),
    })
}

/// Strategy 2: a resource type the server does not have, in a comma list of kubectl get: dropped.
fn drop_missing_resource_types(text: &str, stderr: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    for line in stderr.lines() {
        if let Some(kind) = quoted_after(line, "doesn't have a resource type \"", &['"']) {
            let fixed = text
                .replace(&format!(",{kind},"), ",")
                .replace(&format!(",{kind} "), " ")
                .replace(&format!(" {kind},"), " ");
            if fixed != text {
                out.push(Candidate {
                    command: fixed,
                    strategy: format!("drop the resource type the server does not have: {line}"),
                });
            }
        }
    }
    out
}

/// Strategy 3: no terminal for `-t`: dropped.
fn drop_tty(text: &str, stderr: &str) -> Option<Candidate> {
    if !(stderr.contains("not a TTY") || stderr.contains("Unable to use a TTY")) {
        return None;
    }
    let fixed = text
        .replace(" -it ", " -i ")
        .replace(" -ti ", " -i ")
        .replace(" -t ", " ");
    (fixed != text).then(|| Candidate {
        command: fixed,
        strategy: format!("drop -t: there is no terminal ({})", last_words(stderr)),
    })
}

/// Strategy 4: kubectl found nothing and named no namespace: the document's namespace added.
fn add_namespace(text: &str, stderr: &str, ctx: &Context<'_>) -> Option<Candidate> {
    let ns = ctx.namespace?;
    let applies = text.starts_with("kubectl ")
        && !text.contains(" -n ")
        && !text.contains("--namespace")
        && !text.contains(" -A")
        && (stderr.contains("NotFound") || stderr.contains("not found"));
    applies.then(|| Candidate {
        command: text.replacen("kubectl ", "kubectl -n $NAMESPACE ", 1),
        strategy: format!(
            "add the document's namespace ($NAMESPACE is {ns}): kubectl looked in the \
             default one ({})",
            last_words(stderr)
        ),
    })
}

/// Strategy 5: the tool asked for an answer at a terminal: its own option for answering yes, from
/// its help.
fn answer_prompt(text: &str, stderr: &str, ctx: &Context<'_>) -> Option<Candidate> {
    if !asked_for_answer(stderr) {
        return None;
    }
    let option = ctx
        .help?
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
        .find(|w| {
            w.starts_with('-') && (w.contains("approve") || *w == "--yes" || *w == "--assume-yes")
        })?;
    Some(Candidate {
        command: format!("{} {option}", text.trim_end()),
        strategy: format!(
            "answer the tool's prompt with its own option `{option}` (from its help): {}",
            last_words(stderr)
        ),
    })
}

/// Strategy 6: PostgreSQL: statements that cannot share a transaction, given as one `-c` string
/// (psql runs a multi-statement `-c` as one transaction), each get their own `-c`.
fn split_transaction(text: &str, stderr: &str) -> Option<Candidate> {
    if !stderr.contains("cannot run inside a transaction block") {
        return None;
    }
    Some(Candidate {
        command: split_psql_c(text)?,
        strategy: format!(
            "give each statement its own -c (psql runs one -c string as one transaction): {}",
            last_words(stderr)
        ),
    })
}

/// Strategy 7: PostgreSQL: the database to drop is the one connected to; connect to `postgres`.
fn connect_to_postgres(text: &str, stderr: &str) -> Option<Candidate> {
    if !stderr.contains("cannot drop the currently open database") {
        return None;
    }
    let db = text
        .split_whitespace()
        .skip_while(|w| *w != "-d")
        .nth(1)
        .filter(|db| *db != "postgres")?;
    Some(Candidate {
        command: text.replacen(&format!("-d {db}"), "-d postgres", 1),
        strategy: format!(
            "connect to the maintenance database `postgres` instead: {}",
            last_words(stderr)
        ),
    })
}

/// Strategy 8: a relative path that does not exist here but did in an earlier directory: the
/// command run there (for the first such path).
fn run_in_earlier_dir(text: &str, stderr: &str, ctx: &Context<'_>) -> Option<Candidate> {
    for line in stderr.lines() {
        // bash's and most tools' "PATH: No such file or directory"; kubectl's "the path
        // "PATH" does not exist".
        let path = if let Some(end) = line.find(": No such file or directory") {
            let before = &line[..end];
            before
                .rsplit(": ")
                .next()
                .unwrap_or(before)
                .trim_matches(['\'', '`', '"'])
        } else if let Some(p) =
            quoted_after(line, "the path \"", &['"']).filter(|_| line.contains("does not exist"))
        {
            p
        } else {
            continue;
        };
        if path.starts_with('/') || path.is_empty() || !text.contains(path) {
            continue;
        }
        let parent = Path::new(path).parent().unwrap_or(Path::new(""));
        let here = ctx.cwd.join(parent);
        if here.is_dir() {
            continue;
        }
        if let Some(dir) = ctx
            .earlier_dirs
            .iter()
            .find(|d| d.join(parent).is_dir() && d.as_path() != ctx.cwd)
        {
            let target = match dir.strip_prefix(ctx.home) {
                Ok(rest) => format!("~/{}", super::shell::quote(&rest.display().to_string())),
                Err(_) => super::shell::quote(&dir.display().to_string()),
            };
            return Some(Candidate {
                command: format!("cd {target} && {text}"),
                strategy: format!(
                    "run it where `{}` exists (an earlier section's working directory): {line}",
                    parent.display()
                ),
            });
        }
    }
    None
}

/// `text` with its `-c "S1; S2;"` split into `-c "S1;" -c "S2;"`, when it holds two or more
/// statements.
fn split_psql_c(text: &str) -> Option<String> {
    let start = text.find("-c \"")?;
    let body_start = start + 4;
    let end = body_start + text[body_start..].find('"')?;
    let statements: Vec<&str> = text[body_start..end]
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if statements.len() < 2 {
        return None;
    }
    let options: Vec<String> = statements.iter().map(|s| format!("-c \"{s};\"")).collect();
    Some(format!(
        "{}{}{}",
        &text[..start],
        options.join(" "),
        &text[end + 1..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixes(text: &str, stderr: &str) -> Vec<String> {
        let ctx = Context {
            namespace: Some("titanium-prod"),
            earlier_dirs: &[],
            cwd: Path::new("/nonexistent"),
            home: Path::new("/home"),
            help: Some(
                "Usage: terraform destroy [options]\n  -auto-approve  Skip interactive approval",
            ),
        };
        candidates(text, stderr, &ctx)
            .into_iter()
            .map(|c| c.command)
            .collect()
    }

    #[test]
    fn an_unknown_option_named_by_the_tool_is_dropped() {
        assert_eq!(
            fixes(
                "psql -f - --set X=1 --dry-run",
                "psql: unrecognized option '--dry-run'"
            ),
            ["psql -f - --set X=1"]
        );
        assert_eq!(
            fixes("kubectl get pods --bogus=1", "error: unknown flag: --bogus"),
            ["kubectl get pods"]
        );
        assert_eq!(fixes("tar -Q x", "tar: invalid option -- 'Q'"), ["tar x"]);
        assert!(fixes("psql -c 'select 1'", "ERROR: syntax error").is_empty());
    }

    #[test]
    fn kubectl_errors_lead_to_their_repairs() {
        assert_eq!(
            fixes(
                "kubectl get all,gateway,pvc -n x",
                "error: the server doesn't have a resource type \"gateway\""
            ),
            ["kubectl get all,pvc -n x"]
        );
        assert_eq!(
            fixes(
                "kubectl get pod postgresql-0",
                "Error from server (NotFound): pods \"postgresql-0\" not found"
            ),
            ["kubectl -n $NAMESPACE get pod postgresql-0"]
        );
        assert_eq!(
            fixes(
                "kubectl exec -it p -- psql",
                "Unable to use a TTY - input is not a terminal"
            ),
            ["kubectl exec -i p -- psql"]
        );
        assert_eq!(
            fixes(
                "kubectl exec p -- psql -d titanium -c \"\nDROP DATABASE titanium;\nCREATE DATABASE titanium;\n\"",
                "ERROR:  DROP DATABASE cannot run inside a transaction block"
            ),
            [
                "kubectl exec p -- psql -d titanium -c \"DROP DATABASE titanium;\" -c \"CREATE DATABASE titanium;\""
            ]
        );
        assert_eq!(
            fixes(
                "psql -d titanium -c \"DROP DATABASE titanium;\"",
                "ERROR:  cannot drop the currently open database"
            ),
            ["psql -d postgres -c \"DROP DATABASE titanium;\""]
        );
        assert_eq!(
            fixes("terraform destroy", "Error: error asking for approval: EOF"),
            ["terraform destroy -auto-approve"]
        );
    }
}

#[cfg(test)]
mod directory_tests {
    use super::*;

    #[test]
    fn a_relative_path_found_in_an_earlier_directory_is_run_there() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("repo");
        std::fs::create_dir_all(repo.join("k8s/base")).unwrap();
        let elsewhere = root.path().join("repo/tests");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let dirs = [repo.clone()];
        let ctx = Context {
            namespace: None,
            earlier_dirs: &dirs,
            cwd: &elsewhere,
            help: None,
            home: root.path(),
        };
        for stderr in [
            "error: the path \"k8s/base/x.yaml\" does not exist",
            "bash: line 2: k8s/base/x.yaml: No such file or directory",
        ] {
            let got = candidates("kubectl apply -f k8s/base/x.yaml", stderr, &ctx);
            assert_eq!(got.len(), 1, "{stderr}: {got:?}");
            assert_eq!(
                got[0].command,
                "cd ~/'repo' && kubectl apply -f k8s/base/x.yaml"
            );
        }
    }
}
