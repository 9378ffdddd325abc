//! One pod's life on the simulated node: scheduling, waiting for claims and config,
//! volumes as host directories, init and regular containers, the status clients read, and
//! graceful deletion (SIGTERM, grace period, SIGKILL, then the object goes).
//!
//! The pod's filesystem view: `<state>/pods/<ns>_<name>_<uid8>/` holds `volumes/<name>/`
//! (configMap, secret and emptyDir volumes), `logs/<container>/<n>.log` (one file per
//! container instance) and `rootfs/` (the working directory and any path the kubelet must
//! place that no volume covers). PersistentVolumeClaims mount their volume's directory
//! under `<state>/volumes/`.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::env::Rewriter;
use crate::controllers::workloads::events::{EventKind, record};
use crate::controllers::workloads::volumes::claim_dir;
use crate::store::{Mutation, Store};

/// What exec, logs and port-forward need to know about a running container.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContainerInfo {
    /// The container's environment, as its process got it.
    pub(crate) env: Vec<(String, String)>,
    /// Its working directory.
    pub(crate) cwd: PathBuf,
    /// The pod's rewriting rules.
    pub(crate) rewriter: Rewriter,
    /// Log files, one per instance, oldest first.
    pub(crate) logs: Vec<PathBuf>,
    /// Whether an instance is running now.
    pub(crate) running: bool,
    /// For PostgreSQL containers: the socket directory and port (`PGHOST`/`PGPORT` of exec).
    pub(crate) pg: Option<(PathBuf, u16)>,
    /// The running instance's process group (its main process's pid), for resource metrics.
    pub(crate) pgid: Option<i32>,
}

/// A pod the kubelet runs.
pub(crate) struct PodRuntime {
    pub(crate) uid: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) dir: PathBuf,
    /// A short directory for sockets (a socket path must stay under 108 bytes).
    pub(crate) run_dir: PathBuf,
    pub(crate) containers: Mutex<BTreeMap<String, ContainerInfo>>,
    /// Bumped whenever a container instance starts or ends (log followers wake on it).
    pub(crate) changed: watch::Sender<u64>,
    /// Cancelled when the pod must stop gracefully.
    pub(crate) stop: CancellationToken,
    /// Cancelled when the pod must stop now.
    pub(crate) kill: CancellationToken,
    grace: Mutex<Duration>,
}

