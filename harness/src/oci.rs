//! Container images without a registry or a Docker daemon: an [OCI image-layout] archive
//! written from file-system tarballs and single files, for `ctr images import`.
//!
//! The `local` cluster provider packs its images with this at start: the Titanium stand-ins
//! are a Debian root file system (from `ci/k8s/images.sh`) plus the workspace's own `titanium`
//! binary as a second layer, so a rebuilt binary is a new image without any registry.
//!
//! Layers are uncompressed tar (`application/vnd.oci.image.layer.v1.tar`), so a layer's digest
//! is also its diff ID. Layers shared between images (the same tarball, or files with the same
//! bytes) are written to the archive once. File layers are deterministic: owner root, mtime 0.
//!
//! [OCI image-layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A layer tarball or a file could not be read.
    #[error("could not read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The archive could not be written.
    #[error("could not write the image archive {path}")]
    Write {
        /// The archive.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An image is not well formed (no name, no layer, a path that leaves the image).
    #[error("image {image}: {problem}")]
    Invalid {
        /// The image's name.
        image: String,
        /// What is wrong.
        problem: String,
    },
}

/// One image of an archive.
#[derive(Clone, Debug)]
pub struct Image {
    /// The full reference the runtime will know it by, e.g.
    /// `docker.io/titanium/api-gateway:rehearsal` (what a pod's `titanium/api-gateway:rehearsal`
    /// normalises to).
    pub name: String,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
    /// What a container runs.
    pub config: RunConfig,
}

/// A layer: a file-system tarball, or a few files.
#[derive(Clone, Debug)]
pub enum Layer {
    /// An existing uncompressed tar of a file system (paths relative to `/`).
    Tar(PathBuf),
    /// Files put at the given paths.
    Files(Vec<LayerFile>),
}

/// One file of a [`Layer::Files`].
#[derive(Clone, Debug)]
pub struct LayerFile {
    /// Where it is in the image, absolute (`/usr/local/bin/titanium`).
    pub path: String,
    /// Where its bytes come from.
    pub source: FileSource,
    /// Its mode (`0o755` for a program).
    pub mode: u32,
}

/// The bytes of a [`LayerFile`].
#[derive(Clone, Debug)]
pub enum FileSource {
    /// A file on the host.
    Path(PathBuf),
    /// Bytes given here (a small script).
    Bytes(Vec<u8>),
}

/// The image's run configuration (the OCI config's `config` object).
#[derive(Clone, Debug, Default)]
pub struct RunConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `StopSignal`, e.g. `SIGINT`.
    pub stop_signal: Option<String>,
    /// `ExposedPorts`, e.g. `5432/tcp`.
    pub exposed_ports: Vec<String>,
}

/// What [`write_archive`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Each image's name and manifest digest (`sha256:…`), in the order given.
    pub images: Vec<(String, String)>,
    /// Bytes of the archive.
    pub bytes: u64,
}

struct Blob {
    digest: String,
    size: u64,
}

