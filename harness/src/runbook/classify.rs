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
/// heredoc bodies, redirections and their targets, and comments left out. Quotes and
/// command substitutions may span lines; a command substitution's commands are commands too.
///
/// Long by design: a lexer, one loop over the characters whose match arms are the shell's
/// quoting, substitution and operator rules; split up, the state it shares would have to be
/// passed around between the pieces.
pub(crate) fn simple_commands(text: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = text.chars().collect();
    let mut t = Tokens::default();
    let mut heredocs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                t.end_word();
                t.end_command();
                i += 1;
                // Heredoc bodies follow the line that opened them.
                for delim in std::mem::take(&mut heredocs) {
                    loop {
                        let end = chars[i..]
                            .iter()
                            .position(|c| *c == '\n')
                            .map_or(chars.len(), |p| i + p);
                        let line: String = chars[i..end].iter().collect();
                        i = (end + 1).min(chars.len());
                        if line.trim_start_matches('\t') == delim || i >= chars.len() {
                            break;
                        }
                    }
                }
                continue;
            }
            '\'' => {
                t.quoted = true;
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    t.word.push(chars[i]);
                    i += 1;
                }
            }
            '"' => {
                t.quoted = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    t.word.push(chars[i]);
                    i += 1;
                }
            }
            '\\' if chars.get(i + 1) == Some(&'\n') => i += 1,
            '\\' if i + 1 < chars.len() => {
                t.word.push(chars[i + 1]);
                i += 1;
            }
            '#' if t.word.is_empty() && !t.quoted => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '<' if chars.get(i + 1) == Some(&'<') && chars.get(i + 2) != Some(&'<') => {
                t.end_word();
                i += 2;
                if chars.get(i) == Some(&'-') {
                    i += 1;
                }
                while chars.get(i).is_some_and(|c| *c == ' ' || *c == '\t') {
                    i += 1;
                }
                let mut delim = String::new();
                while let Some(&c) = chars.get(i) {
                    if c.is_whitespace() || ";|&<>()".contains(c) {
                        break;
                    }
                    if !"'\"\\".contains(c) {
                        delim.push(c);
                    }
                    i += 1;
                }
                heredocs.push(delim);
                continue;
            }
            '<' | '>' => {
                // A redirection: an fd number before it and its target after are not words
                // of the command.
                if !t.quoted && !t.word.is_empty() && t.word.chars().all(|c| c.is_ascii_digit()) {
                    t.word.clear();
                }
                t.end_word();
                i += 1;
                while chars.get(i).is_some_and(|c| "<>|&".contains(*c)) {
                    i += 1;
                }
                if chars.get(i - 1) == Some(&'&') {
                    while chars
                        .get(i)
                        .is_some_and(|c| c.is_ascii_digit() || *c == '-')
                    {
                        i += 1;
                    }
                    continue;
                }
                t.skip_next = true;
                continue;
            }
            '&' if chars.get(i + 1) == Some(&'>') => {
                t.end_word();
                i += 2;
                t.skip_next = true;
                continue;
            }
            '$' if chars.get(i + 1) == Some(&'(') && chars.get(i + 2) != Some(&'(') => {
                t.word.push('$');
                t.end_word();
                t.end_command();
                i += 1;
            }
            ';' | '|' | '&' | '(' | ')' => {
                t.end_word();
                t.end_command();
            }
            c if c.is_whitespace() => t.end_word(),
            _ => t.word.push(c),
        }
        i += 1;
    }
    t.end_word();
    t.end_command();
    t.commands
}

#[derive(Default)]
struct Tokens {
    commands: Vec<Vec<String>>,
    current: Vec<String>,
    word: String,
    quoted: bool,
    /// The next word is a redirection's target.
    skip_next: bool,
}

impl Tokens {
    fn end_word(&mut self) {
        if !self.word.is_empty() || self.quoted {
            if self.skip_next {
                self.skip_next = false;
                self.word.clear();
            } else {
                self.current.push(std::mem::take(&mut self.word));
            }
        }
        self.quoted = false;
    }

    fn end_command(&mut self) {
        if !self.current.is_empty() {
            self.commands.push(std::mem::take(&mut self.current));
        }
    }
}

/// The program a simple command runs: its first word after variable assignments and the
/// keywords of compound commands, or `None` for an assignment alone.
pub(crate) fn program(words: &[String]) -> Option<&str> {
    words
        .iter()
        .map(String::as_str)
        .find(|w| {
            // Not an assignment (`X=1`).
            (!w.contains('=') || w.starts_with('=') || w.starts_with('-'))
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
        .filter(|w| {
            // A program's name, not arithmetic (`((n++))`) or an expansion.
            w.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '/' || c == '_')
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._/-+".contains(c))
                && !w.ends_with('+')
        })
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
                skip_value =
                    w.len() == 2 && w.strip_prefix('-').is_some_and(|o| "ptdnNua".contains(o));
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
    let long = |name: &str| args.contains(&name);
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
    fn quotes_across_lines_redirections_and_arithmetic_are_not_programs() {
        let programs = |t: &str| -> Vec<String> {
            simple_commands(t)
                .iter()
                .filter_map(|c| program(c).map(str::to_owned))
                .collect()
        };
        assert_eq!(
            programs("kubectl exec p -- psql -c \"\nSELECT 1\nFROM x;\n\" > out.txt"),
            ["kubectl"]
        );
        assert_eq!(
            programs("kubectl exec p -- psql -f - < f.sql --set X=1 2>&1 | head -20"),
            ["kubectl", "head"]
        );
        assert_eq!(programs("for i in {1..10}; do\n  ((N++))\ndone"), ["for"]);
        assert_eq!(programs("X=$(kubectl get svc \\\n  -o name)"), ["kubectl"]);
    }

    #[test]
    fn heredoc_bodies_are_not_commands() {
        let cmds = simple_commands("cat > f <<'EOF'\nhelm install x\nEOF\nkubectl apply -f f");
        let programs: Vec<_> = cmds.iter().filter_map(|c| program(c)).collect();
        assert_eq!(programs, ["cat", "kubectl"]);
    }
}
