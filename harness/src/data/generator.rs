//! A deterministic generator: the same seed gives byte-identical rows, on any machine.
//!
//! Users and posts come from independent ChaCha streams, and a post's author is computed from
//! the user's index alone ([`username_for`]), so posts can be generated without holding the
//! users in memory.

use chrono::{DateTime, NaiveDateTime};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Post, User, hash_password};

/// How much data to generate, and from which seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatasetSpec {
    /// The seed.
    pub seed: u64,
    /// Number of users (ids 1..=users).
    pub users: u32,
    /// Number of posts (ids 1..=posts); each needs at least one user.
    pub posts: u32,
}

/// 2024-01-01T00:00:00: the generated timestamps lie in the year after it.
const BASE_EPOCH: i64 = 1_704_067_200;
const YEAR_SECS: i64 = 365 * 24 * 3600;

const ADJECTIVES: [&str; 16] = [
    "amber", "brisk", "calm", "dusky", "eager", "fuzzy", "gentle", "hazy", "icy", "jolly", "keen",
    "lucid", "mellow", "nimble", "olive", "proud",
];
const NOUNS: [&str; 16] = [
    "otter", "falcon", "cedar", "harbor", "comet", "willow", "pebble", "lynx", "maple", "quartz",
    "raven", "summit", "tundra", "violet", "walrus", "yarrow",
];
const WORDS: [&str; 32] = [
    "cluster",
    "rebuild",
    "backup",
    "restore",
    "titanium",
    "gateway",
    "replica",
    "volume",
    "snapshot",
    "digest",
    "schema",
    "rollout",
    "service",
    "latency",
    "quorum",
    "ledger",
    "archive",
    "verify",
    "window",
    "primary",
    "standby",
    "index",
    "vacuum",
    "commit",
    "stream",
    "tenant",
    "namespace",
    "kernel",
    "socket",
    "metric",
    "canary",
    "drill",
];

/// SplitMix64: a fast, well-mixed hash of one u64, used to derive per-row values.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The username of user `index` (1-based) for `seed`. Unique per index.
pub fn username_for(seed: u64, index: u32) -> String {
    let h = mix(seed ^ mix(u64::from(index)));
    format!(
        "{}_{}{index}",
        ADJECTIVES[(h & 15) as usize],
        NOUNS[((h >> 4) & 15) as usize]
    )
}

/// The clear-text password of user `index` for `seed`, so load tests can log in.
pub fn password_for(seed: u64, index: u32) -> String {
    format!("pw-{:016x}", mix(seed.rotate_left(17) ^ u64::from(index)))
}

fn timestamp(secs_after_base: i64, micros: u32) -> NaiveDateTime {
    DateTime::from_timestamp(BASE_EPOCH + secs_after_base, micros * 1000)
        .expect("generated timestamps lie in 2024-2025")
        .naive_utc()
}

/// Bytes of database (`pg_database_size`: tables, TOAST and indexes) that one generated post
/// adds, with its share of a user at [`POSTS_PER_USER`]. Measured on PostgreSQL 15; the test
/// `a_sized_dataset_is_near_its_size` (harness/tests/it/data.rs) fails when the generator or
/// the schema moves a sized database more than 15 % off its size.
pub const DB_BYTES_PER_POST: u64 = 688;

/// `pg_database_size` of a Titanium database with empty tables (the catalog's share).
pub const EMPTY_DB_BYTES: u64 = 7_850_000;

/// Posts per user in a dataset sized by bytes ([`DatasetSpec::sized`]), as in the default run
/// (200 users, 2,000 posts).
pub const POSTS_PER_USER: u32 = 10;

/// The most posts a sized dataset may have (the CLI's `--posts` limit).
pub const MAX_POSTS: u32 = 10_000_000;

/// Why a size gives no dataset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Fewer bytes than an empty Titanium database and one user's posts.
    #[error("{bytes} bytes is smaller than the smallest dataset ({min} bytes)")]
    TooSmall {
        /// The size asked for.
        bytes: u64,
        /// The smallest size that makes a dataset.
        min: u64,
    },
    /// More posts than [`MAX_POSTS`].
    #[error("{bytes} bytes needs more than {MAX_POSTS} posts (at most {max} bytes)")]
    TooLarge {
        /// The size asked for.
        bytes: u64,
        /// The largest size.
        max: u64,
    },
}

impl DatasetSpec {
    /// A spec.
    pub fn new(seed: u64, users: u32, posts: u32) -> Self {
        Self { seed, users, posts }
    }

    /// A spec whose database is about `bytes` large: [`EMPTY_DB_BYTES`] plus
    /// [`DB_BYTES_PER_POST`] per post, one user per [`POSTS_PER_USER`] posts. What the
    /// database really weighs is measured after the load (the rehearsal's seed phase reports
    /// it).
    ///
    /// # Errors
    /// [`SizeError`] when `bytes` is below one user's posts or above [`MAX_POSTS`] posts.
    pub fn sized(seed: u64, bytes: u64) -> Result<Self, SizeError> {
        let min = EMPTY_DB_BYTES + DB_BYTES_PER_POST * u64::from(POSTS_PER_USER);
        let max = EMPTY_DB_BYTES + DB_BYTES_PER_POST * u64::from(MAX_POSTS);
        if bytes < min {
            return Err(SizeError::TooSmall { bytes, min });
        }
        if bytes > max {
            return Err(SizeError::TooLarge { bytes, max });
        }
        let posts = u32::try_from((bytes - EMPTY_DB_BYTES) / DB_BYTES_PER_POST)
            .map_err(|_| SizeError::TooLarge { bytes, max })?;
        Ok(Self::new(seed, posts.div_ceil(POSTS_PER_USER), posts))
    }

