//! The health gate goes through Istio's ingress gateway, as production traffic does: on a
//! simulated cluster with the infrastructure phase's gateway and titanium-prod, it passes; with
//! the VirtualService gone (lost in a restore), the gateway has no route, answers 404, and the
//! gate fails naming it; with the VirtualService back, it passes again.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::ensure_titanium_built;
use harness::cluster::Cluster;
use harness::cluster::sim::{SimOptions, SimProvider};
use harness::load::HealthGate;

/// `kubectl` against `cluster`, asserting success.
fn kubectl(cluster: &SimProvider, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until GET `url` answers `status` (the gateway picks up a change within its
/// one-second sync).
async fn wait_for_status(url: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = reqwest::Client::new();
    loop {
        let got = client
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if got.as_ref().is_ok_and(|s| *s == status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {url}: expected {status} within 20 s, last {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The health gate as the rehearsal runs it, through the ingress; its verdict and the path.
async fn health(cluster: &SimProvider) -> (harness::load::HealthVerdict, String) {
    let ingress = scenarios::titanium::ingress(cluster).await.unwrap();
    let mut gate = HealthGate::new(&ingress.base_url);
    gate.probes = 3;
    gate.interval = Duration::from_millis(50);
    (gate.run().await.unwrap(), ingress.path.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_gate_fails_through_the_ingress_without_the_virtual_service() {
    if harness::testing::require("kubectl").is_none() {
        return;
    }
    ensure_titanium_built();
    let mut cluster = SimProvider::create(SimOptions::default()).await.unwrap();
    let overlay = harness::deploy::overlay("sim");
    let installed =
        harness::deploy::apply_infrastructure(&cluster, &overlay, Duration::from_secs(120))
            .await
            .unwrap();
    assert_eq!(installed.crds, 3, "{installed}");
    harness::deploy::apply_kustomize(&cluster, &overlay)
        .await
        .unwrap();
    let client = cluster.client().await.unwrap();
    harness::deploy::wait_ready(&client, "titanium-prod", Duration::from_secs(120))
        .await
        .unwrap();

    // The runbook's 6.1, verbatim: the LoadBalancer IP of the gateway's Service.
    let ip = kubectl(
        &cluster,
        &[
            "get",
            "svc",
            "-n",
            "istio-system",
            "istio-ingressgateway",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ],
    );
    assert!(ip.starts_with("127."), "INGRESS_IP {ip:?}");
    let url = format!("http://{ip}/api/users/health");

    let (green, path) = health(&cluster).await;
    assert!(green.passed, "through {path}: {:?}", green.findings);
    assert!(
        path.contains(&format!("istio-system/istio-ingressgateway {ip}:80"))
            && path.contains("VirtualService titanium-prod/titanium-virtualservice"),
        "{path}"
    );

    // A restore that lost the VirtualService: the gateway has no route.
    let saved = kubectl(
        &cluster,
        &[
            "get",
            "virtualservice",
            "-n",
            "titanium-prod",
            "titanium-virtualservice",
            "-o",
            "json",
        ],
    );
    kubectl(
        &cluster,
        &[
            "delete",
            "virtualservice",
            "-n",
            "titanium-prod",
            "titanium-virtualservice",
        ],
    );
    wait_for_status(&url, 404).await;
    let (red, path) = health(&cluster).await;
    assert!(!red.passed, "the gate passed without a route: {red:?}");
    assert!(
        path.contains("no VirtualService in titanium-prod"),
        "{path}"
    );
    for endpoint in &red.endpoints {
        assert_eq!(
            endpoint.statuses.get(&404),
            Some(&3),
            "{}: {:?}",
            endpoint.path,
            endpoint.statuses
        );
    }

    // Restored: green again.
    let mut object: serde_json::Value = serde_json::from_str(&saved).unwrap();
    for field in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
    ] {
        object["metadata"].as_object_mut().unwrap().remove(field);
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), object.to_string()).unwrap();
    kubectl(&cluster, &["apply", "-f", file.path().to_str().unwrap()]);
    wait_for_status(&url, 200).await;
    let (again, path) = health(&cluster).await;
    assert!(again.passed, "through {path}: {:?}", again.findings);
    cluster.destroy().await.unwrap();
}
