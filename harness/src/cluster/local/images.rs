//! The node's images, packed at start ([`crate::oci`]) and imported into its containerd: the
//! pause image (the `pause` binary), `titanium/*:rehearsal` (a Debian root file system plus the
//! workspace's `titanium` binary), `redis:7-alpine` (Debian's redis-server on the same file
//! system), `busybox:1.36` (the same file system, for helper pods) and `postgres:15-alpine` (the project's PostgreSQL image, `docker save`d by
//! `ci/k8s/images.sh`).

use std::path::Path;

use super::LocalError;
use super::daemon::run;
use crate::oci::{FileSource, Image, Layer, LayerFile, RunConfig, write_archive};

/// The sandbox image containerd runs for every pod.
pub const PAUSE_IMAGE: &str = "docker.io/rebuild-rehearsal/pause:local";

/// The Titanium roles and the ingress gateway's stand-in, one image each
/// (`titanium/<role>:rehearsal`).
pub const TITANIUM_ROLES: [&str; 6] = [
    "api-gateway",
    "user-service",
    "auth-service",
    "blog-service",
    "load-generator",
    "ingress-gateway",
];

const POSTGRES_SAVED: &str = "docker.io/rebuild-rehearsal/postgres:15";
const POSTGRES_AS: &str = "docker.io/library/postgres:15-alpine";

/// The images of the archive (everything but PostgreSQL).
pub(crate) fn images(bin_dir: &Path, rootfs: &Path, titanium: &Path) -> Vec<Image> {
    let mut images = vec![Image {
        name: PAUSE_IMAGE.to_owned(),
        layers: vec![Layer::Files(vec![LayerFile {
            path: "/pause".to_owned(),
            source: FileSource::Path(bin_dir.join("pause")),
            mode: 0o755,
        }])],
        config: RunConfig {
            entrypoint: vec!["/pause".to_owned()],
            ..RunConfig::default()
        },
    }];
    images.push(Image {
        name: "docker.io/library/redis:7-alpine".to_owned(),
        layers: vec![Layer::Tar(rootfs.to_owned())],
        config: RunConfig {
            // As the official image: no configuration file, so no protected mode, reachable
            // on every address of the pod.
            entrypoint: vec!["redis-server".to_owned()],
            cmd: vec![
                "--protected-mode".to_owned(),
                "no".to_owned(),
                "--dir".to_owned(),
                "/tmp".to_owned(),
            ],
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ],
            exposed_ports: vec!["6379/tcp".to_owned()],
            ..RunConfig::default()
        },
    });
    // The scenarios' helper pods (a reader of the backup volume) name busybox; the Debian file
    // system has the same tools (sh, sleep, ls, cat).
    images.push(Image {
        name: "docker.io/library/busybox:1.36".to_owned(),
        layers: vec![Layer::Tar(rootfs.to_owned())],
        config: RunConfig {
            cmd: vec!["sh".to_owned()],
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ],
            ..RunConfig::default()
        },
    });
    let binary = Layer::Files(vec![LayerFile {
        path: "/usr/local/bin/titanium".to_owned(),
        source: FileSource::Path(titanium.to_owned()),
        mode: 0o755,
    }]);
    for role in TITANIUM_ROLES {
        images.push(Image {
            name: format!("docker.io/titanium/{role}:rehearsal"),
            layers: vec![Layer::Tar(rootfs.to_owned()), binary.clone()],
            config: RunConfig {
                entrypoint: vec!["/usr/local/bin/titanium".to_owned(), role.to_owned()],
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                    "RUST_LOG=info".to_owned(),
                ],
                stop_signal: Some("SIGTERM".to_owned()),
                ..RunConfig::default()
            },
        });
    }
    images
}

/// Packs the images into `work/images.tar`, imports it and PostgreSQL's archive into the
/// containerd at `socket`, and names PostgreSQL as the manifests do. Blocking (seconds).
pub(crate) fn import(
    socket: &Path,
    work: &Path,
    bin_dir: &Path,
    images_dir: &Path,
    titanium: &Path,
) -> Result<(), LocalError> {
    let archive = work.join("images.tar");
    let packed = images(bin_dir, &images_dir.join("rootfs-debian.tar"), titanium);
    write_archive(&packed, &archive).map_err(LocalError::Images)?;
    let ctr = |args: &[&str]| {
        let mut all = vec!["-n", "k8s.io", "-a"];
        let socket = socket.to_string_lossy();
        all.push(&socket);
        all.extend_from_slice(args);
        run("ctr", &all)
    };
    ctr(&["images", "import", &archive.to_string_lossy()])?;
    // The archive is in the content store now: its copy is not needed.
    std::fs::remove_file(&archive).map_err(|source| LocalError::Io {
        action: "remove",
        path: archive.clone(),
        source,
    })?;
    ctr(&[
        "images",
        "import",
        &images_dir.join("postgres.tar").to_string_lossy(),
    ])?;
    ctr(&["images", "tag", "--force", POSTGRES_SAVED, POSTGRES_AS])?;
    let listed = ctr(&["images", "ls", "-q"])?;
    let mut wanted: Vec<String> = packed.iter().map(|i| i.name.clone()).collect();
    wanted.push(POSTGRES_AS.to_owned());
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !listed.lines().any(|l| l.trim() == w.as_str()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LocalError::NotFound {
            what: "imported images",
            detail: format!("containerd does not list {missing:?} after the import"),
        })
    }
}
