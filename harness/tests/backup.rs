//! The backup engine against real things: a private PostgreSQL with a writer running, a real
//! redis-server, the real terraform binary, moto's S3 server; then `verify_backup` against each
//! kind of corruption.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use harness::backup::{
    BackupError, BackupOptions, DecryptionKey, EncryptionKey, OffsiteTarget, PgSource, PlainFrom,
    RedisSource, S3Target, VerifyOptions, VerifyReport, backup, restore_into, verify_backup,
};
use harness::data::{DatasetSpec, load_dataset};
use harness::facts::{DigestVersion, TableFacts, table_facts, table_facts_as};
use harness::keep::ScratchDir;
use harness::pg::{
    LocalOptions, LocalPostgres, PgError, PostgresProvider, Secret, create_database,
};

/// A password nobody would write by accident: if it shows up anywhere, it leaked.
const PASSWORD: &str = "Zq8-titanium-SECRET-4417-backup";
const REDIS_PASSWORD: &str = "Rd5-redis-SECRET-9921-backup";
const AGE_PASSPHRASE: &str = "Ag3-age-SECRET-passphrase-5150";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Everything any test logs, at every level, to check that no secret is in it.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The one rule ([`harness::testing::require`]): under CI a missing tool fails; elsewhere the
/// test prints why and skips. `why` says which part of the test needs it.
fn prerequisite(tool: &str, why: &str) -> Result<bool> {
    let found = harness::testing::require(tool).is_some();
    if !found {
        eprintln!("  ({tool} is needed for: {why})");
    }
    Ok(found)
}

async fn source_db(spec: DatasetSpec) -> Result<LocalPostgres> {
    let pg = LocalPostgres::start(LocalOptions {
        password: Some(Secret::new(PASSWORD)),
        ..LocalOptions::titanium()
    })
    .await
    .context("start source postgres")?;
    let client = pg.socket_params().connect().await?;
    load_dataset(&client, &spec).await?;
    Ok(pg)
}

fn pg_source(pg: &LocalPostgres) -> PgSource {
    PgSource::Direct {
        params: pg.params(),
        tools: pg.tools().clone(),
    }
}