impl PodRuntime {
    pub(crate) fn new(state_dir: &Path, pod: &Value, ip: Ipv4Addr) -> PodRuntime {
        let m = |f: &str| {
            pod.pointer(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let uid = m("uid");
        let dir = state_dir.join("pods").join(format!(
            "{}_{}_{}",
            m("namespace"),
            m("name"),
            &uid[..uid.len().min(8)]
        ));
        let run_dir = state_dir.join("run").join(&uid[..uid.len().min(8)]);
        PodRuntime {
            run_dir,
            uid,
            namespace: m("namespace"),
            name: m("name"),
            ip,
            dir,
            containers: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
            stop: CancellationToken::new(),
            kill: CancellationToken::new(),
            grace: Mutex::new(Duration::from_secs(30)),
        }
    }

    /// Ask the pod to stop within `grace`.
    pub(crate) fn shutdown(&self, grace: Duration) {
        *self
            .grace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = grace;
        self.stop.cancel();
    }

    pub(crate) fn grace(&self) -> Duration {
        *self
            .grace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn container(&self, name: &str) -> Option<ContainerInfo> {
        self.containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub(crate) fn update_container(&self, name: &str, f: impl FnOnce(&mut ContainerInfo)) {
        f(self
            .containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default());
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The status of one container, as reported.
#[derive(Debug, Clone)]
pub(crate) struct CState {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) state: Value,
    pub(crate) last_state: Value,
    pub(crate) ready: bool,
    pub(crate) started: bool,
    pub(crate) restart_count: i64,
    pub(crate) container_id: Option<String>,
    /// No more restarts will happen.
    pub(crate) done: bool,
}

impl CState {
    fn new(c: &Value) -> CState {
        CState {
            name: c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            image: c
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            state: json!({"waiting": {"reason": "ContainerCreating"}}),
            last_state: json!({}),
            ready: false,
            started: false,
            restart_count: 0,
            container_id: None,
            done: false,
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "image": self.image,
            "imageID": format!("simcluster://{}", self.image),
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        });
        if let Some(id) = &self.container_id {
            v["containerID"] = json!(id);
        }
        v
    }

    pub(crate) fn exit_code(&self) -> Option<i64> {
        self.state
            .pointer("/terminated/exitCode")
            .and_then(Value::as_i64)
    }
}

/// The pod status the kubelet maintains.
#[derive(Debug, Default)]
pub(crate) struct PodState {
    pub(crate) start_time: Option<String>,
    pub(crate) initialized: bool,
    pub(crate) init: Vec<CState>,
    pub(crate) containers: Vec<CState>,
    /// `(phase, reason, message)` that overrides the computed phase.
    pub(crate) phase_override: Option<(String, String, String)>,
    transitions: HashMap<String, (bool, String)>,
}

/// What a pod's container tasks share.
pub(crate) struct PodCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) rt: Arc<PodRuntime>,
    /// The pod object as it was when it started.
    pub(crate) pod: Value,
    pub(crate) state: Mutex<PodState>,
    /// Volume name to host directory.
    pub(crate) volumes: HashMap<String, PathBuf>,
}

impl PodCtx {
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut PodState) -> R) -> R {
        let r = f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
        self.publish();
        r
    }

    pub(crate) fn event(&self, kind: EventKind, reason: &str, message: &str) {
        record(
            &self.shared.store,
            &self.pod,
            kind,
            reason,
            message,
            "kubelet",
        );
    }

    pub(crate) fn restart_policy(&self) -> &str {
        self.pod
            .pointer("/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Always")
    }

    /// Write the status to the store.
    pub(crate) fn publish(&self) {
        // The state stays locked until the status is written: two containers publishing at
        // once must reach the store in the order their statuses were computed, or an older
        // status (one container still waiting) can overwrite a newer one and stay there.
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let status = compute_status(&mut st, &self.rt, self.restart_policy());
        let uid = self.rt.uid.clone();
        let res =
            self.shared.store.mutate(
                "/pods",
                &self.rt.namespace,
                &self.rt.name,
                |_, cur| match cur {
                    Some(c)
                        if c.pointer("/metadata/uid").and_then(Value::as_str)
                            == Some(uid.as_str()) =>
                    {
                        let mut o = c.as_ref().clone();
                        // Keep the QoS class the API server set.
                        let mut status = status;
                        if let Some(q) = c.pointer("/status/qosClass") {
                            status["qosClass"] = q.clone();
                        }
                        o["status"] = status;
                        Ok(Mutation::Put(o))
                    }
                    _ => Ok(Mutation::Unchanged),
                },
            );
        drop(st);
        if let Err(e) = res {
            tracing::warn!(pod = self.rt.name, error = %e, "pod status write failed");
        }
    }
}

