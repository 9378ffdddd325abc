//! The one line each benchmark prints per ratio, which `ci/bench` collects into BENCHMARKS.md:
//!
//! `BENCH<TAB>operation<TAB>peer<TAB>ratio<TAB>target<TAB>met|missed<TAB>detail`
//!
//! A ratio is always ours over the peer's (time) or ours over the peer's (throughput), as the
//! target says; both sides are measured in the same run, on the same machine and data.

/// How a ratio is judged. (Each benchmark uses one kind or both.)
#[allow(dead_code)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// The ratio must be at most this (times: ours / peer).
    AtMost(f64),
    /// The ratio must be at least this (throughputs: ours / peer).
    AtLeast(f64),
}

impl Target {
    pub(crate) fn met(self, ratio: f64) -> bool {
        match self {
            Target::AtMost(t) => ratio <= t,
            Target::AtLeast(t) => ratio >= t,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AtMost(t) => write!(f, "<= {t:.2}x"),
            Target::AtLeast(t) => write!(f, ">= {t:.2}x"),
        }
    }
}

/// Prints the result line and returns whether the target is met. A ratio that is not a
/// finite positive number is a failed measurement, never a met target.
pub(crate) fn report(
    operation: &str,
    peer: &str,
    ratio: f64,
    target: Target,
    detail: &str,
) -> bool {
    let met = ratio.is_finite() && ratio > 0.0 && target.met(ratio);
    for field in [operation, peer, detail] {
        assert!(
            !field.contains(['\t', '\n']),
            "a benchmark field holds a tab or a line break: {field:?}"
        );
    }
    println!(
        "BENCH\t{operation}\t{peer}\t{ratio:.2}\t{target}\t{}\t{detail}",
        if met { "met" } else { "missed" }
    );
    met
}
