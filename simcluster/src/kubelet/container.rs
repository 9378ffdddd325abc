//! One container: build its environment and command, start its process group, run its
//! probes, stop it gracefully, and restart it per `restartPolicy` with CrashLoopBackOff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::env::{Rewriter, container_env, expand};
use super::images::{ImageProgram, Runtime};
use super::pod::{PodCtx, mounts_of};
use super::probe::{self, Target, Timing};
use super::process::{Spawn, signal_group};
use crate::controllers::workloads::events::EventKind;

const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How an instance of the container runs.
pub(crate) enum Launch {
    /// A process.
    Process { spawn: Spawn, stop_signal: Signal },
    /// PostgreSQL: the entrypoint's preparation, then the server.
    Postgres(Box<super::postgres::Plan>),
    /// Nothing (a pause container).
    Pause,
}

/// Everything about one instance before it starts.
pub(crate) struct Prepared {
    pub(crate) launch: Launch,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: PathBuf,
    pub(crate) rewriter: Rewriter,
    pub(crate) ports: Vec<(String, u16)>,
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// Prepare an instance. `Err((reason, message))` is a waiting state.
fn prepare(ctx: &PodCtx, spec: &Value) -> Result<Prepared, (String, String)> {
    let shared = &ctx.shared;
    let rt = &ctx.rt;
    let image = spec
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let runtime = shared.cfg.images.runtime(image);
    let mounts = mounts_of(&ctx.volumes, spec);
    let ip = rt.ip.to_string();
    let rewriter = Rewriter::for_pod(&shared.store, &rt.namespace, &ip, &mounts);
    let rootfs = rt.dir.join("rootfs");
    let env = environment(ctx, spec, image, &runtime, &rewriter, &ip)?;
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let cwd = working_dir(spec, &rewriter, &rootfs);
    let _ = std::fs::create_dir_all(&cwd);
    let _ = std::fs::create_dir_all(rootfs.join("root"));
    let argv = |v: Option<&Value>| {
        strs(v)
            .into_iter()
            .map(|a| rewriter.apply(&expand(&a, &vars)))
            .collect::<Vec<_>>()
    };
    let command_v = argv(spec.get("command"));
    let args_v = argv(spec.get("args"));
    let ports = container_ports(spec);
    let base_spawn = Spawn {
        program: String::new(),
        args: Vec::new(),
        env: env.clone(),
        cwd: cwd.clone(),
        run_as: None,
    };
    let launch = if let Some((program, rest)) = command_v.split_first() {
        let mut args = rest.to_vec();
        args.extend(args_v);
        Launch::Process {
            spawn: Spawn {
                program: program.clone(),
                args,
                ..base_spawn
            },
            stop_signal: Signal::SIGTERM,
        }
    } else {
        match &runtime {
            Runtime::Postgres => {
                let port = vars
                    .get("PGPORT")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(5432);
                let plan = super::postgres::plan(ctx, image, &env, &rewriter, &args_v, port)
                    .map_err(|m| ("CreateContainerError".to_owned(), m))?;
                Launch::Postgres(Box::new(plan))
            }
            Runtime::Redis => {
                let port = ports.first().map_or(6379, |(_, p)| *p);
                let data = rewriter
                    .host_path("/data")
                    .unwrap_or_else(|| rootfs.join("data"));
                redis_launch(&ip, port, data, args_v, base_spawn)
            }
            Runtime::Program(p) => program_launch(ctx, image, p, args_v, base_spawn)?,
            Runtime::Pause => Launch::Pause,
        }
    };
    Ok(Prepared {
        launch,
        env,
        cwd,
        rewriter,
        ports,
    })
}

/// The container's environment: PATH (with the PostgreSQL binaries for its image), HOSTNAME
/// and HOME, then a mapped program's own variables and the container's `env`/`envFrom` (which
/// override them), paths in values rewritten to the host's (PATH and HOME aside).
fn environment(
    ctx: &PodCtx,
    spec: &Value,
    image: &str,
    runtime: &Runtime,
    rewriter: &Rewriter,
    ip: &str,
) -> Result<Vec<(String, String)>, (String, String)> {
    let rt = &ctx.rt;
    let rootfs = rt.dir.join("rootfs");
    let mut path = BASE_PATH.to_owned();
    if *runtime == Runtime::Postgres
        && let Some(bin) = super::postgres::bin_dir(image)
    {
        path = format!("{}:{path}", bin.display());
    }
    let base = vec![
        ("PATH".to_owned(), path),
        ("HOSTNAME".to_owned(), rt.name.clone()),
        (
            "HOME".to_owned(),
            rootfs.join("root").to_string_lossy().into_owned(),
        ),
    ];
    // Downward API fields the pod object did not have yet when it started.
    let mut pod = ctx.pod.clone();
    pod["status"]["podIP"] = json!(ip);
    pod["status"]["hostIP"] = json!("127.0.0.1");
    let env = container_env(&ctx.shared.store, &pod, spec, base)
        .map_err(|m| ("CreateContainerConfigError".to_owned(), m))?;
    let mut vars: BTreeMap<String, String> = env.iter().cloned().collect();
    vars.insert("POD_IP".into(), ip.to_owned());
    vars.insert("POD_NAME".into(), rt.name.clone());
    vars.insert("POD_NAMESPACE".into(), rt.namespace.clone());
    // A mapped program's own variables come first; the container's override them.
    let mut env_all: Vec<(String, String)> = Vec::new();
    if let Runtime::Program(p) = runtime {
        for (k, v) in &p.env {
            if !env.iter().any(|(n, _)| n == k) {
                env_all.push((k.clone(), expand(v, &vars)));
            }
        }
    }
    env_all.extend(env);
    Ok(env_all
        .into_iter()
        .map(|(k, v)| {
            let v = if k == "PATH" || k == "HOME" {
                v
            } else {
                rewriter.apply(&v)
            };
            (k, v)
        })
        .collect())
}

/// `workingDir` on the host (its mount, else under the root file system), or the root file
/// system itself.
fn working_dir(spec: &Value, rewriter: &Rewriter, rootfs: &Path) -> PathBuf {
    match spec
        .get("workingDir")
        .and_then(Value::as_str)
        .filter(|w| !w.is_empty())
    {
        Some(w) => rewriter
            .host_path(w)
            .unwrap_or_else(|| rootfs.join(w.trim_start_matches('/'))),
        None => rootfs.to_owned(),
    }
}

/// The container's named ports.
fn container_ports(spec: &Value) -> Vec<(String, u16)> {
    spec.get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                u16::try_from(p.get("containerPort")?.as_u64()?).ok()?,
            ))
        })
        .collect()
}

