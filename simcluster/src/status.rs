//! API errors as Kubernetes `Status` objects: the only shape in which the server reports failure.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::resources::ResourceType;

/// A failed API request, rendered as a `Status` object with the matching HTTP code.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub(crate) code: u16,
    /// Machine-readable reason: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...
    pub(crate) reason: &'static str,
    /// Human-readable message, worded like the real API server's.
    pub(crate) message: String,
    /// `details` of the Status (name, group, kind, causes), if any.
    pub(crate) details: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.reason, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// `StatusDetails` as the real server writes them: `group` is left out when empty
/// (`omitempty`), as for the core group.
fn details_of(group: &str, kind: &str, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": kind});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

fn details(rt: &ResourceType, name: &str) -> Value {
    details_of(&rt.group, &rt.plural, name)
}

/// The `reason` of a field error, from the prefix its message starts with (the real
/// `field.Error` prints its type's string first).
fn cause_reason(message: &str) -> &'static str {
    [
        ("Invalid value", "FieldValueInvalid"),
        ("Required value", "FieldValueRequired"),
        ("Forbidden", "FieldValueForbidden"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Not found", "FieldValueNotFound"),
    ]
    .into_iter()
    .find(|(prefix, _)| message.starts_with(prefix))
    .map_or("FieldValueInvalid", |(_, reason)| reason)
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 BadRequest.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 NotFound for an object.
    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.qualified()),
        );
        e.details = Some(details(rt, name));
        e
    }

    /// 404 NotFound for a path that names no resource: the real server's words and empty
    /// details; the path is only logged.
    pub(crate) fn no_resource(path: &str) -> Self {
        tracing::debug!(path, "no resource at this path");
        let mut e = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        e.details = Some(json!({}));
        e
    }

    /// 409 AlreadyExists.
    pub(crate) fn already_exists(rt: &ResourceType, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified()),
        );
        e.details = Some(details(rt, name));
        e
    }

    /// 409 Conflict for a stale resourceVersion or uid precondition.
    pub(crate) fn conflict(rt: &ResourceType, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                rt.qualified()
            ),
        );
        e.details = Some(details(rt, name));
        e
    }

    /// 409 Conflict from server-side apply: fields owned by other managers, `(manager, field)`.
    /// The message is the real field manager's (`getConflictMessage`): one conflict on one
    /// line, several grouped by manager in name order.
    pub(crate) fn apply_conflict(causes: Vec<(String, String)>) -> Self {
        let message = if let [(manager, field)] = causes.as_slice() {
            format!("Apply failed with 1 conflict: conflict with \"{manager}\": {field}")
        } else {
            let mut managers: Vec<&str> = causes.iter().map(|(m, _)| m.as_str()).collect();
            managers.sort_unstable();
            managers.dedup();
            let mut lines = Vec::new();
            for manager in managers {
                lines.push(format!("conflicts with \"{manager}\""));
                for (_, field) in causes.iter().filter(|(m, _)| m == manager) {
                    lines.push(format!("- {field}"));
                }
            }
            format!(
                "Apply failed with {} conflicts: {}",
                causes.len(),
                lines.join("\n")
            )
        };
        let mut e = Self::new(409, "Conflict", message);
        let causes: Vec<Value> = causes
            .iter()
            .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f}))
            .collect();
        e.details = Some(json!({ "causes": causes }));
        e
    }

    /// 422 Invalid with one cause per field error `(field, message)`, for an object of the
    /// kind `rt`.
    pub(crate) fn invalid(rt: &ResourceType, name: &str, errors: &[(String, String)]) -> Self {
        Self::invalid_kind(&rt.group, &rt.kind, name, errors)
    }

    /// 422 Invalid for any group and kind (`PatchOptions.meta.k8s.io` for bad options). The
    /// message names the qualified kind (`Deployment.apps`), as `errors.NewInvalid` does.
    pub(crate) fn invalid_kind(
        group: &str,
        kind: &str,
        name: &str,
        errors: &[(String, String)],
    ) -> Self {
        let text: Vec<String> = errors.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let joined = if text.len() == 1 {
            text[0].clone()
        } else {
            format!("[{}]", text.join(", "))
        };
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {joined}"),
        );
        let mut d = details_of(group, kind, name);
        if name.is_empty() {
            d.as_object_mut().map(|m| m.remove("name"));
        }
        d["causes"] = errors
            .iter()
            .map(|(f, m)| json!({"reason": cause_reason(m), "message": m, "field": f}))
            .collect();
        e.details = Some(d);
        e
    }

    /// 403 Forbidden.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 405 MethodNotAllowed.
    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 410 Gone (an expired resourceVersion).
    pub(crate) fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 415 UnsupportedMediaType.
    pub(crate) fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 500 InternalError.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` object.
    pub(crate) fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        crate::server::json_response(code, &self.to_status())
    }
}

/// A `Status` of success, as answered by a finished delete.
pub(crate) fn success_status(rt: &ResourceType, name: &str, uid: Option<&str>) -> Value {
    let mut d = details(rt, name);
    if let Some(uid) = uid {
        d["uid"] = Value::String(uid.to_owned());
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
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

    /// Bodies as kube-apiserver 1.20 answered them (the fidelity test's corpus).
    #[test]
    fn status_bodies_match_a_real_server() {
        let cm = rt("v1", "ConfigMap");
        assert_eq!(
            ApiError::not_found(&cm, "nope").to_status()["details"],
            json!({"name": "nope", "kind": "configmaps"})
        );
        let invalid = ApiError::invalid(
            &rt("apps/v1", "Deployment"),
            "d",
            &[(
                "spec.selector".into(),
                "Invalid value: x: field is immutable".into(),
            )],
        );
        assert_eq!(
            invalid.message,
            "Deployment.apps \"d\" is invalid: spec.selector: Invalid value: x: field is immutable"
        );
        assert_eq!(invalid.to_status()["details"]["group"], "apps");
        let forbidden = ApiError::invalid(
            &cm,
            "imm",
            &[(
                "data".into(),
                "Forbidden: field is immutable when `immutable` is set".into(),
            )],
        );
        assert_eq!(
            forbidden.to_status()["details"]["causes"][0]["reason"],
            "FieldValueForbidden"
        );
        let one = ApiError::apply_conflict(vec![("a".into(), ".data.a".into())]);
        assert_eq!(
            one.message,
            "Apply failed with 1 conflict: conflict with \"a\": .data.a"
        );
        assert_eq!(
            one.to_status()["details"],
            json!({"causes": [{"reason": "FieldManagerConflict", "message": "conflict with \"a\"", "field": ".data.a"}]})
        );
        let two = ApiError::apply_conflict(vec![
            ("b".into(), ".data.x".into()),
            ("a".into(), ".data.y".into()),
        ]);
        assert_eq!(
            two.message,
            "Apply failed with 2 conflicts: conflicts with \"a\"\n- .data.y\nconflicts with \"b\"\n- .data.x"
        );
        assert_eq!(
            ApiError::no_resource("/api/v1/foos").to_status()["message"],
            "the server could not find the requested resource"
        );
    }
}