fn compute_status(st: &mut PodState, rt: &PodRuntime, policy: &str) -> Value {
    let all_done = !st.containers.is_empty() && st.containers.iter().all(|c| c.done);
    let (phase, reason, message) = if let Some((p, r, m)) = &st.phase_override {
        (p.clone(), Some(r.clone()), Some(m.clone()))
    } else if all_done {
        let ok = st.containers.iter().all(|c| c.exit_code() == Some(0));
        (
            (if ok { "Succeeded" } else { "Failed" }).to_owned(),
            None,
            None,
        )
    } else if st.initialized
        && st
            .containers
            .iter()
            .any(|c| c.started || c.restart_count > 0 || c.state.get("running").is_some())
    {
        ("Running".to_owned(), None, None)
    } else {
        ("Pending".to_owned(), None, None)
    };
    let _ = policy;
    let ready = st.initialized
        && !st.containers.is_empty()
        && st.containers.iter().all(|c| c.ready)
        && phase == "Running";
    let now = crate::api::now();
    let mut cond = |ty: &str, ok: bool, reason: Option<&str>| {
        let entry = st
            .transitions
            .entry(ty.to_owned())
            .or_insert_with(|| (ok, now.clone()));
        if entry.0 != ok {
            *entry = (ok, now.clone());
        }
        let mut c = json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": entry.1});
        if let (false, Some(r)) = (ok, reason) {
            c["reason"] = json!(r);
        }
        c
    };
    let not_ready_reason = if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let conditions = vec![
        cond("PodReadyToStartContainers", st.start_time.is_some(), None),
        cond(
            "Initialized",
            st.initialized,
            Some("ContainersNotInitialized"),
        ),
        cond("Ready", ready, Some(not_ready_reason)),
        cond("ContainersReady", ready, Some(not_ready_reason)),
        cond("PodScheduled", true, None),
    ];
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": rt.ip.to_string(),
        "podIPs": [{"ip": rt.ip.to_string()}],
        "containerStatuses": st.containers.iter().map(CState::to_json).collect::<Vec<_>>(),
    });
    if !st.init.is_empty() {
        status["initContainerStatuses"] =
            Value::Array(st.init.iter().map(CState::to_json).collect());
    }
    if let Some(t) = &st.start_time {
        status["startTime"] = json!(t);
    }
    if let Some(r) = reason {
        status["reason"] = json!(r);
    }
    if let Some(m) = message {
        status["message"] = json!(m);
    }
    status
}

/// Remove a pod object whose processes are gone (the kubelet's final delete).
pub(crate) fn remove_pod_object(store: &Store, pod: &Value) {
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let res = store.mutate("/pods", ns, name, |_, cur| match cur {
        Some(c)
            if c.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid.as_str())
                && c.pointer("/metadata/deletionTimestamp").is_some()
                && crate::api::finalizers(c).is_empty() =>
        {
            Ok(Mutation::Remove)
        }
        _ => Ok(Mutation::Unchanged),
    });
    if let Err(e) = res {
        tracing::warn!(pod = name, error = %e, "removing a stopped pod failed");
    }
}

fn pick_node(store: &Store) -> String {
    let (nodes, _) = store.list("/nodes", None);
    let untainted = nodes.iter().find(|n| {
        n.pointer("/spec/taints")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    });
    untainted
        .or(nodes.first())
        .and_then(|n| n.pointer("/metadata/name").and_then(Value::as_str))
        .unwrap_or("simcluster-control-plane")
        .to_owned()
}

fn schedule(store: &Store, pod: &Value) {
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
    {
        return;
    }
    let node = pick_node(store);
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let res = store.mutate("/pods", ns, name, |_, cur| match cur {
        Some(c) if c.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid.as_str()) => {
            let mut o = c.as_ref().clone();
            o["spec"]["nodeName"] = json!(node);
            Ok(Mutation::Put(o))
        }
        _ => Ok(Mutation::Unchanged),
    });
    if let Err(e) = res {
        tracing::warn!(pod = name, error = %e, "binding the pod to a node failed");
    }
    record(
        store,
        pod,
        EventKind::Normal,
        "Scheduled",
        &format!("Successfully assigned {ns}/{name} to {node}"),
        "default-scheduler",
    );
}

