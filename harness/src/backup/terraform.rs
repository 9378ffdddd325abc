//! The Terraform part of a backup: `state pull`, `state list` and `output -json`, run with
//! duct in the configured directory, as the runbook's "Terraform 상태 백업" does.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BackupError;
use super::files::{create_private_file, ensure_parent, tail};

/// What the manifest records of Terraform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerraformManifest {
    /// The configuration directory.
    pub directory: String,
    /// `terraform state pull`.
    pub state: String,
    /// `terraform state list`.
    pub resources: String,
    /// `terraform output -json`.
    pub outputs: String,
    /// Resources in the state.
    pub resource_count: u64,
    /// The state's serial.
    pub serial: Option<u64>,
}

/// The terraform binary: `$HARNESS_TERRAFORM`, else `terraform` on PATH.
pub(crate) fn terraform_binary() -> Result<PathBuf, BackupError> {
    if let Some(path) = std::env::var_os("HARNESS_TERRAFORM") {
        return Ok(PathBuf::from(path));
    }
    which::which("terraform").map_err(|_| BackupError::Spawn {
        tool: "terraform".to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "terraform not on PATH (or set HARNESS_TERRAFORM)",
        ),
    })
}

fn run_to(binary: &Path, dir: &Path, args: &[&str], out: &Path) -> Result<(), BackupError> {
    let file = create_private_file(out)?;
    let output = duct::cmd(binary, args)
        .dir(dir)
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .stdin_null()
        .stdout_file(file)
        .stderr_capture()
        .unchecked()
        .run()
        .map_err(|source| BackupError::Spawn {
            tool: "terraform".to_owned(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BackupError::Tool {
            tool: "terraform".to_owned(),
            what: format!("`terraform {}` in {}", args.join(" "), dir.display()),
            status: output.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&output.stderr), 12),
        })
    }
}

pub(crate) async fn backup_terraform(
    config_dir: &Path,
    dir: &Path,
) -> Result<(TerraformManifest, String), BackupError> {
    let binary = terraform_binary()?;
    let state = "terraform/terraform-state.json".to_owned();
    let resources = "terraform/terraform-resources.txt".to_owned();
    let outputs = "terraform/terraform-outputs.json".to_owned();
    let state_path = ensure_parent(dir, &state)?;
    let (resources_path, outputs_path) = (dir.join(&resources), dir.join(&outputs));
    let config = config_dir.to_path_buf();
    let version_dir = dir.join("terraform");
    tokio::task::spawn_blocking(
        move || -> Result<(TerraformManifest, String), BackupError> {
            run_to(&binary, &config, &["state", "pull"], &state_path)?;
            run_to(&binary, &config, &["state", "list"], &resources_path)?;
            run_to(&binary, &config, &["output", "-json"], &outputs_path)?;
            let resource_count = std::fs::read_to_string(&resources_path)
                .map_err(BackupError::io("read", &resources_path))?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count() as u64;
            let serial = std::fs::read(&state_path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|v| v.get("serial").and_then(serde_json::Value::as_u64));
            let version = duct::cmd(&binary, ["version"])
                .dir(&version_dir)
                .stderr_null()
                .unchecked()
                .read()
                .map(|s| s.lines().next().unwrap_or("").to_owned())
                .unwrap_or_else(|err| format!("unknown ({err})"));
            Ok((
                TerraformManifest {
                    directory: config.display().to_string(),
                    state,
                    resources,
                    outputs,
                    resource_count,
                    serial,
                },
                version,
            ))
        },
    )
    .await
    .expect("terraform task does not panic")
}
