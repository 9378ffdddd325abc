//! The simulator held against a real kube-apiserver (v1.20, with kube-controller-manager):
//! the same requests to both, the answers normalised the same way and compared field by
//! field. Prints the fidelity figure; fails on any difference not listed, with its reason, in
//! the `fidelity-known` block of `simcluster/SIMULATION.md`.
//!
//! The corpus: the Titanium manifests (`fixtures/k8s/overlays/sim`, CRDs first) applied
//! server-side twice, the objects they leave in `titanium-prod`, an identical re-apply that
//! must create no ReplicaSet and replace no pod on either server, and the hidden-field cases
//! (not found, already exists, invalid names, immutable fields, conflicts, apply conflicts,
//! a namespace held in termination by a finalizer) with their `Status` bodies.
//!
//! The real side is the `local` provider's `ControlPlane` (etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler; no node). Needs the real binaries
//! (`RR_K8S_BIN`, or the build `ci/k8s/build.sh` caches), `etcd`, `openssl` and `kubectl` (for
//! `kustomize`); under `CI=true` a missing one fails.

mod compare;
mod http;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use harness::testing::{require, unavailable};
use serde_json::{Value, json};

use compare::{Difference, Known, Tally, normalise, normalise_workload};
use harness::cluster::local::{ControlPlane, ControlPlaneOptions, LocalError};

const NS: &str = "titanium-prod";

/// One server under test.
struct Server {
    name: &'static str,
    client: kube::Client,
    /// The real server is 1.20: CronJobs are `batch/v1beta1` there (`batch/v1` is 1.21+).
    real: bool,
}

impl Server {
    async fn call(&self, method: &str, path: &str, ct: &str, body: Vec<u8>) -> (u16, Value) {
        http::call(&self.client, method, path, ct, body)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.name))
    }

    async fn call_accept(&self, method: &str, path: &str, accept: &str) -> (u16, Value) {
        http::call_with(&self.client, method, path, "", accept, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.name))
    }

    async fn get(&self, path: &str) -> Value {
        let (code, body) = self.call("GET", path, "", Vec::new()).await;
        assert_eq!(code, 200, "{}: GET {path}: {body}", self.name);
        body
    }
}

/// The path of an object's resource, from its kind (the kinds the corpus uses).
fn resource_path(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or(NS);
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        "ConfigMap" => ("configmaps", true),
        "Secret" => ("secrets", true),
        "Service" => ("services", true),
        "PersistentVolumeClaim" => ("persistentvolumeclaims", true),
        "Deployment" => ("deployments", true),
        "StatefulSet" => ("statefulsets", true),
        "CronJob" => ("cronjobs", true),
        "Gateway" => ("gateways", true),
        "VirtualService" => ("virtualservices", true),
        "ServiceMonitor" => ("servicemonitors", true),
        other => panic!("the corpus has no path for kind {other}"),
    };
    let base = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    if namespaced {
        format!("{base}/namespaces/{ns}/{plural}/{name}")
    } else {
        format!("{base}/{plural}/{name}")
    }
}

/// A document as the given server takes it: for the real 1.20 server, CronJobs go to
/// `batch/v1beta1` (listed in SIMULATION.md as a version difference).
fn for_server(server: &Server, doc: &Value) -> Value {
    let mut doc = doc.clone();
    if server.real && doc["kind"] == "CronJob" {
        doc["apiVersion"] = json!("batch/v1beta1");
    }
    doc
}

/// The overlay's documents, CRDs first.
fn titanium_documents(kubectl: &Path) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let overlay = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/k8s/overlays/sim");
    let out = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(&overlay)
        .output()
        .context("kubectl kustomize")?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).context("kustomize output")?;
    Ok(docs
        .into_iter()
        .filter(|d| !d.is_null())
        .partition(|d| d["kind"] == "CustomResourceDefinition"))
}