/// The machine's redis-server on the pod's IP and `port`, its data in `data` (created), with
/// the container's arguments after the image's own.
fn redis_launch(ip: &str, port: u16, data: PathBuf, args_v: Vec<String>, base: Spawn) -> Launch {
    let _ = std::fs::create_dir_all(&data);
    let mut args = vec![
        "--bind".to_owned(),
        ip.to_owned(),
        "--port".to_owned(),
        port.to_string(),
        "--dir".to_owned(),
        data.to_string_lossy().into_owned(),
        "--protected-mode".to_owned(),
        "no".to_owned(),
        "--daemonize".to_owned(),
        "no".to_owned(),
    ];
    let extra: Vec<String> = if args_v.first().is_some_and(|a| a == "redis-server") {
        args_v[1..].to_vec()
    } else {
        args_v
    };
    args.extend(extra);
    Launch::Process {
        spawn: Spawn {
            program: "redis-server".into(),
            args,
            cwd: data,
            ..base
        },
        stop_signal: Signal::SIGTERM,
    }
}

/// The program an image maps to, with its own arguments, then the container's.
/// `Err((reason, message))` when the program is not built.
fn program_launch(
    ctx: &PodCtx,
    image: &str,
    p: &ImageProgram,
    args_v: Vec<String>,
    base: Spawn,
) -> Result<Launch, (String, String)> {
    let Some(program) = ctx.shared.cfg.images.locate(&p.program) else {
        return Err((
            "ErrImagePull".to_owned(),
            format!(
                "image {image} maps to program {:?}, which was not found (build it, for example `cargo build -p {}`)",
                p.program, p.program
            ),
        ));
    };
    let mut args = p.args.clone();
    args.extend(args_v);
    Ok(Launch::Process {
        spawn: Spawn {
            program: program.to_string_lossy().into_owned(),
            args,
            ..base
        },
        stop_signal: Signal::SIGTERM,
    })
}

fn open_log(ctx: &PodCtx, name: &str, n: i64) -> std::io::Result<(PathBuf, std::fs::File)> {
    let dir = ctx.rt.dir.join("logs").join(name);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{n}.log"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    Ok((path, f))
}

