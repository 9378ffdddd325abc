//! Server-side `Table` rendering for `kubectl get`, with the columns kubectl users know.

use serde_json::{Value, json};

use crate::resources::ResourceType;

/// Kubernetes' short "age" format (`5s`, `3m2s`, `4h`, `12d`).
pub(crate) fn human_age(created: Option<&str>) -> String {
    let Some(t) = created.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    human_duration(secs)
}

fn human_duration(s: i64) -> String {
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn n(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

type Col = (&'static str, &'static str);

fn columns(rt: &ResourceType) -> Vec<Col> {
    let mut cols: Vec<Col> = vec![("Name", "string")];
    let extra: &[Col] = match (rt.group.as_str(), rt.kind.as_str()) {
        _ if rt.custom => &[],
        ("", "Namespace") => &[("Status", "string")],
        ("", "Pod") => &[
            ("Ready", "string"),
            ("Status", "string"),
            ("Restarts", "string"),
        ],
        ("", "Service") => &[
            ("Type", "string"),
            ("Cluster-IP", "string"),
            ("External-IP", "string"),
            ("Port(s)", "string"),
        ],
        // The real printers declare these counts as strings (and send numbers).
        ("", "ConfigMap") => &[("Data", "string")],
        ("", "Secret") => &[("Type", "string"), ("Data", "string")],
        ("", "PersistentVolumeClaim") => &[
            ("Status", "string"),
            ("Volume", "string"),
            ("Capacity", "string"),
            ("Access Modes", "string"),
            ("StorageClass", "string"),
        ],
        ("", "PersistentVolume") => &[
            ("Capacity", "string"),
            ("Access Modes", "string"),
            ("Reclaim Policy", "string"),
            ("Status", "string"),
            ("Claim", "string"),
            ("StorageClass", "string"),
        ],
        ("", "Node") => &[("Status", "string"), ("Roles", "string")],
        ("", "Endpoints") => &[("Endpoints", "string")],
        ("", "ServiceAccount") => &[("Secrets", "string")],
        ("apps", "Deployment") => &[
            ("Ready", "string"),
            ("Up-to-date", "string"),
            ("Available", "string"),
        ],
        ("apps", "ReplicaSet") => &[
            ("Desired", "integer"),
            ("Current", "integer"),
            ("Ready", "integer"),
        ],
        ("apps", "StatefulSet") => &[("Ready", "string")],
        ("batch", "Job") => &[("Status", "string"), ("Completions", "string")],
        ("batch", "CronJob") => &[
            ("Schedule", "string"),
            ("Suspend", "boolean"),
            ("Active", "integer"),
            ("Last Schedule", "string"),
        ],
        ("storage.k8s.io", "StorageClass") => &[
            ("Provisioner", "string"),
            ("ReclaimPolicy", "string"),
            ("VolumeBindingMode", "string"),
        ],
        ("", "Event") => &[
            ("Last Seen", "string"),
            ("Type", "string"),
            ("Reason", "string"),
            ("Object", "string"),
            ("Message", "string"),
        ],
        _ => &[],
    };
    cols.extend_from_slice(extra);
    if rt.kind != "Node" || rt.custom {
        cols.push(("Age", "string"));
    } else {
        cols.push(("Age", "string"));
        cols.push(("Version", "string"));
    }
    cols
}

/// The `-o wide` columns (priority 1), after Age, as the real printers have them.
fn wide_columns(rt: &ResourceType) -> &'static [Col] {
    const WORKLOAD: &[Col] = &[
        ("Containers", "string"),
        ("Images", "string"),
        ("Selector", "string"),
    ];
    match (rt.group.as_str(), rt.kind.as_str()) {
        _ if rt.custom => &[],
        ("", "Pod") => &[
            ("IP", "string"),
            ("Node", "string"),
            ("Nominated Node", "string"),
            ("Readiness Gates", "string"),
        ],
        ("", "Service") => &[("Selector", "string")],
        ("", "PersistentVolumeClaim") => &[("VolumeMode", "string")],
        ("apps", "Deployment" | "ReplicaSet") | ("batch", "Job" | "CronJob") => WORKLOAD,
        ("apps", "StatefulSet") => &WORKLOAD[..2],
        _ => &[],
    }
}

/// `key=value` pairs sorted by key, comma-separated (`labels.FormatLabels`), or `<none>`.
fn format_labels(v: Option<&Value>) -> String {
    let mut pairs: Vec<String> = v
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    or_none(pairs.join(","))
}

/// A label selector as `metav1.FormatLabelSelector` writes it.
fn format_selector(v: Option<&Value>) -> String {
    let Some(sel) = v.filter(|s| s.is_object()) else {
        return "<none>".into();
    };
    let mut parts: Vec<String> = Vec::new();
    let labels = format_labels(sel.get("matchLabels"));
    if labels != "<none>" {
        parts.push(labels);
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other}"),
        });
    }
    or_none(parts.join(","))
}

