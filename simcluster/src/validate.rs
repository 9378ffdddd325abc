//! Validation and defaulting of objects, as the real API server does on create and update.
//!
//! Errors are `(field path, message)` pairs that become one 422 `Invalid` Status with one
//! cause each. Only the checks the rehearsal's manifests and users' mistakes need are here;
//! SIMULATION.md lists them.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::resources::{NameRule, ResourceType};

/// Field errors: `(path, message)`.
pub(crate) type FieldErrors = Vec<(String, String)>;

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain.
pub(crate) fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label)
}

/// The error for an invalid name, or `None`.
pub(crate) fn check_name(rule: NameRule, name: &str) -> Option<String> {
    // The real messages end with the examples and the regular expression, two spaces
    // before "or" included (`validation.RegexError`).
    let bad = |what: &str, examples: &str, regex: &str| {
        Some(format!(
            "Invalid value: \"{name}\": {what} (e.g. {examples}, regex used for validation is '{regex}')"
        ))
    };
    match rule {
        NameRule::Subdomain if !is_subdomain(name) => bad(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            "'example.com'",
            "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
        ),
        NameRule::Label if !is_label(name) => bad(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            "'my-name',  or '123-abc'",
            "[a-z0-9]([-a-z0-9]*[a-z0-9])?",
        ),
        NameRule::Label1035
            if !is_label(name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) =>
        {
            bad(
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
                "'my-name',  or 'abc-123'",
                "[a-z]([-a-z0-9]*[a-z0-9])?",
            )
        }
        NameRule::PathSegment
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '%']) =>
        {
            Some(format!(
                "Invalid value: \"{name}\": may not contain '/' or '%' and may not be '.' or '..'"
            ))
        }
        _ => None,
    }
}

fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(is_subdomain)
}

