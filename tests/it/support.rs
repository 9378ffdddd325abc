//! What several of these tests share: the repository's root, and the `titanium` binary the
//! simulated pods run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The simulated pods run the `titanium` binary; build it when a test runs on its own.
pub(crate) fn ensure_titanium_built() {
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "titanium", "--bin", "titanium"])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(status.success(), "could not build the titanium binary");
}
