//! Services: Endpoints that follow pod readiness, and the loopback proxy that plays
//! kube-proxy. Every TCP port of a Service with a clusterIP listens on `clusterIP:port` (the
//! clusterIPs are loopback addresses, 127.1.x.y, and Linux routes all of 127/8 to `lo`) and
//! forwards each connection to a ready endpoint, round robin. A LoadBalancer Service reports
//! its clusterIP as `status.loadBalancer.ingress[0].ip`; a node port listed in the kind
//! config's `extraPortMappings` also listens on that mapping's host port. A Service without a
//! selector (the API server's `kubernetes`) forwards to the addresses of its Endpoints, which
//! this controller leaves alone.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::events::{EventKind, record};
use super::{Ctx, create, deleting, meta, modify, pod_ready, write_status};
use crate::selector::LabelSelector;
use crate::store::Store;

type Backends = Arc<RwLock<Vec<SocketAddr>>>;

struct Listener {
    backends: Backends,
    task: JoinHandle<()>,
}

/// The proxy listeners of all Services.
pub(crate) struct Proxies {
    listeners: Mutex<HashMap<SocketAddr, Listener>>,
    mappings: Vec<crate::config::PortMapping>,
}

impl Proxies {
    pub(crate) fn new(mappings: Vec<crate::config::PortMapping>) -> Self {
        Proxies {
            listeners: Mutex::new(HashMap::new()),
            mappings,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Listener>> {
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Close every listener.
    pub(crate) fn close_all(&self) {
        for (_, l) in self.lock().drain() {
            l.task.abort();
        }
    }

    /// Make the set of listeners equal to `want` (address to backends). Returns addresses
    /// that could not be bound, with the reason.
    fn sync(&self, want: BTreeMap<SocketAddr, Vec<SocketAddr>>) -> Vec<(SocketAddr, String)> {
        let mut failed = Vec::new();
        let mut map = self.lock();
        map.retain(|addr, l| {
            let keep = want.contains_key(addr);
            if !keep {
                l.task.abort();
            }
            keep
        });
        for (addr, backends) in want {
            if let Some(l) = map.get(&addr) {
                let mut b = l
                    .backends
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *b != backends {
                    *b = backends;
                }
                continue;
            }
            let std_listener = match std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(l) => l,
                Err(e) => {
                    failed.push((addr, e.to_string()));
                    continue;
                }
            };
            let listener = match TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    failed.push((addr, e.to_string()));
                    continue;
                }
            };
            let backends: Backends = Arc::new(RwLock::new(backends));
            let task = tokio::spawn(accept_loop(listener, backends.clone()));
            map.insert(addr, Listener { backends, task });
        }
        failed
    }
}

