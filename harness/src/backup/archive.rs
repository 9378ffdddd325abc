//! The compressed archive of a backup directory (tar + gzip), optionally encrypted with age,
//! and the way back for `verify`. Everything streams: nothing is held whole in memory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::BackupError;
use super::files::create_private_file;
use crate::pg::Secret;

/// How to encrypt the archive (age).
#[derive(Clone, Debug)]
pub enum EncryptionKey {
    /// A passphrase given directly (scrypt recipient).
    Passphrase(Secret),
    /// A passphrase read from a file (its first line).
    PassphraseFile(PathBuf),
    /// A passphrase read from an environment variable.
    PassphraseEnv(String),
    /// An age X25519 recipient (`age1...`).
    Recipient(String),
}

/// How to decrypt an archive (age).
#[derive(Clone, Debug)]
pub enum DecryptionKey {
    /// A passphrase given directly.
    Passphrase(Secret),
    /// A passphrase read from a file (its first line).
    PassphraseFile(PathBuf),
    /// A passphrase read from an environment variable.
    PassphraseEnv(String),
    /// An age identity file (`AGE-SECRET-KEY-...`).
    IdentityFile(PathBuf),
}

fn passphrase_from_file(path: &Path) -> Result<Secret, BackupError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| BackupError::SecretMissing { name: path.display().to_string(), detail: err.to_string() })?;
    let line = text.lines().next().unwrap_or("").to_owned();
    if line.is_empty() {
        return Err(BackupError::SecretMissing { name: path.display().to_string(), detail: "the file is empty".to_owned() });
    }
    Ok(Secret::new(line))
}

fn passphrase_from_env(var: &str) -> Result<Secret, BackupError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
        Ok(_) => Err(BackupError::SecretMissing { name: format!("${var}"), detail: "it is empty".to_owned() }),
        Err(err) => Err(BackupError::SecretMissing { name: format!("${var}"), detail: err.to_string() }),
    }
}

fn age_err(what: &str) -> impl FnOnce(String) -> BackupError + '_ {
    move |detail| BackupError::Age { what: what.to_owned(), detail }
}

impl EncryptionKey {
    fn encryptor(&self) -> Result<age::Encryptor, BackupError> {
        let passphrase = match self {
            EncryptionKey::Passphrase(p) => p.clone(),
            EncryptionKey::PassphraseFile(path) => passphrase_from_file(path)?,
            EncryptionKey::PassphraseEnv(var) => passphrase_from_env(var)?,
            EncryptionKey::Recipient(r) => {
                let recipient: age::x25519::Recipient =
                    r.parse().map_err(|e: &str| age_err("parse the recipient")(e.to_owned()))?;
                return age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                    .map_err(|e| age_err("set up encryption")(e.to_string()));
            }
        };
        Ok(age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(passphrase.expose().to_owned())))
    }
}

impl DecryptionKey {
    fn identities(&self) -> Result<Vec<Box<dyn age::Identity>>, BackupError> {
        let passphrase = match self {
            DecryptionKey::Passphrase(p) => p.clone(),
            DecryptionKey::PassphraseFile(path) => passphrase_from_file(path)?,
            DecryptionKey::PassphraseEnv(var) => passphrase_from_env(var)?,
            DecryptionKey::IdentityFile(path) => {
                let file = age::IdentityFile::from_file(path.display().to_string())
                    .map_err(|err| BackupError::SecretMissing { name: path.display().to_string(), detail: err.to_string() })?;
                return file.into_identities().map_err(|e| age_err("read the identity file")(e.to_string()));
            }
        };
        Ok(vec![Box::new(age::scrypt::Identity::new(age::secrecy::SecretString::from(passphrase.expose().to_owned())))])
    }
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A written archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// Its path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256 (also written next to it as `<archive>.sha256`).
    pub sha256: String,
    /// Whether it is age-encrypted.
    pub encrypted: bool,
}