fn set(ctx: &PodCtx, idx: usize, init: bool, f: impl FnOnce(&mut super::pod::CState)) {
    ctx.with_state(|s| {
        let list = if init { &mut s.init } else { &mut s.containers };
        if let Some(c) = list.get_mut(idx) {
            f(c);
        }
    });
}

fn get(ctx: &PodCtx, idx: usize, init: bool) -> Option<super::pod::CState> {
    let s = ctx
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (if init { &s.init } else { &s.containers })
        .get(idx)
        .cloned()
}

/// Sleep, but end early (false) when the pod stops.
async fn pause(ctx: &PodCtx, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = ctx.rt.stop.cancelled() => false,
    }
}

/// Run container `idx` (an init container when `init`) until it is done for good or the pod
/// stops. Returns whether it finished successfully.
pub(crate) async fn run(ctx: Arc<PodCtx>, idx: usize, init: bool) -> bool {
    let list = if init {
        "/spec/initContainers"
    } else {
        "/spec/containers"
    };
    let Some(spec) = ctx.pod.pointer(list).and_then(|l| l.get(idx)).cloned() else {
        return false;
    };
    let name = spec
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let image = spec
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let policy = ctx.restart_policy().to_owned();
    let mut waiting_told = String::new();
    loop {
        if ctx.rt.stop.is_cancelled() {
            return false;
        }
        let prepared = match prepare(&ctx, &spec) {
            Ok(p) => p,
            Err((reason, message)) => {
                if message != waiting_told {
                    ctx.event(EventKind::Warning, "Failed", &format!("Error: {message}"));
                    waiting_told = message.clone();
                }
                set(&ctx, idx, init, |c| {
                    c.state = json!({"waiting": {"reason": reason, "message": message}})
                });
                if !pause(&ctx, Duration::from_millis(500)).await {
                    return false;
                }
                continue;
            }
        };
        let restarts = get(&ctx, idx, init).map_or(0, |c| c.restart_count);
        if restarts == 0 {
            ctx.event(
                EventKind::Normal,
                "Pulled",
                &format!("Container image \"{image}\" already present on machine"),
            );
        }
        let (log_path, log) = match open_log(&ctx, &name, restarts) {
            Ok(l) => l,
            Err(e) => {
                set(
                    &ctx,
                    idx,
                    init,
                    |c| c.state = json!({"waiting": {"reason": "RunContainerError", "message": e.to_string()}}),
                );
                if !pause(&ctx, Duration::from_secs(1)).await {
                    return false;
                }
                continue;
            }
        };
        record_instance(&ctx, &name, &prepared, log_path);
        let started_at = crate::api::now();
        let (code, reason, message) =
            run_instance(&ctx, idx, init, &spec, prepared, log, &started_at).await;
        ctx.rt.update_container(&name, |ci| {
            ci.running = false;
            ci.pgid = None;
        });
        let finished_at = crate::api::now();
        let mut terminated = json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at});
        if let Some(m) = message {
            terminated["message"] = json!(m);
        }
        let stopping = ctx.rt.stop.is_cancelled();
        if stopping || !restarts_after(init, &policy, code) {
            set(&ctx, idx, init, |c| {
                c.state = json!({"terminated": terminated});
                c.ready = false;
                c.done = true;
            });
            return code == 0 && !stopping;
        }
        if !back_off(&ctx, idx, init, &name, terminated, restarts + 1).await {
            set(&ctx, idx, init, |c| c.done = true);
            return false;
        }
    }
}

/// Records the instance about to run (environment, directory, log file, PostgreSQL socket)
/// for exec, logs and port-forward.
fn record_instance(ctx: &PodCtx, name: &str, prepared: &Prepared, log_path: PathBuf) {
    let pg = match &prepared.launch {
        Launch::Postgres(p) => Some((p.socket_dir.clone(), p.port)),
        _ => None,
    };
    ctx.rt.update_container(name, |ci| {
        ci.env = prepared.env.clone();
        ci.cwd = prepared.cwd.clone();
        ci.rewriter = prepared.rewriter.clone();
        ci.logs.push(log_path);
        ci.running = true;
        ci.pg = pg;
    });
}

/// Whether a container that exited with `code` is started again under the pod's restart
/// policy (an init container only after a failure, and never with `Never`).
fn restarts_after(init: bool, policy: &str, code: i64) -> bool {
    match (init, policy) {
        (_, "Never") => false,
        (true, _) | (false, "OnFailure") => code != 0,
        _ => true,
    }
}

