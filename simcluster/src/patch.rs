//! Patch semantics: JSON merge patch, JSON patch, strategic merge patch and server-side apply.
//!
//! Strategic merge knows the merge keys of the common lists by field name (`containers` by
//! `name`, `volumeMounts` by `mountPath`, ...), which is what the built-in kinds declare in
//! their Go types. Server-side apply keeps per-manager field sets in `metadata.managedFields`
//! in the real `FieldsV1` format and removes fields a manager stops applying.

use serde_json::{Map, Value};

/// The patch content types the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value.
    pub(crate) fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// A patch that could not be applied; becomes a 422 or 400.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct PatchError(pub String);

/// Apply an RFC 7386 merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Apply an RFC 6902 JSON patch.
///
/// # Errors
/// A body that is not a list of operations, or an operation that fails (missing path,
/// failed test).
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &ops)
        .map_err(|e| PatchError(format!("the JSON patch could not be applied: {e}")))
}

/// The merge key of a list field, as the built-in Go types declare it.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "hostAliases" => Some("ip"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                Some("containerPort")
            } else {
                Some("port")
            }
        }
        _ => None,
    }
}

/// Lists of scalars that merge as sets.
fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

/// Apply a strategic merge patch, honouring `$patch`, `$retainKeys`, `$setElementOrder/` and
/// `$deleteFromPrimitiveList/` directives.
pub(crate) fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                *target = strip_directives(patch);
                return;
            }
            merge_map(t, p);
        }
        _ => *target = strip_directives(patch),
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|i| i.get("$patch").is_none() || i.as_object().is_some_and(|m| m.len() > 1))
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_map(t: &mut Map<String, Value>, p: &Map<String, Value>) {
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, pv) in p {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_owned(), pv.as_array().cloned().unwrap_or_default()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) = (
                t.get_mut(field).and_then(Value::as_array_mut),
                pv.as_array(),
            ) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        match pv {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(pm) => {
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                } else if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
                    t.insert(k.clone(), strip_directives(pv));
                } else if let Some(Value::Object(tm)) = t.get_mut(k) {
                    merge_map(tm, pm);
                } else {
                    t.insert(k.clone(), strip_directives(pv));
                }
            }
            Value::Array(pa) => {
                let existing = t.remove(k);
                let merged = match existing {
                    Some(Value::Array(ta)) => merge_list(k, ta, pa),
                    _ => strip_directives(pv).as_array().cloned().unwrap_or_default(),
                };
                t.insert(k.clone(), Value::Array(merged));
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        t.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    for (field, order) in orders {
        if let Some(Value::Array(list)) = t.get_mut(&field) {
            reorder(&field, list, &order);
        }
    }
}

fn same_key(a: &Value, b: &Value, key: &str) -> bool {
    a.get(key).is_some() && a.get(key) == b.get(key)
}

fn merge_list(field: &str, mut target: Vec<Value>, patch: &[Value]) -> Vec<Value> {
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return strip_directives(&Value::Array(patch.to_vec()))
            .as_array()
            .cloned()
            .unwrap_or_default();
    }
    if is_set_list(field) {
        for item in patch {
            if !target.contains(item) {
                target.push(item.clone());
            }
        }
        return target;
    }
    let Some(key) = merge_key(field, patch).or_else(|| merge_key(field, &target)) else {
        return patch.to_vec();
    };
    if !patch.iter().all(Value::is_object) {
        return patch.to_vec();
    }
    for item in patch {
        let directive = item.get("$patch").and_then(Value::as_str);
        let pos = target.iter().position(|t| same_key(t, item, key));
        match (directive, pos) {
            (Some("delete"), Some(i)) => {
                target.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => {
                if let (Some(tm), Some(pm)) = (target[i].as_object_mut(), item.as_object()) {
                    merge_map(tm, pm);
                }
            }
            (_, None) => target.push(strip_directives(item)),
        }
    }
    target
}

fn reorder(field: &str, list: &mut Vec<Value>, order: &[Value]) {
    let key = merge_key(field, list);
    let position = |item: &Value| {
        order.iter().position(|o| match key {
            Some(k) if o.is_object() => same_key(o, item, k),
            _ => o == item,
        })
    };
    let mut indexed: Vec<(usize, usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, v)| (position(&v).unwrap_or(usize::MAX), i, v))
        .collect();
    indexed.sort_by_key(|(p, i, _)| (*p, *i));
    list.extend(indexed.into_iter().map(|(_, _, v)| v));
}

// ---------------------------------------------------------------------------------------------
// Server-side apply.

