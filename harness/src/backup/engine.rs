//! `backup()`: runs every configured part into `<name>.partial`, writes the manifest, renames
//! the directory when complete, archives it and makes the off-site copies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::Instrument;

use super::archive::{ArchiveFeed, ArchiveInfo, publish_archive};
use super::files::{create_private_dir, write_private};
use super::kubernetes::{KubeManifest, KubeSource, QuiesceRecord, backup_namespace, quiesce};
use super::manifest::{
    MANIFEST_JSON, MANIFEST_SHA256, MANIFEST_TXT, Manifest, StepTiming, write_manifest,
};
use super::offsite::{OffsiteCopy, copy_offsite};
use super::postgres::backup_postgres;
use super::redis::{RedisManifest, RedisSource, backup_redis};
use super::terraform::{TerraformManifest, backup_terraform};
use super::{BackupError, BackupOptions, PgSource};
use crate::pg::PgTools;

/// What a finished backup produced.
#[derive(Clone, Debug)]
pub struct BackupReport {
    /// The backup directory (complete: no `.partial`).
    pub dir: PathBuf,
    /// The archive, when one was made.
    pub archive: Option<ArchiveInfo>,
    /// Checked off-site copies, in the order of the options.
    pub offsite: Vec<OffsiteCopy>,
    /// The manifest as written.
    pub manifest: Manifest,
    /// Steps after the manifest was written (archive, off-site copies).
    pub after_manifest: Vec<StepTiming>,
    /// Wall-clock time of the whole backup.
    pub seconds: f64,
}

/// The default backup name, the runbook's `$BACKUP_DATE`: `<database or namespace>-YYYYmmdd-HHMMSS`.
fn default_name(options: &BackupOptions, now: chrono::DateTime<chrono::Utc>) -> String {
    let stem = options
        .postgres
        .as_ref()
        .map(|p| p.dbname().to_owned())
        .or_else(|| options.kubernetes.as_ref().map(|k| k.namespace.clone()))
        .unwrap_or_else(|| "backup".to_owned());
    format!(
        "{}-{}",
        super::postgres::sanitize(&stem),
        now.format("%Y%m%d-%H%M%S")
    )
}

/// Takes a backup as `options` say.
///
/// The data is written into `<destination>/<name>.partial/` (0700; files 0600). Only when
/// every part succeeded and the manifest is written is it renamed to `<destination>/<name>/`;
/// then the archive `<name>.tar.gz[.age]` is written (again through a `.partial` name) and
/// copied off-site. On failure the `.partial` directory stays, with `FAILED.txt` saying why.
///
/// # Errors
/// [`BackupError`] naming the part and what went wrong.
pub async fn backup(options: &BackupOptions) -> Result<BackupReport, BackupError> {
    if options.postgres.is_none()
        && options.redis.is_none()
        && options.kubernetes.is_none()
        && options.terraform_dir.is_none()
    {
        return Err(BackupError::NothingToBackUp);
    }
    if options.physical && options.postgres.is_none() {
        return Err(BackupError::PhysicalNeeds {
            why: "no PostgreSQL source",
        });
    }
    if options.physical && options.quiesce.is_none() {
        return Err(BackupError::PhysicalNeeds {
            why: "writers not quiesced: the copy could hold other data than the snapshot the \
                  manifest's counts and digests describe",
        });
    }
    if options.archive && options.compression_level > 9 {
        return Err(BackupError::CompressionLevel {
            level: options.compression_level,
        });
    }
    let origin = Instant::now();
    let started_at = chrono::Utc::now();
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| default_name(options, started_at));
    let (final_dir, partial) = prepare_directories(options, &name)?;
    let span = tracing::info_span!("backup", name = %name, dir = %partial.display());
    let archive_out = options.archive.then(|| {
        let suffix = if options.encryption.is_some() {
            ".tar.gz.age"
        } else {
            ".tar.gz"
        };
        options.destination.join(format!("{name}{suffix}"))
    });
    let mut after_manifest = Vec::new();
    let result = async {
        // The archive is written while the backup runs: each file goes in once it is complete.
        let feed = match &archive_out {
            Some(out) => Some(ArchiveFeed::start(
                partial.clone(),
                name.clone(),
                out,
                options.compression_level,
                options.encryption.as_ref(),
            )?),
            None => None,
        };
        let manifest = Box::pin(collect(
            options,
            &name,
            &partial,
            started_at,
            origin,
            feed.as_ref(),
        ))
        .await?;
        let archive = match feed {
            Some(feed) => {
                let started = Instant::now();
                let last = vec![
                    MANIFEST_TXT.to_owned(),
                    MANIFEST_JSON.to_owned(),
                    MANIFEST_SHA256.to_owned(),
                ];
                let info = feed.finish(last).await?;
                after_manifest.push(timing(
                    "archive (the rest after the manifest)",
                    started,
                    origin,
                ));
                Some(info)
            }
            None => None,
        };
        Ok::<_, BackupError>((manifest, archive))
    }
    .instrument(span.clone())
    .await;
    let (manifest, archive) = match result {
        Ok(done) => done,
        Err(err) => {
            leave_partial(&name, &partial, archive_out.as_deref(), &err);
            tracing::error!(parent: &span, error = %err, "backup failed; left as .partial");
            return Err(err);
        }
    };
    std::fs::rename(&partial, &final_dir).map_err(BackupError::io("rename", &partial))?;
    let archive = match (archive, &archive_out) {
        (Some(info), Some(out)) => Some(publish_archive(info, out)?),
        _ => None,
    };
    let mut offsite = Vec::new();
    if let Some(info) = &archive {
        for target in &options.offsite {
            let started = Instant::now();
            offsite.push(copy_offsite(info, target).instrument(span.clone()).await?);
            after_manifest.push(timing(
                &format!("off-site copy to {}", target.describe()),
                started,
                origin,
            ));
        }
    }
    tracing::info!(parent: &span, seconds = origin.elapsed().as_secs_f64(), "backup complete");
    Ok(BackupReport {
        dir: final_dir,
        archive,
        offsite,
        manifest,
        after_manifest,
        seconds: origin.elapsed().as_secs_f64(),
    })
}