/// What the pod still waits for before its volumes can be set up, if anything.
fn missing_prerequisite(store: &Store, pod: &Value) -> Option<String> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vname = v.get("name").and_then(Value::as_str).unwrap_or_default();
        if let Some(claim) = v
            .pointer("/persistentVolumeClaim/claimName")
            .and_then(Value::as_str)
        {
            if store.get("/persistentvolumeclaims", ns, claim).is_none() {
                return Some(format!("persistentvolumeclaim \"{claim}\" not found"));
            }
            if claim_dir(store, ns, claim).is_none() {
                return Some(format!(
                    "pod has unbound immediate PersistentVolumeClaims (claim {claim}, volume {vname})"
                ));
            }
        }
        for (field, res, what) in [
            ("configMap", "/configmaps", "configmap"),
            ("secret", "/secrets", "secret"),
        ] {
            let Some(src) = v.get(field) else { continue };
            let name = src
                .get(if field == "secret" {
                    "secretName"
                } else {
                    "name"
                })
                .and_then(Value::as_str)
                .unwrap_or_default();
            let optional = src
                .get("optional")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if !optional && store.get(res, ns, name).is_none() {
                return Some(format!(
                    "MountVolume.SetUp failed for volume \"{vname}\" : {what} \"{name}\" not found"
                ));
            }
        }
    }
    None
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Materialise the pod's volumes; returns volume name to host directory.
fn setup_volumes(
    store: &Store,
    rt: &PodRuntime,
    pod: &Value,
) -> std::io::Result<HashMap<String, PathBuf>> {
    use std::os::unix::fs::PermissionsExt as _;
    let ns = &rt.namespace;
    let mut out = HashMap::new();
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vname = v.get("name").and_then(Value::as_str).unwrap_or_default();
        let local = rt.dir.join("volumes").join(vname);
        let dir = if let Some(claim) = v
            .pointer("/persistentVolumeClaim/claimName")
            .and_then(Value::as_str)
        {
            claim_dir(store, ns, claim)
                .ok_or_else(|| std::io::Error::other(format!("claim {claim} is not bound")))?
        } else if let Some(p) = v.pointer("/hostPath/path").and_then(Value::as_str) {
            PathBuf::from(p)
        } else if let Some(src) = v.get("secret") {
            project(store, ns, src, true, &local)?;
            local
        } else if let Some(src) = v.get("configMap") {
            project(store, ns, src, false, &local)?;
            local
        } else {
            // emptyDir and kinds without a source of their own: an empty directory.
            std::fs::create_dir_all(&local)?;
            std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o777))?;
            local
        };
        out.insert(vname.to_owned(), dir);
    }
    Ok(out)
}

/// A ConfigMap or Secret volume (`src`) written into `local`: every key, or the listed
/// `items` at their paths, with the default or the item's mode.
fn project(
    store: &Store,
    ns: &str,
    src: &Value,
    secret: bool,
    local: &Path,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = src
        .get(if secret { "secretName" } else { "name" })
        .and_then(Value::as_str)
        .unwrap_or_default();
    let obj = store.get(if secret { "/secrets" } else { "/configmaps" }, ns, name);
    let mode = src
        .get("defaultMode")
        .and_then(Value::as_u64)
        .map_or(0o644, |m| m as u32);
    std::fs::create_dir_all(local)?;
    std::fs::set_permissions(local, std::fs::Permissions::from_mode(0o755))?;
    let entries = obj.map(|o| entries_of(&o, secret)).unwrap_or_default();
    match src.get("items").and_then(Value::as_array) {
        Some(items) => {
            for it in items {
                let key = it.get("key").and_then(Value::as_str).unwrap_or_default();
                let path = it.get("path").and_then(Value::as_str).unwrap_or(key);
                if let Some(data) = entries.get(key) {
                    let m = it
                        .get("mode")
                        .and_then(Value::as_u64)
                        .map_or(mode, |m| m as u32);
                    write_file(&local.join(path.trim_start_matches('/')), data, m)?;
                }
            }
        }
        None => {
            for (k, data) in &entries {
                write_file(&local.join(k), data, mode)?;
            }
        }
    }
    Ok(())
}