/// The same Titanium documents with every Service port's protocol spelled out: kube-apiserver
/// 1.20 refuses a server-side apply of ports without it (the `protocol` list key has no
/// default in its apply schema; fixed in 1.21), so the field comparison applies these.
fn with_protocols(docs: &[Value]) -> Vec<Value> {
    docs.iter()
        .cloned()
        .map(|mut d| {
            if d["kind"] == "Service"
                && let Some(ports) = d["spec"]["ports"].as_array_mut()
            {
                for p in ports {
                    if p.get("protocol").is_none() {
                        p["protocol"] = json!("TCP");
                    }
                }
            }
            d
        })
        .collect()
}

/// Server-side apply of each document to both servers; status codes compared.
async fn apply_all(servers: &[Server; 2], docs: &[Value], label: &str, codes: &mut Tally) {
    for doc in docs {
        let mut answers = Vec::new();
        for s in servers {
            let doc = for_server(s, doc);
            let path = format!("{}?fieldManager=rehearsal&force=true", resource_path(&doc));
            let (code, body) = s
                .call(
                    "PATCH",
                    &path,
                    "application/apply-patch+yaml",
                    doc.to_string().into_bytes(),
                )
                .await;
            answers.push((code, body));
        }
        let subject = format!(
            "request:{label}:{}/{}",
            doc["kind"].as_str().unwrap_or_default(),
            doc["metadata"]["name"].as_str().unwrap_or_default()
        );
        codes.scalar(&subject, "code", &json!(answers[0].0), &json!(answers[1].0));
    }
}