/// Checks the name and the destination before anything is written (a name with `/` or `..`
/// would write outside it), refuses an existing backup of that name, and creates the private
/// `<name>.partial` directory. Returns the final and the partial directory.
fn prepare_directories(
    options: &BackupOptions,
    name: &str,
) -> Result<(PathBuf, PathBuf), BackupError> {
    super::name::check_name(name)?;
    super::name::prepare_destination(&options.destination)?;
    let final_dir = options.destination.join(name);
    if final_dir.exists() {
        return Err(BackupError::Exists { path: final_dir });
    }
    let partial = options.destination.join(format!("{name}.partial"));
    create_private_dir(&partial)?;
    Ok((final_dir, partial))
}

/// After a failure: `FAILED.txt` in the partial directory with the error and its causes, and
/// the incomplete archive removed (it is worth nothing; the `.partial` directory stays).
fn leave_partial(name: &str, partial: &Path, archive_out: Option<&Path>, err: &BackupError) {
    let mut text = format!("backup {name} failed: {err}\n");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!("  caused by: {cause}\n"));
        source = cause.source();
    }
    let _ = write_private(&partial.join("FAILED.txt"), text.as_bytes());
    if let Some(out) = archive_out {
        let _ = std::fs::remove_file(format!("{}.partial", out.display()));
    }
}

async fn collect(
    options: &BackupOptions,
    name: &str,
    dir: &Path,
    started_at: chrono::DateTime<chrono::Utc>,
    origin: Instant,
    feed: Option<&ArchiveFeed>,
) -> Result<Manifest, BackupError> {
    let mut steps = Vec::new();
    let mut tools = BTreeMap::new();
    tools.insert(
        "rebuild-rehearsal harness".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    );
    let quiesce_record = match quiesce_writers(options, dir, origin).await? {
        Some((record, step)) => {
            steps.push(step);
            Some(record)
        }
        None => None,
    };
    let local_tools = match (&options.local_tools, &options.postgres) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(_)) => {
            Some(PgTools::discover().map_err(BackupError::pg("find local pg_restore"))?)
        }
        (None, None) => None,
    };
    let postgres = async {
        match (&options.postgres, &local_tools) {
            (Some(source), Some(local)) => backup_postgres(
                source,
                local,
                options.plain_from,
                options.physical,
                dir,
                origin,
                feed,
            )
            .instrument(tracing::info_span!("postgres", source = %source.describe()))
            .await
            .map(Some),
            _ => Ok(None),
        }
    };
    // Each part on the heap: side by side their futures are too large for a 2 MiB stack in a
    // debug build (the test threads' default).
    let (pg, redis, kube, terraform) = tokio::try_join!(
        Box::pin(postgres),
        Box::pin(redis_part(options.redis.as_ref(), dir, origin, feed)),
        Box::pin(kubernetes_part(
            options.kubernetes.as_ref(),
            dir,
            origin,
            feed
        )),
        Box::pin(terraform_part(
            options.terraform_dir.as_deref(),
            dir,
            origin,
            feed
        )),
    )?;

    let mut manifest = Manifest {
        format: super::manifest::FORMAT,
        name: name.to_owned(),
        started_at: started_at.to_rfc3339(),
        finished_at: String::new(),
        cluster: options.cluster.clone(),
        namespace: options.kubernetes.as_ref().map(|k| k.namespace.clone()),
        postgres: None,
        redis: None,
        kubernetes: None,
        quiesce: quiesce_record,
        terraform: None,
        files: Vec::new(),
        tools,
        steps,
    };
    if let Some(pg) = pg {
        manifest.postgres = Some(pg.manifest);
        manifest.steps.extend(pg.steps);
        manifest.tools.extend(pg.tools);
    }
    if let Some((m, step)) = redis {
        manifest.redis = Some(m);
        manifest.steps.push(step);
        if let Ok(path) = which::which("redis-server") {
            manifest.tools.insert(
                "redis-server (scratch)".into(),
                super::files::tool_version("redis-server", &path, "--version").await,
            );
        }
    }
    if let Some((m, step)) = kube {
        manifest.kubernetes = Some(m);
        manifest.steps.push(step);
    }
    if let Some((m, version, step)) = terraform {
        manifest.terraform = Some(m);
        manifest.steps.push(step);
        manifest.tools.insert("terraform".into(), version);
    }
    manifest
        .steps
        .sort_by(|a, b| a.started_after_seconds.total_cmp(&b.started_after_seconds));
    manifest.finished_at = chrono::Utc::now().to_rfc3339();
    write_manifest(dir, &mut manifest, feed).await?;
    Ok(manifest)
}