/// A ConfigMap's or Secret's keys with their bytes: `data` (base64 for a Secret) and
/// `binaryData`.
fn entries_of(obj: &Value, secret: bool) -> BTreeMap<String, Vec<u8>> {
    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (k, val) in obj
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let s = val.as_str().unwrap_or_default();
        let bytes = if secret {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap_or_default()
        } else {
            s.as_bytes().to_vec()
        };
        entries.insert(k.clone(), bytes);
    }
    for (k, val) in obj
        .get("binaryData")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        entries.insert(
            k.clone(),
            base64::engine::general_purpose::STANDARD
                .decode(val.as_str().unwrap_or_default())
                .unwrap_or_default(),
        );
    }
    entries
}

/// The mounts of one container: container path to host path.
pub(crate) fn mounts_of(
    volumes: &HashMap<String, PathBuf>,
    container: &Value,
) -> Vec<(String, PathBuf)> {
    container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let vol = volumes.get(m.get("name")?.as_str()?)?;
            let path = m.get("mountPath")?.as_str()?.to_owned();
            let host = match m
                .get("subPath")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                Some(sub) => {
                    let p = vol.join(sub);
                    // A subPath of a writable volume is created on demand, as the kubelet does.
                    let _ = std::fs::create_dir_all(&p);
                    p
                }
                None => vol.clone(),
            };
            Some((path, host))
        })
        .collect()
}

/// Run one pod until it is deleted.
pub(crate) async fn run_pod(
    shared: Arc<Shared>,
    rt: Arc<PodRuntime>,
    mut rx: watch::Receiver<Option<Arc<Value>>>,
) {
    let Some(pod) = rx.borrow().clone() else {
        return;
    };
    let store = shared.store.clone();
    schedule(&store, &pod);
    let pod_now = store
        .get("/pods", &rt.namespace, &rt.name)
        .unwrap_or(pod.clone());
    let containers: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let inits: Vec<Value> = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let state = PodState {
        containers: containers.iter().map(CState::new).collect(),
        init: inits.iter().map(CState::new).collect(),
        ..PodState::default()
    };
    let mut ctx = PodCtx {
        shared: shared.clone(),
        rt: rt.clone(),
        pod: pod_now.as_ref().clone(),
        state: Mutex::new(state),
        volumes: HashMap::new(),
    };

    if let Err(last) = wait_for_prerequisites(&store, &ctx, &mut rx).await {
        return finish(&shared, &rt, &ctx, last).await;
    }
    if !set_up_sandbox(&store, &rt, &mut ctx) {
        return park(&shared, &rt, &ctx, rx).await;
    }
    ctx.state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .start_time = Some(crate::api::now());
    let ctx = Arc::new(ctx);
    ctx.publish();

    if !run_init_containers(&ctx, &rt, &inits, &mut rx).await {
        return park(&shared, &rt, &ctx, rx).await;
    }
    ctx.with_state(|s| s.initialized = true);

    let tasks: Vec<_> = (0..containers.len())
        .map(|i| tokio::spawn(super::container::run(ctx.clone(), i, false)))
        .collect();
    let mut all = futures::future::join_all(tasks);
    tokio::select! {
        _ = &mut all => {}
        () = deletion(&mut rx) => {
            rt.shutdown(grace_of(&rx));
            if rx.borrow().is_none() {
                rt.kill.cancel();
            }
            all.await;
        }
    }
    park(&shared, &rt, &ctx, rx).await;
}

