//! Behaviour found different from a real kube-apiserver (v1.20) and fixed: each test here
//! failed before its fix. The field-by-field comparison with a real server is the `tests`
//! crate's `fidelity` test; these are the cheap, simulator-only guards.

use serde_json::Value;

use crate::common::{TestCluster, eventually, kubectl_path};

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("kubectl printed JSON")
}

/// The Titanium manifests of the `sim` overlay without the StatefulSet and the custom
/// resources (their CRDs are not applied here): namespace, config, secret, PVCs, services and
/// every Deployment.
async fn titanium_workloads(tc: &TestCluster) -> Vec<u8> {
    let overlay =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/k8s/overlays/sim");
    let rendered = tc
        .kubectl_ok(&["kustomize", overlay.to_str().expect("utf-8")])
        .await;
    let keep = |doc: &&str| {
        ["Namespace", "ConfigMap", "Secret", "Service", "Deployment"]
            .iter()
            .any(|k| doc.lines().any(|l| l == format!("kind: {k}")))
    };
    let docs: Vec<&str> = rendered.split("\n---\n").filter(keep).collect();
    assert!(
        docs.len() >= 8,
        "the overlay lost its workloads: {} documents",
        docs.len()
    );
    docs.join("\n---\n").into_bytes()
}

/// ReplicaSet names (with their template hash) and pod uids in `titanium-prod`.
async fn replica_sets_and_pods(tc: &TestCluster) -> (Vec<String>, Vec<String>) {
    let names = |list: &Value, field: &str| {
        let mut v: Vec<String> = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"][field].as_str().unwrap_or_default().to_owned())
            .collect();
        v.sort();
        v
    };
    let rs = json(
        &tc.kubectl_ok(&["get", "rs", "-n", "titanium-prod", "-o", "json"])
            .await,
    );
    let pods = json(
        &tc.kubectl_ok(&["get", "pods", "-n", "titanium-prod", "-o", "json"])
            .await,
    );
    (names(&rs, "name"), names(&pods, "uid"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_server_side_reapply_is_a_no_op() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start().await;
    let manifests = titanium_workloads(&tc).await;
    let apply = [
        "apply",
        "--server-side",
        "--field-manager",
        "rehearsal",
        "-f",
        "-",
    ];
    let out = tc.kubectl_stdin(&apply, Some(manifests.clone())).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deployments = json(
        &tc.kubectl_ok(&["get", "deploy", "-n", "titanium-prod", "-o", "json"])
            .await,
    );
    let count = deployments["items"].as_array().expect("items").len();
    let before = eventually(30, "a ReplicaSet and its pods per Deployment", || async {
        let (rs, pods) = replica_sets_and_pods(&tc).await;
        (rs.len() == count && !pods.is_empty()).then_some((rs, pods))
    })
    .await;
    for rs in &before.0 {
        let hash = rs.rsplit('-').next().expect("a hash suffix");
        assert!(
            (1..=10).contains(&hash.len()) && hash.chars().all(|c| "456789bcdf".contains(c)),
            "{rs}: not a real pod-template-hash"
        );
    }

    let out = tc.kubectl_stdin(&apply, Some(manifests)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A no-op leaves nothing to wait for: watch three controller passes (one a second) and
    // require that none of them created a ReplicaSet or replaced a pod.
    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = replica_sets_and_pods(&tc).await;
        assert_eq!(now.0, before.0, "a re-apply created or removed ReplicaSets");
        assert_eq!(now.1, before.1, "a re-apply replaced pods");
    }
    let again = json(
        &tc.kubectl_ok(&["get", "deploy", "-n", "titanium-prod", "-o", "json"])
            .await,
    );
    for d in again["items"].as_array().expect("items") {
        assert_eq!(d["metadata"]["generation"], 1, "{}", d["metadata"]["name"]);
    }
}
