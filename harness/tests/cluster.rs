//! Cluster providers short of a real cluster: the kind command lines, kind's error paths with a
//! missing or failing `kind`, kubeconfig parsing and contexts, and the destroy gate.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use harness::cluster::kind::{self, KindCluster, KindOptions};
use harness::cluster::kubeconfig::{self, KubeconfigCluster};
use harness::cluster::{Cluster, ClusterError, DestroyGate};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fake `kind` that records its arguments, one invocation per line, and exits with `code`.
fn fake_kind(dir: &Path, code: i32, output: &str) -> (PathBuf, PathBuf) {
    let log = dir.join("calls.log");
    let bin = dir.join("kind");
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\necho '{output}'\nexit {code}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (bin, log)
}

fn options(bin: &Path, config: &Path) -> KindOptions {
    KindOptions {
        kind_bin: bin.to_path_buf(),
        ..KindOptions::new(config)
    }
}

fn calls(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn unique_names_do_not_collide_and_are_dns_safe() {
    let a = kind::unique_name("rehearsal");
    let b = kind::unique_name("rehearsal");
    assert_ne!(a, b);
    assert!(
        a.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{a}"
    );
}

#[test]
fn command_lines_are_exactly_what_kind_expects() {
    let mut opts = KindOptions::new("kind-config/single-node.yaml");
    opts.name = "rehearsal-a".into();
    let kc = Path::new("/tmp/kc");
    assert_eq!(
        kind::create_args(&opts, kc).join(" "),
        "create cluster --name rehearsal-a --config kind-config/single-node.yaml --kubeconfig /tmp/kc --wait 300s"
    );
    assert_eq!(
        kind::load_args("rehearsal-a", "titanium:dev").join(" "),
        "load docker-image titanium:dev --name rehearsal-a"
    );
    assert_eq!(
        kind::delete_args("rehearsal-a", kc).join(" "),
        "delete cluster --name rehearsal-a --kubeconfig /tmp/kc"
    );
}

#[tokio::test]
async fn create_load_and_destroy_run_kind_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, log) = fake_kind(dir.path(), 0, "ok");
    let config = repo().join("kind-config/single-node.yaml");
    let mut cluster = match KindCluster::create(options(&bin, &config)).await {
        Err(ClusterError::DockerUnavailable { .. }) => {
            harness::testing::unavailable(
                "Docker is not running (kind needs it; ci/setup starts it)",
            );
            return;
        }
        other => other.expect("create"),
    };
    let name = cluster.name().to_owned();
    assert_eq!(cluster.context(), format!("kind-{name}"));
    cluster
        .load_images(&["titanium:dev".to_owned()])
        .await
        .unwrap();
    cluster.destroy().await.unwrap();
    cluster.destroy().await.unwrap(); // a second destroy is a no-op
    let kc = cluster.kubeconfig().display().to_string();
    drop(cluster); // already destroyed: no second delete
    assert_eq!(
        calls(&log),
        [
            format!(
                "create cluster --name {name} --config {} --kubeconfig {kc} --wait 300s",
                config.display()
            ),
            format!("load docker-image titanium:dev --name {name}"),
            format!("delete cluster --name {name} --kubeconfig {kc}"),
        ]
    );
}

#[tokio::test]
async fn drop_deletes_a_cluster_that_was_not_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, log) = fake_kind(dir.path(), 0, "ok");
    let cluster = match KindCluster::create(options(
        &bin,
        &repo().join("kind-config/single-node.yaml"),
    ))
    .await
    {
        Err(ClusterError::DockerUnavailable { .. }) => {
            harness::testing::unavailable(
                "Docker is not running (kind needs it; ci/setup starts it)",
            );
            return;
        }
        other => other.expect("create"),
    };
    let name = cluster.name().to_owned();
    let kubeconfig_dir = cluster.dir().to_path_buf();
    drop(cluster);
    assert!(
        calls(&log)
            .last()
            .unwrap()
            .starts_with(&format!("delete cluster --name {name}"))
    );
    assert!(
        !kubeconfig_dir.exists(),
        "the kubeconfig directory must be removed"
    );
}

