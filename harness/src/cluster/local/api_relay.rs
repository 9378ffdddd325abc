//! The API server as pods reach it: a TCP relay on the pod bridge's gateway
//! ([`super::GATEWAY`]`:`[`API_RELAY_PORT`]) to the API server on 127.0.0.1, and the
//! `default/kubernetes` Endpoints pointing at it, so that `KUBERNETES_SERVICE_HOST:443`
//! (10.96.0.1, kube-proxy's rule) reaches the API server from a pod as on any cluster. The API
//! server listens on 127.0.0.1 only and runs with `--endpoint-reconciler-type=none` (its own
//! endpoint would be 127.0.0.1, which Endpoints refuse), so the provider writes them instead.
//! TLS passes through untouched: the serving certificate names 10.96.0.1.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Endpoints;
use kube::api::{Api, Patch, PatchParams};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The relay's port on the bridge's gateway.
pub(crate) const API_RELAY_PORT: u16 = 6443;

/// The running relay; stopped on drop.
#[derive(Debug)]
pub(crate) struct ApiRelay {
    accept: JoinHandle<()>,
}

impl ApiRelay {
    /// Binds `listen`, forwards every connection to `api`, and points the `kubernetes`
    /// Endpoints at `listen`.
    pub(crate) async fn start(
        client: kube::Client,
        listen: SocketAddr,
        api: SocketAddr,
    ) -> Result<Self, std::io::Error> {
        let listener = TcpListener::bind(listen).await?;
        let accept = tokio::spawn(accept_loop(listener, api));
        let relay = ApiRelay { accept };
        let endpoints = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": listen.ip().to_string()}],
                "ports": [{"name": "https", "port": listen.port(), "protocol": "TCP"}],
            }],
        });
        Api::<Endpoints>::namespaced(client, "default")
            .patch(
                "kubernetes",
                &PatchParams::apply("rebuild-rehearsal-local").force(),
                &Patch::Apply(&endpoints),
            )
            .await
            .map_err(std::io::Error::other)?;
        Ok(relay)
    }
}

impl Drop for ApiRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, api: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            match TcpStream::connect(api).await {
                Ok(mut outbound) => {
                    // Either side closing ends the relay; errors are the peers' business.
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(err) => tracing::warn!(error = %err, "API relay: cannot reach the API server"),
            }
        });
    }
}