/// Top-level fields never recorded in a field set.
fn skip_top(k: &str, status_is_subresource: bool) -> bool {
    matches!(k, "apiVersion" | "kind") || (status_is_subresource && k == "status")
}

/// The `FieldsV1` set of the fields an applied configuration sets.
pub(crate) fn field_set(obj: &Value, status_is_subresource: bool) -> Value {
    let mut out = Map::new();
    if let Some(m) = obj.as_object() {
        for (k, v) in m {
            if skip_top(k, status_is_subresource) {
                continue;
            }
            if k == "metadata" {
                let mut meta = Map::new();
                if let Some(mm) = v.as_object() {
                    for (mk, mv) in mm {
                        if matches!(
                            mk.as_str(),
                            "labels" | "annotations" | "finalizers" | "ownerReferences"
                        ) {
                            meta.insert(format!("f:{mk}"), fields_of(mk, mv));
                        }
                    }
                }
                if !meta.is_empty() {
                    out.insert("f:metadata".to_owned(), Value::Object(meta));
                }
                continue;
            }
            out.insert(format!("f:{k}"), fields_of(k, v));
        }
    }
    Value::Object(out)
}

fn fields_of(field: &str, v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, cv)| (format!("f:{k}"), fields_of(k, cv)))
                .collect(),
        ),
        Value::Array(items) if is_set_list(field) => Value::Object(
            items
                .iter()
                .map(|i| (format!("v:{i}"), Value::Object(Map::new())))
                .collect(),
        ),
        Value::Array(items) => match merge_key(field, items) {
            Some(key) if items.iter().all(|i| i.get(key).is_some()) => {
                let mut out = Map::new();
                for item in items {
                    let mut k = Map::new();
                    k.insert(key.to_owned(), item[key].clone());
                    let mut child = fields_of("", item).as_object().cloned().unwrap_or_default();
                    child.insert(".".to_owned(), Value::Object(Map::new()));
                    out.insert(format!("k:{}", Value::Object(k)), Value::Object(child));
                }
                Value::Object(out)
            }
            _ => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    }
}

/// Leaf paths of a field set (each a list of `f:`/`k:`/`v:` elements).
pub(crate) fn leaf_paths(set: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    walk_leaves(set, &mut Vec::new(), &mut out);
    out
}

fn walk_leaves(set: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Some(m) = set.as_object() else { return };
    let children: Vec<_> = m.iter().filter(|(k, _)| k.as_str() != ".").collect();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.push(prefix.clone());
        }
        return;
    }
    for (k, v) in children {
        prefix.push(k.clone());
        walk_leaves(v, prefix, out);
        prefix.pop();
    }
}

/// Whether `set` contains the path or any path below it.
pub(crate) fn set_contains(set: &Value, path: &[String]) -> bool {
    let mut cur = set;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    true
}

/// The topmost paths present in `old` and absent from `new`.
pub(crate) fn removed_paths(old: &Value, new: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    diff_sets(old, Some(new), &mut Vec::new(), &mut out);
    out
}

fn diff_sets(
    old: &Value,
    new: Option<&Value>,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    let Some(om) = old.as_object() else { return };
    for (k, ov) in om {
        if k == "." {
            continue;
        }
        prefix.push(k.clone());
        match new.and_then(|n| n.get(k)) {
            None => out.push(prefix.clone()),
            Some(nv) => diff_sets(ov, Some(nv), prefix, out),
        }
        prefix.pop();
    }
}

/// Remove a path from an object; a missing path is not an error.
pub(crate) fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for p in parents {
        let next = match locate(cur, p) {
            Some(n) => n,
            None => return,
        };
        cur = next;
    }
    if let Some(name) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(name);
        }
    } else if let Some(list) = cur.as_array_mut() {
        list.retain(|item| !element_matches(item, last));
    }
}

fn element_matches(item: &Value, elem: &str) -> bool {
    if let Some(key) = elem.strip_prefix("k:") {
        let Ok(Value::Object(k)) = serde_json::from_str::<Value>(key) else {
            return false;
        };
        k.iter().all(|(kk, kv)| item.get(kk) == Some(kv))
    } else if let Some(v) = elem.strip_prefix("v:") {
        serde_json::from_str::<Value>(v).is_ok_and(|v| &v == item)
    } else {
        false
    }
}

fn locate<'a>(cur: &'a mut Value, elem: &str) -> Option<&'a mut Value> {
    if let Some(name) = elem.strip_prefix("f:") {
        cur.get_mut(name)
    } else {
        cur.as_array_mut()?
            .iter_mut()
            .find(|i| element_matches(i, elem))
    }
}

