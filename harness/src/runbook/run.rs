//! The loop: every block in document order, every command classified, run in the session (or
//! done by the caller's stand-in), judged, and for a failed or unsafe one, repair candidates
//! run in its place until one succeeds.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::checks::{self, Files};
use super::classify::{self, Classification};
use super::repair;
use super::shell::{Outcome, Session};
use super::{Block, Command, RunbookError};
use crate::report::runbook::{CommandReport, RunbookReport, Suggestion, Verdict};

/// How to run a document.
#[derive(Clone, Debug)]
pub struct Options {
    /// Each command's deadline.
    pub deadline: Duration,
    /// Values that must never appear in the report (passwords), replaced by `***`.
    pub secrets: Vec<String>,
}

/// What a stand-in did in place of a command.
#[derive(Clone, Debug)]
pub struct StandIn {
    /// What stood in (`the goose load gate with k6's thresholds`).
    pub by: String,
    /// Its result: `Ok(summary)` is `replaced`; `Err(why)` is `failed`, in the stand-in's words.
    pub result: Result<String, String>,
}

/// What the caller provides: the cluster under the document, and stand-ins for what a
/// rehearsal cannot have.
pub trait StandIns: Send {
    /// Called before each block; may act on the cluster (destroy cluster A before the
    /// document's rebuild phase, create cluster B) and returns what it did.
    fn before_block(
        &mut self,
        block: &Block,
        session: &mut Session,
    ) -> impl Future<Output = Result<Vec<String>, String>> + Send;

    /// Does the work of a command that cannot run as written (`k6 run`, `istioctl install`),
    /// or `None` to let the command be classified and run.
    fn replace(
        &mut self,
        programs: &[Vec<String>],
        text: &str,
        session: &mut Session,
    ) -> impl Future<Output = Option<StandIn>> + Send;

    /// Prepares what the author's machine had before a command runs (a directory created for
    /// a `cd` into a laptop path gets the project's stand-in contents; a kubeconfig the
    /// document expects downloaded). Returns a note for the report.
    fn prepare(
        &mut self,
        text: &str,
        created_dirs: &[PathBuf],
        session: &mut Session,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;

    /// Looks at what a command that succeeded left in the cluster (a claim that will never be
    /// provisioned, say). Each finding makes the command `unsafe`, in the cluster's words.
    /// `since` is when the command started: what the cluster reported before is not its doing.
    fn inspect(
        &mut self,
        _text: &str,
        _since: std::time::SystemTime,
    ) -> impl Future<Output = Vec<String>> + Send {
        async { Vec::new() }
    }
}

/// Keeps the blocks from the first one whose section path contains `from`, and only those
/// whose section path contains `only`.
///
/// # Errors
/// [`RunbookError::NoSuchSection`] when either matches no block.
pub fn select(
    blocks: Vec<Block>,
    from: Option<&str>,
    only: Option<&str>,
) -> Result<Vec<Block>, RunbookError> {
    let known = || {
        let mut paths: Vec<String> = blocks.iter().map(Block::section_path).collect();
        paths.dedup();
        paths.join("; ")
    };
    let mut selected = blocks.clone();
    if let Some(from) = from {
        let start = blocks
            .iter()
            .position(|b| b.section_path().contains(from))
            .ok_or_else(|| RunbookError::NoSuchSection {
                wanted: from.to_owned(),
                known: known(),
            })?;
        selected = selected.split_off(start);
    }
    if let Some(only) = only {
        selected.retain(|b| b.section_path().contains(only));
        if selected.is_empty() {
            return Err(RunbookError::NoSuchSection {
                wanted: only.to_owned(),
                known: known(),
            });
        }
    }
    Ok(selected)
}

/// Runs `blocks` in `session` and reports every command.
pub async fn run(
    document: &str,
    provider: &str,
    blocks: &[Block],
    session: &mut Session,
    stand_ins: &mut impl StandIns,
    options: &Options,
) -> RunbookReport {
    let mut report = RunbookReport {
        document: document.to_owned(),
        provider: provider.to_owned(),
        started_at: chrono::Utc::now().to_rfc3339(),
        events: Vec::new(),
        commands: Vec::new(),
        summary: Default::default(),
        stopped: None,
    };
    let mut prompted = BTreeSet::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    'blocks: for block in blocks {
        let section = block.section_path();
        match stand_ins.before_block(block, session).await {
            Ok(events) => report.events.extend(events),
            Err(why) => {
                report.stopped = Some(format!("before `{section}`: {why}"));
                break 'blocks;
            }
        }
        let first_of_block = report.commands.len();
        for c in &block.commented {
            report
                .commands
                .push(commented_out(&section, c, &prompted, session));
        }
        for c in &block.commands {
            let settled =
                settle_without_running(&section, block, c, session, stand_ins, &mut prompted);
            if let Some(r) = settled.await {
                report.commands.push(r);
                continue;
            }
            let r = run_one(
                c.line, &c.text, &section, session, stand_ins, options, &dirs,
            )
            .await;
            match r {
                Ok(r) => report.commands.push(r),
                Err(err) => {
                    report.stopped =
                        Some(format!("at line {}: {}", c.line, crate::error_chain(&err)));
                    break 'blocks;
                }
            }
            let cwd = session.cwd();
            dirs.retain(|d| *d != cwd);
            dirs.insert(0, cwd);
        }
        report.commands[first_of_block..].sort_by_key(|c| c.line);
    }
    redact(&mut report.commands, &options.secrets);
    report.summarise();
    report
}

