//! The `local` provider against the real thing: a control plane that authenticates and
//! authorizes (RBAC denies an unbound user), and a whole cluster whose pods resolve Services
//! through the cluster DNS stand-in, keep data on a provisioned volume across pods, and leave
//! nothing behind (processes, mounts, bridge, iptables chains, directories), on destroy and on
//! drop; and the sweep that removes what a SIGKILLed node left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::cluster::Cluster;
use harness::cluster::local::{
    self, ControlPlane, ControlPlaneOptions, LocalCluster, LocalOptions,
};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};

/// The binaries, or `None` after reporting why the test cannot run.
fn prerequisites(whole_cluster: bool) -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        harness::testing::unavailable("the local provider needs root");
        return None;
    }
    let mut tools = vec!["etcd", "openssl"];
    if whole_cluster {
        tools.extend(["containerd", "ctr", "runc", "iptables", "ip"]);
    }
    for tool in tools {
        harness::testing::require(tool)?;
    }
    let bin = match local::bin_dir(None) {
        Ok(bin) => bin,
        Err(err) => {
            harness::testing::unavailable(&err.to_string());
            return None;
        }
    };
    if whole_cluster && let Err(err) = local::images_dir(None).and_then(|_| local::titanium(None)) {
        harness::testing::unavailable(&err.to_string());
        return None;
    }
    Some(bin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_authenticates_and_rbac_denies_an_unbound_user() {
    let Some(bin_dir) = prerequisites(false) else {
        return;
    };
    let plane = ControlPlane::start(ControlPlaneOptions {
        bin_dir,
        context: "cp-test".to_owned(),
        timeout: Duration::from_secs(90),
    })
    .await
    .unwrap();
    println!(
        "control plane ready in {:.1} s",
        plane.started_in().as_secs_f64()
    );
    let admin = plane.client().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(admin);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"kube-system".to_owned()), "{names:?}");

    let nobody = plane.dir().join("nobody.kubeconfig");
    plane
        .user_kubeconfig(&nobody, "rehearsal-nobody", &["rehearsal-team"])
        .unwrap();
    let client = harness::cluster::kubeconfig::client_for(&nobody, Some("cp-test"))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client, "kube-system");
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status.message.contains("rehearsal-nobody"),
                "{}",
                status.message
            );
        }
        other => panic!("an unbound user must be forbidden, got {other:?}"),
    }

    let dir = plane.dir().to_owned();
    let url = plane.url().to_owned();
    let pids = plane.pids();
    assert_eq!(
        pids.len(),
        4,
        "etcd, API server, controller manager, scheduler"
    );
    plane.stop().unwrap();
    assert!(!dir.exists(), "{} removed", dir.display());
    let address = url.trim_start_matches("https://");
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "{url} refuses"
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} gone"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_control_plane_stops_its_processes_and_removes_its_directory() {
    let Some(bin_dir) = prerequisites(false) else {
        return;
    };
    if harness::keep::keep_requested() {
        harness::testing::unavailable("HARNESS_KEEP keeps what this test checks is gone");
        return;
    }
    let plane = ControlPlane::start(ControlPlaneOptions {
        bin_dir,
        context: "drop-test".to_owned(),
        timeout: Duration::from_secs(90),
    })
    .await
    .unwrap();
    let (dir, url, pids) = (plane.dir().to_owned(), plane.url().to_owned(), plane.pids());
    assert!(dir.join("admin.kubeconfig").is_file());
    drop(plane);
    assert!(!dir.exists(), "{} removed on drop", dir.display());
    assert!(
        std::net::TcpStream::connect(url.trim_start_matches("https://")).is_err(),
        "{url} refuses after drop"
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} gone after drop"
        );
    }
}

fn manifest<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