async fn accept_loop(listener: TcpListener, backends: Backends) {
    let next = AtomicUsize::new(0);
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let target = {
            let b = backends
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if b.is_empty() {
                None
            } else {
                Some(b[next.fetch_add(1, Ordering::Relaxed) % b.len()])
            }
        };
        // No ready endpoint: the connection is refused, as kube-proxy's reject rule does.
        let Some(target) = target else { continue };
        tokio::spawn(async move {
            let _ = inbound.set_nodelay(true);
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = outbound.set_nodelay(true);
                // Either side closing ends the relay; errors are the peers' business.
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Resolve a Service port's `targetPort` against one pod: a number, or a container port name.
pub(crate) fn target_port(port: &Value, pod: &Value) -> Option<u16> {
    let tp = port.get("targetPort").or_else(|| port.get("port"))?;
    if let Some(n) = tp.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = tp.as_str()?;
    if let Ok(n) = name.parse::<u16>() {
        return Some(n);
    }
    pod.pointer("/spec/containers")?
        .as_array()?
        .iter()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find_map(|p| {
            (p.get("name").and_then(Value::as_str) == Some(name))
                .then(|| {
                    p.get("containerPort")
                        .and_then(Value::as_u64)
                        .and_then(|n| u16::try_from(n).ok())
                })
                .flatten()
        })
}

pub(crate) fn reconcile(ctx: &Ctx) {
    let store = &ctx.store;
    let (services, _) = store.list("/services", None);
    let (pods, _) = store.list("/pods", None);
    let mut listeners = Listeners::default();
    for svc in &services {
        if deleting(svc) {
            continue;
        }
        let ns = meta(svc, "namespace");
        let Some(sel) = svc
            .pointer("/spec/selector")
            .filter(|s| s.as_object().is_some_and(|m| !m.is_empty()))
        else {
            // Without a selector, the Endpoints are someone else's (the API server's own
            // for `default/kubernetes`): the proxy forwards to their ready addresses.
            let endpoints = store.get("/endpoints", ns, meta(svc, "name"));
            listeners.add_manual(svc, endpoints.as_deref());
            continue;
        };
        let selector = LabelSelector::from_object(&json!({"matchLabels": sel}));
        let members: Vec<_> = pods
            .iter()
            .filter(|p| meta(p, "namespace") == ns && selector.matches(p) && !deleting(p))
            .filter(|p| {
                p.pointer("/status/podIP")
                    .and_then(Value::as_str)
                    .is_some_and(|ip| !ip.is_empty())
            })
            .collect();
        let ports: Vec<Value> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        write_endpoints(store, svc, endpoint_subsets(ns, &ports, &members));
        listeners.add_service(ctx, store, svc, &ports, &members);
    }
    for (addr, why) in ctx.proxies.sync(listeners.want) {
        if let Some(svc) = listeners.owners.get(&addr) {
            record(
                store,
                svc,
                EventKind::Warning,
                "ProxyFailed",
                &format!("cannot listen on {addr}: {why}"),
                "kube-proxy",
            );
        }
    }
}

/// The Endpoints subsets of a Service's member pods: one subset per distinct resolved port
/// list, with the ready and the not-ready addresses.
fn endpoint_subsets(ns: &str, ports: &[Value], members: &[&Arc<Value>]) -> Vec<Value> {
    // Per port list: (ready addresses, not-ready addresses, ports).
    type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);
    let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
    for p in members {
        let ip = p
            .pointer("/status/podIP")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let eports: Vec<Value> = ports
            .iter()
            .filter_map(|sp| {
                let n = target_port(sp, p)?;
                let mut e = json!({"port": n, "protocol": sp.get("protocol").cloned().unwrap_or(json!("TCP"))});
                if let Some(name) = sp.get("name") {
                    e["name"] = name.clone();
                }
                Some(e)
            })
            .collect();
        let key = serde_json::to_string(&eports).unwrap_or_default();
        let addr = json!({
            "ip": ip,
            "nodeName": p.pointer("/spec/nodeName").cloned().unwrap_or(Value::Null),
            "targetRef": {"kind": "Pod", "namespace": ns, "name": meta(p, "name"), "uid": meta(p, "uid")},
        });
        let entry = subsets
            .entry(key)
            .or_insert_with(|| (Vec::new(), Vec::new(), eports));
        if pod_ready(p) {
            entry.0.push(addr)
        } else {
            entry.1.push(addr)
        }
    }
    subsets
        .into_values()
        .map(|(ready, not_ready, ports)| {
            let mut s = json!({"ports": ports});
            if !ready.is_empty() {
                s["addresses"] = Value::Array(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = Value::Array(not_ready);
            }
            s
        })
        .collect()
}

/// Creates the Service's Endpoints, or updates their subsets when they changed.
fn write_endpoints(store: &Store, svc: &Value, subsets: Vec<Value>) {
    let ns = meta(svc, "namespace");
    let name = meta(svc, "name");
    match store.get("/endpoints", ns, name) {
        None => {
            let mut ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns, "labels": svc.pointer("/metadata/labels").cloned().unwrap_or(json!({}))}});
            if !subsets.is_empty() {
                ep["subsets"] = Value::Array(subsets);
            }
            create(store, "/endpoints", ns, ep);
        }
        Some(ep) => {
            let cur = ep.get("subsets").cloned().unwrap_or(json!([]));
            if cur != Value::Array(subsets.clone()) {
                modify(store, "/endpoints", &ep, |o| {
                    if subsets.is_empty() {
                        if let Some(m) = o.as_object_mut() {
                            m.remove("subsets");
                        }
                    } else {
                        o["subsets"] = Value::Array(subsets);
                    }
                });
            }
        }
    }
}

