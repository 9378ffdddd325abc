//! Off-site copies of the archive: to a directory (another disk) and to S3-compatible object
//! storage. Each copy is read back and its SHA-256 compared before it counts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BackupError;
use super::archive::ArchiveInfo;
use super::files::sha256_file;
use crate::pg::Secret;

/// Where an off-site copy goes.
#[derive(Clone, Debug)]
pub enum OffsiteTarget {
    /// A directory, typically on another disk. The archive and its `.sha256` are copied there.
    Directory(PathBuf),
    /// An S3-compatible bucket.
    S3(S3Target),
}

/// An S3-compatible bucket.
#[derive(Clone, Debug)]
pub struct S3Target {
    /// Endpoint, `http://127.0.0.1:9000` or `https://s3.eu-west-1.amazonaws.com`.
    pub endpoint: String,
    /// Bucket (must exist).
    pub bucket: String,
    /// Region.
    pub region: String,
    /// Key prefix, e.g. `titanium/`.
    pub prefix: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: Secret,
    /// Path-style URLs (MinIO, moto, most self-hosted stores) rather than virtual-host style.
    pub path_style: bool,
}

impl OffsiteTarget {
    /// For messages: never a credential.
    pub fn describe(&self) -> String {
        match self {
            OffsiteTarget::Directory(dir) => dir.display().to_string(),
            OffsiteTarget::S3(s3) => format!(
                "s3 {}/{}/{}",
                s3.endpoint.trim_end_matches('/'),
                s3.bucket,
                s3.prefix
            ),
        }
    }
}

/// A completed, checked off-site copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsiteCopy {
    /// The target.
    pub target: String,
    /// Where the archive is now (path or `s3://bucket/key`).
    pub location: String,
    /// The SHA-256 read back from the copy (equal to the archive's).
    pub sha256: String,
}

/// Copies the archive to `target` and checks the copy.
///
/// # Errors
/// [`BackupError::Offsite`] naming the target and what went wrong.
pub async fn copy_offsite(
    archive: &ArchiveInfo,
    target: &OffsiteTarget,
) -> Result<OffsiteCopy, BackupError> {
    let fail = |detail: String| BackupError::Offsite {
        target: target.describe(),
        detail,
    };
    let file_name = archive
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match target {
        OffsiteTarget::Directory(dir) => {
            let dest = dir.join(&file_name);
            if dest.exists() {
                return Err(fail(format!("{} already exists", dest.display())));
            }
            let partial = dir.join(format!("{file_name}.partial"));
            if let Err(err) = copy_private(&archive.path, &partial).await {
                // A half-written copy is not left behind (disk full, I/O error).
                let _ = std::fs::remove_file(&partial);
                return Err(fail(crate::error_chain(&err)));
            }
            let (_, sha256) = sha256_file(&partial)
                .await
                .map_err(|e| fail(crate::error_chain(&e)))?;
            if sha256 != archive.sha256 {
                let _ = std::fs::remove_file(&partial);
                return Err(fail(format!(
                    "copy has sha256 {sha256}, archive has {}",
                    archive.sha256
                )));
            }
            let sidecar = PathBuf::from(format!("{}.sha256", archive.path.display()));
            if sidecar.exists() {
                copy_private(&sidecar, &dir.join(format!("{file_name}.sha256")))
                    .await
                    .map_err(|e| fail(crate::error_chain(&e)))?;
            }
            std::fs::rename(&partial, &dest)
                .map_err(|e| fail(format!("rename {}: {e}", partial.display())))?;
            Ok(OffsiteCopy {
                target: target.describe(),
                location: dest.display().to_string(),
                sha256,
            })
        }
        OffsiteTarget::S3(s3) => {
            let key = format!("{}{file_name}", s3.prefix);
            let sha256 = upload_s3(s3, &key, &archive.path, archive.size, &archive.sha256)
                .await
                .map_err(fail)?;
            if sha256 != archive.sha256 {
                return Err(fail(format!(
                    "object {key} has sha256 {sha256}, archive has {}",
                    archive.sha256
                )));
            }
            Ok(OffsiteCopy {
                target: target.describe(),
                location: format!("s3://{}/{key}", s3.bucket),
                sha256,
            })
        }
    }
}

async fn copy_private(from: &Path, to: &Path) -> Result<(), BackupError> {
    let mut src = tokio::fs::File::open(from)
        .await
        .map_err(BackupError::io("open", from))?;
    let dst = tokio::fs::File::from_std(super::files::create_private_file(to)?);
    let mut dst = tokio::io::BufWriter::with_capacity(1 << 20, dst);
    tokio::io::copy(&mut src, &mut dst)
        .await
        .map_err(BackupError::io("copy to", to))?;
    tokio::io::AsyncWriteExt::flush(&mut dst)
        .await
        .map_err(BackupError::io("write", to))?;
    dst.into_inner()
        .sync_all()
        .await
        .map_err(BackupError::io("sync", to))
}

fn bucket(s3: &S3Target) -> Result<(Bucket, Credentials), String> {
    let endpoint: reqwest::Url = s3
        .endpoint
        .parse()
        .map_err(|e| format!("bad endpoint {}: {e}", s3.endpoint))?;
    let style = if s3.path_style {
        UrlStyle::Path
    } else {
        UrlStyle::VirtualHost
    };
    let bucket = Bucket::new(endpoint, style, s3.bucket.clone(), s3.region.clone())
        .map_err(|e| format!("bad bucket: {e}"))?;
    Ok((
        bucket,
        Credentials::new(s3.access_key.clone(), s3.secret_key.expose().to_owned()),
    ))
}

const PRESIGN: Duration = Duration::from_secs(3600);

/// Streams the file up with one PUT (objects up to 5 GiB), sending its SHA-256 for the store
/// to check, then streams the object back down and returns the SHA-256 of what came back.
async fn upload_s3(
    s3: &S3Target,
    key: &str,
    path: &Path,
    size: u64,
    sha256: &str,
) -> Result<String, String> {
    let (bucket, creds) = bucket(s3)?;
    let http = reqwest::Client::builder()
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let url = bucket.put_object(Some(&creds), key).sign(PRESIGN);
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let body =
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    let checksum = base64_of_hex(sha256)?;
    let response = http
        .put(url)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .header("x-amz-checksum-sha256", checksum)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("upload {key}: {}", without_url(&e)))?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(format!(
            "upload {key}: HTTP {status}: {}",
            text.chars().take(400).collect::<String>()
        ));
    }
    let url = bucket.get_object(Some(&creds), key).sign(PRESIGN);
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("read back {key}: {}", without_url(&e)))?;
    if !response.status().is_success() {
        return Err(format!("read back {key}: HTTP {}", response.status()));
    }
    let mut hasher = Sha256::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| format!("read back {key}: {}", without_url(&e)))?
    {
        hasher.update(&chunk);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// reqwest errors print the URL, which for a presigned URL carries a signature: drop it.
fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(url.as_str(), "<presigned url>");
    }
    text
}

fn base64_of_hex(hex_digest: &str) -> Result<String, String> {
    use base64::Engine;
    let bytes = hex::decode(hex_digest).map_err(|e| format!("bad digest: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}
