//! k6-style thresholds: `http_req_duration: p(95)<500`, `http_req_failed: rate<0.01`,
//! `http_reqs: rate>=20`, optionally scoped to one request kind as
//! `http_req_duration{name:GET list posts}: p(99)<800`.

use std::fmt;
use std::str::FromStr;

use super::gate::{LoadFigures, RequestFigures};

/// A threshold that does not parse; names the rule and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid threshold {rule:?}: {reason}")]
pub struct ThresholdError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The k6 metric a threshold reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Response time in milliseconds.
    HttpReqDuration,
    /// Failed requests (non-2xx or transport errors).
    HttpReqFailed,
    /// Requests made.
    HttpReqs,
}

/// The statistic of the metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    /// `p(N)`: the Nth percentile of durations.
    Percentile(f64),
    /// `avg` duration.
    Avg,
    /// `med` duration (p(50)).
    Med,
    /// `max` duration.
    Max,
    /// `rate`: failure share (0..1) for `http_req_failed`, requests per second for `http_reqs`.
    Rate,
    /// `count`: number of requests (`http_reqs`) or of failures (`http_req_failed`).
    Count,
}

/// The comparison that must hold for the threshold to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The metric.
    pub metric: Metric,
    /// A request kind (`GET list posts`), or every request when `None`.
    pub scope: Option<String>,
    /// The statistic.
    pub stat: Stat,
    /// The comparison.
    pub op: Comparison,
    /// The limit (milliseconds for durations).
    pub value: f64,
    rule: String,
}

/// How a threshold fared.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdOutcome {
    /// The rule as written.
    pub rule: String,
    /// The value observed, `None` when the scope saw no request.
    pub observed: Option<f64>,
    /// Whether the rule held.
    pub passed: bool,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rule)
    }
}

impl FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ThresholdError {
            rule: rule.to_owned(),
            reason: reason.to_owned(),
        };
        // A scope holds a colon itself (`{name:...}`), so split after the `}` when there is one.
        let (lhs, expr) = match rule.find("}:") {
            Some(i) => (&rule[..=i], &rule[i + 2..]),
            None => rule
                .split_once(':')
                .ok_or_else(|| err("expected <metric>: <stat><op><value>"))?,
        };
        let expr = expr.trim();
        let (metric, scope) = match lhs.split_once('{') {
            Some((m, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| err("scope must end with }"))?;
                let name = inner
                    .strip_prefix("name:")
                    .ok_or_else(|| err("scope must be {name:<request>}"))?;
                if name.trim().is_empty() {
                    return Err(err("empty request name in scope"));
                }
                (m.trim(), Some(name.trim().to_owned()))
            }
            None => (lhs.trim(), None),
        };
        let metric = match metric {
            "http_req_duration" => Metric::HttpReqDuration,
            "http_req_failed" => Metric::HttpReqFailed,
            "http_reqs" => Metric::HttpReqs,
            _ => {
                return Err(err(
                    "metric must be http_req_duration, http_req_failed or http_reqs",
                ));
            }
        };
        let split = expr
            .find(['<', '>'])
            .ok_or_else(|| err("missing comparison (<, <=, >, >=)"))?;
        let (stat, rest) = expr.split_at(split);
        let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Comparison::Le, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Comparison::Ge, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Comparison::Lt, v)
        } else {
            (Comparison::Gt, &rest[1..])
        };
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| err("the limit must be a number"))?;
        if !value.is_finite() || value < 0.0 {
            return Err(err("the limit must be a non-negative number"));
        }
        let stat = match stat.trim() {
            "avg" => Stat::Avg,
            "med" => Stat::Med,
            "max" => Stat::Max,
            "rate" => Stat::Rate,
            "count" => Stat::Count,
            s => {
                let p = s
                    .strip_prefix("p(")
                    .and_then(|p| p.strip_suffix(')'))
                    .and_then(|p| p.parse::<f64>().ok())
                    .ok_or_else(|| err("statistic must be p(N), avg, med, max, rate or count"))?;
                if !(0.0..=100.0).contains(&p) || p == 0.0 {
                    return Err(err("percentile must be in (0, 100]"));
                }
                Stat::Percentile(p)
            }
        };
        let fits = match metric {
            Metric::HttpReqDuration => matches!(
                stat,
                Stat::Percentile(_) | Stat::Avg | Stat::Med | Stat::Max
            ),
            Metric::HttpReqFailed | Metric::HttpReqs => matches!(stat, Stat::Rate | Stat::Count),
        };
        if !fits {
            return Err(err("this statistic does not apply to this metric"));
        }
        if metric == Metric::HttpReqFailed && stat == Stat::Rate && value > 1.0 {
            return Err(err("http_req_failed rate is a fraction from 0 to 1"));
        }
        Ok(Threshold {
            metric,
            scope,
            stat,
            op,
            value,
            rule: rule.trim().to_owned(),
        })
    }
}

