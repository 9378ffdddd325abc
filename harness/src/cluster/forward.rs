//! A local port forward to a pod, like `kubectl port-forward`, over the Kubernetes API's
//! `pods/portforward` (kube-rs). Every connection to the local port on 127.0.0.1 opens its own
//! forward, so local tools (psql, pg_restore, the gates' queries) reach a database in any
//! cluster, simulated, kind or real.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::ClusterError;

/// A listening forward. Dropping it stops accepting and ends the open connections.
#[derive(Debug)]
pub struct PortForward {
    local: SocketAddr,
    stop: CancellationToken,
}

impl PortForward {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `port` of `pod`.
    /// Checks first that the pod exists.
    ///
    /// # Errors
    /// [`ClusterError::Api`] when the pod cannot be read, [`ClusterError::Io`] when no local
    /// port can be bound.
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<Self, ClusterError> {
        let api: Api<Pod> = Api::namespaced(client, namespace);
        api.get(pod).await.map_err(|source| ClusterError::Api {
            what: format!("get pod {namespace}/{pod}"),
            source,
        })?;
        let listener =
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|source| ClusterError::Io {
                    action: "bind a local port on",
                    path: "127.0.0.1".into(),
                    source,
                })?;
        let local = listener.local_addr().map_err(|source| ClusterError::Io {
            action: "read the local port of",
            path: "127.0.0.1".into(),
            source,
        })?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let pod = pod.to_owned();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut socket, _)) = accepted else {
                    continue;
                };
                let (api, pod, token) = (api.clone(), pod.clone(), token.clone());
                tokio::spawn(async move {
                    let mut forwarder = match api.portforward(&pod, &[port]).await {
                        Ok(f) => f,
                        Err(err) => {
                            tracing::warn!(error = %err, %pod, port, "port-forward failed");
                            return;
                        }
                    };
                    let Some(mut upstream) = forwarder.take_stream(port) else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        result = tokio::io::copy_bidirectional(&mut socket, &mut upstream) => {
                            if let Err(err) = result {
                                tracing::debug!(error = %err, %pod, port, "port-forward connection ended");
                            }
                        }
                    }
                    drop(upstream);
                    let _ = forwarder.join().await;
                });
            }
        });
        Ok(Self { local, stop })
    }

    /// The local address to connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The local port.
    pub fn port(&self) -> u16 {
        self.local.port()
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