/// A pod that runs `script` in the Debian-based redis image (it has a shell and getent) with
/// the claim `data` at /data, and returns its log once it succeeded.
async fn run_pod(pods: &Api<Pod>, name: &str, script: &str) -> String {
    let pod: Pod = manifest(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": "redis:7-alpine", "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        }
    }));
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pod = pods.get(name).await.unwrap();
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        match phase.as_str() {
            "Succeeded" => break,
            "Failed" => {
                let log = pods
                    .logs(name, &LogParams::default())
                    .await
                    .unwrap_or_default();
                panic!("pod {name} failed: {log}");
            }
            _ if Instant::now() > deadline => panic!("pod {name} still {phase}: {:?}", pod.status),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    pods.logs(name, &LogParams::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_resolves_services_keeps_volumes_and_leaves_nothing() {
    if prerequisites(true).is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
    let mut cluster = LocalCluster::create(LocalOptions::default()).await.unwrap();
    println!(
        "cluster ready in {:.1} s",
        cluster.started_in().as_secs_f64()
    );
    let client = cluster.client().await.unwrap();

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = manifest(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "probe-target"},
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": "none"}},
    }));
    let ip = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let claim: PersistentVolumeClaim = manifest(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }));
    claims.create(&PostParams::default(), &claim).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // The short name, through the search path the kubelet writes, as the Titanium services
    // resolve `postgresql-service`.
    let log = run_pod(
        &pods,
        "writer",
        "getent hosts probe-target && echo kept-across-pods > /data/marker",
    )
    .await;
    assert!(
        log.starts_with(&format!("{ip} ")),
        "DNS answer {log:?}, cluster IP {ip}"
    );
    let claim = claims.get("data").await.unwrap();
    assert_eq!(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
        Some(local::STORAGE_CLASS),
        "the default class"
    );
    pods.delete("writer", &DeleteParams::default())
        .await
        .unwrap();
    let unserved = if ip == "10.96.255.254" {
        "10.96.255.253"
    } else {
        "10.96.255.254"
    };
    let log = run_pod(
        &pods,
        "reader",
        // And the API server through the `kubernetes` Service, as in-cluster clients (the
        // ingress gateway) find it: the node's relay and the Endpoints naming it.
        &"cat /data/marker; getent hosts nope || echo no-such-service; \
         bash -c 'exec 3<>/dev/tcp/$KUBERNETES_SERVICE_HOST/$KUBERNETES_SERVICE_PORT' \
         && echo api-reachable; \
         timeout 10 bash -c 'exec 3<>/dev/tcp/$0/8001' $UNSERVED 2>/dev/null; \
         case $? in 0) echo reached-something;; 124) echo timed-out;; *) echo refused;; esac"
            .replace("$UNSERVED", unserved),
    )
    .await;
    // The last line: a cluster IP no Service holds is refused on the node, not routed off
    // it to whatever answers there (this machine's network answers every port).
    assert_eq!(
        log,
        "kept-across-pods\nno-such-service\napi-reachable\nrefused\n"
    );

    // Rollback criterion 4 without a metrics-server: node usage from the kubelet's Summary
    // API, the pods' cgroup only. A pod that spins for 25 s shows in it.
    let window = harness::facts::resources::SampleWindow {
        samples: 3,
        span: Duration::from_secs(15),
        deadline: Duration::from_secs(90),
    };
    let spin = "end=$(($(date +%s) + 25)); while [ $(date +%s) -lt $end ]; do :; done; echo spun";
    let (log, samples) = tokio::join!(
        run_pod(&pods, "spinner", spin),
        harness::facts::resources::observe_nodes(&client, window)
    );
    assert_eq!(log, "spun\n");
    let samples = samples.unwrap();
    assert!(samples.len() >= 3, "{samples:?}");
    for s in &samples {
        assert_eq!(s.source, harness::facts::resources::KUBELET_SUMMARY, "{s}");
        assert!(
            s.memory_bytes > 0.0 && s.memory_allocatable_bytes > s.memory_bytes,
            "{s}"
        );
    }
    let busiest = samples.iter().map(|s| s.cpu_millicores).fold(0.0, f64::max);
    assert!(
        busiest > 500.0,
        "the spinning pod is not in the pods cgroup: {samples:?}"
    );

    let dirs = cluster.dirs().to_vec();
    let pids = cluster.pids().to_vec();
    let started = Instant::now();
    cluster.destroy().await.unwrap();
    println!("destroyed in {:.1} s", started.elapsed().as_secs_f64());
    for dir in &dirs {
        assert!(!dir.exists(), "{} removed", dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&dir.display().to_string()),
            "nothing mounted under {}",
            dir.display()
        );
    }
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} gone"
        );
    }
    assert!(
        !Path::new("/sys/class/net").join(local::BRIDGE).exists(),
        "bridge gone"
    );
    let nat = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        !nat.contains("KUBE-") && !nat.contains("CNI-"),
        "no chains left:\n{nat}"
    );
}

/// What a SIGKILLed node leaves, made by hand: a process in a `kubepods` cgroup, a mount
/// under a node directory, the bridge, a `KUBE-*` chain with a jump to it and a rule of the
/// provider's. The sweep must take all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_what_a_killed_node_left() {
    if prerequisites(true).is_none() {
        return;
    }
    // Held while the leftovers are made: a cluster of another test must not start meanwhile.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(local::NODE_LOCK)
        .unwrap();
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let cgroup = Path::new("/sys/fs/cgroup/pids/kubepods/sweep-test");
    std::fs::create_dir_all(cgroup).unwrap();
    let mut pod = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), pod.id().to_string()).unwrap();
    let node_dir = tempfile::Builder::new()
        .prefix("harness-k8s-node-")
        .tempdir()
        .unwrap();
    let mount = node_dir.path().join("rootfs");
    std::fs::create_dir(&mount).unwrap();
    sh(&format!("mount -t tmpfs sweep-test {}", mount.display()));
    sh(&format!("ip link add {} type bridge", local::BRIDGE));
    sh(
        "iptables -w -t nat -N KUBE-SWEEP-TEST && iptables -w -t nat -A KUBE-SWEEP-TEST -j RETURN \
        && iptables -w -t nat -A OUTPUT -j KUBE-SWEEP-TEST \
        && iptables -w -I FORWARD 1 -i rrlocal0 -m comment --comment rebuild-rehearsal-local -j ACCEPT",
    );
    drop(lock);

    local::sweep(Duration::from_secs(900)).await.unwrap();

    let reaped = pod.wait().unwrap();
    assert!(!reaped.success(), "the pod process was killed: {reaped:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&mount.display().to_string()), "unmounted");
    assert!(
        !Path::new("/sys/class/net").join(local::BRIDGE).exists(),
        "bridge gone"
    );
    assert!(!cgroup.exists(), "cgroup removed");
    for table in ["nat", "filter"] {
        let out = std::process::Command::new("iptables-save")
            .args(["-t", table])
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&out.stdout);
        assert!(
            !rules.contains("KUBE-SWEEP-TEST") && !rules.contains("rebuild-rehearsal-local"),
            "{table}: {rules}"
        );
    }
}