/// The report of a command that did not run, with why.
fn not_run(
    section: &str,
    line: usize,
    command: &str,
    verdict: Verdict,
    reason: String,
) -> CommandReport {
    CommandReport {
        section: section.to_owned(),
        line,
        command: command.to_owned(),
        verdict,
        reason: Some(reason),
        findings: Vec::new(),
        replaced_by: None,
        exit_status: None,
        pipeline: Vec::new(),
        duration_ms: 0,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        suggestion: None,
    }
}

/// A commented-out command: skipped, saying too whether it could run here if uncommented (the
/// cloud's own CLI, an uninstalled tool).
fn commented_out(
    section: &str,
    c: &Command,
    prompted: &BTreeSet<String>,
    session: &Session,
) -> CommandReport {
    let also = match classify::classify(&c.text, prompted, session.scratch()) {
        Classification::Run => String::new(),
        Classification::Skip(why) | Classification::Refuse(why) => format!("; {why}"),
    };
    not_run(
        section,
        c.line,
        &c.text,
        Verdict::Skipped,
        format!("commented out in the document: an option it leaves to the reader{also}"),
    )
}

/// The report of a command settled without running it: in a block quote, replaced by a
/// stand-in, or skipped or refused by its classification (a skipped prompt's variables are
/// remembered in `prompted`); `None` when it is to run.
async fn settle_without_running(
    section: &str,
    block: &Block,
    c: &Command,
    session: &mut Session,
    stand_ins: &mut impl StandIns,
    prompted: &mut BTreeSet<String>,
) -> Option<CommandReport> {
    if block.quoted {
        return Some(not_run(
            section,
            c.line,
            &c.text,
            Verdict::Skipped,
            "in a block quote: an alternative to the steps that follow, not one of them".into(),
        ));
    }
    let programs = classify::simple_commands(&c.text);
    if let Some(stand_in) = stand_ins.replace(&programs, &c.text, session).await {
        let mut r = match stand_in.result {
            Ok(summary) => not_run(section, c.line, &c.text, Verdict::Replaced, summary),
            Err(why) => not_run(section, c.line, &c.text, Verdict::Failed, why),
        };
        r.replaced_by = Some(stand_in.by);
        return Some(r);
    }
    match classify::classify(&c.text, prompted, session.scratch()) {
        Classification::Skip(why) => {
            prompted.extend(classify::read_targets(&c.text));
            Some(not_run(section, c.line, &c.text, Verdict::Skipped, why))
        }
        Classification::Refuse(why) => {
            Some(not_run(section, c.line, &c.text, Verdict::Unsafe, why))
        }
        Classification::Run => None,
    }
}

