//! The simulated kubelet: pods run as local processes.
//!
//! [`Kubelet`] watches the store for pods, schedules unscheduled ones onto a node, and runs
//! each pod in a task (`pod`): it allocates a loopback pod IP (127.N.0-127.x, N leased per cluster, see [`NetworkLease`]), waits for its
//! claims and config, materialises its volumes as host directories, and runs each container
//! (`container`) as a process group with the environment Kubernetes would build (`env`),
//! probes (`probe`) driving readiness and restarts, and the pod status clients read. Images
//! map to programs through [`ImageMap`]; PostgreSQL gets the official image's entrypoint
//! behaviour (`postgres`). The subresources `pods/exec`, `pods/log` and `pods/portforward`
//! are served by [`Kubelet::handlers`].
//!
//! Invariants: only `process` spawns processes, and every process group it starts is known to
//! the reaper, so nothing outlives the simulator. The kubelet never writes a pod's spec apart
//! from scheduling (`spec.nodeName`); it owns `status`.

mod container;
mod env;
mod exec;
mod images;
mod logs;
mod pod;
mod portforward;
mod postgres;
mod probe;
mod process;

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use images::ImageMap;
pub use images::ImageMapError;

use crate::server::SubresourceHandler;
use crate::store::{EventType, Store};

/// How the kubelet runs.
#[derive(Debug, Clone)]
pub(crate) struct KubeletConfig {
    /// The cluster's state directory; pods live under `pods/`.
    pub state_dir: PathBuf,
    /// Which program runs for which image.
    pub images: ImageMap,
    /// Factor applied to probe delays and periods and to restart back-off (1.0 runs them as
    /// declared; the default 0.1 runs them ten times faster). `SIMCLUSTER_TIME_SCALE`
    /// overrides the default.
    pub time_scale: f64,
}

impl KubeletConfig {
    /// The defaults for a cluster in `state_dir`: the workspace's image map.
    ///
    /// # Errors
    /// An image map that exists but is invalid.
    pub(crate) fn new(state_dir: impl Into<PathBuf>) -> Result<Self, ImageMapError> {
        let time_scale = std::env::var("SIMCLUSTER_TIME_SCALE")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|f| *f > 0.0)
            .unwrap_or(0.1);
        Ok(KubeletConfig {
            state_dir: state_dir.into(),
            images: ImageMap::default_map()?,
            time_scale,
        })
    }

    pub(crate) fn scaled(&self, seconds: f64) -> Duration {
        Duration::from_secs_f64((seconds * self.time_scale).max(0.0))
    }
}

