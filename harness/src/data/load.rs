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
pub async fn load_dataset(client: &tokio_postgres::Client, spec: &DatasetSpec) -> Result<LoadStats, LoadError> {
    if spec.users == 0 && spec.posts > 0 {
        return Err(LoadError::NoAuthors { posts: spec.posts });
    }
    load_rows(client, spec.users(), spec.posts()).await
}

/// Loads the given rows with binary COPY, then moves both id sequences past the largest id
/// and refreshes planner statistics.
///
/// # Errors
/// [`LoadError`] naming the table that failed.
pub async fn load_rows(
    client: &tokio_postgres::Client,
    users: impl IntoIterator<Item = User>,
    posts: impl IntoIterator<Item = Post>,
) -> Result<LoadStats, LoadError> {
    let started = Instant::now();
    let err = |table| move |source| LoadError::Postgres { table, source };

    let sink = client
        .copy_in("COPY users (id, username, email, password_hash, created_at) FROM STDIN (FORMAT binary)")
        .await
        .map_err(err("users"))?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::VARCHAR, Type::VARCHAR, Type::VARCHAR, Type::TIMESTAMP]);
    pin_mut!(writer);
    for u in users {
        let row: [&(dyn ToSql + Sync); 5] = [&u.id, &u.username, &u.email, &u.password_hash, &u.created_at];
        writer.as_mut().write(&row).await.map_err(err("users"))?;
    }
    let user_rows = writer.finish().await.map_err(err("users"))?;

    let sink = client
        .copy_in("COPY posts (id, title, content, author, created_at, updated_at) FROM STDIN (FORMAT binary)")
        .await
        .map_err(err("posts"))?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[Type::INT4, Type::VARCHAR, Type::TEXT, Type::VARCHAR, Type::TIMESTAMP, Type::TIMESTAMP],
    );
    pin_mut!(writer);
    for p in posts {
        let row: [&(dyn ToSql + Sync); 6] = [&p.id, &p.title, &p.content, &p.author, &p.created_at, &p.updated_at];
        writer.as_mut().write(&row).await.map_err(err("posts"))?;
    }
    let post_rows = writer.finish().await.map_err(err("posts"))?;

    for table in super::TABLES {
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
             COALESCE((SELECT max(id) FROM {table}), 1), (SELECT count(*) > 0 FROM {table})); ANALYZE {table}"
        );
        client.batch_execute(&sql).await.map_err(err(table))?;
    }
    Ok(LoadStats { users: user_rows, posts: post_rows, elapsed: started.elapsed() })
}
