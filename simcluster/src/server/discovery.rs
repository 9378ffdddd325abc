//! Discovery (`/api`, `/apis`, resource lists), `/version` and the OpenAPI documents kubectl
//! reads before `apply`.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{ServerState, json_response};
use crate::resources::ResourceType;
use crate::status::ApiError;

/// The Kubernetes version the simulator answers as.
pub(crate) const GIT_VERSION: &str = "v1.32.0";

pub(super) fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1", "minor": "32", "gitVersion": GIT_VERSION,
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2024-12-11T00:00:00Z", "goVersion": "go1.23.3", "compiler": "gc",
            "platform": "linux/amd64"
        }),
    )
}

pub(super) fn api_versions(st: &Arc<ServerState>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": st.address}]
        }),
    )
}

fn group_json(group: &str, versions: &[String], preferred: &str) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": {"groupVersion": format!("{group}/{preferred}"), "version": preferred}})
}

fn groups(st: &Arc<ServerState>) -> Vec<Value> {
    let reg = st.store.registry();
    let mut out: Vec<(String, Vec<String>, String)> = Vec::new();
    for (g, v) in reg.group_versions() {
        if g.is_empty() {
            continue;
        }
        let storage = reg
            .resources(&g, &v)
            .and_then(|r| r.first())
            .map(|r| r.storage_version.clone())
            .unwrap_or_else(|| v.clone());
        match out.iter_mut().find(|(name, _, _)| *name == g) {
            Some((_, vs, _)) => vs.push(v),
            None => out.push((g, vec![v], storage)),
        }
    }
    out.iter()
        .map(|(g, vs, pref)| {
            let mut vs = vs.clone();
            // The preferred version first, as the real server lists it.
            vs.sort_by_key(|v| v != pref);
            let pref = if vs.contains(pref) {
                pref.clone()
            } else {
                vs[0].clone()
            };
            group_json(g, &vs, &pref)
        })
        // metrics-server's aggregated group, served by `super::metrics`.
        .chain(std::iter::once(super::metrics::group()))
        .collect()
}

pub(super) fn api_group_list(st: &Arc<ServerState>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups(st)}),
    )
}

pub(super) fn api_group(st: &Arc<ServerState>, group: &str) -> Result<Response, ApiError> {
    let g = groups(st)
        .into_iter()
        .find(|g| g["name"] == group)
        .ok_or_else(|| ApiError::no_resource(&format!("apis/{group}")))?;
    let mut g = g;
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Ok(json_response(StatusCode::OK, &g))
}

fn subresource_entry(rt: &ResourceType, sub: &str) -> Value {
    let (kind, group, version, verbs): (&str, Option<&str>, Option<&str>, &[&str]) = match sub {
        "status" => (rt.kind.as_str(), None, None, &["get", "patch", "update"]),
        "scale" => (
            "Scale",
            Some("autoscaling"),
            Some("v1"),
            &["get", "patch", "update"],
        ),
        "exec" => ("PodExecOptions", None, None, &["create", "get"]),
        "attach" => ("PodAttachOptions", None, None, &["create", "get"]),
        "portforward" => ("PodPortForwardOptions", None, None, &["create", "get"]),
        "log" => ("Pod", None, None, &["get"]),
        "proxy" => (
            "PodProxyOptions",
            None,
            None,
            &["create", "delete", "get", "patch", "update"],
        ),
        "eviction" => ("Eviction", Some("policy"), Some("v1"), &["create"]),
        "binding" => ("Binding", None, None, &["create"]),
        "finalize" => ("Namespace", None, None, &["update"]),
        "token" => (
            "TokenRequest",
            Some("authentication.k8s.io"),
            Some("v1"),
            &["create"],
        ),
        _ => (rt.kind.as_str(), None, None, &["get"]),
    };
    let mut e = json!({"name": format!("{}/{sub}", rt.plural), "singularName": "", "namespaced": rt.namespaced, "kind": kind, "verbs": verbs});
    if let (Some(g), Some(v)) = (group, version) {
        e["group"] = json!(g);
        e["version"] = json!(v);
    }
    e
}

