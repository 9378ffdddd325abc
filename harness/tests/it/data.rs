//! The dataset against real PostgreSQL: determinism, referential consistency, and adversarial
//! rows that must come back unchanged.

use harness::data::{DatasetSpec, Post, User, load_dataset, load_rows, strategies};
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider, create_database};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// The COPY text of a table in primary-key order: the exact bytes the server holds.
async fn copy_out(client: &tokio_postgres::Client, table: &str) -> Vec<u8> {
    use futures::TryStreamExt;
    let stream = client
        .copy_out(&format!(
            "COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT"
        ))
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

/// The size model of `DatasetSpec::sized` against the database PostgreSQL really holds: a
/// generator or schema change that moves it fails here, naming the figures to update.
#[tokio::test]
async fn a_sized_dataset_is_near_its_size() {
    let pg = LocalPostgres::start(LocalOptions::titanium())
        .await
        .unwrap();
    let mut measured = Vec::new();
    for (db, bytes) in [("sized_small", 12_000_000_u64), ("sized_large", 60_000_000)] {
        create_database(&pg.params(), db).await.unwrap();
        let params = pg.params().with_dbname(db);
        pg.tools()
            .psql_file(&params, &harness::data::schema_sql_path())
            .await
            .unwrap();
        let client = params.connect().await.unwrap();
        let spec = DatasetSpec::sized(11, bytes).unwrap();
        load_dataset(&client, &spec).await.unwrap();
        let size: i64 = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .unwrap()
            .get(0);
        let size = u64::try_from(size).unwrap();
        measured.push((spec.posts, size));
        println!(
            "{db}: asked {bytes} bytes, {} posts, got {size} bytes",
            spec.posts
        );
    }
    let (small, large) = (measured[0], measured[1]);
    let per_post = (large.1 - small.1) / u64::from(large.0 - small.0);
    let empty = small.1.saturating_sub(per_post * u64::from(small.0));
    for ((posts, size), asked) in measured.iter().zip([12_000_000_u64, 60_000_000]) {
        let off = *size as f64 / asked as f64 - 1.0;
        assert!(
            off.abs() <= 0.15,
            "{posts} posts for {asked} bytes weigh {size} bytes ({:+.0} %): set \
             DB_BYTES_PER_POST = {per_post} and EMPTY_DB_BYTES = {empty} (measured here)",
            off * 100.0
        );
    }
}

#[tokio::test]
async fn same_seed_loads_byte_identical_tables_and_authors_exist() {
    let pg = LocalPostgres::start(LocalOptions::titanium())
        .await
        .unwrap();
    let spec = DatasetSpec::new(2024, 300, 2_000);
    let mut dumps = Vec::new();
    for db in ["copy_a", "copy_b"] {
        create_database(&pg.params(), db).await.unwrap();
        let params = pg.params().with_dbname(db);
        pg.tools()
            .psql_file(&params, &harness::data::schema_sql_path())
            .await
            .unwrap();
        let client = params.connect().await.unwrap();
        let stats = load_dataset(&client, &spec).await.unwrap();
        assert_eq!((stats.users, stats.posts), (300, 2_000));
        dumps.push((
            copy_out(&client, "users").await,
            copy_out(&client, "posts").await,
        ));
        let orphans: i64 = client
            .query_one("SELECT count(*) FROM posts p WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.username = p.author)", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(orphans, 0);
        // Sequences continue after the loaded ids.
        let next: i32 = client.query_one("INSERT INTO users (username, email, password_hash) VALUES ('n', 'n@x', 'h') RETURNING id", &[]).await.unwrap().get(0);
        assert_eq!(next, 301);
    }
    assert!(!dumps[0].0.is_empty() && !dumps[0].1.is_empty());
    assert_eq!(
        dumps[0], dumps[1],
        "same seed must give byte-identical tables"
    );

    let other = DatasetSpec::new(2025, 300, 2_000);
    create_database(&pg.params(), "copy_c").await.unwrap();
    let params = pg.params().with_dbname("copy_c");
    pg.tools()
        .psql_file(&params, &harness::data::schema_sql_path())
        .await
        .unwrap();
    let client = params.connect().await.unwrap();
    load_dataset(&client, &other).await.unwrap();
    assert_ne!(
        copy_out(&client, "posts").await,
        dumps[0].1,
        "another seed must give other data"
    );
}

#[tokio::test]
async fn posts_without_users_are_refused_before_touching_the_database() {
    let pg = LocalPostgres::start(LocalOptions::titanium())
        .await
        .unwrap();
    let client = pg.params().connect().await.unwrap();
    let err = load_dataset(&client, &DatasetSpec::new(1, 0, 5))
        .await
        .expect_err("no authors");
    assert!(err.to_string().contains("without users"), "{err}");
}

async fn read_back(client: &tokio_postgres::Client) -> (Vec<User>, Vec<Post>) {
    let users = client
        .query(
            "SELECT id, username, email, password_hash, created_at FROM users ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| User {
            id: r.get(0),
            username: r.get(1),
            email: r.get(2),
            password_hash: r.get(3),
            created_at: r.get(4),
        })
        .collect();
    let posts = client
        .query(
            "SELECT id, title, content, author, created_at, updated_at FROM posts ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Post {
            id: r.get(0),
            title: r.get(1),
            content: r.get(2),
            author: r.get(3),
            created_at: r.get(4),
            updated_at: r.get(5),
        })
        .collect();
    (users, posts)
}