/// CrashLoopBackOff before restart number `count`: 10 s doubling up to 300 s (scaled), the
/// BackOff event and the waiting state with the last termination; false when the pod stopped
/// during the wait.
async fn back_off(
    ctx: &PodCtx,
    idx: usize,
    init: bool,
    name: &str,
    terminated: Value,
    count: i64,
) -> bool {
    let backoff = ctx
        .shared
        .cfg
        .scaled((10.0 * 2f64.powi((count - 1).min(5) as i32)).min(300.0));
    let msg = format!(
        "back-off {}s restarting failed container={name} pod={}_{}({})",
        (10u64 << (count - 1).min(5)).min(300),
        ctx.rt.name,
        ctx.rt.namespace,
        ctx.rt.uid
    );
    ctx.event(
        EventKind::Warning,
        "BackOff",
        &format!(
            "Back-off restarting failed container {name} in pod {}_{}({})",
            ctx.rt.name, ctx.rt.namespace, ctx.rt.uid
        ),
    );
    set(ctx, idx, init, |c| {
        c.last_state = json!({"terminated": terminated});
        c.state = json!({"waiting": {"reason": "CrashLoopBackOff", "message": msg}});
        c.ready = false;
        c.restart_count = count;
    });
    pause(ctx, backoff).await
}

/// Run one instance; returns (exit code, reason, message).
async fn run_instance(
    ctx: &Arc<PodCtx>,
    idx: usize,
    init: bool,
    spec: &Value,
    prepared: Prepared,
    log: std::fs::File,
    started_at: &str,
) -> (i64, String, Option<String>) {
    let name = spec
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Prepared {
        launch,
        env,
        cwd,
        rewriter,
        ports,
    } = prepared;
    let (spawn, stop_signal) = match launch {
        Launch::Pause => return run_pause(ctx, idx, init, spec, &name, started_at).await,
        Launch::Process { spawn, stop_signal } => (spawn, stop_signal),
        Launch::Postgres(plan) => {
            set(ctx, idx, init, |c| {
                c.state = json!({"running": {"startedAt": started_at}});
                c.started = spec.get("startupProbe").is_none();
            });
            match super::postgres::initialize(ctx, &plan, &log).await {
                Ok(()) => (plan.server, Signal::SIGINT),
                Err(msg) => {
                    use std::io::Write as _;
                    let _ = writeln!(&log, "{msg}");
                    return (1, "Error".into(), Some(msg));
                }
            }
        }
    };
    let mut child = match start_process(ctx, &spawn, log) {
        Ok(child) => child,
        Err(ended) => return ended,
    };
    let pgid = child.id().map_or(0, |p| p as i32);
    ctx.shared.reaper.track(pgid);
    ctx.rt
        .update_container(&name, |ci| ci.pgid = (pgid > 0).then_some(pgid));
    let has_startup = spec.get("startupProbe").is_some();
    let has_readiness = spec.get("readinessProbe").is_some();
    set(ctx, idx, init, |c| {
        c.state = json!({"running": {"startedAt": started_at}});
        c.started = !has_startup;
        c.ready = !has_startup && !has_readiness;
        c.container_id = Some(format!("simcluster://{pgid}"));
    });
    ctx.event(
        EventKind::Normal,
        "Created",
        &format!("Created container {name}"),
    );
    ctx.event(
        EventKind::Normal,
        "Started",
        &format!("Started container {name}"),
    );
    let probes_stop = CancellationToken::new();
    let (live_tx, live_rx) = mpsc::channel::<String>(1);
    if !init {
        // Exec probes run like the container's process, in its environment and directory.
        let target = Target {
            ip: ctx.rt.ip,
            ports,
            spawn: Spawn {
                program: String::new(),
                args: Vec::new(),
                env: probe_env(&env, &spawn),
                cwd,
                run_as: None,
            },
            rewriter,
        };
        tokio::spawn(probes(
            ctx.clone(),
            idx,
            spec.clone(),
            target,
            probes_stop.clone(),
            live_tx,
        ));
    }
    let (status, killed_for) =
        wait_for_exit(ctx, &mut child, pgid, &name, stop_signal, live_rx).await;
    probes_stop.cancel();
    // Whatever the main process left behind in its group goes with it.
    signal_group(pgid, Signal::SIGKILL);
    ctx.shared.reaper.untrack(pgid);
    let code = exit_code(status);
    let reason = if code == 0 { "Completed" } else { "Error" };
    (code, reason.into(), killed_for)
}

