//! `roundtrip`: the database half of the rehearsal over any [`PostgresProvider`]: load rows
//! into a source server, back it up from one snapshot, destroy the source, start a fresh
//! target, restore, and judge counts, digests, sequences and schema against the backup.
//! It runs the adversarial proptest datasets and the container provider's trial.

use std::path::Path;

use anyhow::Context;
use harness::backup::{self, BackupOptions, PgSource};
use harness::data::{Post, User, load_rows};
use harness::facts;
use harness::pg::PostgresProvider;
use harness::restore::{DbRestoreInput, DbRestoreOptions, restore_database};
use harness::verify::{self, Verdict};

/// The verdicts of one round trip.
#[derive(Debug)]
pub struct RoundTrip {
    /// Counts, digests, sequences and schema.
    pub verdicts: Vec<Verdict>,
    /// Rows per table in the backup.
    pub rows: Vec<(String, u64)>,
}

impl RoundTrip {
    /// Whether every gate passed.
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.passed)
    }
}

/// Runs the round trip with `rows` on servers made by `P` with `options()`; the backup goes
/// under `work_dir`.
///
/// # Errors
/// When a step cannot run (a failed gate is a verdict, not an error).
pub async fn run<P: PostgresProvider>(
    options: impl Fn() -> P::Options,
    users: Vec<User>,
    posts: Vec<Post>,
    work_dir: &Path,
) -> anyhow::Result<RoundTrip> {
    let source = P::start(options())
        .await
        .context("start the source server")?;
    let tools = harness::pg::PgTools::discover()?;
    let client = source.params().connect().await?;
    load_rows(&client, users, posts).await?;
    drop(client);
    std::fs::create_dir_all(work_dir).with_context(|| format!("create {}", work_dir.display()))?;
    harness::keep::set_private_dir(work_dir)?;
    let mut backup_options = BackupOptions::new(work_dir);
    backup_options.name = Some("roundtrip".into());
    backup_options.archive = false;
    backup_options.postgres = Some(PgSource::Direct {
        params: source.params(),
        tools: tools.clone(),
    });
    let report = backup::backup(&backup_options)
        .await
        .context("back up the source")?;
    source.stop().await.context("destroy the source")?;

    let pg = report
        .manifest
        .postgres
        .as_ref()
        .context("the backup has no PostgreSQL part")?;
    let input = DbRestoreInput::custom_of(&report.dir, &report.manifest)
        .context("the backup has no PostgreSQL part")?;
    let target = P::start(options())
        .await
        .context("start the target server")?;
    restore_database(
        &tools,
        &target.params(),
        &input,
        &DbRestoreOptions::default(),
    )
    .await
    .context("restore")?;
    let client = target.params().connect().await?;
    let tables = facts::table_facts_as(&client, pg.digest_version).await?;
    let sequences = facts::sequence_facts(&client).await?;
    let schema = facts::render_schema(&client).await?;
    let verdicts = vec![
        verify::row_counts(&pg.tables, &tables),
        verify::digests(&pg.tables, &tables),
        verify::sequences(&pg.sequences, &sequences),
        verify::schema(&pg.schema, &schema),
        verify::statistics(&pg.tables, &facts::table_statistics(&client).await?),
    ];
    drop(client);
    target.stop().await?;
    Ok(RoundTrip {
        verdicts,
        rows: pg.tables.iter().map(|t| (t.name.clone(), t.rows)).collect(),
    })
}
