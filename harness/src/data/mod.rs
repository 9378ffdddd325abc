//! The Titanium dataset: its schema, a deterministic generator, a COPY loader and proptest
//! strategies for adversarial rows.

mod generator;
mod load;
mod seed;
pub mod strategies;

use std::path::PathBuf;

pub use generator::{
    DB_BYTES_PER_POST, DatasetSpec, EMPTY_DB_BYTES, MAX_POSTS, POSTS_PER_USER, SizeError,
    password_for, username_for,
};
pub use load::{LoadError, LoadStats, load_dataset, load_rows};
pub use seed::{LOAD_GENERATOR_PREFIX, SeedError, seed_new_database};

/// The Titanium schema init script, as the production StatefulSet runs it.
pub const SCHEMA_SQL: &str = include_str!("../../../fixtures/sql/001-titanium-schema.sql");

/// Path of the schema init script in this repository.
pub fn schema_sql_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/sql/001-titanium-schema.sql")
}

/// The tables the dataset fills, in load order (posts reference users).
pub const TABLES: [&str; 2] = ["users", "posts"];

/// A row of `users`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Primary key.
    pub id: i32,
    /// Unique, at most 50 characters.
    pub username: String,
    /// Unique, at most 100 characters.
    pub email: String,
    /// `sha256$<salt hex>$<hex(sha256(salt || password))>`.
    pub password_hash: String,
    /// Creation time (timestamp without time zone).
    pub created_at: chrono::NaiveDateTime,
}

/// A row of `posts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Post {
    /// Primary key.
    pub id: i32,
    /// At most 200 characters.
    pub title: String,
    /// Any length.
    pub content: String,
    /// An existing `users.username`.
    pub author: String,
    /// Creation time.
    pub created_at: chrono::NaiveDateTime,
    /// Last update time.
    pub updated_at: chrono::NaiveDateTime,
}

/// The password hash format the Titanium auth-service checks.
pub fn hash_password(salt: &[u8], password: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    format!(
        "sha256${}${}",
        hex::encode(salt),
        hex::encode(hasher.finalize())
    )
}
