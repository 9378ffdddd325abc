//! One rule for tests that need something outside Rust (a tool, a server, Docker): under CI a
//! missing prerequisite fails the test; elsewhere the test says why it skips and returns.
//!
//! "Under CI" means the `CI` variable is set to anything but empty, `0` or `false` (`ci/run`
//! exports `CI=true`, as GitHub Actions does). Every test crate uses this module: the harness's
//! own tests and the crates above it as `harness::testing`, the simulator's (below the harness)
//! by including this file. It therefore depends on nothing but `std`.

use std::path::{Path, PathBuf};

/// Whether a missing prerequisite must fail the test (`CI` set, and not empty, `0` or `false`).
pub fn strict() -> bool {
    strict_for(std::env::var("CI").ok().as_deref())
}

fn strict_for(ci: Option<&str>) -> bool {
    !matches!(
        ci.map(str::trim),
        None | Some("" | "0" | "false" | "FALSE" | "False")
    )
}

/// The executable `tool`: a path as given when it contains `/`, else the first match on
/// `PATH`. `None` (after saying so) when it is missing and this is not CI.
///
/// # Panics
/// Under CI ([`strict`]) when the tool is missing.
pub fn require(tool: &str) -> Option<PathBuf> {
    require_with(tool, strict())
}

fn require_with(tool: &str, strict: bool) -> Option<PathBuf> {
    match find(tool) {
        Some(path) => Some(path),
        None => {
            unavailable_with(
                &format!("{tool} is not installed (not found on PATH)"),
                strict,
            );
            None
        }
    }
}

/// Reports a prerequisite that is not there (Docker not running, no PostgreSQL server
/// binaries, ...): under CI the test fails with `reason`; elsewhere it prints
/// `SKIPPED: reason` and the caller returns.
///
/// # Panics
/// Under CI ([`strict`]).
pub fn unavailable(reason: &str) {
    unavailable_with(reason, strict());
}

fn unavailable_with(reason: &str, strict: bool) {
    if strict {
        panic!("{reason}: required under CI (CI is set; ci/setup installs the prerequisites)");
    }
    eprintln!("SKIPPED: {reason} (set CI=true to make this a failure)");
}

fn find(tool: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if tool.contains('/') {
        let path = PathBuf::from(tool);
        return executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_strict_unless_unset_empty_zero_or_false() {
        for (value, expected) in [
            (None, false),
            (Some(""), false),
            (Some("0"), false),
            (Some("false"), false),
            (Some("true"), true),
            (Some("1"), true),
            (Some("yes"), true),
        ] {
            assert_eq!(strict_for(value), expected, "CI={value:?}");
        }
    }

    #[test]
    fn a_missing_tool_skips_outside_ci_and_fails_under_it() {
        let missing = "no-such-tool-for-rehearsal-tests";
        assert_eq!(require_with(missing, false), None);
        let failed = std::panic::catch_unwind(|| require_with(missing, true));
        assert!(failed.is_err(), "a missing tool must fail under CI");
        assert!(require_with("sh", true).is_some_and(|p| p.is_absolute()));
    }
}