/// The proxy listeners every Service wants (address to ready backends), and which Service
/// each belongs to, for the event when one cannot listen.
#[derive(Default)]
struct Listeners {
    want: BTreeMap<SocketAddr, Vec<SocketAddr>>,
    owners: HashMap<SocketAddr, Arc<Value>>,
}

impl Listeners {
    /// A Service's listeners: each TCP port on its cluster IP and, for NodePort and
    /// LoadBalancer, on the host ports kind maps to its node port; a LoadBalancer's status
    /// names the cluster IP.
    fn add_service(
        &mut self,
        ctx: &Ctx,
        store: &Store,
        svc: &Arc<Value>,
        ports: &[Value],
        members: &[&Arc<Value>],
    ) {
        let Some(cluster_ip) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        else {
            return;
        };
        let ty = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP");
        for sp in ports {
            let Some(port) = tcp_port(sp) else {
                continue;
            };
            let backends: Vec<SocketAddr> = members
                .iter()
                .filter(|p| pod_ready(p))
                .filter_map(|p| {
                    let ip = p.pointer("/status/podIP")?.as_str()?.parse().ok()?;
                    Some(SocketAddr::new(ip, target_port(sp, p)?))
                })
                .collect();
            self.insert(SocketAddr::new(cluster_ip, port), &backends, svc);
            if ty == "NodePort" || ty == "LoadBalancer" {
                let node_port = sp.get("nodePort").and_then(Value::as_u64).unwrap_or(0);
                for m in ctx.proxies.mappings.iter().filter(|m| {
                    u64::from(m.container_port) == node_port
                        && m.protocol
                            .as_deref()
                            .is_none_or(|p| p.eq_ignore_ascii_case("tcp"))
                }) {
                    // kind's default listen address is 0.0.0.0; the simulator stays on loopback.
                    let ip = m
                        .listen_address
                        .as_deref()
                        .filter(|a| *a != "0.0.0.0")
                        .unwrap_or("127.0.0.1")
                        .parse()
                        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
                    self.insert(SocketAddr::new(ip, m.host_port), &backends, svc);
                }
            }
        }
        if ty == "LoadBalancer" {
            let status = json!({"loadBalancer": {"ingress": [{"ip": cluster_ip.to_string(), "ipMode": "VIP"}]}});
            if svc.get("status") != Some(&status) {
                write_status(store, "/services", svc, status);
            }
        }
    }

    /// The listeners of a Service without a selector: each TCP port on its cluster IP,
    /// forwarding to the ready addresses of its Endpoints' port of the same name (kube-proxy's
    /// rule), none when there are no Endpoints.
    fn add_manual(&mut self, svc: &Arc<Value>, endpoints: Option<&Value>) {
        let Some(cluster_ip) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        else {
            return;
        };
        let subsets: &[Value] = endpoints
            .and_then(|e| e.get("subsets"))
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice);
        for sp in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(port) = tcp_port(sp) else {
                continue;
            };
            let name = sp.get("name").and_then(Value::as_str).unwrap_or_default();
            let backends: Vec<SocketAddr> = subsets
                .iter()
                .flat_map(|subset| {
                    let target = subset
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .find(|p| p.get("name").and_then(Value::as_str).unwrap_or_default() == name)
                        .and_then(|p| p.get("port").and_then(Value::as_u64))
                        .and_then(|n| u16::try_from(n).ok());
                    subset
                        .get("addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(move |a| {
                            let ip = a.get("ip")?.as_str()?.parse().ok()?;
                            Some(SocketAddr::new(ip, target?))
                        })
                })
                .collect();
            self.insert(SocketAddr::new(cluster_ip, port), &backends, svc);
        }
    }

    /// One listener of `svc`.
    fn insert(&mut self, addr: SocketAddr, backends: &[SocketAddr], svc: &Arc<Value>) {
        self.want.insert(addr, backends.to_vec());
        self.owners.insert(addr, svc.clone());
    }
}

/// The port number of a Service port entry the proxy serves: TCP (the default protocol) and
/// a valid number. UDP and SCTP ports are not proxied.
fn tcp_port(sp: &Value) -> Option<u16> {
    let protocol = sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
    if protocol != "TCP" {
        return None;
    }
    sp.get("port")
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
}