pub(super) fn resource_list(
    st: &Arc<ServerState>,
    group: &str,
    version: &str,
) -> Result<Response, ApiError> {
    let reg = st.store.registry();
    let list = reg.resources(group, version).ok_or_else(|| {
        ApiError::no_resource(&if group.is_empty() {
            format!("api/{version}")
        } else {
            format!("apis/{group}/{version}")
        })
    })?;
    let mut resources = Vec::new();
    for rt in list {
        let mut e = json!({"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind, "verbs": rt.verbs()});
        if !rt.short_names.is_empty() {
            e["shortNames"] = json!(rt.short_names);
        }
        if !rt.categories.is_empty() {
            e["categories"] = json!(rt.categories);
        }
        resources.push(e);
        for sub in &rt.subresources {
            resources.push(subresource_entry(rt, sub));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

/// A protobuf field of wire type 2 (length-delimited).
fn pb_field(num: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![(num << 3) | 2];
    let mut len = data.len();
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            v.push(b);
            break;
        }
        v.push(b | 0x80);
    }
    v.extend_from_slice(data);
    v
}

/// OpenAPI v2 with no definitions. kubectl reads it (as protobuf) to validate a `kind: List`
/// or a kind the v3 document does not list; with no schema for a kind it skips client-side
/// validation, exactly as it does on a real server for kinds without one.
pub(super) fn openapi_v2(req: &Request) -> Response {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if accept.contains("protobuf") {
        // gnostic openapi_v2.Document: swagger = 1, info = 2 (title = 1, version = 2), paths = 8.
        let info = [
            pb_field(1, b"Kubernetes"),
            pb_field(2, GIT_VERSION.as_bytes()),
        ]
        .concat();
        let doc = [pb_field(1, b"2.0"), pb_field(2, &info), pb_field(8, &[])].concat();
        let mut r = (StatusCode::OK, doc).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            ),
        );
        return r;
    }
    json_response(
        StatusCode::OK,
        &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": GIT_VERSION}, "paths": {}, "definitions": {}}),
    )
}

/// Group/versions documented in OpenAPI v3: the built-in ones. Custom resources are left out on
/// purpose: kubectl then checks field validation support on the Namespace document instead.
fn builtin_gvs(st: &Arc<ServerState>) -> Vec<(String, String)> {
    let reg = st.store.registry();
    reg.group_versions()
        .into_iter()
        .filter(|(g, v)| {
            reg.resources(g, v)
                .is_some_and(|rs| rs.iter().any(|r| !r.custom))
        })
        .collect()
}

fn gv_path(g: &str, v: &str) -> String {
    if g.is_empty() {
        format!("api/{v}")
    } else {
        format!("apis/{g}/{v}")
    }
}

fn gv_hash(g: &str, v: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{g}/{v}/{GIT_VERSION}").as_bytes());
    hex::encode(&digest[..16]).to_uppercase()
}

pub(super) fn openapi_v3_root(st: &Arc<ServerState>) -> Response {
    let mut paths = serde_json::Map::new();
    for (g, v) in builtin_gvs(st) {
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", gv_hash(&g, &v))}),
        );
    }
    json_response(StatusCode::OK, &json!({"paths": paths}))
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

pub(super) fn openapi_v3_doc(st: &Arc<ServerState>, path: &str) -> Result<Response, ApiError> {
    let (g, v) = builtin_gvs(st)
        .into_iter()
        .find(|(g, v)| gv_path(g, v) == path)
        .ok_or_else(|| ApiError::no_resource(&format!("openapi/v3/{path}")))?;
    let reg = st.store.registry();
    let mut paths = serde_json::Map::new();
    for rt in reg
        .resources(&g, &v)
        .unwrap_or_default()
        .iter()
        .filter(|r| !r.custom && !r.create_only)
    {
        let item = if rt.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}/{{name}}",
                gv_path(&g, &v),
                rt.plural
            )
        } else {
            format!("/{}/{}/{{name}}", gv_path(&g, &v), rt.plural)
        };
        let schema = json!({"schema": {"type": "object"}});
        // Strategic merge is deliberately not listed: kubectl then computes client-side apply
        // patches from its compiled-in types, which know every merge key.
        paths.insert(item, json!({"patch": {
            "operationId": format!("patch{}", rt.kind),
            "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
            "requestBody": {"content": {
                "application/apply-patch+yaml": schema,
                "application/json-patch+json": schema,
                "application/merge-patch+json": schema,
            }, "required": true},
            "responses": {"200": {"description": "OK"}, "201": {"description": "Created"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        }}));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": GIT_VERSION},
            "paths": paths,
            "components": {"schemas": {}},
        }),
    ))
}
