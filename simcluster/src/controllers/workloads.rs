//! Workload controllers: the control loops that turn Deployments, StatefulSets, Jobs,
//! CronJobs, PersistentVolumeClaims and Services into ReplicaSets, Pods, volumes, Endpoints
//! and loopback proxies, as kube-controller-manager and kube-proxy do on a real cluster.
//!
//! One task wakes on store events (debounced) and on a one-second tick, then runs every
//! controller once over the whole store. Each controller is level-triggered: it compares what
//! exists with what should exist and closes the gap, so a missed event only delays work.
//! Controllers write through `api` (creates, deletes) so their objects are validated,
//! defaulted and watched like a client's; status writes go straight to the store.

pub(crate) mod deployment;
pub(crate) mod events;
pub(crate) mod jobs;
pub(crate) mod replicaset;
pub(crate) mod services;
pub(crate) mod snapshots;
pub(crate) mod statefulset;
pub(crate) mod volumes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, DeleteOptions, WriteOptions};
use crate::status::ApiError;
use crate::store::{Mutation, Store};

/// What the workload controllers need to know about the cluster.
#[derive(Debug, Clone)]
pub(crate) struct WorkloadsConfig {
    /// The cluster's state directory; provisioned volumes live under `volumes/`.
    pub(crate) state_dir: PathBuf,
    /// Fixed host ports for NodePort and LoadBalancer services.
    pub(crate) port_mappings: Vec<crate::config::PortMapping>,
}

/// The running workload controllers.
pub(crate) struct Workloads {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    proxies: Arc<services::Proxies>,
}

impl Workloads {
    /// Create the default StorageClasses and start the control loops.
    pub(crate) fn start(store: Arc<Store>, cfg: WorkloadsConfig) -> Workloads {
        let stop = CancellationToken::new();
        let proxies = Arc::new(services::Proxies::new(cfg.port_mappings.clone()));
        volumes::default_storage_classes(&store);
        let ctx = Ctx {
            store,
            cfg,
            proxies: proxies.clone(),
        };
        let task = tokio::spawn(run(ctx, stop.clone()));
        Workloads {
            stop,
            task: Some(task),
            proxies,
        }
    }

    /// Stop the control loops and close every service proxy.
    pub(crate) async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            // A panicked loop has nothing left to stop.
            let _ = t.await;
        }
        self.proxies.close_all();
    }
}

impl Drop for Workloads {
    fn drop(&mut self) {
        self.stop.cancel();
        self.proxies.close_all();
    }
}

/// What every controller gets.
pub(crate) struct Ctx {
    pub(crate) store: Arc<Store>,
    pub(crate) cfg: WorkloadsConfig,
    pub(crate) proxies: Arc<services::Proxies>,
}

async fn run(ctx: Ctx, stop: CancellationToken) {
    let mut rx = ctx.store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            r = rx.recv() => {
                match r {
                    Err(RecvError::Closed) => return,
                    // Events never change what a controller should do.
                    Ok(ev) if ev.key == "/events" => continue,
                    _ => {}
                }
                // Let a burst of changes (a `kubectl apply` of a directory) land first.
                tokio::time::sleep(Duration::from_millis(5)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
        }
        reconcile(&ctx);
    }
}

/// One pass of every workload controller.
pub(crate) fn reconcile(ctx: &Ctx) {
    snapshots::reconcile(ctx);
    volumes::reconcile(ctx);
    deployment::reconcile(ctx);
    replicaset::reconcile(ctx);
    statefulset::reconcile(ctx);
    jobs::reconcile(ctx);
    services::reconcile(ctx);
}

/// A string field of `metadata`.
pub(crate) fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Whether the object is being deleted.
pub(crate) fn deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

