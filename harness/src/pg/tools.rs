//! Finding the PostgreSQL binaries, and running psql the way the runbook does.

use std::path::{Path, PathBuf};

use super::{ConnParams, PgError};

/// Overrides where the server binaries are looked for.
pub const BIN_ENV: &str = "HARNESS_PG_BIN";

/// The directory holding one PostgreSQL installation's binaries, so that the server and every
/// client tool come from the same major version.
#[derive(Clone, Debug)]
pub struct PgTools {
    bin_dir: PathBuf,
}

impl PgTools {
    /// Finds the server binaries: `$HARNESS_PG_BIN`, then `pg_config --bindir`, then the
    /// newest `/usr/lib/postgresql/*/bin`.
    ///
    /// # Errors
    /// [`PgError::BinariesMissing`] naming every place searched and how to install them.
    pub fn discover() -> Result<Self, PgError> {
        Self::discover_in(
            std::env::var_os(BIN_ENV).map(PathBuf::from),
            "pg_config",
            Path::new("/usr/lib/postgresql"),
        )
    }

    /// [`PgTools::discover`] with its three places given: an explicit directory, the
    /// `pg_config` program, and the root holding `<major>/bin` directories.
    ///
    /// # Errors
    /// [`PgError::BinariesMissing`] naming every place searched.
    pub fn discover_in(
        explicit: Option<PathBuf>,
        pg_config: &str,
        lib_root: &Path,
    ) -> Result<Self, PgError> {
        let mut searched = Vec::new();
        if let Some(dir) = explicit {
            if has_server(&dir) {
                return Ok(Self { bin_dir: dir });
            }
            searched.push(format!("{BIN_ENV}={}", dir.display()));
        }
        if let Ok(out) = std::process::Command::new(pg_config)
            .arg("--bindir")
            .output()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && has_server(&dir) {
                return Ok(Self { bin_dir: dir });
            }
            searched.push(format!("pg_config --bindir ({})", dir.display()));
        } else {
            searched.push(format!("{pg_config} (not found)"));
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(lib_root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .filter(|(_, dir)| has_server(dir))
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return Ok(Self { bin_dir: dir });
        }
        searched.push(format!("{}/*/bin", lib_root.display()));
        Err(PgError::BinariesMissing {
            searched: searched.join(", "),
        })
    }

    /// The binaries' directory.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The path of `tool` (psql, pg_dump, pg_restore, pg_dumpall, pg_amcheck, ...): next to the
    /// server binaries, else on PATH.
    ///
    /// # Errors
    /// [`PgError::ToolMissing`] when it is in neither place.
    pub fn tool(&self, tool: &str) -> Result<PathBuf, PgError> {
        let candidate = self.bin_dir.join(tool);
        if candidate.is_file() {
            return Ok(candidate);
        }
        which::which(tool).map_err(|_| PgError::ToolMissing {
            tool: tool.to_owned(),
            bin_dir: self.bin_dir.clone(),
        })
    }

    /// The major version of these binaries, from `postgres --version`.
    ///
    /// # Errors
    /// Fails when the binary cannot be run or prints something unexpected.
    pub fn major_version(&self) -> Result<u32, PgError> {
        let postgres = self.bin_dir.join("postgres");
        let out = std::process::Command::new(&postgres)
            .arg("--version")
            .output()
            .map_err(|source| PgError::Io {
                action: "run",
                path: postgres.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .find_map(|word| word.split('.').next()?.parse::<u32>().ok())
            .ok_or_else(|| PgError::Tool {
                tool: "postgres".to_owned(),
                what: "--version".to_owned(),
                status: out.status.to_string(),
                stderr: text.trim().to_owned(),
            })
    }

    /// Runs an SQL file with psql (`ON_ERROR_STOP`, no psqlrc), as the official image runs its
    /// init scripts.
    ///
    /// # Errors
    /// [`PgError::Tool`] with psql's error output when any statement fails.
    pub async fn psql_file(&self, params: &ConnParams, file: &Path) -> Result<(), PgError> {
        let psql = self.tool("psql")?;
        let run = crate::process::ToolRun::new("psql", &psql, file.display().to_string())
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .args([file.display().to_string()])
            .envs(params.libpq_env());
        run.run().await.map_err(|err| match err {
            crate::process::ToolError::Spawn { source, .. } => PgError::Io {
                action: "run",
                path: psql.clone(),
                source,
            },
            crate::process::ToolError::Failed {
                tool,
                what,
                status,
                stderr,
            } => PgError::Tool {
                tool,
                what,
                status,
                stderr,
            },
            crate::process::ToolError::TimedOut { what, .. } => PgError::Tool {
                tool: "psql".to_owned(),
                what,
                status: "stopped".to_owned(),
                stderr: String::new(),
            },
        })
    }
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}