/// Writes `images` as one OCI image-layout tar at `out` (replacing it), ready for
/// `ctr -n k8s.io images import`. Each manifest carries its name in the
/// `io.containerd.image.name` and `org.opencontainers.image.ref.name` annotations.
///
/// # Errors
/// [`OciError::Invalid`] for an image without a name or a layer, or a file path that is not
/// absolute or leaves the image; [`OciError::Read`]/[`OciError::Write`] for I/O.
pub fn write_archive(images: &[Image], out: &Path) -> Result<ArchiveSummary, OciError> {
    for image in images {
        validate(image)?;
    }
    let write_err = |source| OciError::Write {
        path: out.to_owned(),
        source,
    };
    let file = File::create(out).map_err(write_err)?;
    let mut archive = tar::Builder::new(io::BufWriter::new(file));
    archive.mode(tar::HeaderMode::Deterministic);
    append_bytes(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(write_err)?;

    let mut written: HashMap<String, ()> = HashMap::new();
    let mut tar_digests: HashMap<PathBuf, Blob> = HashMap::new();
    let mut index = Vec::new();
    let mut summary = Vec::new();
    for image in images {
        let mut layer_blobs = Vec::new();
        for layer in &image.layers {
            let blob = match layer {
                Layer::Tar(path) => {
                    if let Some(blob) = tar_digests.get(path) {
                        Blob {
                            digest: blob.digest.clone(),
                            size: blob.size,
                        }
                    } else {
                        let blob = digest_file(path)?;
                        if written.insert(blob.digest.clone(), ()).is_none() {
                            let mut source = File::open(path).map_err(|source| OciError::Read {
                                path: path.clone(),
                                source,
                            })?;
                            append_reader(
                                &mut archive,
                                &blob_path(&blob.digest),
                                blob.size,
                                &mut source,
                            )
                            .map_err(write_err)?;
                        }
                        tar_digests.insert(
                            path.clone(),
                            Blob {
                                digest: blob.digest.clone(),
                                size: blob.size,
                            },
                        );
                        blob
                    }
                }
                Layer::Files(files) => {
                    let bytes = files_layer(files)?;

                    put_blob(&mut archive, &mut written, &bytes).map_err(write_err)?
                }
            };
            layer_blobs.push(blob);
        }
        let config = config_json(&image.config, &layer_blobs);
        let config_blob = put_blob(&mut archive, &mut written, &config).map_err(write_err)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": { "mediaType": CONFIG_TYPE, "digest": config_blob.digest, "size": config_blob.size },
            "layers": layer_blobs.iter().map(|b| json!({
                "mediaType": LAYER_TYPE, "digest": b.digest, "size": b.size,
            })).collect::<Vec<_>>(),
        }))
        .expect("a JSON value serialises");
        let manifest_blob = put_blob(&mut archive, &mut written, &manifest).map_err(write_err)?;
        index.push(json!({
            "mediaType": MANIFEST_TYPE,
            "digest": manifest_blob.digest,
            "size": manifest_blob.size,
            "platform": { "architecture": go_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": image.name,
                "org.opencontainers.image.ref.name": image.name,
            },
        }));
        summary.push((image.name.clone(), manifest_blob.digest));
    }
    let index = serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": index }))
        .expect("a JSON value serialises");
    append_bytes(&mut archive, "index.json", &index).map_err(write_err)?;
    let mut writer = archive.into_inner().map_err(write_err)?;
    writer.flush().map_err(write_err)?;
    let bytes = writer.get_ref().metadata().map_err(write_err)?.len();
    Ok(ArchiveSummary {
        images: summary,
        bytes,
    })
}