fn label_value_ok(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn required(errs: &mut FieldErrors, obj: &Value, pointer: &str, field: &str) {
    let missing = match obj.pointer(pointer) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    if missing {
        errs.push((field.to_owned(), "Required value".to_owned()));
    }
}

fn check_metadata(errs: &mut FieldErrors, obj: &Value) {
    for (field, ok_key, ok_value) in [("labels", true, true), ("annotations", true, false)] {
        let Some(m) = obj.pointer(&format!("/metadata/{field}")) else {
            continue;
        };
        let Some(m) = m.as_object() else {
            if !m.is_null() {
                errs.push((
                    format!("metadata.{field}"),
                    "Invalid value: must be a map of strings".into(),
                ));
            }
            continue;
        };
        for (k, v) in m {
            if ok_key && !label_key_ok(k) {
                errs.push((format!("metadata.{field}"), format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
            }
            match v.as_str() {
                Some(s) if ok_value && !label_value_ok(s) => errs.push((
                    format!("metadata.{field}"),
                    format!("Invalid value: \"{s}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                )),
                Some(_) => {}
                None => errs.push((format!("metadata.{field}.{k}"), "Invalid value: must be a string".into())),
            }
        }
    }
}

fn check_pod_spec(errs: &mut FieldErrors, spec: Option<&Value>, path: &str) {
    let Some(spec) = spec else {
        errs.push((path.to_owned(), "Required value".into()));
        return;
    };
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => errs.push((format!("{path}.containers"), "Required value".into())),
        Some(cs) if cs.is_empty() => {
            errs.push((format!("{path}.containers"), "Required value".into()))
        }
        Some(cs) => {
            for (i, c) in cs.iter().enumerate() {
                match c.get("name").and_then(Value::as_str) {
                    None | Some("") => errs.push((format!("{path}.containers[{i}].name"), "Required value".into())),
                    Some(n) if !is_label(n) => errs.push((
                        format!("{path}.containers[{i}].name"),
                        format!("Invalid value: \"{n}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"),
                    )),
                    Some(_) => {}
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    errs.push((
                        format!("{path}.containers[{i}].image"),
                        "Required value".into(),
                    ));
                }
            }
        }
    }
}

fn check_selector_matches_template(errs: &mut FieldErrors, obj: &Value) {
    let Some(sel) = obj.pointer("/spec/selector") else {
        errs.push(("spec.selector".into(), "Required value".into()));
        return;
    };
    let selector = crate::selector::LabelSelector::from_object(sel);
    if selector.is_empty() {
        errs.push((
            "spec.selector".into(),
            "Invalid value: empty selector is invalid for deployment".into(),
        ));
        return;
    }
    let template = json!({"metadata": {"labels": obj.pointer("/spec/template/metadata/labels").cloned().unwrap_or(Value::Null)}});
    if !selector.matches(&template) {
        let labels = obj
            .pointer("/spec/template/metadata/labels")
            .unwrap_or(&Value::Null);
        errs.push((
            "spec.template.metadata.labels".into(),
            format!(
                "Invalid value: {}: `selector` does not match template `labels`",
                go_string_map(labels)
            ),
        ));
    }
}

fn check_string_map(errs: &mut FieldErrors, obj: &Value, field: &str) {
    match obj.get(field) {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if !v.is_string() {
                    errs.push((
                        format!("{field}[{k}]"),
                        "Invalid value: must be a string".into(),
                    ));
                }
            }
        }
        Some(_) => errs.push((
            field.to_owned(),
            "Invalid value: must be a map of strings".into(),
        )),
    }
}

/// Kind-specific validation of a whole object.
///
/// Long by design: after the checks every kind shares, one match arm per kind, so a kind's
/// rules are found in one place, as in the real server's per-kind validation.
pub(crate) fn validate(rt: &ResourceType, obj: &Value) -> FieldErrors {
    let mut errs = FieldErrors::new();
    check_metadata(&mut errs, obj);
    // Controllers and defaulting read these as objects; any other shape is refused here.
    for field in ["spec", "status"] {
        if obj
            .get(field)
            .is_some_and(|v| !v.is_object() && !v.is_null())
        {
            errs.push((field.to_owned(), "Invalid value: must be an object".into()));
        }
    }
    if rt.custom {
        return errs;
    }
    if matches!(rt.kind.as_str(), "ConfigMap" | "Secret") {
        for field in ["data", "binaryData", "stringData"] {
            check_string_map(&mut errs, obj, field);
        }
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => check_pod_spec(&mut errs, obj.get("spec"), "spec"),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            check_selector_matches_template(&mut errs, obj);
            check_pod_spec(
                &mut errs,
                obj.pointer("/spec/template/spec"),
                "spec.template.spec",
            );
        }
        ("apps", "StatefulSet") => {
            check_selector_matches_template(&mut errs, obj);
            check_pod_spec(
                &mut errs,
                obj.pointer("/spec/template/spec"),
                "spec.template.spec",
            );
            for (i, t) in obj
                .pointer("/spec/volumeClaimTemplates")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if t.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    errs.push((
                        format!("spec.volumeClaimTemplates[{i}].metadata.name"),
                        "Required value".into(),
                    ));
                }
            }
        }
        ("batch", "Job") => check_pod_spec(
            &mut errs,
            obj.pointer("/spec/template/spec"),
            "spec.template.spec",
        ),
        ("batch", "CronJob") => {
            required(&mut errs, obj, "/spec/schedule", "spec.schedule");
            check_pod_spec(
                &mut errs,
                obj.pointer("/spec/jobTemplate/spec/template/spec"),
                "spec.jobTemplate.spec.template.spec",
            );
        }
        ("", "Service") => {
            let ty = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            let headless = obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            if ty != "ExternalName" && !headless {
                required(&mut errs, obj, "/spec/ports", "spec.ports");
            }
            for (i, p) in obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                match p.get("port").and_then(Value::as_i64) {
                    Some(1..=65535) => {}
                    Some(n) => errs.push((
                        format!("spec.ports[{i}].port"),
                        format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                    )),
                    None => errs.push((format!("spec.ports[{i}].port"), "Required value".into())),
                }
            }
            if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
                errs.push(("spec.type".into(), format!("Unsupported value: \"{ty}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"")));
            }
        }
        ("", "PersistentVolumeClaim") => {
            required(&mut errs, obj, "/spec/accessModes", "spec.accessModes");
            required(
                &mut errs,
                obj,
                "/spec/resources/requests/storage",
                "spec.resources[storage]",
            );
        }
        ("", "PersistentVolume") => {
            required(&mut errs, obj, "/spec/capacity/storage", "spec.capacity");
            required(&mut errs, obj, "/spec/accessModes", "spec.accessModes");
        }
        ("", "Secret") => {
            if let Some(data) = obj.get("data").and_then(Value::as_object) {
                for (k, v) in data {
                    let ok = v.as_str().is_some_and(|s| {
                        base64::engine::general_purpose::STANDARD.decode(s).is_ok()
                    });
                    if !ok {
                        errs.push((
                            format!("data[{k}]"),
                            "Invalid value: must be a base64-encoded string".into(),
                        ));
                    }
                }
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            required(&mut errs, obj, "/provisioner", "provisioner")
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            for (p, f) in [
                ("/spec/group", "spec.group"),
                ("/spec/names/plural", "spec.names.plural"),
                ("/spec/names/kind", "spec.names.kind"),
                ("/spec/scope", "spec.scope"),
                ("/spec/versions", "spec.versions"),
            ] {
                required(&mut errs, obj, p, f);
            }
            let group = obj
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let plural = obj
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
                errs.push((
                    "metadata.name".into(),
                    format!(
                        "Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
                    ),
                ));
            }
        }
        _ => {}
    }
    errs
}

/// Fields that may not change on update, per kind: `(JSON pointer, field name)`.
fn immutable_fields(rt: &ResourceType) -> &'static [(&'static str, &'static str)] {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Service") => &[("/spec/clusterIP", "spec.clusterIP")],
        ("apps", "StatefulSet") => &[
            ("/spec/selector", "spec.selector"),
            ("/spec/serviceName", "spec.serviceName"),
            ("/spec/volumeClaimTemplates", "spec.volumeClaimTemplates"),
            ("/spec/podManagementPolicy", "spec.podManagementPolicy"),
        ],
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            &[("/spec/selector", "spec.selector")]
        }
        ("batch", "Job") => &[
            ("/spec/selector", "spec.selector"),
            ("/spec/template", "spec.template"),
        ],
        ("", "PersistentVolumeClaim") => &[
            ("/spec/accessModes", "spec.accessModes"),
            ("/spec/storageClassName", "spec.storageClassName"),
            ("/spec/selector", "spec.selector"),
        ],
        ("storage.k8s.io", "StorageClass") => &[
            ("/provisioner", "provisioner"),
            ("/parameters", "parameters"),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            &[("/spec/group", "spec.group"), ("/spec/scope", "spec.scope")]
        }
        _ => &[],
    }
}

