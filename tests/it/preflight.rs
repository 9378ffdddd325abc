//! The read-only preflight against a simulated cluster running the Titanium stack, as it would
//! run against production: GO on a healthy cluster, NO-GO with one permission denied, and
//! nothing changed either way.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::ensure_titanium_built;
use harness::cluster::Cluster;
use harness::cluster::sim::{SimOptions, SimProvider};
use harness::preflight::{CheckStatus, PreflightOptions};

/// Every object of the namespace with its resourceVersion, except the kinds the kubelet and
/// controllers rewrite on their own (pods' status, events, endpoints, leases).
async fn versions(cluster: &SimProvider) -> BTreeMap<String, String> {
    let source = harness::backup::KubeSource {
        client: cluster.client().await.unwrap(),
        namespace: "titanium-prod".into(),
    };
    harness::backup::list_namespace(&source)
        .await
        .unwrap()
        .objects
        .iter()
        .filter(|o| {
            !matches!(
                o["kind"].as_str(),
                Some("Pod" | "Event" | "Endpoints" | "EndpointSlice" | "Lease")
            )
        })
        .map(|o| {
            (
                format!(
                    "{} {}",
                    o["kind"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                ),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

async fn preflight_on(
    deny: Vec<simcluster::AccessRule>,
) -> (harness::preflight::PreflightReport, bool) {
    let mut cluster = SimProvider::create(SimOptions {
        deny,
        ..SimOptions::default()
    })
    .await
    .unwrap();
    harness::deploy::apply_kustomize(&cluster, &harness::deploy::overlay("sim"))
        .await
        .unwrap();
    let client = cluster.client().await.unwrap();
    harness::deploy::wait_ready(&client, "titanium-prod", Duration::from_secs(120))
        .await
        .unwrap();
    let before = versions(&cluster).await;
    let dir = tempfile::tempdir().unwrap();
    let report = harness::preflight::run(
        client,
        &PreflightOptions::runbook("titanium-prod", dir.path().to_path_buf()),
    )
    .await;
    let after = versions(&cluster).await;
    cluster.destroy().await.unwrap();
    (report, before == after && !before.is_empty())
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_is_go_on_a_healthy_cluster_no_go_with_a_permission_denied_and_changes_nothing() {
    ensure_titanium_built();
    let (green, unchanged) = preflight_on(Vec::new()).await;
    assert!(green.go(), "a healthy cluster must be GO:\n{green}");
    assert!(unchanged, "the preflight changed objects");
    for name in [
        "postgres in pod titanium-prod/postgresql-0",
        "table counts",
        "pvcs bound in titanium-prod",
        "pg_dump matches server",
    ] {
        let check = green
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}:\n{green}"));
        assert_eq!(check.status, CheckStatus::Pass, "{name}: {}", check.detail);
    }
    assert!(
        green
            .estimate
            .as_ref()
            .is_some_and(|e| e.database_bytes > 0),
        "no estimate:\n{green}"
    );

    // A permission the deployment itself does not use (the runbook's "Namespace 생성/삭제 권한").
    let deny: simcluster::AccessRule = "delete:namespaces".parse().unwrap();
    let (red, unchanged) = preflight_on(vec![deny]).await;
    assert!(!red.go(), "a denied permission must be NO-GO:\n{red}");
    assert!(unchanged, "the preflight changed objects");
    let failed: Vec<&str> = red.failures().map(|c| c.name.as_str()).collect();
    assert_eq!(failed, ["permission: delete namespaces"], "{red}");
}
