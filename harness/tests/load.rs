//! The post-restore gates of `harness::load` against the stand-in Titanium services on a real
//! PostgreSQL and redis-server: green on a healthy stack, red for each injected fault
//! (errors, latency, a lost database).

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use harness::load::{HealthGate, LoadError, LoadGate, LoadVerdict, Thresholds};
use harness::pg::{LocalOptions, LocalPostgres, PostgresProvider};
use titanium::{FaultSettings, RedisServer, Role, Stack, StackOptions};

/// One gate run at a time: parallel load runs on two cores would measure each other.
fn serial() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// redis-server and the PostgreSQL server binaries, by the one rule of `harness::testing`.
fn prerequisites() -> bool {
    let redis = harness::testing::require("redis-server").is_some();
    let pg = match harness::pg::PgTools::discover() {
        Ok(_) => true,
        Err(err) => {
            harness::testing::unavailable(&format!("PostgreSQL server binaries: {err}"));
            false
        }
    };
    redis && pg
}

struct Titanium {
    stack: Stack,
    _redis: RedisServer,
    pg: Option<LocalPostgres>,
}

impl Titanium {
    /// PostgreSQL with the schema and a small dataset, Redis, and the four services.
    async fn start() -> anyhow::Result<Titanium> {
        let pg = LocalPostgres::start(LocalOptions::titanium())
            .await
            .context("PostgreSQL")?;
        let db = pg.params().connect().await?;
        db.batch_execute(
            "INSERT INTO users (username, email, password_hash) \
               SELECT 'user' || i, 'user' || i || '@example.com', \
                      'sha256$0001$6fc4c352c5c44fb1ce97c0c72c4549e42ab22ac7c0c64e6dfc6f7bf9d69c4424' \
               FROM generate_series(1, 20) AS i; \
             INSERT INTO posts (title, content, author) \
               SELECT 'post ' || i, repeat('text ', 40), 'user' || (i % 20 + 1) \
               FROM generate_series(1, 60) AS i;",
        )
        .await?;
        let redis = RedisServer::start().await.context("redis-server")?;
        let stack = Stack::start(StackOptions {
            database: pg.params().config(),
            redis_url: redis.url(),
            db_pool_size: 4,
        })
        .await
        .context("services")?;
        Ok(Titanium {
            stack,
            _redis: redis,
            pg: Some(pg),
        })
    }

    fn faults(&self, role: Role, latency_ms: u64, error_percent: u8) {
        self.stack.faults(role).set(FaultSettings {
            latency: Duration::from_millis(latency_ms),
            error_percent,
        });
    }

    async fn lose_database(&mut self) {
        self.pg
            .take()
            .expect("running")
            .stop()
            .await
            .expect("stop PostgreSQL");
    }

    /// The runbook's health check, scaled down: 5 probes 20 ms apart, slow above 250 ms.
    fn health_gate(&self) -> HealthGate {
        HealthGate {
            probes: 5,
            interval: Duration::from_millis(20),
            slow_after: Duration::from_millis(250),
            timeout: Duration::from_secs(3),
            ..HealthGate::new(self.stack.gateway_url())
        }
    }

    /// A short quick-test run with the k6 thresholds.
    fn quick_gate(&self) -> LoadGate {
        LoadGate {
            users: 2,
            hatch_rate: 2,
            run_time: Duration::from_secs(2),
            think_time: Duration::from_millis(20),
            thresholds: Thresholds::k6_defaults(5.0),
            ..LoadGate::quick(self.stack.gateway_url())
        }
    }
}

fn show(verdict: &LoadVerdict) -> String {
    let mut out = format!(
        "passed={} findings={:?}\n",
        verdict.passed, verdict.findings
    );
    for r in std::iter::once(&verdict.figures.overall).chain(&verdict.figures.per_request) {
        out += &format!(
            "  {:<18} n={:<5} failed={:<4} rps={:>7.1} p50={:>7.1}ms p95={:>7.1}ms p99={:>7.1}ms statuses={:?}\n",
            r.name, r.requests, r.failures, r.rps, r.p50_ms, r.p95_ms, r.p99_ms, r.statuses
        );
    }
    out
}