#[tokio::test]
async fn a_failing_create_shows_kinds_own_output() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, _) = fake_kind(
        dir.path(),
        1,
        "ERROR: failed to create cluster: node(s) already exist",
    );
    match KindCluster::create(options(&bin, &repo().join("kind-config/single-node.yaml"))).await {
        Err(ClusterError::Command {
            output, command, ..
        }) => {
            assert!(output.contains("node(s) already exist"), "{output}");
            assert!(command.contains("create cluster"), "{command}");
        }
        Err(ClusterError::DockerUnavailable { .. }) => harness::testing::unavailable(
            "Docker is not running (kind needs it; ci/setup starts it)",
        ),
        other => panic!("expected kind's failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_kind_names_what_to_install() {
    let mut opts = KindOptions::new(repo().join("kind-config/single-node.yaml"));
    opts.kind_bin = PathBuf::from("kind-not-installed-here");
    let err = KindCluster::create(opts).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::ProgramMissing { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("install kind"), "{err}");
}

#[tokio::test]
async fn a_missing_docker_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, log) = fake_kind(dir.path(), 0, "ok");
    let mut opts = options(&bin, &repo().join("kind-config/single-node.yaml"));
    opts.docker_host = format!("unix://{}/no-docker.sock", dir.path().display());
    let err = KindCluster::create(opts).await.unwrap_err();
    assert!(err.to_string().contains("Docker is not reachable"), "{err}");
    assert!(calls(&log).is_empty(), "kind must not run without Docker");
}

#[test]
fn kind_configs_in_the_repo_are_valid_and_bad_ones_are_named() {
    for file in ["single-node.yaml", "prod-3-node.yaml"] {
        kind::check_config(&repo().join("kind-config").join(file)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: Pod\napiVersion: v1\n").unwrap();
    assert!(
        kind::check_config(&bad)
            .unwrap_err()
            .to_string()
            .contains("expected kind: Cluster")
    );
    std::fs::write(&bad, "kind: [unclosed\n").unwrap();
    assert!(
        kind::check_config(&bad)
            .unwrap_err()
            .to_string()
            .contains("not valid YAML")
    );
    assert!(kind::check_config(&dir.path().join("missing.yaml")).is_err());
}

const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: solid
clusters:
- name: solid
  cluster: { server: "http://127.0.0.1:1" }
- name: other
  cluster: { server: "http://127.0.0.1:2" }
contexts:
- name: solid
  context: { cluster: solid, user: admin }
- name: other
  context: { cluster: other, user: admin }
users:
- name: admin
  user: { token: not-a-real-token }
"#;

#[test]
fn kubeconfig_contexts_resolve_or_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    std::fs::write(&path, KUBECONFIG).unwrap();
    let current = KubeconfigCluster::attach(
        Some(path.clone()),
        None,
        vec!["titanium-prod".into()],
        DestroyGate::Refuse,
    )
    .unwrap();
    assert_eq!(current.name(), "solid");
    let other = KubeconfigCluster::attach(
        Some(path.clone()),
        Some("other"),
        vec![],
        DestroyGate::Refuse,
    )
    .unwrap();
    assert_eq!(other.context(), "other");
    let err = KubeconfigCluster::attach(
        Some(path.clone()),
        Some("prod"),
        vec![],
        DestroyGate::Refuse,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("`prod` not found") && err.to_string().contains("solid, other"),
        "{err}"
    );
}

#[test]
fn malformed_and_missing_kubeconfigs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    std::fs::write(&path, "apiVersion: v1\nclusters: [unclosed\n").unwrap();
    let err = kubeconfig::read(&path).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let missing = dir.path().join("nope");
    assert!(
        kubeconfig::read(&missing)
            .unwrap_err()
            .to_string()
            .contains("nope")
    );
}

#[tokio::test]
async fn an_unconfirmed_destroy_of_an_existing_cluster_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    std::fs::write(&path, KUBECONFIG).unwrap();
    let mut cluster = KubeconfigCluster::attach(
        Some(path.clone()),
        None,
        vec!["titanium-prod".into()],
        DestroyGate::Refuse,
    )
    .unwrap();
    let err = cluster.destroy().await.unwrap_err();
    assert!(
        matches!(err, ClusterError::DestroyRefused { .. }),
        "{err:?}"
    );
    let wrong = DestroyGate::Confirmed {
        cluster: "other".into(),
    };
    let mut cluster =
        KubeconfigCluster::attach(Some(path), None, vec!["titanium-prod".into()], wrong).unwrap();
    assert!(matches!(
        cluster.destroy().await.unwrap_err(),
        ClusterError::DestroyRefused { .. }
    ));
}

