//! `pods/exec` over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`): the command runs
//! as a host process group with the container's environment and working directory (plus
//! `PGHOST`/`PGPORT` for PostgreSQL containers). Frames carry a channel byte: 0 stdin,
//! 1 stdout, 2 stderr, 3 the final Status; in v5 `[255, 0]` closes stdin. Output is sent
//! as raw bytes, all of it before the Status, then a normal close.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use axum::extract::FromRequestParts as _;
use axum::extract::Request;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse as _, Response};
use futures::future::BoxFuture;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::Shared;
use super::process::{Spawn, signal_group};
use crate::server::{SubresourceHandler, SubresourceTarget};
use crate::status::ApiError;

/// Serves `pods/exec`.
pub(crate) struct ExecHandler(pub(crate) Arc<Shared>);

impl SubresourceHandler for ExecHandler {
    fn handle(&self, target: SubresourceTarget, req: Request) -> BoxFuture<'static, Response> {
        let shared = self.0.clone();
        Box::pin(async move {
            exec(shared, target, req)
                .await
                .unwrap_or_else(|e| e.into_response())
        })
    }
}

pub(crate) fn query(req: &Request) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(req.uri().query().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
}

pub(crate) fn flag(q: &[(String, String)], k: &str) -> bool {
    q.iter()
        .any(|(n, v)| n == k && matches!(v.as_str(), "true" | "1"))
}

pub(crate) fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// The pod, its running container `container` (or the first), and what to know about it.
pub(crate) fn running_container(
    shared: &Shared,
    target: &SubresourceTarget,
    container: Option<&str>,
    action: &str,
) -> Result<
    (
        Arc<super::pod::PodRuntime>,
        String,
        super::pod::ContainerInfo,
    ),
    ApiError,
> {
    let pod = shared
        .store
        .get("/pods", &target.namespace, &target.name)
        .ok_or_else(|| ApiError::not_found(&target.resource, &target.name))?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    if action == "exec" && matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    let names: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    let name = match container.filter(|c| !c.is_empty()) {
        Some(c) => {
            let inits = pod
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|i| i.get("name").and_then(Value::as_str) == Some(c));
            if !names.iter().any(|n| n == c) && !inits {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {}",
                    target.name
                )));
            }
            c.to_owned()
        }
        None => names
            .first()
            .cloned()
            .ok_or_else(|| ApiError::bad_request("the pod has no containers"))?,
    };
    let rt = shared.runtime(&target.namespace, &target.name);
    let info = rt.as_ref().and_then(|r| r.container(&name));
    match (rt, info) {
        (Some(rt), Some(info)) => Ok((rt, name, info)),
        _ => Err(ApiError::bad_request(format!(
            "container \"{name}\" in pod \"{}\" is waiting to start: ContainerCreating",
            target.name
        ))),
    }
}

async fn exec(
    shared: Arc<Shared>,
    target: SubresourceTarget,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query(&req)?;
    let argv: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if argv.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let (_rt, _name, info) = running_container(&shared, &target, param(&q, "container"), "exec")?;
    if !info.running {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: container not found (\"{_name}\")"
        )));
    }
    let stdin = flag(&q, "stdin");
    let mut argv: Vec<String> = argv.iter().map(|a| info.rewriter.apply(a)).collect();
    if Path::new(&argv[0]).file_name().is_some_and(|n| n == "tar") {
        // `kubectl cp` from a pod runs `tar cf - PATH` and expects the member names to be
        // the container's path: name the members as the container sees them.
        let transforms: Vec<String> = info
            .rewriter
            .mounts()
            .iter()
            .filter(|(_, host)| argv.iter().any(|a| a.contains(host.as_str())))
            .map(|(c, host)| {
                format!(
                    "--transform=s|^{}|{}|",
                    host.trim_start_matches('/'),
                    c.trim_start_matches('/')
                )
            })
            .collect();
        if !transforms.is_empty() {
            // At the end: `tar cf - PATH` only parses its old-style first argument in first place.
            argv.extend(transforms);
            argv.push("--show-transformed-names".to_owned());
        }
    }
    let mut env = info.env.clone();
    if let Some((sock, port)) = &info.pg {
        env.retain(|(k, _)| k != "PGHOST" && k != "PGPORT");
        env.push(("PGHOST".into(), sock.to_string_lossy().into_owned()));
        env.push(("PGPORT".into(), port.to_string()));
    }
    let spawn = Spawn {
        program: argv[0].clone(),
        args: argv[1..].to_vec(),
        env,
        cwd: info.cwd.clone(),
        run_as: None,
    };
    let (mut parts, _body) = req.into_parts();
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|_| ApiError::bad_request("pods/exec needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not supported"))?;
    let ws = ws
        .protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .max_message_size(256 << 20);
    let v5 = ws
        .selected_protocol()
        .is_some_and(|p| p.as_bytes() == b"v5.channel.k8s.io");
    let stopping = shared.stopping.clone();
    Ok(ws.on_upgrade(move |socket| async move {
        tokio::select! {
            () = session(shared, socket, spawn, argv, stdin, v5) => {}
            // The cluster is stopping: its processes are being killed and the session ends.
            () = async { stopping.cancelled().await; tokio::time::sleep(std::time::Duration::from_secs(5)).await } => {}
        }
    }))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// The Status frame for an exit code (client-go's remotecommand v4 format).
