//! Executing a team's runbook as written: a Markdown document's fenced shell blocks, run in
//! document order in one confined shell session, each command judged (`ok`, `failed`,
//! `unsafe`, `skipped`, `replaced`) and, where it failed, a corrected command found by running
//! repair candidates derived from the tool's own error.
//!
//! - `parse`: the document's structure (pulldown-cmark) and each block's commands;
//! - `shell`: one persistent bash session under a private mount namespace in which everything
//!   but the scratch directory is read-only, each command with a deadline;
//! - `classify`: what is not run (interactive prompts, tools not installed, destructive
//!   commands aimed outside the scratch directory) and why;
//! - `checks`: what the document implies about a command's effect (a written file is not
//!   empty, a count printed before the backup equals the one after the restore, no tool
//!   reported an error it did not exit with);
//! - `repair`: generic repair strategies driven by the tool's error, each kept only when it
//!   then succeeds;
//! - `run`: the loop, with the caller's [`StandIns`] (the cluster, the load gate).
//!
//! The report model is `crate::report::runbook`.

mod checks;
mod classify;
mod parse;
mod repair;
mod run;
mod shell;

use std::path::PathBuf;

use serde::Serialize;

pub use classify::{Classification, classify};
pub use parse::{parse, parse_file};
pub use run::{Options, StandIn, StandIns, run, select};
pub use shell::{Outcome as ShellOutcome, Session, SessionOptions};

/// One fenced shell block of the document.
#[derive(Clone, Debug, Serialize)]
pub struct Block {
    /// Its position among the document's shell blocks, from 0.
    pub index: usize,
    /// The headings it is under, outermost first (the document's H1 title excluded).
    pub section: Vec<String>,
    /// The line of its opening fence (1-based).
    pub line: usize,
    /// The fence's info string (`bash`, `sh`, ...).
    pub language: String,
    /// Whether it is inside a block quote (an aside, such as an automation option).
    pub quoted: bool,
    /// The block's text.
    #[serde(skip)]
    pub source: String,
    /// Its commands, in order.
    pub commands: Vec<Command>,
    /// Comment lines that read like commands (options left commented out): never run.
    pub commented: Vec<Command>,
}

impl Block {
    /// The section path as one string (`Phase 5 > 5.2 데이터 복구 > 방법 A`).
    pub fn section_path(&self) -> String {
        self.section.join(" > ")
    }
}

/// One command as a shell would read it: a line with its continuations, heredoc bodies and
/// multi-line quotes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Command {
    /// Its first line in the document (1-based).
    pub line: usize,
    /// The command as written.
    pub text: String,
    /// The comment line just before it, if any (what the document says it does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Why a runbook could not be read or run.
#[derive(Debug, thiserror::Error)]
pub enum RunbookError {
    /// The file could not be read.
    #[error("cannot read the runbook {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not UTF-8.
    #[error(
        "the runbook {path} is not UTF-8: invalid byte sequence at line {line} (byte {byte}); \
         convert it (e.g. iconv -f EUC-KR -t UTF-8)"
    )]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// The line of the first invalid byte.
        line: usize,
        /// Its byte offset.
        byte: usize,
    },
    /// No fenced block with a shell info string.
    #[error(
        "the runbook {path} has no fenced shell block (```bash, ```sh or ```shell): nothing to run"
    )]
    NoShellBlocks {
        /// The file.
        path: PathBuf,
    },
    /// A block ends inside a command.
    #[error("the block in section `{section}` ends inside {what} (command from line {line})")]
    UnterminatedCommand {
        /// The block's section path.
        section: String,
        /// The command's first line.
        line: usize,
        /// What is left open.
        what: String,
    },
    /// `--from` or `--only` names no section of the document.
    #[error("no section of the runbook matches `{wanted}`; its sections are: {known}")]
    NoSuchSection {
        /// The text given.
        wanted: String,
        /// The document's section paths.
        known: String,
    },
    /// The confined shell could not be started or talked to.
    #[error("the runbook's shell session failed: {what}")]
    Shell {
        /// What failed.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The confined shell could not be set up (no mount namespace, no read-only remount).
    #[error(
        "cannot confine the runbook's shell (private mount namespace with a read-only root): \
         {detail}"
    )]
    Confine {
        /// unshare's or mount's own words.
        detail: String,
    },
}
