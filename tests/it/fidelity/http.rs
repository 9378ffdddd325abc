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
    call_with(client, method, path, content_type, "application/json", body).await
}

/// [`call`] with an `Accept` header of the caller's (a server-side Table).
pub(crate) async fn call_with(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    accept: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::ACCEPT, accept);
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

/// Watch `path` until `count` events arrived or `timeout` passed; the events in order.
///
/// # Errors
/// The request fails, the answer is not 200, a line is not JSON, or the deadline passes first.
pub(crate) async fn watch(
    client: kube::Client,
    path: String,
    count: usize,
    timeout: std::time::Duration,
) -> anyhow::Result<Vec<Value>> {
    let req = http::Request::builder()
        .method("GET")
        .uri(&path)
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::empty())
        .context("building a watch")?;
    let resp = client
        .send(req)
        .await
        .with_context(|| format!("watch {path}"))?;
    anyhow::ensure!(resp.status() == 200, "watch {path}: {}", resp.status());
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while events.len() < count {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .with_context(|| {
                format!(
                    "watch {path}: {} of {count} events before the deadline",
                    events.len()
                )
            })?;
        let Some(frame) = frame else {
            anyhow::bail!(
                "watch {path} ended after {} of {count} events",
                events.len()
            );
        };
        if let Ok(data) = frame.context("reading the watch")?.into_data() {
            buf.extend_from_slice(&data);
        }
        while let Some(n) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=n).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: Value = serde_json::from_slice(&line).context("a watch event")?;
            if event["type"] != "BOOKMARK" {
                events.push(event);
            }
        }
    }
    Ok(events)
}