impl Threshold {
    /// Judges the rule against a run's figures.
    pub fn judge(&self, figures: &LoadFigures) -> ThresholdOutcome {
        let observed = match &self.scope {
            None => Some(self.observe(&figures.overall, figures)),
            Some(name) => figures
                .per_request
                .iter()
                .find(|r| &r.name == name)
                .map(|r| self.observe(r, figures)),
        };
        let passed = observed.is_some_and(|v| match self.op {
            Comparison::Lt => v < self.value,
            Comparison::Le => v <= self.value,
            Comparison::Gt => v > self.value,
            Comparison::Ge => v >= self.value,
        });
        ThresholdOutcome {
            rule: self.rule.clone(),
            observed,
            passed,
        }
    }

    fn observe(&self, r: &RequestFigures, figures: &LoadFigures) -> f64 {
        match (self.metric, self.stat) {
            (Metric::HttpReqDuration, Stat::Percentile(p)) => r.percentile_ms(p / 100.0),
            (Metric::HttpReqDuration, Stat::Med) => r.p50_ms,
            (Metric::HttpReqDuration, Stat::Max) => r.max_ms,
            (Metric::HttpReqDuration, _) => r.avg_ms,
            (Metric::HttpReqFailed, Stat::Count) => r.failures as f64,
            (Metric::HttpReqFailed, _) => r.error_rate(),
            (Metric::HttpReqs, Stat::Count) => r.requests as f64,
            (Metric::HttpReqs, _) => r.requests as f64 / figures.duration.as_secs_f64().max(1e-9),
        }
    }
}

/// A set of rules; all must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds(pub Vec<Threshold>);

impl Thresholds {
    /// Parses rules written like k6's.
    ///
    /// # Errors
    /// The first rule that does not parse.
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<Thresholds, ThresholdError> {
        rules
            .iter()
            .map(|r| r.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(Thresholds)
    }

    /// The runbook's k6 limits: p95 under 500 ms, under 1 % failed, and at least
    /// `min_rps` requests per second.
    pub fn k6_defaults(min_rps: f64) -> Thresholds {
        let rules = [
            "http_req_duration: p(95)<500".to_owned(),
            "http_req_failed: rate<0.01".to_owned(),
            format!("http_reqs: rate>={min_rps}"),
        ];
        Thresholds::parse(&rules).expect("the default thresholds parse")
    }

    /// Judges every rule.
    pub fn judge(&self, figures: &LoadFigures) -> Vec<ThresholdOutcome> {
        self.0.iter().map(|t| t.judge(figures)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rule: &str, expected: Result<(Metric, Option<&str>, Stat, Comparison, f64), &str>) {
        let got = rule.parse::<Threshold>();
        match (got, expected) {
            (Ok(t), Ok((m, scope, s, op, v))) => {
                assert_eq!(
                    (t.metric, t.scope.as_deref(), t.stat, t.op, t.value),
                    (m, scope, s, op, v),
                    "{rule}"
                );
            }
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{rule}: {e}"),
            (got, expected) => panic!("{rule}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn parses_k6_rules() {
        use Comparison::*;
        use Metric::*;
        check(
            "http_req_duration: p(95)<500",
            Ok((HttpReqDuration, None, Stat::Percentile(95.0), Lt, 500.0)),
        );
        check(
            "http_req_duration:p(99.9)<=1500",
            Ok((HttpReqDuration, None, Stat::Percentile(99.9), Le, 1500.0)),
        );
        check(
            "http_req_failed: rate<0.01",
            Ok((HttpReqFailed, None, Stat::Rate, Lt, 0.01)),
        );
        check(
            "http_reqs: rate>=20",
            Ok((HttpReqs, None, Stat::Rate, Ge, 20.0)),
        );
        check(
            "http_reqs: count>100",
            Ok((HttpReqs, None, Stat::Count, Gt, 100.0)),
        );
        check(
            "http_req_duration{name:GET list posts}: med<100",
            Ok((
                HttpReqDuration,
                Some("GET list posts"),
                Stat::Med,
                Lt,
                100.0,
            )),
        );
        check("http_req_waiting: p(95)<500", Err("metric must be"));
        check("http_req_duration: p(95)", Err("missing comparison"));
        check("http_req_duration: p(95)<fast", Err("must be a number"));
        check("http_req_duration: rate<1", Err("does not apply"));
        check("http_req_failed: rate<5", Err("fraction"));
        check("http_req_duration: p(0)<5", Err("percentile"));
        check(
            "http_req_duration{name:}: p(95)<5",
            Err("empty request name"),
        );
        check("nonsense", Err("expected <metric>"));
    }
}
