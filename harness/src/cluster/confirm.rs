//! The gate in front of destroying an existing cluster: the runbook's "type yes", made harder
//! to pass by accident. The user must pass `--allow-destroy` and then type the cluster's name
//! at a terminal prompt; without a terminal, destruction is refused.

use std::io::{BufRead, IsTerminal, Write};

use super::ClusterError;

/// Whether destructive steps may run against an existing cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DestroyGate {
    /// Refuse every destructive step (the default).
    #[default]
    Refuse,
    /// The user allowed it and typed this cluster name.
    Confirmed {
        /// The name that was typed (equal to the cluster's name).
        cluster: String,
    },
}

impl DestroyGate {
    /// Checks that destroying `cluster` was confirmed for exactly that cluster.
    ///
    /// # Errors
    /// [`ClusterError::DestroyRefused`] saying what is missing.
    pub fn check(&self, cluster: &str) -> Result<(), ClusterError> {
        match self {
            DestroyGate::Confirmed { cluster: confirmed } if confirmed == cluster => Ok(()),
            DestroyGate::Confirmed { cluster: confirmed } => Err(ClusterError::DestroyRefused {
                cluster: cluster.to_owned(),
                reason: format!("the confirmation was for `{confirmed}`"),
            }),
            DestroyGate::Refuse => Err(ClusterError::DestroyRefused {
                cluster: cluster.to_owned(),
                reason: "destructive steps against an existing cluster need --allow-destroy and the cluster's name typed at the prompt".to_owned(),
            }),
        }
    }

    /// Asks on the process's terminal (stdin and stderr). Refuses when stdin is not a terminal.
    ///
    /// # Errors
    /// [`ClusterError::DestroyRefused`] when not allowed, not interactive, or mistyped.
    pub fn ask(cluster: &str, allow_destroy: bool) -> Result<Self, ClusterError> {
        let interactive = std::io::stdin().is_terminal();
        confirm_destroy(
            cluster,
            allow_destroy,
            interactive,
            &mut std::io::stdin().lock(),
            &mut std::io::stderr(),
        )
    }
}

/// The confirmation dialogue, with its input and output given (testable without a terminal).
///
/// # Errors
/// [`ClusterError::DestroyRefused`] when `allow_destroy` is false, `interactive` is false, or
/// the typed line is not exactly `cluster`.
pub fn confirm_destroy(
    cluster: &str,
    allow_destroy: bool,
    interactive: bool,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> Result<DestroyGate, ClusterError> {
    let refuse = |reason: &str| ClusterError::DestroyRefused {
        cluster: cluster.to_owned(),
        reason: reason.to_owned(),
    };
    if !allow_destroy {
        return Err(refuse("--allow-destroy was not given"));
    }
    if !interactive {
        return Err(refuse(
            "no terminal to confirm on; destructive steps need a person to type the cluster's name",
        ));
    }
    let _ = write!(
        output,
        "This will DELETE data in cluster `{cluster}`.\nType the cluster's name to continue: "
    );
    let _ = output.flush();
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|_| refuse("could not read the confirmation"))?;
    if line.trim_end_matches(['\r', '\n']) == cluster {
        Ok(DestroyGate::Confirmed {
            cluster: cluster.to_owned(),
        })
    } else {
        Err(refuse("the typed name did not match"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(allow: bool, interactive: bool, typed: &str) -> Result<DestroyGate, ClusterError> {
        confirm_destroy(
            "solid-prod",
            allow,
            interactive,
            &mut typed.as_bytes(),
            &mut Vec::new(),
        )
    }

    #[test]
    fn only_the_exact_name_at_a_terminal_with_allow_destroy_passes() {
        assert_eq!(
            check(true, true, "solid-prod\n").unwrap(),
            DestroyGate::Confirmed {
                cluster: "solid-prod".into()
            }
        );
        for (allow, tty, typed, why) in [
            (false, true, "solid-prod\n", "--allow-destroy"),
            (true, false, "solid-prod\n", "no terminal"),
            (true, true, "yes\n", "did not match"),
            (true, true, "solid-prod \n", "did not match"),
            (true, true, "", "did not match"),
        ] {
            let err = check(allow, tty, typed).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_gate_confirmed_for_one_cluster_does_not_open_another() {
        let gate = DestroyGate::Confirmed {
            cluster: "a".into(),
        };
        assert!(gate.check("a").is_ok());
        assert!(gate.check("b").is_err());
        assert!(DestroyGate::Refuse.check("a").is_err());
    }
}
