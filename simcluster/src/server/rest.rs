//! The REST verbs on resources: get, list, create, update, patch, delete, deletecollection,
//! the `status` and `scale` subresources, and the hand-off to registered subresources.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Query, ServerState, SubresourceTarget, json_response, watch};
use crate::api::{self, DeleteOptions, Propagation, WriteOptions};
use crate::patch::PatchType;
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::table;

const MAX_BODY: usize = 256 * 1024 * 1024;

/// How the client wants objects rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Render {
    Object,
    Table,
    Metadata,
}

pub(super) fn render_mode(req_accept: &str) -> Render {
    // The first acceptable type wins; plain JSON always is.
    for part in req_accept.split(',') {
        if part.contains("as=Table") {
            return Render::Table;
        }
        if part.contains("as=PartialObjectMetadata") {
            return Render::Metadata;
        }
        if part.contains("application/json") || part.contains("*/*") {
            return Render::Object;
        }
    }
    Render::Object
}

fn header_str(req: &Request, h: header::HeaderName) -> String {
    req.headers()
        .get(h)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn verb_of(method: &Method, has_name: bool, q: &Query) -> &'static str {
    match (method.as_str(), has_name) {
        ("GET", _) if q.flag("watch") => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

fn check_access(
    st: &ServerState,
    rt: &ResourceType,
    ns: &str,
    verb: &str,
    sub: Option<&str>,
) -> Result<(), ApiError> {
    let resource = match sub {
        Some(s) => format!("{}/{s}", rt.plural),
        None => rt.plural.clone(),
    };
    if st
        .deny
        .iter()
        .any(|r| r.matches(verb, &rt.group, &resource, ns))
    {
        let scope = if ns.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{ns}\"")
        };
        return Err(ApiError::forbidden(format!(
            "{} is forbidden: User \"kubernetes-admin\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
            rt.qualified(),
            rt.group
        )));
    }
    Ok(())
}

async fn read_body(req: Request) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body failed: {e}")))
}

fn decode_object(ct: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    let base = ct.split(';').next().unwrap_or_default().trim();
    match base {
        "" | "application/json" | "*/*" => api::decode_body(bytes, false),
        "application/yaml" | "application/x-yaml" | "text/yaml" => api::decode_body(bytes, true),
        "application/vnd.kubernetes.protobuf" => crate::proto::decode(bytes).map_err(|e| {
            ApiError::unsupported_media_type(format!("decoding the protobuf body: {e}"))
        }),
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml"
        ))),
    }
}

fn write_options(q: &Query) -> WriteOptions {
    WriteOptions {
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        field_manager: q.get("fieldManager").map(str::to_owned),
        force: q.flag("force"),
    }
}

fn render_one(rt: &ResourceType, obj: Value, mode: Render, q: &Query) -> Value {
    match mode {
        Render::Object => obj,
        Render::Metadata => table::partial_metadata(&obj),
        Render::Table => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            table::table(
                rt,
                &[obj],
                &rv,
                q.get("includeObject").unwrap_or("Metadata"),
                true,
            )
        }
    }
}

pub(super) async fn handle(
    st: &Arc<ServerState>,
    rt: ResourceType,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let q = Query::parse(&req)?;
    let method = req.method().clone();
    let verb = verb_of(&method, name.is_some(), &q);
    let ns_str = if rt.namespaced {
        ns.clone().unwrap_or_default()
    } else {
        String::new()
    };
    check_access(st, &rt, &ns_str, verb, sub.as_deref())?;
    let mode = render_mode(&header_str(&req, header::ACCEPT));
    let ct = header_str(&req, header::CONTENT_TYPE);

    if let (Some(sub), Some(name)) = (sub.as_deref(), name.as_deref()) {
        return match sub {
            "status" => status_subresource(st, &rt, &ns_str, name, method, &q, &ct, req).await,
            "scale" => scale_subresource(st, &rt, &ns_str, name, method, &q, &ct, req).await,
            _ => plugged_subresource(st, &rt, &ns_str, name, sub, req).await,
        };
    }

    let call = Call {
        st,
        rt: &rt,
        ns: &ns_str,
        q: &q,
        ct: &ct,
        mode,
    };
    match (method.as_str(), name) {
        ("GET", _) if q.flag("watch") => watch::serve(st.clone(), rt, ns, &q, mode),
        ("GET", Some(name)) => call.get(&name),
        ("GET", None) => {
            call.served()?;
            list(st, &rt, ns.as_deref(), &q, mode)
        }
        ("POST", None) => call.create(ns.clone(), req).await,
        ("PUT", Some(name)) => call.replace(&name, req).await,
        ("PATCH", Some(name)) => call.patch(&name, req).await,
        ("DELETE", Some(name)) => call.delete(&name, req).await,
        ("DELETE", None) => {
            let opts = delete_options(&q, &read_body(req).await?)?;
            delete_collection(st, &rt, ns.as_deref(), &q, &opts)
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow method {m} on {}",
            rt.plural
        ))),
    }
}

