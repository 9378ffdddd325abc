//! Events, the way users look for them with `kubectl describe` and `kubectl get events`:
//! one Event per (object, reason, message), its `count` bumped on repeats.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{meta, now};
use crate::store::{Mutation, Store};

/// Whether an Event reports normal operation or a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// `type: Normal`.
    Normal,
    /// `type: Warning`.
    Warning,
}

/// Record an Event about `obj` from `component` (for example `kubelet`).
pub(crate) fn record(
    store: &Store,
    obj: &Value,
    kind: EventKind,
    reason: &str,
    message: &str,
    component: &str,
) {
    let ns = match meta(obj, "namespace") {
        "" => "default",
        ns => ns,
    };
    let uid = meta(obj, "uid");
    let digest = Sha256::digest(format!("{uid}\0{reason}\0{message}").as_bytes());
    let name = format!("{}.{}", meta(obj, "name"), hex::encode(&digest[..8]));
    let t = now();
    let ty = match kind {
        EventKind::Normal => "Normal",
        EventKind::Warning => "Warning",
    };
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion").cloned().unwrap_or(Value::Null),
            "kind": obj.get("kind").cloned().unwrap_or(Value::Null),
            "name": meta(obj, "name"),
            "namespace": meta(obj, "namespace"),
            "uid": uid,
        },
        "reason": reason,
        "message": message,
        "type": ty,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": t,
        "lastTimestamp": t,
        "count": 1,
    });
    if let Some(existing) = store.get("/events", ns, &name) {
        // Repeats within half a minute are folded away, so a controller retrying every second
        // does not turn the event list into a stream.
        let last = existing
            .get("lastTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if last.is_some_and(|l| {
            chrono::Utc::now().signed_duration_since(l) < chrono::Duration::seconds(30)
        }) {
            return;
        }
        let res = store.mutate("/events", ns, &name, |_, cur| match cur {
            Some(c) if meta(c, "uid") == meta(&existing, "uid") => {
                let mut o = c.as_ref().clone();
                let n = o.get("count").and_then(Value::as_i64).unwrap_or(1);
                o["count"] = json!(n + 1);
                o["lastTimestamp"] = json!(now());
                Ok(Mutation::Put(o))
            }
            _ => Ok(Mutation::Unchanged),
        });
        if let Err(e) = res {
            tracing::debug!(error = %e, "event update failed");
        }
        return;
    }
    // The namespace may be going away; an event that cannot be stored is not an error.
    let _ = super::create(store, "/events", ns, event);
}
