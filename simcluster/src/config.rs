//! Configuration of a simulated cluster: [`SimConfig`], access deny rules, and kind's cluster
//! configuration format (`kind.x-k8s.io/v1alpha4`), read so one file describes a cluster for
//! both kind and the simulator.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

/// How a simulated cluster is started.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Cluster name; also the kubeconfig's cluster, user and context name.
    pub name: String,
    /// Directory for the cluster's state (created, 0700).
    pub state_dir: PathBuf,
    /// Where the kubeconfig is written (0600).
    pub kubeconfig: PathBuf,
    /// Port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// A kind cluster configuration file describing nodes and port mappings.
    pub kind_config: Option<PathBuf>,
    /// Permissions the cluster refuses (and SelfSubjectAccessReviews deny).
    pub deny: Vec<AccessRule>,
}

impl SimConfig {
    /// A configuration with a free port, one control-plane node and nothing denied.
    pub fn new(
        name: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        kubeconfig: impl Into<PathBuf>,
    ) -> Self {
        SimConfig {
            name: name.into(),
            state_dir: state_dir.into(),
            kubeconfig: kubeconfig.into(),
            port: None,
            kind_config: None,
            deny: Vec::new(),
        }
    }
}

/// A denied permission: `verb:resource[:namespace]`, where `*` matches anything and the
/// resource may be qualified by its group (`statefulsets.apps`) or name a subresource
/// (`pods/exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    /// Verb (`create`, `get`, `list`, ... or `*`).
    pub(crate) verb: String,
    /// Resource (`statefulsets`, `statefulsets.apps`, `pods/exec` or `*`).
    pub(crate) resource: String,
    /// Namespace the rule applies to; `None` for every namespace and the cluster scope.
    pub(crate) namespace: Option<String>,
}

/// A deny rule that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid access rule {rule:?}: expected verb:resource[:namespace], for example create:statefulsets:titanium-prod"
)]
pub struct AccessRuleError {
    /// The text given.
    pub(crate) rule: String,
}

impl FromStr for AccessRule {
    type Err = AccessRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || AccessRuleError { rule: s.to_owned() };
        let (verb, resource, namespace) = match parts.as_slice() {
            [v, r] => (*v, *r, None),
            [v, r, n] => (*v, *r, Some((*n).to_owned())),
            _ => return Err(bad()),
        };
        if verb.is_empty() || resource.is_empty() || namespace.as_deref() == Some("") {
            return Err(bad());
        }
        Ok(AccessRule {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            namespace,
        })
    }
}

impl fmt::Display for AccessRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.verb, self.resource)?;
        if let Some(n) = &self.namespace {
            write!(f, ":{n}")?;
        }
        Ok(())
    }
}

impl AccessRule {
    /// Whether the rule denies `verb` on `resource` (a plural, maybe `plural/sub`) of `group`
    /// in `namespace` ("" for cluster scope).
    pub(crate) fn matches(&self, verb: &str, group: &str, resource: &str, namespace: &str) -> bool {
        let verb_ok = self.verb == "*" || self.verb == verb;
        let (plural, sub) = match resource.split_once('/') {
            Some((p, s)) => (p, Some(s)),
            None => (resource, None),
        };
        let (rule_res, rule_sub) = match self.resource.split_once('/') {
            Some((p, s)) => (p, Some(s)),
            None => (self.resource.as_str(), None),
        };
        let qualified = if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        };
        let res_ok = rule_res == "*" || rule_res == plural || rule_res == qualified;
        let sub_ok = rule_sub == sub || rule_sub == Some("*");
        let ns_ok = self
            .namespace
            .as_ref()
            .is_none_or(|n| n == "*" || n == namespace);
        verb_ok && res_ok && sub_ok && ns_ok
    }
}

/// One node of a kind cluster configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KindNode {
    /// `control-plane` or `worker`.
    pub role: String,
    /// Node image, for example `kindest/node:v1.29.7@sha256:...`.
    #[serde(default)]
    pub image: Option<String>,
    /// Host ports forwarded to the node.
    #[serde(default)]
    pub extra_port_mappings: Vec<PortMapping>,
    /// Node labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A kind `extraPortMappings` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PortMapping {
    /// Port inside the node.
    pub container_port: u16,
    /// Port on the host.
    pub host_port: u16,
    /// Host address; kind's default is 0.0.0.0, the simulator only uses loopback.
    #[serde(default)]
    pub listen_address: Option<String>,
    /// `TCP`, `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// A kind cluster configuration (`kind: Cluster`, `apiVersion: kind.x-k8s.io/v1alpha4`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KindConfig {
    /// Must be `Cluster`.
    pub kind: String,
    /// Must be `kind.x-k8s.io/v1alpha4`.
    pub api_version: String,
    /// Cluster name, if the file sets one.
    #[serde(default)]
    pub name: Option<String>,
    /// Nodes; kind's default is one control-plane node.
    #[serde(default)]
    pub nodes: Vec<KindNode>,
}

