//! The image map: which program runs for which image (`fixtures/images.toml`).
//!
//! Keys are image names without tag or digest; `program` is a path or the name of a binary
//! looked up next to the running executable, in the workspace's `target/{debug,release}`
//! and on `PATH`; `args` go before the container's own `args`; the optional `env` table adds
//! variables (with `$(VAR)` references, for example `LISTEN_ADDR = "$(POD_IP):$(PORT)"`).
//! `postgres` and `redis` are built in; an image that is neither mapped nor built in runs
//! as a pause container, unless the container has a `command`, which then runs on the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One mapped image.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageProgram {
    /// The program to run.
    pub program: String,
    /// Arguments before the container's `args`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment, before the container's own `env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagesFile {
    #[serde(default)]
    images: BTreeMap<String, ImageProgram>,
}

/// Why the image map could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ImageMapError {
    /// The file could not be read.
    #[error("cannot read the image map {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid image map.
    #[error("invalid image map {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
}

/// How the kubelet runs an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Runtime {
    /// The machine's PostgreSQL, with the official image's entrypoint behaviour.
    Postgres,
    /// The machine's redis-server.
    Redis,
    /// A mapped program.
    Program(ImageProgram),
    /// Nothing runs (a pause container).
    Pause,
}

/// Image names to programs.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImageMap {
    images: BTreeMap<String, ImageProgram>,
    search: Vec<PathBuf>,
}

/// The repository part of an image reference: no registry prefix `docker.io/library/`, no
/// tag, no digest.
pub(crate) fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    let name = match image[last_slash..].find(':') {
        Some(i) => &image[..last_slash + i],
        None => image,
    };
    name.strip_prefix("docker.io/")
        .map(|n| n.strip_prefix("library/").unwrap_or(n))
        .unwrap_or(name)
}

impl ImageMap {
    /// The map in `fixtures/images.toml` of this workspace, or the file named by
    /// `SIMCLUSTER_IMAGES`; empty when neither exists.
    ///
    /// # Errors
    /// A file that exists but cannot be read or parsed.
    pub(crate) fn default_map() -> Result<ImageMap, ImageMapError> {
        let path = match std::env::var_os("SIMCLUSTER_IMAGES") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/images.toml"),
        };
        if !path.exists() {
            return Ok(ImageMap::with_search(BTreeMap::new()));
        }
        ImageMap::load(&path)
    }

    /// Load a map from a file.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid map.
    pub(crate) fn load(path: &Path) -> Result<ImageMap, ImageMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImageMapError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: ImagesFile = toml::from_str(&text).map_err(|source| ImageMapError::Parse {
            path: path.to_owned(),
            source,
        })?;
        Ok(ImageMap::with_search(file.images))
    }

    fn with_search(images: BTreeMap<String, ImageProgram>) -> ImageMap {
        let mut search = Vec::new();
        if let Ok(exe) = std::env::current_exe()
            && let Some(dir) = exe.parent()
        {
            search.push(dir.to_owned());
            // Test binaries live in target/<profile>/deps.
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
        ImageMap { images, search }
    }

    /// How to run `image`.
    pub(crate) fn runtime(&self, image: &str) -> Runtime {
        let name = image_name(image);
        if let Some(p) = self.images.get(name) {
            return Runtime::Program(p.clone());
        }
        match name {
            "postgres" | "bitnami/postgresql" => Runtime::Postgres,
            "redis" | "bitnami/redis" => Runtime::Redis,
            _ => Runtime::Pause,
        }
    }

    /// Where a mapped program is: a path as given, else the newest of the search
    /// directories' copies, else `PATH`.
    pub(crate) fn locate(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            let p = PathBuf::from(program);
            return p.is_file().then_some(p);
        }
        let newest = self
            .search
            .iter()
            .map(|d| d.join(program))
            .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
            .filter(|(_, p)| p.is_file())
            .max_by_key(|(t, _)| *t)
            .map(|(_, p)| p);
        newest.or_else(|| {
            super::process::resolve(
                program,
                &[("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_drop_registry_tag_and_digest() {
        for (image, name) in [
            ("postgres:15-alpine", "postgres"),
            ("docker.io/library/redis:7", "redis"),
            ("titanium/api-gateway:rehearsal", "titanium/api-gateway"),
            ("localhost:5000/x/y:1@sha256:abc", "localhost:5000/x/y"),
            ("busybox", "busybox"),
        ] {
            assert_eq!(image_name(image), name, "{image}");
        }
    }

    #[test]
    fn the_workspace_map_parses() {
        let map = ImageMap::default_map().expect("fixtures/images.toml parses");
        assert!(matches!(
            map.runtime("titanium/api-gateway:rehearsal"),
            Runtime::Program(_)
        ));
        assert_eq!(map.runtime("postgres:15-alpine"), Runtime::Postgres);
        assert_eq!(map.runtime("registry.k8s.io/pause:3.9"), Runtime::Pause);
    }
}