fn wide_cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let containers = |spec: &str| {
        let list: Vec<&Value> = o
            .pointer(spec)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let names: Vec<&str> = list.iter().map(|c| s(c, "/name")).collect();
        let images: Vec<&str> = list.iter().map(|c| s(c, "/image")).collect();
        (json!(names.join(",")), json!(images.join(",")))
    };
    match (rt.group.as_str(), rt.kind.as_str()) {
        _ if rt.custom => Vec::new(),
        ("", "Pod") => {
            let gates = o
                .pointer("/spec/readinessGates")
                .and_then(Value::as_array)
                .filter(|g| !g.is_empty());
            let gates = match gates {
                None => "<none>".to_owned(),
                Some(g) => {
                    let conditions = o.pointer("/status/conditions").and_then(Value::as_array);
                    let ready = g
                        .iter()
                        .filter(|gate| {
                            conditions.into_iter().flatten().any(|c| {
                                c["type"] == gate["conditionType"] && c["status"] == "True"
                            })
                        })
                        .count();
                    format!("{ready}/{}", g.len())
                }
            };
            vec![
                json!(or_none(s(o, "/status/podIP").to_owned())),
                json!(or_none(s(o, "/spec/nodeName").to_owned())),
                json!(or_none(s(o, "/status/nominatedNodeName").to_owned())),
                json!(gates),
            ]
        }
        ("", "Service") => vec![json!(format_labels(o.pointer("/spec/selector")))],
        ("", "PersistentVolumeClaim") => vec![json!(
            o.pointer("/spec/volumeMode")
                .and_then(Value::as_str)
                .unwrap_or("<unset>")
        )],
        ("apps", "Deployment" | "ReplicaSet") | ("batch", "Job") => {
            let (names, images) = containers("/spec/template/spec/containers");
            vec![
                names,
                images,
                json!(format_selector(o.pointer("/spec/selector"))),
            ]
        }
        ("batch", "CronJob") => {
            let (names, images) = containers("/spec/jobTemplate/spec/template/spec/containers");
            vec![
                names,
                images,
                json!(format_selector(
                    o.pointer("/spec/jobTemplate/spec/selector")
                )),
            ]
        }
        ("apps", "StatefulSet") => {
            let (names, images) = containers("/spec/template/spec/containers");
            vec![names, images]
        }
        _ => Vec::new(),
    }
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let total = o
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let statuses = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready") == Some(&Value::Bool(true)))
        .count();
    let restarts: i64 = statuses
        .iter()
        .map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0))
        .sum();
    let mut status = s(o, "/status/phase").to_owned();
    for c in &statuses {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            status = r.to_owned();
        } else if let Some(r) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            status = r.to_owned();
        }
    }
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        status = "Terminating".into();
    }
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
    ]
}

fn service_cells(o: &Value) -> Vec<Value> {
    let ty = s(o, "/spec/type");
    let external = match ty {
        "LoadBalancer" => {
            let ips: Vec<&str> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("ip").or(i.get("hostname")).and_then(Value::as_str))
                .collect();
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        "ExternalName" => s(o, "/spec/externalName").to_owned(),
        _ => "<none>".into(),
    };
    let ports: Vec<String> = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{}:{np}/{proto}", n(p, "/port")),
                None => format!("{}/{proto}", n(p, "/port")),
            }
        })
        .collect();
    vec![
        json!(ty),
        json!(s(o, "/spec/clusterIP")),
        json!(external),
        json!(or_none(ports.join(","))),
    ]
}

fn count(o: &Value, ptr: &str) -> usize {
    o.pointer(ptr)
        .and_then(Value::as_object)
        .map_or(0, serde_json::Map::len)
}

fn access_modes(o: &Value, ptr: &str) -> String {
    let modes: Vec<&str> = o
        .pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect();
    modes.join(",")
}

