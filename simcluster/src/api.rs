//! API semantics on top of the store: create, update, patch and delete with the checks,
//! defaults, finalizers and ownership rules of a real API server.
//!
//! Both the HTTP layer and the in-process controllers call these functions, so a controller's
//! write is validated and watched exactly like a client's.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::patch::{self, PatchType};
use crate::resources::ResourceType;
use crate::status::{ApiError, success_status};
use crate::store::{Mutation, Store, View};
use crate::validate;

/// Options of a create, update or patch.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteOptions {
    /// `dryRun=All`: validate and answer, but store nothing.
    pub dry_run: bool,
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// `force` (server-side apply only).
    pub force: bool,
}

/// How dependents are treated when their owner is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// Delete the owner now, dependents afterwards.
    Background,
    /// Delete dependents first, then the owner.
    Foreground,
    /// Keep dependents, removing their owner reference.
    Orphan,
}

/// Options of a delete (`DeleteOptions`).
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    /// `propagationPolicy` (or `orphanDependents`).
    pub propagation: Option<Propagation>,
    /// `gracePeriodSeconds`.
    pub grace_period: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Parse a DeleteOptions body (possibly empty).
    ///
    /// # Errors
    /// A body that is not a valid DeleteOptions.
    pub(crate) fn from_body(body: &Value) -> Result<Self, ApiError> {
        let mut o = DeleteOptions::default();
        if body.is_null() {
            return Ok(o);
        }
        o.propagation = match body.get("propagationPolicy").and_then(Value::as_str) {
            None => match body.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => Some(Propagation::Orphan),
                Some(false) => Some(Propagation::Background),
                None => None,
            },
            Some("Background") => Some(Propagation::Background),
            Some("Foreground") => Some(Propagation::Foreground),
            Some("Orphan") => Some(Propagation::Orphan),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                )));
            }
        };
        o.grace_period = body.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.uid = body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned);
        o.resource_version = body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        o.dry_run = body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        Ok(o)
    }
}

/// The answer to a delete.
#[derive(Debug, Clone)]
pub(crate) enum Deleted {
    /// Deletion is pending (finalizers, graceful pod deletion, namespace termination).
    Pending(Value),
    /// The object is gone; this was its last state.
    Gone(Value),
}

/// The current time as the API server writes it.
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn name_of(obj: &Value) -> &str {
    meta(obj, "name").unwrap_or_default()
}

/// The finalizers of an object.
pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    id.as_bytes()[..5]
        .iter()
        .map(|b| CHARS[*b as usize % CHARS.len()] as char)
        .collect()
}

/// Check the `apiVersion`, `kind` and `metadata` of a request body.
fn check_envelope(rt: &ResourceType, body: &mut Value, ns: &str) -> Result<(), ApiError> {
    let Some(m) = body.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the body of the request is not a {} object",
            rt.kind
        )));
    };
    match m.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            m.insert("apiVersion".into(), Value::String(rt.api_version()));
        }
        Some(v) if v == rt.api_version() => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
    }
    match m.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            m.insert("kind".into(), Value::String(rt.kind.clone()));
        }
        Some(k) if k == rt.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
    }
    let md = m
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(md) = md.as_object_mut() else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    if rt.namespaced {
        match md.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                md.insert("namespace".into(), Value::String(ns.to_owned()));
            }
            Some(n) if n == ns => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    } else {
        md.remove("namespace");
    }
    Ok(())
}

fn check_namespace(
    view: &View<'_>,
    rt: &ResourceType,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    if !rt.namespaced {
        return Ok(());
    }
    match view.get("/namespaces", "", ns) {
        None => Err(ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("namespaces \"{ns}\" not found"),
            details: Some(json!({"name": ns, "kind": "namespaces"})),
        }),
        Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
            let mut e = ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                rt.qualified()
            ));
            let mut details = json!({"name": name, "kind": rt.plural, "causes": [{
                "reason": "NamespaceTerminating",
                "message": format!("namespace {ns} is being terminated"),
                "field": "metadata.namespace",
            }]});
            if !rt.group.is_empty() {
                details["group"] = json!(rt.group);
            }
            e.details = Some(details);
            Err(e)
        }
        Some(_) => Ok(()),
    }
}