#[test]
fn adversarial_rows_come_back_unchanged() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = rt
        .block_on(LocalPostgres::start(LocalOptions::titanium()))
        .unwrap();
    let client = rt.block_on(pg.params().connect()).unwrap();
    let config = Config {
        cases: 24,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "proptest-regressions/it-data.txt",
            ),
        )),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(&strategies::dataset(8, 12), |(users, posts)| {
            rt.block_on(async {
                client
                    .batch_execute("TRUNCATE posts, users RESTART IDENTITY")
                    .await
                    .unwrap();
                load_rows(&client, users.clone(), posts.clone())
                    .await
                    .unwrap();
                let (got_users, got_posts) = read_back(&client).await;
                prop_assert_eq!(got_users, users);
                prop_assert_eq!(got_posts, posts);
                Ok(())
            })
        })
        .unwrap();
}

/// `rehearsal sim up`: the load generator may write before the seed. The seed must still land
/// in full (before, the seed ran only on an empty users table, so it then loaded nothing), and
/// rows from anyone but the load generator are never cleared.
#[tokio::test]
async fn seeding_a_new_database_lands_in_full_after_the_load_generator_wrote_first() {
    use harness::data::{SeedError, seed_new_database};
    let pg = LocalPostgres::start(LocalOptions::titanium())
        .await
        .unwrap();
    let client = pg.params().connect().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO users (username, email, password_hash) \
             VALUES ('loadgen-0a1b2c', 'loadgen-0a1b2c@loadgen.invalid', 'x'); \
             INSERT INTO posts (title, content, author) VALUES ('t', 'c', 'loadgen-0a1b2c');",
        )
        .await
        .unwrap();
    let spec = DatasetSpec::new(1, 50, 300);
    let stats = seed_new_database(&client, &spec).await.unwrap();
    assert_eq!((stats.users, stats.posts), (50, 300));
    let count = async |sql: &str| -> i64 { client.query_one(sql, &[]).await.unwrap().get(0) };
    assert_eq!(count("SELECT count(*) FROM users").await, 50);
    assert_eq!(count("SELECT count(*) FROM posts").await, 300);
    assert_eq!(
        count("SELECT count(*) FROM users WHERE username LIKE 'loadgen-%'").await,
        0
    );

    // Now it holds the seed: a second seed refuses and changes nothing.
    let refused = seed_new_database(&client, &spec).await.unwrap_err();
    assert!(
        matches!(refused, SeedError::NotNew { rows: 50 }),
        "{refused}"
    );
    assert_eq!(count("SELECT count(*) FROM posts").await, 300);
    pg.stop().await.unwrap();
}
