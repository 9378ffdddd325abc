//! The real kube-rs client against the simulated cluster.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{Discovery, pinned_kind};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};

use crate::common::{TestCluster, eventually};

fn dynamic(
    tc: &TestCluster,
    api_version: &str,
    kind: &str,
    plural: &str,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    match ns {
        Some(ns) => Api::namespaced_with(tc.client.clone(), ns, &ar),
        None => Api::all_with(tc.client.clone(), &ar),
    }
}

fn obj(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("dynamic object")
}

async fn namespace(tc: &TestCluster, name: &str) {
    let api: Api<Namespace> = Api::all(tc.client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns"),
    )
    .await
    .expect("namespace created");
}

/// Create, read, list, replace and delete one object of a kind.
async fn check_crud(
    tc: &TestCluster,
    api_version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    body: Value,
) {
    let api = dynamic(tc, api_version, kind, plural, namespaced.then_some("crud"));
    let name = body["metadata"]["name"].as_str().expect("name").to_owned();
    let mut o = body.clone();
    o["apiVersion"] = json!(api_version);
    o["kind"] = json!(kind);
    let created = api
        .create(&PostParams::default(), &obj(o))
        .await
        .unwrap_or_else(|e| panic!("create {kind}: {e}"));
    let uid = created.metadata.uid.clone().expect("uid");
    let rv = created
        .metadata
        .resource_version
        .clone()
        .expect("resourceVersion");
    assert!(
        created.metadata.creation_timestamp.is_some(),
        "{kind} creationTimestamp"
    );
    let got = api
        .get(&name)
        .await
        .unwrap_or_else(|e| panic!("get {kind}: {e}"));
    assert_eq!(got.metadata.uid.as_deref(), Some(uid.as_str()));
    let list = api
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("list {kind}: {e}"));
    assert!(
        list.items
            .iter()
            .any(|i| i.metadata.name.as_deref() == Some(name.as_str())),
        "{kind} listed"
    );
    assert!(
        list.metadata
            .resource_version
            .is_some_and(|r| !r.is_empty()),
        "{kind} list has resourceVersion"
    );
    // Controllers may update the object meanwhile: retry on conflict, as clients do.
    let mut attempt = 0;
    let replaced = loop {
        let mut changed = api
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("get {kind}: {e}"));
        changed
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("changed".into(), "yes".into());
        match api.replace(&name, &PostParams::default(), &changed).await {
            Ok(r) => break r,
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 10 => attempt += 1,
            Err(e) => panic!("replace {kind}: {e}"),
        }
    };
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv.as_str()),
        "{kind} resourceVersion moves"
    );
    assert_eq!(
        replaced
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("changed"))
            .map(String::as_str),
        Some("yes")
    );
    api.delete(&name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete {kind}: {e}"));
    // Pods on a node are deleted gracefully by the kubelet; everything else goes at once.
    eventually(40, &format!("{kind} gone after delete"), || async {
        api.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_for_each_kind() {
    let tc = TestCluster::start().await;
    namespace(&tc, "crud").await;
    let pod_spec = json!({"containers": [{"name": "c", "image": "busybox:1.36"}]});
    let template = json!({"metadata": {"labels": {"app": "a"}}, "spec": pod_spec});
    let cases: Vec<(&str, &str, &str, bool, Value)> = vec![
        (
            "v1",
            "Namespace",
            "namespaces",
            false,
            json!({"metadata": {"name": "crud-ns"}}),
        ),
        (
            "v1",
            "ConfigMap",
            "configmaps",
            true,
            json!({"metadata": {"name": "cm"}, "data": {"a": "1"}}),
        ),
        (
            "v1",
            "Secret",
            "secrets",
            true,
            json!({"metadata": {"name": "s"}, "stringData": {"p": "x"}}),
        ),
        (
            "v1",
            "Service",
            "services",
            true,
            json!({"metadata": {"name": "svc"}, "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}}),
        ),
        (
            "v1",
            "Endpoints",
            "endpoints",
            true,
            json!({"metadata": {"name": "external-db"}, "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 5432}]}]}),
        ),
        (
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            false,
            json!({"metadata": {"name": "pv"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/tmp/x"}}}),
        ),
        (
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
            json!({"metadata": {"name": "pvc"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        ),
        (
            "storage.k8s.io/v1",
            "StorageClass",
            "storageclasses",
            false,
            json!({"metadata": {"name": "fast"}, "provisioner": "rancher.io/local-path"}),
        ),
        (
            "v1",
            "Pod",
            "pods",
            true,
            json!({"metadata": {"name": "pod"}, "spec": pod_spec}),
        ),
        (
            "apps/v1",
            "Deployment",
            "deployments",
            true,
            json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": template}}),
        ),
        (
            "apps/v1",
            "ReplicaSet",
            "replicasets",
            true,
            json!({"metadata": {"name": "rs"}, "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": template}}),
        ),
        (
            "apps/v1",
            "StatefulSet",
            "statefulsets",
            true,
            json!({"metadata": {"name": "sts"}, "spec": {"serviceName": "svc", "selector": {"matchLabels": {"app": "a"}}, "template": template}}),
        ),
        (
            "batch/v1",
            "Job",
            "jobs",
            true,
            json!({"metadata": {"name": "job"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}}}}),
        ),
        (
            "batch/v1",
            "CronJob",
            "cronjobs",
            true,
            json!({"metadata": {"name": "cj"}, "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "OnFailure"}}}}}}),
        ),
        (
            "v1",
            "Event",
            "events",
            true,
            json!({"metadata": {"name": "ev"}, "involvedObject": {"kind": "Pod", "name": "pod"}, "reason": "Started", "message": "m"}),
        ),
        (
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            json!({"metadata": {"name": "robot"}}),
        ),
        (
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            crd_gateway(),
        ),
    ];
    for (api_version, kind, plural, namespaced, body) in cases {
        check_crud(&tc, api_version, kind, plural, namespaced, body).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_store_base64_and_fold_string_data() {
    let tc = TestCluster::start().await;
    namespace(&tc, "s").await;
    let api: Api<Secret> = Api::namespaced(tc.client.clone(), "s");
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "db"}, "stringData": {"password": "hunter2"}}),
    )
    .expect("secret");
    let created = api
        .create(&PostParams::default(), &s)
        .await
        .expect("created");
    let data = created.data.expect("data");
    assert_eq!(data["password"].0, b"hunter2");
    assert!(created.string_data.is_none());
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_stale_updates_and_existing_names() {
    let tc = TestCluster::start().await;
    namespace(&tc, "c").await;
    let api: Api<ConfigMap> = Api::namespaced(tc.client.clone(), "c");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "x"}, "data": {"a": "1"}})).expect("cm");
    let v1 = api
        .create(&PostParams::default(), &cm)
        .await
        .expect("created");
    let err = api
        .create(&PostParams::default(), &cm)
        .await
        .expect_err("exists");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err}"
    );
    let mut v2 = v1.clone();
    v2.data = Some([("a".to_owned(), "2".to_owned())].into());
    api.replace("x", &PostParams::default(), &v2)
        .await
        .expect("first update");
    let mut stale = v1.clone();
    stale.data = Some([("a".to_owned(), "3".to_owned())].into());
    let err = api
        .replace("x", &PostParams::default(), &stale)
        .await
        .expect_err("stale");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );
    assert_eq!(
        api.get("x").await.expect("get").data.expect("data")["a"],
        "2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_patch_types() {
    let tc = TestCluster::start().await;
    namespace(&tc, "p").await;
    let api: Api<Deployment> = Api::namespaced(tc.client.clone(), "p");
    let pp = PatchParams::apply("tester");
    let applied = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"a": "1", "b": "2"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:1"}, {"name": "side", "image": "side:1"}]}}}});
    let d = api
        .patch("web", &pp, &Patch::Apply(&applied))
        .await
        .expect("apply creates");
    assert_eq!(d.metadata.generation, Some(1));
    let mf = d.metadata.managed_fields.expect("managedFields");
    assert_eq!(mf[0].manager.as_deref(), Some("tester"));

    // Strategic merge: containers merge by name.
    let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:2"}]}}}});
    let d = api
        .patch("web", &PatchParams::default(), &Patch::Strategic(&smp))
        .await
        .expect("strategic");
    let cs = d.spec.template.spec.expect("pod spec").containers;
    assert_eq!(
        cs.iter()
            .map(|c| (c.name.as_str(), c.image.as_deref().unwrap_or("")))
            .collect::<Vec<_>>(),
        [("web", "web:2"), ("side", "side:1")]
    );
    assert_eq!(d.metadata.generation, Some(2));

    // Merge patch replaces lists and deletes with null.
    let mp = json!({"metadata": {"labels": {"b": null}}});
    let d = api
        .patch("web", &PatchParams::default(), &Patch::Merge(&mp))
        .await
        .expect("merge");
    assert!(!d.metadata.labels.expect("labels").contains_key("b"));

    // JSON patch, including a failing test operation.
    let jp: json_patch_ops::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/replicas", "value": 4}]))
            .expect("json patch");
    let d = api
        .patch("web", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .expect("json patch");
    assert_eq!(d.spec.replicas, Some(4));
    let bad: json_patch_ops::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/replicas", "value": 9}]))
            .expect("json patch");
    let err = api
        .patch("web", &PatchParams::default(), &Patch::<()>::Json(bad))
        .await
        .expect_err("test op fails");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );

    // Re-applying without a label removes it; another manager conflicts unless forced.
    let mut again = applied.clone();
    again["metadata"]["labels"] = json!({"a": "1"});
    again["spec"]["replicas"] = json!(4);
    let d = api
        .patch("web", &pp, &Patch::Apply(&again))
        .await
        .expect("re-apply");
    assert_eq!(
        d.metadata
            .labels
            .expect("labels")
            .keys()
            .collect::<Vec<_>>(),
        ["a"]
    );
    let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 7}});
    let err = api
        .patch("web", &PatchParams::apply("other"), &Patch::Apply(&other))
        .await
        .expect_err("conflict");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.message.contains("tester")),
        "{err}"
    );
    let d = api
        .patch(
            "web",
            &PatchParams::apply("other").force(),
            &Patch::Apply(&other),
        )
        .await
        .expect("forced");
    assert_eq!(d.spec.replicas, Some(7));

    // Dry run changes nothing.
    let dry = json!({"spec": {"replicas": 1}});
    let d = api
        .patch(
            "web",
            &PatchParams::default().dry_run(),
            &Patch::Merge(&dry),
        )
        .await
        .expect("dry run");
    assert_eq!(d.spec.replicas, Some(1));
    assert_eq!(api.get("web").await.expect("get").spec.replicas, Some(7));
}

