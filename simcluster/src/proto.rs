//! Decoding of Kubernetes protobuf request bodies for the kinds kubectl's typed clients send
//! that way (`kubectl auth can-i`, `kubectl create configmap|secret|namespace|serviceaccount|
//! deployment`, `kubectl create job --from=cronjob/NAME`).
//!
//! The envelope is the `k8s\0` magic followed by a `runtime.Unknown` message whose `raw` field
//! holds the object. Field numbers come from the `generated.proto` files of k8s.io/api and
//! apimachinery; only the messages listed in [`SCHEMAS`] are known, and any other kind is
//! refused with a message that says so.

use base64::Engine as _;
use serde_json::{Map, Value, json};

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bytes,
    Int,
    Bool,
    Time,
    Msg(&'static str),
    /// An embedded Go struct: its fields appear in the parent's JSON object.
    Inline(&'static str),
    MapStr,
    MapBytes,
    /// `map<string, Quantity>`, rendered as strings.
    MapQuantity,
    /// `resource.Quantity`, rendered as a string.
    Quantity,
    /// `intstr.IntOrString`, rendered as a number or a string.
    IntOrStr,
}

struct Field {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
    /// A pointer field in the Go type: present means set, so zero values are kept. Plain
    /// fields are always encoded, and their zero values mean "omitted" in JSON.
    pointer: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: false,
        pointer: false,
    }
}

const fn p(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: false,
        pointer: true,
    }
}

const fn r(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: true,
        pointer: false,
    }
}

use Ty::{
    Bool, Bytes, Inline, Int, IntOrStr, MapBytes, MapQuantity, MapStr, Msg, Quantity, Str, Time,
};

