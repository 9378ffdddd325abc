//! Parsing a runbook: the Markdown structure with pulldown-cmark (headings give each block its
//! section path, fenced code blocks with a shell info string are the blocks), then each block's
//! text split into the commands a shell would run one at a time.

use std::path::Path;

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::{Block, Command, RunbookError};

/// The info strings of fenced blocks that hold shell commands.
const SHELL_LANGUAGES: [&str; 5] = ["bash", "sh", "shell", "zsh", "console"];

/// Reads and parses a runbook file.
///
/// # Errors
/// [`RunbookError::Read`] when the file cannot be read, [`RunbookError::NotUtf8`] (with the
/// line and byte of the first invalid sequence) when it is not UTF-8,
/// [`RunbookError::NoShellBlocks`] when it holds no fenced shell block, and
/// [`RunbookError::UnterminatedCommand`] when a block ends inside a quote, heredoc or
/// compound command.
pub fn parse_file(path: &Path) -> Result<Vec<Block>, RunbookError> {
    let bytes = std::fs::read(path).map_err(|source| RunbookError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|err| {
        let valid = err.utf8_error().valid_up_to();
        let line = err.as_bytes()[..valid]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        RunbookError::NotUtf8 {
            path: path.to_owned(),
            line,
            byte: valid,
        }
    })?;
    let blocks = parse(&text)?;
    if blocks.is_empty() {
        return Err(RunbookError::NoShellBlocks {
            path: path.to_owned(),
        });
    }
    Ok(blocks)
}

/// Parses Markdown text into its shell blocks, in document order.
///
/// # Errors
/// [`RunbookError::UnterminatedCommand`] when a block ends inside a command.
pub fn parse(text: &str) -> Result<Vec<Block>, RunbookError> {
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut blocks = Vec::new();
    // The open headings, by level (H1 is the document's title and not part of a path).
    let mut headings: Vec<(HeadingLevel, String)> = Vec::new();
    let mut heading_text: Option<(HeadingLevel, String)> = None;
    let mut code: Option<(String, usize, String)> = None;
    let mut quote_depth = 0usize;
    let parser = Parser::new_ext(text, Options::ENABLE_TABLES).into_offset_iter();
    for (event, range) in parser {
        match event {
            Event::Start(Tag::Heading { level, .. }) => heading_text = Some((level, String::new())),
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, title)) = heading_text.take() {
                    headings.retain(|(l, _)| *l < level);
                    if level > HeadingLevel::H1 {
                        headings.push((level, title.trim().to_owned()));
                    }
                }
            }
            Event::Start(Tag::BlockQuote(_)) => quote_depth += 1,
            Event::End(TagEnd::BlockQuote(_)) => quote_depth = quote_depth.saturating_sub(1),
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                let language = info.split_whitespace().next().unwrap_or("").to_lowercase();
                code = Some((language, line_of(range.start), String::new()));
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some((language, fence_line, source)) = code.take()
                    && SHELL_LANGUAGES.contains(&language.as_str())
                {
                    let section: Vec<String> = headings.iter().map(|(_, t)| t.clone()).collect();
                    let (commands, commented) =
                        split_commands(&source, fence_line + 1).map_err(|(line, what)| {
                            RunbookError::UnterminatedCommand {
                                section: section.join(" > "),
                                line,
                                what,
                            }
                        })?;
                    blocks.push(Block {
                        index: blocks.len(),
                        section,
                        line: fence_line,
                        language,
                        quoted: quote_depth > 0,
                        source,
                        commands,
                        commented,
                    });
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, title)) = heading_text.as_mut() {
                    title.push_str(&t);
                } else if let Some((_, _, source)) = code.as_mut() {
                    source.push_str(&t);
                }
            }
            _ => {}
        }
    }
    Ok(blocks)
}

/// Where the lexer is inside a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    Single,
    Double,
    /// `$(` ... `)`.
    Subst,
    /// A subshell or arithmetic `(` ... `)`.
    Paren,
    Backtick,
}

