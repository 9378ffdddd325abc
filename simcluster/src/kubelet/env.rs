//! A container's environment as Kubernetes builds it, and the rewriting that stands in for
//! the pod's network and mount namespaces.
//!
//! Environment: the service variables of the namespace (`NAME_SERVICE_HOST`, `NAME_PORT_...`),
//! `envFrom`, then `env` in order, with `valueFrom` (secretKeyRef, configMapKeyRef, fieldRef,
//! resourceFieldRef) and `$(VAR)` expansion against the variables defined before.
//!
//! Rewriting ([`Rewriter`]): a process of a pod runs on the host, so three things a program
//! in a real pod would find through its namespaces are rewritten in its environment values,
//! command and arguments, wherever they stand as a whole word:
//! - a Service DNS name (`svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`; the bare
//!   name only for the pod's own namespace) becomes the Service's clusterIP;
//! - `localhost` and `127.0.0.1` become the pod's IP (the pod's own loopback);
//! - a volume's mount path (`/var/lib/postgresql/data/...`) becomes its host directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;

use crate::store::Store;

/// Text substitutions applied to a pod's environment values, commands and arguments.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rewriter {
    /// Host names to IPs, longest first.
    names: Vec<(String, String)>,
    /// Container paths to host paths, longest first.
    paths: Vec<(String, String)>,
}

fn name_before_ok(s: &str, i: usize) -> bool {
    if i == 0 {
        return true;
    }
    let prev = s[..i].chars().next_back().unwrap_or(' ');
    prev.is_whitespace()
        || matches!(prev, '=' | '@' | '"' | '\'' | '(' | ',' | '/' | '[')
            && (prev != '/' || s[..i].ends_with("//"))
}

fn name_after_ok(s: &str, j: usize) -> bool {
    // `redis://...`: a URL scheme, not a host.
    if s[j..].starts_with("://") {
        return false;
    }
    match s[j..].chars().next() {
        None => true,
        Some(c) => c.is_whitespace() || matches!(c, ':' | '/' | '"' | '\'' | ';' | ',' | ')' | ']'),
    }
}

fn path_before_ok(s: &str, i: usize) -> bool {
    if i == 0 {
        return true;
    }
    let prev = s[..i].chars().next_back().unwrap_or(' ');
    prev.is_whitespace() || matches!(prev, '=' | '"' | '\'' | ':' | '(')
}

fn path_after_ok(s: &str, j: usize) -> bool {
    match s[j..].chars().next() {
        None => true,
        Some(c) => c.is_whitespace() || matches!(c, '/' | '"' | '\'' | ';' | ':' | ')'),
    }
}

impl Rewriter {
    /// The rewriter for one pod.
    pub(crate) fn for_pod(
        store: &Store,
        ns: &str,
        pod_ip: &str,
        mounts: &[(String, PathBuf)],
    ) -> Rewriter {
        let mut names = vec![
            ("localhost".to_owned(), pod_ip.to_owned()),
            ("127.0.0.1".to_owned(), pod_ip.to_owned()),
        ];
        let (services, _) = store.list("/services", None);
        for s in &services {
            let Some(ip) = s
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            else {
                continue;
            };
            let name = s
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let sns = s
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            for n in [
                format!("{name}.{sns}.svc.cluster.local"),
                format!("{name}.{sns}.svc"),
                format!("{name}.{sns}"),
            ] {
                names.push((n, ip.to_owned()));
            }
            if sns == ns {
                names.push((name.to_owned(), ip.to_owned()));
            }
        }
        names.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
        let mut paths: Vec<(String, String)> = mounts
            .iter()
            .map(|(c, h)| {
                (
                    c.trim_end_matches('/').to_owned(),
                    h.to_string_lossy().into_owned(),
                )
            })
            .filter(|(c, _)| c.len() > 1)
            .collect();
        paths.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        Rewriter { names, paths }
    }

    /// Rewrite one string.
    pub(crate) fn apply(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        'outer: while i < s.len() {
            let rest = &s[i..];
            if rest.starts_with('/') && path_before_ok(s, i) {
                for (c, h) in &self.paths {
                    if rest.starts_with(c.as_str()) && path_after_ok(s, i + c.len()) {
                        out.push_str(h);
                        i += c.len();
                        continue 'outer;
                    }
                }
            }
            if name_before_ok(s, i) {
                for (n, ip) in &self.names {
                    if rest.starts_with(n.as_str()) && name_after_ok(s, i + n.len()) {
                        out.push_str(ip);
                        i += n.len();
                        continue 'outer;
                    }
                }
            }
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
        out
    }

    /// The mounts: container path and host path, longest container path first.
    pub(crate) fn mounts(&self) -> &[(String, String)] {
        &self.paths
    }

    /// The host path of a container path, if a mount covers it.
    pub(crate) fn host_path(&self, container_path: &str) -> Option<PathBuf> {
        self.paths.iter().find_map(|(c, h)| {
            let rest = container_path.strip_prefix(c.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| PathBuf::from(format!("{h}{rest}")))
        })
    }
}