/// Hands a finished file to the archive, which compresses it while the rest runs.
fn done(feed: Option<&ArchiveFeed>, rel: &str) {
    if let Some(feed) = feed {
        feed.add(rel);
    }
}

/// With quiesce options and a namespace: the writers scaled to zero, the moment writes
/// stopped read from the PostgreSQL server's clock, and the record written to
/// `kubernetes/quiesce.json`.
async fn quiesce_writers(
    options: &BackupOptions,
    dir: &Path,
    origin: Instant,
) -> Result<Option<(QuiesceRecord, StepTiming)>, BackupError> {
    let (Some(q), Some(k)) = (&options.quiesce, &options.kubernetes) else {
        return Ok(None);
    };
    let started = Instant::now();
    let mut record = quiesce(k, q)
        .instrument(tracing::info_span!("quiesce"))
        .await?;
    // The RPO runs from here to the snapshot: read this end from the server's clock too,
    // so both ends come from one clock.
    if let Some(source) = &options.postgres {
        record.writes_stopped_server_at = Some(server_clock(source).await?);
    }
    write_private(
        &super::files::ensure_parent(dir, "kubernetes/quiesce.json")?,
        &serde_json::to_vec_pretty(&record).map_err(|source| BackupError::Json {
            what: "quiesce record".into(),
            source,
        })?,
    )?;
    Ok(Some((record, timing("quiesce writers", started, origin))))
}

/// Redis: the RDB, its key count and digest.
async fn redis_part(
    source: Option<&RedisSource>,
    dir: &Path,
    origin: Instant,
    feed: Option<&ArchiveFeed>,
) -> Result<Option<(RedisManifest, StepTiming)>, BackupError> {
    let Some(source) = source else {
        return Ok(None);
    };
    let started = Instant::now();
    let m = backup_redis(source, dir)
        .instrument(tracing::info_span!("redis"))
        .await?;
    done(feed, &m.rdb);
    let step = timing("redis: RDB, key count and digest", started, origin);
    Ok(Some((m, step)))
}

/// Kubernetes: the namespace's resources, raw and cleaned.
async fn kubernetes_part(
    source: Option<&KubeSource>,
    dir: &Path,
    origin: Instant,
    feed: Option<&ArchiveFeed>,
) -> Result<Option<(KubeManifest, StepTiming)>, BackupError> {
    let Some(source) = source else {
        return Ok(None);
    };
    let started = Instant::now();
    let m = backup_namespace(source, dir)
        .instrument(tracing::info_span!("kubernetes"))
        .await?;
    for rel in [&m.raw, &m.clean_json, &m.clean_yaml] {
        done(feed, rel);
    }
    let step = timing("kubernetes: namespace resources", started, origin);
    Ok(Some((m, step)))
}

/// Terraform: state, resources and outputs, with the terraform version.
async fn terraform_part(
    config: Option<&Path>,
    dir: &Path,
    origin: Instant,
    feed: Option<&ArchiveFeed>,
) -> Result<Option<(TerraformManifest, String, StepTiming)>, BackupError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let started = Instant::now();
    let (m, version) = backup_terraform(config, dir)
        .instrument(tracing::info_span!("terraform"))
        .await?;
    for rel in [&m.state, &m.resources, &m.outputs] {
        done(feed, rel);
    }
    let step = timing("terraform: state, resources, outputs", started, origin);
    Ok(Some((m, version, step)))
}

/// The PostgreSQL server's clock now (`clock_timestamp()`, UTC, RFC 3339 with microseconds,
/// the format of the snapshot time).
async fn server_clock(source: &PgSource) -> Result<String, BackupError> {
    let session = source.session().await?;
    let row = session
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', \
                            'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .map_err(|source| {
            BackupError::Facts(crate::facts::TablesError::Query {
                what: "read the server clock when writes stopped".to_owned(),
                source,
            })
        })?;
    Ok(row.get(0))
}

fn timing(name: &str, started: Instant, origin: Instant) -> StepTiming {
    StepTiming {
        name: name.to_owned(),
        started_after_seconds: started.duration_since(origin).as_secs_f64(),
        seconds: started.elapsed().as_secs_f64(),
    }
}