fn options(dest: &Path, name: &str, pg: &LocalPostgres) -> BackupOptions {
    let mut o = BackupOptions::new(dest);
    o.name = Some(name.to_owned());
    o.cluster = Some("test".to_owned());
    o.postgres = Some(pg_source(pg));
    o.local_tools = Some(pg.tools().clone());
    o
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A real redis-server on loopback, password from a private config file (not argv).
struct Redis {
    child: std::process::Child,
    port: u16,
    _dir: ScratchDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_redis() -> Result<Redis> {
    let dir = ScratchDir::new("backup-test-redis-", "test redis")?;
    let port = free_port();
    let conf = dir.path().join("redis.conf");
    harness::keep::write_private(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsave \"\"\nappendonly no\nrequirepass {REDIS_PASSWORD}\n",
            dir.path().display()
        )
        .as_bytes(),
    )?;
    let child = std::process::Command::new("redis-server")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start redis-server")?;
    let redis = Redis {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut conn) = redis_conn(port).await
            && redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        {
            return Ok(redis);
        }
        ensure!(
            Instant::now() < deadline,
            "redis-server on port {port} did not answer within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn redis_conn(port: u16) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/"))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// Fills Redis with every value type; returns the number of keys.
async fn fill_redis(port: u16) -> Result<u64> {
    let mut conn = redis_conn(port).await?;
    for i in 0..50 {
        redis::cmd("SET")
            .arg(format!("session:{i}"))
            .arg(format!("user-{i}\x00\u{fffd}"))
            .query_async::<()>(&mut conn)
            .await?;
    }
    redis::cmd("RPUSH")
        .arg("queue")
        .arg(&["a", "b", "c"])
        .query_async::<()>(&mut conn)
        .await?;
    redis::cmd("SADD")
        .arg("tags")
        .arg(&["x", "y"])
        .query_async::<()>(&mut conn)
        .await?;
    redis::cmd("HSET")
        .arg("user:1")
        .arg(&["name", "amber", "role", "admin"])
        .query_async::<()>(&mut conn)
        .await?;
    redis::cmd("ZADD")
        .arg("board")
        .arg(&["1.5", "a", "2", "b"])
        .query_async::<()>(&mut conn)
        .await?;
    redis::cmd("SELECT")
        .arg(3)
        .query_async::<()>(&mut conn)
        .await?;
    redis::cmd("SET")
        .arg("other-db")
        .arg("1")
        .query_async::<()>(&mut conn)
        .await?;
    Ok(55)
}

/// Inserts users and posts until stopped; counts what it inserted.
struct Writer {
    stop: Arc<AtomicBool>,
    inserted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<()>>,
}

fn start_writer(pg: &LocalPostgres) -> Writer {
    let params = pg.params();
    let stop = Arc::new(AtomicBool::new(false));
    let inserted = Arc::new(AtomicU64::new(0));
    let (s, n) = (stop.clone(), inserted.clone());
    let task = tokio::spawn(async move {
        let client = params.connect().await?;
        let mut i = 0u64;
        while !s.load(Ordering::Relaxed) {
            i += 1;
            let name = format!("writer_{i}");
            client
                .execute(
                    "WITH u AS (INSERT INTO users (username, email, password_hash) VALUES ($1::text, $1::text || '@w.example', 'x') \
                     RETURNING username) INSERT INTO posts (title, content, author) SELECT 'during backup', 'tab\there', username FROM u",
                    &[&name],
                )
                .await?;
            n.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    Writer {
        stop,
        inserted,
        task,
    }
}

impl Writer {
    async fn wait_for(&self, rows: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.inserted.load(Ordering::Relaxed) < rows {
            ensure!(
                !self.task.is_finished(),
                "the writer stopped early (its error is returned by stop)"
            );
            ensure!(
                Instant::now() < deadline,
                "the writer did not insert {rows} rows in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await??;
        Ok(self.inserted.load(Ordering::Relaxed))
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&out[i])
                .expect("readable")
                .map(|e| e.expect("entry").path())
                .collect();
            children.sort();
            out.extend(children);
        }
        i += 1;
    }
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn assert_private(path: &Path) {
    for p in walk(path) {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{} has mode {:o}", p.display(), mode(&p));
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    for p in walk(from) {
        let rel = p.strip_prefix(from)?;
        let dest = to.join(rel);
        if p.is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else {
            std::fs::copy(&p, &dest)?;
        }
    }
    Ok(())
}

fn flip_byte(path: &Path, offset_fraction: f64) -> Result<()> {
    let mut bytes = std::fs::read(path)?;
    let at = ((bytes.len() as f64) * offset_fraction) as usize;
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// A scratch PostgreSQL for restores and `verify`.
async fn scratch_pg() -> Result<LocalPostgres> {
    LocalPostgres::start(LocalOptions::default())
        .await
        .context("start scratch postgres")
}

fn verify_options(scratch: &LocalPostgres) -> VerifyOptions {
    VerifyOptions {
        scratch: scratch.socket_params(),
        tools: scratch.tools().clone(),
        decryption: None,
    }
}

fn first(report: &VerifyReport) -> String {
    report
        .first_mismatch()
        .map(ToString::to_string)
        .unwrap_or_else(|| "<no mismatch>".to_owned())
}

fn secret_free(what: &str, text: &[u8]) {
    for secret in [PASSWORD, REDIS_PASSWORD, AGE_PASSPHRASE] {
        assert!(
            !text.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret {secret:?} appears in {what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_under_concurrent_writes_and_every_artifact_restores() -> Result<()> {
    let logs = logs();
    let pg = source_db(DatasetSpec::new(11, 300, 2_000)).await?;
    let have_redis = prerequisite("redis-server", "Redis backup")?;
    let have_terraform = prerequisite("terraform", "Terraform state backup")?;
    let redis = if have_redis {
        Some(start_redis().await?)
    } else {
        None
    };
    let redis_keys = match &redis {
        Some(r) => fill_redis(r.port).await?,
        None => 0,
    };
    let tf = ScratchDir::new("backup-test-tf-", "terraform configuration")?;
    if have_terraform {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/terraform/main.tf"),
            tf.path().join("main.tf"),
        )?;
        for args in [
            &["init", "-input=false"][..],
            &["apply", "-auto-approve", "-input=false"][..],
        ] {
            let out = duct::cmd("terraform", args)
                .dir(tf.path())
                .stdout_capture()
                .stderr_capture()
                .unchecked()
                .run()?;
            ensure!(
                out.status.success(),
                "terraform {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let dest = ScratchDir::new("backup-test-dest-", "backup destination")?;
    let offsite = ScratchDir::new("backup-test-offsite-", "off-site directory")?;
    let mut opts = options(dest.path(), "titanium-consistency", &pg);
    if let Some(r) = &redis {
        opts.redis = Some(RedisSource::Direct {
            host: "127.0.0.1".to_owned(),
            port: r.port,
            password: Some(Secret::new(REDIS_PASSWORD)),
        });
    }
    if have_terraform {
        opts.terraform_dir = Some(tf.path().to_path_buf());
    }
    opts.offsite = vec![OffsiteTarget::Directory(offsite.path().to_path_buf())];
    secret_free("the options' Debug output", format!("{opts:?}").as_bytes());

    // A writer inserts throughout the backup.
    let writer = start_writer(&pg);
    if let Err(err) = writer.wait_for(20).await {
        return Err(writer.stop().await.err().unwrap_or(err));
    }
    let report = backup(&opts).await.context("backup")?;
    let before_stop = writer.inserted.load(Ordering::Relaxed);
    let written = writer.stop().await?;
    ensure!(
        written > before_stop || written >= 20,
        "the writer wrote during the backup"
    );

    let manifest = &report.manifest;
    let pgm = manifest.postgres.as_ref().context("postgres part")?;
    let users = pgm
        .tables
        .iter()
        .find(|t| t.name == "users")
        .context("users facts")?;
    let posts = pgm
        .tables
        .iter()
        .find(|t| t.name == "posts")
        .context("posts facts")?;
    // The snapshot fell inside the writer's run: some of its rows are in, later ones are not.
    assert!(
        users.rows > 300,
        "the snapshot includes rows written before it ({})",
        users.rows
    );
    assert_eq!(
        users.rows - 300,
        posts.rows - 2_000,
        "each writer transaction adds one user and one post"
    );
    let live = pg.socket_params().connect().await?;
    let live_users: i64 = live
        .query_one("SELECT count(*) FROM users", &[])
        .await?
        .get(0);
    assert!(
        live_users as u64 > users.rows,
        "rows written after the snapshot are not in it ({live_users} live)"
    );

    // Every artifact is there, private, and listed with the right checksum.
    assert!(report.dir.ends_with("titanium-consistency"));
    assert!(!dest.path().join("titanium-consistency.partial").exists());
    for rel in [
        "postgres/titanium.dump",
        "postgres/titanium-full.sql",
        "postgres/titanium-schema.sql",
        "postgres/titanium-data.sql",
        "postgres/tables/public.users.sql",
        "postgres/tables/public.posts.sql",
        "postgres/globals.sql",
        "MANIFEST.json",
        "MANIFEST.json.sha256",
        "BACKUP_MANIFEST.txt",
    ] {
        assert!(report.dir.join(rel).is_file(), "{rel} is missing");
    }
    assert_private(&report.dir);
    let archive = report.archive.as_ref().context("archive")?;
    assert_eq!(mode(&archive.path), 0o600);
    assert_eq!(
        mode(Path::new(&format!("{}.sha256", archive.path.display()))),
        0o600
    );
    // The archive (gzip members compressed in parallel) reads with the system's tar, and holds
    // the directory with its modes.
    let listing = duct::cmd("tar", ["-tvzf"]).before_spawn({
        let p = archive.path.clone();
        move |cmd| {
            cmd.arg(&p);
            Ok(())
        }
    });
    let listing = listing.read()?;
    assert!(
        listing.contains("titanium-consistency/MANIFEST.json"),
        "{listing}"
    );
    assert!(
        listing.contains("-rw------- ") && listing.contains("drwx------ "),
        "{listing}"
    );
    assert_eq!(report.offsite.len(), 1);
    assert_eq!(report.offsite[0].sha256, archive.sha256);
    assert_eq!(mode(Path::new(&report.offsite[0].location)), 0o600);
    assert!(!manifest.steps.is_empty() && manifest.tools.contains_key("pg_dump"));
    let txt = std::fs::read_to_string(report.dir.join("BACKUP_MANIFEST.txt"))?;
    assert!(
        txt.contains(&pgm.snapshot_id) && txt.contains(&users.digest),
        "the human manifest names snapshot and digests"
    );

    // The custom dump restores to exactly the manifest's counts and digests.
    let target = scratch_pg().await?;
    let admin = target.socket_params();
    create_database(&admin, "from_custom").await?;
    let restored = restore_into(
        &report.dir.join(&pgm.custom_dump),
        &admin.with_dbname("from_custom"),
        target.tools(),
        pgm.digest_version,
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    assert_eq!(
        restored.tables, pgm.tables,
        "restored custom dump = manifest, exactly"
    );
    assert_eq!(restored.schema, pgm.schema, "same schema rendering");
    assert!(pgm.schema.contains("users") && pgm.schema.contains("posts"));

    // The plain SQL restores to the same facts; so do schema-only + data-only.
    let psql = |db: &'static str, files: Vec<PathBuf>| {
        let (admin, params) = (admin.clone(), admin.with_dbname(db));
        let tools = target.tools().clone();
        async move {
            create_database(&admin, db).await?;
            for f in files {
                tools.psql_file(&params, &f).await?;
            }
            let client = params.connect().await?;
            Ok::<_, anyhow::Error>(table_facts(&client).await?)
        }
    };
    assert_eq!(
        psql("from_plain", vec![report.dir.join(&pgm.plain)]).await?,
        pgm.tables,
        "plain SQL"
    );
    assert_eq!(
        psql(
            "from_split",
            vec![
                report.dir.join(&pgm.schema_only),
                report.dir.join(&pgm.data_only)
            ]
        )
        .await?,
        pgm.tables,
        "schema-only then data-only"
    );
    let users_only = psql(
        "from_table",
        vec![report.dir.join(&pgm.table_files["public.users"])],
    )
    .await?;
    assert_eq!(
        users_only,
        vec![users.clone()],
        "the users file holds exactly the users table"
    );
    let globals = std::fs::read_to_string(report.dir.join(&pgm.globals))?;
    assert!(
        globals.contains("CREATE ROLE postgres"),
        "globals hold the roles"
    );

    if redis.is_some() {
        let r = manifest.redis.as_ref().context("redis part")?;
        assert_eq!(r.keys, redis_keys);
        assert!(report.dir.join("redis/dump.rdb").is_file());
    }
    if have_terraform {
        let t = manifest.terraform.as_ref().context("terraform part")?;
        assert_eq!(t.resource_count, 5);
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(report.dir.join(&t.state))?)?;
        assert_eq!(
            state["resources"].as_array().map(Vec::len),
            Some(3),
            "state pull holds the three resource blocks"
        );
        let outputs: serde_json::Value =
            serde_json::from_slice(&std::fs::read(report.dir.join(&t.outputs))?)?;
        assert_eq!(outputs["cluster_name"]["value"], "solid-cloud-titanium");
    }

    // verify: the directory and the archive both pass (the negative control for the next test).
    let v = verify_backup(&report.dir, &verify_options(&target)).await?;
    assert!(v.passed, "verify of the directory: {}", first(&v));
    assert_eq!(v.tables_checked, 2);
    assert_eq!(v.redis_checked, redis.is_some());
    let v = verify_backup(&archive.path, &verify_options(&target)).await?;
    assert!(v.passed, "verify of the archive: {}", first(&v));

    // No secret in any backup file, the manifest, the report or the logs.
    for p in walk(&report.dir) {
        if p.is_file() {
            secret_free(&p.display().to_string(), &std::fs::read(&p)?);
        }
    }
    secret_free("the report", format!("{report:?}").as_bytes());
    secret_free("the logs", &logs.lock().expect("logs"));
    Ok(())
}

/// Two backups of `pg` into `dest`, one with the plain SQL dumped from the database and one
/// with it derived from the custom archive, each named after its way.
async fn backup_both_ways(
    dest: &Path,
    pg: &LocalPostgres,
) -> Result<Vec<(&'static str, harness::backup::BackupReport)>> {
    let mut reports = Vec::new();
    for (name, plain_from) in [
        ("from-database", PlainFrom::Database),
        ("from-archive", PlainFrom::Archive),
    ] {
        let mut opts = options(dest, name, pg);
        opts.plain_from = plain_from;
        reports.push((name, backup(&opts).await?));
    }
    Ok(reports)
}

/// A small backup (PostgreSQL only) for the corruption and error tests.
async fn small_backup(
    dest: &Path,
    name: &str,
) -> Result<(LocalPostgres, harness::backup::BackupReport)> {
    let pg = source_db(DatasetSpec::new(5, 40, 120)).await?;
    // The other way to make the plain files: from the custom archive, reading the database once.
    let mut opts = options(dest, name, &pg);
    opts.plain_from = PlainFrom::Archive;
    let report = backup(&opts).await?;
    let pgm = report.manifest.postgres.as_ref().context("postgres part")?;
    ensure!(
        pgm.derived_from
            .contains("pg_restore of postgres/titanium.dump"),
        "{}",
        pgm.derived_from
    );
    Ok((pg, report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_first_mismatch_of_each_corruption() -> Result<()> {
    let dest = ScratchDir::new("backup-test-verify-", "backup destination")?;
    let (_pg, report) = small_backup(dest.path(), "titanium-verify").await?;
    let scratch = scratch_pg().await?;
    let vo = verify_options(&scratch);
    let v = verify_backup(&report.dir, &vo).await?;
    assert!(v.passed, "the untouched backup passes: {}", first(&v));

    // One flipped byte in the custom dump.
    let work = ScratchDir::new("backup-test-corrupt-", "corrupted copies")?;
    let flipped = work.path().join("flipped");
    copy_dir(&report.dir, &flipped)?;
    flip_byte(&flipped.join("postgres/titanium.dump"), 0.5)?;
    let v = verify_backup(&flipped, &vo).await?;
    assert!(!v.passed);
    assert_eq!(
        v.findings[0].check,
        "file postgres/titanium.dump sha256",
        "{}",
        first(&v)
    );

    // An edited manifest: a row count changed.
    let edited = work.path().join("edited");
    copy_dir(&report.dir, &edited)?;
    let path = edited.join("MANIFEST.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let rows = m["postgres"]["tables"][1]["rows"]
        .as_u64()
        .context("users rows")?;
    ensure!(m["postgres"]["tables"][1]["name"] == "users");
    m["postgres"]["tables"][1]["rows"] = (rows + 1).into();
    let json = serde_json::to_vec_pretty(&m)?;
    std::fs::write(&path, &json)?;
    let v = verify_backup(&edited, &vo).await?;
    assert!(!v.passed);
    assert_eq!(
        v.findings[0].check,
        "MANIFEST.json sha256 (edited manifest)",
        "{}",
        first(&v)
    );
    // Edited with its checksum updated too: the restore still disagrees, and says where.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&json));
    std::fs::write(
        edited.join("MANIFEST.json.sha256"),
        format!("{digest}  MANIFEST.json\n"),
    )?;
    let v = verify_backup(&edited, &vo).await?;
    assert!(!v.passed);
    assert_eq!(
        v.findings[0].check,
        "table public.users rows",
        "{}",
        first(&v)
    );
    assert_eq!(v.findings[0].expected, (rows + 1).to_string());
    assert!(
        v.findings[0].found.starts_with(&format!("{rows} (")),
        "{}",
        first(&v)
    );

    // A truncated archive (no checksum beside it: the archive itself must give it away).
    let archive = report.archive.as_ref().context("archive")?;
    let truncated = work.path().join("truncated.tar.gz");
    let bytes = std::fs::read(&archive.path)?;
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    let v = verify_backup(&truncated, &vo).await?;
    assert!(!v.passed);
    assert!(v.findings[0].check.starts_with("archive "), "{}", first(&v));

    // One flipped byte in the archive, with and without its checksum file.
    let flipped_archive = work.path().join("flipped.tar.gz");
    std::fs::copy(&archive.path, &flipped_archive)?;
    flip_byte(&flipped_archive, 0.6)?;
    let v = verify_backup(&flipped_archive, &vo).await?;
    assert!(
        !v.passed,
        "a flipped byte inside the compressed stream is caught"
    );
    std::fs::copy(
        format!("{}.sha256", archive.path.display()),
        work.path().join("flipped.tar.gz.sha256"),
    )?;
    let v = verify_backup(&flipped_archive, &vo).await?;
    assert!(!v.passed);
    assert!(
        v.findings[0].check.ends_with("flipped.tar.gz sha256"),
        "{}",
        first(&v)
    );

    // A file added after the fact.
    let extra = work.path().join("extra");
    copy_dir(&report.dir, &extra)?;
    std::fs::write(extra.join("postgres/notes.txt"), "hello")?;
    let v = verify_backup(&extra, &vo).await?;
    assert_eq!(
        v.findings.first().map(|f| f.check.as_str()),
        Some("file postgres/notes.txt")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_archive_round_trips_and_refuses_a_wrong_key() -> Result<()> {
    let dest = ScratchDir::new("backup-test-age-", "backup destination")?;
    let pg = source_db(DatasetSpec::new(9, 30, 60)).await?;
    let pass_file = dest.path().join("passphrase");
    harness::keep::write_private(&pass_file, format!("{AGE_PASSPHRASE}\n").as_bytes())?;
    let mut opts = options(dest.path(), "titanium-age", &pg);
    opts.encryption = Some(EncryptionKey::PassphraseFile(pass_file.clone()));
    let report = backup(&opts).await?;
    let archive = report.archive.clone().context("archive")?;
    assert!(archive.encrypted && archive.path.to_string_lossy().ends_with(".tar.gz.age"));
    let head = std::fs::read(&archive.path)?;
    assert!(
        head.starts_with(b"age-encryption.org/v1"),
        "the archive is an age file"
    );
    secret_free("the encrypted archive", &head);

    let scratch = scratch_pg().await?;
    let mut vo = verify_options(&scratch);
    vo.decryption = Some(DecryptionKey::PassphraseFile(pass_file));
    let v = verify_backup(&archive.path, &vo).await?;
    assert!(v.passed, "decrypts and verifies: {}", first(&v));

    vo.decryption = Some(DecryptionKey::Passphrase(Secret::new("not the passphrase")));
    let v = verify_backup(&archive.path, &vo).await?;
    assert!(!v.passed);
    assert!(
        v.findings[0].found.contains("cannot decrypt"),
        "{}",
        first(&v)
    );
    vo.decryption = None;
    let v = verify_backup(&archive.path, &vo).await?;
    assert!(
        v.findings[0].found.contains("no decryption key"),
        "{}",
        first(&v)
    );

    // An X25519 recipient and its identity file.
    let identity = age::x25519::Identity::generate();
    let id_file = dest.path().join("identity.txt");
    {
        use age::secrecy::ExposeSecret;
        harness::keep::write_private(
            &id_file,
            format!("{}\n", identity.to_string().expose_secret()).as_bytes(),
        )?;
    }
    let mut opts = options(dest.path(), "titanium-age-x25519", &pg);
    opts.encryption = Some(EncryptionKey::Recipient(identity.to_public().to_string()));
    let report = backup(&opts).await?;
    vo.decryption = Some(DecryptionKey::IdentityFile(id_file));
    let v = verify_backup(&report.archive.context("archive")?.path, &vo).await?;
    assert!(v.passed, "x25519 round trip: {}", first(&v));

    // A passphrase variable that is not set is named, and nothing is mistaken for a backup.
    let mut opts = options(dest.path(), "titanium-age-env", &pg);
    opts.encryption = Some(EncryptionKey::PassphraseEnv(
        "RR_TEST_SURELY_UNSET_PASSPHRASE".to_owned(),
    ));
    let err = backup(&opts).await.expect_err("no passphrase");
    assert!(matches!(err, BackupError::SecretMissing { .. }), "{err}");
    assert!(err.to_string().contains("RR_TEST_SURELY_UNSET_PASSPHRASE"));
    assert!(!dest.path().join("titanium-age-env.tar.gz.age").exists());
    Ok(())
}

/// moto's S3 server on loopback, stopped on drop.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_moto() -> Result<Moto> {
    let port = free_port();
    let child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start moto_server")?;
    let moto = Moto { child, port };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .is_err()
    {
        ensure!(
            Instant::now() < deadline,
            "moto_server did not answer on port {port} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(moto)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsite_copy_to_s3_is_checked_by_reading_it_back() -> Result<()> {
    if !prerequisite(
        "moto_server",
        "S3 off-site copy; pip install 'moto[server]'",
    )? {
        return Ok(());
    }
    let moto = start_moto().await?;
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let s3 = S3Target {
        endpoint: endpoint.clone(),
        bucket: "titanium-backups".to_owned(),
        region: "us-east-1".to_owned(),
        prefix: "rehearsal/".to_owned(),
        access_key: "testing".to_owned(),
        secret_key: Secret::new("testing-secret"),
        path_style: true,
    };
    // Create the bucket.
    let bucket = rusty_s3::Bucket::new(
        endpoint.parse()?,
        rusty_s3::UrlStyle::Path,
        "titanium-backups",
        "us-east-1",
    )?;
    let creds = rusty_s3::Credentials::new("testing", "testing-secret");
    let create = bucket.create_bucket(&creds);
    let url = rusty_s3::S3Action::sign(&create, Duration::from_secs(60));
    let body = create.body();
    let resp = reqwest::Client::new()
        .put(url)
        .header(reqwest::header::CONTENT_LENGTH, body.len())
        .body(body)
        .send()
        .await?;
    ensure!(
        resp.status().is_success(),
        "create bucket: {}",
        resp.status()
    );

    let dest = ScratchDir::new("backup-test-s3-", "backup destination")?;
    let pg = source_db(DatasetSpec::new(3, 30, 90)).await?;
    let mut opts = options(dest.path(), "titanium-s3", &pg);
    opts.offsite = vec![OffsiteTarget::S3(s3.clone())];
    let report = backup(&opts).await?;
    let archive = report.archive.context("archive")?;
    assert_eq!(report.offsite.len(), 1);
    assert_eq!(
        report.offsite[0].location,
        "s3://titanium-backups/rehearsal/titanium-s3.tar.gz"
    );
    assert_eq!(report.offsite[0].sha256, archive.sha256);

    // Independently of the engine: the object's bytes are the archive's bytes.
    let get = bucket.get_object(Some(&creds), "rehearsal/titanium-s3.tar.gz");
    let body = reqwest::Client::new()
        .get(rusty_s3::S3Action::sign(&get, Duration::from_secs(60)))
        .send()
        .await?
        .bytes()
        .await?;
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)),
        archive.sha256
    );

    // A bucket that does not exist is a named error.
    let mut missing = s3;
    missing.bucket = "no-such-bucket".to_owned();
    let err = harness::backup::copy_offsite(&archive, &OffsiteTarget::S3(missing))
        .await
        .expect_err("no bucket");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
    secret_free("the error", err.to_string().as_bytes());
    drop(moto);
    Ok(())
}

/// The destination holds exactly `<name>.partial` with `FAILED.txt`, nothing else.
fn only_partial(dest: &Path, name: &str) -> Result<String> {
    let entries: Vec<String> = std::fs::read_dir(dest)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        entries,
        vec![format!("{name}.partial")],
        "only the .partial is left"
    );
    let failed = std::fs::read_to_string(dest.join(format!("{name}.partial/FAILED.txt")))?;
    secret_free("FAILED.txt", failed.as_bytes());
    Ok(failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_leave_only_a_partial_backup() -> Result<()> {
    let pg = source_db(DatasetSpec::new(1, 5, 5)).await?;

    // A gzip level gzip does not have: refused before anything is written.
    let dest = ScratchDir::new("backup-test-err-", "backup destination")?;
    let mut opts = options(dest.path(), "level", &pg);
    opts.archive = true;
    opts.compression_level = 10;
    let err = backup(&opts).await.expect_err("level 10");
    assert!(
        matches!(err, BackupError::CompressionLevel { level: 10 }),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read_dir(dest.path())?.count(),
        0,
        "nothing written"
    );

    // Unreachable server.
    let dest = ScratchDir::new("backup-test-err-", "backup destination")?;
    let mut opts = options(dest.path(), "unreachable", &pg);
    let mut params = pg.params();
    params.port = free_port();
    opts.postgres = Some(PgSource::Direct {
        params,
        tools: pg.tools().clone(),
    });
    let err = backup(&opts).await.expect_err("unreachable");
    assert!(
        matches!(
            &err,
            BackupError::Postgres {
                source: PgError::Connect { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let failed = only_partial(dest.path(), "unreachable")?;
    assert!(
        failed.contains("could not connect to PostgreSQL at 127.0.0.1"),
        "{failed}"
    );

    // Wrong password.
    let dest = ScratchDir::new("backup-test-err-", "backup destination")?;
    let mut opts = options(dest.path(), "wrong-password", &pg);
    let mut params = pg.params();
    params.password = Some(Secret::new("not-the-password"));
    opts.postgres = Some(PgSource::Direct {
        params,
        tools: pg.tools().clone(),
    });
    let err = backup(&opts).await.expect_err("wrong password");
    assert!(
        matches!(
            &err,
            BackupError::Postgres {
                source: PgError::AuthFailed { .. },
                ..
            }
        ),
        "{err:?}"
    );
    only_partial(dest.path(), "wrong-password")?;

    // Destination not writable (its parent is a regular file).
    let dest = ScratchDir::new("backup-test-err-", "backup destination")?;
    let file = dest.path().join("a-file");
    std::fs::File::create(&file)?.write_all(b"x")?;
    let opts = options(&file, "nowhere", &pg);
    let err = backup(&opts).await.expect_err("not writable");
    assert!(matches!(&err, BackupError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains("backup destination") && err.to_string().contains("a-file"),
        "{err}"
    );

    // A name already used is refused, and the existing backup is untouched.
    let dest = ScratchDir::new("backup-test-err-", "backup destination")?;
    let opts = options(dest.path(), "twice", &pg);
    let first_report = backup(&opts).await?;
    let err = backup(&opts).await.expect_err("exists");
    assert!(matches!(&err, BackupError::Exists { .. }), "{err:?}");
    let scratch = scratch_pg().await?;
    assert!(
        verify_backup(&first_report.dir, &verify_options(&scratch))
            .await?
            .passed
    );

    // A .partial is never taken for a backup.
    let partial = dest.path().join("unreachable.partial");
    std::fs::create_dir(&partial)?;
    copy_dir(&first_report.dir, &partial)?;
    std::fs::write(partial.join("FAILED.txt"), "interrupted")?;
    let v = verify_backup(&partial, &verify_options(&scratch)).await?;
    assert!(
        !v.passed && v.findings[0].check == "backup state",
        "{}",
        first(&v)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unordered_digest_survives_a_restore_in_another_physical_order() -> Result<()> {
    // A table without a primary key, restored elsewhere: same digest; one changed row: another.
    let pg = scratch_pg().await?;
    let admin = pg.socket_params();
    create_database(&admin, "a").await?;
    let a = admin.with_dbname("a").connect().await?;
    a.batch_execute(
        "CREATE TABLE audit (at timestamptz, who text, note text); \
         INSERT INTO audit SELECT timestamptz '2025-01-01 00:00+09' + g * interval '1 minute', 'u' || (g % 7), \
             E'line\\nbreak ' || g FROM generate_series(1, 500) g; \
         INSERT INTO audit SELECT * FROM audit WHERE who = 'u1'; \
         DELETE FROM audit WHERE who = 'u2';",
    )
    .await?;
    a.batch_execute("VACUUM audit").await?;
    let before = table_facts(&a).await?;
    assert!(before[0].ordered_by.is_empty());
    create_database(&admin, "b").await?;
    let b = admin.with_dbname("b").connect().await?;
    b.batch_execute(
        "SET TimeZone = 'America/New_York'; CREATE TABLE audit (at timestamptz, who text, note text);",
    )
    .await?;
    // Copy the rows over in reverse order.
    let rows = a
        .query(
            "SELECT at, who, note FROM audit ORDER BY at DESC, who DESC",
            &[],
        )
        .await?;
    for r in rows {
        let (at, who, note): (chrono::DateTime<chrono::Utc>, String, String) =
            (r.get(0), r.get(1), r.get(2));
        b.execute("INSERT INTO audit VALUES ($1, $2, $3)", &[&at, &who, &note])
            .await?;
    }
    assert_eq!(
        table_facts(&b).await?,
        before,
        "same rows, other order and session time zone"
    );
    b.execute(
        "UPDATE audit SET note = note || '!' WHERE ctid = (SELECT min(ctid) FROM audit)",
        &[],
    )
    .await?;
    let after = table_facts(&b).await?;
    assert_eq!(after[0].rows, before[0].rows);
    assert_ne!(
        after[0].digest, before[0].digest,
        "one changed row changes the digest"
    );
    Ok(())
}

/// An embedded simulated cluster named `name` in a scratch directory, and a client for it.
async fn simulated_cluster(
    prefix: &str,
    name: &str,
) -> Result<(ScratchDir, simcluster::SimCluster, kube::Client)> {
    let dir = ScratchDir::new(prefix, "simulated cluster")?;
    let sim = simcluster::SimCluster::start(simcluster::SimConfig::new(
        name,
        dir.path().join("state"),
        dir.path().join("kubeconfig"),
    ))
    .await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(sim.kubeconfig_path())?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    Ok((dir, sim, client))
}

/// The quiesce waits until no pod of a scaled-down Deployment exists, terminating ones
/// included: a pod that ignores SIGTERM keeps running (and could write) for its grace period
/// after `status.replicas` has dropped to zero, which is where the old quiesce stopped waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_waits_until_no_pod_is_left_terminating_ones_included() -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::api::{Api, ListParams, PostParams};

    // `_dir` outlives `sim`: bindings drop in reverse order.
    let (_dir, sim, client) = simulated_cluster("backup-test-quiesce-", "quiesce").await?;
    let ns = "quiesce";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    // A writer that ignores SIGTERM: it goes only when its 3 s grace period ends in SIGKILL.
    let writer: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stubborn-writer", "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "stubborn-writer"}},
                 "template": {"metadata": {"labels": {"app": "stubborn-writer"}},
                              "spec": {"terminationGracePeriodSeconds": 3,
                                       "containers": [{"name": "w", "image": "busybox",
                                         "command": ["sh", "-c",
                                           "trap '' TERM; while true; do sleep 0.2; done"]}]}}}
    }))?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments.create(&PostParams::default(), &writer).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selected = ListParams::default().labels("app=stubborn-writer");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = pods
            .list(&selected)
            .await?
            .items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        if running {
            break;
        }
        ensure!(Instant::now() < deadline, "the writer pod never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let source = harness::backup::KubeSource {
        client: client.clone(),
        namespace: ns.to_owned(),
    };
    let record =
        harness::backup::quiesce(&source, &harness::backup::QuiesceOptions::default()).await?;
    let left = pods.list(&selected).await?.items;
    ensure!(
        left.is_empty(),
        "quiesce returned while {} pod(s) of the writer still existed: {:?}",
        left.len(),
        left.iter()
            .map(|p| (
                p.metadata.name.clone(),
                p.metadata.deletion_timestamp.is_some()
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(record.replicas.get("stubborn-writer"), Some(&1));

    // A deadline shorter than the grace period names the deployment and the pods left.
    harness::backup::resume(&client, &record).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pods.list(&selected).await?.items.is_empty() {
        ensure!(Instant::now() < deadline, "the writer did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let short = harness::backup::QuiesceOptions {
        keep: vec![],
        timeout: Duration::from_millis(500),
    };
    let err = harness::backup::quiesce(&source, &short)
        .await
        .expect_err("a terminating pod outlives a 0.5 s deadline");
    let text = err.to_string();
    ensure!(
        text.contains("quiesce/stubborn-writer") && text.contains("terminating pods count"),
        "{text}"
    );
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_resources_through_discovery_on_the_simulated_cluster() -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::discovery::ApiResource;

    let (_dir, sim, client) = simulated_cluster("backup-test-sim-", "backup").await?;
    let ns = "titanium-prod";

    let create = |api_version: &str, kind: &str, plural: &str, body: serde_json::Value| {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let ar = ApiResource {
            group: group.to_owned(),
            version: version.to_owned(),
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
        };
        let client = client.clone();
        let kind = kind.to_owned();
        async move {
            let obj: DynamicObject = serde_json::from_value(body)?;
            let api: Api<DynamicObject> = if kind == "Namespace" {
                Api::all_with(client, &ar)
            } else {
                Api::namespaced_with(client, ns, &ar)
            };
            api.create(&PostParams::default(), &obj)
                .await
                .with_context(|| format!("create {kind}"))?;
            Ok::<_, anyhow::Error>(())
        }
    };
    use serde_json::json;
    create(
        "v1",
        "Namespace",
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .await?;
    create(
        "v1",
        "ConfigMap",
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "app-config", "namespace": ns}, "data": {"LOG_LEVEL": "info"}}),
    )
    .await?;
    create("v1", "Secret", "secrets", json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "postgresql-secret", "namespace": ns}, "data": {"password": "c2VjcmV0"}})).await?;
    create(
        "v1",
        "Service",
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "postgresql-service", "namespace": ns},
        "spec": {"selector": {"app": "postgresql"}, "ports": [{"port": 5432}]}}),
    )
    .await?;
    create("apps/v1", "Deployment", "deployments", json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "prod-user-service-deployment", "namespace": ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "user-service"}},
                 "template": {"metadata": {"labels": {"app": "user-service"}},
                              "spec": {"containers": [{"name": "app", "image": "titanium/user-service:test"}]}}}})).await?;

    let dest = ScratchDir::new("backup-test-sim-dest-", "backup destination")?;
    let mut opts = BackupOptions::new(dest.path());
    opts.name = Some("sim-namespace".to_owned());
    opts.kubernetes = Some(harness::backup::KubeSource {
        client: client.clone(),
        namespace: ns.to_owned(),
    });
    opts.quiesce = Some(harness::backup::QuiesceOptions::default());
    let report = backup(&opts).await?;
    let k = report
        .manifest
        .kubernetes
        .as_ref()
        .context("kubernetes part")?;
    assert_private(&report.dir);

    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(report.dir.join(&k.raw))?)?;
    let clean: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.dir.join(&k.clean_json))?)?;
    let names = |list: &serde_json::Value| -> Vec<String> {
        list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|o| {
                        format!(
                            "{}/{}",
                            o["kind"].as_str().unwrap_or(""),
                            o["metadata"]["name"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let raw_names = names(&raw);
    for want in [
        "ConfigMap/app-config",
        "Secret/postgresql-secret",
        "Service/postgresql-service",
        "Deployment/prod-user-service-deployment",
    ] {
        assert!(
            raw_names.contains(&want.to_owned()),
            "{want} in the raw dump: {raw_names:?}"
        );
        assert!(
            names(&clean).contains(&want.to_owned()),
            "{want} in the cleaned dump"
        );
    }
    for obj in clean["items"].as_array().context("items")? {
        for field in [
            "uid",
            "resourceVersion",
            "managedFields",
            "creationTimestamp",
            "generation",
        ] {
            assert!(
                obj["metadata"].get(field).is_none(),
                "{field} left in {}",
                obj["metadata"]["name"]
            );
        }
        assert!(obj.get("status").is_none());
        if obj["kind"] == "Service" {
            assert!(
                obj["spec"].get("clusterIP").is_none() && obj["spec"].get("clusterIPs").is_none()
            );
        }
    }
    let yaml = std::fs::read_to_string(report.dir.join(&k.clean_yaml))?;
    assert!(yaml.contains("name: prod-user-service-deployment"));

    // Quiesce: recorded, applied, and reversible.
    let q = report.manifest.quiesce.as_ref().context("quiesce record")?;
    assert_eq!(q.replicas.get("prod-user-service-deployment"), Some(&2));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    assert_eq!(
        deployments
            .get("prod-user-service-deployment")
            .await?
            .spec
            .replicas,
        Some(0)
    );
    harness::backup::resume(&client, q).await?;
    assert_eq!(
        deployments
            .get("prod-user-service-deployment")
            .await?
            .spec
            .replicas,
        Some(2)
    );

    // A missing pod is named.
    let pod = harness::backup::PodRef {
        client,
        namespace: ns.to_owned(),
        pod: "postgresql-0".to_owned(),
        container: None,
    };
    let mut opts = BackupOptions::new(dest.path());
    opts.name = Some("no-pod".to_owned());
    opts.redis = Some(RedisSource::Kube {
        pod,
        port: 6379,
        password_env: None,
    });
    let err = backup(&opts).await.expect_err("no such pod");
    assert!(
        err.to_string()
            .contains("pod titanium-prod/postgresql-0 not found"),
        "{err}"
    );
    sim.shutdown().await?;
    Ok(())
}

const TITANIUM_ON_SIM: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: postgresql-secret, namespace: titanium-prod}
stringData: {POSTGRES_PASSWORD: Zq8-titanium-SECRET-4417-backup}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: postgresql, namespace: titanium-prod}
spec:
  serviceName: postgresql-service
  replicas: 1
  selector: {matchLabels: {app: postgresql}}
  template:
    metadata: {labels: {app: postgresql}}
    spec:
      containers:
        - name: postgresql
          image: postgres:15-alpine
          ports: [{name: postgresql, containerPort: 5432}]
          env:
            - {name: POSTGRES_DB, value: titanium}
            - {name: POSTGRES_USER, value: postgres}
            - name: POSTGRES_PASSWORD
              valueFrom: {secretKeyRef: {name: postgresql-secret, key: POSTGRES_PASSWORD}}
            - {name: PGDATA, value: /var/lib/postgresql/data/pgdata}
          volumeMounts:
            - {name: data, mountPath: /var/lib/postgresql/data}
            - {name: init-script, mountPath: /docker-entrypoint-initdb.d, readOnly: true}
          readinessProbe:
            exec: {command: ["pg_isready", "-U", "postgres", "-d", "titanium", "-h", "127.0.0.1"]}
            periodSeconds: 1
      volumes:
        - name: init-script
          configMap: {name: postgresql-init-script}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: local-path
        resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: redis, namespace: titanium-prod, labels: {app: redis}}
spec:
  containers:
    - name: redis
      image: redis:7-alpine
      ports: [{containerPort: 6379}]
"#;

/// kubectl against the simulated cluster, stdin optional; fails with its stderr.
fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = vec!["--kubeconfig".to_owned(), kubeconfig.display().to_string()];
    cmd.extend(args.iter().map(|a| (*a).to_owned()));
    let mut expr = duct::cmd("kubectl", cmd)
        .stdout_capture()
        .stderr_capture()
        .unchecked();
    if let Some(input) = stdin {
        expr = expr.stdin_bytes(input.as_bytes().to_vec());
    }
    let out = expr.run()?;
    ensure!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_kubernetes_exec_and_port_forward_on_the_simulated_cluster() -> Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::Api;

    if !prerequisite("kubectl", "applying manifests to the simulated cluster")? {
        return Ok(());
    }
    // Traversable, so the PostgreSQL account can reach its data directory.
    let dir = ScratchDir::new("backup-test-kube-", "simulated cluster")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let kubeconfig = dir.path().join("kubeconfig");
    let sim = simcluster::SimCluster::start(simcluster::SimConfig::new(
        "backup-kube",
        dir.path().join("state"),
        &kubeconfig,
    ))
    .await?;
    let ns = "titanium-prod";
    kubectl(&kubeconfig, &["create", "namespace", ns], None)?;
    let schema = harness::data::schema_sql_path();
    kubectl(
        &kubeconfig,
        &[
            "create",
            "configmap",
            "postgresql-init-script",
            "-n",
            ns,
            &format!("--from-file={}", schema.display()),
        ],
        None,
    )?;
    kubectl(&kubeconfig, &["apply", "-f", "-"], Some(TITANIUM_ON_SIM))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ready = kubectl(
            &kubeconfig,
            &[
                "get",
                "pods",
                "-n",
                ns,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.phase}/{.status.conditions[?(@.type==\"Ready\")].status} {end}",
            ],
            None,
        )?;
        if ready.contains("postgresql-0=Running/True") && ready.contains("redis=Running") {
            break;
        }
        if Instant::now() > deadline {
            let state = kubectl(
                &kubeconfig,
                &[
                    "get",
                    "statefulsets,pods,pvc,events",
                    "-n",
                    ns,
                    "-o",
                    "wide",
                ],
                None,
            )?;
            bail!("pods not ready in 90 s: {ready}\n{state}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    // Load the dataset through a port-forward, as a client outside the cluster would.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut pf = pods.portforward("postgresql-0", &[5432]).await?;
    let stream = pf.take_stream(5432).context("forwarded stream")?;
    let mut config = tokio_postgres::Config::new();
    config
        .user("postgres")
        .dbname("titanium")
        .password(PASSWORD);
    let (loader, conn) = config.connect_raw(stream, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    load_dataset(&loader, &DatasetSpec::new(21, 120, 600)).await?;
    drop(loader);
    let _ = conn.await;
    drop(pf);
    let mut mset = vec![
        "exec",
        "-n",
        ns,
        "redis",
        "--",
        "redis-cli",
        "-h",
        "127.0.0.1",
        "MSET",
    ];
    let pairs: Vec<String> = (0..20)
        .flat_map(|i| [format!("k{i}"), i.to_string()])
        .collect();
    mset.extend(pairs.iter().map(String::as_str));
    kubectl(&kubeconfig, &mset, None)?;

    let pod = |name: &str| harness::backup::PodRef {
        client: client.clone(),
        namespace: ns.to_owned(),
        pod: name.to_owned(),
        container: None,
    };
    let dest = ScratchDir::new("backup-test-kube-dest-", "backup destination")?;
    let mut opts = BackupOptions::new(dest.path());
    opts.name = Some("through-kube".to_owned());
    opts.cluster = Some("sim".to_owned());
    opts.postgres = Some(PgSource::Kube(harness::backup::KubePostgres {
        pod: pod("postgresql-0"),
        port: 5432,
        user: "postgres".to_owned(),
        dbname: "titanium".to_owned(),
        password: Some(Secret::new(PASSWORD)),
        password_env: Some("POSTGRES_PASSWORD".to_owned()),
    }));
    opts.redis = Some(RedisSource::Kube {
        pod: pod("redis"),
        port: 6379,
        password_env: None,
    });
    opts.kubernetes = Some(harness::backup::KubeSource {
        client: client.clone(),
        namespace: ns.to_owned(),
    });
    let report = backup(&opts).await.context("backup through kubernetes")?;
    let pgm = report.manifest.postgres.as_ref().context("postgres part")?;
    let rows: Vec<(String, u64)> = pgm
        .tables
        .iter()
        .map(|t| (t.name.clone(), t.rows))
        .collect();
    assert_eq!(rows, [("posts".to_owned(), 600), ("users".to_owned(), 120)]);
    assert!(pgm.source.starts_with("pod titanium-prod/postgresql-0"));
    assert_eq!(report.manifest.redis.as_ref().map(|r| r.keys), Some(20));
    assert_private(&report.dir);
    for p in walk(&report.dir) {
        if p.is_file()
            && !p.ends_with("resources-raw.json")
            && !p.ends_with("resources-clean.json")
            && !p.ends_with("resources-clean.yaml")
        {
            // The Secret is backed up on purpose (protected by 0600 and optional encryption);
            // nothing else may hold the password.
            secret_free(&p.display().to_string(), &std::fs::read(&p)?);
        }
    }
    let scratch = scratch_pg().await?;
    let v = verify_backup(&report.dir, &verify_options(&scratch)).await?;
    assert!(v.passed, "verify: {}", first(&v));
    assert_eq!((v.tables_checked, v.redis_checked), (2, true));
    assert!(!v.physical_checked, "no physical copy was asked for");

    // The physical copy (runbook 1.2B done consistently) needs quiesced writers, checked
    // before anything is written.
    opts.redis = None;
    opts.physical = true;
    opts.name = Some("physical-unquiesced".to_owned());
    let err = backup(&opts)
        .await
        .expect_err("a physical backup without quiesce");
    assert!(
        err.to_string()
            .contains("needs a PostgreSQL source and quiesced writers"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(dest.path())?.flatten().all(|e| !e
            .file_name()
            .to_string_lossy()
            .starts_with("physical-unquiesced")),
        "the refused backup wrote something"
    );
    opts.quiesce = Some(harness::backup::QuiesceOptions::default());
    opts.name = Some("physical".to_owned());
    let report = backup(&opts).await.context("backup with a physical copy")?;
    let physical = report
        .manifest
        .postgres
        .as_ref()
        .and_then(|pg| pg.physical.clone())
        .context("the manifest records the physical copy")?;
    assert_eq!(physical.file, harness::backup::PHYSICAL_TAR);
    assert_private(&report.dir.join(&physical.file));
    let v = verify_backup(&report.dir, &verify_options(&scratch)).await?;
    assert!(v.passed, "verify: {}", first(&v));
    assert!(
        v.physical_checked,
        "a server was started on the physical copy"
    );

    // A damaged copy is a finding of its own.
    let damaged = dest.path().join("physical-damaged");
    copy_dir(&report.dir, &damaged)?;
    let tar = damaged.join(&physical.file);
    let len = std::fs::metadata(&tar)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tar)?
        .set_len(len / 2)?;
    let v = verify_backup(&damaged, &verify_options(&scratch)).await?;
    assert!(!v.passed && !v.physical_checked);
    assert!(
        v.findings
            .iter()
            .any(|f| f.check == format!("physical copy {}", physical.file)),
        "{:?}",
        v.findings
    );
    sim.shutdown().await?;
    Ok(())
}

/// An archive member: name, type, link target (empty for none).
type Member<'a> = (&'a str, tar::EntryType, &'a str);

/// A `.tar.gz` built member by member, for archives the backup never writes.
fn hostile_archive(path: &Path, members: &[Member<'_>]) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, kind, target) in members {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(0o700);
        header.set_size(0);
        // Written into the raw name field: `set_path` refuses `..` and absolute paths.
        let raw = &mut header.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if !target.is_empty() {
            header.set_link_name(target)?;
        }
        header.set_cksum();
        tar.append(&header, std::io::empty())?;
    }
    tar.into_inner()?.finish()?;
    Ok(())
}

/// An archive is verified from its own bytes only: a member that is a link to a good backup
/// elsewhere on disk (symbolic or hard), an absolute path or a `..` is refused, naming the
/// member; so is a top-level entry that is not a directory. On the old code the symlink
/// archive passed, verifying the backup it pointed at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_refuses_archive_members_that_leave_the_archive() -> Result<()> {
    let dest = ScratchDir::new("backup-test-links-", "backup destination")?;
    let (_pg, report) = small_backup(dest.path(), "titanium-links").await?;
    let scratch = scratch_pg().await?;
    let vo = verify_options(&scratch);
    let good = report.dir.to_str().context("utf-8 path")?;
    let manifest = report.dir.join("MANIFEST.json");
    let manifest = manifest.to_str().context("utf-8 path")?;
    let work = ScratchDir::new("backup-test-hostile-", "hostile archives")?;
    let dir = tar::EntryType::Directory;
    let cases: [(&str, Vec<Member<'_>>, &str); 5] = [
        (
            "symlink",
            vec![("titanium-links", tar::EntryType::Symlink, good)],
            "member titanium-links is a symbolic link",
        ),
        (
            "hardlink",
            vec![
                ("t", dir, ""),
                ("t/MANIFEST.json", tar::EntryType::Link, manifest),
            ],
            "member t/MANIFEST.json is a hard link",
        ),
        (
            "dotdot",
            vec![("t", dir, ""), ("t/../../escaped", dir, "")],
            "climbs out with ..",
        ),
        (
            "absolute",
            vec![("/tmp/rehearsal-absolute-member", dir, "")],
            "has an absolute path",
        ),
        (
            "file-on-top",
            vec![("top", tar::EntryType::Regular, "")],
            "is not a directory",
        ),
    ];
    for (name, members, expected) in cases {
        let archive = work.path().join(format!("{name}.tar.gz"));
        hostile_archive(&archive, &members)?;
        let v = verify_backup(&archive, &vo).await?;
        ensure!(!v.passed, "{name}: a hostile archive passed verify");
        ensure!(
            v.findings[0].check.starts_with("archive ") && v.findings[0].found.contains(expected),
            "{name}: {}",
            first(&v)
        );
    }
    ensure!(!Path::new("/tmp/rehearsal-absolute-member").exists());
    Ok(())
}

/// The off-site copy error keeps the OS cause (here: the target is a file, not a directory).
#[tokio::test]
async fn offsite_copy_error_names_the_os_cause() -> Result<()> {
    let work = ScratchDir::new("backup-test-offsite-", "offsite error")?;
    let archive = work.path().join("b.tar.gz");
    std::fs::write(&archive, b"archive bytes")?;
    let info = harness::backup::ArchiveInfo {
        path: archive.clone(),
        size: 13,
        sha256: String::new(),
        encrypted: false,
    };
    let not_a_dir = work.path().join("not-a-dir");
    std::fs::write(&not_a_dir, b"")?;
    let err = harness::backup::copy_offsite(&info, &OffsiteTarget::Directory(not_a_dir.clone()))
        .await
        .expect_err("a file is not a directory");
    let text = err.to_string();
    ensure!(
        text.contains("Not a directory") && text.contains(not_a_dir.to_str().context("utf-8")?),
        "{text}"
    );
    Ok(())
}

/// A pod looked for in a namespace that does not exist: the error says the namespace is
/// missing, not only that the pod was not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_namespace_is_named() -> Result<()> {
    let dir = ScratchDir::new("backup-test-nons-", "simulated cluster")?;
    let kubeconfig = dir.path().join("kubeconfig");
    let _sim = simcluster::SimCluster::start(simcluster::SimConfig::new(
        "backup-nons",
        dir.path().join("state"),
        &kubeconfig,
    ))
    .await?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let mut options = BackupOptions::new(dir.path().join("out"));
    std::fs::create_dir(dir.path().join("out"))?;
    options.name = Some("nons".to_owned());
    options.postgres = Some(PgSource::Kube(harness::backup::KubePostgres {
        pod: harness::backup::PodRef {
            client,
            namespace: "no-such-namespace".to_owned(),
            pod: "postgresql-0".to_owned(),
            container: None,
        },
        port: 5432,
        user: "postgres".to_owned(),
        dbname: "titanium".to_owned(),
        password: None,
        password_env: None,
    }));
    let err = backup(&options).await.expect_err("no such namespace");
    let text = format!("{:#}", anyhow::Error::from(err));
    ensure!(
        text.contains("namespace no-such-namespace does not exist"),
        "{text}"
    );
    Ok(())
}

/// The CSV files converted from the dump's COPY data are byte for byte what PostgreSQL's own
/// `COPY ... TO STDOUT WITH (FORMAT csv, HEADER)` writes, for values that every escaping rule
/// touches (NULL and the empty string, commas, quotes, line breaks, tabs, backslashes, a lone
/// `\.`, non-ASCII, bytea, arrays, JSON), for a generated column (left out) and for a table
/// whose name and columns need quoting; both ways of making the plain SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_files_are_what_copy_to_csv_writes() -> Result<()> {
    let pg = source_db(DatasetSpec::new(3, 10, 30)).await?;
    let client = pg.socket_params().connect().await?;
    // The backup's pg_dumps write times in UTC (harness::facts::DUMP_ENV).
    client.batch_execute("SET TimeZone = 'UTC'").await?;
    client
        .batch_execute(
            r#"CREATE TABLE public."Odd Table" (
                 id integer PRIMARY KEY,
                 "Text, col" text,
                 data bytea,
                 tags text[],
                 doc jsonb,
                 twice integer GENERATED ALWAYS AS (id * 2) STORED);
               INSERT INTO public."Odd Table" (id, "Text, col", data, tags, doc) VALUES
                 (1, NULL, NULL, NULL, NULL),
                 (2, '', '\x00ff', '{}', '{}'),
                 (3, 'a,b "quoted"', '\x5c2e', '{"x,y","z"}', '{"k": "v\"w"}'),
                 (4, E'line\none\r\ntwo\ttab', E'\\x0a', '{NULL}', 'null'),
                 (5, E'back\\slash \\N', NULL, NULL, '[1, 2]'),
                 (6, E'\\.', NULL, NULL, NULL),
                 (7, 'ünïcödé — 한국어', NULL, NULL, NULL),
                 (8, E'\b\f\v control', NULL, NULL, NULL);"#,
        )
        .await?;
    let dest = ScratchDir::new("backup-test-csv-", "backup csv test")?;
    for (name, report) in backup_both_ways(dest.path(), &pg).await? {
        let pgm = report.manifest.postgres.as_ref().context("postgres part")?;
        ensure!(pgm.csv.len() == 3, "{:?}", pgm.csv);
        for table in &pgm.csv {
            let path = report.dir.join(&table.file);
            assert_private(&path);
            let ours = std::fs::read(&path)?;
            let columns = table
                .columns
                .iter()
                .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "COPY \"{}\".\"{}\" ({columns}) TO STDOUT WITH (FORMAT csv, HEADER)",
                table.schema, table.name
            );
            let stream = client.copy_out(&sql).await?;
            futures::pin_mut!(stream);
            let mut theirs = Vec::new();
            while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
                theirs.extend_from_slice(&chunk?);
            }
            ensure!(
                ours == theirs,
                "{name}: {} differs from COPY TO csv:\n--- ours\n{:?}\n--- COPY\n{:?}",
                table.file,
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
        let odd = pgm
            .csv
            .iter()
            .find(|t| t.name == "Odd Table")
            .context("the odd table")?;
        ensure!(!odd.columns.contains(&"twice".to_owned()), "{odd:?}");
    }
    Ok(())
}

/// The backup's row counts and digests come from its pg_dump's rows, not from reading the
/// tables again; they must equal a read of the database by the same definition, whatever the
/// database's own settings make of dates, intervals, floats, byte strings and names, for
/// columns that are generated or dropped, tables without a key or without columns, another
/// schema and partitions; both ways of making the plain SQL. The manifest says which
/// definition it follows, and a manifest written before there were two reads as the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_from_the_dump_equal_a_read_of_the_database() -> Result<()> {
    let pg = source_db(DatasetSpec::new(4, 20, 60)).await?;
    let admin = pg.socket_params();
    let client = admin.connect().await?;
    client
        .batch_execute(
            r#"ALTER DATABASE titanium SET TimeZone = 'Asia/Seoul';
               ALTER DATABASE titanium SET DateStyle = 'SQL, DMY';
               ALTER DATABASE titanium SET IntervalStyle = 'sql_standard';
               ALTER DATABASE titanium SET extra_float_digits = 0;
               ALTER DATABASE titanium SET bytea_output = 'escape';
               CREATE SCHEMA other;
               ALTER DATABASE titanium SET search_path = other, public;
               CREATE TABLE other.kinds (
                 id bigint PRIMARY KEY,
                 gone text,
                 at timestamptz, day date, span interval, ratio float8, small float4,
                 data bytea, rel regclass, amount numeric(12, 3), doc jsonb, note text,
                 twice bigint GENERATED ALWAYS AS (id * 2) STORED);
               ALTER TABLE other.kinds DROP COLUMN gone;
               INSERT INTO other.kinds (id, at, day, span, ratio, small, data, rel, amount, doc, note)
                 SELECT g, timestamptz '2025-03-01 23:30:00+00' + g * interval '7 hours 3 seconds',
                        date '2024-12-30' + g, make_interval(0, g, 0, g, g, g, g * 1.5),
                        1.0 / (g + 3), (g / 7.0)::float4, decode(repeat(to_hex(g), 3), 'escape'),
                        'other.kinds'::regclass, g * 1.125, jsonb_build_object('g', g),
                        E'tab\there \\ back ' || g
                 FROM generate_series(1, 300) g;
               INSERT INTO other.kinds (id, ratio, small) VALUES (1000, 'NaN', '-Infinity');
               CREATE TABLE public.nokey (who text, n int);
               INSERT INTO public.nokey SELECT 'u' || (g % 5), g % 3 FROM generate_series(1, 50) g;
               CREATE TABLE public.nothing ();
               INSERT INTO public.nothing DEFAULT VALUES;
               INSERT INTO public.nothing DEFAULT VALUES;
               CREATE TABLE public.parted (id int, at date) PARTITION BY RANGE (at);
               CREATE TABLE public.parted_2024 PARTITION OF public.parted
                 FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
               CREATE TABLE public.parted_2025 PARTITION OF public.parted
                 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
               INSERT INTO public.parted SELECT g, date '2024-06-01' + g FROM generate_series(1, 400) g;"#,
        )
        .await?;
    drop(client);
    // A session as the database's settings leave it, then the read by each definition.
    let client = admin.connect().await?;
    let v2 = table_facts_as(&client, DigestVersion::RowsV2).await?;
    let v1 = table_facts_as(&client, DigestVersion::KeyOrderedV1).await?;
    let path: String = client.query_one("SHOW search_path", &[]).await?.get(0);
    ensure!(path == "other, public", "search_path put back: {path}");
    ensure!(v2.len() == 7, "{v2:?}");
    ensure!(v2.iter().all(|t| t.ordered_by.is_empty()), "{v2:?}");
    let kinds = |facts: &[TableFacts]| {
        facts
            .iter()
            .find(|t| t.name == "kinds")
            .cloned()
            .context("kinds")
    };
    ensure!(kinds(&v1)?.ordered_by == ["id"], "{v1:?}");
    ensure!(kinds(&v1)?.digest != kinds(&v2)?.digest);

    let dest = ScratchDir::new("backup-test-digests-", "backup digest test")?;
    for (name, report) in backup_both_ways(dest.path(), &pg).await? {
        let pgm = report.manifest.postgres.as_ref().context("postgres part")?;
        ensure!(pgm.digest_version == DigestVersion::RowsV2);
        ensure!(
            pgm.tables == v2,
            "{name}: the digests taken from the dump differ from a read of the database:\n\
             --- dump\n{:#?}\n--- database\n{v2:#?}",
            pgm.tables
        );
        // Restored elsewhere, under the server's own settings: the same facts.
        let target = scratch_pg().await?;
        let restored = restore_into(
            &report.dir.join(&pgm.custom_dump),
            &target.socket_params().with_dbname("postgres"),
            target.tools(),
            pgm.digest_version,
        )
        .await?
        .map_err(anyhow::Error::msg)?;
        ensure!(restored.tables == v2, "{name}: {:#?}", restored.tables);

        // What a manifest from before the versions says: its digests are key-ordered-v1.
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(report.dir.join("MANIFEST.json"))?)?;
        let postgres = json
            .get_mut("postgres")
            .and_then(|p| p.as_object_mut())
            .context("postgres in MANIFEST.json")?;
        ensure!(postgres.remove("digest_version") == Some("rows-v2".into()));
        let old: harness::backup::Manifest = serde_json::from_value(json)?;
        ensure!(old.postgres.context("postgres")?.digest_version == DigestVersion::KeyOrderedV1);
    }
    Ok(())
}
