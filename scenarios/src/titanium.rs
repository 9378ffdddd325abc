//! Reaching the Titanium stack in any cluster, through the Kubernetes API only: the database
//! and Redis over port-forwards, the services through Istio's ingress gateway as production
//! traffic reaches them (its LoadBalancer IP, or a port-forward to it where the cluster has no
//! load balancer), replica counts through the Deployment API. Nothing here knows which
//! provider made the cluster.

use std::time::Duration;

use anyhow::Context;
use harness::cluster::Cluster;
use harness::cluster::forward::PortForward;
use harness::pg::{ConnParams, Secret};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret as KubeSecret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};

/// The namespace the runbook rebuilds.
pub const NAMESPACE: &str = "titanium-prod";
/// The PostgreSQL pod.
pub const PG_POD: &str = "postgresql-0";
/// The database.
pub const DATABASE: &str = "titanium";
/// The load generator Deployment.
pub const LOAD_GENERATOR: &str = "load-generator";
/// The Redis Deployment.
pub const REDIS: &str = "prod-redis-deployment";

/// The database password, read from the `postgresql-secret` the StatefulSet uses.
///
/// # Errors
/// When the Secret or its key is missing.
pub async fn db_password(client: &kube::Client) -> anyhow::Result<Secret> {
    let secret = Api::<KubeSecret>::namespaced(client.clone(), NAMESPACE)
        .get("postgresql-secret")
        .await
        .context("read secret postgresql-secret")?;
    let bytes = secret
        .data
        .and_then(|mut d| d.remove("POSTGRES_PASSWORD"))
        .context("secret postgresql-secret has no POSTGRES_PASSWORD")?;
    Ok(Secret::new(
        String::from_utf8(bytes.0).context("POSTGRES_PASSWORD is not UTF-8")?,
    ))
}

/// A port-forwarded connection to the cluster's database; the forward lives as long as this.
#[derive(Debug)]
pub struct Db {
    _forward: PortForward,
    /// Connection parameters on 127.0.0.1.
    pub params: ConnParams,
}

/// Forwards a local port to `postgresql-0:5432`.
///
/// # Errors
/// When the pod or the secret is missing.
pub async fn database(cluster: &impl Cluster) -> anyhow::Result<Db> {
    let client = cluster.client().await?;
    let password = db_password(&client).await?;
    let forward = PortForward::start(client, NAMESPACE, PG_POD, 5432).await?;
    let params = ConnParams {
        host: "127.0.0.1".into(),
        port: forward.port(),
        user: "postgres".into(),
        password: Some(password),
        dbname: DATABASE.into(),
    };
    Ok(Db {
        _forward: forward,
        params,
    })
}

/// The first Ready pod with label `app=<app>`.
///
/// # Errors
/// When none is Ready.
pub async fn ready_pod(client: &kube::Client, app: &str) -> anyhow::Result<String> {
    ready_pod_in(client, NAMESPACE, app).await
}

/// The first Ready pod with label `app=<app>` in `namespace`.
///
/// # Errors
/// When none is Ready.
pub async fn ready_pod_in(
    client: &kube::Client,
    namespace: &str,
    app: &str,
) -> anyhow::Result<String> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .with_context(|| format!("list pods app={app}"))?;
    pods.items
        .into_iter()
        .find(|p| harness::facts::pod_ready(p.status.as_ref()))
        .and_then(|p| p.metadata.name)
        .with_context(|| format!("no Ready pod with app={app} in {namespace}"))
}

/// Forwards a local port to `port` of a Ready pod of `app`.
///
/// # Errors
/// When no pod is Ready.
pub async fn forward_to(
    cluster: &impl Cluster,
    app: &str,
    port: u16,
) -> anyhow::Result<PortForward> {
    let client = cluster.client().await?;
    let pod = ready_pod(&client, app).await?;
    Ok(PortForward::start(client, NAMESPACE, &pod, port).await?)
}

/// The ingress gateway's Service (runbook 6.1: `kubectl get svc -n istio-system
/// istio-ingressgateway`).
pub const INGRESS_SERVICE: &str = "istio-ingressgateway";

/// The way in that production traffic takes: Istio's ingress gateway, routing by the
/// namespace's VirtualServices. A port-forward, when one is needed, lives as long as this.
#[derive(Debug)]
pub struct Ingress {
    /// `http://IP:PORT`.
    pub base_url: String,
    /// The path taken, for the report: the gateway, its address and the VirtualServices of
    /// [`NAMESPACE`] that it routes by.
    pub path: String,
    _forward: Option<PortForward>,
}