const SCHEMAS: &[(&str, &[Field])] = &[
    (
        "ObjectMeta",
        &[
            f(1, "name", Str),
            f(2, "generateName", Str),
            f(3, "namespace", Str),
            f(5, "uid", Str),
            f(6, "resourceVersion", Str),
            f(7, "generation", Int),
            f(8, "creationTimestamp", Time),
            p(9, "deletionTimestamp", Time),
            p(10, "deletionGracePeriodSeconds", Int),
            f(11, "labels", MapStr),
            f(12, "annotations", MapStr),
            r(13, "ownerReferences", Msg("OwnerReference")),
            r(14, "finalizers", Str),
        ],
    ),
    (
        "OwnerReference",
        &[
            f(1, "kind", Str),
            f(3, "name", Str),
            f(4, "uid", Str),
            f(5, "apiVersion", Str),
            p(6, "controller", Bool),
            p(7, "blockOwnerDeletion", Bool),
        ],
    ),
    (
        "ObjectReference",
        &[
            f(1, "kind", Str),
            f(2, "namespace", Str),
            f(3, "name", Str),
            f(4, "uid", Str),
            f(5, "apiVersion", Str),
            f(6, "resourceVersion", Str),
            f(7, "fieldPath", Str),
        ],
    ),
    ("LocalObjectReference", &[f(1, "name", Str)]),
    (
        "SelfSubjectAccessReview",
        &[
            f(1, "metadata", Msg("ObjectMeta")),
            f(2, "spec", Msg("SelfSubjectAccessReviewSpec")),
        ],
    ),
    (
        "SelfSubjectAccessReviewSpec",
        &[
            p(1, "resourceAttributes", Msg("ResourceAttributes")),
            p(2, "nonResourceAttributes", Msg("NonResourceAttributes")),
        ],
    ),
    (
        "ResourceAttributes",
        &[
            f(1, "namespace", Str),
            f(2, "verb", Str),
            f(3, "group", Str),
            f(4, "version", Str),
            f(5, "resource", Str),
            f(6, "subresource", Str),
            f(7, "name", Str),
        ],
    ),
    (
        "NonResourceAttributes",
        &[f(1, "path", Str), f(2, "verb", Str)],
    ),
    (
        "ConfigMap",
        &[
            f(1, "metadata", Msg("ObjectMeta")),
            f(2, "data", MapStr),
            f(3, "binaryData", MapBytes),
            p(4, "immutable", Bool),
        ],
    ),
    (
        "Secret",
        &[
            f(1, "metadata", Msg("ObjectMeta")),
            f(2, "data", MapBytes),
            f(3, "type", Str),
            f(4, "stringData", MapStr),
            p(5, "immutable", Bool),
        ],
    ),
    (
        "Namespace",
        &[
            f(1, "metadata", Msg("ObjectMeta")),
            f(2, "spec", Msg("NamespaceSpec")),
        ],
    ),
    ("NamespaceSpec", &[r(1, "finalizers", Str)]),
    (
        "ServiceAccount",
        &[
            f(1, "metadata", Msg("ObjectMeta")),
            r(2, "secrets", Msg("ObjectReference")),
            r(3, "imagePullSecrets", Msg("LocalObjectReference")),
            p(4, "automountServiceAccountToken", Bool),
        ],
    ),
    (
        "LabelSelector",
        &[
            f(1, "matchLabels", MapStr),
            r(2, "matchExpressions", Msg("LabelSelectorRequirement")),
        ],
    ),
    (
        "LabelSelectorRequirement",
        &[f(1, "key", Str), f(2, "operator", Str), r(3, "values", Str)],
    ),
    (
        "Job",
        &[
            f(1, "metadata", Msg("ObjectMeta")),
            f(2, "spec", Msg("JobSpec")),
        ],
    ),
    (
        "CronJob",
        &[
            f(1, "metadata", Msg("ObjectMeta")),
            f(2, "spec", Msg("CronJobSpec")),
        ],
    ),
    (
        "CronJobSpec",
        &[
            f(1, "schedule", Str),
            p(2, "startingDeadlineSeconds", Int),
            f(3, "concurrencyPolicy", Str),
            p(4, "suspend", Bool),
            f(5, "jobTemplate", Msg("JobTemplateSpec")),
            p(6, "successfulJobsHistoryLimit", Int),
            p(7, "failedJobsHistoryLimit", Int),
            p(8, "timeZone", Str),
        ],
    ),
    (
        "JobTemplateSpec",
        &[
            f(1, "metadata", Msg("ObjectMeta")),
            f(2, "spec", Msg("JobSpec")),
        ],
    ),
    (
        "JobSpec",
        &[
            p(1, "parallelism", Int),
            p(2, "completions", Int),
            p(3, "activeDeadlineSeconds", Int),
            p(4, "selector", Msg("LabelSelector")),
            p(5, "manualSelector", Bool),
            f(6, "template", Msg("PodTemplateSpec")),
            p(7, "backoffLimit", Int),
            p(8, "ttlSecondsAfterFinished", Int),
            p(9, "completionMode", Str),
            p(10, "suspend", Bool),
        ],
    ),
    (
        "Deployment",
        &[
            f(1, "metadata", Msg("ObjectMeta")),
            f(2, "spec", Msg("DeploymentSpec")),
        ],
    ),
    (
        "DeploymentSpec",
        &[
            p(1, "replicas", Int),
            p(2, "selector", Msg("LabelSelector")),
            f(3, "template", Msg("PodTemplateSpec")),
            f(4, "strategy", Msg("DeploymentStrategy")),
            f(5, "minReadySeconds", Int),
            p(6, "revisionHistoryLimit", Int),
            f(7, "paused", Bool),
            p(9, "progressDeadlineSeconds", Int),
        ],
    ),
    (
        "DeploymentStrategy",
        &[
            f(1, "type", Str),
            p(2, "rollingUpdate", Msg("RollingUpdateDeployment")),
        ],
    ),
    (
        "RollingUpdateDeployment",
        &[p(1, "maxUnavailable", IntOrStr), p(2, "maxSurge", IntOrStr)],
    ),
    (
        "PodTemplateSpec",
        &[
            f(1, "metadata", Msg("ObjectMeta")),
            f(2, "spec", Msg("PodSpec")),
        ],
    ),
    (
        "PodSpec",
        &[
            r(1, "volumes", Msg("Volume")),
            r(2, "containers", Msg("Container")),
            f(3, "restartPolicy", Str),
            p(4, "terminationGracePeriodSeconds", Int),
            p(5, "activeDeadlineSeconds", Int),
            f(6, "dnsPolicy", Str),
            f(7, "nodeSelector", MapStr),
            f(8, "serviceAccountName", Str),
            f(9, "serviceAccount", Str),
            f(10, "nodeName", Str),
            f(11, "hostNetwork", Bool),
            f(12, "hostPID", Bool),
            f(13, "hostIPC", Bool),
            p(14, "securityContext", Msg("PodSecurityContext")),
            r(15, "imagePullSecrets", Msg("LocalObjectReference")),
            f(16, "hostname", Str),
            f(17, "subdomain", Str),
            f(19, "schedulerName", Str),
            r(20, "initContainers", Msg("Container")),
            p(21, "automountServiceAccountToken", Bool),
            r(22, "tolerations", Msg("Toleration")),
            f(24, "priorityClassName", Str),
            p(25, "priority", Int),
            p(30, "enableServiceLinks", Bool),
            p(31, "preemptionPolicy", Str),
        ],
    ),
    (
        "PodSecurityContext",
        &[
            p(2, "runAsUser", Int),
            p(3, "runAsNonRoot", Bool),
            p(5, "fsGroup", Int),
            p(6, "runAsGroup", Int),
        ],
    ),
    (
        "SecurityContext",
        &[
            p(2, "privileged", Bool),
            p(4, "runAsUser", Int),
            p(5, "runAsNonRoot", Bool),
            p(6, "readOnlyRootFilesystem", Bool),
            p(7, "allowPrivilegeEscalation", Bool),
            p(8, "runAsGroup", Int),
        ],
    ),
    (
        "Toleration",
        &[
            f(1, "key", Str),
            f(2, "operator", Str),
            f(3, "value", Str),
            f(4, "effect", Str),
            p(5, "tolerationSeconds", Int),
        ],
    ),
    (
        "Container",
        &[
            f(1, "name", Str),
            f(2, "image", Str),
            r(3, "command", Str),
            r(4, "args", Str),
            f(5, "workingDir", Str),
            r(6, "ports", Msg("ContainerPort")),
            r(7, "env", Msg("EnvVar")),
            f(8, "resources", Msg("ResourceRequirements")),
            r(9, "volumeMounts", Msg("VolumeMount")),
            p(10, "livenessProbe", Msg("Probe")),
            p(11, "readinessProbe", Msg("Probe")),
            f(13, "terminationMessagePath", Str),
            f(14, "imagePullPolicy", Str),
            p(15, "securityContext", Msg("SecurityContext")),
            f(16, "stdin", Bool),
            f(17, "stdinOnce", Bool),
            f(18, "tty", Bool),
            r(19, "envFrom", Msg("EnvFromSource")),
            f(20, "terminationMessagePolicy", Str),
            p(22, "startupProbe", Msg("Probe")),
        ],
    ),
    (
        "ContainerPort",
        &[
            f(1, "name", Str),
            f(2, "hostPort", Int),
            f(3, "containerPort", Int),
            f(4, "protocol", Str),
            f(5, "hostIP", Str),
        ],
    ),
    (
        "EnvVar",
        &[
            f(1, "name", Str),
            f(2, "value", Str),
            p(3, "valueFrom", Msg("EnvVarSource")),
        ],
    ),
    (
        "EnvVarSource",
        &[
            p(1, "fieldRef", Msg("ObjectFieldSelector")),
            p(2, "resourceFieldRef", Msg("ResourceFieldSelector")),
            p(3, "configMapKeyRef", Msg("KeySelector")),
            p(4, "secretKeyRef", Msg("KeySelector")),
        ],
    ),
    (
        "KeySelector",
        &[
            f(1, "localObjectReference", Inline("LocalObjectReference")),
            f(2, "key", Str),
            p(3, "optional", Bool),
        ],
    ),
    (
        "ObjectFieldSelector",
        &[f(1, "apiVersion", Str), f(2, "fieldPath", Str)],
    ),
    (
        "ResourceFieldSelector",
        &[
            f(1, "containerName", Str),
            f(2, "resource", Str),
            f(3, "divisor", Quantity),
        ],
    ),
    (
        "EnvFromSource",
        &[
            f(1, "prefix", Str),
            p(2, "configMapRef", Msg("EnvSource")),
            p(3, "secretRef", Msg("EnvSource")),
        ],
    ),
    (
        "EnvSource",
        &[
            f(1, "localObjectReference", Inline("LocalObjectReference")),
            p(2, "optional", Bool),
        ],
    ),
    (
        "ResourceRequirements",
        &[f(1, "limits", MapQuantity), f(2, "requests", MapQuantity)],
    ),
    (
        "VolumeMount",
        &[
            f(1, "name", Str),
            f(2, "readOnly", Bool),
            f(3, "mountPath", Str),
            f(4, "subPath", Str),
            f(5, "mountPropagation", Str),
            f(6, "subPathExpr", Str),
        ],
    ),
    (
        "Probe",
        &[
            f(1, "handler", Inline("ProbeHandler")),
            f(2, "initialDelaySeconds", Int),
            f(3, "timeoutSeconds", Int),
            f(4, "periodSeconds", Int),
            f(5, "successThreshold", Int),
            f(6, "failureThreshold", Int),
            p(7, "terminationGracePeriodSeconds", Int),
        ],
    ),
    (
        "ProbeHandler",
        &[
            p(1, "exec", Msg("ExecAction")),
            p(2, "httpGet", Msg("HTTPGetAction")),
            p(3, "tcpSocket", Msg("TCPSocketAction")),
        ],
    ),
    ("ExecAction", &[r(1, "command", Str)]),
    (
        "HTTPGetAction",
        &[
            f(1, "path", Str),
            f(2, "port", IntOrStr),
            f(3, "host", Str),
            f(4, "scheme", Str),
            r(5, "httpHeaders", Msg("HTTPHeader")),
        ],
    ),
    ("HTTPHeader", &[f(1, "name", Str), f(2, "value", Str)]),
    (
        "TCPSocketAction",
        &[f(1, "port", IntOrStr), f(2, "host", Str)],
    ),
    (
        "Volume",
        &[
            f(1, "name", Str),
            f(2, "volumeSource", Inline("VolumeSource")),
        ],
    ),
    (
        "VolumeSource",
        &[
            p(1, "hostPath", Msg("HostPathVolumeSource")),
            p(2, "emptyDir", Msg("EmptyDirVolumeSource")),
            p(6, "secret", Msg("SecretVolumeSource")),
            p(
                10,
                "persistentVolumeClaim",
                Msg("PersistentVolumeClaimVolumeSource"),
            ),
            p(19, "configMap", Msg("ConfigMapVolumeSource")),
        ],
    ),
    (
        "HostPathVolumeSource",
        &[f(1, "path", Str), p(2, "type", Str)],
    ),
    (
        "EmptyDirVolumeSource",
        &[f(1, "medium", Str), p(2, "sizeLimit", Quantity)],
    ),
    (
        "SecretVolumeSource",
        &[
            f(1, "secretName", Str),
            r(2, "items", Msg("KeyToPath")),
            p(3, "defaultMode", Int),
            p(4, "optional", Bool),
        ],
    ),
    (
        "ConfigMapVolumeSource",
        &[
            f(1, "localObjectReference", Inline("LocalObjectReference")),
            r(2, "items", Msg("KeyToPath")),
            p(3, "defaultMode", Int),
            p(4, "optional", Bool),
        ],
    ),
    (
        "KeyToPath",
        &[f(1, "key", Str), f(2, "path", Str), p(3, "mode", Int)],
    ),
    (
        "PersistentVolumeClaimVolumeSource",
        &[f(1, "claimName", Str), f(2, "readOnly", Bool)],
    ),
    ("QuantityMsg", &[f(1, "string", Str)]),
    (
        "IntOrStringMsg",
        &[f(1, "type", Int), f(2, "intVal", Int), f(3, "strVal", Str)],
    ),
    (
        "QuantityEntry",
        &[f(1, "key", Str), f(2, "value", Quantity)],
    ),
    (
        "Unknown",
        &[
            f(1, "typeMeta", Msg("TypeMeta")),
            f(2, "raw", Bytes),
            f(3, "contentEncoding", Str),
            f(4, "contentType", Str),
        ],
    ),
    ("TypeMeta", &[f(1, "apiVersion", Str), f(2, "kind", Str)]),
    ("Time", &[f(1, "seconds", Int), f(2, "nanos", Int)]),
    ("MapEntry", &[f(1, "key", Str), f(2, "value", Bytes)]),
];

