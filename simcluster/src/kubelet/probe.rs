//! Probes: `exec` (a command with the container's environment, exit 0 passes), `tcpSocket`
//! (a connection to the pod IP) and `httpGet` (a status from 200 to 399), with the
//! declared delays, periods and thresholds (scaled by the kubelet's time scale) and timeouts.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::Shared;
use super::process::{Spawn, signal_group};

/// What a probe runs against.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) ip: Ipv4Addr,
    /// Named container ports.
    pub(crate) ports: Vec<(String, u16)>,
    /// How exec probes run.
    pub(crate) spawn: Spawn,
    pub(crate) rewriter: super::env::Rewriter,
}

/// The declared timing of a probe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) initial_delay: Duration,
    pub(crate) period: Duration,
    pub(crate) timeout: Duration,
    pub(crate) success_threshold: u32,
    pub(crate) failure_threshold: u32,
}

impl Timing {
    pub(crate) fn of(shared: &Shared, probe: &Value) -> Timing {
        let f = |k: &str, d: f64| probe.get(k).and_then(Value::as_f64).unwrap_or(d);
        Timing {
            initial_delay: shared.cfg.scaled(f("initialDelaySeconds", 0.0)),
            period: shared
                .cfg
                .scaled(f("periodSeconds", 10.0))
                .max(Duration::from_millis(100)),
            // Timeouts stay real: a slow answer is slow however fast the clock runs.
            timeout: Duration::from_secs_f64(f("timeoutSeconds", 1.0).max(1.0)),
            success_threshold: f("successThreshold", 1.0).max(1.0) as u32,
            failure_threshold: f("failureThreshold", 3.0).max(1.0) as u32,
        }
    }
}

fn port_of(v: Option<&Value>, t: &Target) -> Option<u16> {
    let v = v?;
    if let Some(n) = v.as_u64() {
        return u16::try_from(n).ok();
    }
    let s = v.as_str()?;
    s.parse()
        .ok()
        .or_else(|| t.ports.iter().find(|(n, _)| n == s).map(|(_, p)| *p))
}

/// Run one probe once.
///
/// # Errors
/// Why it failed, as the kubelet's `Unhealthy` event words it.
pub(crate) async fn check(
    shared: &Shared,
    probe: &Value,
    t: &Target,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(e) = probe.get("exec") {
        return exec_probe(shared, e, t, timeout).await;
    }
    if let Some(tcp) = probe.get("tcpSocket") {
        let port = port_of(tcp.get("port"), t).ok_or("tcpSocket probe has no usable port")?;
        let host = tcp
            .get("host")
            .and_then(Value::as_str)
            .map_or_else(|| t.ip.to_string(), str::to_owned);
        return match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(h) = probe.get("httpGet") {
        return http_probe(h, t, timeout).await;
    }
    Err("probe has no handler (exec, tcpSocket or httpGet)".into())
}

/// An exec probe: the command in the container's environment, through the reaper, its
/// process group killed afterwards; fails on a non-zero exit with what it printed.
async fn exec_probe(
    shared: &Shared,
    e: &Value,
    t: &Target,
    timeout: Duration,
) -> Result<(), String> {
    let argv: Vec<String> = e
        .get("command")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| t.rewriter.apply(s))
        .collect();
    let Some((program, args)) = argv.split_first() else {
        return Err("exec probe has no command".into());
    };
    let spec = Spawn {
        program: program.clone(),
        args: args.to_vec(),
        ..t.spawn.clone()
    };
    let mut cmd = shared.reaper.command(&spec).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    let pgid = child.id().map(|p| p as i32);
    if let Some(g) = pgid {
        shared.reaper.track(g);
    }
    let out = tokio::time::timeout(timeout, child.wait_with_output()).await;
    if let Some(g) = pgid {
        signal_group(g, nix::sys::signal::Signal::SIGKILL);
        shared.reaper.untrack(g);
    }
    match out {
        Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => {
            let mut msg = String::from_utf8_lossy(&o.stdout).into_owned();
            msg.push_str(&String::from_utf8_lossy(&o.stderr));
            Err(format!(
                "command {:?} failed: {}",
                argv.join(" "),
                msg.trim()
            ))
        }
    }
}

/// An HTTP GET probe, as the kubelet sends it (its User-Agent, the probe's headers); a status
/// from 200 to 399 passes.
async fn http_probe(h: &Value, t: &Target, timeout: Duration) -> Result<(), String> {
    let port = port_of(h.get("port"), t).ok_or("httpGet probe has no usable port")?;
    let host = h
        .get("host")
        .and_then(Value::as_str)
        .map_or_else(|| t.ip.to_string(), str::to_owned);
    let path = h.get("path").and_then(Value::as_str).unwrap_or("/");
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for hd in h
        .get("httpHeaders")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(n), Some(v)) = (
            hd.get("name").and_then(Value::as_str),
            hd.get("value").and_then(Value::as_str),
        ) {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    req.push_str("\r\n");
    let attempt = async {
        let mut s = TcpStream::connect((host.as_str(), port)).await?;
        s.write_all(req.as_bytes()).await?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let k = s.read(&mut buf[n..]).await?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(format!(
            "Get \"http://{host}:{port}{path}\": context deadline exceeded"
        )),
        Ok(Err(e)) => Err(format!("Get \"http://{host}:{port}{path}\": {e}")),
        Ok(Ok(head)) => {
            let code: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
    }
}
