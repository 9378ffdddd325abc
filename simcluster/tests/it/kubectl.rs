//! The real kubectl against the simulated cluster, run as a user would type it.

use serde_json::Value;

use crate::common::{TestCluster, kubectl_path, manifests_dir};

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("kubectl printed YAML")
}

fn kinds_and_names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["kind"].as_str().unwrap_or_default(),
                i["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_namespaces_and_nodes() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start().await;
    let out = tc.kubectl_ok(&["get", "ns"]).await;
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"],
        "{out}"
    );
    assert!(
        out.lines().nth(1).is_some_and(|l| l.contains("Active")),
        "{out}"
    );
    let out = tc.kubectl_ok(&["get", "nodes"]).await;
    assert!(
        out.contains("sim-test-control-plane") && out.contains("Ready"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_of_a_directory_then_get_and_delete() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start().await;
    let dir = manifests_dir();
    let dir = dir.to_str().expect("utf-8 path");
    for _ in 0..2 {
        let out = tc.kubectl_ok(&["apply", "--server-side", "-f", dir]).await;
        assert!(
            out.contains("statefulset.apps/postgresql serverside-applied"),
            "{out}"
        );
    }
    let pg = yaml(
        &tc.kubectl_ok(&[
            "get",
            "statefulset,pvc,svc",
            "-n",
            "titanium-test",
            "-l",
            "app=postgresql",
            "-o",
            "yaml",
        ])
        .await,
    );
    let names = kinds_and_names(&pg);
    for want in [
        "PersistentVolumeClaim/backups",
        "Service/postgresql",
        "StatefulSet/postgresql",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // Claims made from the StatefulSet's volumeClaimTemplates (by the controllers) carry its labels.
    assert!(
        names
            .iter()
            .all(|n| n.contains("postgresql") || n == "PersistentVolumeClaim/backups"),
        "{names:?}"
    );
    let sts = pg["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["kind"] == "StatefulSet")
        .expect("sts");
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    assert_eq!(
        sts["metadata"]["generation"], 1,
        "re-applying the same manifests does not bump generation"
    );
    let pvc = pg["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["metadata"]["name"] == "backups")
        .expect("pvc");
    assert_eq!(
        pvc["spec"]["storageClassName"], "standard",
        "the default StorageClass is filled in"
    );

    let all = yaml(
        &tc.kubectl_ok(&[
            "get",
            "all,pvc,configmap,secret",
            "-n",
            "titanium-test",
            "-o",
            "yaml",
        ])
        .await,
    );
    let names = kinds_and_names(&all);
    for want in [
        "Deployment/api-gateway",
        "StatefulSet/postgresql",
        "Service/api-gateway",
        "Service/postgresql",
        "PersistentVolumeClaim/backups",
        "ConfigMap/postgresql-init",
        "Secret/postgresql-secret",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let secret = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["kind"] == "Secret")
        .expect("secret");
    assert_eq!(
        secret["data"]["POSTGRES_USER"], "cG9zdGdyZXM=",
        "stringData is stored base64 in data"
    );

    let table = tc.kubectl_ok(&["get", "svc", "-n", "titanium-test"]).await;
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("CLUSTER-IP") && h.contains("PORT(S)")),
        "{table}"
    );
    assert!(
        table.contains("LoadBalancer") && table.contains("80:30000/TCP"),
        "{table}"
    );

    let out = tc
        .kubectl_ok(&["delete", "namespace", "titanium-test"])
        .await;
    assert!(out.contains("namespace \"titanium-test\" deleted"), "{out}");
    let after = tc.kubectl(&["get", "namespace", "titanium-test"]).await;
    assert!(!after.status.success());
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    let left = tc
        .kubectl_ok(&[
            "get",
            "all,pvc,configmap,secret",
            "-A",
            "-o",
            "yaml",
            "-l",
            "app=postgresql",
        ])
        .await;
    assert!(
        yaml(&left)["items"].as_array().expect("items").is_empty(),
        "{left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_apply_uses_strategic_merge_and_last_applied() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start().await;
    let dir = manifests_dir();
    let dir = dir.to_str().expect("utf-8 path");
    let out = tc.kubectl_ok(&["apply", "-f", dir]).await;
    assert!(out.contains("deployment.apps/api-gateway created"), "{out}");
    let out = tc.kubectl_ok(&["apply", "-f", dir]).await;
    assert!(
        out.contains("deployment.apps/api-gateway unchanged"),
        "{out}"
    );
    let d = yaml(
        &tc.kubectl_ok(&[
            "get",
            "deployment",
            "api-gateway",
            "-n",
            "titanium-test",
            "-o",
            "yaml",
        ])
        .await,
    );
    assert!(
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .is_some_and(|s| s.contains("api-gateway"))
    );
    // Change the image and drop the env var: the three-way patch must do both.
    let text =
        std::fs::read_to_string(manifests_dir().join("20-api-gateway.yaml")).expect("manifest");
    let changed = text.replace("titanium/api-gateway:1.0.0", "titanium/api-gateway:1.1.0").replace(
        "          env:\n            - name: REDIS_URL\n              value: redis://redis:6379\n",
        "",
    );
    assert_ne!(changed, text);
    let out = tc
        .kubectl_stdin(&["apply", "-f", "-"], Some(changed.into_bytes()))
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = yaml(
        &tc.kubectl_ok(&[
            "get",
            "deployment",
            "api-gateway",
            "-n",
            "titanium-test",
            "-o",
            "yaml",
        ])
        .await,
    );
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "titanium/api-gateway:1.1.0");
    assert!(c.get("env").is_none(), "env removed: {c}");
    assert_eq!(d["metadata"]["generation"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomize_piped_into_server_side_apply() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/kustomize");
    let rendered = tc
        .kubectl_ok(&["kustomize", dir.to_str().expect("utf-8")])
        .await;
    let out = tc
        .kubectl_stdin(
            &["apply", "--server-side", "-f", "-"],
            Some(rendered.into_bytes()),
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = yaml(
        &tc.kubectl_ok(&[
            "get",
            "deploy,svc,cm",
            "-n",
            "titanium-kustomize",
            "-l",
            "app.kubernetes.io/part-of=titanium",
            "-o",
            "yaml",
        ])
        .await,
    );
    let names = kinds_and_names(&all);
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("ConfigMap/redis-config-")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_can_i_honours_deny_rules() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start_with(|c| {
        c.deny = vec!["create:statefulsets:titanium-prod".parse().expect("rule")]
    })
    .await;
    let yes = tc
        .kubectl(&[
            "auth",
            "can-i",
            "create",
            "statefulsets",
            "-n",
            "titanium-test",
        ])
        .await;
    assert!(yes.status.success());
    assert_eq!(String::from_utf8_lossy(&yes.stdout).trim(), "yes");
    let no = tc
        .kubectl(&[
            "auth",
            "can-i",
            "create",
            "statefulsets",
            "-n",
            "titanium-prod",
        ])
        .await;
    assert_eq!(no.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no.stdout).starts_with("no"));
    let yes = tc
        .kubectl(&["auth", "can-i", "get", "secrets", "-n", "titanium-prod"])
        .await;
    assert_eq!(String::from_utf8_lossy(&yes.stdout).trim(), "yes");
    // The denied permission is enforced, not only reported.
    tc.kubectl_ok(&["create", "namespace", "titanium-prod"])
        .await;
    let manifest = std::fs::read_to_string(manifests_dir().join("10-postgresql.yaml"))
        .expect("manifest")
        .replace("titanium-test", "titanium-prod");
    let out = tc
        .kubectl_stdin(
            &["apply", "--server-side", "-f", "-"],
            Some(manifest.into_bytes()),
        )
        .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reports_bad_input_like_a_real_server() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start().await;
    let out = tc.kubectl(&["create", "configmap", "Bad_Name"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is invalid") && err.contains("RFC 1123"),
        "{err}"
    );
    let out = tc
        .kubectl_stdin(
            &["apply", "-f", "-"],
            Some(b"apiVersion: v1\nkind: Widget\nmetadata:\n  name: x\n".to_vec()),
        )
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no matches for kind \"Widget\""),
        "{err}"
    );
    let out = tc.kubectl(&["get", "widgets"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("doesn't have a resource type \"widgets\""),
        "{err}"
    );
    let out = tc.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(
        b"apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: default\nspec:\n  ports:\n  - port: 99999\n".to_vec(),
    )).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.ports[0].port"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imperative_create_commands_send_protobuf_that_is_understood() {
    if kubectl_path().is_none() {
        return;
    }
    let tc = TestCluster::start().await;
    tc.kubectl_ok(&["create", "namespace", "imp"]).await;
    tc.kubectl_ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "imp",
        "--from-literal=mode=prod",
    ])
    .await;
    tc.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "pw",
        "-n",
        "imp",
        "--from-literal=password=s3cret",
    ])
    .await;
    tc.kubectl_ok(&["create", "serviceaccount", "backup", "-n", "imp"])
        .await;
    tc.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "imp",
        "--image=nginx:1.25",
        "--replicas=0",
        "--port=80",
    ])
    .await;
    tc.kubectl_ok(&[
        "create",
        "cronjob",
        "nightly",
        "-n",
        "imp",
        "--image=postgres:15-alpine",
        "--schedule=0 3 * * *",
        "--",
        "pg_dump",
        "-U",
        "postgres",
    ])
    .await;
    tc.kubectl_ok(&[
        "create",
        "job",
        "manual-1",
        "-n",
        "imp",
        "--from=cronjob/nightly",
    ])
    .await;
    let all = yaml(
        &tc.kubectl_ok(&[
            "get",
            "cm,secret,sa,deploy,cronjob,job",
            "-n",
            "imp",
            "-o",
            "yaml",
        ])
        .await,
    );
    let items = all["items"].as_array().expect("items");
    let find = |kind: &str, name: &str| {
        items
            .iter()
            .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind}/{name} missing"))
    };
    assert_eq!(find("ConfigMap", "cfg")["data"]["mode"], "prod");
    assert_eq!(find("Secret", "pw")["data"]["password"], "czNjcmV0");
    assert_eq!(find("Secret", "pw")["type"], "Opaque");
    let web = find("Deployment", "web");
    assert_eq!(
        web["spec"]["replicas"], 0,
        "an explicit zero survives protobuf decoding"
    );
    assert_eq!(
        web["spec"]["template"]["spec"]["containers"][0]["ports"][0],
        serde_json::json!({"containerPort": 80, "protocol": "TCP"})
    );
    let job = find("Job", "manual-1");
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    assert_eq!(
        job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["command"],
        serde_json::json!(["pg_dump", "-U", "postgres"])
    );
}
