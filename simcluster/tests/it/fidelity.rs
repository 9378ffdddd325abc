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

async fn exists(tc: &TestCluster, args: &[&str]) -> bool {
    let out = tc.kubectl(args).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("NotFound"),
        "kubectl {args:?}: {err}"
    );
    out.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_in_use_waits_for_its_pod_under_pvc_protection() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start().await;
    let manifests = r#"
apiVersion: v1
kind: Namespace
metadata: {name: protect}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: protect}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: user, namespace: protect}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox:1, command: [sleep, "600"]}
  volumes:
  - {name: d, persistentVolumeClaim: {claimName: data}}
"#;
    let out = tc
        .kubectl_stdin(&["apply", "-f", "-"], Some(manifests.as_bytes().to_vec()))
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pvc = json(
        &tc.kubectl_ok(&["get", "pvc", "data", "-n", "protect", "-o", "json"])
            .await,
    );
    assert_eq!(
        pvc["metadata"]["finalizers"],
        serde_json::json!(["kubernetes.io/pvc-protection"])
    );
    let pv_name = eventually(20, "the claim bound and its pod running", || async {
        let pvc = json(
            &tc.kubectl_ok(&["get", "pvc", "data", "-n", "protect", "-o", "json"])
                .await,
        );
        let pod = json(
            &tc.kubectl_ok(&["get", "pod", "user", "-n", "protect", "-o", "json"])
                .await,
        );
        (pvc["status"]["phase"] == "Bound" && pod["status"]["phase"] == "Running").then(|| {
            pvc["spec"]["volumeName"]
                .as_str()
                .expect("volume name")
                .to_owned()
        })
    })
    .await;
    let pv = json(&tc.kubectl_ok(&["get", "pv", &pv_name, "-o", "json"]).await);
    assert_eq!(
        pv["metadata"]["finalizers"],
        serde_json::json!(["kubernetes.io/pv-protection"])
    );

    tc.kubectl_ok(&["delete", "pvc", "data", "-n", "protect", "--wait=false"])
        .await;
    // The pod still runs: the claim stays, terminating, with its volume. Three passes of the
    // controllers (a second each) must not remove it.
    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let pvc = json(
            &tc.kubectl_ok(&["get", "pvc", "data", "-n", "protect", "-o", "json"])
                .await,
        );
        assert!(pvc["metadata"]["deletionTimestamp"].is_string(), "{pvc}");
        assert!(
            exists(&tc, &["get", "pv", &pv_name]).await,
            "the volume of a claim in use went"
        );
    }
    tc.kubectl_ok(&["delete", "pod", "user", "-n", "protect"])
        .await;
    eventually(
        30,
        "the claim and its volume gone once the pod is",
        || async {
            let claim = exists(&tc, &["get", "pvc", "data", "-n", "protect"]).await;
            let volume = exists(&tc, &["get", "pv", &pv_name]).await;
            (!claim && !volume).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_has_kube_root_ca_crt() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start().await;
    tc.kubectl_ok(&["create", "namespace", "fresh"]).await;
    let get = [
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "fresh",
        "-o",
        "json",
    ];
    eventually(10, "kube-root-ca.crt in a new namespace", || async {
        exists(&tc, &get[..5]).await.then_some(())
    })
    .await;
    let cm = json(&tc.kubectl_ok(&get).await);
    let pem = cm["data"]["ca.crt"].as_str().expect("ca.crt");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    for ns in ["default", "kube-system", "kube-public"] {
        assert!(
            exists(&tc, &["get", "configmap", "kube-root-ca.crt", "-n", ns]).await,
            "{ns}"
        );
    }
    tc.kubectl_ok(&["delete", "configmap", "kube-root-ca.crt", "-n", "fresh"])
        .await;
    eventually(10, "kube-root-ca.crt published again", || async {
        exists(&tc, &get[..5]).await.then_some(())
    })
    .await;
}

/// The `spec.replicas` of the ReplicaSets of Deployment `web`, by image.
async fn replica_sets_by_image(tc: &TestCluster) -> Vec<(String, i64)> {
    let list = json(
        &tc.kubectl_ok(&["get", "rs", "-n", "roll", "-l", "app=web", "-o", "json"])
            .await,
    );
    let mut v: Vec<(String, i64)> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|rs| {
            (
                rs["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                rs["spec"]["replicas"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_keeps_within_max_surge() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start().await;
    let deployment = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: roll}}\nspec:\n  replicas: 4\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - {{name: c, image: \"{image}\"}}\n"
        )
        .into_bytes()
    };
    tc.kubectl_ok(&["create", "namespace", "roll"]).await;
    let apply = ["apply", "--server-side", "-f", "-"];
    let out = tc
        .kubectl_stdin(&apply, Some(deployment("registry.invalid/web:1")))
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(30, "the first rollout complete", || async {
        let d = json(
            &tc.kubectl_ok(&["get", "deploy", "web", "-n", "roll", "-o", "json"])
                .await,
        );
        (d["status"]["availableReplicas"] == 4).then_some(())
    })
    .await;
    let out = tc
        .kubectl_stdin(&apply, Some(deployment("registry.invalid/web:2")))
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(60, "the second rollout complete", || async {
        let sets = replica_sets_by_image(&tc).await;
        (sets
            == [
                ("registry.invalid/web:1".to_owned(), 0),
                ("registry.invalid/web:2".to_owned(), 4),
            ])
        .then_some(())
    })
    .await;
    // Replay the controller's scaling events in order: with 4 replicas, 25% surge and 25%
    // unavailable there are never more than 5 replicas in all, and the new set starts at 1
    // while the old one is still at 4, as the real controller does.
    let events = json(
        &tc.kubectl_ok(&[
            "get",
            "events",
            "-n",
            "roll",
            "--field-selector",
            "reason=ScalingReplicaSet",
            "-o",
            "json",
        ])
        .await,
    );
    let mut steps: Vec<(u64, String)> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            (
                e["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .expect("a numeric resourceVersion"),
                e["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    steps.sort();
    let mut sizes = std::collections::BTreeMap::new();
    let mut first_of_new = None;
    for (_, message) in &steps {
        let (_, rest) = message.split_once("replica set ").expect(message);
        let (name, to) = rest.split_once(" to ").expect(message);
        let to: i64 = to.parse().expect(message);
        if sizes.len() == 1 && !sizes.contains_key(name) {
            first_of_new = Some(to);
        }
        sizes.insert(name.to_owned(), to);
        let total: i64 = sizes.values().sum();
        assert!(
            total <= 5,
            "more than replicas + maxSurge after {message:?}: {steps:?}"
        );
    }
    assert_eq!(first_of_new, Some(1), "{steps:?}");
}

/// A real pod finds the API server as in-cluster clients do: `KUBERNETES_SERVICE_HOST` and
/// `KUBERNETES_SERVICE_PORT` from the kubelet (for every namespace, not only `default`), and
/// the `kubernetes` Service forwarded to the API server by its Endpoints. Before: no such
/// variables outside `default`, and Services without a selector were not proxied.
#[tokio::test(flavor = "multi_thread")]
async fn pods_reach_the_api_server_through_the_kubernetes_service() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start().await;
    let endpoints = json(
        &tc.kubectl_ok(&[
            "get",
            "endpoints",
            "kubernetes",
            "-n",
            "default",
            "-o",
            "json",
        ])
        .await,
    );
    assert_eq!(
        endpoints["subsets"][0]["addresses"][0]["ip"], "127.0.0.1",
        "{endpoints}"
    );
    let manifests = r#"
apiVersion: v1
kind: Namespace
metadata: {name: incluster}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: incluster}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox:1, command: [sleep, "600"]}
"#;
    let out = tc
        .kubectl_stdin(&["apply", "-f", "-"], Some(manifests.as_bytes().to_vec()))
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(20, "the pod running", || async {
        let pod = json(
            &tc.kubectl_ok(&["get", "pod", "client", "-n", "incluster", "-o", "json"])
                .await,
        );
        (pod["status"]["phase"] == "Running").then_some(())
    })
    .await;
    let service = json(
        &tc.kubectl_ok(&["get", "svc", "kubernetes", "-n", "default", "-o", "json"])
            .await,
    );
    let ip = service["spec"]["clusterIP"].as_str().expect("clusterIP");
    let seen = tc
        .kubectl_ok(&[
            "exec",
            "client",
            "-n",
            "incluster",
            "--",
            "sh",
            "-c",
            "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT",
        ])
        .await;
    assert_eq!(seen.trim(), format!("{ip}:443"));
    // Plain HTTP on the simulator (a real API server speaks TLS there).
    let version = eventually(20, "the kubernetes Service proxied", || async {
        let mut stream = tokio::net::TcpStream::connect((ip, 443)).await.ok()?;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream
            .write_all(b"GET /version HTTP/1.1\r\nHost: kubernetes\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        answer.starts_with("HTTP/1.1 200").then_some(answer)
    })
    .await;
    assert!(version.contains("gitVersion"), "{version}");
}