/// A kind configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KindConfigError {
    /// The file could not be read.
    #[error("reading kind config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for the format.
    #[error("parsing kind config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The file parsed but describes something the format does not allow.
    #[error("invalid kind config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl KindConfig {
    /// Read and check a kind configuration file.
    ///
    /// # Errors
    /// Unreadable file, invalid YAML, wrong `kind`/`apiVersion`, unknown node roles, no
    /// control-plane node, or duplicate host ports.
    pub(crate) fn load(path: &Path) -> Result<Self, KindConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| KindConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and check configuration text; `path` is only used in errors.
    ///
    /// # Errors
    /// As [`KindConfig::load`].
    pub(crate) fn parse(text: &str, path: &Path) -> Result<Self, KindConfigError> {
        let invalid = |message: String| KindConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut cfg: KindConfig =
            serde_saphyr::from_str(text).map_err(|e| KindConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if cfg.kind != "Cluster" {
            return Err(invalid(format!(
                "kind is {:?}, expected \"Cluster\"",
                cfg.kind
            )));
        }
        if cfg.api_version != "kind.x-k8s.io/v1alpha4" {
            return Err(invalid(format!(
                "apiVersion is {:?}, expected \"kind.x-k8s.io/v1alpha4\"",
                cfg.api_version
            )));
        }
        if cfg.nodes.is_empty() {
            cfg.nodes.push(KindNode {
                role: "control-plane".into(),
                image: None,
                extra_port_mappings: Vec::new(),
                labels: BTreeMap::new(),
            });
        }
        let mut host_ports = std::collections::HashSet::new();
        for (i, n) in cfg.nodes.iter().enumerate() {
            if n.role != "control-plane" && n.role != "worker" {
                return Err(invalid(format!(
                    "nodes[{i}].role is {:?}, expected \"control-plane\" or \"worker\"",
                    n.role
                )));
            }
            for m in &n.extra_port_mappings {
                let key = (
                    m.listen_address.clone().unwrap_or_default(),
                    m.host_port,
                    m.protocol.clone().unwrap_or_else(|| "TCP".into()),
                );
                if m.host_port != 0 && !host_ports.insert(key) {
                    return Err(invalid(format!(
                        "nodes[{i}]: host port {} is mapped twice",
                        m.host_port
                    )));
                }
            }
        }
        if !cfg.nodes.iter().any(|n| n.role == "control-plane") {
            return Err(invalid("no node has role control-plane".into()));
        }
        Ok(cfg)
    }

    /// Node names as kind gives them: `NAME-control-plane`, `NAME-worker`, `NAME-worker2`, ...
    pub(crate) fn node_names(&self, cluster: &str) -> Vec<(String, &KindNode)> {
        let (mut cp, mut w) = (0, 0);
        self.nodes
            .iter()
            .map(|n| {
                let (count, role) = if n.role == "control-plane" {
                    (&mut cp, "control-plane")
                } else {
                    (&mut w, "worker")
                };
                *count += 1;
                let suffix = if *count == 1 {
                    String::new()
                } else {
                    count.to_string()
                };
                (format!("{cluster}-{role}{suffix}"), n)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules_parse_and_match() {
        let r: AccessRule = "create:statefulsets:titanium-prod".parse().expect("parses");
        assert!(r.matches("create", "apps", "statefulsets", "titanium-prod"));
        assert!(!r.matches("create", "apps", "statefulsets", "other"));
        assert!(!r.matches("get", "apps", "statefulsets", "titanium-prod"));
        let r: AccessRule = "*:secrets".parse().expect("parses");
        assert!(r.matches("get", "", "secrets", "x"));
        let r: AccessRule = "create:pods/exec".parse().expect("parses");
        assert!(r.matches("create", "", "pods/exec", "x"));
        assert!(!r.matches("create", "", "pods", "x"));
        let r: AccessRule = "create:statefulsets.apps".parse().expect("parses");
        assert!(r.matches("create", "apps", "statefulsets", ""));
        for bad in ["create", "create:", ":pods", "a:b:c:d", "a:b:"] {
            assert!(bad.parse::<AccessRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kind_configs() {
        let p = Path::new("x.yaml");
        let cfg = KindConfig::parse(
            "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: control-plane\n  extraPortMappings:\n  - containerPort: 80\n    hostPort: 8080\n- role: worker\n- role: worker\n",
            p,
        )
        .expect("valid");
        let names: Vec<String> = cfg.node_names("t").into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["t-control-plane", "t-worker", "t-worker2"]);
        assert_eq!(cfg.nodes[0].extra_port_mappings[0].host_port, 8080);
        let err =
            KindConfig::parse("kind: Cluster\napiVersion: v1\n", p).expect_err("bad apiVersion");
        assert!(err.to_string().contains("apiVersion"));
        let err = KindConfig::parse(
            "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: boss\n",
            p,
        )
        .expect_err("bad role");
        assert!(err.to_string().contains("nodes[0].role"));
        let err = KindConfig::parse("kind: [", p).expect_err("bad yaml");
        assert!(matches!(err, KindConfigError::Parse { .. }));
    }

    #[test]
    fn repository_kind_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kind-config");
        for (file, nodes) in [("single-node.yaml", 1), ("prod-3-node.yaml", 3)] {
            let cfg = KindConfig::load(&dir.join(file)).expect(file);
            assert_eq!(cfg.nodes.len(), nodes, "{file}");
        }
    }
}