/// The exit code as the kubelet reports it: 128 + the signal for a process a signal ended,
/// 137 (SIGKILL) when there is no status.
fn exit_code(status: Option<std::process::ExitStatus>) -> i64 {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Some(s) => s
            .code()
            .map_or_else(|| 128 + i64::from(s.signal().unwrap_or(9)), i64::from),
        None => 137,
    }
}

/// A pause container (an image the image map has no program for): Running and Ready until
/// the pod stops.
async fn run_pause(
    ctx: &Arc<PodCtx>,
    idx: usize,
    init: bool,
    spec: &Value,
    name: &str,
    started_at: &str,
) -> (i64, String, Option<String>) {
    ctx.event(
        EventKind::Warning,
        "ImageNotMapped",
        &format!(
            "image {} has no program in the image map; running a pause container",
            spec["image"].as_str().unwrap_or_default()
        ),
    );
    set(ctx, idx, init, |c| {
        c.state = json!({"running": {"startedAt": started_at}});
        c.started = true;
        c.ready = true;
        c.container_id = Some(format!("simcluster://pause-{}", ctx.rt.uid));
    });
    ctx.event(
        EventKind::Normal,
        "Started",
        &format!("Started container {name}"),
    );
    ctx.rt.stop.cancelled().await;
    (0, "Completed".into(), None)
}

/// Spawns the container's process through the reaper, its output to `log`; `Err` is how the
/// instance ended when it could not start.
fn start_process(
    ctx: &PodCtx,
    spawn: &Spawn,
    log: std::fs::File,
) -> Result<tokio::process::Child, (i64, String, Option<String>)> {
    let mut cmd = match ctx.shared.reaper.command(spawn) {
        Ok(c) => c,
        Err(e) => return Err((127, "StartError".into(), Some(e.to_string()))),
    };
    let stderr = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return Err((128, "StartError".into(), Some(e.to_string()))),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr));
    cmd.spawn().map_err(|e| {
        let msg = format!(
            "failed to create containerd task: failed to start {:?}: {e}",
            spawn.program
        );
        ctx.event(EventKind::Warning, "Failed", &msg);
        (128, "StartError".into(), Some(msg))
    })
}

/// Waits until the process exits, is killed with the pod, is stopped gracefully with the pod,
/// or is stopped for a failed liveness probe (whose reason is returned beside the status).
async fn wait_for_exit(
    ctx: &PodCtx,
    child: &mut tokio::process::Child,
    pgid: i32,
    name: &str,
    stop_signal: Signal,
    mut live_rx: mpsc::Receiver<String>,
) -> (Option<std::process::ExitStatus>, Option<String>) {
    let grace_spec = Duration::from_secs(
        ctx.pod
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30),
    );
    let mut killed_for = None;
    let status = tokio::select! {
        s = child.wait() => s.ok(),
        () = ctx.rt.kill.cancelled() => {
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await.ok()
        }
        () = ctx.rt.stop.cancelled() => {
            ctx.event(EventKind::Normal, "Killing", &format!("Stopping container {name}"));
            stop_gracefully(ctx, child, pgid, stop_signal, ctx.rt.grace()).await
        }
        Some(why) = live_rx.recv() => {
            ctx.event(EventKind::Normal, "Killing", &format!("Container {name} failed liveness probe, will be restarted"));
            killed_for = Some(why);
            stop_gracefully(ctx, child, pgid, stop_signal, grace_spec).await
        }
    };
    (status, killed_for)
}

/// Exec probes get the container's environment, with the PostgreSQL socket when there is one.
fn probe_env(env: &[(String, String)], _spawn: &Spawn) -> Vec<(String, String)> {
    env.to_vec()
}

async fn stop_gracefully(
    ctx: &PodCtx,
    child: &mut tokio::process::Child,
    pgid: i32,
    sig: Signal,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    signal_group(pgid, sig);
    tokio::select! {
        s = child.wait() => s.ok(),
        () = tokio::time::sleep(grace) => {
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await.ok()
        }
        () = ctx.rt.kill.cancelled() => {
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await.ok()
        }
    }
}

