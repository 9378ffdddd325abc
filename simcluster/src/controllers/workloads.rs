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
pub(crate) mod statefulset;
pub(crate) mod volumes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
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

/// A short, stable, DNS-safe hash of a value (like Kubernetes' `pod-template-hash`).
pub(crate) fn short_hash(v: &Value) -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let digest = Sha256::digest(v.to_string().as_bytes());
    digest[..10]
        .iter()
        .map(|b| CHARS[*b as usize % CHARS.len()] as char)
        .collect()
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
    if let Err(e) = api::delete(store, &rt, ns, name, &opts) {
        if e.code != 404 {
            tracing::warn!(kind = rt.kind, namespace = ns, name, error = %e, "controller delete failed");
        }
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
            if spec_changed {
                if let Some(g) = o.pointer("/metadata/generation").and_then(Value::as_i64) {
                    o["metadata"]["generation"] = serde_json::json!(g + 1);
                }
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
    ) -> Result<Workers, crate::kubelet::KubeletError> {
        let cfg = crate::kubelet::KubeletConfig::new(state_dir)?;
        let kubelet = crate::kubelet::Kubelet::start(store.clone(), cfg, network)?;
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