fn json_path(o: &Value, path: &str) -> Value {
    let mut cur = o;
    for seg in path.trim_start_matches('.').split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return Value::Null,
        }
    }
    cur.clone()
}

/// The row cells of `o` for its kind: the name, then the columns kubectl prints for it.
///
/// Long by design: one match arm per built-in kind, in the order of the column definitions,
/// so a kind's columns read as one table, as kubectl's printers have them.
fn cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let mut c = vec![json!(s(o, "/metadata/name"))];
    let extra: Vec<Value> = match (rt.group.as_str(), rt.kind.as_str()) {
        _ if rt.custom => Vec::new(),
        ("", "Namespace") => vec![json!(s(o, "/status/phase"))],
        ("", "Pod") => pod_cells(o),
        ("", "Service") => service_cells(o),
        ("", "ConfigMap") => vec![json!(count(o, "/data") + count(o, "/binaryData"))],
        ("", "Secret") => vec![json!(s(o, "/type")), json!(count(o, "/data"))],
        ("", "PersistentVolumeClaim") => vec![
            json!(s(o, "/status/phase")),
            json!(s(o, "/spec/volumeName")),
            json!(s(o, "/status/capacity/storage")),
            json!(access_modes(o, "/status/accessModes")),
            json!(or_none(s(o, "/spec/storageClassName").to_owned())),
        ],
        ("", "PersistentVolume") => vec![
            json!(s(o, "/spec/capacity/storage")),
            json!(access_modes(o, "/spec/accessModes")),
            json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
            json!(s(o, "/status/phase")),
            json!(if o.pointer("/spec/claimRef").is_some() {
                format!(
                    "{}/{}",
                    s(o, "/spec/claimRef/namespace"),
                    s(o, "/spec/claimRef/name")
                )
            } else {
                String::new()
            }),
            json!(s(o, "/spec/storageClassName")),
        ],
        ("", "Node") => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| {
                    c.get("type") == Some(&json!("Ready"))
                        && c.get("status") == Some(&json!("True"))
                });
            let roles: Vec<String> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_owned)
                })
                .collect();
            vec![
                json!(if ready { "Ready" } else { "NotReady" }),
                json!(or_none(roles.join(","))),
            ]
        }
        ("", "Endpoints") => {
            let mut eps = Vec::new();
            for ss in o
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for a in ss
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for p in ss
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        eps.push(format!("{}:{}", s(a, "/ip"), n(p, "/port")));
                    }
                }
            }
            vec![json!(or_none(eps.join(",")))]
        }
        ("", "ServiceAccount") => vec![json!(
            o.get("secrets")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        )],
        ("apps", "Deployment") => vec![
            json!(format!(
                "{}/{}",
                n(o, "/status/readyReplicas"),
                n(o, "/spec/replicas")
            )),
            json!(n(o, "/status/updatedReplicas")),
            json!(n(o, "/status/availableReplicas")),
        ],
        ("apps", "ReplicaSet") => vec![
            json!(n(o, "/spec/replicas")),
            json!(n(o, "/status/replicas")),
            json!(n(o, "/status/readyReplicas")),
        ],
        ("apps", "StatefulSet") => vec![json!(format!(
            "{}/{}",
            n(o, "/status/readyReplicas"),
            n(o, "/spec/replicas")
        ))],
        ("batch", "Job") => {
            let cond = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| c.get("status") == Some(&json!("True")))
                .and_then(|c| c.get("type").and_then(Value::as_str))
                .unwrap_or("Running");
            vec![
                json!(cond),
                json!(format!(
                    "{}/{}",
                    n(o, "/status/succeeded"),
                    n(o, "/spec/completions").max(1)
                )),
            ]
        }
        ("batch", "CronJob") => vec![
            json!(s(o, "/spec/schedule")),
            json!(
                o.pointer("/spec/suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            ),
            json!(
                o.pointer("/status/active")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            json!(match o
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
            {
                Some(t) => human_age(Some(t)),
                None => "<none>".into(),
            }),
        ],
        ("storage.k8s.io", "StorageClass") => vec![
            json!(s(o, "/provisioner")),
            json!(s(o, "/reclaimPolicy")),
            json!(s(o, "/volumeBindingMode")),
        ],
        ("", "Event") => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| o.pointer(p).and_then(Value::as_str))
            .map(|t| human_age(Some(t)))
            .unwrap_or_else(|| "<unknown>".into());
            let object = format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_lowercase(),
                s(o, "/involvedObject/name")
            );
            vec![
                json!(last),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(object),
                json!(s(o, "/message")),
            ]
        }
        _ => Vec::new(),
    };
    c.extend(extra);
    c.push(json!(human_age(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
    )));
    if rt.kind == "Node" && !rt.custom {
        c.push(json!(s(o, "/status/nodeInfo/kubeletVersion")));
    }
    c.extend(wide_cells(rt, o));
    c
}