/// Whether the object `obj` refers to at `reference` (a JSON pointer to an object reference
/// with `namespace`, `name` and optionally `uid`, such as a volume's `/spec/claimRef`) is no
/// longer among `candidates`; `None` when the reference names no namespace (it is unbound).
pub(crate) fn referent_gone(
    obj: &Value,
    reference: &str,
    candidates: &[Arc<Value>],
) -> Option<bool> {
    let field = |f: &str| {
        obj.pointer(&format!("{reference}/{f}"))
            .and_then(Value::as_str)
    };
    let ns = field("namespace")?;
    let name = field("name").unwrap_or_default();
    let uid = field("uid").unwrap_or_default();
    Some(!candidates.iter().any(|c| {
        meta(c, "namespace") == ns
            && meta(c, "name") == name
            && (uid.is_empty() || meta(c, "uid") == uid)
    }))
}

/// Whether `obj` has a controller owner reference to `owner`.
pub(crate) fn owned_by(obj: &Value, owner: &Value) -> bool {
    let uid = meta(owner, "uid");
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

/// A controller owner reference to `owner`.
pub(crate) fn owner_ref(owner: &Value) -> Value {
    serde_json::json!({
        "apiVersion": owner.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": owner.get("kind").cloned().unwrap_or(Value::Null),
        "name": meta(owner, "name"),
        "uid": meta(owner, "uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The alphabet of `k8s.io/apimachinery/pkg/util/rand` (no vowels, no `0`, `1`, `3`).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A template hash in the real `pod-template-hash` format: the controller's `ComputeHash`
/// (FNV-32a) written as a decimal number, each digit mapped through `rand.SafeEncodeString`,
/// so it is 1 to 10 characters from `4-9bcdf`, as a real controller's are.
///
/// The hash is taken over a canonical serialization (object keys sorted at every level): the
/// store keeps keys in insertion order, which differs between a create and an apply of the
/// same template, and a hash over that order gave an identical re-apply a new ReplicaSet. The
/// value differs from a real controller's, which hashes Go's dump of the typed struct.
pub(crate) fn short_hash(v: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(v, &mut canonical);
    let hash = fnv32a(canonical.as_bytes());
    safe_encode(&hash.to_string())
}

/// FNV-1a, 32 bits, as Go's `hash/fnv.New32a`.
fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// `rand.SafeEncodeString`: every byte becomes `alphabet[byte % len]`.
pub(crate) fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// JSON with the keys of every object sorted, whatever order the map holds them in.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Whether a pod is Ready.
pub(crate) fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

/// The pod's phase.
pub(crate) fn pod_phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
}

/// Create an object through the API, logging failures other than "already exists".
pub(crate) fn create(store: &Store, key: &str, ns: &str, obj: Value) -> Option<Value> {
    let rt = store.registry().by_key(key).cloned()?;
    match api::create(store, &rt, ns, obj, &WriteOptions::default()) {
        Ok(v) => Some(v),
        Err(e) => {
            if e.code != 409 {
                tracing::warn!(kind = rt.kind, namespace = ns, error = %e, "controller create failed");
            }
            None
        }
    }
}

/// Delete an object through the API (background propagation).
pub(crate) fn delete(store: &Store, key: &str, ns: &str, name: &str) {
    let Some(rt) = store.registry().by_key(key).cloned() else {
        return;
    };
    let opts = DeleteOptions {
        propagation: Some(api::Propagation::Background),
        ..DeleteOptions::default()
    };
    if let Err(e) = api::delete(store, &rt, ns, name, &opts)
        && e.code != 404
    {
        tracing::warn!(kind = rt.kind, namespace = ns, name, error = %e, "controller delete failed");
    }
}

/// Replace the `status` of an object (uid-checked), as a status subresource write would.
pub(crate) fn write_status(store: &Store, key: &str, obj: &Value, status: Value) {
    let uid = meta(obj, "uid").to_owned();
    let res: Result<_, ApiError> = store.mutate(
        key,
        meta(obj, "namespace"),
        meta(obj, "name"),
        |_, cur| match cur {
            Some(c) if meta(c, "uid") == uid && c.get("status") != Some(&status) => {
                let mut o = c.as_ref().clone();
                o["status"] = status;
                Ok(Mutation::Put(o))
            }
            _ => Ok(Mutation::Unchanged),
        },
    );
    if let Err(e) = res {
        tracing::warn!(key, error = %e, "status write failed");
    }
}

/// Change an object in place (uid-checked) with `f`; used for scale and spec fields a
/// controller owns (a ReplicaSet's replicas, a PVC's volumeName).
pub(crate) fn modify(store: &Store, key: &str, obj: &Value, f: impl FnOnce(&mut Value)) {
    let uid = meta(obj, "uid").to_owned();
    let ns = meta(obj, "namespace").to_owned();
    let name = meta(obj, "name").to_owned();
    let res = store.mutate(key, &ns, &name, |_, cur| match cur {
        Some(c) if meta(c, "uid") == uid => {
            let mut o = c.as_ref().clone();
            let before = o.clone();
            f(&mut o);
            if o == before {
                return Ok(Mutation::Unchanged);
            }
            let spec_changed = o.get("spec") != before.get("spec");
            if spec_changed
                && let Some(g) = o.pointer("/metadata/generation").and_then(Value::as_i64)
            {
                o["metadata"]["generation"] = serde_json::json!(g + 1);
            }
            Ok(Mutation::Put(o))
        }
        _ => Ok(Mutation::Unchanged),
    });
    if let Err(e) = res {
        tracing::warn!(key, name, error = %e, "controller update failed");
    }
}

/// The current time in the API's format.
pub(crate) fn now() -> String {
    api::now()
}

/// The simulated node: the workload controllers, the service proxy and the kubelet, started
/// and stopped together with a cluster.
pub(crate) struct Workers {
    kubelet: crate::kubelet::Kubelet,
    workloads: Workloads,
}

impl Workers {
    /// Start everything that runs workloads on `store`, with the fixed host ports of a kind
    /// configuration.
    ///
    /// # Errors
    /// The image map is invalid, or the kubelet cannot prepare its directories or reaper.
    pub(crate) fn start(
        store: Arc<Store>,
        state_dir: &std::path::Path,
        kind: Option<&crate::config::KindConfig>,
        network: crate::kubelet::NetworkLease,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Workers, crate::kubelet::KubeletError> {
        let cfg = crate::kubelet::KubeletConfig::new(state_dir)?;
        let kubelet = crate::kubelet::Kubelet::start(store.clone(), cfg, network, metrics)?;
        let port_mappings = kind
            .map(|k| {
                k.nodes
                    .iter()
                    .flat_map(|n| n.extra_port_mappings.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        let workloads = Workloads::start(
            store,
            WorkloadsConfig {
                state_dir: state_dir.to_owned(),
                port_mappings,
            },
        );
        Ok(Workers { kubelet, workloads })
    }

    /// Serve `pods/exec`, `pods/log` and `pods/portforward` through `map`.
    pub(crate) fn register(&self, map: &crate::server::SubresourceMap) {
        let mut m = map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, sub, handler) in self.kubelet.handlers() {
            m.insert((key.to_owned(), sub.to_owned()), handler);
        }
    }

    /// Stop the controllers, then every pod (with a short grace period) and process.
    pub(crate) async fn shutdown(&mut self) {
        self.workloads.shutdown().await;
        self.kubelet.shutdown(Duration::from_secs(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn template_hash_ignores_key_order() {
        let a: Value = serde_json::from_str(
            r#"{"metadata":{"labels":{"app":"x"}},"spec":{"b":1,"a":[{"y":2,"x":1}]}}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"spec":{"a":[{"x":1,"y":2}],"b":1},"metadata":{"labels":{"app":"x"}}}"#,
        )
        .unwrap();
        assert_eq!(short_hash(&a), short_hash(&b));
        assert_ne!(short_hash(&a), short_hash(&json!({"spec": {"b": 2}})));
    }

    #[test]
    fn template_hash_has_the_real_format() {
        // A real controller writes the decimal FNV-32a through SafeEncodeString, so only the
        // images of the digits appear: `76cb586dfd`, `6b9bddc7`, `fbbb66f97` (kube 1.20).
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        for v in [
            json!({}),
            json!({"spec": {"containers": [{"name": "c"}]}}),
            json!([1, 2]),
        ] {
            let h = short_hash(&v);
            assert!((1..=10).contains(&h.len()), "{h}");
            assert!(h.chars().all(|c| "456789bcdf".contains(c)), "{h}");
        }
    }
}
