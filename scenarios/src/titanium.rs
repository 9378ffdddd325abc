//! Reaching the Titanium stack in any cluster, through the Kubernetes API only: the database
//! and Redis over port-forwards, the gateway over a port-forward to one of its pods, replica
//! counts through the Deployment API. Nothing here knows which provider made the cluster.

use std::time::Duration;

use anyhow::Context;
use harness::cluster::Cluster;
use harness::cluster::forward::PortForward;
use harness::pg::{ConnParams, Secret};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret as KubeSecret};
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
