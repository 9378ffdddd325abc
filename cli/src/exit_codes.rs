//! The exit codes of `rehearsal`, defined once. Scripts and CI rely on them.

/// Every gate passed (or the command did what was asked; for `runbook`, no command of the
/// document failed or was unsafe).
pub(crate) const OK: i32 = 0;

/// The command ran, and a gate failed: the verdict is "roll back" (or, for `preflight`, NO-GO;
/// for `runbook`, a command of the document failed or was unsafe, refused ones included; for
/// `restore`, a backup refused by its checks, and for a point-in-time recovery an archive with
/// a missing or corrupted WAL segment or mixed timelines, or a target outside the archive,
/// named; nothing was changed; for `forecast`, a runbook limit forecast to be exceeded, or with
/// `--check` an RTO error above `--max-error` or a peak RSS growth above `--max-rss-growth`).
pub(crate) const GATE_FAILED: i32 = 3;

/// The command could not run: a setup error, bad input, an unreachable cluster or server (for
/// `runbook`: cluster A could not be brought up, the shell could not be confined, or the run
/// stopped before the document's end; for `forecast`, a report that cannot be used, or, none
/// exceeded, a runbook limit the reports give nothing to forecast or, with `--check`, a report
/// without a peak RSS).
pub(crate) const COULD_NOT_RUN: i32 = 4;

/// Command-line usage errors: clap's own code for a bad option, and ours for a rule across
/// options (`validate::check`), including a runbook document that cannot run (missing, not
/// UTF-8, no shell block, a command left open, `--from`/`--only` matching no section), and
/// `restore`'s `--to-time`/`--to-lsn`/`--to-latest` (malformed, more than one, without a PITR
/// archive, with `--from-sql`, or a PITR archive without one).
/// Nothing has started when it is returned.
pub(crate) const USAGE: i32 = 2;

/// Stopped by SIGINT (Ctrl-C), after tearing down what it started (servers, tool processes,
/// scratch directories): 128 + 2, as shells report it.
pub(crate) const INTERRUPTED: i32 = 130;

/// Stopped by SIGTERM, after the same teardown: 128 + 15.
pub(crate) const TERMINATED: i32 = 143;
