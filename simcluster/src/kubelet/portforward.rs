//! `pods/portforward` over WebSocket (`v4.channel.k8s.io`, as kube-rs `Api::portforward`
//! speaks it): port i of `ports=` uses channel 2i for data and 2i+1 for errors; each channel
//! starts with a frame of the channel byte and the port as u16 little-endian. Each port is
//! one TCP connection to the pod IP.

use std::sync::Arc;

use axum::extract::FromRequestParts as _;
use axum::extract::Request;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse as _, Response};
use futures::future::BoxFuture;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::Shared;
use super::exec::query;
use crate::server::{SubresourceHandler, SubresourceTarget};
use crate::status::ApiError;

/// Serves `pods/portforward`.
pub(crate) struct PortForwardHandler(pub(crate) Arc<Shared>);

impl SubresourceHandler for PortForwardHandler {
    fn handle(&self, target: SubresourceTarget, req: Request) -> BoxFuture<'static, Response> {
        let shared = self.0.clone();
        Box::pin(async move {
            forward(shared, target, req)
                .await
                .unwrap_or_else(|e| e.into_response())
        })
    }
}

async fn forward(
    shared: Arc<Shared>,
    target: SubresourceTarget,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query(&req)?;
    let mut ports = Vec::new();
    for (_, v) in q.iter().filter(|(k, _)| k == "ports") {
        for p in v.split(',') {
            ports.push(
                p.trim()
                    .parse::<u16>()
                    .map_err(|_| ApiError::bad_request(format!("invalid port {p:?}")))?,
            );
        }
    }
    if ports.is_empty() {
        return Err(ApiError::bad_request(
            "at least one port must be given (ports=N)",
        ));
    }
    let rt = shared
        .runtime(&target.namespace, &target.name)
        .ok_or_else(|| {
            if shared
                .store
                .get("/pods", &target.namespace, &target.name)
                .is_none()
            {
                ApiError::not_found(&target.resource, &target.name)
            } else {
                ApiError::bad_request(format!("pod {} is not running", target.name))
            }
        })?;
    let (mut parts, _body) = req.into_parts();
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|_| ApiError::bad_request("pods/portforward needs a WebSocket upgrade (v4.channel.k8s.io); SPDY is not supported"))?;
    let ws = ws.protocols(["v4.channel.k8s.io", "portforward.k8s.io"]);
    let ip = rt.ip;
    let pod = format!("{}/{}", target.namespace, target.name);
    let stopping = shared.stopping.clone();
    Ok(ws.on_upgrade(move |socket| async move {
        tokio::select! {
            () = session(socket, ip, ports, pod) => {}
            // The cluster is stopping: the session (and its connections) end now.
            () = stopping.cancelled() => {}
        }
    }))
}

fn frame(ch: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(ch);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

async fn session(socket: WebSocket, ip: std::net::Ipv4Addr, ports: Vec<u16>, pod: String) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let sender = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let data_ch = (2 * i) as u8;
        let _ = tx.send(frame(data_ch, &port.to_le_bytes())).await;
        let _ = tx.send(frame(data_ch + 1, &port.to_le_bytes())).await;
        match TcpStream::connect((ip, *port)).await {
            Ok(s) => {
                let (mut r, w) = s.into_split();
                writers.push(Some(w));
                let tx = tx.clone();
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tx.send(frame(data_ch, &buf[..n])).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }));
            }
            Err(e) => {
                writers.push(None);
                let msg = format!(
                    "error forwarding port {port} to pod {pod}: failed to connect to {ip}:{port}: {e}"
                );
                let _ = tx.send(frame(data_ch + 1, msg.as_bytes())).await;
            }
        }
    }
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Binary(b) if b.len() > 1 => {
                let ch = b[0] as usize;
                if ch.is_multiple_of(2)
                    && let Some(Some(w)) = writers.get_mut(ch / 2)
                    && w.write_all(&b[1..]).await.is_err()
                {
                    writers[ch / 2] = None;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    for w in writers.iter_mut().flatten() {
        let _ = w.shutdown().await;
    }
    // The pod's answers still in flight go out before the socket closes.
    for mut r in readers {
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut r)
            .await
            .is_err()
        {
            r.abort();
        }
    }
    drop(tx);
    let _ = sender.await;
}
