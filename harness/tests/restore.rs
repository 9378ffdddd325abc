//! Restore and verification against real PostgreSQL: idempotent restores, refusals, the
//! negative control, the dry run, and every database gate fed the defect it exists for.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use harness::data::{DatasetSpec, load_dataset, schema_sql_path};
use harness::facts::{
    SequenceFacts, TableFacts, foreign_key_checks, render_schema, run_amcheck, sequence_facts,
    table_facts, table_facts_as,
};
use harness::keep::ScratchDir;
use harness::pg::{ConnParams, LocalOptions, LocalPostgres, PostgresProvider, create_database};
use harness::restore::{
    DbArchive, DbRestoreInput, DbRestoreOptions, MarkerRow, PlannedAction, RestoreError,
    TargetState, plan_database_restore, restore_database,
};
use harness::verify::{self, FindingKind, Gate, Verdict};

const SPEC: DatasetSpec = DatasetSpec {
    seed: 7,
    users: 300,
    posts: 3000,
};

/// A source database with the Titanium dataset, its dumps and the facts recorded with them.
struct Fixture {
    pg: LocalPostgres,
    custom: PathBuf,
    plain: PathBuf,
    tables: Vec<TableFacts>,
    sequences: Vec<SequenceFacts>,
    schema: String,
    // Last, so the files outlive nothing that needs them.
    dir: ScratchDir,
}

async fn pg_dump(pg: &LocalPostgres, params: &ConnParams, args: &[&str], out: &Path) -> Result<()> {
    let status = tokio::process::Command::new(pg.tools().tool("pg_dump")?)
        .args(args)
        .arg("-f")
        .arg(out)
        .envs(params.libpq_env())
        .status()
        .await?;
    ensure!(status.success(), "pg_dump {args:?} failed: {status}");
    Ok(())
}

async fn fixture() -> Result<Fixture> {
    let pg = LocalPostgres::start(LocalOptions::titanium())
        .await
        .context("start postgres")?;
    let params = pg.params();
    let client = params.connect().await?;
    load_dataset(&client, &SPEC).await?;
    let dir = ScratchDir::new("restore-test-", "restore test backup")?;
    let custom = dir.path().join("titanium.dump");
    let plain = dir.path().join("titanium.sql");
    pg_dump(&pg, &params, &["-Fc"], &custom).await?;
    pg_dump(&pg, &params, &[], &plain).await?;
    let tables = table_facts(&client).await?;
    let sequences = sequence_facts(&client).await?;
    let schema = render_schema(&client).await?;
    Ok(Fixture {
        pg,
        custom,
        plain,
        tables,
        sequences,
        schema,
        dir,
    })
}

impl Fixture {
    fn input(&self) -> DbRestoreInput {
        DbRestoreInput {
            archive: DbArchive::Custom(self.custom.clone()),
            backup_id: "backup-1".to_owned(),
            recorded_sha256: None,
        }
    }

    /// A new database on the same server; with `init`, the StatefulSet's init script has run in it.
    async fn target(&self, name: &str, init: bool) -> Result<ConnParams> {
        create_database(&self.pg.params(), name).await?;
        let params = self.pg.params().with_dbname(name);
        if init {
            self.pg
                .tools()
                .psql_file(&params, &schema_sql_path())
                .await?;
        }
        Ok(params)
    }

    async fn restore(
        &self,
        params: &ConnParams,
        input: &DbRestoreInput,
        options: &DbRestoreOptions,
    ) -> Result<harness::restore::DbRestoreReport, RestoreError> {
        restore_database(self.pg.tools(), params, input, options).await
    }

    /// Every database gate, comparing `params`' database with the backup's facts.
    async fn gates(&self, params: &ConnParams) -> Result<Vec<Verdict>> {
        let client = params.connect().await?;
        let tables = table_facts(&client).await?;
        let sequences = sequence_facts(&client).await?;
        let schema = render_schema(&client).await?;
        let fks = foreign_key_checks(&client).await?;
        Ok(vec![
            verify::row_counts(&self.tables, &tables),
            verify::digests(&self.tables, &tables),
            verify::schema(&self.schema, &schema),
            verify::sequences(&self.sequences, &sequences),
            verify::referential_integrity(&fks, &verify::Amcheck::NotRequested),
        ])
    }
}

fn failed(verdicts: &[Verdict]) -> Vec<Gate> {
    verdicts
        .iter()
        .filter(|v| !v.passed)
        .map(|v| v.gate)
        .collect()
}

