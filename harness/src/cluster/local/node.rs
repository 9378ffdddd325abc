//! The node: containerd (its own configuration, root, state and socket under the node's
//! directory), a CNI bridge network, the kubelet (node name `localhost`, so the API server's
//! logs, exec and port-forward reach it on 127.0.0.1), kube-proxy in iptables mode, the
//! cluster DNS stand-in and the API server's relay for pods on the bridge's gateway, and the
//! images imported into containerd.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as NodeObject;

use super::api_relay::{API_RELAY_PORT, ApiRelay};
use super::control_plane::{ControlPlane, SERVICE_CIDR};
use super::daemon::{Daemon, free_port, mkdir, run, wait_for, write};
use super::dns::{CLUSTER_DOMAIN, DnsServer};
use super::teardown::{self, RULE_COMMENT};
use super::{LocalError, images};
use crate::keep::ScratchDir;

/// The pod bridge. One node runs per machine (the node lock), so the name is fixed, which
/// lets a later run sweep what a killed one left.
pub const BRIDGE: &str = "rrlocal0";
/// The pod network; the bridge holds its first address.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The bridge's address: the pods' gateway and their DNS server.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The node's name.
pub const NODE_NAME: &str = "localhost";

/// Where the node's inputs are.
#[derive(Clone, Debug)]
pub(crate) struct NodeOptions {
    pub(crate) bin_dir: PathBuf,
    pub(crate) images_dir: PathBuf,
    pub(crate) titanium: PathBuf,
    pub(crate) timeout: Duration,
}

/// A running node. Dropping it tears everything down (see [`teardown`]).
#[derive(Debug, Default)]
pub(crate) struct Node {
    proxy: Option<Daemon>,
    kubelet: Option<Daemon>,
    containerd: Option<Daemon>,
    dns: Option<DnsServer>,
    api_relay: Option<ApiRelay>,
    bridge: bool,
    dir: Option<ScratchDir>,
    path: PathBuf,
    socket: PathBuf,
    bin_dir: PathBuf,
}