/// Poll `check` on a server until it is true or the deadline passes.
async fn wait_for<F, Fut>(server: &Server, secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: timed out waiting for {what}",
            server.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// ReplicaSets (by name) and Deployment pods (by uid) in `titanium-prod`.
async fn replica_sets_and_pods(s: &Server) -> (Vec<String>, Vec<String>) {
    let names = |list: &Value, field: &str| {
        let mut v: Vec<String> = list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|i| {
                        field != "uid" || i["metadata"]["labels"]["pod-template-hash"].is_string()
                    })
                    .map(|i| i["metadata"][field].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let rs = s
        .get(&format!("/apis/apps/v1/namespaces/{NS}/replicasets"))
        .await;
    let pods = s.get(&format!("/api/v1/namespaces/{NS}/pods")).await;
    (names(&rs, "name"), names(&pods, "uid"))
}

/// Until every Deployment has a ReplicaSet and all its pods exist.
async fn settle_deployments(s: &Server, docs: &[Value]) {
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    let want_pods: i64 = deployments
        .iter()
        .map(|d| d["spec"]["replicas"].as_i64().unwrap_or(1))
        .sum();
    wait_for(
        s,
        60,
        "a ReplicaSet and the pods of every Deployment",
        || async {
            let (rs, pods) = replica_sets_and_pods(s).await;
            rs.len() >= deployments.len() && i64::try_from(pods.len()).is_ok_and(|n| n == want_pods)
        },
    )
    .await;
}

/// The objects of the compared kinds in `titanium-prod`, normalised, by `Kind/name`.
async fn objects(s: &Server) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let cron = if s.real { "batch/v1beta1" } else { "batch/v1" };
    for (path, kind) in [
        ("/apis/apps/v1/namespaces/NS/deployments", "Deployment"),
        ("/apis/apps/v1/namespaces/NS/statefulsets", "StatefulSet"),
        ("/api/v1/namespaces/NS/services", "Service"),
        (
            "/api/v1/namespaces/NS/persistentvolumeclaims",
            "PersistentVolumeClaim",
        ),
        ("/api/v1/namespaces/NS/secrets", "Secret"),
        ("/api/v1/namespaces/NS/configmaps", "ConfigMap"),
        (
            &format!("/apis/{cron}/namespaces/NS/cronjobs") as &str,
            "CronJob",
        ),
        ("/api/v1/namespaces/NS/serviceaccounts", "ServiceAccount"),
    ] {
        let list = s.get(&path.replace("NS", NS)).await;
        let api_version = list["apiVersion"].clone();
        for mut item in list["items"].as_array().cloned().unwrap_or_default() {
            // Lists leave kind and apiVersion out of their items; kubectl puts them back.
            item["kind"] = json!(kind);
            item["apiVersion"] = api_version.clone();
            let name = item["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            out.insert(format!("{kind}/{name}"), normalise(&item));
        }
    }
    out
}

/// The Deployment each ReplicaSet or Pod belongs to (by its `app` label, as the Titanium
/// manifests label them) and, for ReplicaSets, its revision.
fn workload_key(kind: &str, item: &Value) -> String {
    let app = item["metadata"]["labels"]["app"]
        .as_str()
        .unwrap_or_default();
    let revision = item["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .map(|r| format!("@{r}"))
        .unwrap_or_default();
    format!("{kind}/{app}{revision}")
}

/// ReplicaSets and the first pod of each Deployment, normalised, by [`workload_key`].
async fn workloads(s: &Server) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let rs = s
        .get(&format!("/apis/apps/v1/namespaces/{NS}/replicasets"))
        .await;
    for mut item in rs["items"].as_array().cloned().unwrap_or_default() {
        item["kind"] = json!("ReplicaSet");
        item["apiVersion"] = json!("apps/v1");
        out.insert(workload_key("ReplicaSet", &item), normalise_workload(&item));
    }
    let pods = s.get(&format!("/api/v1/namespaces/{NS}/pods")).await;
    for mut item in pods["items"].as_array().cloned().unwrap_or_default() {
        if !item["metadata"]["labels"]["pod-template-hash"].is_string() {
            continue;
        }
        item["kind"] = json!("Pod");
        item["apiVersion"] = json!("v1");
        out.entry(workload_key("Pod", &item))
            .or_insert_with(|| normalise_workload(&item));
    }
    out
}

fn compare_maps(fields: &mut Tally, real: &BTreeMap<String, Value>, sim: &BTreeMap<String, Value>) {
    let keys: std::collections::BTreeSet<&String> = real.keys().chain(sim.keys()).collect();
    for key in keys {
        match (real.get(key), sim.get(key)) {
            (Some(a), Some(b)) => fields.values(key, a, b),
            (a, b) => fields.scalar_difference(Difference {
                subject: key.clone(),
                path: "(object)".into(),
                real: if a.is_some() { "present" } else { "<absent>" }.into(),
                sim: if b.is_some() { "present" } else { "<absent>" }.into(),
            }),
        }
    }
}

/// What the controllers make: the ReplicaSets and pods of the Titanium Deployments, the
/// `scale` subresource (read, then written as `kubectl scale` does), and a rollout of a new
/// image (a second ReplicaSet, revision 2).
async fn controller_corpus(
    servers: &[Server; 2],
    docs: &[Value],
    codes: &mut Tally,
    fields: &mut Tally,
) {
    compare_maps(
        fields,
        &workloads(&servers[0]).await,
        &workloads(&servers[1]).await,
    );

    let scale = format!("/apis/apps/v1/namespaces/{NS}/deployments/prod-redis-deployment/scale");
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            for f in ["uid", "resourceVersion", "creationTimestamp"] {
                m.remove(f);
            }
        }
        v
    };
    for (id, method, ct, body) in [
        ("get-scale", "GET", "", Vec::new()),
        (
            "patch-scale",
            "PATCH",
            "application/merge-patch+json",
            json!({"spec": {"replicas": 2}}).to_string().into_bytes(),
        ),
    ] {
        let real = servers[0].call(method, &scale, ct, body.clone()).await;
        let sim = servers[1].call(method, &scale, ct, body).await;
        let subject = format!("request:{id}");
        codes.scalar(&subject, "code", &json!(real.0), &json!(sim.0));
        // The Scale's status is the point of the subresource: compared, not dropped.
        fields.values(&subject, &strip(&real.1), &strip(&sim.1));
    }

    let mut rollout = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "load-generator")
        .cloned()
        .expect("the load-generator Deployment");
    rollout["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("titanium/load-generator:rehearsal-2");
    apply_all(servers, &[rollout], "rollout", codes).await;
    for s in servers {
        wait_for(s, 30, "a second ReplicaSet for the rollout", || async {
            let rs = s
                .get(&format!(
                    "/apis/apps/v1/namespaces/{NS}/replicasets?labelSelector=app%3Dload-generator"
                ))
                .await;
            rs["items"].as_array().is_some_and(|i| i.len() == 2)
        })
        .await;
    }
    fields.values(
        "Deployment/load-generator(rollout)",
        &rolled_out(&servers[0]).await,
        &rolled_out(&servers[1]).await,
    );
    compare_maps(
        fields,
        &rollout_sets(&servers[0]).await,
        &rollout_sets(&servers[1]).await,
    );
}