/// Every secret replaced by `***` in the commands, their output and their reasons.
fn redact(commands: &mut [CommandReport], secrets: &[String]) {
    for c in commands {
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            for text in [&mut c.stdout_tail, &mut c.stderr_tail, &mut c.command] {
                *text = text.replace(secret.as_str(), "***");
            }
            if let Some(reason) = &mut c.reason {
                *reason = reason.replace(secret.as_str(), "***");
            }
        }
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Runs one command with its preparation, checks and repairs.
async fn run_one(
    line: usize,
    text: &str,
    section: &str,
    session: &mut Session,
    stand_ins: &mut impl StandIns,
    options: &Options,
    dirs: &[PathBuf],
) -> Result<CommandReport, RunbookError> {
    let mut mapped = Vec::new();
    let created = blocking(|| map_cd(text, session))?;
    if !created.is_empty() {
        mapped.push(format!(
            "a directory of the author's machine, created empty in the scratch directory: {}",
            created
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    match stand_ins.prepare(text, &created, session).await {
        Ok(Some(note)) => mapped.push(note),
        Ok(None) => {}
        Err(why) => mapped.push(format!("could not prepare: {why}")),
    }
    let control = session.scratch().join(".runbook");
    let before = Files::snapshot(session.scratch(), &control);
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let outcome = blocking(|| session.run(text, options.deadline))?;
    let duration = started.elapsed();
    let after = Files::snapshot(session.scratch(), &control);
    let written = after.written_since(&before);
    let judgement = checks::judge(text, &outcome, options.deadline, &written);
    let mut report = CommandReport {
        section: section.to_owned(),
        line,
        command: text.to_owned(),
        verdict: judgement.verdict,
        reason: judgement.reason,
        findings: judgement.findings,
        replaced_by: (!mapped.is_empty()).then(|| mapped.join("; ")),
        exit_status: outcome.status,
        pipeline: if outcome.pipeline.len() > 1 {
            outcome.pipeline.clone()
        } else {
            Vec::new()
        },
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        stdout_tail: checks::tail(&outcome.stdout, 15),
        stderr_tail: checks::tail(&outcome.stderr, 15),
        suggestion: None,
    };
    if report.verdict == Verdict::Ok {
        for name in substituted_assignments(text) {
            let value = blocking(|| {
                session.run(
                    &format!("printf '%s' \"${{{name}:-}}\""),
                    Duration::from_secs(10),
                )
            })?;
            if value.status == Some(0) && value.stdout.is_empty() {
                report.verdict = Verdict::Unsafe;
                let said = checks::tail(&outcome.stderr, 2);
                report.findings.push(format!(
                    "`{name}` is set to an empty value: the command substitution that sets it \
                     printed nothing (its failure is hidden by the assignment's exit status 0){}",
                    if said.is_empty() {
                        String::new()
                    } else {
                        format!(": {said}")
                    }
                ));
            }
        }
    }
    if report.verdict == Verdict::Ok {
        let found = stand_ins.inspect(text, started_at).await;
        if !found.is_empty() {
            report.verdict = Verdict::Unsafe;
            report.findings.extend(found);
        }
    }
    if report.verdict == Verdict::Unsafe && report.reason.is_none() {
        report.reason = Some(report.findings.join("; "));
    }
    if report.verdict.is_bad() && !outcome.timed_out {
        report.suggestion = blocking(|| repair_by_running(text, &outcome, session, options, dirs))?;
    }
    Ok(report)
}

/// Variables that `text` assigns from a command substitution (`export X=$(...)`, `X=$(...)`).
fn substituted_assignments(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let is_name = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if is_name
            && (value.starts_with("$(") || value.starts_with("\"$(") || value.starts_with('`'))
        {
            names.push(name.to_owned());
        }
    }
    names
}

/// Whether `text` holds no `;`, `&` or `|` outside quotes and command substitutions.
fn single_command(text: &str) -> bool {
    let (mut depth, mut single, mut double) = (0usize, false, false);
    let chars: Vec<char> = text.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '(' if !single && i > 0 && chars[i - 1] == '$' => depth += 1,
            ')' if !single && depth > 0 => depth -= 1,
            ';' | '&' | '|' if !single && !double && depth == 0 => return false,
            _ => {}
        }
    }
    true
}

/// Creates the target of a `cd` that does not exist (a path of the author's machine), inside
/// the session (which can write only in the scratch directory), and returns it.
fn map_cd(text: &str, session: &mut Session) -> Result<Vec<PathBuf>, RunbookError> {
    let mut created = Vec::new();
    // Only a command that is one `cd` (with its argument as written, `~` and `$VAR` in it).
    let Some(raw) = text.strip_prefix("cd ").map(str::trim) else {
        return Ok(created);
    };
    if raw.is_empty() || raw.starts_with('-') || text.contains('\n') || !single_command(raw) {
        return Ok(created);
    }
    // The argument on a line of its own, so a trailing comment ends there.
    let probe = format!(
        "__rb_d={raw}\nif [ ! -d \"$__rb_d\" ]; then mkdir -p -- \"$__rb_d\" && printf '%s' \"$__rb_d\"; fi"
    );
    let o = session.run(&probe, Duration::from_secs(10))?;
    let path = o.stdout.trim();
    if o.status == Some(0) && !path.is_empty() {
        created.push(PathBuf::from(path));
    }
    Ok(created)
}

/// Tries the repair candidates derived from the tool's error, each run in the session in the
/// failed command's place, following up to three errors in a row; the first that succeeds
/// (with every check passing) is the suggestion.
fn repair_by_running(
    text: &str,
    outcome: &Outcome,
    session: &mut Session,
    options: &Options,
    dirs: &[PathBuf],
) -> Result<Option<Suggestion>, RunbookError> {
    let namespace = session
        .run("printf '%s' \"${NAMESPACE:-}\"", Duration::from_secs(10))?
        .stdout;
    let cwd = session.cwd();
    // The tool's words wherever it printed them (`2>&1` sends errors to stdout).
    let said = |o: &Outcome| checks::plain(&format!("{}\n{}", o.stderr, o.stdout));
    let mut current = (text.to_owned(), said(outcome), Vec::<String>::new());
    for _ in 0..3 {
        // A tool that waited for an answer: its help names its own option for one.
        let help = if repair::asked_for_answer(&current.1) {
            let words = classify::simple_commands(&current.0);
            let first = words.first().cloned().unwrap_or_default();
            let line: Vec<&str> = first
                .iter()
                .take(2)
                .map(String::as_str)
                .filter(|w| !w.starts_with('-'))
                .collect();
            let line = line.join(" ");
            let ask = |line: &str| format!("{line} -help 2>&1 || {line} --help 2>&1");
            let mut help = session.run(&ask(&line), Duration::from_secs(10))?.stdout;
            // A subcommand that is an alias ("a convenience alias for: terraform apply
            // -destroy") documents its options under the command it stands for.
            let alias = help
                .lines()
                .skip_while(|l| !l.contains("alias for"))
                .nth(1)
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
            if let Some(alias) = alias.filter(|a| a.split(' ').count() == 2) {
                help.push_str(&session.run(&ask(&alias), Duration::from_secs(10))?.stdout);
            }
            Some(help)
        } else {
            None
        };
        let ctx = repair::Context {
            namespace: (!namespace.is_empty()).then_some(namespace.as_str()),
            earlier_dirs: dirs,
            cwd: &cwd,
            help: help.as_deref(),
            home: session.home(),
        };
        let candidates = repair::candidates(&current.0, &current.1, &ctx);
        let Some(candidate) = candidates.into_iter().next() else {
            return Ok(None);
        };
        let control = session.scratch().join(".runbook");
        let before = Files::snapshot(session.scratch(), &control);
        // The candidate runs in a subshell when it changes directory, so the session's own
        // directory stays the document's.
        let command = if candidate.command.starts_with("cd ") {
            format!("(\n{}\n)", candidate.command)
        } else {
            candidate.command.clone()
        };
        let o = session.run(&command, options.deadline)?;
        let after = Files::snapshot(session.scratch(), &control);
        let written = after.written_since(&before);
        let j = checks::judge(&candidate.command, &o, options.deadline, &written);
        let mut strategies = current.2.clone();
        strategies.push(candidate.strategy.clone());
        if j.verdict == Verdict::Ok {
            let mut output = checks::tail(&o.stdout, 8);
            let err = checks::tail(&o.stderr, 4);
            if !err.is_empty() {
                output.push('\n');
                output.push_str(&err);
            }
            return Ok(Some(Suggestion {
                command: candidate.command,
                strategy: strategies.join("; then "),
                exit_status: o.status.unwrap_or(0),
                output_tail: output,
            }));
        }
        current = (candidate.command, said(&o), strategies);
    }
    Ok(None)
}