/// The state of one command being read, line by line.
#[derive(Default)]
struct Lexer {
    stack: Vec<Context>,
    /// Heredoc delimiters seen on the current line, in order: (word, strip leading tabs).
    pending_heredocs: Vec<(String, bool)>,
    heredoc: Option<(String, bool)>,
    /// Open compound commands (`if`, `for`, `while`, `case`, `{`).
    depth: i32,
    continued: bool,
    /// The line ended with `|`, `&&` or `||`: the pipeline goes on.
    operator_open: bool,
}

impl Lexer {
    fn complete(&self) -> bool {
        self.stack.is_empty()
            && self.pending_heredocs.is_empty()
            && self.heredoc.is_none()
            && self.depth <= 0
            && !self.continued
            && !self.operator_open
    }

    fn what_is_open(&self) -> String {
        if let Some((word, _)) = &self.heredoc {
            return format!("a heredoc (no line `{word}` ends it)");
        }
        match self.stack.last() {
            Some(Context::Single) => "a single-quoted string".into(),
            Some(Context::Double) => "a double-quoted string".into(),
            Some(Context::Subst) => "a command substitution `$(`".into(),
            Some(Context::Paren) => "a parenthesis".into(),
            Some(Context::Backtick) => "a backquoted command".into(),
            None if self.depth > 0 => "a compound command (if/for/while/case/{)".into(),
            None if self.continued => "a line continued with `\\`".into(),
            None => "a pipeline or list ending with an operator".into(),
        }
    }

    /// Reads one line (without its newline).
    ///
    /// Long by design: a lexer, one loop over the line's characters with a match on the open
    /// quote or substitution, which are the shell's rules in the order bash applies them.
    fn line(&mut self, line: &str) {
        if let Some((word, strip)) = &self.heredoc {
            let body = if *strip {
                line.trim_start_matches('\t')
            } else {
                line
            };
            if body == word {
                self.heredoc = None;
                if !self.pending_heredocs.is_empty() {
                    self.heredoc = Some(self.pending_heredocs.remove(0));
                }
            }
            return;
        }
        self.continued = false;
        self.operator_open = false;
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        let mut word = String::new();
        let mut command_position = true;
        // The last significant character outside quotes (for a trailing `|`, `&&`, `||`).
        let mut last_op: Option<char> = None;
        while i < chars.len() {
            let c = chars[i];
            match self.stack.last().copied() {
                Some(Context::Single) => {
                    if c == '\'' {
                        self.stack.pop();
                    }
                    i += 1;
                    continue;
                }
                Some(Context::Double) => {
                    match c {
                        '\\' => i += 1,
                        '"' => {
                            self.stack.pop();
                        }
                        '$' if chars.get(i + 1) == Some(&'(') => {
                            self.stack.push(Context::Subst);
                            i += 1;
                        }
                        '`' => self.stack.push(Context::Backtick),
                        _ => {}
                    }
                    i += 1;
                    continue;
                }
                Some(Context::Backtick) if c == '`' => {
                    self.stack.pop();
                    i += 1;
                    continue;
                }
                _ => {}
            }
            // Unquoted (at the top level, or inside `$(`, `(` or backquotes).
            let ends_word = c.is_whitespace() || ";|&()<>".contains(c);
            if ends_word && !word.is_empty() {
                self.keyword(&word, &mut command_position);
                word.clear();
            }
            match c {
                '#' if word.is_empty() => break,
                '\\' => {
                    if i + 1 == chars.len() {
                        self.continued = true;
                    }
                    word.push('\\');
                    i += 1;
                }
                '\'' => self.stack.push(Context::Single),
                '"' => self.stack.push(Context::Double),
                '`' => self.stack.push(Context::Backtick),
                '$' if chars.get(i + 1) == Some(&'(') => {
                    self.stack.push(Context::Subst);
                    word.push_str("$(");
                    i += 1;
                }
                '(' => {
                    self.stack.push(Context::Paren);
                    command_position = true;
                }
                ')' => {
                    if matches!(self.stack.last(), Some(Context::Subst | Context::Paren)) {
                        self.stack.pop();
                    }
                    command_position = false;
                }
                '<' if chars.get(i + 1) == Some(&'<') && chars.get(i + 2) != Some(&'<') => {
                    i = self.heredoc_word(&chars, i + 2);
                    last_op = None;
                    continue;
                }
                ';' | '|' | '&' => command_position = true,
                _ if c.is_whitespace() => {}
                _ => word.push(c),
            }
            if !c.is_whitespace() {
                last_op = if "|&".contains(c) { Some(c) } else { None };
            }
            i += 1;
        }
        if !word.is_empty() && self.stack.is_empty() {
            self.keyword(&word, &mut command_position);
        }
        if self.stack.is_empty() && last_op.is_some() {
            // `cmd |` or `cmd &&` goes on, a lone trailing `&` (background) does not.
            let trimmed = line.trim_end();
            self.operator_open = trimmed.ends_with('|') || trimmed.ends_with("&&");
        }
        if !self.pending_heredocs.is_empty() {
            self.heredoc = Some(self.pending_heredocs.remove(0));
        }
    }

