//! Label and field selectors, parsed from query strings as the real API server parses them.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector {
    reqs: Vec<Req>,
}

/// A selector that could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unable to parse requirement: {message}")]
pub(crate) struct SelectorError {
    /// What was wrong.
    pub message: String,
}

fn err(message: String) -> SelectorError {
    SelectorError { message }
}

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(k: &str) -> Result<String, SelectorError> {
    let k = k.trim();
    let valid = !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(k.to_owned())
    } else {
        Err(err(format!("invalid label key \"{k}\"")))
    }
}

fn check_value(v: &str) -> Result<String, SelectorError> {
    let v = v.trim();
    let valid = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(v.to_owned())
    } else {
        Err(err(format!("invalid label value \"{v}\"")))
    }
}

fn parse_set(rest: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            err(format!(
                "expected a parenthesised set of values, found \"{rest}\""
            ))
        })?;
    inner
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(check_value)
        .collect()
}

impl LabelSelector {
    /// Parse `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    ///
    /// # Errors
    /// A requirement that is not one of the forms above, or an invalid key or value.
    pub(crate) fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(err(format!("empty requirement in \"{s}\"")));
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Req::NotEq(check_key(k)?, check_value(v)?)
            } else if let Some((k, v)) = part.split_once("==") {
                Req::Eq(check_key(k)?, check_value(v)?)
            } else if let Some((k, v)) = part.split_once('=') {
                Req::Eq(check_key(k)?, check_value(v)?)
            } else if let Some(idx) = part.find(" notin ") {
                Req::NotIn(check_key(&part[..idx])?, parse_set(&part[idx + 7..])?)
            } else if let Some(idx) = part.find(" in ") {
                Req::In(check_key(&part[..idx])?, parse_set(&part[idx + 4..])?)
            } else if let Some(k) = part.strip_prefix('!') {
                Req::NotExists(check_key(k)?)
            } else if part.contains(['(', ')', ' ', '<', '>']) {
                return Err(err(format!("\"{part}\" is not a valid requirement")));
            } else {
                Req::Exists(check_key(part)?)
            };
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    /// Build a selector from a `LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub(crate) fn from_object(sel: &Value) -> Self {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Req::Eq(
                    k.clone(),
                    v.as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        for e in sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => reqs.push(Req::In(key, values)),
                Some("NotIn") => reqs.push(Req::NotIn(key, values)),
                Some("Exists") => reqs.push(Req::Exists(key)),
                Some("DoesNotExist") => reqs.push(Req::NotExists(key)),
                _ => {}
            }
        }
        LabelSelector { reqs }
    }

    /// Whether the selector has no requirement.
    pub(crate) fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector: `metadata.name=x,status.phase!=Running`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parse a field selector. Any dotted path into the object is accepted.
    ///
    /// # Errors
    /// A requirement without `=`, `==` or `!=`.
    pub(crate) fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { reqs });
        }
        for part in s.split(',') {
            let part = part.trim();
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(err(format!(
                    "invalid field selector \"{part}\": expected field=value or field!=value"
                )));
            };
            reqs.push((k.trim().to_owned(), eq, v.trim().to_owned()));
        }
        Ok(FieldSelector { reqs })
    }

    /// Whether the object satisfies every requirement. A missing field compares as "".
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(k, eq, v)| {
            let mut cur = Some(obj);
            for seg in k.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            let actual = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *v) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(selector: &str, labels: Value, expected: bool) {
        let obj = json!({"metadata": {"labels": labels}});
        let sel = LabelSelector::parse(selector).expect("parses");
        assert_eq!(sel.matches(&obj), expected, "{selector} on {obj}");
    }

    #[test]
    fn label_selector_forms() {
        check("", json!({}), true);
        check("app=postgresql", json!({"app": "postgresql"}), true);
        check("app==postgresql", json!({"app": "redis"}), false);
        check("app!=redis", json!({"app": "postgresql"}), true);
        check("app!=redis", json!({}), true);
        check(
            "app in (redis, postgresql)",
            json!({"app": "postgresql"}),
            true,
        );
        check("app in (redis)", json!({}), false);
        check("app notin (redis)", json!({}), true);
        check("app,tier=db", json!({"app": "x", "tier": "db"}), true);
        check("!app", json!({"app": "x"}), false);
        check(
            "app.kubernetes.io/name=titanium",
            json!({"app.kubernetes.io/name": "titanium"}),
            true,
        );
    }

    #[test]
    fn label_selector_errors_name_the_problem() {
        for bad in ["app=(x", "a b", "app in x", "=x", "app=a,"] {
            let e = LabelSelector::parse(bad).expect_err(bad);
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn from_object_uses_match_labels_and_expressions() {
        let sel = LabelSelector::from_object(&json!({"matchLabels": {"app": "x"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]}));
        assert!(sel.matches(&json!({"metadata": {"labels": {"app": "x", "tier": "db"}}})));
        assert!(!sel.matches(&json!({"metadata": {"labels": {"app": "x"}}})));
    }

    #[test]
    fn field_selector() {
        let obj =
            json!({"metadata": {"name": "a", "namespace": "n"}, "status": {"phase": "Running"}});
        let f = FieldSelector::parse("metadata.name=a,status.phase!=Failed").expect("parses");
        assert!(f.matches(&obj));
        assert!(
            !FieldSelector::parse("metadata.namespace=m")
                .expect("parses")
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("spec.nodeName=")
                .expect("parses")
                .matches(&obj)
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
