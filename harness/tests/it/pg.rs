//! PostgreSQL providers: start, query, stop, clean up; collisions; passwords; containers.

use std::path::{Path, PathBuf};

use harness::pg::{
    ContainerOptions, ContainerPostgres, LocalOptions, LocalPostgres, PgError, PgTools,
    PostgresProvider, Secret,
};

use crate::support::alive;

async fn tables(params: &harness::pg::ConnParams) -> Vec<String> {
    let client = params.connect().await.expect("connect");
    client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("list tables")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn local_starts_runs_init_sql_and_leaves_nothing_behind() {
    let pg = LocalPostgres::start(LocalOptions::titanium())
        .await
        .expect("start");
    let pid = pg.pid().expect("pid");
    let dir = pg.dir().to_path_buf();
    assert_eq!(tables(&pg.params()).await, ["posts", "users"]);
    assert_eq!(pg.params().host, "127.0.0.1");
    pg.stop().await.expect("stop");
    assert!(!alive(pid), "postgres {pid} still running after stop");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        !harness::keep::owner_record(&dir).exists(),
        "the owner record of {} left behind",
        dir.display()
    );
}

/// What a SIGKILL of the owner leaves (a server still running on its scratch directory, if it
/// escaped its parent-death signal) is stopped and removed by the next process's sweep.
#[tokio::test]
async fn local_left_by_a_killed_owner_is_stopped_and_swept() {
    use harness::keep::{OwnerId, owner_record, sweep_stale};
    let pg = LocalPostgres::start(LocalOptions::default())
        .await
        .expect("start");
    let pid = pg.pid().expect("pid");
    let dir = pg.dir().to_path_buf();
    // Its owner record now names a process that is gone, as after a SIGKILL.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let record = OwnerId {
        pid: gone.id() as i32,
        ..OwnerId::current()
    };
    std::fs::write(owner_record(&dir), record.render()).unwrap();

    let swept = sweep_stale(dir.parent().expect("a parent"));

    let ours = swept
        .iter()
        .find(|s| s.dir == dir)
        .expect("our directory swept");
    assert_eq!(ours.servers_stopped, [pid as i32]);
    assert!(!alive(pid), "postgres {pid} still running after the sweep");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!owner_record(&dir).exists());
    assert!(
        pg.params().connect().await.is_err(),
        "the server still answers"
    );
}

#[tokio::test]
async fn local_is_stopped_and_removed_when_a_test_panics() {
    let (pid, dir) = tokio::task::spawn(async {
        let pg = LocalPostgres::start(LocalOptions::default())
            .await
            .expect("start");
        let seen = (pg.pid().expect("pid"), pg.dir().to_path_buf());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _owned = pg;
            panic!("a failing test");
        }));
        assert!(result.is_err());
        seen
    })
    .await
    .expect("task");
    assert!(!alive(pid), "postgres {pid} survived the panic");
    assert!(!dir.exists(), "{} survived the panic", dir.display());
}

#[tokio::test]
async fn two_local_servers_do_not_collide() {
    let (a, b) = tokio::join!(
        LocalPostgres::start(LocalOptions::titanium()),
        LocalPostgres::start(LocalOptions::titanium())
    );
    let (a, b) = (a.expect("start a"), b.expect("start b"));
    assert_ne!(a.params().port, b.params().port);
    assert_ne!(a.dir(), b.dir());
    a.params()
        .connect()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE only_in_a (x int)")
        .await
        .unwrap();
    assert_eq!(tables(&a.params()).await, ["only_in_a", "posts", "users"]);
    assert_eq!(tables(&b.params()).await, ["posts", "users"]);
}