fn schema(name: &str) -> Option<&'static [Field]> {
    SCHEMAS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Kinds whose protobuf encoding is understood.
pub(crate) const KNOWN_KINDS: &[&str] = &[
    "SelfSubjectAccessReview",
    "ConfigMap",
    "Secret",
    "Namespace",
    "ServiceAccount",
    "Job",
    "CronJob",
    "Deployment",
];

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated field")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

fn time_value(v: &Value) -> Value {
    let secs = v.get("seconds").and_then(Value::as_i64).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null)
}

/// Decodes one protobuf message of the schema `name` (see [`SCHEMAS`]) into its JSON form.
///
/// Long by design: one loop over the wire's fields, with one match arm per wire type and one
/// per field type of the schema, so the whole mapping from protobuf to JSON is in one place.
fn decode_message(buf: &[u8], name: &str) -> Result<Value, String> {
    let fields = schema(name).ok_or_else(|| format!("no protobuf schema for {name}"))?;
    let mut out = Map::new();
    let mut rd = Reader { buf, pos: 0 };
    while rd.pos < buf.len() {
        let tag = rd.varint()?;
        let (num, wire) = (tag >> 3, tag & 7);
        let raw: Result<(Option<u64>, Option<&[u8]>), String> = match wire {
            0 => Ok((Some(rd.varint()?), None)),
            1 => rd.bytes(8).map(|_| (None, None)),
            2 => {
                let n = usize::try_from(rd.varint()?).map_err(|_| "length overflow".to_owned())?;
                Ok((None, Some(rd.bytes(n)?)))
            }
            5 => rd.bytes(4).map(|_| (None, None)),
            w => Err(format!("unsupported wire type {w}")),
        };
        let (int, data) = raw?;
        let Some(field) = fields.iter().find(|f| f.num == num) else {
            continue;
        };
        let value = match (field.ty, int, data) {
            (Ty::Int, Some(i), _) => json!(i as i64),
            (Ty::Bool, Some(i), _) => json!(i != 0),
            (Ty::Str, _, Some(d)) => json!(
                String::from_utf8(d.to_vec())
                    .map_err(|_| format!("{}: invalid UTF-8", field.name))?
            ),
            (Ty::Bytes, _, Some(d)) => json!(base64::engine::general_purpose::STANDARD.encode(d)),
            (Ty::Time, _, Some(d)) => time_value(&decode_message(d, "Time")?),
            (Ty::Msg(m), _, Some(d)) => decode_message(d, m)?,
            (Ty::Inline(m), _, Some(d)) => {
                if let Value::Object(inner) = decode_message(d, m)? {
                    out.extend(inner);
                }
                continue;
            }
            (Ty::Quantity, _, Some(d)) => decode_message(d, "QuantityMsg")?
                .get("string")
                .cloned()
                .unwrap_or(json!("")),
            (Ty::IntOrStr, _, Some(d)) => {
                let v = decode_message(d, "IntOrStringMsg")?;
                if v.get("type").and_then(Value::as_i64) == Some(1) {
                    v.get("strVal").cloned().unwrap_or(json!(""))
                } else {
                    v.get("intVal").cloned().unwrap_or(json!(0))
                }
            }
            (Ty::MapQuantity, _, Some(d)) => {
                let e = decode_message(d, "QuantityEntry")?;
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let m = out.entry(field.name).or_insert_with(|| json!({}));
                m[key] = e.get("value").cloned().unwrap_or(json!(""));
                continue;
            }
            (Ty::MapStr | Ty::MapBytes, _, Some(d)) => {
                let e = decode_message(d, "MapEntry")?;
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let b64 = e.get("value").and_then(Value::as_str).unwrap_or_default();
                let val = if matches!(field.ty, Ty::MapBytes) {
                    json!(b64)
                } else {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| e.to_string())?;
                    json!(
                        String::from_utf8(bytes)
                            .map_err(|_| format!("{}[{key}]: invalid UTF-8", field.name))?
                    )
                };
                let m = out.entry(field.name).or_insert_with(|| json!({}));
                m[key] = val;
                continue;
            }
            _ => return Err(format!("field {} has an unexpected wire type", field.name)),
        };
        let zero = match &value {
            Value::String(s) => s.is_empty(),
            Value::Number(n) => n.as_i64() == Some(0),
            Value::Bool(b) => !b,
            Value::Object(m) => m.is_empty(),
            _ => false,
        };
        if zero && !field.pointer && !field.repeated {
            continue;
        }
        if field.repeated {
            if let Some(a) = out
                .entry(field.name)
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                a.push(value);
            }
        } else {
            out.insert(field.name.to_owned(), value);
        }
    }
    Ok(Value::Object(out))
}