/// The probe loops of one container instance.
async fn probes(
    ctx: Arc<PodCtx>,
    idx: usize,
    spec: Value,
    target: Target,
    stop: CancellationToken,
    live: mpsc::Sender<String>,
) {
    let run = ProbeRun {
        ctx,
        idx,
        target,
        stop: stop.clone(),
        live,
    };
    let (started_tx, mut started_rx) = watch::channel(spec.get("startupProbe").is_none());
    if let Some(p) = spec.get("startupProbe").cloned() {
        let no_readiness = spec.get("readinessProbe").is_none();
        tokio::spawn(run.clone().startup(p, no_readiness, started_tx));
    }
    // Readiness and liveness start once the startup probe has passed.
    loop {
        if *started_rx.borrow() {
            break;
        }
        tokio::select! {
            r = started_rx.changed() => if r.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
    let mut tasks = Vec::new();
    for (kind, field) in [
        ("Readiness", "readinessProbe"),
        ("Liveness", "livenessProbe"),
    ] {
        let Some(p) = spec.get(field).cloned() else {
            continue;
        };
        tasks.push(tokio::spawn(run.clone().periodic(kind, p)));
    }
    stop.cancelled().await;
    for t in tasks {
        t.abort();
    }
}

/// What every probe loop of a container instance needs: where the container is, its probe
/// target, the instance's stop token and where a failed liveness (or startup) probe is told.
#[derive(Clone)]
struct ProbeRun {
    ctx: Arc<PodCtx>,
    idx: usize,
    target: Target,
    stop: CancellationToken,
    live: mpsc::Sender<String>,
}

impl ProbeRun {
    /// Sleeps `d`; false when the instance stopped first.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = self.stop.cancelled() => false,
        }
    }

    /// The startup probe until it passes (the container Started, and Ready when it has no
    /// readiness probe; `started` told) or fails its threshold (the container killed).
    async fn startup(self, p: Value, no_readiness: bool, started: watch::Sender<bool>) {
        let (ctx, idx) = (&self.ctx, self.idx);
        let t = Timing::of(&ctx.shared, &p);
        if !self.sleep(t.initial_delay).await {
            return;
        }
        let mut fails = 0;
        loop {
            match probe::check(&ctx.shared, &p, &self.target, t.timeout).await {
                Ok(()) => {
                    set(ctx, idx, false, |c| {
                        c.started = true;
                        if no_readiness {
                            c.ready = true;
                        }
                    });
                    let _ = started.send(true);
                    return;
                }
                Err(why) => {
                    fails += 1;
                    if fails >= t.failure_threshold {
                        ctx.event(
                            EventKind::Warning,
                            "Unhealthy",
                            &format!("Startup probe failed: {why}"),
                        );
                        let _ = self.live.send(why).await;
                        return;
                    }
                }
            }
            if !self.sleep(t.period).await {
                return;
            }
        }
    }

    /// A readiness or liveness probe (`kind`) every period: readiness sets Ready after its
    /// success threshold and clears it after its failure threshold; liveness past its failure
    /// threshold has the container killed.
    async fn periodic(self, kind: &'static str, p: Value) {
        let (ctx, idx) = (&self.ctx, self.idx);
        let t = Timing::of(&ctx.shared, &p);
        if !self.sleep(t.initial_delay).await {
            return;
        }
        let (mut ok_run, mut fail_run) = (0u32, 0u32);
        loop {
            let r = tokio::select! {
                r = probe::check(&ctx.shared, &p, &self.target, t.timeout) => r,
                () = self.stop.cancelled() => return,
            };
            match r {
                Ok(()) => {
                    ok_run += 1;
                    fail_run = 0;
                    if kind == "Readiness" && ok_run >= t.success_threshold {
                        let changed = get(ctx, idx, false).is_some_and(|c| !c.ready);
                        if changed {
                            set(ctx, idx, false, |c| c.ready = true);
                        }
                    }
                }
                Err(why) => {
                    ok_run = 0;
                    fail_run += 1;
                    ctx.event(
                        EventKind::Warning,
                        "Unhealthy",
                        &format!("{kind} probe failed: {why}"),
                    );
                    if fail_run >= t.failure_threshold {
                        if kind == "Readiness" {
                            if get(ctx, idx, false).is_some_and(|c| c.ready) {
                                set(ctx, idx, false, |c| c.ready = false);
                            }
                        } else {
                            let _ = self.live.send(why).await;
                            return;
                        }
                    }
                }
            }
            if !self.sleep(t.period).await {
                return;
            }
        }
    }
}