#[tokio::test]
async fn local_password_auth_accepts_the_password_and_names_a_wrong_one() {
    let options = LocalOptions {
        password: Some(Secret::new("s3cret-Ω")),
        ..LocalOptions::default()
    };
    let pg = LocalPostgres::start(options).await.expect("start");
    let good = pg.params();
    good.connect().await.expect("right password");
    let mut bad = good.clone();
    bad.password = Some(Secret::new("wrong"));
    let err = bad.connect().await.expect_err("wrong password must fail");
    assert!(matches!(err, PgError::AuthFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    let mut none = good.clone();
    none.password = None;
    assert!(
        none.connect().await.is_err(),
        "TCP without a password must be refused"
    );
    // The password never shows in Debug output.
    assert!(!format!("{good:?}").contains("s3cret"));
}

#[tokio::test]
async fn unreachable_server_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let params = harness::pg::ConnParams {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        password: None,
        dbname: "titanium".into(),
    };
    let err = params.connect().await.expect_err("nothing listens there");
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{port}/titanium")),
        "{err}"
    );
}

#[tokio::test]
async fn failing_init_sql_is_reported_with_psql_output() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.sql");
    std::fs::write(
        &bad,
        "CREATE TABLE ok (x int);\nCREATE TABLE broken (x no_such_type);\n",
    )
    .unwrap();
    let err = LocalPostgres::start(LocalOptions {
        init_sql: vec![bad],
        ..LocalOptions::default()
    })
    .await
    .expect_err("bad init sql");
    let text = err.to_string();
    assert!(
        text.contains("psql failed") && text.contains("no_such_type"),
        "{text}"
    );
}

#[test]
fn missing_binaries_say_how_to_install_them() {
    let empty = tempfile::tempdir().unwrap();
    let err = PgTools::discover_in(
        Some(empty.path().join("nope")),
        "no-such-pg_config",
        empty.path(),
    )
    .expect_err("nothing there");
    let text = err.to_string();
    assert!(
        text.contains("apt-get install postgresql-15") && text.contains("HARNESS_PG_BIN"),
        "{text}"
    );
}

/// Whether container tests can run here; under CI a missing Docker or image is a failure.
fn container_prerequisites() -> Option<String> {
    let image = std::env::var(harness::pg::IMAGE_ENV).ok();
    let docker = Path::new("/var/run/docker.sock").exists();
    let reason = match (&image, docker) {
        (None, _) => Some(format!(
            "{} is not set (ci/run builds and sets it)",
            harness::pg::IMAGE_ENV
        )),
        (_, false) => Some("Docker is not running".to_owned()),
        _ => None,
    };
    if let Some(reason) = &reason {
        harness::testing::unavailable(&format!("container tests: {reason}"));
    }
    reason
}

#[tokio::test]
async fn container_runs_init_scripts_and_authenticates_from_the_host() {
    if container_prerequisites().is_some() {
        return;
    }
    let options = ContainerOptions {
        password: Some(Secret::new("c0ntainer-pw")),
        ..ContainerOptions::titanium()
    };
    let pg = ContainerPostgres::start(options)
        .await
        .expect("start container");
    let params = pg.params();
    assert_eq!(tables(&params).await, ["posts", "users"]);
    let client = params.connect().await.unwrap();
    let version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("15"), "{version}");
    let mut wrong = params.clone();
    wrong.password = Some(Secret::new("nope"));
    assert!(matches!(
        wrong.connect().await,
        Err(PgError::AuthFailed { .. })
    ));
    pg.stop().await.expect("stop");
}

#[tokio::test]
async fn container_with_a_missing_image_says_how_to_build_one() {
    if container_prerequisites().is_some() {
        return;
    }
    let options = ContainerOptions {
        image: "rebuild-rehearsal/no-such-image:0".into(),
        ..ContainerOptions::default()
    };
    let err = ContainerPostgres::start(options)
        .await
        .expect_err("no such image");
    let text = err.to_string();
    assert!(
        text.contains("rebuild-rehearsal/no-such-image:0")
            && text.contains("ci/images/postgres/build.sh"),
        "{text}"
    );
}

#[test]
fn schema_fixture_exists() {
    let path: PathBuf = harness::data::schema_sql_path();
    assert!(path.is_file(), "{}", path.display());
}