/// Decode a `application/vnd.kubernetes.protobuf` body into the JSON object it encodes.
///
/// # Errors
/// A body without the `k8s\0` envelope, a kind without a known schema, or malformed fields.
pub(crate) fn decode(body: &[u8]) -> Result<Value, String> {
    let inner = body
        .strip_prefix(b"k8s\0")
        .ok_or("the body does not start with the Kubernetes protobuf magic k8s\\0")?;
    let unknown = decode_message(inner, "Unknown")?;
    let api_version = unknown
        .pointer("/typeMeta/apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let kind = unknown
        .pointer("/typeMeta/kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !KNOWN_KINDS.contains(&kind.as_str()) {
        return Err(format!(
            "protobuf bodies are only understood for {}; send {kind} as application/json",
            KNOWN_KINDS.join(", ")
        ));
    }
    let raw = unknown
        .get("raw")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|e| e.to_string())?;
    let mut obj = decode_message(&raw, &kind)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, data: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8];
        let mut len = data.len();
        while len >= 0x80 {
            v.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        v.push(len as u8);
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decodes_a_config_map_envelope() {
        let meta = [field(1, b"cfg"), field(3, b"ns")].concat();
        let entry = [field(1, b"k"), field(2, b"v")].concat();
        let cm = [field(1, &meta), field(2, &entry)].concat();
        let tm = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &tm), field(2, &cm)].concat();
        let v = decode(&body).expect("decodes");
        assert_eq!(
            v,
            json!({"metadata": {"name": "cfg", "namespace": "ns"}, "data": {"k": "v"}, "apiVersion": "v1", "kind": "ConfigMap"})
        );
    }

    fn varint_field(num: u64, v: u8) -> Vec<u8> {
        vec![(num << 3) as u8, v]
    }

    #[test]
    fn decodes_a_job_with_a_pod_template() {
        let env_source = [field(1, &field(1, b"db-secret")), field(2, b"password")].concat();
        let env = [field(1, b"PGPASSWORD"), field(3, &field(4, &env_source))].concat();
        let port = field(1, &[varint_field(1, 0), varint_field(2, 80)].concat());
        let probe = [field(1, &field(3, &port)), varint_field(4, 5)].concat();
        let resources = field(
            2,
            &[field(1, b"memory"), field(2, &field(1, b"64Mi"))].concat(),
        );
        let container = [
            field(1, b"backup"),
            field(2, b"postgres:15-alpine"),
            field(3, b"pg_dump"),
            field(7, &env),
            field(8, &resources),
            field(11, &probe),
        ]
        .concat();
        let volume = [
            field(1, b"data"),
            field(2, &field(10, &field(1, b"data-pvc"))),
        ]
        .concat();
        let pod = [field(1, &volume), field(2, &container), field(3, b"Never")].concat();
        let template = field(2, &pod);
        let spec = [varint_field(7, 2), field(6, &template)].concat();
        let job = [field(1, &field(1, b"manual-1")), field(2, &spec)].concat();
        let tm = [field(1, b"batch/v1"), field(2, b"Job")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &tm), field(2, &job)].concat();
        let v = decode(&body).expect("decodes");
        assert_eq!(
            v,
            json!({"metadata": {"name": "manual-1"}, "spec": {"backoffLimit": 2, "template": {"spec": {
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-pvc"}}],
            "containers": [{"name": "backup", "image": "postgres:15-alpine", "command": ["pg_dump"],
                "env": [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "db-secret", "key": "password"}}}],
                "resources": {"requests": {"memory": "64Mi"}},
                "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 5}}],
            "restartPolicy": "Never"}}}, "apiVersion": "batch/v1", "kind": "Job"})
        );
    }

    #[test]
    fn refuses_unknown_kinds_and_garbage() {
        let tm = [field(1, b"apps/v1"), field(2, b"StatefulSet")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &tm)].concat();
        assert!(decode(&body).expect_err("unknown").contains("StatefulSet"));
        assert!(decode(b"{}").is_err());
        assert!(decode(b"k8s\0\x0a\xff").is_err());
    }
}