/// A string as Go's `%#v` prints it (`strconv.Quote`, close enough for names and labels).
fn go_quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A `map[string]string` as Go's `%#v` prints it: keys sorted, `", "` between entries.
fn go_string_map(v: &Value) -> String {
    let Some(m) = v.as_object().filter(|m| !m.is_empty()) else {
        return "map[string]string(nil)".into();
    };
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    entries.sort_by_key(|(k, _)| *k);
    let inner: Vec<String> = entries
        .into_iter()
        .map(|(k, v)| {
            format!(
                "{}:{}",
                go_quote(k),
                go_quote(v.as_str().unwrap_or_default())
            )
        })
        .collect();
    format!("map[string]string{{{}}}", inner.join(", "))
}

/// A `metav1.LabelSelector` as Go's `%#v` prints it, which is how the real validator shows
/// a changed selector in "field is immutable".
fn go_label_selector(v: &Value) -> String {
    let labels = go_string_map(v.get("matchLabels").unwrap_or(&Value::Null));
    let exprs = match v.get("matchExpressions").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            let items: Vec<String> = list
                .iter()
                .map(|e| {
                    let values = match e.get("values").and_then(Value::as_array) {
                        Some(vs) if !vs.is_empty() => format!(
                            "[]string{{{}}}",
                            vs.iter()
                                .map(|x| go_quote(x.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        _ => "[]string(nil)".into(),
                    };
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{values}}}",
                        go_quote(e.get("key").and_then(Value::as_str).unwrap_or_default()),
                        go_quote(
                            e.get("operator")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                        ),
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
        }
        _ => "[]v1.LabelSelectorRequirement(nil)".into(),
    };
    format!("v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:{exprs}}}")
}

/// Immutable-field errors between the stored object and the update.
pub(crate) fn validate_update(rt: &ResourceType, old: &Value, new: &Value) -> FieldErrors {
    let mut errs = FieldErrors::new();
    for (ptr, field) in immutable_fields(rt) {
        let (o, n) = (old.pointer(ptr), new.pointer(ptr));
        // A PersistentVolumeClaim's volumeName may be set once by binding; other fields may
        // not change at all.
        if o != n && !(o.is_none() && *ptr == "/spec/storageClassName") {
            let value = match (n, field.ends_with("selector")) {
                (Some(sel), true) => go_label_selector(sel),
                (Some(Value::String(s)), false) => go_quote(s),
                (Some(other), false) => other.to_string(),
                (None, _) => "null".into(),
            };
            errs.push((
                field.to_string(),
                format!("Invalid value: {value}: field is immutable"),
            ));
        }
    }
    if rt.kind == "StatefulSet" && !errs.is_empty() {
        errs = vec![(
            "spec".into(),
            "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into(),
        )];
    }
    for kind in ["ConfigMap", "Secret"] {
        if rt.kind == kind && old.get("immutable") == Some(&Value::Bool(true)) {
            if old.get("data") != new.get("data") || old.get("binaryData") != new.get("binaryData")
            {
                errs.push((
                    "data".into(),
                    "Forbidden: field is immutable when `immutable` is set".into(),
                ));
            }
            if new.get("immutable") != Some(&Value::Bool(true)) {
                errs.push((
                    "immutable".into(),
                    "Forbidden: field is immutable when `immutable` is set".into(),
                ));
            }
        }
    }
    errs
}

/// Set `field` under `parents` unless it is present. A parent that exists but is not an object
/// is left alone for validation to report; defaulting never panics on malformed input.
fn set_default(obj: &mut Value, parents: &[&str], field: &str, value: Value) {
    let mut cur = obj;
    for p in parents {
        let Some(m) = cur.as_object_mut() else { return };
        cur = m.entry(*p).or_insert_with(|| Value::Object(Map::new()));
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
    }
    let Some(m) = cur.as_object_mut() else { return };
    if m.get(field).is_none_or(Value::is_null) {
        m.insert(field.to_owned(), value);
    }
}

fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    for (f, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
    ] {
        set_default(spec, &[], f, v);
    }
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                if !c.is_object() {
                    continue;
                }
                let latest = c.get("image").and_then(Value::as_str).is_some_and(|i| {
                    let tail = i.rsplit('/').next().unwrap_or(i);
                    !tail.contains(':') || tail.ends_with(":latest")
                });
                set_default(
                    c,
                    &[],
                    "imagePullPolicy",
                    json!(if latest { "Always" } else { "IfNotPresent" }),
                );
                set_default(
                    c,
                    &[],
                    "terminationMessagePath",
                    json!("/dev/termination-log"),
                );
                set_default(c, &[], "terminationMessagePolicy", json!("File"));
                set_default(c, &[], "resources", json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        set_default(p, &[], "protocol", json!("TCP"));
                    }
                }
                for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    if let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) {
                        default_probe(p);
                    }
                }
                if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                    for e in env {
                        if e.pointer("/valueFrom/fieldRef")
                            .is_some_and(Value::is_object)
                        {
                            set_default(e, &["valueFrom", "fieldRef"], "apiVersion", json!("v1"));
                        }
                    }
                }
            }
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes {
            // `SetDefaults_ConfigMapVolumeSource` and its siblings: 0644, shown as 420.
            for source in ["configMap", "secret", "projected", "downwardAPI"] {
                if v.get(source).is_some_and(Value::is_object) {
                    set_default(v, &[source], "defaultMode", json!(420));
                }
            }
        }
    }
}