/// The rolled-out Deployment, normalised.
async fn rolled_out(s: &Server) -> Value {
    let mut d = s
        .get(&format!(
            "/apis/apps/v1/namespaces/{NS}/deployments/load-generator"
        ))
        .await;
    d["kind"] = json!("Deployment");
    normalise(&d)
}

/// The rolled-out Deployment's ReplicaSets, by revision.
async fn rollout_sets(s: &Server) -> BTreeMap<String, Value> {
    workloads(s)
        .await
        .into_iter()
        .filter(|(k, _)| k.starts_with("ReplicaSet/load-generator@"))
        .map(|(k, v)| (format!("{k}(rollout)"), v))
        .collect()
}

/// What `kubectl get` (and `-o wide`) shows: the server-side Table's column definitions
/// (name, type, priority) of the kinds the runbook lists. Cells are not compared: they show
/// what runs, and the reference runs nothing.
async fn table_corpus(servers: &[Server; 2], codes: &mut Tally, fields: &mut Tally) {
    const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    for (plural, path) in [
        ("deployments", "/apis/apps/v1/namespaces/NS/deployments"),
        ("replicasets", "/apis/apps/v1/namespaces/NS/replicasets"),
        ("statefulsets", "/apis/apps/v1/namespaces/NS/statefulsets"),
        ("pods", "/api/v1/namespaces/NS/pods"),
        ("services", "/api/v1/namespaces/NS/services"),
        (
            "persistentvolumeclaims",
            "/api/v1/namespaces/NS/persistentvolumeclaims",
        ),
        ("configmaps", "/api/v1/namespaces/NS/configmaps"),
        ("secrets", "/api/v1/namespaces/NS/secrets"),
        ("serviceaccounts", "/api/v1/namespaces/NS/serviceaccounts"),
        ("namespaces", "/api/v1/namespaces"),
    ] {
        let path = path.replace("NS", NS);
        let mut answers = Vec::new();
        for s in servers {
            answers.push(s.call_accept("GET", &path, TABLE).await);
        }
        let subject = format!("table:{plural}");
        codes.scalar(&subject, "code", &json!(answers[0].0), &json!(answers[1].0));
        let columns = |t: &Value| {
            json!(t["columnDefinitions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| json!({"name": c["name"], "type": c["type"], "priority": c["priority"].as_i64().unwrap_or(0)}))
                .collect::<Vec<_>>())
        };
        fields.values(&subject, &columns(&answers[0].1), &columns(&answers[1].1));
    }
}

/// A watch from a list's resourceVersion sees a create, an update and a delete: the event
/// types and the objects, normalised.
async fn watch_corpus(servers: &[Server; 2], codes: &mut Tally, fields: &mut Tally) {
    let ns = "fidelity-watch";
    let cms = format!("/api/v1/namespaces/{ns}/configmaps");
    let mut sequences = Vec::new();
    for s in servers {
        let (code, _) = s
            .call(
                "POST",
                "/api/v1/namespaces",
                "application/json",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
                    .to_string()
                    .into_bytes(),
            )
            .await;
        assert_eq!(code, 201, "{}: namespace for the watch", s.name);
        let list = s.get(&format!("{cms}?labelSelector=watched%3Dyes")).await;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let watch = tokio::spawn(http::watch(
            s.client.clone(),
            format!("{cms}?watch=1&labelSelector=watched%3Dyes&resourceVersion={rv}"),
            3,
            Duration::from_secs(20),
        ));
        let cm = |v: &str| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "w", "namespace": ns, "labels": {"watched": "yes"}},
                "data": {"v": v}})
            .to_string()
            .into_bytes()
        };
        let steps = [
            ("POST", cms.clone(), cm("1")),
            ("PUT", format!("{cms}/w"), cm("2")),
            ("DELETE", format!("{cms}/w"), Vec::new()),
        ];
        for (method, path, body) in steps {
            let (code, answer) = s.call(method, &path, "application/json", body).await;
            assert!(code < 300, "{}: {method} {path}: {answer}", s.name);
        }
        let events = watch
            .await
            .expect("the watch task")
            .unwrap_or_else(|e| panic!("{}: watch: {e:#}", s.name));
        let (code, _) = s
            .call(
                "DELETE",
                &format!("/api/v1/namespaces/{ns}"),
                "",
                Vec::new(),
            )
            .await;
        assert_eq!(code, 200, "{}: deleting the watch namespace", s.name);
        sequences.push(events);
    }
    let types =
        |events: &[Value]| json!(events.iter().map(|e| e["type"].clone()).collect::<Vec<_>>());
    codes.scalar(
        "watch:configmaps",
        "types",
        &types(&sequences[0]),
        &types(&sequences[1]),
    );
    for (i, (a, b)) in sequences[0].iter().zip(&sequences[1]).enumerate() {
        let subject = format!("watch:configmaps[{i}]");
        fields.values(&subject, &normalise(&a["object"]), &normalise(&b["object"]));
    }
}