/// A subresource a handler was registered for (`pods/exec`, `pods/log`, ...), which gets the
/// whole request.
async fn plugged_subresource(
    st: &ServerState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    sub: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let handler = st
        .subresources
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&(rt.key(), sub.to_owned()))
        .cloned();
    let Some(handler) = handler else {
        return Err(ApiError::no_resource(&format!(
            "{}/{sub}: not served by this simulated cluster",
            rt.plural
        )));
    };
    let target = SubresourceTarget {
        resource: rt.clone(),
        namespace: ns.to_owned(),
        name: name.to_owned(),
    };
    Ok(handler.handle(target, req).await)
}

/// What the verbs on a resource or an object read of their request, besides its body.
struct Call<'a> {
    st: &'a Arc<ServerState>,
    rt: &'a ResourceType,
    /// The namespace ("" for cluster-scoped kinds).
    ns: &'a str,
    q: &'a Query,
    /// The request's Content-Type.
    ct: &'a str,
    mode: Render,
}

impl Call<'_> {
    /// `obj` rendered as the client asked, with `code`.
    fn reply(&self, code: StatusCode, obj: Value) -> Response {
        json_response(code, &render_one(self.rt, obj, self.mode, self.q))
    }

    /// Refuses reads of a kind that only supports create (the access reviews).
    fn served(&self) -> Result<(), ApiError> {
        if self.rt.create_only {
            return Err(ApiError::method_not_allowed(format!(
                "{} only supports create",
                self.rt.plural
            )));
        }
        Ok(())
    }

    /// GET of one object.
    fn get(&self, name: &str) -> Result<Response, ApiError> {
        self.served()?;
        let obj = api::get(&self.st.store, self.rt, self.ns, name)?;
        Ok(self.reply(StatusCode::OK, obj))
    }

    /// POST to the collection of namespace `ns` (none for a cluster-scoped kind); an access
    /// review is answered, not stored.
    async fn create(&self, ns: Option<String>, req: Request) -> Result<Response, ApiError> {
        let rt = self.rt;
        let Some(ns) = ns.or_else(|| (!rt.namespaced).then(String::new)) else {
            return Err(ApiError::method_not_allowed(format!(
                "create of {} needs a namespace in the path",
                rt.plural
            )));
        };
        let body = decode_object(self.ct, &read_body(req).await?)?;
        if rt.create_only {
            return access_review(self.st, rt, body);
        }
        let obj = api::create(&self.st.store, rt, &ns, body, &write_options(self.q))?;
        Ok(self.reply(StatusCode::CREATED, obj))
    }

    /// PUT of one object.
    async fn replace(&self, name: &str, req: Request) -> Result<Response, ApiError> {
        let body = decode_object(self.ct, &read_body(req).await?)?;
        let obj = api::update(
            &self.st.store,
            self.rt,
            self.ns,
            name,
            body,
            None,
            &write_options(self.q),
        )?;
        Ok(self.reply(StatusCode::OK, obj))
    }

    /// PATCH of one object, in any of the four patch types; an apply may create it.
    async fn patch(&self, name: &str, req: Request) -> Result<Response, ApiError> {
        let (store, rt, ns, ct) = (&self.st.store, self.rt, self.ns, self.ct);
        let ptype = PatchType::from_content_type(ct).ok_or_else(|| {
            ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({ct}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
            ))
        })?;
        if ptype == PatchType::Apply && store.get(&rt.key(), ns, name).is_none() {
            // An apply that creates the object also needs the create permission.
            check_access(self.st, rt, ns, "create", None)?;
        }
        let body = read_body(req).await?;
        let (obj, created) = api::patch(
            store,
            rt,
            ns,
            name,
            ptype,
            &body,
            None,
            &write_options(self.q),
        )?;
        let code = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(self.reply(code, obj))
    }

    /// DELETE of one object, answered with the object or a Status as the real server does.
    async fn delete(&self, name: &str, req: Request) -> Result<Response, ApiError> {
        let opts = delete_options(self.q, &read_body(req).await?)?;
        let d = api::delete(&self.st.store, self.rt, self.ns, name, &opts)?;
        let (code, body) = api::delete_response(self.rt, &d);
        Ok(json_response(
            StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
            &body,
        ))
    }
}