fn assert_finding(findings: &[harness::verify::Finding], needle: &str) {
    assert!(
        findings.iter().any(|f| f.to_string().contains(needle)),
        "no finding mentions {needle:?}: {findings:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_pass_on_a_healthy_stack_and_save_the_report() {
    if !prerequisites() {
        return;
    }
    let _serial = serial().lock().await;
    let titanium = Titanium::start().await.unwrap();

    let health = titanium.health_gate().run().await.unwrap();
    assert!(health.passed, "{health:#?}");
    assert_eq!(health.endpoints.len(), 3);
    assert!(
        health
            .endpoints
            .iter()
            .all(|e| e.failures == 0 && e.statuses.get(&200) == Some(&5)),
        "{health:#?}"
    );

    let verdict = titanium.quick_gate().run().await.unwrap();
    assert!(verdict.passed, "{}", show(&verdict));
    let table = verdict.to_string();
    assert!(
        table.starts_with("load gate PASSED")
            && table.contains("GET read post")
            && table.contains("ok   http_req_failed: rate<0.01"),
        "{table}"
    );
    let names: Vec<&str> = verdict
        .figures
        .per_request
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    for name in ["GET list users", "GET list posts", "GET read post"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(verdict.figures.overall.requests > 20, "{}", show(&verdict));

    // load-test.js: readers and authors, with goose's HTML report.
    let reports = tempfile::tempdir().unwrap();
    let full = LoadGate {
        users: 4,
        hatch_rate: 4,
        run_time: Duration::from_secs(3),
        think_time: Duration::from_millis(20),
        thresholds: Thresholds::parse(&[
            "http_req_duration: p(95)<500",
            "http_req_failed: rate<0.01",
            "http_reqs: rate>=5",
            "http_reqs{name:POST create post}: count>0",
            "http_req_duration{name:POST login}: p(99)<1000",
        ])
        .unwrap(),
        report_dir: Some(reports.path().join("reports")),
        ..LoadGate::full(titanium.stack.gateway_url())
    };
    let verdict = full.run().await.unwrap();
    assert!(verdict.passed, "{}", show(&verdict));
    let names: Vec<&str> = verdict
        .figures
        .per_request
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    for name in [
        "POST sign up",
        "POST login",
        "POST create post",
        "GET list posts",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let report = verdict.report.as_deref().expect("a report");
    assert!(report.starts_with(reports.path()));
    let html = std::fs::read_to_string(report).unwrap();
    assert!(
        html.contains("<html") && html.contains("create post"),
        "not goose's report: {}",
        &html[..html.len().min(300)]
    );
    let db = titanium
        .pg
        .as_ref()
        .unwrap()
        .params()
        .connect()
        .await
        .unwrap();
    let created: i64 = db.query_one("SELECT count(*) FROM posts p JOIN users u ON u.username = p.author WHERE u.username LIKE 'gate-%'", &[]).await.unwrap().get(0);
    let reported = verdict
        .figures
        .per_request
        .iter()
        .find(|r| r.name == "POST create post")
        .unwrap();
    assert_eq!(
        created as u64,
        reported.requests - reported.failures,
        "every created post is in the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_fail_when_a_service_returns_errors() {
    if !prerequisites() {
        return;
    }
    let _serial = serial().lock().await;
    let titanium = Titanium::start().await.unwrap();
    titanium.faults(Role::BlogService, 0, 20);

    let health = titanium.health_gate().run().await.unwrap();
    assert!(!health.passed, "{health:#?}");
    assert_finding(&health.findings, "/blog/health: 1 of 5 probes failed");
    assert_eq!(
        health.findings.len(),
        1,
        "only the blog service fails: {:?}",
        health.findings
    );
    // Structured, not flattened: the endpoint, the kind, the limit and what was measured.
    let f = &health.findings[0];
    assert_eq!(f.subject, "/blog/health");
    assert_eq!(f.kind, harness::verify::FindingKind::OverLimit);
    assert_eq!(f.actual.as_deref(), Some("20 % failed"), "{f:?}");
    assert!(
        f.expected
            .as_deref()
            .is_some_and(|e| e.starts_with("at most")),
        "{f:?}"
    );

    let verdict = titanium.quick_gate().run().await.unwrap();
    assert!(!verdict.passed, "{}", show(&verdict));
    assert_finding(&verdict.findings, "http_req_failed: rate<0.01");
    assert!(
        verdict
            .figures
            .overall
            .statuses
            .get(&500)
            .copied()
            .unwrap_or(0)
            > 0,
        "{}",
        show(&verdict)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_fail_when_a_service_is_slow() {
    if !prerequisites() {
        return;
    }
    let _serial = serial().lock().await;
    let titanium = Titanium::start().await.unwrap();
    titanium.faults(Role::UserService, 600, 0);

    let health = titanium.health_gate().run().await.unwrap();
    assert!(!health.passed, "{health:#?}");
    assert_finding(
        &health.findings,
        "/api/users/health: 5 of 5 probes slower than",
    );
    assert!(
        health.to_string().starts_with("health gate FAILED"),
        "{health}"
    );
    assert_eq!(health.findings.len(), 1, "{:?}", health.findings);

    let verdict = titanium.quick_gate().run().await.unwrap();
    assert!(!verdict.passed, "{}", show(&verdict));
    assert_finding(&verdict.findings, "http_req_duration: p(95)<500");
    let users = verdict
        .figures
        .per_request
        .iter()
        .find(|r| r.name == "GET list users")
        .unwrap();
    assert!(users.p50_ms >= 600.0, "{}", show(&verdict));
    assert_eq!(
        verdict.figures.overall.failures,
        0,
        "slow, not failing: {}",
        show(&verdict)
    );
    // The evidence names the slow endpoint, and the rollback decision gives the failed gate as
    // a reason with its threshold, observed value and slowest endpoint.
    assert_finding(&verdict.findings, "slowest endpoint GET list users: p50 ");
    let decision = harness::verify::decide(
        &harness::verify::RollbackInputs {
            load: Some(verdict.sample()),
            ..harness::verify::RollbackInputs::default()
        },
        &harness::verify::RollbackThresholds::runbook(),
    );
    let reason = decision
        .reasons
        .iter()
        .find(|r| r.criterion == harness::verify::Criterion::LoadThresholds)
        .unwrap_or_else(|| panic!("no load reason: {decision:#?}"));
    let text = reason.to_string();
    for needle in [
        "http_req_duration: p(95)<500",
        "observed ",
        "slowest endpoint GET list users (p50 ",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    assert!(!decision.proceed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_fail_when_the_database_is_gone() {
    if !prerequisites() {
        return;
    }
    let _serial = serial().lock().await;
    let mut titanium = Titanium::start().await.unwrap();
    titanium.lose_database().await;

    let health = titanium.health_gate().run().await.unwrap();
    assert!(!health.passed);
    for path in ["/api/users/health", "/blog/health", "/api/auth/health"] {
        assert_finding(&health.findings, &format!("{path}: 5 of 5 probes failed"));
    }
    assert!(
        health
            .endpoints
            .iter()
            .all(|e| e.statuses.get(&503) == Some(&5)),
        "{health:#?}"
    );

    let verdict = titanium.quick_gate().run().await.unwrap();
    assert!(!verdict.passed, "{}", show(&verdict));
    assert_finding(&verdict.findings, "http_req_failed: rate<0.01");
    assert_eq!(
        verdict.figures.overall.failures,
        verdict.figures.overall.requests,
        "{}",
        show(&verdict)
    );
}

#[tokio::test]
async fn gates_refuse_settings_they_cannot_honour() {
    let remote = LoadGate::quick("http://192.0.2.10:8000")
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(remote, LoadError::NotLoopback { ref host } if host == "192.0.2.10"),
        "{remote}"
    );
    let remote = HealthGate::new("http://example.com")
        .run()
        .await
        .unwrap_err();
    assert!(
        remote.to_string().contains("not a loopback address"),
        "{remote}"
    );
    let bad = LoadGate {
        users: 0,
        ..LoadGate::quick("http://127.0.0.1:9")
    }
    .run()
    .await
    .unwrap_err();
    assert!(bad.to_string().contains("users"), "{bad}");
    let bad = LoadGate {
        run_time: Duration::from_secs(7200),
        ..LoadGate::quick("http://127.0.0.1:9")
    }
    .run()
    .await
    .unwrap_err();
    assert!(bad.to_string().contains("run_time"), "{bad}");
    let bad = LoadGate::quick("ftp://127.0.0.1/").run().await.unwrap_err();
    assert!(bad.to_string().contains("scheme"), "{bad}");
    let bad = Thresholds::parse(&["http_req_duration: p(95)<soon"]).unwrap_err();
    assert!(bad.to_string().contains("p(95)<soon"), "{bad}");
    // A closed port is not an error: the verdict is red and says why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gate = HealthGate {
        probes: 2,
        interval: Duration::ZERO,
        ..HealthGate::new(format!("http://{closed}"))
    };
    let verdict = gate.run().await.unwrap();
    assert!(!verdict.passed);
    assert_finding(&verdict.findings, "2 of 2 probes failed");
    assert_finding(&verdict.findings, "last error");
}