fn validate(image: &Image) -> Result<(), OciError> {
    let invalid = |problem: String| OciError::Invalid {
        image: image.name.clone(),
        problem,
    };
    if image.name.trim().is_empty() {
        return Err(invalid("the image has no name".into()));
    }
    if image.layers.is_empty() {
        return Err(invalid("the image has no layer".into()));
    }
    for layer in &image.layers {
        if let Layer::Files(files) = layer {
            for file in files {
                let relative = file
                    .path
                    .strip_prefix('/')
                    .ok_or_else(|| invalid(format!("file path {:?} is not absolute", file.path)))?;
                if relative.is_empty()
                    || relative
                        .split('/')
                        .any(|c| c.is_empty() || c == "." || c == "..")
                {
                    return Err(invalid(format!(
                        "file path {:?} is not a plain path in the image",
                        file.path
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The architecture as Go (and so OCI) names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn config_json(config: &RunConfig, layers: &[Blob]) -> Vec<u8> {
    let mut run = serde_json::Map::new();
    if !config.entrypoint.is_empty() {
        run.insert("Entrypoint".into(), json!(config.entrypoint));
    }
    if !config.cmd.is_empty() {
        run.insert("Cmd".into(), json!(config.cmd));
    }
    if !config.env.is_empty() {
        run.insert("Env".into(), json!(config.env));
    }
    if let Some(dir) = &config.working_dir {
        run.insert("WorkingDir".into(), json!(dir));
    }
    if let Some(signal) = &config.stop_signal {
        run.insert("StopSignal".into(), json!(signal));
    }
    if !config.exposed_ports.is_empty() {
        let ports: BTreeMap<&str, serde_json::Value> = config
            .exposed_ports
            .iter()
            .map(|p| (p.as_str(), json!({})))
            .collect();
        run.insert("ExposedPorts".into(), json!(ports));
    }
    serde_json::to_vec(&json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": run,
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|b| b.digest.clone()).collect::<Vec<_>>() },
    }))
    .expect("a JSON value serialises")
}

fn files_layer(files: &[LayerFile]) -> Result<Vec<u8>, OciError> {
    let mut layer = tar::Builder::new(Vec::new());
    for file in files {
        let bytes = match &file.source {
            FileSource::Bytes(bytes) => bytes.clone(),
            FileSource::Path(path) => std::fs::read(path).map_err(|source| OciError::Read {
                path: path.clone(),
                source,
            })?,
        };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(file.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        layer
            .append_data(
                &mut header,
                file.path.trim_start_matches('/'),
                bytes.as_slice(),
            )
            .map_err(|source| OciError::Write {
                path: PathBuf::from(&file.path),
                source,
            })?;
    }
    layer.into_inner().map_err(|source| OciError::Write {
        path: PathBuf::from("(layer)"),
        source,
    })
}

fn digest_file(path: &Path) -> Result<Blob, OciError> {
    let read_err = |source| OciError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Blob {
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        size,
    })
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn put_blob<W: Write>(
    archive: &mut tar::Builder<W>,
    written: &mut HashMap<String, ()>,
    bytes: &[u8],
) -> io::Result<Blob> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if written.insert(digest.clone(), ()).is_none() {
        append_bytes(archive, &blob_path(&digest), bytes)?;
    }
    Ok(Blob {
        digest,
        size: bytes.len() as u64,
    })
}

fn append_bytes<W: Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
) -> io::Result<()> {
    append_reader(archive, path, bytes.len() as u64, &mut &bytes[..])
}

fn append_reader<W: Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    reader: &mut dyn Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    archive.append_data(&mut header, path, reader.take(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut entries = BTreeMap::new();
        let mut archive = tar::Archive::new(File::open(path).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            entries.insert(name, bytes);
        }
        entries
    }

    fn image(name: &str, layers: Vec<Layer>) -> Image {
        Image {
            name: name.into(),
            layers,
            config: RunConfig {
                entrypoint: vec!["/usr/local/bin/titanium".into()],
                cmd: vec!["api-gateway".into()],
                env: vec!["RUST_LOG=info".into()],
                ..RunConfig::default()
            },
        }
    }

    #[test]
    fn every_blob_is_named_by_its_digest_and_shared_layers_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.tar");
        let mut base_tar = tar::Builder::new(File::create(&base).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        base_tar
            .append_data(&mut header, "etc/hostname", &b"base\n"[..])
            .unwrap();
        base_tar.into_inner().unwrap();
        let program = LayerFile {
            path: "/usr/local/bin/titanium".into(),
            source: FileSource::Bytes(b"#!/bin/sh\n".to_vec()),
            mode: 0o755,
        };
        let images = [
            image(
                "docker.io/titanium/a:rehearsal",
                vec![
                    Layer::Tar(base.clone()),
                    Layer::Files(vec![program.clone()]),
                ],
            ),
            image(
                "docker.io/titanium/b:rehearsal",
                vec![Layer::Tar(base.clone()), Layer::Files(vec![program])],
            ),
        ];
        let out = dir.path().join("images.tar");
        let summary = write_archive(&images, &out).unwrap();
        let entries = read_archive(&out);

        for (name, bytes) in &entries {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(hex, hex::encode(Sha256::digest(bytes)), "blob {name}");
            }
        }
        // The base layer, the program layer, and one config and manifest: both images are the same.
        let blobs = entries.keys().filter(|k| k.starts_with("blobs/")).count();
        assert_eq!(
            blobs,
            2 + 1 + 1,
            "layers and the identical config/manifest are shared"
        );
        let index: serde_json::Value = serde_json::from_slice(&entries["index.json"]).unwrap();
        let names: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["annotations"]["io.containerd.image.name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            names,
            [
                "docker.io/titanium/a:rehearsal",
                "docker.io/titanium/b:rehearsal"
            ]
        );
        assert_eq!(summary.images.len(), 2);
        let manifest_hex = summary.images[0].1.trim_start_matches("sha256:");
        let manifest: serde_json::Value =
            serde_json::from_slice(&entries[&format!("blobs/sha256/{manifest_hex}")]).unwrap();
        let config_hex = manifest["config"]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let config: serde_json::Value =
            serde_json::from_slice(&entries[&format!("blobs/sha256/{config_hex}")]).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/titanium");
        assert_eq!(
            config["rootfs"]["diff_ids"],
            manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].clone())
                .collect::<Vec<_>>()
                .into_iter()
                .collect::<serde_json::Value>()
        );
    }

    #[test]
    fn a_file_path_that_leaves_the_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["usr/bin/x", "/../etc/passwd", "/usr//x", "/"] {
            let images = [image(
                "docker.io/x:y",
                vec![Layer::Files(vec![LayerFile {
                    path: bad.into(),
                    source: FileSource::Bytes(vec![]),
                    mode: 0o644,
                }])],
            )];
            let err = write_archive(&images, &dir.path().join("o.tar")).unwrap_err();
            assert!(matches!(err, OciError::Invalid { .. }), "{bad}: {err}");
        }
        let err = write_archive(&[image("docker.io/x:y", vec![])], &dir.path().join("o.tar"))
            .unwrap_err();
        assert!(err.to_string().contains("no layer"), "{err}");
    }

    #[test]
    fn a_missing_layer_tarball_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.tar");
        let err = write_archive(
            &[image("docker.io/x:y", vec![Layer::Tar(missing.clone())])],
            &dir.path().join("o.tar"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope.tar"), "{err}");
    }
}