fn delete_options(q: &Query, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let v = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        api::decode_body(body, false)?
    };
    let mut o = DeleteOptions::from_body(&v)?;
    if o.propagation.is_none() {
        o.propagation = match q.get("propagationPolicy") {
            Some("Foreground") => Some(Propagation::Foreground),
            Some("Background") => Some(Propagation::Background),
            Some("Orphan") => Some(Propagation::Orphan),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: \"{other}\""
                )));
            }
            None => None,
        };
    }
    if o.grace_period.is_none() {
        o.grace_period = q.get("gracePeriodSeconds").and_then(|g| g.parse().ok());
    }
    o.dry_run |= q.get("dryRun") == Some("All");
    Ok(o)
}

pub(super) fn selectors(q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let ls = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fs = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((ls, fs))
}

fn list(
    st: &Arc<ServerState>,
    rt: &ResourceType,
    ns: Option<&str>,
    q: &Query,
    mode: Render,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(q)?;
    let (items, rv) = st
        .store
        .list(&rt.key(), if rt.namespaced { ns } else { None });
    let (start_after, list_rv) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("continue key is not valid: malformed token")
                })?;
            let after = (
                decoded["ns"].as_str().unwrap_or_default().to_owned(),
                decoded["name"].as_str().unwrap_or_default().to_owned(),
            );
            (Some(after), decoded["rv"].as_u64().unwrap_or(rv))
        }
        None => (None, rv),
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let key_of = |o: &Value| {
        (
            o.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            o.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let matching: Vec<&Arc<Value>> = items
        .iter()
        .filter(|o| start_after.as_ref().is_none_or(|a| key_of(o) > *a))
        .filter(|o| ls.matches(o) && fs.matches(o))
        .collect();
    let (page, rest) = match limit {
        Some(l) if matching.len() > l => (&matching[..l], matching.len() - l),
        _ => (&matching[..], 0),
    };
    let objects: Vec<Value> = page.iter().map(|o| api::to_version(rt, o)).collect();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if rest > 0
        && let Some(last) = objects.last()
    {
        let (lns, lname) = key_of(last);
        let token = json!({"rv": list_rv, "ns": lns, "name": lname}).to_string();
        metadata["continue"] =
            json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
        metadata["remainingItemCount"] = json!(rest);
    }
    let body = match mode {
        Render::Table => {
            let mut t = table::table(
                rt,
                &objects,
                &list_rv.to_string(),
                q.get("includeObject").unwrap_or("Metadata"),
                true,
            );
            t["metadata"] = metadata;
            t
        }
        Render::Metadata => json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
            "items": objects.iter().map(table::partial_metadata).collect::<Vec<_>>(),
        }),
        Render::Object => json!({
            "kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": metadata, "items": objects,
        }),
    };
    Ok(json_response(StatusCode::OK, &body))
}

fn delete_collection(
    st: &Arc<ServerState>,
    rt: &ResourceType,
    ns: Option<&str>,
    q: &Query,
    opts: &DeleteOptions,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(q)?;
    let (items, rv) = st
        .store
        .list(&rt.key(), if rt.namespaced { ns } else { None });
    let mut deleted = Vec::new();
    for o in items.iter().filter(|o| ls.matches(o) && fs.matches(o)) {
        let ons = o
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = o
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match api::delete(&st.store, rt, ons, name, opts) {
            Ok(api::Deleted::Pending(v) | api::Deleted::Gone(v)) => deleted.push(v),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": rv.to_string()}, "items": deleted,
        }),
    ))
}

