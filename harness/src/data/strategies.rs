//! proptest strategies for adversarial Titanium rows: the text and timestamps that break naive
//! dump, copy and compare code.
//!
//! Strings cover emoji, combining marks, right-to-left text, quotes, backslashes, tabs,
//! newlines, COPY's own escapes, empty strings and values at the column's maximum length
//! (counted in characters, as `VARCHAR(n)` does). PostgreSQL text cannot hold NUL, so none is
//! generated.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use proptest::prelude::*;

use super::{Post, User};

/// Characters that tend to break serialisation.
const NASTY: &[&str] = &[
    "'",
    "\"",
    "\\",
    "\\N",
    "\t",
    "\n",
    "\r\n",
    ",",
    ";",
    "--",
    "/*",
    "$$",
    "%",
    "_",
    "😀",
    "👩‍👩‍👧",
    "e\u{301}",
    "\u{202e}",
    "שלום",
    "مرحبا",
    "한국어",
    "\u{feff}",
    "\u{200b}",
    " ",
    "\\.",
    "NULL",
    "\u{7f}",
    "\u{1}",
];

/// A string of at most `max_chars` characters, mixing ordinary letters with [`NASTY`] pieces,
/// and sometimes exactly `max_chars` long.
pub fn adversarial_text(max_chars: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => "[a-zA-Z0-9 ]{1,8}",
        2 => proptest::sample::select(NASTY).prop_map(str::to_owned),
        1 => any::<char>().prop_filter("no NUL", |c| *c != '\0').prop_map(String::from),
    ];
    let mixed = proptest::collection::vec(piece, 0..12)
        .prop_map(move |pieces| truncate_chars(&pieces.concat(), max_chars));
    prop_oneof![
        1 => Just(String::new()),
        1 => proptest::sample::select(NASTY).prop_map(move |s| s.repeat(max_chars).chars().take(max_chars).collect()),
        6 => mixed,
    ]
}

/// Long text (content), up to about 64 KiB, with the same adversarial pieces.
pub fn long_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => adversarial_text(2_000),
        1 => (adversarial_text(50), 500usize..2_000).prop_map(|(s, n)| s.repeat(n.min(65_536 / s.len().max(1)))),
    ]
}

/// A timestamp from the edges PostgreSQL and clients disagree about: epochs, leap days, the
/// last microsecond of a day, early and far years.
pub fn timestamp() -> impl Strategy<Value = NaiveDateTime> {
    let fixed = [
        (1970, 1, 1, 0, 0, 0, 0),
        (2000, 1, 1, 0, 0, 0, 0),
        (1999, 12, 31, 23, 59, 59, 999_999),
        (2024, 2, 29, 12, 0, 0, 1),
        (1, 1, 1, 0, 0, 0, 0),
        (9999, 12, 31, 23, 59, 59, 999_999),
        (2038, 1, 19, 3, 14, 8, 0),
        (1900, 3, 1, 0, 0, 0, 500_000),
    ]
    .map(|(y, mo, d, h, mi, s, us)| {
        NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|date| NaiveTime::from_hms_micro_opt(h, mi, s, us).map(|t| date.and_time(t)))
            .expect("valid fixed timestamp")
    });
    let random = (
        1i32..=9999,
        1u32..=12,
        1u32..=28,
        0u32..86_400,
        0u32..1_000_000,
    )
        .prop_map(|(y, mo, d, secs, us)| {
            NaiveDate::from_ymd_opt(y, mo, d)
                .and_then(|date| {
                    NaiveTime::from_num_seconds_from_midnight_opt(secs, us * 1000)
                        .map(|t| date.and_time(t))
                })
                .expect("valid random timestamp")
        });
    prop_oneof![1 => proptest::sample::select(fixed.to_vec()), 2 => random]
}

/// Adversarial users: unique usernames and emails, ids 1..=n.
pub fn users(max: usize) -> impl Strategy<Value = Vec<User>> {
    proptest::collection::vec(
        (
            adversarial_text(50),
            adversarial_text(100),
            adversarial_text(255),
            timestamp(),
        ),
        1..=max,
    )
    .prop_map(|rows| {
        let mut seen_names = std::collections::HashSet::new();
        let mut seen_emails = std::collections::HashSet::new();
        rows.into_iter()
            .enumerate()
            .map(|(i, (username, email, password_hash, created_at))| {
                let id = i as i32 + 1;
                User {
                    id,
                    username: unique(username, id, 50, &mut seen_names),
                    email: unique(email, id, 100, &mut seen_emails),
                    password_hash,
                    created_at,
                }
            })
            .collect()
    })
}

/// Adversarial users with posts whose authors are among them.
pub fn dataset(
    max_users: usize,
    max_posts: usize,
) -> impl Strategy<Value = (Vec<User>, Vec<Post>)> {
    users(max_users).prop_flat_map(move |users| {
        let n = users.len();
        let posts = proptest::collection::vec(
            (
                adversarial_text(200),
                long_text(),
                0..n,
                timestamp(),
                timestamp(),
            ),
            0..=max_posts,
        );
        (Just(users), posts).prop_map(|(users, rows)| {
            let posts = rows
                .into_iter()
                .enumerate()
                .map(
                    |(i, (title, content, author, created_at, updated_at))| Post {
                        id: i as i32 + 1,
                        title,
                        content,
                        author: users[author].username.clone(),
                        created_at,
                        updated_at,
                    },
                )
                .collect();
            (users, posts)
        })
    })
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Makes `value` unique among `seen` by replacing its tail with the row id when needed,
/// keeping it within `max` characters.
fn unique(
    value: String,
    id: i32,
    max: usize,
    seen: &mut std::collections::HashSet<String>,
) -> String {
    let mut value = value;
    let mut n = 0;
    while seen.contains(&value) {
        let suffix = format!("#{id}.{n}");
        let keep = max.saturating_sub(suffix.chars().count());
        value = format!("{}{suffix}", truncate_chars(&value, keep));
        n += 1;
    }
    seen.insert(value.clone());
    value
}
