//! Normalising answers the same way for both servers, comparing them path by path, and the
//! list of known differences kept in `simcluster/SIMULATION.md`.

use std::collections::BTreeMap;

use serde_json::Value;

/// One difference: what (`Deployment/web`, `request:get-missing`), where (a field path,
/// `code`, or `(object)` for an object only one server has), and both values.
#[derive(Debug, Clone)]
pub(crate) struct Difference {
    pub(crate) subject: String,
    pub(crate) path: String,
    pub(crate) real: String,
    pub(crate) sim: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: real {} / simulator {}",
            self.subject, self.path, self.real, self.sim
        )
    }
}

/// Fields compared and found equal, and the differences.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) compared: usize,
    pub(crate) equal: usize,
    pub(crate) differences: Vec<Difference>,
}

impl Tally {
    /// Compare two values leaf by leaf (the union of both sides' paths).
    pub(crate) fn values(&mut self, subject: &str, real: &Value, sim: &Value) {
        let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
        flatten(real, String::new(), &mut a);
        flatten(sim, String::new(), &mut b);
        let paths: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for path in paths {
            self.compared += 1;
            let (x, y) = (a.get(path), b.get(path));
            if x == y {
                self.equal += 1;
            } else {
                self.differences.push(Difference {
                    subject: subject.to_owned(),
                    path: path.clone(),
                    real: show(x),
                    sim: show(y),
                });
            }
        }
    }

    /// One scalar fact (a status code, a count).
    pub(crate) fn scalar(&mut self, subject: &str, path: &str, real: &Value, sim: &Value) {
        self.compared += 1;
        if real == sim {
            self.equal += 1;
        } else {
            self.differences.push(Difference {
                subject: subject.to_owned(),
                path: path.to_owned(),
                real: real.to_string(),
                sim: sim.to_string(),
            });
        }
    }

    /// A difference found without a field-by-field comparison (an object only one server
    /// has): one field compared, not equal.
    pub(crate) fn scalar_difference(&mut self, d: Difference) {
        self.compared += 1;
        self.differences.push(d);
    }

    /// `equal/compared (p%)`.
    pub(crate) fn figure(&self) -> String {
        #[expect(clippy::cast_precision_loss, reason = "counts are small")]
        let pct = if self.compared == 0 {
            100.0
        } else {
            100.0 * self.equal as f64 / self.compared as f64
        };
        format!("{}/{} ({pct:.1}%)", self.equal, self.compared)
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "<absent>".to_owned(), Value::to_string)
}

/// Leaves by path: `.spec.containers[name=web].ports[0].containerPort`. Empty objects and
/// lists are leaves too.
pub(crate) fn flatten(v: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                flatten(x, format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            // Lists of named objects (containers, volumes, env, ports) by name, as their merge
            // key: an element missing on one side does not shift every later one.
            let named = items
                .iter()
                .all(|x| x.get("name").is_some_and(Value::is_string));
            for (i, x) in items.iter().enumerate() {
                let key = if named {
                    format!("name={}", x["name"].as_str().unwrap_or_default())
                } else {
                    i.to_string()
                };
                flatten(x, format!("{path}[{key}]"), out);
            }
        }
        leaf => {
            out.insert(path, leaf.clone());
        }
    }
}

/// What each cluster assigns for itself and the comparison leaves out: identity and
/// bookkeeping metadata, `status`, cluster IPs, the CA certificate, and what a volume
/// provisioner writes (the real control plane here has none; the simulator provisions).
pub(crate) fn normalise(object: &Value) -> Value {
    let mut o = object.clone();
    let kind = o["kind"].as_str().unwrap_or_default().to_owned();
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(f);
        }
        // When differs; whether it is set does not.
        if let Some(t) = meta.get_mut("deletionTimestamp") {
            *t = Value::String("<set>".into());
        }
        if kind == "PersistentVolumeClaim"
            && let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut)
        {
            a.retain(|k, _| !k.starts_with("pv.kubernetes.io/"));
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    match kind.as_str() {
        "Service" => {
            if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        }
        "PersistentVolumeClaim" => {
            if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("volumeName");
            }
        }
        "ConfigMap" if o["metadata"]["name"] == "kube-root-ca.crt" => {
            if let Some(data) = o.get_mut("data").and_then(Value::as_object_mut) {
                data.remove("ca.crt");
            }
        }
        _ => {}
    }
    o
}