/// Archives `dir` (as `<name>/...`) into `out` (written as `out.partial`, then renamed), with
/// gzip `level` (0-9) and optional age encryption; writes `<out>.sha256` beside it.
pub(crate) fn write_archive(
    dir: &Path,
    name: &str,
    out: &Path,
    level: u32,
    key: Option<&EncryptionKey>,
) -> Result<ArchiveInfo, BackupError> {
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    if out.exists() {
        return Err(BackupError::Exists { path: out.to_path_buf() });
    }
    let file = create_private_file(&partial)?;
    let hashing = Hashing { inner: std::io::BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), bytes: 0 };
    let io = BackupError::io("write", &partial);
    let hashing = match key {
        Some(key) => {
            let encryptor = key.encryptor()?;
            let writer = encryptor.wrap_output(hashing).map_err(BackupError::io("encrypt into", &partial))?;
            let writer = tar_gz(dir, name, writer, level, &partial)?;
            writer.finish().map_err(BackupError::io("finish encrypting", &partial))?
        }
        None => tar_gz(dir, name, hashing, level, &partial)?,
    };
    let Hashing { inner, hasher, bytes } = hashing;
    let file = inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(BackupError::io("sync", &partial))?;
    let sha256 = hex::encode(hasher.finalize());
    let file_name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    super::files::write_private(
        &PathBuf::from(format!("{}.sha256", out.display())),
        format!("{sha256}  {file_name}\n").as_bytes(),
    )?;
    std::fs::rename(&partial, out).map_err(BackupError::io("rename", &partial))?;
    Ok(ArchiveInfo { path: out.to_path_buf(), size: bytes, sha256, encrypted: key.is_some() })
}

fn tar_gz<W: Write>(dir: &Path, name: &str, writer: W, level: u32, partial: &Path) -> Result<W, BackupError> {
    let gz = flate2::write::GzEncoder::new(writer, flate2::Compression::new(level));
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(name, dir).map_err(BackupError::io("archive", dir))?;
    let gz = tar.into_inner().map_err(BackupError::io("write", partial))?;
    gz.finish().map_err(BackupError::io("compress into", partial))
}

/// Unpacks an archive (`.tar.gz`, or `.tar.gz.age` with `key`) into `into`, reading it to the
/// very end so that gzip's CRC and age's authentication are checked. Returns the single
/// top-level directory it held.
pub(crate) fn unpack_archive(archive: &Path, into: &Path, key: Option<&DecryptionKey>) -> Result<PathBuf, String> {
    let file = std::fs::File::open(archive).map_err(|e| format!("cannot open: {e}"))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let encrypted = archive.extension().is_some_and(|e| e == "age");
    let source: Box<dyn Read> = if encrypted {
        let key = key.ok_or("the archive is age-encrypted and no decryption key was given")?;
        let identities = key.identities().map_err(|e| e.to_string())?;
        let decryptor = age::Decryptor::new_buffered(reader).map_err(|e| format!("not an age file: {e}"))?;
        let stream = decryptor
            .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| format!("cannot decrypt: {e}"))?;
        Box::new(stream)
    } else {
        Box::new(reader)
    };
    let gz = flate2::read::GzDecoder::new(source);
    let mut tar = tar::Archive::new(gz);
    tar.set_preserve_permissions(true);
    tar.unpack(into).map_err(|e| format!("cannot unpack: {e}"))?;
    // Drain what follows the tar end marker, so the gzip trailer (CRC, length) is checked.
    let mut rest = tar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| format!("corrupt or truncated: {e}"))?;
    let mut tops = std::fs::read_dir(into)
        .map_err(|e| format!("cannot list what was unpacked: {e}"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect::<Vec<_>>();
    if tops.len() != 1 || !tops[0].is_dir() {
        return Err(format!("expected one top-level directory, found {}", tops.len()));
    }
    Ok(tops.remove(0))
}