impl Node {
    /// Starts the node against `control_plane` and waits until it is Ready with its images.
    pub(crate) async fn start(
        control_plane: &ControlPlane,
        options: NodeOptions,
    ) -> Result<Self, LocalError> {
        let started = Instant::now();
        let mut node = Node::default();
        let dir = ScratchDir::new("harness-k8s-node-", "local node").map_err(|source| {
            LocalError::Io {
                action: "create",
                path: std::env::temp_dir(),
                source,
            }
        })?;
        node.path = dir.path().to_owned();
        node.dir = Some(dir);
        node.bin_dir = options.bin_dir.clone();
        node.socket = node.path.join("containerd/containerd.sock");
        // On an error below, `node` drops and tears down what was started.
        node.network(control_plane).await?;
        node.start_containerd(&options).await?;
        let import = {
            let (socket, work, bin, images, titanium) = (
                node.socket.clone(),
                node.path.clone(),
                options.bin_dir.clone(),
                options.images_dir.clone(),
                options.titanium.clone(),
            );
            tokio::task::spawn_blocking(move || {
                images::import(&socket, &work, &bin, &images, &titanium)
            })
        };
        node.start_kubelet_and_proxy(control_plane)?;
        let client = control_plane.client().await?;
        let remaining = options.timeout.saturating_sub(started.elapsed());
        let mut daemons: Vec<&mut Daemon> = [&mut node.containerd, &mut node.kubelet]
            .into_iter()
            .flatten()
            .collect();
        wait_for("the node (Ready)", remaining, &mut daemons, || {
            node_ready(&client)
        })
        .await?;
        import.await.map_err(|err| LocalError::NotReady {
            component: "the image import".to_owned(),
            seconds: 0,
            detail: err.to_string(),
        })??;
        if let Some(proxy) = node.proxy.as_mut() {
            proxy.check()?;
        }
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "local node ready"
        );
        Ok(node)
    }

    /// The pod bridge with its gateway address, forwarding for it, and the DNS server on it.
    async fn network(&mut self, control_plane: &ControlPlane) -> Result<(), LocalError> {
        if teardown::link_exists(BRIDGE) {
            return Err(LocalError::Leftover {
                what: format!("a network link {BRIDGE} from an earlier node (the sweep failed)"),
            });
        }
        self.bridge = true;
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        run(
            "ip",
            &["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE],
        )?;
        run("ip", &["link", "set", BRIDGE, "up"])?;
        write(Path::new("/proc/sys/net/ipv4/ip_forward"), "1")?;
        // Docker sets the FORWARD policy to DROP; pod traffic through the bridge (bridged
        // frames pass iptables with br_netfilter) and to Services must pass.
        for direction in ["-i", "-o"] {
            insert_rule("FORWARD", &[direction, BRIDGE], "ACCEPT")?;
        }
        // A cluster IP kube-proxy has no rule for (yet: a Service it has not synced) must not
        // leave the host by its default route. Inserted ahead of the accepts; kube-proxy's DNAT
        // (PREROUTING, OUTPUT) comes before the filter table, so translated packets no longer
        // match. Without it, such a connection reached whatever answers on the host's network
        // (here: a proxy that answers every request with 404), and a kept-alive client stayed
        // on it: an api-gateway replica saw user-service 404 for two minutes.
        for chain in ["FORWARD", "OUTPUT"] {
            insert_rule(chain, &["-d", SERVICE_CIDR], "REJECT")?;
        }
        let client = control_plane.client().await?;
        let dns = DnsServer::start(client, SocketAddr::from((GATEWAY, 53)))
            .await
            .map_err(|source| LocalError::Io {
                action: "bind the cluster DNS server to",
                path: PathBuf::from(format!("{GATEWAY}:53")),
                source,
            })?;
        self.dns = Some(dns);
        // Pods reach the API server through the `kubernetes` Service (the ingress gateway
        // reads its routes so): a relay on the gateway and the Endpoints naming it.
        let api: SocketAddr = control_plane
            .url()
            .trim_start_matches("https://")
            .parse()
            .map_err(|_| LocalError::Io {
                action: "parse the API server's address",
                path: PathBuf::from(control_plane.url()),
                source: std::io::Error::other("not host:port"),
            })?;
        let relay = ApiRelay::start(
            control_plane.client().await?,
            SocketAddr::from((GATEWAY, API_RELAY_PORT)),
            api,
        )
        .await
        .map_err(|source| LocalError::Io {
            action: "relay the API server for pods on",
            path: PathBuf::from(format!("{GATEWAY}:{API_RELAY_PORT}")),
            source,
        })?;
        self.api_relay = Some(relay);
        Ok(())
    }

    async fn start_containerd(&mut self, options: &NodeOptions) -> Result<(), LocalError> {
        let root = self.path.join("containerd");
        let cni_conf = self.path.join("cni/net.d");
        mkdir(&root.join("root"))?;
        mkdir(&root.join("state"))?;
        mkdir(&cni_conf)?;
        let config = root.join("config.toml");
        write(&config, containerd_config(&root, &self.socket, &cni_conf))?;
        write(
            &cni_conf.join("10-rehearsal.conflist"),
            cni_config(&self.path.join("cni/ipam")),
        )?;
        let mut containerd = Daemon::start(
            "containerd",
            Path::new("containerd"),
            &["--config".to_owned(), config.display().to_string()],
            &self.path.join("containerd.log"),
        )?;
        let socket = self.socket.display().to_string();
        let result = wait_for(
            "containerd",
            options.timeout,
            &mut [&mut containerd],
            || {
                let ok = std::fs::metadata(&self.socket).is_ok()
                    && run("ctr", &["-a", &socket, "version"]).is_ok();
                async move { Ok(ok) }
            },
        )
        .await;
        self.containerd = Some(containerd);
        result
    }

    fn start_kubelet_and_proxy(&mut self, control_plane: &ControlPlane) -> Result<(), LocalError> {
        let pki = self.path.join("pki");
        mkdir(&pki)?;
        let kubelet_config = pki.join("kubelet.kubeconfig");
        control_plane.user_kubeconfig(
            &kubelet_config,
            &format!("system:node:{NODE_NAME}"),
            &["system:nodes"],
        )?;
        let proxy_config = pki.join("kube-proxy.kubeconfig");
        control_plane.user_kubeconfig(&proxy_config, "system:kube-proxy", &[])?;
        let resolv = self.path.join("resolv.conf");
        // The upstream of pods with dnsPolicy Default; ClusterFirst pods get the cluster DNS
        // and the cluster's search domains only (no host search domain to leak into).
        write(&resolv, format!("nameserver {GATEWAY}\n"))?;
        let kubelet_root = self.path.join("kubelet");
        mkdir(&kubelet_root)?;
        let p = |path: &Path| path.display().to_string();
        let kubelet = Daemon::start(
            "kubelet",
            &self.bin_dir.join("kubelet"),
            &[
                format!("--kubeconfig={}", p(&kubelet_config)),
                format!("--hostname-override={NODE_NAME}"),
                format!("--root-dir={}", p(&kubelet_root)),
                format!("--cert-dir={}", p(&self.path.join("kubelet-certs"))),
                format!("--container-runtime-endpoint=unix://{}", p(&self.socket)),
                "--runtime-request-timeout=15m".to_owned(),
                "--cgroup-driver=cgroupfs".to_owned(),
                "--fail-swap-on=false".to_owned(),
                "--address=127.0.0.1".to_owned(),
                format!("--port={}", free_port()?),
                "--healthz-bind-address=127.0.0.1".to_owned(),
                format!("--healthz-port={}", free_port()?),
                "--read-only-port=0".to_owned(),
                "--anonymous-auth=false".to_owned(),
                format!("--client-ca-file={}", p(control_plane.ca_cert())),
                "--authorization-mode=AlwaysAllow".to_owned(),
                format!("--cluster-dns={GATEWAY}"),
                format!("--cluster-domain={CLUSTER_DOMAIN}"),
                format!("--resolv-conf={}", p(&resolv)),
                // Imported images cannot be pulled again: never collect them.
                "--image-gc-high-threshold=100".to_owned(),
                "--image-gc-low-threshold=99".to_owned(),
                "--eviction-hard=memory.available<100Mi,nodefs.available<1%,imagefs.available<1%"
                    .to_owned(),
                format!("--pod-infra-container-image={}", images::PAUSE_IMAGE),
                format!(
                    "--volume-plugin-dir={}",
                    p(&self.path.join("volume-plugins"))
                ),
                "--node-status-update-frequency=2s".to_owned(),
            ]
            .into_iter()
            // Removed in 1.27 (containerd through CRI is then the only kind).
            .chain(
                (control_plane.minor_version() < 27)
                    .then(|| "--container-runtime=remote".to_owned()),
            )
            .collect::<Vec<_>>(),
            &self.path.join("kubelet.log"),
        )?;
        self.kubelet = Some(kubelet);
        let proxy = Daemon::start(
            "kube-proxy",
            &self.bin_dir.join("kube-proxy"),
            &[
                format!("--kubeconfig={}", p(&proxy_config)),
                format!("--hostname-override={NODE_NAME}"),
                "--proxy-mode=iptables".to_owned(),
                format!("--cluster-cidr={POD_CIDR}"),
                format!("--metrics-bind-address=127.0.0.1:{}", free_port()?),
                format!("--healthz-bind-address=127.0.0.1:{}", free_port()?),
                // Leave the host's conntrack settings alone.
                "--conntrack-max-per-core=0".to_owned(),
                "--conntrack-min=0".to_owned(),
                "--conntrack-tcp-timeout-established=0".to_owned(),
                "--conntrack-tcp-timeout-close-wait=0".to_owned(),
            ],
            &self.path.join("kube-proxy.log"),
        )?;
        self.proxy = Some(proxy);
        Ok(())
    }

    /// The node's directory (logs: `kubelet.log`, `containerd.log`, `kube-proxy.log`).
    pub(crate) fn dir(&self) -> &Path {
        &self.path
    }

    /// The node's volume directory (the provisioner's hostPath volumes).
    pub(crate) fn volumes(&self) -> PathBuf {
        self.path.join("volumes")
    }

    /// The pids of its own processes while they run.
    pub(crate) fn pids(&self) -> Vec<i32> {
        [&self.proxy, &self.kubelet, &self.containerd]
            .into_iter()
            .flatten()
            .filter_map(Daemon::pid)
            .collect()
    }

    /// Tears the node down and checks that nothing is left: no pod process, shim, mount
    /// under its directory, cgroup, bridge, iptables chain or directory.
    pub(crate) fn stop(mut self) -> Result<(), LocalError> {
        let mut left = self.teardown();
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if let Err(err) = dir.remove() {
                left.push(format!("{} ({err})", path.display()));
            }
        }
        if self.path.exists() {
            left.push(format!("{} still exists", self.path.display()));
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(LocalError::Leftover {
                what: left.join("; "),
            })
        }
    }

    /// Every teardown step, in order; returns what is left.
    fn teardown(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        let started = Instant::now();
        let step = |name: &str| {
            tracing::info!(
                step = name,
                seconds = started.elapsed().as_secs_f64(),
                "node teardown"
            );
        };
        // The kubelet first: it would restart what is killed below.
        for daemon in [&mut self.proxy, &mut self.kubelet].into_iter().flatten() {
            daemon.stop(Duration::from_secs(5));
        }
        self.proxy = None;
        self.kubelet = None;
        step("kubelet and kube-proxy stopped");
        let pods = teardown::kill_all(teardown::pod_processes, Duration::from_secs(10));
        if !pods.is_empty() {
            left.push(format!("pod processes {pods:?}"));
        }
        step("pods killed");
        let marker = self.path.display().to_string();
        if !marker.is_empty() {
            let shims = teardown::kill_all(|| teardown::shims(&marker), Duration::from_secs(5));
            if !shims.is_empty() {
                left.push(format!("containerd shims {shims:?}"));
            }
        }
        if let Some(mut containerd) = self.containerd.take() {
            containerd.stop(Duration::from_secs(5));
        }
        self.dns = None;
        self.api_relay = None;
        step("shims and containerd stopped");
        if !self.path.as_os_str().is_empty() {
            let mounts = teardown::unmount_under(&self.path);
            if !mounts.is_empty() {
                left.push(format!("mounts {mounts:?}"));
            }
        }
        step("unmounted");
        let cgroups = teardown::remove_cgroups();
        if !cgroups.is_empty() {
            left.push(format!("cgroups {cgroups:?}"));
        }
        if self.bridge {
            if let Err(err) = teardown::delete_link(BRIDGE) {
                left.push(format!("bridge {BRIDGE} ({err})"));
            }
            self.bridge = false;
        }
        match teardown::clean_iptables().and_then(|()| teardown::iptables_leftovers()) {
            Ok(rules) if rules.is_empty() => {}
            Ok(rules) => left.push(format!("iptables rules {rules:?}")),
            Err(err) => left.push(format!("iptables ({err})")),
        }
        step("cgroups, bridge and iptables cleaned");
        left
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.dir.is_none() && !self.bridge {
            return;
        }
        if crate::keep::keep_requested() {
            eprintln!(
                "{}: local node kept (directory {}, bridge {BRIDGE})",
                crate::keep::KEEP_ENV,
                self.path.display()
            );
            return;
        }
        let left = self.teardown();
        if !left.is_empty() {
            eprintln!(
                "warning: the local node's teardown left {} (the next local cluster sweeps it)",
                left.join("; ")
            );
        }
        // The ScratchDir's drop removes the directory.
    }
}

