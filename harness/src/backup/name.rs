//! Backup names and the destination directory: a name is one path component, so a backup is
//! always written inside its destination, never beside or above it.

use std::path::Path;

use super::BackupError;

/// Longest accepted name: `<name>.tar.gz.age.partial` must still fit a 255-byte file name.
const MAX_NAME_BYTES: usize = 200;

/// Checks that `name` is usable as `<destination>/<name>`: not empty, not `.` or `..`, no `/`,
/// no NUL, at most 200 bytes. The CLI checks names with this too, so there is one rule.
///
/// # Errors
/// [`BackupError::InvalidName`] saying what is wrong.
pub fn check_name(name: &str) -> Result<(), BackupError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not names")
    } else if name.contains('/') {
        Some("it contains `/`: a name is a single path component inside the destination")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.len() > MAX_NAME_BYTES {
        Some("it is longer than 200 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BackupError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Makes sure `destination` is a directory: creates it (and missing parents) with mode 0700
/// when it does not exist; an existing directory is used as it is (its mode is the user's).
///
/// # Errors
/// [`BackupError::Io`] when it cannot be created, or exists and is not a directory.
pub(crate) fn prepare_destination(destination: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::metadata(destination) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(BackupError::Io {
            action: "use as the backup destination",
            path: destination.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "it exists and is not a directory",
            ),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(destination)
            .map_err(BackupError::io("create directory", destination)),
        Err(source) => Err(BackupError::Io {
            action: "inspect the backup destination",
            path: destination.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_path_components() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/abs",
            "a/b",
            "x\0y",
            &"n".repeat(201),
        ] {
            assert!(
                matches!(check_name(bad), Err(BackupError::InvalidName { .. })),
                "{bad:?} was accepted"
            );
        }
        for good in ["titanium-20260101-000000", "a", "..x", "x.."] {
            check_name(good).unwrap_or_else(|e| panic!("{good:?} refused: {e}"));
        }
    }

    /// The library refuses on its own, before it writes anything: not only the CLI checks.
    #[tokio::test]
    async fn backup_refuses_a_name_that_leaves_the_destination_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let absolute = dir.path().join("abs").display().to_string();
        for name in ["../escape", absolute.as_str(), "..", ""] {
            let mut options = crate::backup::BackupOptions::new(&out);
            options.name = Some(name.to_owned());
            options.terraform_dir = Some(dir.path().join("no-terraform-here"));
            let err = crate::backup::backup(&options).await.unwrap_err();
            assert!(
                matches!(err, BackupError::InvalidName { .. }),
                "{name:?}: {err}"
            );
        }
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["out"], "written beside the destination");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_destination_is_created_private_and_a_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b");
        prepare_destination(&dest).unwrap();
        for d in [dir.path().join("a"), dest.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(prepare_destination(&file).is_err());
    }
}
