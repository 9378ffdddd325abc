//! `pods/log`: a container's output (stdout and stderr interleaved, as written), the current
//! or `previous` instance, `tailLines`, `limitBytes`, and `follow` until the instance ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::Shared;
use super::exec::{flag, param, query, running_container};
use crate::server::{SubresourceHandler, SubresourceTarget};
use crate::status::ApiError;

/// Serves `pods/log`.
pub(crate) struct LogHandler(pub(crate) Arc<Shared>);

impl SubresourceHandler for LogHandler {
    fn handle(&self, target: SubresourceTarget, req: Request) -> BoxFuture<'static, Response> {
        let shared = self.0.clone();
        Box::pin(async move {
            logs(shared, target, req)
                .await
                .unwrap_or_else(|e| e.into_response())
        })
    }
}

fn tail(data: &[u8], lines: usize) -> &[u8] {
    if lines == 0 {
        return &data[data.len()..];
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return &data[i + 1..];
            }
        }
    }
    data
}

async fn logs(
    shared: Arc<Shared>,
    target: SubresourceTarget,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query(&req)?;
    let (rt, name, info) = running_container(&shared, &target, param(&q, "container"), "log")?;
    let previous = flag(&q, "previous");
    let path: PathBuf = if previous {
        if info.logs.len() < 2 {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{name}\" in pod \"{}\" not found",
                target.name
            )));
        }
        info.logs[info.logs.len() - 2].clone()
    } else {
        info.logs.last().cloned().ok_or_else(|| {
            ApiError::bad_request(format!(
                "container \"{name}\" in pod \"{}\" is waiting to start: ContainerCreating",
                target.name
            ))
        })?
    };
    let data = tokio::fs::read(&path).await.unwrap_or_default();
    let tail_lines = param(&q, "tailLines").and_then(|n| n.parse::<usize>().ok());
    let mut first: Vec<u8> = match tail_lines {
        Some(n) => tail(&data, n).to_vec(),
        None => data.clone(),
    };
    if let Some(limit) = param(&q, "limitBytes").and_then(|n| n.parse::<usize>().ok()) {
        first.truncate(limit);
    }
    let follow = flag(&q, "follow") && !previous;
    let body = if !follow {
        Body::from(first)
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let instances = info.logs.len();
        let mut offset = data.len() as u64;
        let stopping = shared.stopping.clone();
        tokio::spawn(async move {
            if tx.send(Bytes::from(first)).await.is_err() {
                return;
            }
            let mut changed = rt.changed.subscribe();
            let mut last_round = false;
            loop {
                // Send what was appended since.
                if let Ok(mut f) = tokio::fs::File::open(&path).await
                    && f.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
                {
                    let mut buf = Vec::new();
                    if f.read_to_end(&mut buf).await.is_ok() && !buf.is_empty() {
                        offset += buf.len() as u64;
                        if tx.send(Bytes::from(buf)).await.is_err() {
                            return;
                        }
                    }
                }
                if last_round {
                    return;
                }
                // The instance has ended: one more read collects its last words.
                last_round = rt
                    .container(&name)
                    .is_none_or(|c| !c.running || c.logs.len() != instances);
                if last_round {
                    continue;
                }
                tokio::select! {
                    () = stopping.cancelled() => return,
                    _ = changed.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = tx.closed() => return,
                }
            }
        });
        crate::server::stream_body(rx)
    };
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_counts_lines_from_the_end() {
        assert_eq!(super::tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(super::tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(super::tail(b"a\n", 5), b"a\n");
        assert_eq!(super::tail(b"a\nb\n", 0), b"");
    }
}