fn all_passed(verdicts: &[Verdict]) -> Result<()> {
    let failures: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.passed)
        .map(ToString::to_string)
        .collect();
    ensure!(
        failures.is_empty(),
        "gates failed:\n{}",
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn titanium_schema_rendering_is_stable_and_snapshotted() -> Result<()> {
    let pg = LocalPostgres::start(LocalOptions::titanium()).await?;
    let client = pg.params().connect().await?;
    let first = render_schema(&client).await?;
    // Running the (idempotent) init script again, and adding then dropping a column, change
    // attribute numbers and OIDs but not the schema: the rendering must not move.
    pg.tools()
        .psql_file(&pg.params(), &schema_sql_path())
        .await?;
    client
        .batch_execute(
            "ALTER TABLE users ADD COLUMN scratch int; ALTER TABLE users DROP COLUMN scratch",
        )
        .await?;
    let second = render_schema(&client).await?;
    assert_eq!(first, second);
    insta::assert_snapshot!("titanium_schema", first);
    Ok(())
}

#[tokio::test]
async fn restore_over_init_script_tables_twice_and_after_an_interruption() -> Result<()> {
    let fx = fixture().await?;
    let target = fx.target("rebuilt", true).await?;
    let options = DbRestoreOptions::default();

    // Over the init script's empty tables: no force needed, the tables are replaced.
    let plan = plan_database_restore(fx.pg.tools(), &target, &fx.input(), &options).await?;
    assert_eq!(plan.action, PlannedAction::Restore);
    assert!(
        matches!(plan.state, TargetState::EmptyTables { .. }),
        "{plan}"
    );
    assert!(
        plan.replaces.contains(&"table public.users".to_owned()),
        "{plan}"
    );
    let report = fx.restore(&target, &fx.input(), &options).await?;
    assert!(report.restored);
    all_passed(&fx.gates(&target).await?)?;
    let client = target.connect().await?;
    assert_eq!(
        sequence_facts(&client).await?,
        fx.sequences,
        "sequences end at the backed-up values"
    );

    // Twice: the second run recognises the backup and changes nothing; forced, it restores
    // again to the same result.
    let again = fx.restore(&target, &fx.input(), &options).await?;
    assert!(!again.restored);
    assert_eq!(again.plan.action, PlannedAction::AlreadyRestored);
    let forced = fx
        .restore(
            &target,
            &fx.input(),
            &DbRestoreOptions {
                force: true,
                ..options.clone()
            },
        )
        .await?;
    assert!(forced.restored);
    all_passed(&fx.gates(&target).await?)?;

    // An archive cut short is refused before anything is dropped: the whole archive is read
    // through first, so the target keeps what it had. (A load that fails after the drops is
    // `a_load_failing_after_the_drops_says_so_and_a_rerun_finishes`.)
    let cut = fx.dir.path().join("cut.dump");
    let bytes = std::fs::read(&fx.custom)?;
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 5])?;
    let second = fx.target("interrupted", true).await?;
    let cut_input = DbRestoreInput {
        archive: DbArchive::Custom(cut),
        backup_id: "backup-1".to_owned(),
        recorded_sha256: None,
    };
    let err = fx
        .restore(&second, &cut_input, &options)
        .await
        .expect_err("a truncated archive cannot restore");
    assert!(matches!(err, RestoreError::BadArchive { .. }), "{err}");
    let plan = plan_database_restore(fx.pg.tools(), &second, &fx.input(), &options).await?;
    assert!(
        matches!(plan.state, TargetState::EmptyTables { .. }),
        "the target is untouched: {plan}"
    );
    fx.restore(&second, &fx.input(), &options).await?;
    all_passed(&fx.gates(&second).await?)?;

    // Interrupted by cancellation (a timeout, Ctrl-C): the restore future is dropped once the
    // target is marked "restoring"; pg_restore and its workers die with it.
    let third = fx.target("cancelled", true).await?;
    let watcher = fx.pg.params().connect().await?;
    let comment =
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'cancelled'";
    let restoring = async {
        loop {
            let row = watcher.query_one(comment, &[]).await?;
            if row
                .get::<_, Option<String>>(0)
                .is_some_and(|c| c.contains("restoring"))
            {
                return anyhow::Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    };
    let input = fx.input();
    tokio::select! {
        done = fx.restore(&third, &input, &options) => {
            anyhow::bail!("the restore ended ({:?}) before it could be interrupted", done.map(|r| r.restored))
        }
        seen = restoring => seen?,
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: i64 = watcher
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = 'cancelled' AND application_name = 'pg_restore'", &[])
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{left} pg_restore connection(s) survived the cancelled restore"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let plan = plan_database_restore(fx.pg.tools(), &third, &fx.input(), &options).await?;
    assert_eq!(
        plan.state,
        TargetState::Interrupted {
            backup_id: "backup-1".to_owned()
        }
    );
    fx.restore(&third, &fx.input(), &options).await?;
    all_passed(&fx.gates(&third).await?)?;
    Ok(())
}

#[tokio::test]
async fn plain_sql_restore_the_runbook_way_and_bad_archives_cost_nothing() -> Result<()> {
    let fx = fixture().await?;
    let target = fx.target("from_sql", true).await?;
    let sql = DbRestoreInput {
        archive: DbArchive::PlainSql(fx.plain.clone()),
        backup_id: "backup-1".to_owned(),
        recorded_sha256: None,
    };
    let report = fx
        .restore(&target, &sql, &DbRestoreOptions::default())
        .await?;
    assert!(report.restored);
    all_passed(&fx.gates(&target).await?)?;

    // Wrong inputs are refused before anything changes.
    let wrong = DbRestoreInput {
        archive: DbArchive::PlainSql(fx.custom.clone()),
        backup_id: "x".to_owned(),
        recorded_sha256: None,
    };
    let err = fx
        .restore(
            &target,
            &wrong,
            &DbRestoreOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("custom-format archive"), "{err}");
    let junk = fx.dir.path().join("junk.dump");
    std::fs::write(&junk, b"not an archive")?;
    let junk_input = DbRestoreInput {
        archive: DbArchive::Custom(junk),
        backup_id: "x".to_owned(),
        recorded_sha256: None,
    };
    let err = fx
        .restore(
            &target,
            &junk_input,
            &DbRestoreOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::BadArchive { .. }), "{err}");
    let missing = DbRestoreInput {
        archive: DbArchive::Custom(fx.dir.path().join("nope.dump")),
        backup_id: "x".to_owned(),
        recorded_sha256: None,
    };
    let err = fx
        .restore(
            &target,
            &missing,
            &DbRestoreOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope.dump"), "{err}");
    all_passed(&fx.gates(&target).await?)?;
    Ok(())
}

#[tokio::test]
async fn refusal_dry_run_and_the_marker_row_negative_control() -> Result<()> {
    let fx = fixture().await?;
    let source = fx.pg.params();
    let client = source.connect().await?;
    // The rehearsal writes a marker after the backup.
    let marker = MarkerRow::new("run-42");
    marker.write(&client).await?;
    assert_eq!(marker.count(&client).await?, 1);

    // A database holding data is refused without force, and left as it was.
    let err = fx
        .restore(&source, &fx.input(), &DbRestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::NotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("public.users"), "{err}");
    assert_eq!(marker.count(&client).await?, 1);

    // A dry run, even forced, returns the plan and changes nothing.
    let before = (table_facts(&client).await?, render_schema(&client).await?);
    let dry = fx
        .restore(
            &source,
            &fx.input(),
            &DbRestoreOptions {
                force: true,
                dry_run: true,
                ..Default::default()
            },
        )
        .await?;
    assert!(!dry.restored);
    assert_eq!(dry.plan.action, PlannedAction::Restore);
    let text = dry.plan.to_string();
    for expected in [
        "table public.posts",
        "routine public.set_updated_at()",
        "TABLE DATA public users",
        "pg_restore",
    ] {
        assert!(text.contains(expected), "plan lacks {expected}:\n{text}");
    }
    assert_eq!(
        (table_facts(&client).await?, render_schema(&client).await?),
        before
    );

    // Forced, the restore replaces the data; the marker is gone.
    fx.restore(
        &source,
        &fx.input(),
        &DbRestoreOptions {
            force: true,
            ..Default::default()
        },
    )
    .await?;
    let verdict = verify::marker_absent(&marker.subject(), marker.count(&client).await?);
    assert!(verdict.passed, "{verdict}");
    all_passed(&fx.gates(&source).await?)?;
    // And the negative control does fail when the marker survives.
    marker.write(&client).await?;
    assert!(!verify::marker_absent(&marker.subject(), marker.count(&client).await?).passed);
    Ok(())
}

/// Restores into a fresh database, injects `defect`, and checks that exactly `gates` fail, with
/// a finding about `subject` of `kind`.
async fn check_defect(
    fx: &Fixture,
    db: &str,
    defect: &str,
    gates: &[Gate],
    subject: &str,
    kind: FindingKind,
) -> Result<()> {
    let target = fx.target(db, false).await?;
    fx.restore(&target, &fx.input(), &DbRestoreOptions::default())
        .await?;
    target
        .connect()
        .await?
        .batch_execute(defect)
        .await
        .with_context(|| format!("inject {defect}"))?;
    let verdicts = fx.gates(&target).await?;
    assert_eq!(failed(&verdicts), gates, "defect {defect}: {verdicts:#?}");
    let first = verdicts
        .iter()
        .find(|v| v.gate == gates[0])
        .expect("the first expected gate ran");
    assert!(
        first
            .findings
            .iter()
            .any(|f| f.subject.contains(subject) && f.kind == kind),
        "defect {defect}: no {kind:?} finding about {subject}: {first}"
    );
    Ok(())
}

/// pg_amcheck that cannot start (here: a file that is not executable where the tools are)
/// fails the integrity gate with why, and the gate reports that it could not check. On the old
/// code the error was dropped (`.ok()`) and the gate passed.
async fn amcheck_that_cannot_start_fails_the_gate(db: &ConnParams) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bin = ScratchDir::new("restore-test-no-amcheck-", "tools without pg_amcheck")?;
    for name in ["initdb", "postgres", "pg_amcheck"] {
        std::fs::write(bin.path().join(name), "")?;
        std::fs::set_permissions(
            bin.path().join(name),
            std::fs::Permissions::from_mode(0o600),
        )?;
    }
    let tools = harness::pg::PgTools::discover_in(
        Some(bin.path().to_path_buf()),
        "no-such-pg_config",
        bin.path(),
    )?;
    let amcheck: verify::Amcheck = run_amcheck(&tools, db).await.into();
    let verdict =
        verify::referential_integrity(&foreign_key_checks(&db.connect().await?).await?, &amcheck);
    ensure!(
        !verdict.passed,
        "the gate passed without pg_amcheck: {verdict}"
    );
    let why = verdict
        .not_checked()
        .context("no could-not-check finding")?;
    ensure!(
        why.contains("pg_amcheck") && why.contains(&bin.path().display().to_string()),
        "the reason names the program: {why}"
    );
    Ok(())
}

#[tokio::test]
async fn every_database_gate_catches_its_defect() -> Result<()> {
    let fx = fixture().await?;
    // The clean pass, with pg_amcheck on top.
    let clean = fx.target("clean", false).await?;
    fx.restore(&clean, &fx.input(), &DbRestoreOptions::default())
        .await?;
    all_passed(&fx.gates(&clean).await?)?;
    let amcheck = run_amcheck(fx.pg.tools(), &clean).await?;
    let verdict = verify::referential_integrity(
        &foreign_key_checks(&clean.connect().await?).await?,
        &verify::Amcheck::Ran(amcheck.clone()),
    );
    assert!(verdict.passed, "{verdict}\n{}", amcheck.output);
    assert_eq!(
        render_schema(&clean.connect().await?).await?,
        fx.schema,
        "amcheck leaves the schema as it was"
    );
    amcheck_that_cannot_start_fails_the_gate(&clean).await?;

    check_defect(
        &fx,
        "d_index",
        "DROP INDEX idx_posts_author",
        &[Gate::Schema],
        "index public.idx_posts_author",
        FindingKind::Missing,
    )
    .await?;
    check_defect(
        &fx,
        "d_type",
        "ALTER TABLE users ALTER COLUMN email TYPE text",
        &[Gate::Schema],
        "table public.users",
        FindingKind::Drift,
    )
    .await?;
    check_defect(
        &fx,
        "d_seq",
        "SELECT setval('users_id_seq', 1, false)",
        &[Gate::Sequences],
        "public.users_id_seq",
        FindingKind::Broken,
    )
    .await?;
    check_defect(
        &fx,
        "d_fk",
        "SET session_replication_role = replica; UPDATE posts SET author = 'ghost' WHERE id = 5; SET session_replication_role = DEFAULT",
        &[Gate::Digests, Gate::ReferentialIntegrity],
        "public.posts",
        FindingKind::Mismatch,
    )
    .await?;
    check_defect(
        &fx,
        "d_row",
        "DELETE FROM posts WHERE id = 7",
        &[Gate::RowCounts, Gate::Digests],
        "public.posts",
        FindingKind::Mismatch,
    )
    .await?;
    check_defect(
        &fx,
        "d_byte",
        "UPDATE users SET email = 'X' || substr(email, 2) WHERE id = 3",
        &[Gate::Digests],
        "public.users",
        FindingKind::Mismatch,
    )
    .await?;

    // The broken foreign key, named with its orphan value.
    let fk_db = fx.pg.params().with_dbname("d_fk");
    let fks = foreign_key_checks(&fk_db.connect().await?).await?;
    let verdict = verify::referential_integrity(&fks, &verify::Amcheck::NotRequested);
    assert!(verdict.findings[0].detail.contains("(ghost)"), "{verdict}");
    fx.pg.stop().await?;
    Ok(())
}

mod kubernetes {
    //! The Kubernetes restore against the simulated cluster: order, replicas, refusal, dry run,
    //! idempotence and the message of a wait that runs out.

    use std::collections::BTreeMap;
    use std::time::Duration;

    use anyhow::{Result, ensure};
    use harness::cluster::Cluster;
    use harness::cluster::sim::{SimOptions, SimProvider};
    use harness::restore::{
        DataRestorer, KubeRestoreOptions, KubeRestorePlan, PlanRoles, RestoreError, Waits,
        restore_kubernetes,
    };
    use harness::verify;
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::core::GroupVersionKind;
    use serde_json::{Value, json};

    /// Records the data steps, and checks at the database step that PostgreSQL is Ready.
    struct Recorder {
        client: kube::Client,
        namespace: String,
        calls: Vec<String>,
    }

    impl DataRestorer for Recorder {
        async fn restore_database(
            &mut self,
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let sts: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
            let ready = sts
                .get("postgresql")
                .await?
                .status
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            self.calls
                .push(format!("database (postgresql ready replicas: {ready})"));
            Ok(())
        }

        async fn restore_redis(&mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            self.calls.push("redis".to_owned());
            Ok(())
        }
    }

    fn workload(kind: &str, name: &str, app: &str, replicas: i32) -> Value {
        json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
                "template": {"metadata": {"labels": {"app": app}},
                    "spec": {"containers": [{"name": "main", "image": format!("rehearsal/stand-in-{app}:1")}]}}}})
    }

    /// A backup of the namespace, taken after the quiesce (user-service at 0 replicas).
    fn backup() -> Vec<Value> {
        let mut sts = workload("StatefulSet", "postgresql", "postgresql", 1);
        sts["spec"]["serviceName"] = json!("postgresql-service");
        sts["spec"]["template"]["spec"]["volumes"] =
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": "postgresql-pvc"}}]);
        vec![
            workload(
                "Deployment",
                "prod-user-service-deployment",
                "user-service",
                0,
            ),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "prod-user-service"},
                "spec": {"selector": {"app": "user-service"}, "ports": [{"port": 8001}]}}),
            workload("Deployment", "prod-redis-deployment", "redis", 1),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "postgresql-service"},
                "spec": {"selector": {"app": "postgresql"}, "ports": [{"port": 5432}]}}),
            sts,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "postgresql-pvc"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"}, "data": {"LOG_LEVEL": "info"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "postgresql-secret"}, "type": "Opaque",
                "data": {"password": "cmVoZWFyc2Fs"}}),
        ]
    }

    fn options() -> KubeRestoreOptions {
        let waits = Waits {
            pvc_bound: Duration::from_secs(30),
            workload_ready: Duration::from_secs(60),
            pods_ready: Duration::from_secs(60),
            crd_established: Duration::from_secs(10),
            data_restore: Duration::from_secs(120),
            poll: Duration::from_millis(100),
        };
        KubeRestoreOptions {
            waits,
            ..KubeRestoreOptions::default()
        }
    }

    async fn observed(
        client: &kube::Client,
        plan: &KubeRestorePlan,
    ) -> Result<(Vec<Value>, Vec<Value>)> {
        let mut applied = Vec::new();
        let mut restored = Vec::new();
        for object in plan
            .steps
            .iter()
            .flat_map(|s| &s.manifests)
            .filter(|o| o["kind"] != "Namespace")
        {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let gvk =
                GroupVersionKind::gvk(group, version, object["kind"].as_str().unwrap_or_default());
            let (resource, _) = kube::discovery::pinned_kind(client, &gvk).await?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &plan.namespace, &resource);
            let live = api
                .get(object["metadata"]["name"].as_str().unwrap_or_default())
                .await?;
            restored.push(serde_json::to_value(live)?);
            applied.push(object.clone());
        }
        Ok((applied, restored))
    }

    #[tokio::test]
    async fn restores_into_the_simulated_cluster_in_order() -> Result<()> {
        let cluster = SimProvider::create(SimOptions::default()).await?;
        let client = cluster.client().await?;
        let ns = "titanium-prod";
        let replicas = BTreeMap::from([("prod-user-service-deployment".to_owned(), 2)]);
        let plan =
            KubeRestorePlan::new(&backup(), ns, "backup-1", &replicas, &PlanRoles::default())?;

        // A dry run changes nothing: not even the namespace appears.
        let mut data = Recorder {
            client: client.clone(),
            namespace: ns.to_owned(),
            calls: Vec::new(),
        };
        let dry = restore_kubernetes(
            &client,
            &plan,
            &mut data,
            &KubeRestoreOptions {
                dry_run: true,
                ..options()
            },
        )
        .await?;
        ensure!(dry.created.len() == 9 && dry.replaced.is_empty(), "{dry:?}");
        ensure!(data.calls.is_empty());
        ensure!(
            Api::<Namespace>::all(client.clone())
                .get_opt(ns)
                .await?
                .is_none(),
            "a dry run created the namespace"
        );

        let report = restore_kubernetes(&client, &plan, &mut data, &options()).await?;
        ensure!(
            data.calls == ["database (postgresql ready replicas: 1)", "redis"],
            "{:?}",
            data.calls
        );
        ensure!(
            report.pods_ready_seconds.is_some() && report.db_restore_seconds.is_some(),
            "{report:?}"
        );
        ensure!(
            report.unconsumed_claims.is_empty(),
            "postgresql-pvc is mounted, so it must be Bound: {report:?}"
        );
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(client.clone(), ns);
        let phase = claims
            .get("postgresql-pvc")
            .await?
            .status
            .and_then(|s| s.phase);
        ensure!(
            phase.as_deref() == Some("Bound"),
            "postgresql-pvc is {phase:?}"
        );
        let users: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let user = users.get("prod-user-service-deployment").await?;
        ensure!(
            user.spec.replicas == Some(2),
            "recorded replicas come back: {:?}",
            user.spec.replicas
        );
        ensure!(
            user.status.and_then(|s| s.ready_replicas) == Some(2),
            "both user-service replicas Ready"
        );

        // The rollback decision over what the cluster shows now.
        let pods = harness::restore::observe_pods(&client, ns).await?;
        ensure!(
            pods.len() == 4 && pods.iter().all(|p| p.ready && p.restarts == 0),
            "{pods:?}"
        );
        let inputs = verify::RollbackInputs {
            pods: Some(pods),
            pods_ready_wait: report.pods_ready_seconds.map(Duration::from_secs_f64),
            db_restore: report.db_restore_seconds.map(Duration::from_secs_f64),
            total: Some(Duration::from_secs_f64(report.seconds)),
            ..verify::RollbackInputs::default()
        };
        let decision = verify::decide(&inputs, &verify::RollbackThresholds::default());
        // No criterion crossed; what this test does not observe (data gates, health, load)
        // is not assessed, so the decision is not a proceed, and what it fed is assessed.
        ensure!(decision.reasons.is_empty(), "{decision:?}");
        ensure!(!decision.proceed(), "{decision:?}");
        for fed in [
            verify::Criterion::PodRestarts,
            verify::Criterion::PodsNotReady,
            verify::Criterion::DbRestoreDuration,
            verify::Criterion::TotalDuration,
        ] {
            ensure!(!decision.not_assessed.contains(&fed), "{fed}: {decision:?}");
        }

        // What is in the cluster equals what was applied (the backup with its recorded replicas).
        let (applied, restored) = observed(&client, &plan).await?;
        let verdict = verify::kubernetes_objects(&applied, &restored);
        ensure!(verdict.passed, "{verdict}");

        // Again, from the same backup: allowed, everything replaced, same result.
        let again = restore_kubernetes(&client, &plan, &mut data, &options()).await?;
        ensure!(
            again.created.is_empty() && again.replaced.len() == 9,
            "{again:?}"
        );
        let (_, restored) = observed(&client, &plan).await?;
        ensure!(verify::kubernetes_objects(&applied, &restored).passed);

        // Another backup over this namespace is refused without force, and nothing changes.
        let other = KubeRestorePlan::new(
            &backup(),
            ns,
            "backup-2",
            &BTreeMap::new(),
            &PlanRoles::default(),
        )?;
        let err = restore_kubernetes(&client, &other, &mut data, &options())
            .await
            .unwrap_err();
        ensure!(matches!(err, RestoreError::NotEmpty { .. }), "{err}");
        ensure!(
            err.to_string().contains("backup-1")
                && err
                    .to_string()
                    .contains("Deployment prod-user-service-deployment"),
            "{err}"
        );
        ensure!(
            users
                .get("prod-user-service-deployment")
                .await?
                .spec
                .replicas
                == Some(2)
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_names_what_and_why() -> Result<()> {
        let cluster = SimProvider::create(SimOptions::default()).await?;
        let client = cluster.client().await?;
        let stuck = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "stuck"},
            "spec": {"storageClassName": "no-such-class", "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}});
        let plan = KubeRestorePlan::new(
            &[stuck],
            "waits",
            "b",
            &BTreeMap::new(),
            &PlanRoles::default(),
        )?;
        let mut data = Recorder {
            client: client.clone(),
            namespace: "waits".to_owned(),
            calls: Vec::new(),
        };
        let mut opts = options();
        opts.waits.pvc_bound = Duration::from_secs(2);
        let err = restore_kubernetes(&client, &plan, &mut data, &opts)
            .await
            .unwrap_err();
        let text = err.to_string();
        ensure!(matches!(err, RestoreError::NotReady { .. }), "{text}");
        ensure!(
            text.contains("PersistentVolumeClaim waits/stuck") && text.contains("phase Pending"),
            "{text}"
        );
        ensure!(
            data.calls.is_empty(),
            "the database step must not run before its volume is bound"
        );

        // A namespace holding workloads of unknown origin is refused.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "waits");
        let foreign: Deployment =
            serde_json::from_value(workload("Deployment", "foreign", "foreign", 1))?;
        deployments.create(&PostParams::default(), &foreign).await?;
        let ns: Api<Namespace> = Api::all(client.clone());
        ns.patch(
            "waits",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {harness::restore::RESTORE_ANNOTATION: null}}}),
            ),
        )
        .await?;
        let err = restore_kubernetes(&client, &plan, &mut data, &opts)
            .await
            .unwrap_err();
        ensure!(
            matches!(err, RestoreError::NotEmpty { .. })
                && err.to_string().contains("Deployment foreign"),
            "{err}"
        );
        Ok(())
    }
}

