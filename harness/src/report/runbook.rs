//! The report of `rehearsal runbook`: every command of the document with its section, line,
//! exit status, duration, the end of its output and a verdict; a summary; JSON, JUnit (one
//! case per command) and HTML renderings.

use std::fmt::Write;

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
use serde::{Deserialize, Serialize};

/// What a command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// It ran, succeeded, and every check on it passed.
    Ok,
    /// It failed (exit status, a failed part of a pipeline, its deadline).
    Failed,
    /// It succeeded, but a check shows it did the wrong thing (or it was refused as
    /// destructive before running).
    Unsafe,
    /// It was not run; `reason` says why.
    Skipped,
    /// It was not run as written; a stand-in did its work (`replaced_by`).
    Replaced,
}

impl Verdict {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Failed => "failed",
            Verdict::Unsafe => "unsafe",
            Verdict::Skipped => "skipped",
            Verdict::Replaced => "replaced",
        }
    }

    /// Whether it makes the run fail.
    pub fn is_bad(self) -> bool {
        matches!(self, Verdict::Failed | Verdict::Unsafe)
    }
}

/// A corrected command, run in place of a failed one, that succeeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    /// The corrected command.
    pub command: String,
    /// The repair strategy and the tool's words that led to it.
    pub strategy: String,
    /// Its exit status when the run executed it.
    pub exit_status: i32,
    /// The end of its output.
    pub output_tail: String,
}

/// One command of the document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandReport {
    /// Its section path.
    pub section: String,
    /// Its first line in the document.
    pub line: usize,
    /// The command as written.
    pub command: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why it was skipped, replaced, failed or unsafe (in the tools' own words where they ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the checks found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
    /// The stand-in that did its work, or what the environment mapped (a laptop path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// Its exit status (none when not run or killed at the deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// `PIPESTATUS` of its last pipeline, when it had more than one command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipeline: Vec<i32>,
    /// How long it ran.
    pub duration_ms: u64,
    /// The last lines of its standard output.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout_tail: String,
    /// The last lines of its standard error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    /// A corrected command the same run executed successfully in its place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<Suggestion>,
}

/// Counts per verdict and the first failing command of each top-level section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Commands in the report.
    pub commands: usize,
    /// `ok`.
    pub ok: usize,
    /// `failed`.
    pub failed: usize,
    /// `unsafe`.
    #[serde(rename = "unsafe")]
    pub unsafe_: usize,
    /// `skipped`.
    pub skipped: usize,
    /// `replaced`.
    pub replaced: usize,
    /// For each top-level section (phase) with a failed or unsafe command: the first one, as
    /// `line N: command`.
    pub first_failure_by_phase: Vec<(String, String)>,
}