/// `SetDefaults_Probe` and `SetDefaults_HTTPGetAction`.
fn default_probe(probe: &mut Value) {
    for (f, v) in [
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ] {
        set_default(probe, &[], f, json!(v));
    }
    if probe.get("httpGet").is_some_and(Value::is_object) {
        set_default(probe, &["httpGet"], "scheme", json!("HTTP"));
    }
}

/// An embedded template's `metadata` carries `creationTimestamp: null`, as the real server's
/// serialization of an empty `ObjectMeta` time does; diff tools see it.
fn default_template_metadata(obj: &mut Value, template: &str) {
    if let Some(t) = obj.pointer_mut(template).filter(|t| t.is_object()) {
        set_default(t, &[], "metadata", json!({}));
        if let Some(m) = t.get_mut("metadata").and_then(Value::as_object_mut) {
            m.entry("creationTimestamp").or_insert(Value::Null);
        }
    }
}

/// What a real server adds to a pod (not to a template): `SetDefaults_Pod`'s
/// `enableServiceLinks`, and the admission steps ServiceAccount (the `default` account),
/// Priority (priority 0, `PreemptLowerPriority`) and DefaultTolerationSeconds (five minutes of
/// tolerance for a not-ready or unreachable node).
fn admit_pod(spec: &mut Value) {
    set_default(spec, &[], "enableServiceLinks", json!(true));
    set_default(spec, &[], "serviceAccountName", json!("default"));
    if let Some(sa) = spec.get("serviceAccountName").cloned() {
        set_default(spec, &[], "serviceAccount", sa);
    }
    mount_service_account_token(spec);
    set_default(spec, &[], "priority", json!(0));
    set_default(spec, &[], "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, &[], "tolerations", json!([]));
    if let Some(tolerations) = spec.get_mut("tolerations").and_then(Value::as_array_mut) {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let tolerated = tolerations.iter().any(|t| {
                (t["key"] == key || t.get("key").is_none() && t["operator"] == "Exists")
                    && (t["effect"] == "NoExecute" || t.get("effect").is_none())
            });
            if !tolerated {
                tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

/// Where the ServiceAccount admission step mounts the token volume.
const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount admission step of 1.21 and later: a projected `kube-api-access-XXXXX`
/// volume (token, `kube-root-ca.crt`, namespace) mounted read-only into every container at
/// [`TOKEN_MOUNT`], unless `automountServiceAccountToken: false`. Idempotent: a pod that has
/// such a volume keeps it. The simulator's kubelet serves it as an empty directory (there is
/// no token to write).
fn mount_service_account_token(spec: &mut Value) {
    if spec.get("automountServiceAccountToken") == Some(&Value::Bool(false)) {
        return;
    }
    set_default(spec, &[], "volumes", json!([]));
    let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) else {
        return;
    };
    let existing = volumes.iter().find_map(|v| {
        v["name"]
            .as_str()
            .filter(|n| n.starts_with("kube-api-access-"))
            .map(str::to_owned)
    });
    let name = match existing {
        Some(name) => name,
        None => {
            const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            let suffix: String = uuid::Uuid::new_v4().as_bytes()[..5]
                .iter()
                .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
                .collect();
            let name = format!("kube-api-access-{suffix}");
            volumes.push(json!({"name": name, "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}));
            name
        }
    };
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter(|c| c.is_object())
        {
            set_default(c, &[], "volumeMounts", json!([]));
            if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_array_mut)
                && !mounts.iter().any(|m| m["mountPath"] == TOKEN_MOUNT)
            {
                mounts.push(json!({"name": name, "readOnly": true, "mountPath": TOKEN_MOUNT}));
            }
        }
    }
}

/// Fill in the defaults a real server adds, so round trips look the same.
///
/// Long by design: one match arm per kind, holding every default the real server sets on it,
/// so a kind's defaults are found in one place.
pub(crate) fn apply_defaults(rt: &ResourceType, obj: &mut Value) {
    if rt.custom {
        return;
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            set_default(obj, &["metadata"], "labels", json!({}));
            if let Some(labels) = obj
                .pointer_mut("/metadata/labels")
                .and_then(Value::as_object_mut)
            {
                labels.insert("kubernetes.io/metadata.name".into(), Value::String(name));
            }
            set_default(obj, &["spec"], "finalizers", json!(["kubernetes"]));
            set_default(obj, &["status"], "phase", json!("Active"));
        }
        ("", "Secret") => {
            if let Some(m) = obj
                .as_object_mut()
                .filter(|m| m.get("type").and_then(Value::as_str) == Some(""))
            {
                m.insert("type".into(), json!("Opaque"));
            }
            set_default(obj, &[], "type", json!("Opaque"));
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                set_default(obj, &[], "data", json!({}));
                if let Some(data) = obj.get_mut("data").and_then(Value::as_object_mut) {
                    for (k, v) in sd {
                        let s = v
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string());
                        data.insert(
                            k,
                            Value::String(base64::engine::general_purpose::STANDARD.encode(s)),
                        );
                    }
                }
            }
        }
        ("", "Pod") => {
            if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
                default_pod_spec(spec);
                admit_pod(spec);
            }
        }
        ("", "Service") => {
            set_default(obj, &["spec"], "type", json!("ClusterIP"));
            set_default(obj, &["spec"], "sessionAffinity", json!("None"));
            set_default(obj, &["spec"], "internalTrafficPolicy", json!("Cluster"));
            if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for p in ports {
                    set_default(p, &[], "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, &[], "targetPort", port);
                    }
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            set_default(obj, &["spec"], "volumeMode", json!("Filesystem"));
            set_default(obj, &["status"], "phase", json!("Pending"));
        }
        ("", "PersistentVolume") => {
            set_default(
                obj,
                &["spec"],
                "persistentVolumeReclaimPolicy",
                json!("Retain"),
            );
            set_default(obj, &["spec"], "volumeMode", json!("Filesystem"));
            set_default(obj, &["status"], "phase", json!("Pending"));
        }
        ("apps", kind @ ("Deployment" | "StatefulSet" | "ReplicaSet")) => {
            set_default(obj, &["spec"], "replicas", json!(1));
            // A ReplicaSet has no history of its own.
            if kind != "ReplicaSet" {
                set_default(obj, &["spec"], "revisionHistoryLimit", json!(10));
            }
            if kind == "Deployment" {
                set_default(obj, &["spec"], "progressDeadlineSeconds", json!(600));
                set_default(
                    obj,
                    &["spec"],
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                );
            }
            if kind == "StatefulSet" {
                set_default(obj, &["spec"], "podManagementPolicy", json!("OrderedReady"));
                set_default(
                    obj,
                    &["spec"],
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                set_default(
                    obj,
                    &["spec"],
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                if let Some(ts) = obj
                    .pointer_mut("/spec/volumeClaimTemplates")
                    .and_then(Value::as_array_mut)
                {
                    for t in ts {
                        set_default(t, &[], "apiVersion", json!("v1"));
                        set_default(t, &[], "kind", json!("PersistentVolumeClaim"));
                        set_default(t, &["spec"], "volumeMode", json!("Filesystem"));
                    }
                }
            }
            default_template_metadata(obj, "/spec/template");
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        ("batch", "Job") => {
            set_default(obj, &["spec"], "backoffLimit", json!(6));
            set_default(obj, &["spec"], "completions", json!(1));
            set_default(obj, &["spec"], "parallelism", json!(1));
            default_template_metadata(obj, "/spec/template");
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            set_default(obj, &["spec"], "concurrencyPolicy", json!("Allow"));
            set_default(obj, &["spec"], "suspend", json!(false));
            set_default(obj, &["spec"], "successfulJobsHistoryLimit", json!(3));
            set_default(obj, &["spec"], "failedJobsHistoryLimit", json!(1));
            default_template_metadata(obj, "/spec/jobTemplate");
            default_template_metadata(obj, "/spec/jobTemplate/spec/template");
            if let Some(spec) = obj.pointer_mut("/spec/jobTemplate/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            set_default(obj, &[], "reclaimPolicy", json!("Delete"));
            set_default(obj, &[], "volumeBindingMode", json!("Immediate"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn rt(api_version: &str, kind: &str) -> ResourceType {
        Registry::default()
            .by_kind(api_version, kind)
            .cloned()
            .expect("kind")
    }

    #[test]
    fn names() {
        assert_eq!(check_name(NameRule::Subdomain, "titanium-prod.x"), None);
        assert!(check_name(NameRule::Subdomain, "Bad_Name").is_some());
        assert!(check_name(NameRule::Label, "a.b").is_some());
        assert!(check_name(NameRule::Label1035, "1svc").is_some());
        assert_eq!(check_name(NameRule::PathSegment, "system:admin"), None);
    }

    #[test]
    fn required_fields_and_selectors() {
        let errs = validate(
            &rt("apps/v1", "StatefulSet"),
            &json!({"metadata": {"name": "x"}, "spec": {
            "selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c"}]}}}}),
        );
        let fields: Vec<_> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.template.metadata.labels",
                "spec.template.spec.containers[0].image"
            ]
        );
        let errs = validate(
            &rt("v1", "Service"),
            &json!({"metadata": {"name": "s"}, "spec": {}}),
        );
        assert_eq!(errs[0].0, "spec.ports");
        let errs = validate(
            &rt("v1", "Secret"),
            &json!({"metadata": {"name": "s"}, "data": {"a": "!!"}}),
        );
        assert_eq!(errs[0].0, "data[a]");
    }

    #[test]
    fn immutable_fields_are_refused() {
        let svc = rt("v1", "Service");
        let errs = validate_update(
            &svc,
            &json!({"spec": {"clusterIP": "127.1.0.1"}}),
            &json!({"spec": {"clusterIP": "127.1.0.2"}}),
        );
        assert_eq!(errs[0].0, "spec.clusterIP");
        let cm = rt("v1", "ConfigMap");
        let errs = validate_update(
            &cm,
            &json!({"immutable": true, "data": {"a": "1"}}),
            &json!({"immutable": true, "data": {"a": "2"}}),
        );
        assert_eq!(errs[0].0, "data");
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}});
        apply_defaults(&rt("v1", "Secret"), &mut s);
        assert_eq!(
            s,
            json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"password": "aHVudGVyMg=="}})
        );
    }

    /// The defaults kube-apiserver 1.20 filled in for the Titanium manifests and the simulator
    /// did not (measured by the `tests` crate's fidelity test).
    #[test]
    fn probe_volume_and_template_defaults_match_a_real_server() {
        let mut d = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "x:1",
                "livenessProbe": {"httpGet": {"path": "/health", "port": 8000}},
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 5}}],
            "volumes": [{"name": "cm", "configMap": {"name": "cm"}},
                {"name": "s", "secret": {"secretName": "s", "defaultMode": 256}}]}}}});
        apply_defaults(&rt("apps/v1", "Deployment"), &mut d);
        let t = &d["spec"]["template"];
        assert_eq!(t["metadata"], json!({"creationTimestamp": null}));
        let c = &t["spec"]["containers"][0];
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"path": "/health", "port": 8000, "scheme": "HTTP"},
                "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(c["readinessProbe"]["periodSeconds"], 5);
        assert_eq!(c["readinessProbe"]["failureThreshold"], 3);
        assert_eq!(t["spec"]["volumes"][0]["configMap"]["defaultMode"], 420);
        assert_eq!(t["spec"]["volumes"][1]["secret"]["defaultMode"], 256);

        let mut cj = json!({"spec": {"schedule": "0 2 * * *", "jobTemplate": {"spec": {"template": {"spec": {}}}}}});
        apply_defaults(&rt("batch/v1", "CronJob"), &mut cj);
        assert_eq!(
            cj["spec"]["jobTemplate"]["metadata"],
            json!({"creationTimestamp": null})
        );
        assert_eq!(
            cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"],
            json!({"creationTimestamp": null})
        );
    }

    /// Admission of a pod as kube-apiserver 1.20 does it (not of a template).
    #[test]
    fn pods_get_service_account_priority_and_tolerations() {
        let mut pod = json!({"spec": {"containers": [{"name": "c", "image": "x:1"}],
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}]}});
        apply_defaults(&rt("v1", "Pod"), &mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["serviceAccount"], "default");
        let volume = spec["volumes"][0]["name"].as_str().expect("a token volume");
        assert!(volume.starts_with("kube-api-access-"), "{volume}");
        assert_eq!(
            spec["containers"][0]["volumeMounts"],
            json!([{"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT}])
        );
        let mut again = pod.clone();
        apply_defaults(&rt("v1", "Pod"), &mut again);
        assert_eq!(again, pod, "admission twice adds nothing");
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["priority"], 0);
        assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority");
        assert_eq!(
            spec["tolerations"],
            json!([
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ])
        );
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x:1"}]}}}});
        apply_defaults(&rt("apps/v1", "Deployment"), &mut d);
        assert!(
            d["spec"]["template"]["spec"]
                .get("serviceAccountName")
                .is_none()
        );
        let mut rs = json!({"spec": {"template": {"spec": {}}}});
        apply_defaults(&rt("apps/v1", "ReplicaSet"), &mut rs);
        assert!(rs["spec"].get("revisionHistoryLimit").is_none());
    }
}