/// The ingress gateway of `cluster`: the `http2` port (80) of Service
/// `istio-system/istio-ingressgateway` on its LoadBalancer IP, as the runbook's
/// `$INGRESS_IP`; where the cluster gives it none (kind without MetalLB), a port-forward to a
/// Ready gateway pod, and the path says so.
///
/// # Errors
/// When the Service is missing (the infrastructure phase did not install the gateway), has no
/// HTTP port, or no gateway pod is Ready for the port-forward; when the VirtualServices
/// cannot be listed.
pub async fn ingress(cluster: &impl Cluster) -> anyhow::Result<Ingress> {
    let ns = harness::deploy::INGRESS_NAMESPACE;
    let client = cluster.client().await?;
    let service = Api::<Service>::namespaced(client.clone(), ns)
        .get(INGRESS_SERVICE)
        .await
        .with_context(|| {
            format!(
                "read service {ns}/{INGRESS_SERVICE} (the ingress gateway the infrastructure \
                 phase installs)"
            )
        })?;
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("http2"))
        .or_else(|| ports.iter().find(|p| p.port == 80))
        .with_context(|| format!("service {ns}/{INGRESS_SERVICE} has no http2 port or port 80"))?;
    let lb_ip = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()));
    let (base_url, via, forward) = match lb_ip {
        Some(ip) => (
            format!("http://{ip}:{}", port.port),
            format!(
                "{ns}/{INGRESS_SERVICE} {ip}:{} (its LoadBalancer IP)",
                port.port
            ),
            None,
        ),
        None => {
            let pod = ready_pod_in(&client, ns, INGRESS_SERVICE).await?;
            let target = match &port.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                    u16::try_from(*n).context("targetPort out of range")?
                }
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) => {
                    named_port(&client, ns, &pod, name).await?
                }
                None => u16::try_from(port.port).context("port out of range")?,
            };
            let forward = PortForward::start(client.clone(), ns, &pod, target).await?;
            (
                format!("http://127.0.0.1:{}", forward.port()),
                format!(
                    "{ns}/{INGRESS_SERVICE} by a port-forward to pod {pod}:{target} (the \
                     Service has no LoadBalancer IP on this cluster)"
                ),
                Some(forward),
            )
        }
    };
    let routes = virtual_services(&client).await?;
    Ok(Ingress {
        base_url,
        path: format!("{via} → {routes}"),
        _forward: forward,
    })
}

/// A container port of `pod` by name.
async fn named_port(client: &kube::Client, ns: &str, pod: &str, name: &str) -> anyhow::Result<u16> {
    let pod_object = Api::<Pod>::namespaced(client.clone(), ns)
        .get(pod)
        .await
        .with_context(|| format!("read pod {ns}/{pod}"))?;
    pod_object
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .with_context(|| format!("pod {ns}/{pod} has no container port named {name}"))
}

/// The VirtualServices of [`NAMESPACE`], named for the report ("no VirtualService" when there
/// are none: then the gateway has no route and answers 404).
async fn virtual_services(client: &kube::Client) -> anyhow::Result<String> {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1beta1", "VirtualService"),
        "virtualservices",
    );
    let list = Api::<DynamicObject>::namespaced_with(client.clone(), NAMESPACE, &resource)
        .list(&ListParams::default())
        .await
        .with_context(|| format!("list virtualservices in {NAMESPACE}"))?;
    let names: Vec<String> = list
        .items
        .iter()
        .filter_map(|v| v.metadata.name.clone())
        .map(|n| format!("{NAMESPACE}/{n}"))
        .collect();
    Ok(match names.as_slice() {
        [] => format!("no VirtualService in {NAMESPACE}"),
        [one] => format!("VirtualService {one}"),
        more => format!("VirtualServices {}", more.join(", ")),
    })
}

/// Sets a Deployment's replica count and waits until that many are ready, or, for zero, until
/// no pod of it exists (a terminating pod can still write; `status.replicas` no longer
/// counts it).
///
/// # Errors
/// When the API refuses or the deadline passes.
pub async fn scale(
    client: &kube::Client,
    name: &str,
    replicas: i32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("scale {name}"))?;
    let deadline = harness::ready::Deadline::new(timeout).polling(Duration::from_millis(100));
    harness::ready::deployment_scaled(client, NAMESPACE, name, replicas, deadline)
        .await
        .with_context(|| format!("scale deployment {name} to {replicas}"))?;
    Ok(())
}
