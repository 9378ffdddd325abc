//! What is not run, and why: a command waiting for an answer at a terminal, one depending on
//! such an answer, a tool that is not installed, and a destructive command aimed outside the
//! scratch directory (refused before it runs; the read-only mount namespace is the second
//! line of defence, not the first).

use std::collections::BTreeSet;
use std::path::Path;

/// What to do with a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classification {
    /// Run it.
    Run,
    /// Do not run it; the reason goes in the report.
    Skip(String),
    /// Refuse it: destructive outside the scratch directory.
    Refuse(String),
}

/// Shell words that are not programs to look up.
const BUILTINS: &[&str] = &[
    "cd", "export", "echo", "printf", "read", "source", ".", "set", "unset", "if", "then", "else",
    "elif", "fi", "for", "while", "until", "do", "done", "case", "esac", "in", "{", "}", "!",
    "test", "[", "[[", "]]", "true", "false", "exit", "return", "local", "declare", "eval", "exec",
    "shift", "let", "type", "command", "history", "time", "wait", "sleep", "pwd", "umask", "trap",
    "break", "continue", "((", "select", "function",
];

/// The simple commands of `text` as words (quotes removed, variables left as written), with
/// heredoc bodies and comments left out.
pub(crate) fn simple_commands(text: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut heredoc: Option<String> = None;
    for line in text.lines() {
        if let Some(word) = &heredoc {
            if line.trim_start_matches('\t') == word {
                heredoc = None;
            }
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        let mut word = String::new();
        let mut quoted = false;
        let flush = |word: &mut String, quoted: &mut bool, commands: &mut Vec<Vec<String>>| {
            if !word.is_empty() || *quoted {
                commands.last_mut().expect("one").push(std::mem::take(word));
            }
            *quoted = false;
        };
        while i < chars.len() {
            let c = chars[i];
            match c {
                '\'' => {
                    quoted = true;
                    i += 1;
                    while i < chars.len() && chars[i] != '\'' {
                        word.push(chars[i]);
                        i += 1;
                    }
                }
                '"' => {
                    quoted = true;
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        if chars[i] == '\\' && i + 1 < chars.len() {
                            i += 1;
                        }
                        word.push(chars[i]);
                        i += 1;
                    }
                }
                '\\' if i + 1 < chars.len() => {
                    word.push(chars[i + 1]);
                    i += 1;
                }
                '\\' => {}
                '#' if word.is_empty() && !quoted => break,
                '<' if chars.get(i + 1) == Some(&'<') && chars.get(i + 2) != Some(&'<') => {
                    flush(&mut word, &mut quoted, &mut commands);
                    i += 2;
                    if chars.get(i) == Some(&'-') {
                        i += 1;
                    }
                    let rest: String = chars[i..].iter().collect();
                    let delim: String = rest
                        .trim_start()
                        .chars()
                        .take_while(|c| !c.is_whitespace() && !";|&<>)".contains(*c))
                        .filter(|c| !"'\"\\".contains(*c))
                        .collect();
                    i += rest.len() - rest.trim_start().len() + delim.len();
                    heredoc = Some(delim);
                    continue;
                }
                ';' | '|' | '&' | '(' | ')' => {
                    flush(&mut word, &mut quoted, &mut commands);
                    if !commands.last().expect("one").is_empty() {
                        commands.push(Vec::new());
                    }
                }
                '$' if chars.get(i + 1) == Some(&'(') => {
                    // A command substitution's commands are commands too.
                    flush(&mut word, &mut quoted, &mut commands);
                    word.push('$');
                    flush(&mut word, &mut quoted, &mut commands);
                    commands.push(Vec::new());
                    i += 1;
                }
                c if c.is_whitespace() => flush(&mut word, &mut quoted, &mut commands),
                _ => word.push(c),
            }
            i += 1;
        }
        flush(&mut word, &mut quoted, &mut commands);
    }
    commands.retain(|c| !c.is_empty());
    commands
}

/// The program a simple command runs: its first word after variable assignments and the
/// keywords of compound commands, or `None` for an assignment alone.
pub(crate) fn program(words: &[String]) -> Option<&str> {
    words
        .iter()
        .map(String::as_str)
        .find(|w| {
            !(w.contains('=') && !w.starts_with('=') && !w.starts_with('-'))
                && !matches!(
                    *w,
                    "if" | "then"
                        | "else"
                        | "elif"
                        | "fi"
                        | "do"
                        | "done"
                        | "!"
                        | "time"
                        | "$"
                        | "while"
                        | "until"
                        | "{"
                        | "}"
                        | "sudo"
                )
        })
        .filter(|w| !w.starts_with('[') && !w.starts_with('$'))
}

/// Classifies `text` before it runs. `prompted` holds the variables set by prompts that were
/// skipped; `scratch` is the only directory commands may destroy things in.
pub fn classify(text: &str, prompted: &BTreeSet<String>, scratch: &Path) -> Classification {
    let commands = simple_commands(text);
    for words in &commands {
        if let Some(why) = destructive(words, scratch) {
            return Classification::Refuse(why);
        }
    }
    for words in &commands {
        if program(words) == Some("read") {
            return Classification::Skip(
                "interactive prompt: `read` waits for an answer typed at a terminal, which a \
                 rehearsal does not have"
                    .into(),
            );
        }
    }
    for var in prompted {
        if text.contains(&format!("${var}")) || text.contains(&format!("${{{var}}}")) {
            return Classification::Skip(format!(
                "depends on the answer to a skipped interactive prompt (`${var}`)"
            ));
        }
    }
    let mut missing = BTreeSet::new();
    for words in &commands {
        let Some(program) = program(words) else {
            continue;
        };
        if BUILTINS.contains(&program) || program.contains('/') {
            continue;
        }
        if which::which(program).is_err() {
            missing.insert(program.to_owned());
        }
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|p| format!("`{p}`")).collect();
        return Classification::Skip(format!("not installed here: {}", list.join(", ")));
    }
    Classification::Run
}