/// Waits until the claims, ConfigMaps and Secrets the pod needs exist, with an event each
/// time what is missing changes; `Err` with the pod's last state when it is deleted first.
async fn wait_for_prerequisites(
    store: &Store,
    ctx: &PodCtx,
    rx: &mut watch::Receiver<Option<Arc<Value>>>,
) -> Result<(), Option<Arc<Value>>> {
    let mut told = String::new();
    loop {
        let cur = rx.borrow().clone();
        match cur {
            Some(p) if p.pointer("/metadata/deletionTimestamp").is_none() => {}
            other => return Err(other),
        }
        match missing_prerequisite(store, &ctx.pod) {
            None => return Ok(()),
            Some(why) => {
                if why != told {
                    let reason = if why.contains("PersistentVolumeClaim")
                        || why.starts_with("persistentvolumeclaim")
                    {
                        "FailedScheduling"
                    } else {
                        "FailedMount"
                    };
                    ctx.event(EventKind::Warning, reason, &why);
                    told = why;
                    ctx.publish();
                }
                tokio::select! {
                    _ = rx.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// The pod's directories and volumes; `false` (the pod Failed, published) when the volumes
/// cannot be set up.
fn set_up_sandbox(store: &Store, rt: &PodRuntime, ctx: &mut PodCtx) -> bool {
    if let Err(e) = std::fs::create_dir_all(rt.dir.join("rootfs"))
        .and_then(|()| std::fs::create_dir_all(rt.dir.join("logs")))
    {
        ctx.event(
            EventKind::Warning,
            "FailedCreatePodSandBox",
            &format!("cannot create {}: {e}", rt.dir.display()),
        );
    }
    match setup_volumes(store, rt, &ctx.pod) {
        Ok(v) => {
            ctx.volumes = v;
            true
        }
        Err(e) => {
            ctx.event(
                EventKind::Warning,
                "FailedMount",
                &format!("setting up volumes: {e}"),
            );
            ctx.state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .phase_override = Some((
                "Failed".into(),
                "FailedMount".into(),
                format!("setting up volumes: {e}"),
            ));
            ctx.publish();
            false
        }
    }
}

/// The init containers, one after another; `false` when one failed (the pod then Failed,
/// unless it is stopping) or the pod was deleted.
async fn run_init_containers(
    ctx: &Arc<PodCtx>,
    rt: &PodRuntime,
    inits: &[Value],
    rx: &mut watch::Receiver<Option<Arc<Value>>>,
) -> bool {
    for (i, _) in inits.iter().enumerate() {
        let ok = tokio::select! {
            ok = super::container::run(ctx.clone(), i, true) => ok,
            () = deletion(rx) => { rt.shutdown(grace_of(rx)); false }
        };
        if !ok {
            if !rt.stop.is_cancelled() {
                ctx.with_state(|s| {
                    s.phase_override = Some((
                        "Failed".into(),
                        "InitContainerFailed".into(),
                        format!("init container {} failed", inits[i]["name"]),
                    ))
                });
            }
            return false;
        }
    }
    true
}

fn grace_of(rx: &watch::Receiver<Option<Arc<Value>>>) -> Duration {
    let secs = rx
        .borrow()
        .as_ref()
        .and_then(|p| {
            p.pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_u64)
        })
        .unwrap_or(0);
    Duration::from_secs(secs)
}

/// Resolve once the pod is being deleted (or is gone).
async fn deletion(rx: &mut watch::Receiver<Option<Arc<Value>>>) {
    loop {
        let deleting = rx
            .borrow()
            .as_ref()
            .is_none_or(|p| p.pointer("/metadata/deletionTimestamp").is_some());
        if deleting {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Containers are done: keep the pod (and its logs) until it is deleted or the kubelet stops.
async fn park(
    shared: &Arc<Shared>,
    rt: &Arc<PodRuntime>,
    ctx: &PodCtx,
    mut rx: watch::Receiver<Option<Arc<Value>>>,
) {
    tokio::select! {
        () = deletion(&mut rx) => {}
        () = rt.stop.cancelled() => {}
    }
    let last = rx.borrow().clone();
    finish(shared, rt, ctx, last).await;
}

async fn finish(
    shared: &Arc<Shared>,
    rt: &Arc<PodRuntime>,
    _ctx: &PodCtx,
    last: Option<Arc<Value>>,
) {
    if let Some(p) = &last {
        remove_pod_object(&shared.store, p);
    }
    for dir in [&rt.dir, &rt.run_dir] {
        if let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a pod directory failed");
        }
    }
    shared.release_ip(rt.ip);
    shared.forget(&rt.uid);
}