    /// Reads a heredoc's delimiter word starting at `i` (after `<<`), returns the index after it.
    fn heredoc_word(&mut self, chars: &[char], mut i: usize) -> usize {
        let strip = chars.get(i) == Some(&'-');
        if strip {
            i += 1;
        }
        while chars.get(i).is_some_and(|c| *c == ' ' || *c == '\t') {
            i += 1;
        }
        let mut word = String::new();
        while let Some(&c) = chars.get(i) {
            if c.is_whitespace() || ";|&<>()".contains(c) {
                break;
            }
            if c != '\'' && c != '"' && c != '\\' {
                word.push(c);
            }
            i += 1;
        }
        if !word.is_empty() {
            self.pending_heredocs.push((word, strip));
        }
        i
    }

    fn keyword(&mut self, word: &str, command_position: &mut bool) {
        if !*command_position {
            return;
        }
        match word {
            "if" | "for" | "while" | "until" | "case" | "{" | "select" => self.depth += 1,
            "fi" | "done" | "esac" | "}" => self.depth -= 1,
            _ => {}
        }
        // After these words a new command starts; after any other, its arguments follow.
        *command_position = matches!(
            word,
            "then" | "do" | "else" | "elif" | "{" | "!" | "time" | "if" | "while" | "until"
        );
    }
}

/// Splits a block's text into commands, each with its first line's number in the document.
/// Also returns comment lines that read like commands (an option the document leaves
/// commented out), as commands of their own.
///
/// # Errors
/// The line where an unterminated command starts and what is left open.
pub(crate) fn split_commands(
    source: &str,
    first_line: usize,
) -> Result<(Vec<Command>, Vec<Command>), (usize, String)> {
    let mut commands = Vec::new();
    let mut commented = Vec::new();
    let mut current: Option<(usize, Vec<&str>, Option<String>)> = None;
    let mut comment: Option<String> = None;
    let mut lexer = Lexer::default();
    for (n, line) in source.lines().enumerate() {
        let line_no = first_line + n;
        if current.is_none() {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                comment = None;
                continue;
            }
            if let Some(text) = trimmed.strip_prefix('#') {
                let text = text.trim();
                if looks_like_command(text) {
                    commented.push(Command {
                        line: line_no,
                        text: text.to_owned(),
                        comment: comment.clone(),
                    });
                } else {
                    comment = Some(text.to_owned());
                }
                continue;
            }
            current = Some((line_no, Vec::new(), comment.take()));
        }
        let (_, lines, _) = current.as_mut().expect("a command is open");
        lines.push(line);
        lexer.line(line);
        if lexer.complete() {
            let (line, lines, comment) = current.take().expect("a command is open");
            commands.push(Command {
                line,
                text: lines.join("\n"),
                comment,
            });
            lexer = Lexer::default();
        }
    }
    if let Some((line, _, _)) = current {
        return Err((line, lexer.what_is_open()));
    }
    Ok((commands, commented))
}