/// Expand `$(VAR)` references; `$$(VAR)` escapes, unknown references stay as written.
pub(crate) fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(j) => {
                    let name = &inner[..j];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[j + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn svc_var_name(name: &str) -> String {
    name.to_uppercase().replace('-', "_")
}

/// The `*_SERVICE_HOST`/`*_PORT` variables of the Services in `ns`, and those of the API
/// server's `default/kubernetes` Service, which a kubelet gives every pod (a Service named
/// `kubernetes` in the pod's own namespace takes its place, as in the kubelet's
/// `getServiceEnvVarMap`). In-cluster clients find the API server through
/// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`.
pub(crate) fn service_vars(store: &Store, ns: &str) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    let (mut services, _) = store.list("/services", Some(ns));
    let own_kubernetes = services
        .iter()
        .any(|s| s.pointer("/metadata/name").and_then(Value::as_str) == Some("kubernetes"));
    if !own_kubernetes && let Some(api) = store.get("/services", "default", "kubernetes") {
        services.push(api);
    }
    for s in &services {
        let Some(ip) = s
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        else {
            continue;
        };
        let ports: Vec<Value> = s
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let n = svc_var_name(
            s.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        );
        let port_of = |p: &Value| p.get("port").and_then(Value::as_u64).unwrap_or(0);
        let proto_of = |p: &Value| {
            p.get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_owned()
        };
        vars.push((format!("{n}_SERVICE_HOST"), ip.to_owned()));
        vars.push((format!("{n}_SERVICE_PORT"), port_of(first).to_string()));
        vars.push((
            format!("{n}_PORT"),
            format!(
                "{}://{ip}:{}",
                proto_of(first).to_lowercase(),
                port_of(first)
            ),
        ));
        for p in &ports {
            let port = port_of(p);
            let proto = proto_of(p);
            if let Some(pn) = p.get("name").and_then(Value::as_str) {
                vars.push((
                    format!("{n}_SERVICE_PORT_{}", svc_var_name(pn)),
                    port.to_string(),
                ));
            }
            let base = format!("{n}_PORT_{port}_{proto}");
            vars.push((
                base.clone(),
                format!("{}://{ip}:{port}", proto.to_lowercase()),
            ));
            vars.push((format!("{base}_PROTO"), proto.to_lowercase()));
            vars.push((format!("{base}_PORT"), port.to_string()));
            vars.push((format!("{base}_ADDR"), ip.to_owned()));
        }
    }
    vars
}

fn key_of(store: &Store, ns: &str, r: &Value, secret: bool) -> Result<Option<String>, String> {
    let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
    let key = r.get("key").and_then(Value::as_str).unwrap_or_default();
    let optional = r.get("optional").and_then(Value::as_bool).unwrap_or(false);
    let (res, what) = if secret {
        ("/secrets", "secret")
    } else {
        ("/configmaps", "configmap")
    };
    let Some(obj) = store.get(res, ns, name) else {
        return if optional {
            Ok(None)
        } else {
            Err(format!("{what} \"{name}\" not found"))
        };
    };
    let value = if secret {
        obj.pointer(&format!(
            "/data/{}",
            key.replace('~', "~0").replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
    } else {
        obj.get("data")
            .and_then(|d| d.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match value {
        Some(v) => Ok(Some(v)),
        None if optional => Ok(None),
        None => Err(format!(
            "couldn't find key {key} in {}: {ns}/{name}",
            if secret { "Secret" } else { "ConfigMap" }
        )),
    }
}

fn field_ref(pod: &Value, path: &str) -> String {
    let label = |prefix: &str, what: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .and_then(|k| {
                pod.pointer(&format!("/metadata/{what}"))?
                    .get(k)?
                    .as_str()
                    .map(str::to_owned)
            })
    };
    if let Some(v) = label("metadata.labels['", "labels")
        .or_else(|| label("metadata.annotations['", "annotations"))
    {
        return v;
    }
    let ptr = match path {
        "metadata.name" => "/metadata/name",
        "metadata.namespace" => "/metadata/namespace",
        "metadata.uid" => "/metadata/uid",
        "spec.nodeName" => "/spec/nodeName",
        "spec.serviceAccountName" => "/spec/serviceAccountName",
        "status.podIP" => "/status/podIP",
        "status.hostIP" => "/status/hostIP",
        _ => return String::new(),
    };
    pod.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The environment of `container` in `pod` (before rewriting), after `base`.
///
/// # Errors
/// A referenced Secret, ConfigMap or key that is missing and not optional, worded as the
/// kubelet's `CreateContainerConfigError` message.
pub(crate) fn container_env(
    store: &Store,
    pod: &Value,
    container: &Value,
    base: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut env = Env::default();
    for (k, v) in base.into_iter().chain(service_vars(store, ns)) {
        env.set(k, v);
    }
    for from in container
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        env_from(store, ns, from, &mut env)?;
    }
    for e in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = e.get("name").and_then(Value::as_str) else {
            continue;
        };
        if let Some(v) = env_value(store, pod, e, &env.vars)? {
            env.set(name.to_owned(), v);
        }
    }
    let Env { order, vars } = env;
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars.get(&k).cloned().unwrap_or_default();
            (k, v)
        })
        .collect())
}

