//! Bulk loading with binary COPY: the fastest path into PostgreSQL, and exact for any text.

use std::time::{Duration, Instant};

use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::{DatasetSpec, Post, User};

/// What went wrong while loading.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Posts were asked for without any user to author them.
    #[error("cannot generate {posts} posts without users: every post needs an existing author")]
    NoAuthors {
        /// The number of posts asked for.
        posts: u32,
    },
    /// The database refused the rows or the statement.
    #[error("loading table {table} failed")]
    Postgres {
        /// The table.
        table: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// What a load did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Rows written to `users`.
    pub users: u64,
    /// Rows written to `posts`.
    pub posts: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
}

/// Generates `spec`'s dataset and loads it into the Titanium schema behind `client`.
///
/// # Errors
/// [`LoadError`] naming the table that failed.
pub async fn load_dataset(
    client: &tokio_postgres::Client,
    spec: &DatasetSpec,
) -> Result<LoadStats, LoadError> {
    if spec.users == 0 && spec.posts > 0 {
        return Err(LoadError::NoAuthors { posts: spec.posts });
    }
    load_rows(client, spec.users(), spec.posts()).await
}

/// Loads the given rows with binary COPY, then moves both id sequences past the largest id
/// and refreshes planner statistics.
///
/// Everything happens in one transaction. Rows are produced on a separate thread while COPY
/// streams, so generation and ingestion overlap. As a superuser the load runs with
/// `session_replication_role = replica` (transaction-local), which skips the per-row
/// foreign-key triggers the way `pg_restore --disable-triggers` does; the rows' referential
/// consistency is the generator's (and its tests') guarantee.
///
/// # Errors
/// [`LoadError`] naming the table that failed.
pub async fn load_rows<U, P>(
    client: &tokio_postgres::Client,
    users: U,
    posts: P,
) -> Result<LoadStats, LoadError>
where
    U: IntoIterator<Item = User> + Send + 'static,
    U::IntoIter: Send,
    P: IntoIterator<Item = Post> + Send + 'static,
    P::IntoIter: Send,
{
    let started = Instant::now();
    let err = |table| move |source| LoadError::Postgres { table, source };
    let superuser: String = client
        .query_one("SELECT current_setting('is_superuser')", &[])
        .await
        .map_err(err("users"))?
        .get(0);
    client.batch_execute("BEGIN").await.map_err(err("users"))?;
    let result = async {
        // Into empty tables, TRUNCATE first: the load then writes new files that need no WAL
        // under wal_level=minimal, and COPY FREEZE spares a later rewrite of every row.
        // Tables that hold rows are never truncated.
        client
            .batch_execute("LOCK TABLE users, posts IN ACCESS EXCLUSIVE MODE")
            .await
            .map_err(err("users"))?;
        let empty: bool = client
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM users) AND NOT EXISTS (SELECT 1 FROM posts)",
                &[],
            )
            .await
            .map_err(err("users"))?
            .get(0);
        if empty {
            client
                .batch_execute("TRUNCATE posts, users")
                .await
                .map_err(err("posts"))?;
        }
        if superuser == "on" {
            client
                .batch_execute("SET LOCAL session_replication_role = replica")
                .await
                .map_err(err("users"))?;
        }
        copy_tables(client, users, posts, empty).await
    }
    .await;
    let finish = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client.batch_execute(finish).await.map_err(err("posts"))?;
    let (user_rows, post_rows) = result?;
    for table in super::TABLES {
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
             COALESCE((SELECT max(id) FROM {table}), 1), (SELECT count(*) > 0 FROM {table})); ANALYZE {table}"
        );
        client.batch_execute(&sql).await.map_err(err(table))?;
    }
    Ok(LoadStats {
        users: user_rows,
        posts: post_rows,
        elapsed: started.elapsed(),
    })
}

/// Rows are handed from the generator thread in batches of this many.
const BATCH: usize = 2048;

/// Runs `rows` on a blocking thread, sending batches through a bounded channel.
fn produce<T: Send + 'static>(
    rows: impl IntoIterator<Item = T, IntoIter: Send> + Send + 'static,
) -> tokio::sync::mpsc::Receiver<Vec<T>> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let iter = rows.into_iter();
    tokio::task::spawn_blocking(move || {
        let mut iter = iter;
        loop {
            let batch: Vec<T> = iter.by_ref().take(BATCH).collect();
            if batch.is_empty() || tx.blocking_send(batch).is_err() {
                break;
            }
        }
    });
    rx
}

async fn copy_tables<U, P>(
    client: &tokio_postgres::Client,
    users: U,
    posts: P,
    freeze: bool,
) -> Result<(u64, u64), LoadError>
where
    U: IntoIterator<Item = User> + Send + 'static,
    U::IntoIter: Send,
    P: IntoIterator<Item = Post> + Send + 'static,
    P::IntoIter: Send,
{
    let err = |table| move |source| LoadError::Postgres { table, source };
    let options = if freeze {
        "FORMAT binary, FREEZE"
    } else {
        "FORMAT binary"
    };
    let mut users = produce(users);

    let sink = client
        .copy_in(&format!(
            "COPY users (id, username, email, password_hash, created_at) FROM STDIN ({options})"
        ))
        .await
        .map_err(err("users"))?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT4,
            Type::VARCHAR,
            Type::VARCHAR,
            Type::VARCHAR,
            Type::TIMESTAMP,
        ],
    );
    pin_mut!(writer);
    while let Some(batch) = users.recv().await {
        for u in batch {
            let row: [&(dyn ToSql + Sync); 5] = [
                &u.id,
                &u.username,
                &u.email,
                &u.password_hash,
                &u.created_at,
            ];
            writer.as_mut().write(&row).await.map_err(err("users"))?;
        }
    }
    let user_rows = writer.finish().await.map_err(err("users"))?;
    let mut posts = produce(posts);

    let sink = client
        .copy_in(&format!(
            "COPY posts (id, title, content, author, created_at, updated_at) FROM STDIN ({options})"
        ))
        .await
        .map_err(err("posts"))?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT4,
            Type::VARCHAR,
            Type::TEXT,
            Type::VARCHAR,
            Type::TIMESTAMP,
            Type::TIMESTAMP,
        ],
    );
    pin_mut!(writer);
    while let Some(batch) = posts.recv().await {
        for p in batch {
            let row: [&(dyn ToSql + Sync); 6] = [
                &p.id,
                &p.title,
                &p.content,
                &p.author,
                &p.created_at,
                &p.updated_at,
            ];
            writer.as_mut().write(&row).await.map_err(err("posts"))?;
        }
    }
    let post_rows = writer.finish().await.map_err(err("posts"))?;
    Ok((user_rows, post_rows))
}