fn invalid_if(rt: &ResourceType, name: &str, errs: validate::FieldErrors) -> Result<(), ApiError> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt, name, &errs))
    }
}

fn allocate_service_fields(view: &View<'_>, obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        return;
    }
    let ty = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    if ty == "ExternalName" {
        return;
    }
    let mut used_ips = std::collections::HashSet::new();
    let mut used_ports = std::collections::HashSet::new();
    for s in view.list("/services", None) {
        if let Some(ip) = s.pointer("/spec/clusterIP").and_then(Value::as_str) {
            used_ips.insert(ip.to_owned());
        }
        for p in s
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
                used_ports.insert(n);
            }
        }
    }
    let ip = obj
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if ip.is_empty() {
        // The range starts at the `kubernetes` Service's address: each cluster leases its own
        // loopback block (see kubelet::NetworkLease), so concurrent clusters never collide.
        let (b, c) = view
            .get("/services", "default", "kubernetes")
            .and_then(|k| {
                k.pointer("/spec/clusterIP")?
                    .as_str()?
                    .parse::<std::net::Ipv4Addr>()
                    .ok()
            })
            .map_or((1u32, 0u32), |k| {
                (u32::from(k.octets()[1]), u32::from(k.octets()[2]))
            });
        let free = (1u32..(256 - c) * 250)
            .map(|i| format!("127.{b}.{}.{}", c + i / 250, i % 250 + 1))
            .find(|ip| !used_ips.contains(ip))
            .unwrap_or_else(|| format!("127.{b}.255.254"));
        obj["spec"]["clusterIP"] = Value::String(free.clone());
        obj["spec"]["clusterIPs"] = json!([free]);
    } else if obj.pointer("/spec/clusterIPs").is_none() {
        obj["spec"]["clusterIPs"] = json!([ip]);
    }
    if ip != "None" {
        obj["spec"]["ipFamilies"] = json!(["IPv4"]);
        obj["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        let mut next = 30_000;
        if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter(|p| p.is_object()) {
                if p.get("nodePort").and_then(Value::as_i64).is_none() {
                    while used_ports.contains(&next) {
                        next += 1;
                    }
                    p["nodePort"] = json!(next);
                    used_ports.insert(next);
                }
            }
        }
        if ty == "LoadBalancer" && obj.pointer("/spec/externalTrafficPolicy").is_none() {
            obj["spec"]["externalTrafficPolicy"] = json!("Cluster");
            obj["spec"]["allocateLoadBalancerNodePorts"] = json!(true);
        }
    }
}

/// The DefaultStorageClass admission step: a claim that names no class (the field is absent,
/// not `""`) gets the class annotated as the default.
fn default_storage_class(view: &View<'_>, obj: &mut Value) {
    if obj
        .pointer("/spec/storageClassName")
        .is_some_and(|v| !v.is_null())
    {
        return;
    }
    let default = view
        .list("storage.k8s.io/storageclasses", None)
        .into_iter()
        .filter(|sc| {
            sc.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                .and_then(Value::as_str)
                == Some("true")
        })
        .max_by_key(|sc| {
            sc.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .and_then(|sc| meta(sc, "name").map(str::to_owned));
    if let (Some(name), Some(spec)) = (default, obj.get_mut("spec").and_then(Value::as_object_mut))
    {
        spec.insert("storageClassName".into(), Value::String(name));
    }
}

fn crd_status(obj: &mut Value) {
    let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let stored: Vec<Value> = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    let t = now();
    obj["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t},
        ],
    });
}