/// Requests whose answers (status code and body) are compared: the hidden-field cases.
async fn error_corpus(servers: &[Server; 2], codes: &mut Tally, fields: &mut Tally) {
    let ns = "fidelity-errors";
    let cm = |name: &str, extra: Value| {
        let mut v = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns}, "data": {"a": "1"}});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                m.insert(k.clone(), x.clone());
            }
        }
        v
    };
    let deployment = |name: &str, selector: Value, labels: Value| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": selector}, "template": {"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]}}}})
    };
    let cms = format!("/api/v1/namespaces/{ns}/configmaps");
    let deps = format!("/apis/apps/v1/namespaces/{ns}/deployments");
    let json_ct = "application/json";
    let apply_ct = "application/apply-patch+yaml";
    let merge_ct = "application/merge-patch+json";
    let body = |v: Value| v.to_string().into_bytes();
    // (id, method, path, content type, body, compare the body)
    let cases: Vec<(&str, &str, String, &str, Vec<u8>)> = vec![
        (
            "create-namespace",
            "POST",
            "/api/v1/namespaces".into(),
            json_ct,
            body(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
        ),
        ("get-missing", "GET", format!("{cms}/nope"), "", Vec::new()),
        (
            "get-missing-namespace",
            "GET",
            "/api/v1/namespaces/nope".into(),
            "",
            Vec::new(),
        ),
        (
            "create",
            "POST",
            cms.clone(),
            json_ct,
            body(cm("c1", json!({}))),
        ),
        (
            "create-again",
            "POST",
            cms.clone(),
            json_ct,
            body(cm("c1", json!({}))),
        ),
        (
            "invalid-name",
            "POST",
            cms.clone(),
            json_ct,
            body(cm("Bad_Name", json!({}))),
        ),
        (
            "invalid-namespace-name",
            "POST",
            "/api/v1/namespaces".into(),
            json_ct,
            body(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}})),
        ),
        (
            "create-in-missing-namespace",
            "POST",
            "/api/v1/namespaces/nope/configmaps".into(),
            json_ct,
            body(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "nope"}}),
            ),
        ),
        (
            "delete-missing",
            "DELETE",
            format!("{cms}/nope"),
            "",
            Vec::new(),
        ),
        (
            "stale-resource-version",
            "PUT",
            format!("{cms}/c1"),
            json_ct,
            body(cm(
                "c1",
                json!({"metadata": {"name": "c1", "namespace": ns, "resourceVersion": "1"}}),
            )),
        ),
        (
            "name-mismatch",
            "PUT",
            format!("{cms}/c1"),
            json_ct,
            body(cm("c2", json!({}))),
        ),
        (
            "unknown-resource",
            "GET",
            format!("/api/v1/namespaces/{ns}/widgets"),
            "",
            Vec::new(),
        ),
        (
            "create-immutable",
            "POST",
            cms.clone(),
            json_ct,
            body(cm("imm", json!({"immutable": true}))),
        ),
        (
            "update-immutable",
            "PUT",
            format!("{cms}/imm"),
            json_ct,
            body(cm("imm", json!({"immutable": true, "data": {"a": "2"}}))),
        ),
        (
            "create-deployment",
            "POST",
            deps.clone(),
            json_ct,
            body(deployment("d", json!({"app": "d"}), json!({"app": "d"}))),
        ),
        (
            "change-selector",
            "PUT",
            format!("{deps}/d"),
            json_ct,
            body(deployment(
                "d",
                json!({"app": "d", "x": "y"}),
                json!({"app": "d", "x": "y"}),
            )),
        ),
        (
            "selector-not-matching",
            "POST",
            deps.clone(),
            json_ct,
            body(deployment(
                "d2",
                json!({"app": "other"}),
                json!({"app": "d2"}),
            )),
        ),
        (
            "apply-a",
            "PATCH",
            format!("{cms}/s1?fieldManager=a"),
            apply_ct,
            body(cm("s1", json!({}))),
        ),
        (
            "apply-b-conflict",
            "PATCH",
            format!("{cms}/s1?fieldManager=b"),
            apply_ct,
            body(cm("s1", json!({"data": {"a": "2"}}))),
        ),
        (
            "apply-without-manager",
            "PATCH",
            format!("{cms}/s1"),
            apply_ct,
            body(cm("s1", json!({}))),
        ),
        (
            "malformed-json",
            "POST",
            cms.clone(),
            json_ct,
            b"{not json".to_vec(),
        ),
        (
            "invalid-service-name",
            "POST",
            format!("/api/v1/namespaces/{ns}/services"),
            json_ct,
            body(
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1s", "namespace": ns},
                "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}),
            ),
        ),
        (
            "create-finalized",
            "POST",
            cms.clone(),
            json_ct,
            body(cm(
                "fin",
                json!({"metadata": {"name": "fin", "namespace": ns, "finalizers": ["example.com/hold"]}}),
            )),
        ),
        (
            "delete-finalized",
            "DELETE",
            format!("{cms}/fin"),
            "",
            Vec::new(),
        ),
        ("get-finalized", "GET", format!("{cms}/fin"), "", Vec::new()),
        (
            "release-finalized",
            "PATCH",
            format!("{cms}/fin"),
            merge_ct,
            body(json!({"metadata": {"finalizers": null}})),
        ),
        ("get-released", "GET", format!("{cms}/fin"), "", Vec::new()),
        (
            "create-held",
            "POST",
            cms.clone(),
            json_ct,
            body(cm(
                "held",
                json!({"metadata": {"name": "held", "namespace": ns, "finalizers": ["example.com/hold"]}}),
            )),
        ),
        (
            "delete-namespace",
            "DELETE",
            format!("/api/v1/namespaces/{ns}"),
            "",
            Vec::new(),
        ),
        (
            "create-in-terminating-namespace",
            "POST",
            cms.clone(),
            json_ct,
            body(cm("late", json!({}))),
        ),
        (
            "release-held",
            "PATCH",
            format!("{cms}/held"),
            merge_ct,
            body(json!({"metadata": {"finalizers": null}})),
        ),
    ];
    for (id, method, path, ct, req_body) in cases {
        let mut answers = Vec::new();
        for s in servers {
            answers.push(s.call(method, &path, ct, req_body.clone()).await);
        }
        let subject = format!("request:{id}");
        codes.scalar(&subject, "code", &json!(answers[0].0), &json!(answers[1].0));
        // Error bodies are compared whole; successful answers are objects, compared normalised.
        let (real, sim) = (&answers[0].1, &answers[1].1);
        if real["kind"] == "Status" || sim["kind"] == "Status" {
            fields.values(&subject, real, sim);
        } else {
            fields.values(&subject, &normalise(real), &normalise(sim));
        }
        if id == "create-in-terminating-namespace" {
            // The namespace controllers delete the held ConfigMap in their own time.
            for s in servers {
                wait_for(s, 30, "the held ConfigMap to be terminating", || async {
                    let (_, cm) = s.call("GET", &format!("{cms}/held"), "", Vec::new()).await;
                    cm["metadata"]["deletionTimestamp"].is_string()
                })
                .await;
            }
        }
        if id == "create-namespace" {
            // The namespace's ServiceAccount and root CA ConfigMap come from controllers.
            for s in servers {
                wait_for(s, 30, "the default ServiceAccount", || async {
                    s.call(
                        "GET",
                        &format!("/api/v1/namespaces/{ns}/serviceaccounts/default"),
                        "",
                        Vec::new(),
                    )
                    .await
                    .0 == 200
                })
                .await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_answers_like_a_real_apiserver() {
    let Some(kubectl) = require("kubectl") else {
        return;
    };
    let options = match ControlPlaneOptions::new("fidelity") {
        Ok(o) => o,
        Err(e @ LocalError::NotFound { .. }) => {
            unavailable(&format!("no real Kubernetes control plane: {e}"));
            return;
        }
        Err(e) => panic!("control plane options: {e}"),
    };
    let markdown = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../simcluster/SIMULATION.md"),
    )
    .expect("SIMULATION.md");
    let known = compare::known_differences(&markdown).expect("the fidelity-known block");

    let real_cp = match ControlPlane::start(options).await {
        Ok(cp) => cp,
        Err(e @ LocalError::ProgramMissing { .. }) => {
            unavailable(&format!("no real Kubernetes control plane: {e}"));
            return;
        }
        Err(e) => panic!("real control plane: {e}"),
    };
    let sim_dir = tempfile::tempdir().expect("temp dir");
    let sim_cluster = simcluster::SimCluster::start(simcluster::SimConfig::new(
        "fidelity",
        sim_dir.path().join("state"),
        sim_dir.path().join("kubeconfig"),
    ))
    .await
    .expect("simulator");
    let servers = [
        Server {
            name: "kube-apiserver",
            client: real_cp.client().await.expect("real client"),
            real: true,
        },
        Server {
            name: "simulator",
            client: http::client(sim_cluster.kubeconfig_path())
                .await
                .expect("sim client"),
            real: false,
        },
    ];

    let (crds, docs) = titanium_documents(&kubectl).expect("the Titanium manifests");
    let mut codes = Tally::default();
    let mut fields = Tally::default();
    apply_all(&servers, &crds, "crd", &mut codes).await;
    for s in &servers {
        for crd in &crds {
            let path = resource_path(crd);
            wait_for(s, 30, "the CRD to be established", || async {
                let (_, body) = s.call("GET", &path, "", Vec::new()).await;
                body["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                })
            })
            .await;
        }
    }
    // The manifests as they are (1.20 refuses Service ports without a protocol), then as
    // both servers take them, twice.
    apply_all(&servers, &docs, "as-is", &mut codes).await;
    let compatible = with_protocols(&docs);
    apply_all(&servers, &compatible, "apply", &mut codes).await;
    let mut before = Vec::new();
    for s in &servers {
        settle_deployments(s, &compatible).await;
        before.push(replica_sets_and_pods(s).await);
    }
    apply_all(&servers, &compatible, "re-apply", &mut codes).await;
    // A no-op has nothing to wait for: give the controllers three seconds (three passes of the
    // simulator's, and any event the real ones get), then nothing may have changed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (s, before) in servers.iter().zip(&before) {
        let after = replica_sets_and_pods(s).await;
        assert_eq!(
            after.0, before.0,
            "{}: an identical re-apply changed the ReplicaSets",
            s.name
        );
        assert_eq!(
            after.1, before.1,
            "{}: an identical re-apply replaced pods",
            s.name
        );
        let deployments = compatible
            .iter()
            .filter(|d| d["kind"] == "Deployment")
            .count();
        assert_eq!(
            after.0.len(),
            deployments,
            "{}: one ReplicaSet per Deployment",
            s.name
        );
    }
    // Wait for what controllers add to a namespace before comparing it.
    for s in &servers {
        wait_for(
            s,
            30,
            "kube-root-ca.crt and the default ServiceAccount",
            || async {
                let cm = s
                    .call(
                        "GET",
                        &format!("/api/v1/namespaces/{NS}/configmaps/kube-root-ca.crt"),
                        "",
                        Vec::new(),
                    )
                    .await
                    .0;
                let sa = s
                    .call(
                        "GET",
                        &format!("/api/v1/namespaces/{NS}/serviceaccounts/default"),
                        "",
                        Vec::new(),
                    )
                    .await
                    .0;
                cm == 200 && sa == 200
            },
        )
        .await;
    }
    let (real_objects, sim_objects) = (objects(&servers[0]).await, objects(&servers[1]).await);
    compare_maps(&mut fields, &real_objects, &sim_objects);
    controller_corpus(&servers, &compatible, &mut codes, &mut fields).await;
    watch_corpus(&servers, &mut codes, &mut fields).await;
    table_corpus(&servers, &mut codes, &mut fields).await;
    error_corpus(&servers, &mut codes, &mut fields).await;

    let report = |what: &str, t: &Tally| {
        let versions = t
            .differences
            .iter()
            .filter(|d| known.iter().any(|k| k.version && k.covers(d)))
            .count();
        let aside = Tally {
            compared: t.compared,
            equal: t.equal + versions,
            differences: Vec::new(),
        };
        println!(
            "fidelity: {what} equal {}; {} with the {versions} version differences set aside",
            t.figure(),
            aside.figure()
        );
    };
    report("fields", &fields);
    report("status codes", &codes);
    let all: Vec<&Difference> = fields
        .differences
        .iter()
        .chain(&codes.differences)
        .collect();
    let mut unexplained = Vec::new();
    for d in &all {
        match known.iter().find(|k| k.covers(d)) {
            Some(k) => println!("  known: {d}  -- {}", k.reason),
            None => unexplained.push(d.to_string()),
        }
    }
    let unused: Vec<&Known> = known
        .iter()
        .filter(|k| !all.iter().any(|d| k.covers(d)))
        .collect();
    for k in &unused {
        println!(
            "  listed but not seen (remove it from SIMULATION.md?): {} {}",
            k.subject, k.path
        );
    }
    drop(servers);
    if let Err(e) = sim_cluster.shutdown().await {
        panic!("simulator shutdown: {e}");
    }
    drop(real_cp);
    assert!(
        unexplained.is_empty(),
        "{} difference(s) from the real kube-apiserver are neither fixed nor listed in SIMULATION.md's fidelity-known block:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
}