/// Whether a comment's text reads like a command someone would uncomment: ASCII, starting
/// with a program-like word followed by arguments (`solid-cloud cluster delete <name>`,
/// `aws s3 cp x s3://y/`), not prose or a heading (`TODO:`, `방법 1: ...`).
fn looks_like_command(text: &str) -> bool {
    let text = text.split("  #").next().unwrap_or(text).trim();
    if !text.is_ascii() || text.ends_with(':') {
        return false;
    }
    let mut words = text.split_whitespace();
    let (Some(first), Some(second)) = (words.next(), words.next()) else {
        return false;
    };
    let program_like = first
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_./".contains(c))
        && first
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '.');
    program_like && !first.ends_with(':') && second != "=" && !second.ends_with(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands(markdown: &str) -> Vec<(usize, String)> {
        parse(markdown)
            .unwrap()
            .into_iter()
            .flat_map(|b| b.commands)
            .map(|c| (c.line, c.text))
            .collect()
    }

    #[test]
    fn commands_span_continuations_heredocs_quotes_and_compound_statements() {
        let doc = "# T\n\n## A\n\n### a.1\n\n```bash\n# comment\nexport X=1\nkubectl get pods \\\n  -n x\ncat > f <<'EOF'\nbody $X\nEOF\npsql -c \"\nSELECT 1;\n\"\nif [ -f f ]; then\n  echo yes\nfi\nY=$(echo a |\n  tr a b)\n```\n\n```text\nnot shell\n```\n";
        let got = commands(doc);
        let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "export X=1",
                "kubectl get pods \\\n  -n x",
                "cat > f <<'EOF'\nbody $X\nEOF",
                "psql -c \"\nSELECT 1;\n\"",
                "if [ -f f ]; then\n  echo yes\nfi",
                "Y=$(echo a |\n  tr a b)",
            ]
        );
        assert_eq!(got[0].0, 9, "line numbers are the document's");
        let blocks = parse(doc).unwrap();
        assert_eq!(blocks.len(), 1, "only shell blocks");
        assert_eq!(blocks[0].section_path(), "A > a.1");
        assert_eq!(blocks[0].commands[0].comment.as_deref(), Some("comment"));
    }

    #[test]
    fn commented_out_commands_and_quoted_blocks_are_marked() {
        let doc = "## S\n\n```bash\n# 방법 2: S3\n# aws s3 cp a s3://b/\nls\n```\n\n> ```bash\n> ./scripts/x.sh\n> ```\n";
        let blocks = parse(doc).unwrap();
        assert_eq!(blocks[0].commented[0].text, "aws s3 cp a s3://b/");
        assert_eq!(blocks[0].commands.len(), 1);
        assert!(blocks[1].quoted);
        assert_eq!(blocks[1].commands[0].text, "./scripts/x.sh");
    }

    #[test]
    fn an_unterminated_command_is_an_error_naming_what_is_open() {
        let err = parse("## S\n\n```sh\ncat <<EOF\nnever ends\n```\n").unwrap_err();
        assert!(err.to_string().contains("heredoc"), "{err}");
        let err = parse("## S\n\n```sh\necho \"open\n```\n").unwrap_err();
        assert!(err.to_string().contains("double-quoted"), "{err}");
    }

    #[test]
    fn files_without_shell_blocks_or_not_utf8_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let prose = dir.path().join("prose.md");
        std::fs::write(&prose, "# Only prose\n\n```text\nls\n```\n").unwrap();
        let err = parse_file(&prose).unwrap_err();
        assert!(matches!(err, RunbookError::NoShellBlocks { .. }), "{err}");
        let latin = dir.path().join("latin.md");
        std::fs::write(&latin, b"## S\n\n```bash\necho caf\xe9\n```\n").unwrap();
        let err = parse_file(&latin).unwrap_err();
        assert!(
            matches!(err, RunbookError::NotUtf8 { line: 4, .. }),
            "{err}"
        );
    }

    /// The shipped Titanium runbook's blocks: section, line and commands of each.
    #[test]
    fn the_shipped_runbook_parses_into_its_blocks() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/runbook/solid-cloud-rebuild-guide.ko.md");
        let blocks = parse_file(&path).unwrap();
        let rendered: Vec<String> = blocks
            .iter()
            .map(|b| {
                let mut s = format!(
                    "[{}] line {}{}: {}\n",
                    b.index,
                    b.line,
                    if b.quoted { " (quoted)" } else { "" },
                    b.section_path()
                );
                for c in &b.commands {
                    s.push_str(&format!(
                        "  {:>4} | {}\n",
                        c.line,
                        c.text.replace('\n', "\n       | ")
                    ));
                }
                for c in &b.commented {
                    s.push_str(&format!("  {:>4} # {}\n", c.line, c.text));
                }
                s
            })
            .collect();
        insta::assert_snapshot!("shipped_runbook_blocks", rendered.join("\n"));
    }
}
