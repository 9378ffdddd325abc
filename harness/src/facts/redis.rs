//! What is observed of a Redis server: key count and a digest over every key (defined where
//! the backup computes it, `backup::dataset_facts`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What was observed of one Redis server (all its logical databases).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisFacts {
    /// Number of keys, all databases.
    pub key_count: u64,
    /// Digest over every key of every database: its type, value and absolute expiry time.
    pub digest: String,
    /// Optional per-key digests (`db3 session:abc` to hex), so findings can name the keys that
    /// differ. Empty when the observer did not collect them (the manifest does not keep them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, String>,
}