#[expect(clippy::too_many_arguments, reason = "the parts of one request")]
async fn status_subresource(
    st: &Arc<ServerState>,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    method: Method,
    q: &Query,
    ct: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let store = &st.store;
    let obj = match method.as_str() {
        "GET" => api::get(store, rt, ns, name)?,
        "PUT" => {
            let body = decode_object(ct, &read_body(req).await?)?;
            api::update(store, rt, ns, name, body, Some("status"), &write_options(q))?
        }
        "PATCH" => {
            let ptype = PatchType::from_content_type(ct).ok_or_else(|| {
                ApiError::unsupported_media_type(format!("unsupported patch type {ct}"))
            })?;
            let body = read_body(req).await?;
            api::patch(
                store,
                rt,
                ns,
                name,
                ptype,
                &body,
                Some("status"),
                &write_options(q),
            )?
            .0
        }
        m => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow method {m} on {}/status",
                rt.plural
            )));
        }
    };
    Ok(json_response(StatusCode::OK, &obj))
}

fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let md = &obj["metadata"];
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": md["name"], "namespace": md["namespace"], "uid": md["uid"],
            "resourceVersion": md["resourceVersion"], "creationTimestamp": md["creationTimestamp"]},
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

#[expect(clippy::too_many_arguments, reason = "the parts of one request")]
async fn scale_subresource(
    st: &Arc<ServerState>,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    method: Method,
    q: &Query,
    ct: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let store = &st.store;
    let current = api::get(store, rt, ns, name)?;
    let mut scale = scale_of(&current);
    match method.as_str() {
        "GET" => return Ok(json_response(StatusCode::OK, &scale)),
        "PUT" => scale = decode_object(ct, &read_body(req).await?)?,
        "PATCH" => {
            let ptype = PatchType::from_content_type(ct).ok_or_else(|| {
                ApiError::unsupported_media_type(format!("unsupported patch type {ct}"))
            })?;
            let p = api::decode_body(&read_body(req).await?, ptype == PatchType::Apply)?;
            match ptype {
                PatchType::Json => crate::patch::json_patch(&mut scale, &p)
                    .map_err(|e| ApiError::bad_request(e.0))?,
                PatchType::Strategic => crate::patch::strategic_merge(&mut scale, &p),
                _ => crate::patch::merge_patch(&mut scale, &p),
            }
        }
        m => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow method {m} on {}/scale",
                rt.plural
            )));
        }
    }
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| {
            ApiError::invalid(
                rt,
                name,
                &[("spec.replicas".into(), "Required value".into())],
            )
        })?;
    if replicas < 0 {
        return Err(ApiError::invalid(
            rt,
            name,
            &[(
                "spec.replicas".into(),
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )],
        ));
    }
    let mut patch = json!({"spec": {"replicas": replicas}});
    if let Some(rv) = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    let (obj, _) = api::patch(
        store,
        rt,
        ns,
        name,
        PatchType::Merge,
        patch.to_string().as_bytes(),
        None,
        &write_options(q),
    )?;
    Ok(json_response(StatusCode::OK, &scale_of(&obj)))
}

fn access_review(
    st: &Arc<ServerState>,
    rt: &ResourceType,
    mut body: Value,
) -> Result<Response, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body of the request is not a {} object",
            rt.kind
        )));
    }
    if body
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != rt.kind)
    {
        return Err(ApiError::bad_request(format!(
            "expected a {} object",
            rt.kind
        )));
    }
    let attrs = body.pointer("/spec/resourceAttributes").cloned();
    let (allowed, reason) = match attrs {
        Some(a) => {
            let s = |k: &str| {
                a.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let resource = if s("subresource").is_empty() {
                s("resource")
            } else {
                format!("{}/{}", s("resource"), s("subresource"))
            };
            match st
                .deny
                .iter()
                .find(|r| r.matches(&s("verb"), &s("group"), &resource, &s("namespace")))
            {
                Some(rule) => (
                    false,
                    format!("denied by the simulated cluster's deny rule {rule}"),
                ),
                None => (
                    true,
                    "allowed: the simulated cluster grants everything not denied".to_owned(),
                ),
            }
        }
        None => (
            true,
            "allowed: the simulated cluster grants non-resource URLs".to_owned(),
        ),
    };
    body["apiVersion"] = json!(rt.api_version());
    body["kind"] = json!(rt.kind);
    body["metadata"] = json!({"creationTimestamp": null});
    body["status"] = json!({"allowed": allowed, "reason": reason});
    if !allowed {
        body["status"]["denied"] = json!(true);
    }
    Ok(json_response(StatusCode::CREATED, &body))
}