/// The whole database path: the backup engine writes a backup, the restore reads it from its
/// manifest, both archives restore, and the gates hold against the facts recorded in the
/// backup's snapshot.
#[tokio::test]
async fn restores_what_the_backup_engine_wrote() -> Result<()> {
    use harness::backup::{BackupOptions, PgSource, backup};
    use harness::restore::{RestoreInputs, RestoreMethod};

    let pg = LocalPostgres::start(LocalOptions::titanium()).await?;
    let params = pg.params();
    load_dataset(&params.connect().await?, &SPEC).await?;
    let dir = ScratchDir::new("restore-test-", "restore test backup")?;
    let mut options = BackupOptions::new(dir.path());
    options.name = Some("rehearsal-1".to_owned());
    options.postgres = Some(PgSource::Direct {
        params: params.clone(),
        tools: pg.tools().clone(),
    });
    let report = backup(&options).await.context("backup")?;

    for (db, method) in [
        ("from_custom", RestoreMethod::Custom),
        ("from_plain", RestoreMethod::Sql),
        ("from_csv", RestoreMethod::Csv),
    ] {
        let inputs = RestoreInputs::from_backup(&report.dir, method).await?;
        ensure!(
            inputs.backup_id == "rehearsal-1" && !inputs.tables.is_empty(),
            "{inputs:?}"
        );
        let input = inputs
            .database
            .clone()
            .context("the backup has a database")?;
        create_database(&params, db).await?;
        let target = params.with_dbname(db);
        pg.tools().psql_file(&target, &schema_sql_path()).await?;
        restore_database(pg.tools(), &target, &input, &DbRestoreOptions::default()).await?;
        let client = target.connect().await?;
        let tables = table_facts_as(&client, inputs.digest_version).await?;
        let sequences = sequence_facts(&client).await?;
        for verdict in [
            verify::row_counts(&inputs.tables, &tables),
            verify::digests(&inputs.tables, &tables),
            verify::sequences(&inputs.sequences, &sequences),
        ] {
            ensure!(verdict.passed, "{db}: {verdict}");
        }
    }
    let err = RestoreInputs::from_backup(dir.path(), RestoreMethod::Custom)
        .await
        .unwrap_err();
    ensure!(matches!(err, RestoreError::Rejected { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_corrupt_rdb_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("dump.rdb");
    std::fs::write(&rdb, b"REDIS0011 this is not an RDB").unwrap();
    // The target is never contacted: the scratch server refuses the file first.
    let err = harness::restore::replay_rdb(&rdb, "redis://127.0.0.1:1/")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("could not load") && err.to_string().contains("dump.rdb"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Nothing destructive before the inputs are verified.

/// A backup written by the backup engine from a small dataset in `pg`'s `titanium` database,
/// and a database `target` on the same server holding other data (an init script's tables
/// filled with another dataset): what a restore must not lose.
async fn engine_backup_and_target(
    pg: &LocalPostgres,
    dest: &Path,
    target: &str,
) -> Result<(harness::backup::BackupReport, ConnParams)> {
    use harness::backup::{BackupOptions, PgSource, backup};
    let params = pg.params();
    load_dataset(&params.connect().await?, &DatasetSpec::new(3, 40, 240)).await?;
    let mut options = BackupOptions::new(dest);
    options.name = Some("safety-1".to_owned());
    options.postgres = Some(PgSource::Direct {
        params: params.clone(),
        tools: pg.tools().clone(),
    });
    options.local_tools = Some(pg.tools().clone());
    let report = backup(&options).await.context("backup")?;
    create_database(&params, target).await?;
    let target = params.with_dbname(target);
    pg.tools().psql_file(&target, &schema_sql_path()).await?;
    load_dataset(&target.connect().await?, &DatasetSpec::new(5, 30, 150)).await?;
    Ok((report, target))
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// A copy of the backup at `dir/name` with its custom dump damaged by `damage`.
fn damaged_copy(
    backup: &Path,
    dir: &Path,
    name: &str,
    damage: fn(&[u8]) -> Vec<u8>,
) -> Result<PathBuf> {
    let copy = dir.join(name);
    copy_tree(backup, &copy)?;
    let dump = copy.join("postgres/titanium.dump");
    let bytes = std::fs::read(&dump)?;
    std::fs::write(&dump, damage(&bytes))?;
    Ok(copy)
}

fn flip_two_thirds(bytes: &[u8]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    let at = bytes.len() * 2 / 3;
    bytes[at] ^= 0x01;
    bytes
}

fn truncate_two_thirds(bytes: &[u8]) -> Vec<u8> {
    bytes[..bytes.len() * 2 / 3].to_vec()
}

/// The issue's data loss: a byte flipped two thirds into the dump (and, separately, the dump
/// cut at two thirds), restored with force over a database holding data. The restore is
/// refused before anything is dropped, naming the file, and the target is unchanged (every
/// table's row count and digest). Both layers are fed the defect: the backup's checksums
/// (`RestoreInputs::from_backup`, what the CLI uses) and, for a caller that hands
/// `restore_database` the archive alone, the read-through of the whole archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_dump_is_refused_before_the_target_is_touched() -> Result<()> {
    let pg = LocalPostgres::start(LocalOptions::titanium()).await?;
    let dest = ScratchDir::new("restore-test-safety-", "restore safety backup")?;
    let (report, target) = engine_backup_and_target(&pg, dest.path(), "holds_data").await?;
    let before = table_facts(&target.connect().await?).await?;
    ensure!(
        before.iter().any(|t| t.name == "posts" && t.rows == 150),
        "{before:?}"
    );

    let forced = DbRestoreOptions {
        force: true,
        ..Default::default()
    };
    for (name, damage) in [
        ("flipped", flip_two_thirds as fn(&[u8]) -> Vec<u8>),
        ("truncated", truncate_two_thirds),
    ] {
        let copy = damaged_copy(&report.dir, dest.path(), name, damage)?;
        // The backup's checksums: refused, naming the file.
        let err = harness::restore::RestoreInputs::from_backup(
            &copy,
            harness::restore::RestoreMethod::Custom,
        )
        .await
        .expect_err("a damaged dump must be refused");
        let RestoreError::Rejected { reasons, .. } = &err else {
            anyhow::bail!("{name}: expected a rejection, got {err}");
        };
        ensure!(
            reasons[0].starts_with("file postgres/titanium.dump"),
            "{name}: {err}"
        );

        // The archive alone, as a caller without a manifest hands it over: still refused
        // before anything is dropped.
        let dump = copy.join("postgres/titanium.dump");
        let input = DbRestoreInput {
            archive: DbArchive::Custom(dump.clone()),
            backup_id: "safety-1".to_owned(),
            recorded_sha256: None,
        };
        let err = restore_database(pg.tools(), &target, &input, &forced)
            .await
            .expect_err("a damaged dump must not be restored");
        ensure!(
            matches!(&err, RestoreError::BadArchive { path, .. } if *path == dump),
            "{name}: {err}"
        );
        ensure!(err.to_string().contains("nothing was changed"), "{err}");

        // With the digest its backup recorded (as the scenarios and `from_backup` hand it
        // over, skipping the read-through): refused by the digest.
        let recorded = report
            .manifest
            .sha256_of("postgres/titanium.dump")
            .context("the manifest lists the dump")?
            .to_owned();
        let input = DbRestoreInput {
            recorded_sha256: Some(recorded.clone()),
            ..input
        };
        let err = restore_database(pg.tools(), &target, &input, &forced)
            .await
            .expect_err("a damaged dump must not be restored");
        ensure!(
            matches!(&err, RestoreError::BadArchive { path, detail, .. }
                if *path == dump && detail.contains(&format!("not the {recorded} its backup recorded"))),
            "{name}: {err}"
        );
        ensure!(err.to_string().contains("nothing was changed"), "{err}");

        let after = table_facts(&target.connect().await?).await?;
        ensure!(after == before, "{name}: the target changed: {after:?}");
    }

    // The intact dump with its recorded digest: proven by the digest, not read through, and
    // restored.
    let intact = DbRestoreInput {
        archive: DbArchive::Custom(report.dir.join("postgres/titanium.dump")),
        backup_id: "safety-1".to_owned(),
        recorded_sha256: report
            .manifest
            .sha256_of("postgres/titanium.dump")
            .map(str::to_owned),
    };
    let done = restore_database(pg.tools(), &target, &intact, &forced).await?;
    ensure!(done.restored, "{}", done.plan);
    ensure!(
        matches!(
            &done.plan.archive_proof,
            Some(harness::restore::ArchiveProof::RecordedSha256 { sha256 })
                if Some(sha256.as_str()) == report.manifest.sha256_of("postgres/titanium.dump")
        ),
        "{:?}",
        done.plan.archive_proof
    );
    ensure!(done.plan.to_string().contains("SHA-256"), "{}", done.plan);
    Ok(())
}

/// The CSV path (the runbook's 방법 C) with force over a database holding data: a CSV file
/// changed after the backup is refused by the backup's checksums; handed over without a
/// manifest, a header that is not the recorded columns is refused before anything is dropped,
/// and a row the server rejects (two thirds in) rolls the whole transaction back. The target
/// is unchanged every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_csv_restore_costs_nothing() -> Result<()> {
    use harness::restore::{RestoreInputs, RestoreMethod};
    let pg = LocalPostgres::start(LocalOptions::titanium()).await?;
    let dest = ScratchDir::new("restore-test-csv-", "restore csv backup")?;
    let (report, target) = engine_backup_and_target(&pg, dest.path(), "holds_data").await?;
    let before = table_facts(&target.connect().await?).await?;
    let forced = DbRestoreOptions {
        force: true,
        ..Default::default()
    };
    let posts = "postgres/csv/public.posts.csv";

    // Changed after the backup: the checksums name the file.
    let copy = dest.path().join("edited");
    copy_tree(&report.dir, &copy)?;
    let text = std::fs::read_to_string(copy.join(posts))?;
    std::fs::write(copy.join(posts), text.replacen(",", ";", 2))?;
    let err = RestoreInputs::from_backup(&copy, RestoreMethod::Csv)
        .await
        .expect_err("an edited CSV must be refused");
    ensure!(err.to_string().contains(posts), "{err}");

    // Without the manifest's checksums, from the good backup's CSV inputs.
    let inputs = RestoreInputs::from_backup(&report.dir, RestoreMethod::Csv).await?;
    let good = inputs.database.clone().context("a database")?;
    let DbArchive::Csv(csv) = &good.archive else {
        anyhow::bail!("not a CSV archive: {:?}", good.archive);
    };
    ensure!(
        csv.tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            == ["users", "posts"],
        "parents first: {:?}",
        csv.tables
    );
    let posts_path = csv.tables[1].path.clone();
    let original = std::fs::read_to_string(&posts_path)?;
    let (header, rows) = original.split_once('\n').context("a header row")?;
    for (name, text, expected) in [
        (
            "header",
            format!("{}\n{rows}", header.replacen("id", "ident", 1)),
            "header row",
        ),
        (
            "row",
            {
                let lines: Vec<&str> = rows.lines().collect();
                let at = lines.len() * 2 / 3;
                let mut lines: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
                lines[at] = format!("not-a-number{}", &lines[at][lines[at].find(',').unwrap()..]);
                format!("{header}\n{}\n", lines.join("\n"))
            },
            "rolled back",
        ),
    ] {
        std::fs::write(&posts_path, &text)?;
        let err = restore_database(pg.tools(), &target, &good, &forced)
            .await
            .expect_err("a damaged CSV must not be restored");
        ensure!(err.to_string().contains(expected), "{name}: {err}");
        let after = table_facts(&target.connect().await?).await?;
        ensure!(after == before, "{name}: the target changed: {after:?}");
    }
    // The same inputs, repaired, restore (so the failures above were the damage).
    std::fs::write(&posts_path, &original)?;
    restore_database(pg.tools(), &target, &good, &forced).await?;
    let after = table_facts_as(&target.connect().await?, inputs.digest_version).await?;
    for verdict in [
        verify::row_counts(&inputs.tables, &after),
        verify::digests(&inputs.tables, &after),
    ] {
        ensure!(verdict.passed, "{verdict}");
    }
    Ok(())
}

/// `restore` refuses what `verify` refuses, with the same reasons (shared code): a `.partial`
/// backup, one with `FAILED.txt`, one whose manifest does not match its checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_what_verify_refuses_with_the_same_reason() -> Result<()> {
    use harness::backup::{VerifyOptions, verify_backup};
    let pg = LocalPostgres::start(LocalOptions::titanium()).await?;
    let dest = ScratchDir::new("restore-test-refuse-", "restore refusal backup")?;
    let (report, target) = engine_backup_and_target(&pg, dest.path(), "holds_data").await?;
    let before = table_facts(&target.connect().await?).await?;

    let partial = dest.path().join("copy.partial");
    copy_tree(&report.dir, &partial)?;
    let failed = dest.path().join("failed");
    copy_tree(&report.dir, &failed)?;
    std::fs::write(failed.join("FAILED.txt"), "pg_dump failed: disk full\n")?;
    let edited = dest.path().join("edited");
    copy_tree(&report.dir, &edited)?;
    let manifest = edited.join("MANIFEST.json");
    let text = std::fs::read_to_string(&manifest)?;
    std::fs::write(&manifest, text.replacen("\"rows\": ", "\"rows\": 1", 1))?;

    let options = VerifyOptions {
        scratch: pg.params(),
        tools: pg.tools().clone(),
        decryption: None,
    };
    for (dir, expected) in [
        (&partial, "an incomplete .partial backup"),
        (&failed, "FAILED.txt: pg_dump failed: disk full"),
        (&edited, "MANIFEST.json sha256 (edited manifest)"),
    ] {
        let err = harness::restore::RestoreInputs::from_backup(
            dir,
            harness::restore::RestoreMethod::Custom,
        )
        .await
        .expect_err("refused");
        let RestoreError::Rejected { reasons, .. } = &err else {
            anyhow::bail!("{}: expected a rejection, got {err}", dir.display());
        };
        ensure!(reasons.iter().any(|r| r.contains(expected)), "{err}");
        let verdict = verify_backup(dir, &options).await?;
        ensure!(!verdict.passed, "verify passed {}", dir.display());
        let found: Vec<String> = verdict.findings.iter().map(ToString::to_string).collect();
        for reason in reasons {
            ensure!(
                found.contains(reason),
                "restore's reason {reason:?} is not verify's: {found:?}"
            );
        }
    }
    ensure!(table_facts(&target.connect().await?).await? == before);
    Ok(())
}

/// A load that fails after the drops (here: the archive's owner role does not exist on the
/// target) says that the target is half restored and how to finish; running the restore again
/// (no force needed: the target is marked `restoring`) finishes it.
#[tokio::test]
async fn a_load_failing_after_the_drops_says_so_and_a_rerun_finishes() -> Result<()> {
    let pg = LocalPostgres::start(LocalOptions::titanium()).await?;
    let admin = pg.params().connect().await?;
    // One statement per call: CREATE/DROP DATABASE cannot run in a (multi-statement) transaction.
    admin.batch_execute("CREATE ROLE ghost_owner").await?;
    admin.batch_execute("CREATE DATABASE owned_src").await?;
    let src = pg.params().with_dbname("owned_src");
    src.connect()
        .await?
        .batch_execute(
            "CREATE TABLE kept (id int PRIMARY KEY); INSERT INTO kept SELECT generate_series(1, 50); \
             ALTER TABLE kept OWNER TO ghost_owner",
        )
        .await?;
    let dir = ScratchDir::new("restore-test-half-", "half restore dump")?;
    let dump = dir.path().join("owned.dump");
    pg_dump(&pg, &src, &["-Fc"], &dump).await?;
    admin.batch_execute("DROP DATABASE owned_src").await?;
    admin.batch_execute("DROP ROLE ghost_owner").await?;
    create_database(&pg.params(), "half").await?;
    let target = pg.params().with_dbname("half");
    target
        .connect()
        .await?
        .batch_execute("CREATE TABLE old (id int); INSERT INTO old VALUES (1)")
        .await?;

    let input = DbRestoreInput {
        archive: DbArchive::Custom(dump.clone()),
        backup_id: "owned-1".to_owned(),
        recorded_sha256: None,
    };
    let err = restore_database(
        pg.tools(),
        &target,
        &input,
        &DbRestoreOptions {
            force: true,
            ..Default::default()
        },
    )
    .await
    .expect_err("the owner role is missing");
    let text = format!("{:#}", anyhow::Error::from(err));
    for needle in [
        "half restored",
        "restoring owned-1",
        "Run the same restore again",
        "option 1",
        "ghost_owner",
    ] {
        ensure!(text.contains(needle), "{needle:?} not in: {text}");
    }
    let plan =
        plan_database_restore(pg.tools(), &target, &input, &DbRestoreOptions::default()).await?;
    ensure!(
        plan.state
            == TargetState::Interrupted {
                backup_id: "owned-1".to_owned()
            },
        "{plan}"
    );
    let options = DbRestoreOptions {
        no_owner: true,
        ..Default::default()
    };
    let done = restore_database(pg.tools(), &target, &input, &options).await?;
    ensure!(done.restored);
    let rows: i64 = target
        .connect()
        .await?
        .query_one("SELECT count(*) FROM kept", &[])
        .await?
        .get(0);
    ensure!(rows == 50, "{rows}");
    Ok(())
}

/// Every wait has a deadline and a message naming what it waited for: with a deadline of
/// zero the first wait (pg_restore listing the archive) is stopped and named, and nothing
/// changed.
#[tokio::test]
async fn a_wait_past_its_deadline_names_what_it_waited_for() -> Result<()> {
    let f = fixture().await?;
    let target = f.target("deadline", true).await?;
    let err = f
        .restore(
            &target,
            &f.input(),
            &DbRestoreOptions {
                deadline_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect_err("nothing finishes in 0 s");
    ensure!(
        matches!(&err, RestoreError::TimedOut { tool, what, .. }
            if tool == "pg_restore" && what.contains("titanium.dump")),
        "{err}"
    );
    let plan =
        plan_database_restore(f.pg.tools(), &target, &f.input(), &Default::default()).await?;
    ensure!(
        matches!(plan.state, TargetState::EmptyTables { .. }),
        "{plan}"
    );
    Ok(())
}

/// The dry run is a plan a person reads: what was checked, then what would be dropped,
/// loaded and marked, in order.
#[tokio::test]
async fn the_plan_reads_as_steps_in_order() -> Result<()> {
    let f = fixture().await?;
    let target = f.target("plan", true).await?;
    let plan =
        plan_database_restore(f.pg.tools(), &target, &f.input(), &Default::default()).await?;
    let text = plan.to_string();
    let order = [
        "target now holds:",
        "would, in order:",
        "1. read the archive through",
        "2. mark the database `restoring backup-1`, drop",
        "- table public.users",
        "3. load the archive in its sections: the schema (--section=pre-data), each table's rows converted here to binary COPY",
        "4. mark the database `restored backup-1`",
    ];
    let mut at = 0;
    for step in order {
        let found = text[at..]
            .find(step)
            .with_context(|| format!("{step:?} missing or out of order in:\n{text}"))?;
        at += found;
    }
    ensure!(!text.contains('{') && !text.contains("Custom("), "{text}");
    Ok(())
}

/// Every column type the restore converts to binary `COPY` on the client, at its edges (BC
/// dates, infinities, a timestamptz printed with a seconds offset, escapes and control
/// characters, NULLs, integer limits), comes back equal to the source; and so do the tables
/// that take the other paths: a type the converter leaves alone (numeric, float8, jsonb:
/// text), a value it cannot read (bytea printed in escape form: text after a first binary
/// attempt), and an `--inserts` archive (pg_restore). Each table's path is asserted, so a
/// converter that silently sent everything as text would fail here too.
#[tokio::test]
async fn every_converted_type_and_every_fallback_restores_exactly() -> Result<()> {
    let pg = LocalPostgres::start(LocalOptions::titanium()).await?;
    let admin = pg.params();
    create_database(&admin, "types_src").await?;
    let source = admin.with_dbname("types_src");
    let client = source.connect().await?;
    client
        .batch_execute(
            r#"ALTER DATABASE types_src SET timezone = 'America/St_Johns';
             CREATE TABLE conv (i2 int2, i4 int4, i8 int8, b bool, t text, v varchar(20),
                 c char(5), d date, ts timestamp, tz timestamptz, u uuid, by bytea);
             INSERT INTO conv VALUES
               (-32768, -2147483648, -9223372036854775808, true,
                E'tab\there\nnew\\back\x01\x7f\r\b\f\x0b', 'ünïcødé 한국어', 'ab',
                '4713-01-01 BC', '4713-01-01 00:00:00 BC', '1850-06-01 12:00:00+00',
                'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff10'),
               (32767, 2147483647, 9223372036854775807, false, '', '', '',
                'infinity', 'infinity', '-infinity', '00000000-0000-0000-0000-000000000000', ''),
               (0, 0, 0, NULL, '\N', 'N', 'x    ', '0001-01-01', '0001-01-01 00:00:00.000001',
                '2000-02-29 23:59:59.5-03:30', NULL, '\x5c4e'),
               (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
               (1, 2, 3, true, 'x', 'y', 'z', '5874897-12-31', '294276-12-31 23:59:59.999999',
                '1999-12-31 23:59:59.999999+05:45', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '\x');
             INSERT INTO conv SELECT g % 30000 - 15000, g * 7919, g::int8 * 104729 * 104729, g % 2 = 0,
                 repeat(chr(32 + g % 90), g % 40) || E'\t' || g, left(md5(g::text), g % 20), 'q',
                 date '1900-01-01' + g * 37, timestamp '1601-01-01' + g * interval '9 days 1.000017 s',
                 timestamptz '1850-01-01 00:00:00+00' + g * interval '13 days 3 min 0.25 s',
                 md5(g::text)::uuid, decode(md5(g::text), 'hex')
               FROM generate_series(1, 20000) g;
             CREATE TABLE other (n numeric, f float8, j jsonb);
             INSERT INTO other SELECT g / 7.0, g / 3.0, jsonb_build_object('g', g) FROM generate_series(1, 500) g;
"#,
        )
        .await?;
    // bytea printed in escape form (a server or database setting pg_dump does not override):
    // its own database, so that only this table is dumped that way.
    create_database(&admin, "escaped_src").await?;
    let escaped_source = admin.with_dbname("escaped_src");
    let escaped_client = escaped_source.connect().await?;
    escaped_client
        .batch_execute(
            "ALTER DATABASE escaped_src SET bytea_output = 'escape';
             CREATE TABLE escaped (b bytea);
             INSERT INTO escaped SELECT decode(md5(g::text), 'hex') FROM generate_series(1, 500) g;",
        )
        .await?;
    let dir = ScratchDir::new("restore-types-", "type round-trip archives")?;
    let copy_archive = dir.path().join("types.dump");
    let inserts_archive = dir.path().join("types-inserts.dump");
    let escaped_archive = dir.path().join("escaped.dump");
    pg_dump(&pg, &source, &["-Fc"], &copy_archive).await?;
    pg_dump(&pg, &source, &["-Fc", "--inserts"], &inserts_archive).await?;
    pg_dump(&pg, &escaped_source, &["-Fc"], &escaped_archive).await?;

    let restore = |archive: &Path, target: &str| {
        let input = DbRestoreInput {
            archive: DbArchive::Custom(archive.to_owned()),
            backup_id: "types".to_owned(),
            recorded_sha256: None,
        };
        let params = admin.with_dbname(target);
        let pg = &pg;
        async move { restore_database(pg.tools(), &params, &input, &DbRestoreOptions::default()).await }
    };
    use harness::restore::LoadedAs;
    let how = |report: &harness::restore::DbRestoreReport| -> Vec<(String, LoadedAs)> {
        let mut v: Vec<_> = report
            .tables
            .iter()
            .map(|t| {
                (
                    t.entry.split(' ').nth(3).unwrap_or("").to_owned(),
                    t.loaded_as,
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };

    create_database(&admin, "types_copy").await?;
    let report = restore(&copy_archive, "types_copy").await?;
    assert_eq!(
        how(&report),
        [
            ("conv".to_owned(), LoadedAs::Binary),
            ("other".to_owned(), LoadedAs::Text)
        ]
    );
    assert_eq!(
        report
            .tables
            .iter()
            .find(|t| t.entry.contains("conv"))
            .map(|t| t.rows),
        Some(20_005)
    );
    create_database(&admin, "types_inserts").await?;
    let report = restore(&inserts_archive, "types_inserts").await?;
    assert_eq!(
        how(&report),
        [
            ("conv".to_owned(), LoadedAs::PgRestore),
            ("other".to_owned(), LoadedAs::PgRestore)
        ]
    );
    create_database(&admin, "types_escaped").await?;
    let report = restore(&escaped_archive, "types_escaped").await?;
    assert_eq!(how(&report), [("escaped".to_owned(), LoadedAs::Text)]);

    for (target, tables) in [
        ("types_copy", &["conv", "other"][..]),
        ("types_inserts", &["conv", "other"]),
        ("types_escaped", &["escaped"]),
    ] {
        let restored = admin.with_dbname(target).connect().await?;
        let original = if target == "types_escaped" {
            &escaped_client
        } else {
            &client
        };
        for table in tables {
            let (want, got) = (
                digest(original, table).await?,
                digest(&restored, table).await?,
            );
            ensure!(
                want == got,
                "{target}.{table}: source {want}, restored {got}"
            );
        }
    }
    drop((client, escaped_client));
    pg.stop().await?;
    drop(dir);
    Ok(())
}

/// Rows and an md5 of a table's rows as text, with the same settings whoever asks.
async fn digest(client: &tokio_postgres::Client, table: &str) -> Result<String> {
    let sql = format!(
        "SET timezone = 'UTC'; SET bytea_output = 'hex'; SET extra_float_digits = 3;
         SELECT count(*)::text || ' ' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '')
         FROM {table} x"
    );
    let rows = client.simple_query(&sql).await?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .context("a digest row")
}
