//! `harness::ready`, the one way to wait, against the simulated cluster: a workload that never
//! becomes ready is named with its replica counts and its pod's state; one that does passes;
//! a Deployment scaled to zero waits until its pods are gone.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use harness::cluster::Cluster;
use harness::cluster::sim::{SimOptions, SimProvider};
use harness::ready::{self, Deadline, WaitError, Workload};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const NS: &str = "waits";

/// A Deployment of the pause image; with `probe_port`, of redis (the simulator runs the
/// machine's redis-server) with a readiness probe on a port nobody listens on, so its pod
/// runs and never becomes Ready.
fn deployment(name: &str, probe_port: Option<u16>) -> Result<Deployment> {
    let mut container = json!({"name": "main", "image": "registry.k8s.io/pause:3.9"});
    if let Some(port) = probe_port {
        container["image"] = json!("redis:7");
        container["readinessProbe"] =
            json!({"tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 1});
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [container]}}}
    }))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_name_what_is_not_ready_and_pass_what_is() -> Result<()> {
    let cluster = SimProvider::create(SimOptions::default()).await?;
    let client = cluster.client().await?;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    deployments
        .create(&PostParams::default(), &deployment("fine", None)?)
        .await?;
    let fine = Deadline::new(Duration::from_secs(60));
    ready::workload(&client, NS, Workload::Deployment, "fine", fine)
        .await
        .context("a pause pod without probes becomes ready")?;
    ready::namespace(&client, NS, fine).await?;

    // A pod that runs and never passes its readiness probe.
    deployments
        .create(&PostParams::default(), &deployment("never", Some(1))?)
        .await?;
    let short = Deadline::new(Duration::from_secs(3));
    let err = ready::workload(&client, NS, Workload::Deployment, "never", short)
        .await
        .expect_err("a pod failing its readiness probe is not ready");
    let text = err.to_string();
    let WaitError::NotReady { what, parts, .. } = &err else {
        anyhow::bail!("expected NotReady, got {text}");
    };
    ensure!(what == "Deployment waits/never", "{text}");
    ensure!(parts[0] == "0/1 replicas ready", "{text}");
    ensure!(
        parts
            .iter()
            .any(|p| p.starts_with("pod never-") && p.contains("Ready False")),
        "{text}"
    );
    let err = ready::namespace(&client, NS, short)
        .await
        .expect_err("the namespace holds a pod that is not ready");
    let WaitError::NotReady { parts, .. } = &err else {
        anyhow::bail!("expected NotReady, got {err}");
    };
    ensure!(
        parts
            .iter()
            .any(|p| p == "Deployment never: 0/1 replicas ready")
            && parts.iter().any(|p| p.starts_with("pod never-"))
            && !parts.iter().any(|p| p.contains("fine")),
        "{err}"
    );

    // Scaled to zero: settled once no pod of it is left.
    deployments
        .patch(
            "never",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    ready::deployment_scaled(&client, NS, "never", 0, fine).await?;
    ready::namespace(&client, NS, fine).await?;
    Ok(())
}