/// `PartialObjectMetadata` of an object.
pub(crate) fn partial_metadata(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
}

/// Render objects as a `meta.k8s.io/v1` Table.
pub(crate) fn table(
    rt: &ResourceType,
    objects: &[Value],
    rv: &str,
    include_object: &str,
    with_columns: bool,
) -> Value {
    let mut defs: Vec<Value> = columns(rt)
        .into_iter()
        .map(|(name, ty)| {
            let mut d =
                json!({"name": name, "type": ty, "format": "", "description": name, "priority": 0});
            if name == "Name" {
                d["format"] = json!("name");
            }
            d
        })
        .chain(wide_columns(rt).iter().map(|(name, ty)| {
            json!({"name": name, "type": ty, "format": "", "description": name, "priority": 1})
        }))
        .collect();
    let custom_cols: Vec<&Value> = rt.printer_columns.iter().collect();
    // A CRD with printer columns gets the name and exactly its columns (its own `Age` among
    // them, usually); one without keeps the default name and age.
    let own_columns = rt.custom && !custom_cols.is_empty();
    if rt.custom {
        let age = defs.pop().filter(|_| !own_columns);
        for pc in &custom_cols {
            defs.push(json!({"name": pc.get("name").cloned().unwrap_or(json!("")), "type": pc.get("type").cloned().unwrap_or(json!("string")),
                "format": "", "description": pc.get("description").cloned().unwrap_or(json!("")), "priority": pc.get("priority").cloned().unwrap_or(json!(0))}));
        }
        defs.extend(age);
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cs = cells(rt, o);
            if rt.custom {
                let age = cs.pop().filter(|_| !own_columns);
                for pc in &custom_cols {
                    let path = pc
                        .get("jsonPath")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let value = json_path(o, path);
                    // Date columns print as ages, as the CRD table convertor prints them.
                    let cell = match (pc.get("type").and_then(Value::as_str), value.as_str()) {
                        (Some("date"), Some(t)) => json!(human_age(Some(t))),
                        _ => value,
                    };
                    cs.push(cell);
                }
                cs.extend(age);
            }
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => partial_metadata(o),
            };
            json!({"cells": cs, "object": object})
        })
        .collect();
    let mut t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "rows": rows});
    t["columnDefinitions"] = if with_columns {
        Value::Array(defs)
    } else {
        json!([])
    };
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        for (secs, text) in [
            (5, "5s"),
            (119, "119s"),
            (185, "3m5s"),
            (900, "15m"),
            (4 * 3600 + 60, "4h1m"),
            (30 * 3600, "30h"),
            (3 * 86400, "3d"),
            (800 * 86400, "2y"),
        ] {
            assert_eq!(human_duration(secs), text);
        }
    }

    /// `kubectl get -o wide` columns as kube-apiserver 1.20 defines them (the fidelity test).
    #[test]
    fn wide_columns_follow_age_with_priority_one() {
        let rt = crate::resources::Registry::default()
            .by_kind("apps/v1", "Deployment")
            .cloned()
            .expect("kind");
        let d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"tier": "f", "app": "web"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]}]},
            "template": {"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:2"}]}}}});
        let t = table(&rt, &[d], "1", "None", true);
        let names: Vec<(&str, i64)> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["priority"].as_i64().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("Name", 0),
                ("Ready", 0),
                ("Up-to-date", 0),
                ("Available", 0),
                ("Age", 0),
                ("Containers", 1),
                ("Images", 1),
                ("Selector", 1)
            ]
        );
        let cells = t["rows"][0]["cells"].as_array().unwrap();
        assert_eq!(
            cells[5..],
            [
                json!("a,b"),
                json!("x:1,y:2"),
                json!("app=web,tier=f,env in (a,b)")
            ]
        );
    }
}
