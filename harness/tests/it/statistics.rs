//! The restore runs ANALYZE after the load, and the statistics gate goes red, naming each
//! table, for a restore that skipped it (issue 20: the rebuilt database served its first
//! traffic on default planner estimates).

use anyhow::{Context, Result, ensure};
use harness::data::{DatasetSpec, load_dataset};
use harness::facts::{table_facts, table_statistics};
use harness::keep::ScratchDir;
use harness::pg::{ConnParams, LocalOptions, LocalPostgres, PostgresProvider, create_database};
use harness::restore::{DbArchive, DbRestoreInput, DbRestoreOptions, restore_database};
use harness::verify::{self, FindingKind, Verdict};

/// Restored tables get statistics only from an ANALYZE, never from autovacuum behind the
/// test's back: with autovacuum on, the red case could turn green by chance.
fn server_options() -> LocalOptions {
    LocalOptions {
        settings: vec![("autovacuum".to_owned(), "off".to_owned())],
        ..LocalOptions::titanium()
    }
}

async fn gate(params: &ConnParams, expected: &[harness::facts::TableFacts]) -> Result<Verdict> {
    let client = params.connect().await?;
    Ok(verify::statistics(
        expected,
        &table_statistics(&client).await?,
    ))
}

#[tokio::test]
async fn restore_analyzes_and_a_restore_without_analyze_fails_the_statistics_gate() -> Result<()> {
    let pg = LocalPostgres::start(server_options())
        .await
        .context("start postgres")?;
    let source = pg.params();
    let client = source.connect().await?;
    load_dataset(&client, &DatasetSpec::new(11, 50, 400)).await?;
    let expected = table_facts(&client).await?;
    ensure!(expected.len() == 2, "{expected:?}");
    let dir = ScratchDir::new("statistics-test-", "statistics test dump")?;
    let dump = dir.path().join("titanium.dump");
    let status = tokio::process::Command::new(pg.tools().tool("pg_dump")?)
        .arg("-Fc")
        .arg("-f")
        .arg(&dump)
        .envs(source.libpq_env())
        .status()
        .await?;
    ensure!(status.success(), "pg_dump: {status}");

    // The harness's restore: ANALYZE is its own timed step, and every table has statistics.
    create_database(&source, "restored").await?;
    let restored = source.with_dbname("restored");
    let input = DbRestoreInput {
        archive: DbArchive::Custom(dump.clone()),
        backup_id: "statistics-1".to_owned(),
        recorded_sha256: None,
    };
    let report =
        restore_database(pg.tools(), &restored, &input, &DbRestoreOptions::default()).await?;
    ensure!(
        report.restored && report.analyze_seconds > 0.0,
        "{report:?}"
    );
    let verdict = gate(&restored, &expected).await?;
    ensure!(verdict.passed, "{verdict}");

    // The defect: the same archive loaded by pg_restore alone, as the restore did before.
    create_database(&source, "unanalyzed").await?;
    let unanalyzed = source.with_dbname("unanalyzed");
    let status = tokio::process::Command::new(pg.tools().tool("pg_restore")?)
        .args(["--exit-on-error", "-d", "unanalyzed"])
        .arg(&dump)
        .envs(source.libpq_env())
        .status()
        .await?;
    ensure!(status.success(), "pg_restore: {status}");
    let verdict = gate(&unanalyzed, &expected).await?;
    ensure!(!verdict.passed, "{verdict}");
    let named: Vec<(&str, FindingKind)> = verdict
        .findings
        .iter()
        .map(|f| (f.subject.as_str(), f.kind))
        .collect();
    ensure!(
        named
            == [
                ("public.posts", FindingKind::Missing),
                ("public.users", FindingKind::Missing)
            ],
        "{verdict}"
    );
    ensure!(verdict.findings[0].detail.contains("ANALYZE"), "{verdict}");
    // ANALYZE, as the restore now runs it, turns it green.
    harness::restore::analyze(&unanalyzed).await?;
    let verdict = gate(&unanalyzed, &expected).await?;
    ensure!(verdict.passed, "{verdict}");
    Ok(())
}