mod against_the_simulator {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use harness::cluster::sim::{SimOptions, SimProvider};
    use harness::preflight::{CheckStatus, Permission, PreflightOptions};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, ListParams};

    use super::*;

    /// The `simcluster` binary, built on demand when this test runs on its own.
    fn simcluster_bin() -> PathBuf {
        let bin = repo().join("target/debug/simcluster");
        if !bin.is_file() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-q", "-p", "simcluster", "--bin", "simcluster"])
                .current_dir(repo())
                .status()
                .unwrap();
            assert!(status.success(), "could not build simcluster");
        }
        bin
    }

    /// `simcluster serve` as a separate process, as if it were a remote cluster.
    struct Served {
        child: Child,
        kubeconfig: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Served {
        fn start(extra: &[&str]) -> Self {
            use std::os::unix::fs::PermissionsExt as _;
            let dir = tempfile::tempdir().unwrap();
            // `serve` refuses a state dir the PostgreSQL pods' account cannot reach.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
            let kubeconfig = dir.path().join("kubeconfig");
            let child = Command::new(simcluster_bin())
                .args(["serve", "--name", "remote-solid", "--state-dir"])
                .arg(dir.path().join("state"))
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !kubeconfig.exists() {
                assert!(
                    Instant::now() < deadline,
                    "simcluster serve wrote no kubeconfig"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Self {
                child,
                kubeconfig,
                _dir: dir,
            }
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn the_sim_provider_serves_a_cluster_and_destroy_leaves_nothing() {
        let mut cluster = SimProvider::create(SimOptions {
            kind_config: Some(repo().join("kind-config/prod-3-node.yaml")),
            ..SimOptions::default()
        })
        .await
        .expect("start the simulator");
        let client = cluster.client().await.unwrap();
        let namespaces = Api::<Namespace>::all(client)
            .list(&ListParams::default())
            .await
            .unwrap();
        assert!(
            namespaces
                .items
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some("default"))
        );
        let state = cluster.state_dir().to_path_buf();
        assert!(state.exists());
        cluster.destroy().await.expect("destroy");
        assert!(!state.exists(), "state directory survived destroy");
        assert!(
            cluster.client().await.is_err() || {
                let client = cluster.client().await.unwrap();
                Api::<Namespace>::all(client)
                    .list(&ListParams::default())
                    .await
                    .is_err()
            },
            "the API still answers after destroy"
        );
    }

    #[tokio::test]
    async fn kubeconfig_provider_attaches_to_a_served_cluster_and_never_destroys_unconfirmed() {
        let served = Served::start(&[]);
        let mut cluster = KubeconfigCluster::attach(
            Some(served.kubeconfig.clone()),
            None,
            vec!["default".into()],
            DestroyGate::Refuse,
        )
        .unwrap();
        assert_eq!(cluster.name(), "remote-solid");
        let client = cluster.client().await.unwrap();
        let api = Api::<Namespace>::all(client);
        assert!(api.get_opt("default").await.unwrap().is_some());
        assert!(matches!(
            cluster.destroy().await,
            Err(ClusterError::DestroyRefused { .. })
        ));
        assert!(
            api.get_opt("default").await.unwrap().is_some(),
            "a refused destroy must not delete anything"
        );
    }

    fn permission_statuses(
        report: &harness::preflight::PreflightReport,
    ) -> Vec<(String, CheckStatus)> {
        report
            .checks
            .iter()
            .filter(|c| c.name.starts_with("permission:"))
            .map(|c| (c.name.clone(), c.status))
            .collect()
    }

    #[tokio::test]
    async fn preflight_permissions_are_green_when_allowed_and_red_when_one_is_denied() {
        for (deny, expect_denied) in [
            (None, None),
            (
                Some("create:statefulsets.apps:titanium-prod"),
                Some("create statefulsets.apps -n titanium-prod"),
            ),
        ] {
            let args: Vec<&str> = deny.map(|d| vec!["--deny", d]).unwrap_or_default();
            let served = Served::start(&args);
            let cluster = KubeconfigCluster::attach(
                Some(served.kubeconfig.clone()),
                None,
                vec![],
                DestroyGate::Refuse,
            )
            .unwrap();
            let mut options = PreflightOptions::runbook("titanium-prod", std::env::temp_dir());
            options.permissions = Permission::runbook("titanium-prod");
            let report = harness::preflight::run(cluster.client().await.unwrap(), &options).await;
            for (name, status) in permission_statuses(&report) {
                let denied = expect_denied.is_some_and(|d| name.ends_with(d));
                assert_eq!(
                    status,
                    if denied {
                        CheckStatus::Fail
                    } else {
                        CheckStatus::Pass
                    },
                    "{name}"
                );
            }
            if expect_denied.is_some() {
                assert!(!report.go(), "a denied permission must be NO-GO:\n{report}");
            }
        }
    }
}

mod deploy_on_the_simulator {
    use harness::cluster::sim::{SimOptions, SimProvider};
    use harness::deploy::{apply_kustomize, overlay};
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::batch::v1::CronJob;
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, ListParams};

    use super::*;

    #[tokio::test]
    async fn the_titanium_manifests_apply_server_side_with_the_real_kubectl() {
        let mut cluster = SimProvider::create(SimOptions::default()).await.unwrap();
        apply_kustomize(&cluster, &overlay("sim"))
            .await
            .expect("kubectl apply --server-side");
        let client = cluster.client().await.unwrap();
        let ns = "titanium-prod";
        let mut deployments: Vec<String> = Api::<Deployment>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|d| {
                format!(
                    "{}={}",
                    d.metadata.name.unwrap_or_default(),
                    d.spec.replicas.unwrap_or(1)
                )
            })
            .collect();
        deployments.sort();
        assert_eq!(
            deployments,
            [
                "load-generator=2",
                "prod-api-gateway-deployment=2",
                "prod-auth-service-deployment=2",
                "prod-blog-service-deployment=2",
                "prod-redis-deployment=1",
                "prod-user-service-deployment=2",
            ]
        );
        assert!(
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt("postgresql")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            Api::<CronJob>::namespaced(client.clone(), ns)
                .get_opt("postgresql-backup")
                .await
                .unwrap()
                .is_some()
        );
        let services: Vec<String> = Api::<Service>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        for svc in [
            "postgresql-service",
            "prod-api-gateway-service",
            "prod-user-service",
            "prod-auth-service",
            "prod-blog-service",
            "prod-redis-service",
        ] {
            assert!(
                services.iter().any(|s| s == svc),
                "{svc} missing from {services:?}"
            );
        }
        // Applying again is a no-op, as server-side apply should be.
        apply_kustomize(&cluster, &overlay("sim"))
            .await
            .expect("second apply");
        cluster.destroy().await.unwrap();
    }
}

/// Rollback criterion 4 against the simulator: node usage through its metrics API, and a
/// claim driven over 90 % of its request by a file written into its volume.
mod resources_on_the_simulator {
    use std::time::{Duration, Instant};

    use harness::cluster::sim::{SimOptions, SimProvider};
    use harness::facts::resources::{SampleWindow, observe_nodes, observe_pvcs};
    use harness::verify::{self, Criterion, RollbackThresholds};
    use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
    use kube::api::{Api, AttachParams, PostParams};

    use super::*;

    const NS: &str = "resources";

    async fn create<K>(api: &Api<K>, object: serde_json::Value)
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(object).unwrap(),
        )
        .await
        .unwrap();
    }

    async fn wait_running(pods: &Api<Pod>, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pod = pods.get(name).await.unwrap();
            if harness::facts::pod_ready(pod.status.as_ref()) {
                return;
            }
            assert!(Instant::now() < deadline, "pod {name} not Ready: {pod:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn judge(observed: &harness::facts::ResourceObservation) -> verify::ResourceJudgement {
        verify::judge_resources(Some(observed), &RollbackThresholds::default())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn node_usage_and_a_claim_filled_over_90_percent() {
        let mut cluster = SimProvider::create(SimOptions::default()).await.unwrap();
        let client = cluster.client().await.unwrap();
        create(
            &Api::<Namespace>::all(client.clone()),
            serde_json::json!({"metadata": {"name": NS}}),
        )
        .await;
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
        create(&claims, serde_json::json!({
            "metadata": {"name": "small"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
        }))
        .await;
        // A claim no pod mounts: listed, not measured.
        create(&claims, serde_json::json!({
            "metadata": {"name": "idle"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
        }))
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        create(&pods, serde_json::json!({
            "metadata": {"name": "writer"},
            "spec": {
                "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "small"}}],
            },
        }))
        .await;
        wait_running(&pods, "writer").await;

        // Empty: assessed and within the limit.
        let window = SampleWindow {
            samples: 3,
            span: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
        };
        let nodes = observe_nodes(&client, window).await.unwrap();
        assert!(nodes.len() >= 3, "{nodes:#?}");
        for s in &nodes {
            // The machine's real figures: some memory in use, never more than it has.
            assert!(s.memory_share() > 0.0 && s.memory_share() < 1.0, "{s}");
            assert!(s.cpu_share() >= 0.0 && s.cpu_share() <= 1.05, "{s}");
        }
        let pvcs = observe_pvcs(&client, NS).await.unwrap();
        let small = pvcs.iter().find(|p| p.claim == "resources/small").unwrap();
        assert_eq!(small.requested_bytes, 1024 * 1024);
        assert!(small.share().unwrap() < 0.9, "{small}");
        let idle = pvcs.iter().find(|p| p.claim == "resources/idle").unwrap();
        assert_eq!(idle.used_bytes, None, "{idle}");
        let observed = harness::facts::ResourceObservation {
            nodes: Ok(nodes.clone()),
            pvcs: Ok(pvcs),
        };
        let calm = judge(&observed);
        assert!(
            !calm
                .reasons
                .iter()
                .any(|r| r.criterion == Criterion::PvcUsage),
            "{calm:#?}"
        );

        // 950 KiB into the 1 MiB claim: over 90 %, the criterion goes red with the bytes.
        let params = AttachParams::default()
            .stdout(true)
            .stderr(true)
            .stdin(false);
        let mut dd = pods
            .exec(
                "writer",
                [
                    "dd",
                    "if=/dev/zero",
                    "of=/data/fill",
                    "bs=1024",
                    "count=950",
                ],
                &params,
            )
            .await
            .unwrap();
        let status = dd.take_status().unwrap().await.unwrap();
        assert_eq!(status.status.as_deref(), Some("Success"), "{status:?}");
        dd.join().await.unwrap();
        let pvcs = observe_pvcs(&client, NS).await.unwrap();
        let full = harness::facts::ResourceObservation {
            nodes: Ok(nodes),
            pvcs: Ok(pvcs),
        };
        let red = judge(&full);
        let reason = red
            .reasons
            .iter()
            .find(|r| r.criterion == Criterion::PvcUsage)
            .unwrap_or_else(|| panic!("no pvc_usage reason: {red:#?}"));
        let shown = reason.to_string();
        assert!(
            shown.contains("claim resources/small: ")
                && shown.contains("of 1048576 bytes requested"),
            "{shown}"
        );
        assert!(
            shown.contains("du -sk /data in resources/writer"),
            "{shown}"
        );
        // The decision rolls back for it, with the same reason.
        let decision = verify::decide(
            &verify::RollbackInputs {
                resources: Some(full),
                ..verify::RollbackInputs::default()
            },
            &RollbackThresholds::default(),
        );
        assert_eq!(decision.action, verify::Action::RollBack, "{decision:#?}");
        assert!(
            decision.explain().iter().any(|l| l == &shown),
            "{decision:#?}"
        );
        cluster.destroy().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn metrics_that_cannot_be_read_leave_the_criterion_not_assessed() {
        let mut cluster = SimProvider::create(SimOptions {
            deny: vec!["list:nodes.metrics.k8s.io".parse().unwrap()],
            ..SimOptions::default()
        })
        .await
        .unwrap();
        let client = cluster.client().await.unwrap();
        let window = SampleWindow {
            samples: 3,
            span: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
        };
        let err = observe_nodes(&client, window)
            .await
            .expect_err("the metrics API refuses the list");
        let why = format!("{:#}", anyhow::Error::from(err));
        assert!(
            why.contains("list nodes.metrics.k8s.io") && why.contains("forbidden"),
            "{why}"
        );
        let observed = harness::facts::ResourceObservation {
            nodes: Err(why),
            pvcs: Ok(observe_pvcs(&client, "default").await.unwrap()),
        };
        let decision = verify::decide(
            &verify::RollbackInputs {
                resources: Some(observed.clone()),
                ..verify::RollbackInputs::default()
            },
            &RollbackThresholds::default(),
        );
        assert!(!decision.proceed());
        assert!(
            decision.not_assessed.contains(&Criterion::NodeCpu)
                && decision.not_assessed.contains(&Criterion::NodeMemory)
                && !decision.not_assessed.contains(&Criterion::PvcUsage),
            "{decision:#?}"
        );
        let j = judge(&observed);
        assert!(!j.passed());
        assert!(
            j.not_run.iter().any(|n| n.contains("forbidden")),
            "the report says why: {j:#?}"
        );
        cluster.destroy().await.unwrap();
    }
}