    /// The users, in id order.
    pub fn users(&self) -> impl Iterator<Item = User> + use<> {
        let seed = self.seed;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (1..=self.users).map(move |id| {
            let username = username_for(seed, id);
            let salt: [u8; 8] = rng.random();
            User {
                id: id as i32,
                email: format!("{username}@titanium.example"),
                password_hash: hash_password(&salt, &password_for(seed, id)),
                created_at: timestamp(
                    rng.random_range(0..YEAR_SECS),
                    rng.random_range(0..1_000_000),
                ),
                username,
            }
        })
    }

    /// The posts, in id order. Every author is one of [`DatasetSpec::users`]' usernames.
    ///
    /// # Panics
    /// When posts are asked for with zero users (a spec error, caught by `load_dataset`).
    pub fn posts(&self) -> impl Iterator<Item = Post> + use<> {
        let seed = self.seed;
        let users = self.users;
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ 0x706f_7374));
        let count = if users == 0 { 0 } else { self.posts };
        (1..=count).map(move |id| {
            let author = username_for(seed, rng.random_range(1..=users));
            let title_words = rng.random_range(3..9);
            let title = sentence(&mut rng, title_words);
            let paragraphs = rng.random_range(1..4);
            let content = (0..paragraphs)
                .map(|_| {
                    let n = rng.random_range(20..40);
                    sentence(&mut rng, n)
                })
                .collect::<Vec<_>>()
                .join("\n\n");
            let created = rng.random_range(0..YEAR_SECS);
            let updated = created + rng.random_range(0..30 * 24 * 3600);
            Post {
                id: id as i32,
                title,
                content,
                author,
                created_at: timestamp(created, rng.random_range(0..1_000_000)),
                updated_at: timestamp(updated, rng.random_range(0..1_000_000)),
            }
        })
    }

    /// A SHA-256 over every generated row, in a fixed text form. Equal seeds and sizes give
    /// equal digests; this is what "byte-identical" is checked against.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for u in self.users() {
            hasher.update(format!(
                "{}\t{}\t{}\t{}\t{}\n",
                u.id, u.username, u.email, u.password_hash, u.created_at
            ));
        }
        for p in self.posts() {
            hasher.update(format!(
                "{}\t{:?}\t{:?}\t{}\t{}\t{}\n",
                p.id, p.title, p.content, p.author, p.created_at, p.updated_at
            ));
        }
        hex::encode(hasher.finalize())
    }
}

fn sentence(rng: &mut ChaCha8Rng, words: usize) -> String {
    let mut out = String::with_capacity(words * 8);
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_gives_posts_and_users_within_bounds() {
        let gb = DatasetSpec::sized(1, 1_000_000_000).unwrap();
        assert_eq!(
            u64::from(gb.posts),
            (1_000_000_000 - EMPTY_DB_BYTES) / DB_BYTES_PER_POST
        );
        assert_eq!(gb.users, gb.posts.div_ceil(POSTS_PER_USER));
        let min = EMPTY_DB_BYTES + DB_BYTES_PER_POST * u64::from(POSTS_PER_USER);
        assert_eq!(DatasetSpec::sized(1, min).unwrap().users, 1);
        assert_eq!(
            DatasetSpec::sized(1, min - 1),
            Err(SizeError::TooSmall {
                bytes: min - 1,
                min
            })
        );
        let max = EMPTY_DB_BYTES + DB_BYTES_PER_POST * u64::from(MAX_POSTS);
        assert_eq!(DatasetSpec::sized(1, max).unwrap().posts, MAX_POSTS);
        assert!(matches!(
            DatasetSpec::sized(1, max + DB_BYTES_PER_POST),
            Err(SizeError::TooLarge { .. })
        ));
        assert!(matches!(
            DatasetSpec::sized(1, u64::MAX),
            Err(SizeError::TooLarge { .. })
        ));
    }

    #[test]
    fn usernames_are_unique_and_fit_the_column() {
        let names: std::collections::HashSet<_> =
            (1..=10_000).map(|i| username_for(7, i)).collect();
        assert_eq!(names.len(), 10_000);
        assert!(names.iter().all(|n| n.chars().count() <= 50));
    }

    #[test]
    fn same_seed_same_rows_other_seed_other_rows() {
        let a = DatasetSpec::new(42, 50, 200);
        assert_eq!(a.digest(), DatasetSpec::new(42, 50, 200).digest());
        assert_ne!(a.digest(), DatasetSpec::new(43, 50, 200).digest());
    }

    #[test]
    fn every_author_is_a_generated_user() {
        let spec = DatasetSpec::new(3, 20, 500);
        let users: std::collections::HashSet<_> = spec.users().map(|u| u.username).collect();
        assert!(spec.posts().all(|p| users.contains(&p.author)));
        assert!(spec.posts().all(|p| p.updated_at >= p.created_at));
    }

    #[test]
    fn no_users_means_no_posts() {
        assert_eq!(DatasetSpec::new(1, 0, 10).posts().count(), 0);
    }
}