/// Sweeps what a killed node left (only one node runs per machine: the caller holds the
/// node lock): pod processes, shims of any earlier node, mounts under earlier nodes'
/// directories, cgroups, the bridge and the iptables chains.
pub(crate) fn sweep() -> Result<(), LocalError> {
    let pods = teardown::kill_all(teardown::pod_processes, Duration::from_secs(10));
    let shims = teardown::kill_all(
        || teardown::shims("/harness-k8s-node-"),
        Duration::from_secs(5),
    );
    let mut left = Vec::new();
    if !pods.is_empty() || !shims.is_empty() {
        left.push(format!("processes {pods:?} {shims:?}"));
    }
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("harness-k8s-node-") && !name.ends_with(".owner") {
                let mounts = teardown::unmount_under(&entry.path());
                if !mounts.is_empty() {
                    left.push(format!("mounts {mounts:?}"));
                }
            }
        }
    }
    let cgroups = teardown::remove_cgroups();
    if !cgroups.is_empty() {
        left.push(format!("cgroups {cgroups:?}"));
    }
    teardown::delete_link(BRIDGE)?;
    teardown::clean_iptables()?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(LocalError::Leftover {
            what: format!("{} after sweeping an earlier node", left.join("; ")),
        })
    }
}

async fn node_ready(client: &kube::Client) -> Result<bool, String> {
    let api: kube::Api<NodeObject> = kube::Api::all(client.clone());
    match api.get_opt(NODE_NAME).await {
        Ok(Some(node)) => Ok(node
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))),
        Ok(None) => Ok(false),
        Err(err) => Err(crate::error_chain(&err)),
    }
}

fn containerd_config(root: &Path, socket: &Path, cni_conf: &Path) -> String {
    let d = |p: &Path| p.display().to_string();
    format!(
        r#"# The local provider's containerd: everything under the node's directory.
version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Root lacks CAP_SYS_RESOURCE on these machines: without this every container fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
"#,
        root = d(&root.join("root")),
        state = d(&root.join("state")),
        socket = d(socket),
        opt = d(&root.join("opt")),
        pause = images::PAUSE_IMAGE,
        cni = d(cni_conf),
    )
}

fn cni_config(ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "rehearsal",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir.display().to_string(),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// Inserts an iptables rule at the head of `chain`: `matches`, tagged with [`RULE_COMMENT`]
/// (the teardown removes every rule so tagged), jumping to `target`.
fn insert_rule(chain: &str, matches: &[&str], target: &str) -> Result<String, LocalError> {
    let mut args = vec!["-w", "-I", chain, "1"];
    args.extend_from_slice(matches);
    args.extend(["-m", "comment", "--comment", RULE_COMMENT, "-j", target]);
    run("iptables", &args)
}