/// The value at a field-set path, if the object has it.
pub(crate) fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for elem in path {
        cur = if let Some(name) = elem.strip_prefix("f:") {
            cur.get(name)?
        } else {
            cur.as_array()?.iter().find(|i| element_matches(i, elem))?
        };
    }
    Some(cur)
}

/// Render a field-set path the way Kubernetes names fields in conflict messages.
pub(crate) fn path_to_string(path: &[String]) -> String {
    let mut s = String::new();
    for p in path {
        if let Some(n) = p.strip_prefix("f:") {
            s.push('.');
            s.push_str(n);
        } else if let Some(k) = p.strip_prefix("k:") {
            s.push('[');
            s.push_str(k);
            s.push(']');
        } else if let Some(v) = p.strip_prefix("v:") {
            s.push('[');
            s.push_str(v);
            s.push(']');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check_smp(target: Value, patch: Value, expected: Value) {
        let mut t = target;
        strategic_merge(&mut t, &patch);
        assert_eq!(t, expected);
    }

    #[test]
    fn strategic_merge_lists_by_key() {
        check_smp(
            json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}}),
            json!({"spec": {"containers": [{"name": "b", "image": "y:2"}]}}),
            json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:2"}]}}),
        );
        check_smp(
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
            json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
            json!({"spec": {"containers": [{"name": "b"}]}}),
        );
        check_smp(
            json!({"ports": [{"port": 80, "name": "http"}]}),
            json!({"ports": [{"port": 443, "name": "https"}], "$setElementOrder/ports": [{"port": 443}, {"port": 80}]}),
            json!({"ports": [{"port": 443, "name": "https"}, {"port": 80, "name": "http"}]}),
        );
    }

    #[test]
    fn strategic_merge_scalars_lists_and_directives() {
        check_smp(
            json!({"args": ["a", "b"]}),
            json!({"args": ["c"]}),
            json!({"args": ["c"]}),
        );
        check_smp(json!({"a": 1, "b": 2}), json!({"b": null}), json!({"a": 1}));
        check_smp(
            json!({"metadata": {"finalizers": ["x"]}}),
            json!({"metadata": {"finalizers": ["y"]}}),
            json!({"metadata": {"finalizers": ["x", "y"]}}),
        );
        check_smp(
            json!({"metadata": {"finalizers": ["x", "y"]}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
            json!({"metadata": {"finalizers": ["y"]}}),
        );
        check_smp(
            json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}),
            json!({"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}),
            json!({"strategy": {"type": "Recreate"}}),
        );
        check_smp(
            json!({"data": {"a": "1"}}),
            json!({"data": {"$patch": "replace", "b": "2"}}),
            json!({"data": {"b": "2"}}),
        );
    }

    #[test]
    fn json_and_merge_patches() {
        let mut v = json!({"a": {"b": 1}});
        merge_patch(&mut v, &json!({"a": {"c": 2}}));
        assert_eq!(v, json!({"a": {"b": 1, "c": 2}}));
        json_patch(
            &mut v,
            &json!([{"op": "replace", "path": "/a/b", "value": 3}]),
        )
        .expect("applies");
        assert_eq!(v, json!({"a": {"b": 3, "c": 2}}));
        assert!(json_patch(&mut v, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&mut v, &json!({"op": "remove"})).is_err());
    }

    #[test]
    fn field_sets_and_removal() {
        let old = field_set(
            &json!({"metadata": {"labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}),
            false,
        );
        assert!(set_contains(
            &old,
            &[
                "f:spec".into(),
                "f:containers".into(),
                "k:{\"name\":\"c\"}".into(),
                "f:image".into()
            ]
        ));
        let new = field_set(&json!({"metadata": {"labels": {"a": "1"}}}), false);
        let removed = removed_paths(&old, &new);
        assert_eq!(
            removed,
            vec![
                vec!["f:metadata".to_owned(), "f:labels".into(), "f:b".into()],
                vec!["f:spec".to_owned()]
            ]
        );
        let mut obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        for p in &removed {
            remove_path(&mut obj, p);
        }
        assert_eq!(obj, json!({"metadata": {"labels": {"a": "1"}}}));
        let mut obj = json!({"spec": {"containers": [{"name": "c", "image": "i"}, {"name": "d"}]}});
        remove_path(
            &mut obj,
            &[
                "f:spec".into(),
                "f:containers".into(),
                "k:{\"name\":\"c\"}".into(),
            ],
        );
        assert_eq!(obj, json!({"spec": {"containers": [{"name": "d"}]}}));
        assert_eq!(
            path_to_string(&["f:spec".into(), "f:replicas".into()]),
            ".spec.replicas"
        );
    }
}
