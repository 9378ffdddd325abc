//! `metrics.k8s.io/v1beta1`, as metrics-server's aggregated API serves it: `nodes`
//! (NodeMetrics) and `pods` (PodMetrics), get and list only, from the usage the kubelet's
//! sampler measured (`crate::metrics`). What `kubectl top` reads.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::{Query, ServerState, json_response};
use crate::metrics::Usage;
use crate::status::ApiError;

/// The group metrics-server registers its APIService for.
pub(crate) const GROUP: &str = "metrics.k8s.io";
/// Its one version.
pub(crate) const VERSION: &str = "v1beta1";

/// The group as `/apis` lists it.
pub(super) fn group() -> Value {
    let gv = format!("{GROUP}/{VERSION}");
    json!({"name": GROUP, "versions": [{"groupVersion": gv, "version": VERSION}],
        "preferredVersion": {"groupVersion": gv, "version": VERSION}})
}

fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
        ],
    })
}

/// Which collection or object a request names.
#[derive(Clone, Copy)]
enum Target<'a> {
    Nodes(Option<&'a str>),
    Pods(Option<&'a str>, Option<&'a str>),
}

/// Serve one request below `/apis/metrics.k8s.io/v1beta1`.
pub(super) fn serve(
    st: &Arc<ServerState>,
    rest: &[&str],
    req: &Request,
) -> Result<Response, ApiError> {
    let target = match rest {
        [] => return Ok(json_response(StatusCode::OK, &resource_list())),
        ["nodes"] => Target::Nodes(None),
        ["nodes", name] => Target::Nodes(Some(name)),
        ["pods"] => Target::Pods(None, None),
        ["namespaces", ns, "pods"] => Target::Pods(Some(ns), None),
        ["namespaces", ns, "pods", name] => Target::Pods(Some(ns), Some(name)),
        _ => {
            return Err(ApiError::no_resource(&format!(
                "apis/{GROUP}/{VERSION}/{}",
                rest.join("/")
            )));
        }
    };
    let q = Query::parse(req)?;
    let resource = match target {
        Target::Nodes(_) => "nodes",
        Target::Pods(..) => "pods",
    };
    if req.method() != Method::GET || q.flag("watch") {
        // Read-only, as metrics-server's storage implements only get and list.
        let verb = if q.flag("watch") {
            "watch".to_owned()
        } else {
            req.method().to_string()
        };
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({verb} {resource}.{GROUP})"
        )));
    }
    let (verb, ns) = match target {
        Target::Nodes(name) => (if name.is_some() { "get" } else { "list" }, ""),
        Target::Pods(ns, name) => (
            if name.is_some() { "get" } else { "list" },
            ns.unwrap_or(""),
        ),
    };
    if st.deny.iter().any(|r| r.matches(verb, GROUP, resource, ns)) {
        let scope = if ns.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{ns}\"")
        };
        return Err(ApiError::forbidden(format!(
            "{resource}.{GROUP} is forbidden: User \"kubernetes-admin\" cannot {verb} resource \"{resource}\" in API group \"{GROUP}\" {scope}"
        )));
    }
    let (labels, fields) = super::rest::selectors(&q)?;
    let selected = |o: &Value| labels.matches(o) && fields.matches(o);
    let body = match target {
        Target::Nodes(Some(name)) => {
            node_metrics(st, name).ok_or_else(|| not_found("nodemetrics", name))?
        }
        Target::Pods(Some(ns), Some(name)) => pod_metrics(st, ns, name)
            .ok_or_else(|| not_found("podmetrics", &format!("{ns}/{name}")))?,
        Target::Nodes(None) => {
            let (nodes, _) = st.store.list("/nodes", None);
            let items: Vec<Value> = nodes
                .iter()
                .filter_map(|n| node_metrics(st, str_at(n, "/metadata/name")))
                .filter(|o| selected(o))
                .collect();
            list("NodeMetricsList", items)
        }
        Target::Pods(ns, _) => {
            let (pods, _) = st.store.list("/pods", ns);
            let items: Vec<Value> = pods
                .iter()
                .filter_map(|p| {
                    pod_metrics(
                        st,
                        str_at(p, "/metadata/namespace"),
                        str_at(p, "/metadata/name"),
                    )
                })
                .filter(|o| selected(o))
                .collect();
            list("PodMetricsList", items)
        }
    };
    Ok(json_response(StatusCode::OK, &body))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn not_found(resource: &str, name: &str) -> ApiError {
    let mut e = ApiError::no_resource(resource);
    e.message = format!("{resource}.{GROUP} \"{name}\" not found");
    e.details = Some(json!({"name": name, "group": GROUP, "kind": resource}));
    e
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items})
}

fn time(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A usage as metrics-server writes it: CPU in nanocores, memory in KiB.
fn usage(u: Usage) -> Value {
    json!({"cpu": format!("{}n", u.cpu_nanocores), "memory": format!("{}Ki", u.memory_bytes / 1024)})
}

fn window(d: std::time::Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// The metrics object's metadata: the object's name, namespace and labels, and the time it
/// was measured as its creation time (metrics-server's objects are made per request).
fn metadata(obj: &Value, now: &str) -> Value {
    let mut m = json!({"name": str_at(obj, "/metadata/name"), "creationTimestamp": now});
    let ns = str_at(obj, "/metadata/namespace");
    if !ns.is_empty() {
        m["namespace"] = json!(ns);
    }
    if let Some(labels) = obj.pointer("/metadata/labels") {
        m["labels"] = labels.clone();
    }
    m
}

/// A Node's metrics: the machine's usage over the last window, once there is one.
fn node_metrics(st: &ServerState, name: &str) -> Option<Value> {
    let node = st.store.get("/nodes", "", name)?;
    let u = st.metrics.node()?;
    Some(json!({
        "kind": "NodeMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata(&node, &crate::api::now()),
        "timestamp": time(u.timestamp), "window": window(u.window),
        "usage": usage(u.usage),
    }))
}

/// A running pod's metrics, once two samples of its containers were taken.
fn pod_metrics(st: &ServerState, ns: &str, name: &str) -> Option<Value> {
    let pod = st.store.get("/pods", ns, name)?;
    let u = st.metrics.pod(ns, name)?;
    let containers: Vec<Value> = u
        .containers
        .iter()
        .map(|(c, cu)| json!({"name": c, "usage": usage(*cu)}))
        .collect();
    Some(json!({
        "kind": "PodMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata(&pod, &crate::api::now()),
        "timestamp": time(u.timestamp), "window": window(u.window),
        "containers": containers,
    }))
}
