//! Decoding of Kubernetes protobuf request bodies for the kinds kubectl's typed clients send
//! that way (`kubectl auth can-i`, `kubectl create configmap|secret|namespace|serviceaccount`).
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
    MapStr,
    MapBytes,
}

struct Field {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> Field {
    Field { num, name, ty, repeated: false }
}

const fn r(num: u64, name: &'static str, ty: Ty) -> Field {
    Field { num, name, ty, repeated: true }
}

use Ty::{Bool, Bytes, Int, MapBytes, MapStr, Msg, Str, Time};

const SCHEMAS: &[(&str, &[Field])] = &[
    ("ObjectMeta", &[
        f(1, "name", Str), f(2, "generateName", Str), f(3, "namespace", Str), f(5, "uid", Str),
        f(6, "resourceVersion", Str), f(7, "generation", Int), f(8, "creationTimestamp", Time),
        f(9, "deletionTimestamp", Time), f(10, "deletionGracePeriodSeconds", Int), f(11, "labels", MapStr),
        f(12, "annotations", MapStr), r(13, "ownerReferences", Msg("OwnerReference")), r(14, "finalizers", Str),
    ]),
    ("OwnerReference", &[
        f(1, "kind", Str), f(3, "name", Str), f(4, "uid", Str), f(5, "apiVersion", Str),
        f(6, "controller", Bool), f(7, "blockOwnerDeletion", Bool),
    ]),
    ("ObjectReference", &[
        f(1, "kind", Str), f(2, "namespace", Str), f(3, "name", Str), f(4, "uid", Str),
        f(5, "apiVersion", Str), f(6, "resourceVersion", Str), f(7, "fieldPath", Str),
    ]),
    ("LocalObjectReference", &[f(1, "name", Str)]),
    ("SelfSubjectAccessReview", &[f(1, "metadata", Msg("ObjectMeta")), f(2, "spec", Msg("SelfSubjectAccessReviewSpec"))]),
    ("SelfSubjectAccessReviewSpec", &[
        f(1, "resourceAttributes", Msg("ResourceAttributes")), f(2, "nonResourceAttributes", Msg("NonResourceAttributes")),
    ]),
    ("ResourceAttributes", &[
        f(1, "namespace", Str), f(2, "verb", Str), f(3, "group", Str), f(4, "version", Str),
        f(5, "resource", Str), f(6, "subresource", Str), f(7, "name", Str),
    ]),
    ("NonResourceAttributes", &[f(1, "path", Str), f(2, "verb", Str)]),
    ("ConfigMap", &[f(1, "metadata", Msg("ObjectMeta")), f(2, "data", MapStr), f(3, "binaryData", MapBytes), f(4, "immutable", Bool)]),
    ("Secret", &[
        f(1, "metadata", Msg("ObjectMeta")), f(2, "data", MapBytes), f(3, "type", Str), f(4, "stringData", MapStr), f(5, "immutable", Bool),
    ]),
    ("Namespace", &[f(1, "metadata", Msg("ObjectMeta")), f(2, "spec", Msg("NamespaceSpec"))]),
    ("NamespaceSpec", &[r(1, "finalizers", Str)]),
    ("ServiceAccount", &[
        f(1, "metadata", Msg("ObjectMeta")), r(2, "secrets", Msg("ObjectReference")),
        r(3, "imagePullSecrets", Msg("LocalObjectReference")), f(4, "automountServiceAccountToken", Bool),
    ]),
    ("Unknown", &[f(1, "typeMeta", Msg("TypeMeta")), f(2, "raw", Bytes), f(3, "contentEncoding", Str), f(4, "contentType", Str)]),
    ("TypeMeta", &[f(1, "apiVersion", Str), f(2, "kind", Str)]),
    ("Time", &[f(1, "seconds", Int), f(2, "nanos", Int)]),
    ("MapEntry", &[f(1, "key", Str), f(2, "value", Bytes)]),
];

fn schema(name: &str) -> Option<&'static [Field]> {
    SCHEMAS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Kinds whose protobuf encoding is understood.
pub(crate) const KNOWN_KINDS: &[&str] = &["SelfSubjectAccessReview", "ConfigMap", "Secret", "Namespace", "ServiceAccount"];

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
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or("truncated field")?;
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
        let Some(field) = fields.iter().find(|f| f.num == num) else { continue };
        let value = match (field.ty, int, data) {
            (Ty::Int, Some(i), _) => json!(i as i64),
            (Ty::Bool, Some(i), _) => json!(i != 0),
            (Ty::Str, _, Some(d)) => json!(String::from_utf8(d.to_vec()).map_err(|_| format!("{}: invalid UTF-8", field.name))?),
            (Ty::Bytes, _, Some(d)) => json!(base64::engine::general_purpose::STANDARD.encode(d)),
            (Ty::Time, _, Some(d)) => time_value(&decode_message(d, "Time")?),
            (Ty::Msg(m), _, Some(d)) => decode_message(d, m)?,
            (Ty::MapStr | Ty::MapBytes, _, Some(d)) => {
                let e = decode_message(d, "MapEntry")?;
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default().to_owned();
                let b64 = e.get("value").and_then(Value::as_str).unwrap_or_default();
                let val = if matches!(field.ty, Ty::MapBytes) {
                    json!(b64)
                } else {
                    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| e.to_string())?;
                    json!(String::from_utf8(bytes).map_err(|_| format!("{}[{key}]: invalid UTF-8", field.name))?)
                };
                let m = out.entry(field.name).or_insert_with(|| json!({}));
                m[key] = val;
                continue;
            }
            _ => return Err(format!("field {} has an unexpected wire type", field.name)),
        };
        if field.repeated {
            out.entry(field.name).or_insert_with(|| json!([])).as_array_mut().map(|a| a.push(value));
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
    let inner = body.strip_prefix(b"k8s\0").ok_or("the body does not start with the Kubernetes protobuf magic k8s\\0")?;
    let unknown = decode_message(inner, "Unknown")?;
    let api_version = unknown.pointer("/typeMeta/apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
    let kind = unknown.pointer("/typeMeta/kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    if !KNOWN_KINDS.contains(&kind.as_str()) {
        return Err(format!(
            "protobuf bodies are only understood for {}; send {kind} as application/json",
            KNOWN_KINDS.join(", ")
        ));
    }
    let raw = unknown.get("raw").and_then(Value::as_str).unwrap_or_default();
    let raw = base64::engine::general_purpose::STANDARD.decode(raw).map_err(|e| e.to_string())?;
    let mut obj = decode_message(&raw, &kind)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, data: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, data.len() as u8];
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
        assert_eq!(v, json!({"metadata": {"name": "cfg", "namespace": "ns"}, "data": {"k": "v"}, "apiVersion": "v1", "kind": "ConfigMap"}));
    }

    #[test]
    fn refuses_unknown_kinds_and_garbage() {
        let tm = [field(1, b"batch/v1"), field(2, b"Job")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &tm)].concat();
        assert!(decode(&body).expect_err("unknown").contains("Job"));
        assert!(decode(b"{}").is_err());
        assert!(decode(b"k8s\0\x0a\xff").is_err());
    }
}
