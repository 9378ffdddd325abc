//! Restore engine: ordered, idempotent restore of a backup into a rebuilt cluster.