/// A ReplicaSet or a Pod made by a controller, without what differs by construction: names
/// (random or hashed; the hash values differ, their format is tested elsewhere), the
/// `pod-template-hash` label, owner uids and names, and the node a scheduler chose (the real
/// control plane here has no node).
pub(crate) fn normalise_workload(object: &Value) -> Value {
    let mut o = normalise(object);
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("name");
        meta.remove("generateName");
        if let Some(owners) = meta
            .get_mut("ownerReferences")
            .and_then(Value::as_array_mut)
        {
            for r in owners.iter_mut().filter_map(Value::as_object_mut) {
                r.remove("uid");
                r.remove("name");
            }
        }
    }
    for labels in [
        "/metadata/labels",
        "/spec/selector/matchLabels",
        "/spec/template/metadata/labels",
    ] {
        if let Some(l) = o.pointer_mut(labels).and_then(Value::as_object_mut) {
            l.remove("pod-template-hash");
        }
    }
    if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("nodeName");
    }
    o
}

/// A difference the simulator is known to have, with the reason it is accepted.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub(crate) subject: String,
    pub(crate) path: String,
    pub(crate) reason: String,
    /// A difference between API versions (the reference is 1.20, the simulator models a newer
    /// server), as opposed to a gap in the simulator.
    pub(crate) version: bool,
}

impl Known {
    pub(crate) fn covers(&self, d: &Difference) -> bool {
        glob(&self.subject, &d.subject) && glob(&self.path, &d.path)
    }
}

/// The fenced ```` ```fidelity-known ```` block of SIMULATION.md: `SUBJECT PATH KIND REASON...`
/// per line, `KIND` being `version` or `gap` (`*` matches anything, `#` starts a comment).
///
/// # Errors
/// No block, or a line without a reason.
pub(crate) fn known_differences(markdown: &str) -> anyhow::Result<Vec<Known>> {
    let start = markdown
        .find("```fidelity-known\n")
        .ok_or_else(|| anyhow::anyhow!("no ```fidelity-known block"))?;
    let body = &markdown[start + "```fidelity-known\n".len()..];
    let end = if body.starts_with("```") {
        0
    } else {
        body.find("\n```")
            .ok_or_else(|| anyhow::anyhow!("the ```fidelity-known block is not closed"))?
    };
    let mut out = Vec::new();
    for line in body[..end].lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(subject), Some(path), Some(kind)) = (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!(
                "a known difference needs a subject, a path, `version` or `gap`, and a reason: {line}"
            );
        };
        let version = match kind {
            "version" => true,
            "gap" => false,
            other => anyhow::bail!("`{other}` is neither `version` nor `gap`: {line}"),
        };
        let reason = parts.collect::<Vec<_>>().join(" ");
        if reason.is_empty() {
            anyhow::bail!("a known difference needs a reason: {line}");
        }
        out.push(Known {
            subject: subject.to_owned(),
            path: path.to_owned(),
            reason,
            version,
        });
    }
    Ok(out)
}

/// `*` matches any run of characters; everything else matches itself.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn glob_and_known_differences() {
        assert!(glob("Service/*", "Service/web"));
        assert!(glob(".spec.ip*", ".spec.ipFamilies[0]"));
        assert!(!glob("Service/*", "ConfigMap/web"));
        let md = "x\n```fidelity-known\n# c\nService/* .spec.ipFamilies* version newer API\n```\n";
        let known = known_differences(md).unwrap();
        assert_eq!(known.len(), 1);
        assert_eq!(known[0].reason, "newer API");
        assert!(known[0].version);
        assert!(known_differences("```fidelity-known\nA .b gap\n```\n").is_err());
        assert!(known_differences("```fidelity-known\nA .b maybe why\n```\n").is_err());
    }

    #[test]
    fn a_tally_counts_the_union_of_paths() {
        let mut t = Tally::default();
        t.values(
            "X/a",
            &json!({"a": 1, "b": [1, 2]}),
            &json!({"a": 1, "b": [1], "c": {}}),
        );
        assert_eq!((t.equal, t.compared), (2, 4));
        assert_eq!(t.differences[0].path, ".b[1]");
        let mut named = BTreeMap::new();
        flatten(
            &json!({"v": [{"name": "x", "a": 1}]}),
            String::new(),
            &mut named,
        );
        assert_eq!(
            named.keys().collect::<Vec<_>>(),
            [".v[name=x].a", ".v[name=x].name"]
        );
        assert_eq!(t.differences[1].real, "<absent>");
    }
}