pub(crate) fn exit_status(argv: &[String], code: Option<i32>, error: Option<&str>) -> Value {
    match (code, error) {
        (_, Some(e)) => {
            json!({"metadata": {}, "status": "Failure", "message": e, "reason": "InternalError", "code": 500})
        }
        (Some(0), None) => json!({"metadata": {}, "status": "Success"}),
        (code, None) => {
            let code = code.unwrap_or(137);
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", argv.join(" ")),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
        }
    }
}

async fn pump(mut r: impl tokio::io::AsyncRead + Unpin, channel: u8, tx: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn session(
    shared: Arc<Shared>,
    socket: WebSocket,
    spawn: Spawn,
    argv: Vec<String>,
    stdin: bool,
    v5: bool,
) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(8);
    let sender = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let child = shared.reaper.command(&spawn).and_then(|mut c| {
        c.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn()
    });
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            // As a container runtime reports an exec of a missing program.
            let msg = format!(
                "OCI runtime exec failed: exec failed: unable to start container process: {e}: unknown\r\n"
            );
            let _ = tx.send(frame(2, msg.as_bytes())).await;
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            close_with_status(tx, &argv, Some(code)).await;
            let _ = sender.await;
            return;
        }
    };
    let pgid = child.id().map_or(0, |p| p as i32);
    shared.reaper.track(pgid);
    let out = tokio::spawn(pump(
        child.stdout.take().expect("stdout is piped"),
        1,
        tx.clone(),
    ));
    let err = tokio::spawn(pump(
        child.stderr.take().expect("stderr is piped"),
        2,
        tx.clone(),
    ));
    let child_stdin = child.stdin.take();
    let client_gone = tokio_util::sync::CancellationToken::new();
    let gone = client_gone.clone();
    let reader = tokio::spawn(async move {
        forward_stdin(&mut stream, child_stdin, v5).await;
        gone.cancel();
    });
    let status = tokio::select! {
        s = child.wait() => s.ok(),
        () = client_gone.cancelled() => {
            // The client went away: nobody reads the output any more, and a pod's exec
            // sessions must not outlive their callers, so the command ends with it.
            match tokio::time::timeout(std::time::Duration::from_millis(200), child.wait()).await {
                Ok(s) => s.ok(),
                Err(_) => {
                    signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
                    child.wait().await.ok()
                }
            }
        }
    };
    let _ = out.await;
    let _ = err.await;
    signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
    shared.reaper.untrack(pgid);
    use std::os::unix::process::ExitStatusExt as _;
    let code = status.and_then(|s| s.code().or_else(|| s.signal().map(|sig| 128 + sig)));
    close_with_status(tx, &argv, code).await;
    let _ = sender.await;
    reader.abort();
}

/// Channel 0 of the client's messages into the command's stdin until the client closes; with
/// protocol v5, a close of channel 0 closes stdin.
async fn forward_stdin(
    stream: &mut futures::stream::SplitStream<WebSocket>,
    mut child_stdin: Option<tokio::process::ChildStdin>,
    v5: bool,
) {
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Binary(b) if !b.is_empty() => match b[0] {
                0 => {
                    if let Some(w) = child_stdin.as_mut()
                        && w.write_all(&b[1..]).await.is_err()
                    {
                        child_stdin = None;
                    }
                }
                255 if v5 && b.get(1) == Some(&0) => {
                    if let Some(mut w) = child_stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
}

/// Sends the exit status on channel 3 and closes the session.
async fn close_with_status(tx: mpsc::Sender<Message>, argv: &[String], code: Option<i32>) {
    let status = exit_status(argv, code, None);
    let _ = tx.send(frame(3, status.to_string().as_bytes())).await;
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}