/// The whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunbookReport {
    /// The document.
    pub document: String,
    /// The cluster provider.
    pub provider: String,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// What the rehearsal itself did between blocks (cluster A destroyed, cluster B created).
    pub events: Vec<String>,
    /// Every command, in document order.
    pub commands: Vec<CommandReport>,
    /// The summary (see [`RunbookReport::summarise`]).
    pub summary: Summary,
    /// An error that stopped the run before the document's end, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl RunbookReport {
    /// Computes the summary from the commands.
    pub fn summarise(&mut self) {
        let mut s = Summary {
            commands: self.commands.len(),
            ..Summary::default()
        };
        for c in &self.commands {
            match c.verdict {
                Verdict::Ok => s.ok += 1,
                Verdict::Failed => s.failed += 1,
                Verdict::Unsafe => s.unsafe_ += 1,
                Verdict::Skipped => s.skipped += 1,
                Verdict::Replaced => s.replaced += 1,
            }
            if c.verdict.is_bad() {
                let phase = c.section.split(" > ").next().unwrap_or("").to_owned();
                if !s.first_failure_by_phase.iter().any(|(p, _)| *p == phase) {
                    let first = c.command.lines().next().unwrap_or("");
                    s.first_failure_by_phase
                        .push((phase, format!("line {}: {first}", c.line)));
                }
            }
        }
        self.summary = s;
    }

    /// Whether the document ran through with no failed or unsafe command.
    pub fn passed(&self) -> bool {
        self.stopped.is_none() && !self.commands.iter().any(|c| c.verdict.is_bad())
    }

    /// The JSON rendering.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report of plain values serialises")
    }

    /// JUnit XML: one test case per command; failed and unsafe are failures, skipped and
    /// replaced are skipped (with their reason), an early stop is an error.
    pub fn to_junit(&self) -> String {
        let name = format!("rehearsal.runbook.{}", self.provider);
        let mut suite = TestSuite::new(name.as_str());
        for c in &self.commands {
            let mut status = match c.verdict {
                Verdict::Ok => TestCaseStatus::success(),
                Verdict::Failed | Verdict::Unsafe => {
                    TestCaseStatus::non_success(NonSuccessKind::Failure)
                }
                Verdict::Skipped | Verdict::Replaced => TestCaseStatus::skipped(),
            };
            if c.verdict != Verdict::Ok {
                let message = match (&c.reason, &c.replaced_by) {
                    (Some(r), _) => format!("{}: {r}", c.verdict.as_str()),
                    (None, Some(by)) => format!("replaced by {by}"),
                    (None, None) => c.verdict.as_str().to_owned(),
                };
                status.set_message(message);
                let mut description = c.findings.join("\n");
                if let Some(s) = &c.suggestion {
                    let _ = write!(description, "\nsuggested: {}", s.command);
                }
                status.set_description(description);
            }
            let first = c.command.lines().next().unwrap_or("");
            let mut case = TestCase::new(format!("line {}: {first}", c.line), status);
            case.set_classname(c.section.as_str())
                .set_time(std::time::Duration::from_millis(c.duration_ms));
            suite.add_test_case(case);
        }
        if let Some(why) = &self.stopped {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_message(why.clone());
            suite.add_test_case(TestCase::new("run", status));
        }
        let mut junit = quick_junit::Report::new("rebuild-rehearsal");
        junit.add_test_suite(suite);
        junit
            .to_string()
            .expect("JUnit serialisation of plain strings cannot fail")
    }

    /// A self-contained HTML page: the summary, the events, every command with its verdict,
    /// reason, findings, output and suggested correction.
    pub fn to_html(&self) -> String {
        let s = &self.summary;
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>runbook rehearsal: {doc}</title><style>{STYLE}</style></head><body>\
             <h1>Runbook rehearsal</h1><p><code>{doc}</code> on <b>{provider}</b>, started \
             {started}</p><p class=\"verdict {cls}\">{verdict}</p>\
             <p>{n} commands: {ok} ok, {failed} failed, {unsafe_} unsafe, {skipped} skipped, \
             {replaced} replaced</p>",
            doc = esc(&self.document),
            provider = esc(&self.provider),
            started = esc(&self.started_at),
            cls = if self.passed() { "pass" } else { "fail" },
            verdict = if self.passed() {
                "PASS"
            } else {
                "FAIL: the document does not run as written"
            },
            n = s.commands,
            ok = s.ok,
            failed = s.failed,
            unsafe_ = s.unsafe_,
            skipped = s.skipped,
            replaced = s.replaced,
        );
        if let Some(why) = &self.stopped {
            let _ = write!(h, "<p class=\"bad\">stopped: {}</p>", esc(why));
        }
        if !s.first_failure_by_phase.is_empty() {
            h.push_str("<h2>First failing command of each phase</h2><ul>");
            for (phase, first) in &s.first_failure_by_phase {
                let _ = write!(h, "<li>{}: <code>{}</code></li>", esc(phase), esc(first));
            }
            h.push_str("</ul>");
        }
        if !self.events.is_empty() {
            h.push_str("<h2>What the rehearsal did</h2><ul>");
            for e in &self.events {
                let _ = write!(h, "<li>{}</li>", esc(e));
            }
            h.push_str("</ul>");
        }
        h.push_str(
            "<h2>Commands</h2><table><tr><th>section</th><th>line</th><th>command</th>\
             <th>verdict</th><th>exit</th><th>time</th><th>why / output</th></tr>",
        );
        for c in &self.commands {
            let mut why = String::new();
            for text in c.reason.iter().chain(c.findings.iter()) {
                let _ = write!(why, "<div>{}</div>", esc(text));
            }
            if let Some(by) = &c.replaced_by {
                let _ = write!(why, "<div class=\"muted\">stand-in: {}</div>", esc(by));
            }
            if let Some(sg) = &c.suggestion {
                let _ = write!(
                    why,
                    "<div>suggested (ran, exit {}): <code>{}</code><br><span class=\"muted\">{}\
                     </span><pre>{}</pre></div>",
                    sg.exit_status,
                    esc(&sg.command),
                    esc(&sg.strategy),
                    esc(&sg.output_tail)
                );
            }
            for (label, tail) in [("stdout", &c.stdout_tail), ("stderr", &c.stderr_tail)] {
                if !tail.is_empty() {
                    let _ = write!(
                        why,
                        "<details><summary>{label}</summary><pre>{}</pre></details>",
                        esc(tail)
                    );
                }
            }
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td><pre>{}</pre></td><td class=\"{}\">{}</td>\
                 <td>{}</td><td>{} ms</td><td>{why}</td></tr>",
                esc(&c.section),
                c.line,
                esc(&c.command),
                if c.verdict.is_bad() { "bad" } else { "ok" },
                c.verdict.as_str(),
                c.exit_status.map(|e| e.to_string()).unwrap_or_default(),
                c.duration_ms,
            );
        }
        h.push_str("</table></body></html>\n");
        h
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1d232a}\
.verdict{display:inline-block;padding:.3rem 1rem;border-radius:4px;font-weight:700;color:#fff}\
.pass{background:#2e7d32}.fail{background:#c62828}table{border-collapse:collapse}\
td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;vertical-align:top}\
th{background:#f3f5f7}pre{margin:0;white-space:pre-wrap;max-width:40rem}\
.ok{color:#2e7d32}.bad{color:#c62828;font-weight:600}.muted{color:#6a737d}";

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(
        section: &str,
        line: usize,
        verdict: Verdict,
        reason: Option<&str>,
    ) -> CommandReport {
        CommandReport {
            section: section.into(),
            line,
            command: format!("cmd-{line} <x>"),
            verdict,
            reason: reason.map(Into::into),
            findings: Vec::new(),
            replaced_by: None,
            exit_status: Some(0),
            pipeline: Vec::new(),
            duration_ms: 5,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            suggestion: None,
        }
    }

    fn report(commands: Vec<CommandReport>) -> RunbookReport {
        let mut r = RunbookReport {
            document: "doc.md".into(),
            provider: "sim".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            events: Vec::new(),
            commands,
            summary: Summary::default(),
            stopped: None,
        };
        r.summarise();
        r
    }

    #[test]
    fn the_summary_counts_verdicts_and_names_each_phases_first_failure() {
        let r = report(vec![
            command("Phase 1 > 1.1", 10, Verdict::Ok, None),
            command("Phase 1 > 1.2", 20, Verdict::Unsafe, Some("count differs")),
            command("Phase 1 > 1.2", 21, Verdict::Failed, Some("exit status 1")),
            command("Phase 2", 30, Verdict::Skipped, Some("not installed")),
            command("Phase 2", 31, Verdict::Replaced, Some("goose")),
        ]);
        let s = &r.summary;
        assert_eq!(
            (s.commands, s.ok, s.failed, s.unsafe_, s.skipped, s.replaced),
            (5, 1, 1, 1, 1, 1)
        );
        assert_eq!(
            s.first_failure_by_phase,
            [("Phase 1".to_owned(), "line 20: cmd-20 <x>".to_owned())]
        );
        assert!(!r.passed());
        let xml = r.to_junit();
        assert_eq!(xml.matches("<testcase").count(), 5, "{xml}");
        assert!(xml.contains("failures=\"2\""), "{xml}");
        assert!(xml.contains("&lt;x&gt;"), "escaped: {xml}");
        let html = r.to_html();
        assert!(
            html.contains("FAIL") && html.contains("cmd-20 &lt;x&gt;"),
            "{html}"
        );
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["summary"]["unsafe"], 1);
    }

    #[test]
    fn skipped_and_replaced_alone_pass() {
        let r = report(vec![
            command("A", 1, Verdict::Ok, None),
            command("A", 2, Verdict::Skipped, Some("prompt")),
            command("A", 3, Verdict::Replaced, Some("goose")),
        ]);
        assert!(r.passed());
        assert!(r.to_html().contains("PASS"));
    }
}