/// The variables a `read` command sets (its non-option words after `read`).
pub(crate) fn read_targets(text: &str) -> Vec<String> {
    let mut vars = Vec::new();
    for words in simple_commands(text) {
        if program(&words) != Some("read") {
            continue;
        }
        let mut skip_value = false;
        for w in words.iter().skip_while(|w| *w != "read").skip(1) {
            if skip_value {
                skip_value = false;
            } else if w.starts_with('-') {
                // Options with a value: -p PROMPT, -t SECONDS, -d DELIM, -n/-N COUNT, -u FD.
                skip_value = w.len() == 2 && "ptdnNua".contains(&w[1..]);
            } else {
                vars.push(w.clone());
            }
        }
    }
    vars
}

/// Why `words` would destroy something outside the scratch directory, if it would.
fn destructive(words: &[String], scratch: &Path) -> Option<String> {
    let program = program(words)?;
    let args: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .skip_while(|w| *w != program)
        .skip(1)
        .collect();
    let outside = |target: &str| -> bool {
        let t = target.trim_end_matches('/');
        if t.is_empty() || t == "/*" || t == "~" || t == "$HOME" || t == "${HOME}" || t == "*" {
            return true;
        }
        if t.starts_with("~/") || t.starts_with("$HOME/") {
            // Under the session's home, which is in the scratch directory.
            return false;
        }
        t.starts_with('/') && !Path::new(t).starts_with(scratch)
    };
    let flags: String = args
        .iter()
        .filter(|a| a.starts_with('-') && !a.starts_with("--"))
        .flat_map(|a| a.chars().skip(1))
        .collect();
    let long = |name: &str| args.iter().any(|a| *a == name);
    match program {
        "rm" if flags.contains('r') || flags.contains('R') || long("--recursive") => {
            let targets: Vec<&&str> = args.iter().filter(|a| !a.starts_with('-')).collect();
            targets.iter().find(|t| outside(t)).map(|t| {
                format!(
                    "refused before running: `rm` recursively removes `{t}`, outside the \
                     rehearsal's scratch directory"
                )
            })
        }
        "chmod" | "chown" if flags.contains('R') => args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .skip(1)
            .find(|t| outside(t))
            .map(|t| format!("refused before running: recursive `{program}` of `{t}`")),
        "find" if long("-delete") => args
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .find(|t| outside(t))
            .map(|t| format!("refused before running: `find {t} ... -delete`")),
        "dd" => args
            .iter()
            .find(|a| a.starts_with("of=/dev/"))
            .map(|a| format!("refused before running: `dd {a}` overwrites a device")),
        p if p.starts_with("mkfs") => {
            Some(format!("refused before running: `{p}` formats a device"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &str) {
        let got = match classify(text, &BTreeSet::new(), Path::new("/tmp/scratch")) {
            Classification::Run => "run".to_owned(),
            Classification::Skip(why) => format!("skip: {why}"),
            Classification::Refuse(why) => format!("refuse: {why}"),
        };
        assert!(got.starts_with(expected), "{text:?}: {got}");
    }

    #[test]
    fn destructive_commands_outside_the_scratch_directory_are_refused() {
        check("rm -rf /", "refuse");
        check("rm -rf /*", "refuse");
        check("sudo rm -fr ~", "refuse");
        check("rm -r -f /etc/ssl", "refuse");
        check("cd / && rm -rf *", "refuse");
        check("find / -name x -delete", "refuse");
        check("rm -rf /tmp/scratch/x", "run");
        check("rm -rf ~/solid-cloud-backup/old", "run");
        check("rm /tmp/x.tar.gz", "run");
    }

    #[test]
    fn prompts_and_missing_tools_are_skipped() {
        check("read CONFIRM", "skip: interactive");
        check("read -s -p \"pw: \" TF_VAR_x", "skip: interactive");
        check("k6-not-installed-anywhere run x.js", "skip: not installed");
        check("echo $(date +%Y) | grep -c 2", "run");
        assert_eq!(read_targets("read -s -p \"pw: \" TF_VAR_x"), ["TF_VAR_x"]);
        let prompted: BTreeSet<String> = ["CONFIRM".to_owned()].into();
        assert!(matches!(
            classify(
                "if [ \"$CONFIRM\" != yes ]; then exit 1; fi",
                &prompted,
                Path::new("/s")
            ),
            Classification::Skip(_)
        ));
    }

    #[test]
    fn heredoc_bodies_are_not_commands() {
        let cmds = simple_commands("cat > f <<'EOF'\nhelm install x\nEOF\nkubectl apply -f f");
        let programs: Vec<_> = cmds.iter().filter_map(|c| program(c)).collect();
        assert_eq!(programs, ["cat", "kubectl"]);
    }
}
