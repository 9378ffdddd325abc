//! Backup engine: every artifact the runbook names, from one consistent snapshot.