/// Why the kubelet could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// A directory under the state dir could not be prepared.
    #[error("cannot prepare {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The process reaper could not be started.
    #[error("cannot start the process reaper")]
    Reaper(#[source] std::io::Error),
    /// No pod network could be leased.
    #[error("cannot lease a pod network")]
    PodNetwork(#[source] std::io::Error),
    /// The image map is invalid.
    #[error(transparent)]
    Images(#[from] ImageMapError),
}

struct PodEntry {
    tx: watch::Sender<Option<Arc<Value>>>,
    runtime: Arc<pod::PodRuntime>,
    task: JoinHandle<()>,
}

/// What the kubelet's tasks share.
pub(crate) struct Shared {
    pub(crate) store: Arc<Store>,
    pub(crate) cfg: KubeletConfig,
    pub(crate) reaper: process::Reaper,
    pods: Mutex<HashMap<String, PodEntry>>,
    ips: Mutex<BTreeSet<u32>>,
    network: NetworkLease,
    /// Cancelled when the kubelet stops: exec, log and port-forward sessions end with it.
    pub(crate) stopping: CancellationToken,
    /// Where the resource metrics sampler puts what it measures.
    metrics: Arc<crate::metrics::Metrics>,
}

/// A cluster's loopback block 127.N.0.0/16, leased machine-wide so that clusters running at
/// the same time never share an address: pods get 127.N.0-127.x, Services 127.N.128-255.x
/// (the `kubernetes` Service is 127.N.128.1). The lease is an abstract Unix socket name: only
/// one process can bind it, and it goes away with the process, leaving no file behind.
#[derive(Debug)]
pub(crate) struct NetworkLease {
    octet: u8,
    _name: std::os::unix::net::UnixListener,
}

impl NetworkLease {
    /// Lease a free block among 127.2-251.
    ///
    /// # Errors
    /// Every block is leased, or the socket cannot be created.
    pub(crate) fn acquire() -> std::io::Result<NetworkLease> {
        use std::os::linux::net::SocketAddrExt as _;
        let start = std::process::id() % 250;
        for i in 0..250u32 {
            let n = 2 + ((start + i) % 250) as u8;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(format!(
                "simcluster-network-127.{n}"
            ))?;
            if let Ok(l) = std::os::unix::net::UnixListener::bind_addr(&addr) {
                return Ok(NetworkLease { octet: n, _name: l });
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "every loopback block 127.2-251.x.y is leased by another simulated cluster",
        ))
    }

    /// The `kubernetes` Service's clusterIP, where the Service range starts.
    pub(crate) fn kubernetes_service_ip(&self) -> String {
        format!("127.{}.128.1", self.octet)
    }
}

impl Shared {
    /// The running pod with this namespace and name.
    pub(crate) fn runtime(&self, ns: &str, name: &str) -> Option<Arc<pod::PodRuntime>> {
        let pods = self
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pods.values()
            .find(|e| e.runtime.namespace == ns && e.runtime.name == name)
            .map(|e| e.runtime.clone())
    }

    fn allocate_ip(&self) -> Ipv4Addr {
        let mut ips = self
            .ips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = (2u32..128 * 256)
            .find(|n| !ips.contains(n))
            .unwrap_or(128 * 256 - 1);
        ips.insert(n);
        Ipv4Addr::new(127, self.network.octet, (n / 256) as u8, (n % 256) as u8)
    }

    pub(crate) fn release_ip(&self, ip: Ipv4Addr) {
        let o = ip.octets();
        self.ips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(u32::from(o[2]) * 256 + u32::from(o[3])));
    }

    pub(crate) fn forget(&self, uid: &str) {
        self.pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(uid);
    }
}

/// The running kubelet.
pub(crate) struct Kubelet {
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// Checks that the PostgreSQL pods will be able to reach their data below `state_dir`: as
/// root they run as the `postgres` account, which must traverse every directory above it.
/// Run it at start: otherwise the cluster starts fine and every PostgreSQL pod crash-loops.
///
/// # Errors
/// The message a PostgreSQL pod would print, naming the directory and its mode.
pub fn check_state_dir_reachable(state_dir: &std::path::Path) -> Result<(), String> {
    let absolute = std::path::absolute(state_dir)
        .map_err(|e| format!("cannot resolve {}: {e}", state_dir.display()))?;
    // The state directory itself is made traversable (0711) by the kubelet; its parents are
    // the user's.
    postgres::check_reachable(&absolute, postgres::owner())
}

impl Kubelet {
    /// Start the kubelet on `store`.
    ///
    /// The state directory becomes traversable by others (mode 0711, no listing) because
    /// PostgreSQL runs as the `postgres` user and must reach its data directory below it.
    ///
    /// # Errors
    /// The state directory cannot be prepared or the reaper cannot start.
    pub(crate) fn start(
        store: Arc<Store>,
        cfg: KubeletConfig,
        network: NetworkLease,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Kubelet, KubeletError> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = cfg.state_dir.join("kubelet");
        for d in [
            &cfg.state_dir,
            &dir,
            &cfg.state_dir.join("pods"),
            &cfg.state_dir.join("volumes"),
            &cfg.state_dir.join("run"),
        ] {
            std::fs::create_dir_all(d).map_err(|source| KubeletError::StateDir {
                path: d.clone(),
                source,
            })?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).map_err(
                |source| KubeletError::StateDir {
                    path: d.clone(),
                    source,
                },
            )?;
        }
        let reaper =
            process::Reaper::start(&dir.join("process-groups")).map_err(KubeletError::Reaper)?;
        let shared = Arc::new(Shared {
            store,
            cfg,
            reaper,
            pods: Mutex::new(HashMap::new()),
            ips: Mutex::new(BTreeSet::new()),
            network,
            stopping: CancellationToken::new(),
            metrics,
        });
        let stop = CancellationToken::new();
        tokio::spawn(sample_metrics(shared.clone(), stop.clone()));
        let task = tokio::spawn(run(shared.clone(), stop.clone()));
        Ok(Kubelet {
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The subresource handlers to register: (`group/plural`, subresource, handler) for
    /// `pods/exec`, `pods/log` and `pods/portforward`.
    pub(crate) fn handlers(
        &self,
    ) -> Vec<(&'static str, &'static str, Arc<dyn SubresourceHandler>)> {
        vec![
            (
                "/pods",
                "exec",
                Arc::new(exec::ExecHandler(self.shared.clone())) as Arc<dyn SubresourceHandler>,
            ),
            (
                "/pods",
                "log",
                Arc::new(logs::LogHandler(self.shared.clone())),
            ),
            (
                "/pods",
                "portforward",
                Arc::new(portforward::PortForwardHandler(self.shared.clone())),
            ),
        ]
    }

    /// Stop every pod (SIGTERM, then SIGKILL after at most `grace`) and every process the
    /// kubelet started, then stop watching.
    pub(crate) async fn shutdown(&mut self, grace: Duration) {
        self.stop.cancel();
        self.shared.stopping.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let entries: Vec<PodEntry> = self
            .shared
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, e)| e)
            .collect();
        for e in &entries {
            e.runtime.shutdown(grace);
        }
        let all = futures::future::join_all(entries.into_iter().map(|e| e.task));
        // Pods have `grace` to stop; the reaper kills whatever is left.
        let _ = tokio::time::timeout(grace + Duration::from_secs(2), all).await;
        self.shared.reaper.kill_all_and_stop();
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.stopping.cancel();
        for (_, e) in self
            .shared
            .pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
        {
            e.task.abort();
        }
        self.shared.reaper.kill_all_and_stop();
    }
}

fn handle_pod(shared: &Arc<Shared>, kind: EventType, pod: &Arc<Value>) {
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut pods = shared
        .pods
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(e) = pods.get(&uid) {
        let _ = e.tx.send(if kind == EventType::Deleted {
            None
        } else {
            Some(pod.clone())
        });
        return;
    }
    if kind == EventType::Deleted {
        return;
    }
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        // Nothing of it runs here (any more): it can go at once.
        drop(pods);
        pod::remove_pod_object(&shared.store, pod);
        return;
    }
    if matches!(phase, "Succeeded" | "Failed") || pod.pointer("/status/podIP").is_some() {
        // Finished, or run by an earlier kubelet of this store: nothing to start.
        return;
    }
    let ip = shared.allocate_ip();
    let (tx, rx) = watch::channel(Some(pod.clone()));
    let runtime = Arc::new(pod::PodRuntime::new(&shared.cfg.state_dir, pod, ip));
    let task = tokio::spawn(pod::run_pod(shared.clone(), runtime.clone(), rx));
    pods.insert(uid, PodEntry { tx, runtime, task });
}

/// The running containers' process groups, for the metrics sampler.
fn running_processes(shared: &Shared) -> Vec<crate::metrics::PodProcesses> {
    let pods = shared
        .pods
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pods.values()
        .map(|e| {
            let rt = &e.runtime;
            let containers = rt
                .containers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .filter_map(|(name, ci)| {
                    ci.pgid.map(|pgid| crate::metrics::ContainerProcesses {
                        name: name.clone(),
                        pgid,
                    })
                })
                .collect();
            crate::metrics::PodProcesses {
                uid: rt.uid.clone(),
                namespace: rt.namespace.clone(),
                name: rt.name.clone(),
                containers,
            }
        })
        .collect()
}

/// Samples the machine and every running container each [`crate::metrics::RESOLUTION`], as
/// the kubelet's resource metrics endpoint would be scraped.
async fn sample_metrics(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(crate::metrics::RESOLUTION);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pods = running_processes(&shared);
        let s = shared.clone();
        // Reading /proc blocks; a failed task only costs this sample.
        if let Err(e) = tokio::task::spawn_blocking(move || s.metrics.sample(&pods)).await {
            tracing::warn!(error = %e, "resource metrics sample failed");
        }
    }
}

async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut rx = shared.store.subscribe();
    let (pods, _) = shared.store.list("/pods", None);
    for p in &pods {
        handle_pod(&shared, EventType::Added, p);
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            r = rx.recv() => match r {
                Ok(ev) if ev.key == "/pods" => handle_pod(&shared, ev.kind, &ev.object),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let (pods, _) = shared.store.list("/pods", None);
                    for p in &pods {
                        handle_pod(&shared, EventType::Modified, p);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
