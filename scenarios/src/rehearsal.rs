//! Every scenario that runs on its own, by name: one list, so that the command line, the
//! `full_rebuild` test's trials and the reports spell them the same way.

use std::fmt;

use harness::report::Report;

use crate::cronjob_backup;
use crate::full_rebuild::{self, Config, Scenario};
use crate::run::Observer;

/// A scenario `rehearsal run` runs: `full_rebuild` or one of its variants, or `cronjob_backup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rehearsal {
    /// `full_rebuild` or one of its variants.
    Rebuild(Scenario),
    /// `cronjob_backup`: the backup CronJob run on demand; no cluster is rebuilt.
    CronjobBackup,
}

impl Rehearsal {
    /// Every rehearsal, in the order `rehearsal run --help` lists them.
    pub const ALL: [Rehearsal; 8] = [
        Rehearsal::Rebuild(Scenario::FullRebuild),
        Rehearsal::Rebuild(Scenario::TableRestore),
        Rehearsal::Rebuild(Scenario::Rollback),
        Rehearsal::Rebuild(Scenario::SchemaDrift),
        Rehearsal::CronjobBackup,
        Rehearsal::Rebuild(Scenario::Pitr),
        Rehearsal::Rebuild(Scenario::SnapshotRestore),
        Rehearsal::Rebuild(Scenario::SnapshotUnderLoad),
    ];

    /// The name the command line and the reports use (`full_rebuild`, `cronjob_backup`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Rehearsal::Rebuild(scenario) => scenario.name(),
            Rehearsal::CronjobBackup => cronjob_backup::NAME,
        }
    }

    /// The rehearsal called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Runs it and returns its report; a failed step is recorded in the report, never
    /// returned as an error.
    ///
    /// The scenario's future is large (every phase's state): it lives on the heap, so that a
    /// caller polling it on a thread's default stack (the CLI's main thread, a debug build)
    /// does not overflow it.
    pub async fn run(self, config: &Config, observer: &dyn Observer) -> Report {
        match self {
            Rehearsal::Rebuild(scenario) => {
                Box::pin(full_rebuild::run_scenario(scenario, config, observer)).await
            }
            Rehearsal::CronjobBackup => Box::pin(cronjob_backup::run(config, observer)).await,
        }
    }
}

impl fmt::Display for Rehearsal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rehearsal_has_a_distinct_name_that_finds_it() {
        let names: Vec<&str> = Rehearsal::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            [
                "full_rebuild",
                "table_restore",
                "rollback",
                "schema_drift",
                "cronjob_backup",
                "pitr",
                "snapshot_restore",
                "snapshot_under_load"
            ]
        );
        for r in Rehearsal::ALL {
            assert_eq!(Rehearsal::from_name(r.name()), Some(r));
        }
        assert_eq!(Rehearsal::from_name("nope"), None);
        // Every variant of full_rebuild is a rehearsal of its own.
        for (_, scenario) in Scenario::ALL {
            assert!(Rehearsal::ALL.contains(&Rehearsal::Rebuild(scenario)));
        }
    }
}
