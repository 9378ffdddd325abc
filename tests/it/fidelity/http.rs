//! Raw requests through the kube-rs client: the status code and body as the server sent them,
//! errors included (the comparison needs the `Status` bodies, not client errors).

use std::path::Path;

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

/// A client for the cluster of `kubeconfig`.
pub(crate) async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("kubeconfig")?;
    kube::Client::try_from(config).map_err(|e| anyhow::anyhow!("client: {e:?}"))
}

/// One request; the body as JSON when it is JSON, else as a string.
pub(crate) async fn call(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::ACCEPT, "application/json");
    if !content_type.is_empty() {
        req = req.header(http::header::CONTENT_TYPE, content_type);
    }
    let req = req
        .body(kube::client::Body::from(body))
        .context("building a request")?;
    let resp = client
        .send(req)
        .await
        .with_context(|| format!("{method} {path}"))?;
    let code = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer to {method} {path}"))?
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((code, value))
}
