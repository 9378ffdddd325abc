//! Where the provider's inputs are: the Kubernetes binaries (`$RR_K8S_BIN`, else the cache of
//! `ci/k8s/build.sh`), the image file systems (`$RR_K8S_IMAGES`, else the cache of
//! `ci/k8s/images.sh`), and the workspace's `titanium` binary.

use std::path::{Path, PathBuf};

use super::LocalError;

/// A directory holding kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
/// kube-proxy and a static `pause` (official release binaries of any version work: see
/// `ci/k8s/fetch-release.sh`).
pub const K8S_BIN_ENV: &str = "RR_K8S_BIN";

/// A directory holding `rootfs-debian.tar` and `postgres.tar` (`ci/k8s/images.sh`).
pub const K8S_IMAGES_ENV: &str = "RR_K8S_IMAGES";

/// Where `ci/k8s/build.sh` and `ci/k8s/images.sh` cache what they make (`$RR_K8S_CACHE`).
pub fn cache_root() -> PathBuf {
    std::env::var_os("RR_K8S_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/rebuild-rehearsal/k8s"))
}

/// The programs the directory must hold.
pub const K8S_PROGRAMS: [&str; 6] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "pause",
];

/// The Kubernetes binaries: `given`, else `$RR_K8S_BIN`, else the newest complete
/// `v*/bin` of the cache. Checks that every program is there.
///
/// # Errors
/// [`LocalError::NotFound`] saying what is missing and how to make it.
pub fn bin_dir(given: Option<&Path>) -> Result<PathBuf, LocalError> {
    let dir = match given
        .map(Path::to_owned)
        .or_else(|| std::env::var_os(K8S_BIN_ENV).map(PathBuf::from))
    {
        Some(dir) => dir,
        None => newest_complete(&cache_root(), "v")
            .map(|d| d.join("bin"))
            .ok_or_else(|| LocalError::NotFound {
                what: "Kubernetes binaries",
                detail: format!(
                    "no complete build under {}; run ci/k8s/build.sh, or set {K8S_BIN_ENV} \
                     (ci/k8s/fetch-release.sh downloads official ones)",
                    cache_root().display()
                ),
            })?,
    };
    let missing: Vec<&str> = K8S_PROGRAMS
        .iter()
        .copied()
        .filter(|p| !dir.join(p).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(LocalError::NotFound {
            what: "Kubernetes binaries",
            detail: format!("{} lacks {}", dir.display(), missing.join(", ")),
        });
    }
    Ok(dir)
}

/// The image file systems: `given`, else `$RR_K8S_IMAGES`, else the newest complete
/// `images-*` of the cache.
///
/// # Errors
/// [`LocalError::NotFound`].
pub fn images_dir(given: Option<&Path>) -> Result<PathBuf, LocalError> {
    let dir = match given
        .map(Path::to_owned)
        .or_else(|| std::env::var_os(K8S_IMAGES_ENV).map(PathBuf::from))
    {
        Some(dir) => dir,
        None => newest_complete(&cache_root(), "images-").ok_or_else(|| LocalError::NotFound {
            what: "the local provider's image file systems",
            detail: format!(
                "none under {}; run ci/k8s/images.sh or set {K8S_IMAGES_ENV}",
                cache_root().display()
            ),
        })?,
    };
    for file in ["rootfs-debian.tar", "postgres.tar"] {
        if !dir.join(file).is_file() {
            return Err(LocalError::NotFound {
                what: "the local provider's image file systems",
                detail: format!("{} lacks {file}; run ci/k8s/images.sh", dir.display()),
            });
        }
    }
    Ok(dir)
}

/// The newest directory under `root` named `prefix*` with a `COMPLETE` marker.
fn newest_complete(root: &Path, prefix: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .filter(|p| p.join("COMPLETE").is_file())
        .max_by_key(|p| {
            std::fs::metadata(p.join("COMPLETE"))
                .and_then(|m| m.modified())
                .ok()
        })
}

/// The workspace's `titanium` binary: `given`, else next to the running program (or its
/// parent, for test binaries in `deps/`), else `$CARGO_TARGET_DIR`/`target` release or debug,
/// else `PATH`: the newest of those found.
///
/// # Errors
/// [`LocalError::NotFound`] saying to build it.
pub fn titanium(given: Option<&Path>) -> Result<PathBuf, LocalError> {
    if let Some(path) = given {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(LocalError::NotFound {
                what: "the titanium binary",
                detail: format!("{} is not a file", path.display()),
            })
        };
    }
    let mut search = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        search.push(dir.to_owned());
        if dir.ends_with("deps")
            && let Some(up) = dir.parent()
        {
            search.push(up.to_owned());
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    search.push(target.join("release"));
    search.push(target.join("debug"));
    let found = search
        .iter()
        .map(|d| d.join("titanium"))
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found
        .or_else(|| which::which("titanium").ok())
        .ok_or_else(|| LocalError::NotFound {
            what: "the titanium binary",
            detail: "build it with `cargo build -p titanium`".to_owned(),
        })
}

/// The minor version of the binaries in `bin_dir` (`kube-apiserver --version` says
/// `Kubernetes v1.20.2`): the flags the provider passes depend on it.
///
/// # Errors
/// [`LocalError::Command`] when the program does not run, [`LocalError::NotFound`] when its
/// answer names no version.
pub fn minor_version(bin_dir: &Path) -> Result<u32, LocalError> {
    let program = bin_dir.join("kube-apiserver");
    let out = super::daemon::run(&program.to_string_lossy(), &["--version"])?;
    parse_minor(&out).ok_or_else(|| LocalError::NotFound {
        what: "a Kubernetes version",
        detail: format!("{} --version said {:?}", program.display(), out.trim()),
    })
}

fn parse_minor(text: &str) -> Option<u32> {
    let version = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v1."))?;
    version.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_minor_version_is_read_from_the_version_line() {
        assert_eq!(super::parse_minor("Kubernetes v1.20.2\n"), Some(20));
        assert_eq!(super::parse_minor("Kubernetes v1.29.7-dirty"), Some(29));
        assert_eq!(super::parse_minor("Kubernetes"), None);
    }
}