/// Variables in the order first set, each with its last value.
#[derive(Default)]
struct Env {
    order: Vec<String>,
    vars: BTreeMap<String, String>,
}

impl Env {
    /// Sets `k` (keeping its first position when set before).
    fn set(&mut self, k: String, v: String) {
        if !self.vars.contains_key(&k) {
            self.order.push(k.clone());
        }
        self.vars.insert(k, v);
    }
}

/// One `envFrom` entry: every key of its ConfigMap or Secret (decoded), with the prefix.
fn env_from(store: &Store, ns: &str, from: &Value, env: &mut Env) -> Result<(), String> {
    let prefix = from
        .get("prefix")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for (field, res, secret) in [
        ("configMapRef", "/configmaps", false),
        ("secretRef", "/secrets", true),
    ] {
        let Some(r) = from.get(field) else { continue };
        let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
        let optional = r.get("optional").and_then(Value::as_bool).unwrap_or(false);
        let Some(obj) = store.get(res, ns, name) else {
            if optional {
                continue;
            }
            return Err(format!(
                "{} \"{name}\" not found",
                if secret { "secret" } else { "configmap" }
            ));
        };
        for (k, v) in obj
            .get("data")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let v = v.as_str().unwrap_or_default();
            let v = if secret {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            } else {
                v.to_owned()
            };
            env.set(format!("{prefix}{k}"), v);
        }
    }
    Ok(())
}

/// One `env` entry's value: `value` with `$(VAR)` expanded from `vars`, or from a Secret or
/// ConfigMap key, a pod field, or a resource field; `None` when it names no known source.
fn env_value(
    store: &Store,
    pod: &Value,
    e: &Value,
    vars: &BTreeMap<String, String>,
) -> Result<Option<String>, String> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(v) = e.get("value").and_then(Value::as_str) {
        return Ok(Some(expand(v, vars)));
    }
    let Some(from) = e.get("valueFrom") else {
        return Ok(Some(String::new()));
    };
    Ok(if let Some(r) = from.get("secretKeyRef") {
        key_of(store, ns, r, true)?
    } else if let Some(r) = from.get("configMapKeyRef") {
        key_of(store, ns, r, false)?
    } else if let Some(r) = from.get("fieldRef") {
        Some(field_ref(
            pod,
            r.get("fieldPath")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        ))
    } else if from.get("resourceFieldRef").is_some() {
        // No limits are enforced; report the node's capacity, as for an unset limit.
        Some("0".to_owned())
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewriter() -> Rewriter {
        Rewriter {
            names: vec![
                (
                    "postgresql-service.titanium-prod.svc.cluster.local".into(),
                    "127.1.0.3".into(),
                ),
                ("postgresql-service".into(), "127.1.0.3".into()),
                ("localhost".into(), "127.2.0.9".into()),
                ("redis".into(), "127.1.0.4".into()),
            ],
            paths: vec![
                ("/backup".into(), "/state/vol/b".into()),
                ("/data".into(), "/state/vol/d".into()),
            ],
        }
    }

    #[test]
    fn rewrites_whole_words_only() {
        let r = rewriter();
        for (input, want) in [
            ("postgresql-service", "127.1.0.3"),
            (
                "http://postgresql-service:5432/x",
                "http://127.1.0.3:5432/x",
            ),
            (
                "postgres://u:p@postgresql-service.titanium-prod.svc.cluster.local/db",
                "postgres://u:p@127.1.0.3/db",
            ),
            ("redis://redis:6379", "redis://127.1.0.4:6379"),
            (
                "pg_dump -h postgresql-service -f \"/backup/.x.partial\"",
                "pg_dump -h 127.1.0.3 -f \"/state/vol/b/.x.partial\"",
            ),
            ("/etc/redis/redis.conf", "/etc/redis/redis.conf"),
            ("my-postgresql-service", "my-postgresql-service"),
            ("/database", "/database"),
            ("/data", "/state/vol/d"),
            ("localhost:8000", "127.2.0.9:8000"),
        ] {
            assert_eq!(r.apply(input), want, "{input}");
        }
        assert_eq!(
            r.host_path("/data/x/y"),
            Some(PathBuf::from("/state/vol/d/x/y"))
        );
        assert_eq!(r.host_path("/datax"), None);
    }

    #[test]
    fn expands_references_like_kubernetes() {
        let vars: BTreeMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "1-$(B)-$(A)-$");
    }
}
