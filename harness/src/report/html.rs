//! A self-contained HTML page for people: the verdict, RTO and RPO, the phase timeline as an
//! SVG chart, tables before and after, every gate's findings, the load figures and a link to
//! goose's own report. No scripts, no external resources.

use std::fmt::Write;

use super::{Outcome, PhaseStatus, Report};

/// Escapes text for HTML element content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ms(value: Option<u64>) -> String {
    match value {
        Some(v) if v >= 10_000 => format!("{:.1} s", v as f64 / 1000.0),
        Some(v) => format!("{v} ms"),
        None => "–".to_owned(),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1d232a;max-width:1100px}\
h1{margin-bottom:.2rem}.verdict{display:inline-block;padding:.3rem 1rem;border-radius:4px;font-weight:700;color:#fff}\
.pass{background:#2e7d32}.fail{background:#c62828}table{border-collapse:collapse;margin:.5rem 0 1.5rem}\
td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left}th{background:#f3f5f7}\
.ok{color:#2e7d32}.bad{color:#c62828;font-weight:600}.muted{color:#6a737d}code{font-size:.9em}\
.figures span{display:inline-block;margin-right:2rem}";

/// Renders `report` (concluded: see [`Report::conclude`]) as a complete HTML document.
pub fn render_html(report: &Report) -> String {
    let report = &*report.concluded();
    let mut h = String::new();
    let verdict = match report.verdict {
        Outcome::Pass => ("pass", "PASS"),
        Outcome::Fail => ("fail", "FAIL / ROLL BACK"),
        Outcome::CouldNotRun => ("fail", "COULD NOT RUN"),
    };
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Rehearsal {scenario} on {provider}</title>\
         <style>{STYLE}</style></head><body>\
         <h1>Rebuild rehearsal: {scenario}</h1><p class=\"muted\">provider {provider}, started {started}</p>\
         <p><span id=\"verdict\" class=\"verdict {class}\">{label}</span></p>\
         <p class=\"figures\" id=\"recovery\"><span>RTO <strong>{rto}</strong></span><span>RPO <strong>{rpo}</strong>{clock}</span><span>pods Ready <strong>{ready}</strong></span></p>",
        scenario = esc(&report.scenario),
        provider = esc(&report.provider),
        started = esc(&report.started_at),
        class = verdict.0,
        label = verdict.1,
        rto = ms(report.rto_ms),
        rpo = ms(report.rpo_ms),
        ready = ms(report.pods_ready_ms),
        clock = report
            .rpo_clock
            .as_deref()
            .map(|c| format!(" <span class=\"muted\">({} clock)</span>", esc(c)))
            .unwrap_or_default(),
    );
    if !report.rollback_reasons.is_empty() {
        let title = match report.verdict {
            Outcome::CouldNotRun => "Could not run because",
            _ => "Roll back because",
        };
        let _ = write!(h, "<h2>{title}</h2><ul id=\"rollback\">");
        for reason in &report.rollback_reasons {
            let _ = write!(h, "<li class=\"bad\">{}</li>", esc(reason));
        }
        h.push_str("</ul>");
    }
    if !report.not_assessed.is_empty() {
        h.push_str("<h2>Not assessed</h2><ul id=\"not-assessed\">");
        for criterion in &report.not_assessed {
            let _ = write!(h, "<li class=\"bad\">{}</li>", esc(criterion));
        }
        h.push_str("</ul>");
    }
    timeline(&mut h, report);
    tables(&mut h, report);
    gates(&mut h, report);
    load(&mut h, report);
    h.push_str("</body></html>\n");
    h
}

fn timeline(h: &mut String, report: &Report) {
    h.push_str("<h2>Phases</h2>");
    let total = report
        .phases
        .iter()
        .map(|p| p.start_ms + p.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, row, label_w) = (1000.0, 26.0, 180.0);
    let height = row * report.phases.len() as f64 + 30.0;
    let _ = write!(
        h,
        "<svg id=\"timeline\" role=\"img\" aria-label=\"phase timeline\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"12\">"
    );
    let scale = (width - label_w - 80.0) / total as f64;
    for (i, p) in report.phases.iter().enumerate() {
        let y = i as f64 * row + 4.0;
        let x = label_w + p.start_ms as f64 * scale;
        let w = (p.duration_ms as f64 * scale).max(2.0);
        let color = match p.status {
            PhaseStatus::Passed => "#4caf50",
            PhaseStatus::Failed => "#e53935",
            PhaseStatus::Skipped => "#b0bec5",
        };
        let _ = write!(
            h,
            "<g class=\"phase\"><text x=\"0\" y=\"{ty}\">{name}</text>\
             <rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{bh}\" fill=\"{color}\"><title>{name}: {d} ms</title></rect>\
             <text x=\"{tx:.1}\" y=\"{ty}\">{dur}</text></g>",
            ty = y + 14.0,
            name = esc(&p.name),
            bh = row - 8.0,
            d = p.duration_ms,
            tx = x + w + 4.0,
            dur = ms(Some(p.duration_ms)),
        );
    }
    let _ = write!(
        h,
        "<text x=\"{label_w}\" y=\"{:.1}\" class=\"muted\">0 … {}</text></svg>",
        height - 6.0,
        ms(Some(total))
    );
    h.push_str("<table id=\"phases\"><tr><th>Phase</th><th>Duration</th><th>Result</th><th>Throughput</th><th>Detail</th></tr>");
    for p in &report.phases {
        let (class, label) = match p.status {
            PhaseStatus::Passed => ("ok", "passed"),
            PhaseStatus::Failed if p.gate.is_some() => ("bad", "failed"),
            PhaseStatus::Failed => ("bad", "could not run"),
            PhaseStatus::Skipped => ("muted", "skipped"),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{label}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            ms(Some(p.duration_ms)),
            esc(&p.volume.map(|v| v.to_string()).unwrap_or_default()),
            esc(p.detail.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table>");
}

fn tables(h: &mut String, report: &Report) {
    h.push_str("<h2>Data before and after</h2><table id=\"tables\"><tr><th>Table</th><th>Rows before</th><th>Rows after</th><th>Digest before</th><th>Digest after</th><th>Equal</th></tr>");
    for t in &report.tables {
        let equal = t.digest_equal() && t.rows_after == Some(t.rows_before);
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td class=\"{}\">{}</td></tr>",
            esc(&t.name),
            t.rows_before,
            t.rows_after
                .map(|r| r.to_string())
                .unwrap_or_else(|| "–".into()),
            esc(&t.digest_before[..t.digest_before.len().min(16)]),
            esc(t
                .digest_after
                .as_deref()
                .map(|d| &d[..d.len().min(16)])
                .unwrap_or("–")),
            if equal { "ok" } else { "bad" },
            if equal { "yes" } else { "NO" },
        );
    }
    h.push_str("</table>");
}

fn gates(h: &mut String, report: &Report) {
    h.push_str(
        "<h2>Gates</h2><table id=\"gates\"><tr><th>Gate</th><th>Result</th><th>Findings</th></tr>",
    );
    for g in &report.gates {
        let findings = if g.findings.is_empty() {
            String::new()
        } else {
            format!(
                "<ul>{}</ul>",
                g.findings
                    .iter()
                    .map(|f| format!(
                        "<li><span class=\"kind\">{}</span> {}</li>",
                        f.kind.name(),
                        esc(&f.to_string())
                    ))
                    .collect::<String>()
            )
        };
        let label = match (&g.not_run, g.passed) {
            (_, true) => "passed",
            (Some(_), false) => "COULD NOT RUN",
            (None, false) => "FAILED",
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{label}</td><td>{findings}</td></tr>",
            esc(&g.name),
            if g.passed { "ok" } else { "bad" },
        );
    }
    h.push_str("</table>");
}

fn load(h: &mut String, report: &Report) {
    h.push_str("<h2>Load gate</h2>");
    match &report.load {
        None => h.push_str("<p id=\"load\" class=\"muted\">The load gate did not run.</p>"),
        Some(l) => {
            let _ = write!(
                h,
                "<p id=\"load\" class=\"figures\"><span>requests <strong>{}</strong></span><span>failures <strong>{}</strong></span>\
                 <span>RPS <strong>{:.1}</strong></span><span>p95 <strong>{:.1} ms</strong></span></p>",
                l.requests, l.failures, l.rps, l.p95_ms
            );
            if !l.endpoints.is_empty() {
                h.push_str(
                    "<table id=\"endpoints\"><tr><th>Request</th><th>p50</th><th>p95</th></tr>",
                );
                for e in &l.endpoints {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td>{:.1} ms</td><td>{:.1} ms</td></tr>",
                        esc(&e.name),
                        e.p50_ms,
                        e.p95_ms
                    );
                }
                h.push_str("</table>");
            }
            if let Some(link) = &l.goose_report {
                let _ = write!(
                    h,
                    "<p><a id=\"goose-report\" href=\"{}\">goose's detailed report</a></p>",
                    esc(link)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_every_section_and_escapes_text() {
        let html = render_html(&super::super::sample::report());
        for id in [
            "id=\"verdict\"",
            "id=\"timeline\"",
            "id=\"tables\"",
            "id=\"gates\"",
            "id=\"load\"",
            "id=\"goose-report\"",
            "id=\"rollback\"",
        ] {
            assert!(html.contains(id), "missing {id}");
        }
        assert!(html.contains("COULD NOT RUN"), "the restore phase erred");
        assert!(html.contains("pg_restore &lt;failed&gt; &amp; &quot;quoted&quot;"));
        assert!(!html.contains("<failed>"));
        assert_eq!(html.matches("<g class=\"phase\">").count(), 2);
        assert!(
            html.contains("<td>3.0 MB at 2.5 MB/s, 120,000 rows at 100,000 rows/s</td>"),
            "the backup phase's throughput"
        );
    }

    #[test]
    fn could_not_run_and_not_assessed_reach_the_page() {
        let mut report = super::super::sample::report();
        report.gates[1].passed = false;
        report.gates[1].not_run = Some("pg_amcheck did not start".into());
        report.not_assessed = vec!["db_restore_duration".into()];
        report.conclude();
        let html = render_html(&report);
        for needle in [
            "COULD NOT RUN",
            "Could not run because",
            "id=\"not-assessed\"",
            "db_restore_duration",
            "gate schema could not run: pg_amcheck did not start",
            "(postgresql server clock)",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
    }
}