mod json_patch_ops {
    pub(crate) use json_patch::Patch;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selectors_and_pagination() {
    let tc = TestCluster::start().await;
    namespace(&tc, "l").await;
    let api: Api<ConfigMap> = Api::namespaced(tc.client.clone(), "l");
    for (name, app) in [
        ("a", "postgresql"),
        ("b", "redis"),
        ("c", "postgresql"),
        ("d", "api"),
    ] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": app}}}))
                .expect("cm");
        api.create(&PostParams::default(), &cm)
            .await
            .expect("created");
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app=postgresql"))
                .await
                .expect("list")
        ),
        ["a", "c"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app in (redis,api)"))
                .await
                .expect("list")
        ),
        ["b", "d"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app!=postgresql"))
                .await
                .expect("list")
        ),
        // Objects without the label match `!=`: kube-root-ca.crt, published in every
        // namespace as on a real server, is one.
        ["b", "d", "kube-root-ca.crt"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .expect("list")
        ),
        ["c"]
    );
    let page = api
        .list(&ListParams::default().limit(3))
        .await
        .expect("page 1");
    let token = page.metadata.continue_.clone().expect("continue token");
    assert_eq!(page.items.len(), 3);
    let rest = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect("page 2");
    // Four config maps of the test and kube-root-ca.crt.
    assert_eq!(rest.items.len(), 2);
    assert!(rest.metadata.continue_.as_deref().is_none_or(str::is_empty));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_and_await_condition() {
    let tc = TestCluster::start().await;
    namespace(&tc, "w").await;
    let api: Api<ConfigMap> = Api::namespaced(tc.client.clone(), "w");
    let events = tokio::spawn({
        let api = api.clone();
        async move {
            let stream =
                watcher(api, watcher::Config::default().labels("watched=yes")).applied_objects();
            tokio::pin!(stream);
            let mut seen = Vec::new();
            while let Some(cm) = stream.try_next().await.expect("watch stream") {
                let v = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get("v"))
                    .cloned()
                    .unwrap_or_default();
                seen.push(format!("{}={v}", cm.metadata.name.unwrap_or_default()));
                if seen.iter().any(|s| s == "x=3") {
                    return seen;
                }
            }
            seen
        }
    });
    let ready = tokio::spawn(await_condition(
        api.clone(),
        "x",
        |cm: Option<&ConfigMap>| {
            cm.and_then(|c| c.data.as_ref())
                .and_then(|d| d.get("v"))
                .is_some_and(|v| v == "3")
        },
    ));
    for v in 1..=3 {
        let cm: ConfigMap = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"watched": "yes"}}, "data": {"v": v.to_string()}}))
        .expect("cm");
        api.patch("x", &PatchParams::apply("t"), &Patch::Apply(&cm))
            .await
            .expect("apply");
        let other: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("other{v}")}})).expect("cm");
        api.create(&PostParams::default(), &other)
            .await
            .expect("unwatched");
    }
    let done = tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("condition in time")
        .expect("task");
    assert!(done.expect("await_condition").is_some());
    let seen = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("watch in time")
        .expect("task");
    assert!(
        seen.iter().all(|s| s.starts_with("x=")),
        "only selected objects: {seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("x=3"));

    // Deletion is observed as well.
    let uid = api.get("x").await.expect("get").metadata.uid.expect("uid");
    api.delete("x", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = await_condition(api.clone(), "x", conditions::is_deleted(&uid));
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("deleted in time")
        .expect("await");
}

fn crd_gateway() -> Value {
    json!({"metadata": {"name": "gateways.networking.istio.io"}, "spec": {"group": "networking.istio.io", "scope": "Namespaced",
        "names": {"kind": "Gateway", "plural": "gateways", "singular": "gateway", "listKind": "GatewayList", "shortNames": ["gw"]},
        "versions": [
            {"name": "v1beta1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
            {"name": "v1alpha3", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_crd_kinds_after_creation() {
    let tc = TestCluster::start().await;
    let before = Discovery::new(tc.client.clone())
        .run()
        .await
        .expect("discovery");
    assert!(
        before
            .get("apps")
            .is_some_and(|g| g.recommended_kind("StatefulSet").is_some())
    );
    assert!(before.get("networking.istio.io").is_none());
    let crds = dynamic(
        &tc,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        None,
    );
    let mut crd = crd_gateway();
    crd["apiVersion"] = json!("apiextensions.k8s.io/v1");
    crd["kind"] = json!("CustomResourceDefinition");
    let created = crds
        .create(&PostParams::default(), &obj(crd))
        .await
        .expect("crd created");
    let established = created.data["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established);
    let after = Discovery::new(tc.client.clone())
        .run()
        .await
        .expect("discovery");
    let group = after.get("networking.istio.io").expect("group discovered");
    let (ar, caps) = group.recommended_kind("Gateway").expect("Gateway kind");
    assert_eq!(
        (ar.version.as_str(), ar.plural.as_str()),
        ("v1beta1", "gateways")
    );
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let (ar, _) = pinned_kind(
        &tc.client,
        &GroupVersionKind::gvk("networking.istio.io", "v1alpha3", "Gateway"),
    )
    .await
    .expect("pinned");
    namespace(&tc, "istio-system").await;
    let gws: Api<DynamicObject> = Api::namespaced_with(tc.client.clone(), "istio-system", &ar);
    let gw = obj(
        json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway", "metadata": {"name": "titanium-gateway"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}),
    );
    gws.create(&PostParams::default(), &gw)
        .await
        .expect("gateway stored");
    let got = gws.get("titanium-gateway").await.expect("gateway read");
    assert_eq!(got.data["spec"]["servers"][0]["port"]["number"], 80);
    // Deleting the CRD removes its objects and its discovery entry.
    crds.delete("gateways.networking.istio.io", &DeleteParams::default())
        .await
        .expect("crd deleted");
    let last = Discovery::new(tc.client.clone())
        .run()
        .await
        .expect("discovery");
    assert!(last.get("networking.istio.io").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_cascades() {
    let tc = TestCluster::start().await;
    namespace(&tc, "doomed").await;
    let cms: Api<ConfigMap> = Api::namespaced(tc.client.clone(), "doomed");
    for i in 0..5 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).expect("cm");
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("created");
    }
    let blocked: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .expect("cm");
    cms.create(&PostParams::default(), &blocked)
        .await
        .expect("created");
    let nss: Api<Namespace> = Api::all(tc.client.clone());
    let uid = nss
        .get("doomed")
        .await
        .expect("ns")
        .metadata
        .uid
        .expect("uid");
    nss.delete("doomed", &DeleteParams::background())
        .await
        .expect("delete accepted");
    let ns = nss.get("doomed").await.expect("still terminating");
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    let err = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "late"}})).expect("cm"),
        )
        .await
        .expect_err("terminating");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );
    // The finalizer holds the namespace until it is removed.
    eventually(5, "plain configmaps deleted", || async {
        let l = cms.list(&ListParams::default()).await.ok()?;
        (l.items.len() == 1).then_some(())
    })
    .await;
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release");
    let gone = await_condition(nss.clone(), "doomed", conditions::is_deleted(&uid));
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("namespace gone in time")
        .expect("await");
    assert!(
        cms.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_follows_propagation_policy() {
    let tc = TestCluster::start().await;
    namespace(&tc, "gc").await;
    let deploys: Api<Deployment> = Api::namespaced(tc.client.clone(), "gc");
    let rss: Api<ReplicaSet> = Api::namespaced(tc.client.clone(), "gc");
    let template = json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}});
    for (owner, policy) in [
        ("bg", DeleteParams::background()),
        ("fg", DeleteParams::foreground()),
        ("orph", DeleteParams::orphan()),
    ] {
        let d: Deployment = serde_json::from_value(json!({"metadata": {"name": owner}, "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": template}})).expect("d");
        let d = deploys
            .create(&PostParams::default(), &d)
            .await
            .expect("owner");
        let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": format!("{owner}-rs"), "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
            "name": owner, "uid": d.metadata.uid, "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": template}})).expect("rs");
        rss.create(&PostParams::default(), &rs)
            .await
            .expect("dependent");
        deploys.delete(owner, &policy).await.expect("owner delete");
        let rs_name = format!("{owner}-rs");
        eventually(5, "owner gone", || async {
            deploys.get_opt(owner).await.ok()?.is_none().then_some(())
        })
        .await;
        if owner == "orph" {
            let rs = rss.get(&rs_name).await.expect("orphan survives");
            assert!(
                rs.metadata.owner_references.unwrap_or_default().is_empty(),
                "owner reference removed"
            );
        } else {
            eventually(5, "dependent collected", || async {
                rss.get_opt(&rs_name).await.ok()?.is_none().then_some(())
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_is_separate_from_spec() {
    let tc = TestCluster::start().await;
    namespace(&tc, "st").await;
    let crds = dynamic(
        &tc,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        None,
    );
    let crd = obj(
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"kind": "Widget", "plural": "widgets"},
        "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}),
    );
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("crd");
    let api = dynamic(&tc, "example.com/v1", "Widget", "widgets", Some("st"));
    let w = obj(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}, "status": {"phase": "Made-up"}}),
    );
    let created = api
        .create(&PostParams::default(), &w)
        .await
        .expect("widget");
    assert!(
        created.data.get("status").is_none(),
        "status is dropped on create"
    );
    assert_eq!(created.metadata.generation, Some(1));
    let st = json!({"status": {"phase": "Ready"}, "spec": {"size": 99}});
    let w = api
        .patch_status("w", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .expect("status patch");
    assert_eq!(
        (
            w.data["status"]["phase"].as_str(),
            w.data["spec"]["size"].as_i64()
        ),
        (Some("Ready"), Some(1)),
        "status patch leaves spec alone"
    );
    assert_eq!(
        w.metadata.generation,
        Some(1),
        "status changes do not bump generation"
    );
    let main = json!({"spec": {"size": 2}, "status": {"phase": "Overwritten"}});
    let w = api
        .patch("w", &PatchParams::default(), &Patch::Merge(&main))
        .await
        .expect("main patch");
    assert_eq!(
        (
            w.data["status"]["phase"].as_str(),
            w.data["spec"]["size"].as_i64()
        ),
        (Some("Ready"), Some(2)),
        "main resource ignores status"
    );
    assert_eq!(w.metadata.generation, Some(2));
    let err = api
        .patch("w", &PatchParams::default(), &Patch::Strategic(&main))
        .await
        .expect_err("no strategic merge for CRs");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 415),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_see_every_event() {
    let tc = TestCluster::start().await;
    namespace(&tc, "mw").await;
    let api: Api<ConfigMap> = Api::namespaced(tc.client.clone(), "mw");
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut handles = Vec::new();
    for _ in 0..10 {
        let api = api.clone();
        let rv = rv.clone();
        handles.push(tokio::spawn(async move {
            let stream = api
                .watch(&kube::api::WatchParams::default(), &rv)
                .await
                .expect("watch");
            tokio::pin!(stream);
            let mut n = 0;
            while let Some(ev) = stream.next().await {
                if matches!(ev.expect("event"), kube::core::WatchEvent::Added(_)) {
                    n += 1;
                    if n == 20 {
                        break;
                    }
                }
            }
            n
        }));
    }
    for i in 0..20 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).expect("cm");
        api.create(&PostParams::default(), &cm)
            .await
            .expect("created");
    }
    for h in handles {
        let n = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("in time")
            .expect("task");
        assert_eq!(n, 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_lists_and_delete_collection() {
    let tc = TestCluster::start().await;
    namespace(&tc, "md").await;
    let api: Api<ConfigMap> = Api::namespaced(tc.client.clone(), "md");
    for (name, label) in [
        ("a", "drop"),
        ("b", "drop"),
        ("c", "drop"),
        ("keep", "keep"),
    ] {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"x": label}}, "data": {"big": "payload"}}),
        )
        .expect("cm");
        api.create(&PostParams::default(), &cm)
            .await
            .expect("created");
    }
    let meta = api
        .list_metadata(&ListParams::default().labels("x=drop"))
        .await
        .expect("metadata list");
    let names: Vec<_> = meta
        .items
        .iter()
        .filter_map(|m| m.metadata.name.clone())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(
        meta.metadata
            .resource_version
            .is_some_and(|r| !r.is_empty())
    );
    let deleted = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("x=drop"),
        )
        .await
        .expect("delete collection");
    let deleted = deleted.left().expect("the deleted objects are returned");
    assert_eq!(deleted.items.len(), 3);
    let left: Vec<_> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    // kube-root-ca.crt is in every namespace, as on a real server.
    assert_eq!(left, ["keep", "kube-root-ca.crt"]);
    let got = api.get_metadata("keep").await.expect("metadata get");
    assert_eq!(got.metadata.labels.expect("labels")["x"], "keep");
}
