//! Shared test helpers.

/// True when running under CI (`CI=true`), where a missing prerequisite is a failure.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Whether a process with this pid is still alive (and not a zombie we own).
pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .split_whitespace()
            .nth(2)
            .is_some_and(|state| state == "Z"),
        Err(_) => false,
    }
}