/// Turn a create request body into the object to store.
fn prepare_create(
    view: &View<'_>,
    rt: &ResourceType,
    ns: &str,
    mut obj: Value,
) -> Result<Value, ApiError> {
    check_envelope(rt, &mut obj, ns)?;
    let name = name_of(&obj).to_owned();
    let name = if name.is_empty() {
        match meta(&obj, "generateName") {
            Some(g) if !g.is_empty() => {
                let n = format!("{g}{}", random_suffix());
                obj["metadata"]["name"] = Value::String(n.clone());
                n
            }
            _ => {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    &[(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        }
    } else {
        name
    };
    if let Some(msg) = validate::check_name(rt.name_rule, &name) {
        return Err(ApiError::invalid(
            rt,
            &name,
            &[("metadata.name".into(), msg)],
        ));
    }
    if meta(&obj, "resourceVersion").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    check_namespace(view, rt, ns, &name)?;
    if view
        .get(&rt.key(), if rt.namespaced { ns } else { "" }, &name)
        .is_some()
    {
        return Err(ApiError::already_exists(rt, &name));
    }
    validate::apply_defaults(rt, &mut obj);
    invalid_if(rt, &name, validate::validate(rt, &obj))?;
    let md = obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    md.insert(
        "uid".into(),
        Value::String(uuid::Uuid::new_v4().to_string()),
    );
    md.insert("creationTimestamp".into(), Value::String(now()));
    md.remove("deletionTimestamp");
    md.remove("deletionGracePeriodSeconds");
    if rt.has_generation {
        md.insert("generation".into(), json!(1));
    } else {
        md.remove("generation");
    }
    if rt.has_subresource("status")
        && !matches!(
            rt.kind.as_str(),
            "Namespace" | "PersistentVolumeClaim" | "PersistentVolume" | "Node"
        )
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "PersistentVolumeClaim") => {
            default_storage_class(view, &mut obj);
            add_finalizer(&mut obj, crate::controllers::PVC_PROTECTION);
        }
        ("", "PersistentVolume") => add_finalizer(&mut obj, crate::controllers::PV_PROTECTION),
        ("", "Service") => allocate_service_fields(view, &mut obj),
        ("", "Pod") => {
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd_status(&mut obj),
        _ => {}
    }
    Ok(obj)
}

/// Add a finalizer unless it is there, as an admission step does on create.
fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let fins = &mut obj["metadata"]["finalizers"];
    if !fins.is_array() {
        *fins = json!([]);
    }
    if let Some(list) = fins.as_array_mut()
        && !list.iter().any(|f| f == finalizer)
    {
        list.push(json!(finalizer));
    }
}

fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// Turn an update (or a patched object) into the object to store.
fn prepare_update(
    rt: &ResourceType,
    old: &Value,
    mut new: Value,
    sub: Option<&str>,
) -> Result<Value, ApiError> {
    let name = name_of(old).to_owned();
    let ns = meta(old, "namespace").unwrap_or_default().to_owned();
    check_envelope(rt, &mut new, &ns)?;
    check_preconditions(rt, old, &new, &name)?;
    let mut obj = with_status(rt, old, new, sub);
    keep_server_fields(rt, old, &mut obj, sub);
    validate::apply_defaults(rt, &mut obj);
    invalid_if(rt, &name, validate::validate(rt, &obj))?;
    invalid_if(rt, &name, validate::validate_update(rt, old, &obj))?;
    if old.pointer("/metadata/deletionTimestamp").is_some() {
        let before = finalizers(old);
        if let Some(added) = finalizers(&obj).into_iter().find(|f| !before.contains(f)) {
            return Err(ApiError::invalid(
                rt,
                &name,
                &[(
                    "metadata.finalizers".into(),
                    format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [\"{added}\"]"
                    ),
                )],
            ));
        }
    }
    if rt.has_generation && spec_part(old) != spec_part(&obj) {
        let g = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        obj["metadata"]["generation"] = json!(g + 1);
    }
    if rt.kind == "CustomResourceDefinition" && !rt.custom && sub.is_none() {
        crd_status(&mut obj);
    }
    Ok(obj)
}

/// The update's name must be the URL's, and its resourceVersion and uid, when given, the
/// stored object's.
fn check_preconditions(
    rt: &ResourceType,
    old: &Value,
    new: &Value,
    name: &str,
) -> Result<(), ApiError> {
    match meta(new, "name") {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        _ => {}
    }
    if let Some(rv) = meta(new, "resourceVersion").filter(|v| !v.is_empty())
        && Some(rv) != meta(old, "resourceVersion")
    {
        return Err(ApiError::conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if let Some(uid) = meta(new, "uid").filter(|v| !v.is_empty())
        && Some(uid) != meta(old, "uid")
    {
        return Err(ApiError::conflict(
            rt,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta(old, "uid").unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

/// The status subresource writes only the status (onto the stored object); the main resource
/// of a kind with a status subresource keeps the stored status.
fn with_status(rt: &ResourceType, old: &Value, mut new: Value, sub: Option<&str>) -> Value {
    if sub == Some("status") {
        let mut o = old.clone();
        set_status(&mut o, new.get("status"));
        o
    } else {
        if rt.has_subresource("status") {
            set_status(&mut new, old.get("status"));
        }
        new
    }
}

/// Sets `obj`'s status to `status`, or removes it for `None`.
fn set_status(obj: &mut Value, status: Option<&Value>) {
    match status {
        Some(s) => obj["status"] = s.clone(),
        None => {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
    }
}

/// Fields the server owns come from the stored object: identity, timestamps, generation and
/// resourceVersion, managedFields when the update has none, a Service's cluster IPs when the
/// update leaves them empty, and a Namespace's spec.
fn keep_server_fields(rt: &ResourceType, old: &Value, obj: &mut Value, sub: Option<&str>) {
    for f in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "resourceVersion",
    ] {
        match old["metadata"].get(f) {
            Some(v) => obj["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if obj["metadata"].get("managedFields").is_none()
        && let Some(mf) = old["metadata"].get("managedFields")
    {
        obj["metadata"]["managedFields"] = mf.clone();
    }
    if rt.kind == "Service" && !rt.custom && obj.get("spec").is_some_and(Value::is_object) {
        for f in ["clusterIP", "clusterIPs"] {
            if obj
                .pointer(&format!("/spec/{f}"))
                .is_none_or(|v| v.is_null() || v == "")
                && let Some(v) = old.pointer(&format!("/spec/{f}"))
            {
                obj["spec"][f] = v.clone();
            }
        }
    }
    if rt.kind == "Namespace" && !rt.custom && sub.is_none() {
        obj["spec"] = old.get("spec").cloned().unwrap_or(json!({}));
    }
}

/// Whether an update leaves a terminating object without finalizers, which deletes it.
fn finishes_deletion(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some() && finalizers(obj).is_empty()
}

fn after_commit(store: &Store, rt: &ResourceType, obj: &Value, removed: bool) {
    if rt.kind == "CustomResourceDefinition" && !rt.custom {
        if removed {
            remove_custom_objects(store, obj);
            store.with_registry_mut(|r| r.remove_crd(obj));
        } else {
            store.with_registry_mut(|r| r.add_crd(obj));
        }
    }
}

fn remove_custom_objects(store: &Store, crd: &Value) {
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let key = format!("{group}/{plural}");
    let (items, _) = store.list(&key, None);
    for item in items {
        let ns = meta(&item, "namespace").unwrap_or_default().to_owned();
        let name = name_of(&item).to_owned();
        // Removal of an object that is already gone is not an error.
        let _ = store.mutate(&key, &ns, &name, |_, _| Ok(Mutation::Remove));
    }
}

/// Convert a stored object to the served version of its resource.
pub(crate) fn to_version(rt: &ResourceType, obj: &Arc<Value>) -> Value {
    let mut v = obj.as_ref().clone();
    v["apiVersion"] = Value::String(rt.api_version());
    v
}

fn scope_ns<'a>(rt: &ResourceType, ns: &'a str) -> &'a str {
    if rt.namespaced { ns } else { "" }
}

/// Read one object.
///
/// # Errors
/// 404 when it does not exist.
pub(crate) fn get(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    name: &str,
) -> Result<Value, ApiError> {
    store
        .get(&rt.key(), scope_ns(rt, ns), name)
        .map(|o| to_version(rt, &o))
        .ok_or_else(|| ApiError::not_found(rt, name))
}

/// Create an object.
///
/// # Errors
/// 400 for a malformed body, 404/403 for a missing or terminating namespace, 409 when it
/// exists, 422 when invalid.
pub(crate) fn create(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    body: Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let ns = scope_ns(rt, ns);
    let name = name_of(&body).to_owned();
    if name.is_empty() {
        // generateName: prepare first to learn the name, then store under it.
        let obj = prepare_with_store(store, rt, ns, body)?;
        let name = name_of(&obj).to_owned();
        return commit_create(store, rt, ns, &name, obj, opts);
    }
    let mut prepared = None;
    let out = store.mutate(&rt.key(), ns, &name, |view, _| {
        let obj = prepare_create(view, rt, ns, body)?;
        if opts.dry_run {
            prepared = Some(obj);
            Ok(Mutation::Unchanged)
        } else {
            Ok(Mutation::Put(obj))
        }
    })?;
    if let Some(obj) = prepared {
        return Ok(obj);
    }
    let obj = out
        .after
        .ok_or_else(|| ApiError::internal("create stored nothing"))?;
    after_commit(store, rt, &obj, false);
    Ok(to_version(rt, &obj))
}

fn prepare_with_store(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    body: Value,
) -> Result<Value, ApiError> {
    let mut result = None;
    store.mutate(&rt.key(), ns, "", |view, _| {
        result = Some(prepare_create(view, rt, ns, body)?);
        Ok(Mutation::Unchanged)
    })?;
    result.ok_or_else(|| ApiError::internal("prepare stored nothing"))
}

fn commit_create(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    obj: Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    if opts.dry_run {
        return Ok(obj);
    }
    let out = store.mutate(&rt.key(), ns, name, |_, cur| {
        if cur.is_some() {
            return Err(ApiError::already_exists(rt, name));
        }
        Ok(Mutation::Put(obj))
    })?;
    let obj = out
        .after
        .ok_or_else(|| ApiError::internal("create stored nothing"))?;
    after_commit(store, rt, &obj, false);
    Ok(to_version(rt, &obj))
}

/// Replace an object (PUT), or its status with `sub == Some("status")`.
///
/// # Errors
/// 404 when missing, 409 on a stale resourceVersion, 422 when invalid or an immutable field
/// changes.
pub(crate) fn update(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    body: Value,
    sub: Option<&str>,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let ns = scope_ns(rt, ns);
    let mut dry = None;
    let out = store.mutate(&rt.key(), ns, name, |_, cur| {
        let cur = cur.ok_or_else(|| ApiError::not_found(rt, name))?;
        let obj = prepare_update(rt, cur, body, sub)?;
        if opts.dry_run {
            dry = Some(obj);
            return Ok(Mutation::Unchanged);
        }
        Ok(Mutation::Put(obj))
    })?;
    if let Some(obj) = dry {
        return Ok(obj);
    }
    let obj = out
        .after
        .ok_or_else(|| ApiError::internal("update stored nothing"))?;
    finish_if_done(store, rt, ns, name, &obj);
    after_commit(store, rt, &obj, false);
    Ok(to_version(rt, &obj))
}

/// Remove an object whose deletion was pending once its last finalizer is gone.
fn finish_if_done(store: &Store, rt: &ResourceType, ns: &str, name: &str, obj: &Value) {
    if finishes_deletion(obj)
        && !(rt.kind == "Namespace" && !rt.custom && namespace_spec_finalizers(obj))
    {
        let uid = meta(obj, "uid").map(str::to_owned);
        let out = store.mutate(&rt.key(), ns, name, |_, cur| match cur {
            Some(c) if meta(c, "uid").map(str::to_owned) == uid && finishes_deletion(c) => {
                Ok(Mutation::Remove)
            }
            _ => Ok(Mutation::Unchanged),
        });
        if let Ok(o) = out
            && o.removed
            && let Some(last) = o.after
        {
            after_commit(store, rt, &last, true);
        }
    }
}

fn namespace_spec_finalizers(obj: &Value) -> bool {
    obj.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Decode a request body as JSON, or as YAML for server-side apply.
///
/// # Errors
/// 400 naming the parse error.
pub(crate) fn decode_body(bytes: &[u8], yaml: bool) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if yaml {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not UTF-8: {e}")))?;
        serde_saphyr::from_str::<Value>(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}")))
    }
}

fn set_remove(set: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(m) = set.as_object_mut() else { return };
    if rest.is_empty() {
        m.remove(first);
        return;
    }
    if let Some(child) = m.get_mut(first) {
        set_remove(child, rest);
        if child
            .as_object()
            .is_some_and(|c| c.keys().all(|k| k == "."))
        {
            m.remove(first);
        }
    }
}

fn server_side_apply(
    rt: &ResourceType,
    cur: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, ApiError> {
    let status_sub = rt.has_subresource("status");
    let new_set = patch::field_set(applied, status_sub);
    let mut managed: Vec<Value> = cur
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_mine = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply")
    };
    let old_set = managed
        .iter()
        .find(|e| is_mine(e))
        .and_then(|e| e.get("fieldsV1").cloned())
        .unwrap_or(json!({}));
    let mut conflicts = Vec::new();
    for leaf in patch::leaf_paths(&new_set) {
        for e in managed.iter_mut().filter(|e| !is_mine(e)) {
            let owns = e
                .get("fieldsV1")
                .is_some_and(|s| patch::set_contains(s, &leaf));
            if owns && patch::value_at(cur, &leaf) != patch::value_at(applied, &leaf) {
                if force {
                    if let Some(s) = e.get_mut("fieldsV1") {
                        set_remove(s, &leaf);
                    }
                } else {
                    let m = e
                        .get("manager")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    conflicts.push((m, patch::path_to_string(&leaf)));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(ApiError::apply_conflict(conflicts));
    }
    let mut obj = cur.clone();
    for path in patch::removed_paths(&old_set, &new_set) {
        let shared = managed.iter().filter(|e| !is_mine(e)).any(|e| {
            e.get("fieldsV1")
                .is_some_and(|s| patch::set_contains(s, &path))
        });
        if !shared {
            patch::remove_path(&mut obj, &path);
        }
    }
    patch::strategic_merge(&mut obj, applied);
    managed.retain(|e| !is_mine(e));
    managed.retain(|e| {
        e.get("fieldsV1")
            .is_some_and(|s| s.as_object().is_some_and(|m| !m.is_empty()))
    });
    managed.push(managed_entry(rt, manager, new_set));
    obj["metadata"]["managedFields"] = Value::Array(managed);
    Ok(obj)
}

fn managed_entry(rt: &ResourceType, manager: &str, set: Value) -> Value {
    json!({"manager": manager, "operation": "Apply", "apiVersion": rt.api_version(), "time": now(), "fieldsType": "FieldsV1", "fieldsV1": set})
}

/// Patch an object (or its status). An apply patch to a missing object creates it.
///
/// Returns the object and whether it was created.
///
/// # Errors
/// 400 for an undecodable patch, 404 when missing, 409 on conflicts, 415 for a strategic merge
/// patch of a custom resource, 422 when the result is invalid.
#[expect(
    clippy::too_many_arguments,
    reason = "mirrors the REST call's parameters"
)]
pub(crate) fn patch(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    ptype: PatchType,
    body: &[u8],
    sub: Option<&str>,
    opts: &WriteOptions,
) -> Result<(Value, bool), ApiError> {
    let ns = scope_ns(rt, ns);
    if ptype == PatchType::Strategic && rt.custom {
        return Err(ApiError::unsupported_media_type(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        ));
    }
    let p = decode_body(body, ptype == PatchType::Apply)?;
    if ptype == PatchType::Json {
        serde_json::from_value::<json_patch::Patch>(p.clone())
            .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    }
    let manager = opts.field_manager.clone().unwrap_or_default();
    if ptype == PatchType::Apply {
        check_apply(&p, name, &manager)?;
    }
    let mut created = false;
    let mut dry = None;
    let out = store.mutate(&rt.key(), ns, name, |view, cur| {
        let obj = match cur {
            None if ptype == PatchType::Apply && sub.is_none() => {
                let mut body = p.clone();
                body["metadata"]["name"] = Value::String(name.to_owned());
                let mut obj = prepare_create(view, rt, ns, body)?;
                let set = patch::field_set(&p, rt.has_subresource("status"));
                obj["metadata"]["managedFields"] = json!([managed_entry(rt, &manager, set)]);
                created = true;
                obj
            }
            None => return Err(ApiError::not_found(rt, name)),
            Some(cur) => {
                let patched = apply_patch(rt, cur, ptype, &p, &manager, opts.force)?;
                prepare_update(rt, cur, patched, sub)?
            }
        };
        if opts.dry_run {
            dry = Some(obj);
            return Ok(Mutation::Unchanged);
        }
        Ok(Mutation::Put(obj))
    })?;
    if let Some(obj) = dry {
        return Ok((obj, created));
    }
    let obj = out
        .after
        .ok_or_else(|| ApiError::internal("patch stored nothing"))?;
    finish_if_done(store, rt, ns, name, &obj);
    after_commit(store, rt, &obj, false);
    Ok((to_version(rt, &obj), created))
}

/// An apply configuration must name a field manager, be an object with an object metadata,
/// set apiVersion and kind, and (if it names one) the URL's name.
fn check_apply(p: &Value, name: &str, manager: &str) -> Result<(), ApiError> {
    if manager.is_empty() {
        return Err(ApiError::invalid_kind(
            "meta.k8s.io",
            "PatchOptions",
            "",
            &[(
                "fieldManager".into(),
                "Required value: is required for apply patch".into(),
            )],
        ));
    }
    if !p.is_object() || p.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request(
            "the apply configuration must be an object with an object metadata",
        ));
    }
    for f in ["apiVersion", "kind"] {
        if p.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!(
                "invalid object type: {f} must be set in an apply configuration"
            )));
        }
    }
    if let Some(n) = meta(p, "name")
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

/// The stored object `cur` with the patch `p` of type `ptype` applied (before the update's
/// checks and defaults).
fn apply_patch(
    rt: &ResourceType,
    cur: &Value,
    ptype: PatchType,
    p: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, ApiError> {
    let mut target = cur.clone();
    target["apiVersion"] = Value::String(rt.api_version());
    match ptype {
        PatchType::Merge => {
            patch::merge_patch(&mut target, p);
            Ok(target)
        }
        PatchType::Json => {
            patch::json_patch(&mut target, p).map_err(|e| ApiError {
                code: 422,
                reason: "Invalid",
                message: e.0,
                details: None,
            })?;
            Ok(target)
        }
        PatchType::Strategic => {
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            patch::strategic_merge(&mut target, p);
            Ok(target)
        }
        PatchType::Apply => server_side_apply(rt, &target, p, manager, force),
    }
}

fn default_propagation(rt: &ResourceType) -> Propagation {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("batch", "Job") | ("", "ReplicationController") if !rt.custom => Propagation::Orphan,
        _ => Propagation::Background,
    }
}

/// Delete an object.
///
/// # Errors
/// 404 when missing, 409 when a precondition fails.
pub(crate) fn delete(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let ns = scope_ns(rt, ns);
    let mut pending = false;
    let mut dry = None;
    let out = store.mutate(&rt.key(), ns, name, |_, cur| {
        let cur = cur.ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(uid) = &opts.uid
            && meta(cur, "uid") != Some(uid.as_str()) {
                return Err(ApiError::conflict(rt, name, &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta(cur, "uid").unwrap_or_default()
                )));
            }
        if let Some(rv) = &opts.resource_version
            && meta(cur, "resourceVersion") != Some(rv.as_str()) {
                return Err(ApiError::conflict(rt, name, &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta(cur, "resourceVersion").unwrap_or_default()
                )));
            }
        let mut obj = cur.as_ref().clone();
        let mut fins = finalizers(cur);
        let policy = opts.propagation.unwrap_or_else(|| default_propagation(rt));
        let extra = match policy {
            Propagation::Foreground => Some("foregroundDeletion"),
            Propagation::Orphan => Some("orphan"),
            Propagation::Background => None,
        };
        if let Some(f) = extra
            && !fins.iter().any(|x| x == f) && (opts.propagation.is_some() || has_dependents_hint(rt)) {
                fins.push(f.to_owned());
            }
        let is_namespace = rt.kind == "Namespace" && !rt.custom;
        let grace = graceful_pod(rt, cur, opts);
        if is_namespace || !fins.is_empty() || grace.is_some() || cur.pointer("/metadata/deletionTimestamp").is_some() {
            pending = true;
            if cur.pointer("/metadata/deletionTimestamp").is_none() {
                let at = match grace {
                    Some(g) => (chrono::Utc::now() + chrono::Duration::seconds(g))
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    None => now(),
                };
                obj["metadata"]["deletionTimestamp"] = Value::String(at);
                // The namespace registry sets no grace period; other kinds record theirs.
                if !is_namespace {
                    obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace.unwrap_or(0));
                }
            }
            if !fins.is_empty() {
                obj["metadata"]["finalizers"] = json!(fins);
            }
            if is_namespace {
                if !obj.get("status").is_some_and(Value::is_object) {
                    obj["status"] = json!({});
                }
                obj["status"]["phase"] = json!("Terminating");
            }
            if opts.dry_run {
                dry = Some(obj);
                return Ok(Mutation::Unchanged);
            }
            return Ok(Mutation::Put(obj));
        }
        if opts.dry_run {
            dry = Some(obj);
            return Ok(Mutation::Unchanged);
        }
        Ok(Mutation::Remove)
    })?;
    if let Some(obj) = dry {
        return Ok(if pending {
            Deleted::Pending(obj)
        } else {
            Deleted::Gone(obj)
        });
    }
    let obj = out
        .after
        .ok_or_else(|| ApiError::internal("delete changed nothing"))?;
    if out.removed {
        after_commit(store, rt, &obj, true);
        Ok(Deleted::Gone(to_version(rt, &obj)))
    } else {
        Ok(Deleted::Pending(to_version(rt, &obj)))
    }
}

/// Owner kinds whose default orphaning needs a finalizer (they usually have dependents).
fn has_dependents_hint(rt: &ResourceType) -> bool {
    !rt.custom && matches!(rt.kind.as_str(), "Job" | "ReplicationController")
}

/// The grace period of a pod that a kubelet must stop before it disappears.
fn graceful_pod(rt: &ResourceType, pod: &Value, opts: &DeleteOptions) -> Option<i64> {
    if rt.custom || rt.kind != "Pod" {
        return None;
    }
    let scheduled = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !scheduled || phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let g = opts
        .grace_period
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30);
    (g > 0).then_some(g)
}

/// The answer body of a delete: the object while deletion is pending, a Status when gone
/// (pods answer with the object, as on a real server).
pub(crate) fn delete_response(rt: &ResourceType, d: &Deleted) -> (u16, Value) {
    match d {
        Deleted::Pending(o) => (200, o.clone()),
        Deleted::Gone(o) if rt.kind == "Pod" && !rt.custom => (200, o.clone()),
        Deleted::Gone(o) => (200, success_status(rt, name_of(o), meta(o, "uid"))),
    }
}

/// Remove a namespace's `kubernetes` finalizer (the namespace controller's last step) and
/// the namespace itself.
pub(crate) fn finalize_namespace(store: &Store, name: &str) {
    let out = store.mutate("/namespaces", "", name, |_, cur| {
        let Some(cur) = cur else {
            return Ok(Mutation::Unchanged);
        };
        let mut obj = cur.as_ref().clone();
        if !obj.get("spec").is_some_and(Value::is_object) {
            obj["spec"] = json!({});
        }
        obj["spec"]["finalizers"] = json!([]);
        if finalizers(&obj).is_empty() {
            Ok(Mutation::Remove)
        } else {
            Ok(Mutation::Put(obj))
        }
    });
    if let Err(e) = out {
        tracing::warn!(namespace = name, error = %e, "finalizing namespace failed");
    }
}
