//! `postgres:*` images: the machine's PostgreSQL run the way the official image's
//! `docker-entrypoint.sh` runs it.
//!
//! On an empty data directory (`PGDATA`, default `/var/lib/postgresql/data`, translated to
//! the volume's host directory): `initdb` with `POSTGRES_USER` and `POSTGRES_PASSWORD` (given
//! through a private file, never through argv), `host all all all scram-sha-256` appended to
//! pg_hba.conf (`POSTGRES_HOST_AUTH_METHOD` overrides), a socket-only temporary server,
//! `CREATE DATABASE` for `POSTGRES_DB`, the scripts of `/docker-entrypoint-initdb.d` (`*.sql`,
//! `*.sql.gz`, `*.sh`) in name order with `ON_ERROR_STOP`, then a clean stop. A data directory
//! that already holds a cluster is used as it is. The server listens on the pod IP and on a
//! socket directory that exec sessions get as `PGHOST`.
//!
//! PostgreSQL refuses to run as root: when the simulator is root, the server runs as the
//! `postgres` account (`CommandExt::uid`/`gid`) and its data directory is chowned to it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::env::Rewriter;
use super::pod::PodCtx;
use super::process::Spawn;

/// How one PostgreSQL container runs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The server process.
    pub(crate) server: Spawn,
    /// Its socket directory.
    pub(crate) socket_dir: PathBuf,
    /// Its port.
    pub(crate) port: u16,
    data: PathBuf,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    user: String,
    password: Option<String>,
    db: String,
    initdb_args: Vec<String>,
    host_auth: String,
    init_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

/// The `bin` directory of the PostgreSQL matching the image tag's major version, else the
/// newest installed.
pub(crate) fn bin_dir(image: &str) -> Option<PathBuf> {
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
    let major: String = tag.chars().take_while(char::is_ascii_digit).collect();
    let root = Path::new("/usr/lib/postgresql");
    if !major.is_empty() {
        let p = root.join(&major).join("bin");
        if p.join("postgres").is_file() {
            return Some(p);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("postgres").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

pub(crate) fn owner() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// Every directory above `path` must let the server's account through.
pub(crate) fn check_reachable(path: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    for dir in path.ancestors().skip(1) {
        let Ok(m) = dir.metadata() else { continue };
        let ok = m.mode() & 0o001 != 0
            || (m.uid() == uid && m.mode() & 0o100 != 0)
            || (m.gid() == gid && m.mode() & 0o010 != 0);
        if !ok {
            return Err(format!(
                "PostgreSQL runs as the postgres account, which cannot reach {}: {} has mode {:o}; put the cluster's state directory under directories others may traverse (for example mode 0711)",
                path.display(),
                dir.display(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

fn var<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Plan a PostgreSQL container.
///
/// # Errors
/// No PostgreSQL installed, or an unusable data directory, as a message.
pub(crate) fn plan(
    ctx: &PodCtx,
    image: &str,
    env: &[(String, String)],
    rewriter: &Rewriter,
    args: &[String],
    port: u16,
) -> Result<Plan, String> {
    let bin =
        bin_dir(image).ok_or("no PostgreSQL server is installed under /usr/lib/postgresql")?;
    let state_dir = &ctx.shared.cfg.state_dir;
    let rootfs = ctx.rt.dir.join("rootfs");
    let pgdata = var(env, "PGDATA")
        .unwrap_or("/var/lib/postgresql/data")
        .to_owned();
    let pgdata = if Path::new(&pgdata).starts_with(state_dir) {
        PathBuf::from(pgdata)
    } else {
        rewriter
            .host_path(&pgdata)
            .unwrap_or_else(|| rootfs.join(pgdata.trim_start_matches('/')))
    };
    let user = var(env, "POSTGRES_USER").unwrap_or("postgres").to_owned();
    let password = match var(env, "POSTGRES_PASSWORD") {
        Some(p) => Some(p.to_owned()),
        None => match var(env, "POSTGRES_PASSWORD_FILE") {
            Some(f) => Some(
                std::fs::read_to_string(rewriter.host_path(f).unwrap_or_else(|| PathBuf::from(f)))
                    .map_err(|e| format!("reading POSTGRES_PASSWORD_FILE: {e}"))?
                    .trim_end_matches('\n')
                    .to_owned(),
            ),
            None => None,
        },
    };
    let db = var(env, "POSTGRES_DB").unwrap_or(&user).to_owned();
    let socket_dir = ctx.rt.run_dir.clone();
    let owner = owner();
    let mut server_args = vec![
        "-D".to_owned(),
        pgdata.to_string_lossy().into_owned(),
        "-c".into(),
        format!("listen_addresses={}", ctx.rt.ip),
        "-c".into(),
        format!("unix_socket_directories={}", socket_dir.display()),
        "-p".into(),
        port.to_string(),
    ];
    let extra: &[String] = if args.first().is_some_and(|a| a == "postgres") {
        &args[1..]
    } else {
        args
    };
    server_args.extend(extra.iter().cloned());
    let server = Spawn {
        program: bin.join("postgres").to_string_lossy().into_owned(),
        args: server_args,
        env: env.to_vec(),
        cwd: pgdata.clone(),
        run_as: owner,
    };
    Ok(Plan {
        server,
        socket_dir,
        port,
        data: pgdata,
        bin,
        owner,
        user,
        password,
        db,
        initdb_args: var(env, "POSTGRES_INITDB_ARGS")
            .map(|a| a.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        host_auth: var(env, "POSTGRES_HOST_AUTH_METHOD")
            .unwrap_or("scram-sha-256")
            .to_owned(),
        init_dir: rewriter.host_path("/docker-entrypoint-initdb.d"),
        env: env.to_vec(),
        cwd: rootfs,
    })
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Run a helper to completion with its output in the container log.
async fn helper(ctx: &PodCtx, spawn: &Spawn, log: &std::fs::File) -> Result<(), String> {
    helper_group(ctx, spawn, log, false).await.1
}

/// Like [`helper`]; with `keep`, the process group stays tracked (pg_ctl leaves the server
/// running in it) and its id is returned for the caller to untrack.
async fn helper_group(
    ctx: &PodCtx,
    spawn: &Spawn,
    log: &std::fs::File,
    keep: bool,
) -> (i32, Result<(), String>) {
    let r = helper_inner(ctx, spawn, log, keep).await;
    match r {
        Ok((pgid, r)) => (pgid, r),
        Err(e) => (0, Err(e)),
    }
}

async fn helper_inner(
    ctx: &PodCtx,
    spawn: &Spawn,
    log: &std::fs::File,
    keep: bool,
) -> Result<(i32, Result<(), String>), String> {
    let mut cmd = ctx
        .shared
        .reaper
        .command(spawn)
        .map_err(|e| e.to_string())?;
    let out = log.try_clone().map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", spawn.program))?;
    let pgid = child.id().map_or(0, |p| p as i32);
    ctx.shared.reaper.track(pgid);
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| e.to_string()),
        () = ctx.rt.kill.cancelled() => {
            super::process::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
            Err("killed".to_owned())
        }
    };
    if !keep {
        ctx.shared.reaper.untrack(pgid);
    }
    let status = match status {
        Ok(s) => s,
        Err(e) => return Ok((pgid, Err(e))),
    };
    if status.success() {
        Ok((pgid, Ok(())))
    } else {
        let name = Path::new(&spawn.program).file_name().map_or_else(
            || spawn.program.clone(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok((pgid, Err(format!("{name} failed ({status})"))))
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Prepare the data directory; initialise it on first start.
///
/// # Errors
/// What went wrong, as the entrypoint would print it.
pub(crate) async fn initialize(
    ctx: &PodCtx,
    plan: &Plan,
    log: &std::fs::File,
) -> Result<(), String> {
    let mut log_w = log;
    prepare_dirs(plan)?;
    if plan.data.join("PG_VERSION").exists() {
        clear_foreign_lock(&plan.data, log)?;
        let _ = writeln!(
            log_w,
            "\nPostgreSQL Database directory appears to contain a database; Skipping initialization\n"
        );
        return Ok(());
    }
    let password = match (&plan.password, plan.host_auth.as_str()) {
        (Some(p), _) => Some(p.clone()),
        (None, "trust") => None,
        (None, _) => {
            return Err("Error: Database is uninitialized and superuser password is not specified.\n       You must specify POSTGRES_PASSWORD to a non-empty value for the\n       superuser. For example, \"-e POSTGRES_PASSWORD=password\" on \"docker run\".".into());
        }
    };
    initdb(ctx, plan, password.as_deref(), log).await?;
    let hba = plan.data.join("pg_hba.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&hba)
        .map_err(|e| format!("{}: {e}", hba.display()))?;
    writeln!(f, "\nhost all all all {}", plan.host_auth).map_err(|e| e.to_string())?;
    init_scripts_on_private_server(ctx, plan, log).await?;
    let _ = writeln!(
        log_w,
        "\nPostgreSQL init process complete; ready for start up.\n"
    );
    Ok(())
}

/// Removes a `postmaster.pid` left by a server of another data directory: a volume restored
/// from a snapshot of a running server carries its lock file, whose process is, in the
/// container's own PID namespace on a real node, not there. Pods here share the host's PID
/// namespace, so the recorded process may be alive, serving the snapshot's source; PostgreSQL
/// would then refuse to start. A lock held by a live server of this very directory stays,
/// and PostgreSQL refuses to start, as it must.
fn clear_foreign_lock(data: &Path, log: &std::fs::File) -> Result<(), String> {
    let lock = data.join("postmaster.pid");
    let Ok(text) = std::fs::read_to_string(&lock) else {
        return Ok(());
    };
    let pid = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok());
    let holder_dir = pid.and_then(|p| std::fs::read_link(format!("/proc/{p}/cwd")).ok());
    let ours = match (&holder_dir, data.canonicalize()) {
        (Some(cwd), Ok(dir)) => *cwd == dir,
        _ => false,
    };
    if ours {
        return Ok(());
    }
    std::fs::remove_file(&lock).map_err(|e| format!("remove {}: {e}", lock.display()))?;
    let mut log_w = log;
    let _ = writeln!(
        log_w,
        "removed the stale lock file postmaster.pid (process {} is not this data directory's \
         server)",
        pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
    );
    Ok(())
}

/// The data directory (0700) and the socket directory (0775), owned by the server's account,
/// which must be able to reach the data directory.
fn prepare_dirs(plan: &Plan) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(&plan.data)
        .map_err(|e| format!("mkdir {}: {e}", plan.data.display()))?;
    check_reachable(&plan.data, plan.owner)?;
    chown(&plan.data, plan.owner)?;
    std::fs::set_permissions(&plan.data, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", plan.data.display()))?;
    std::fs::create_dir_all(&plan.socket_dir)
        .map_err(|e| format!("mkdir {}: {e}", plan.socket_dir.display()))?;
    chown(&plan.socket_dir, plan.owner)?;
    std::fs::set_permissions(&plan.socket_dir, std::fs::Permissions::from_mode(0o775))
        .map_err(|e| e.to_string())
}

/// `program` from the image's PostgreSQL binaries with `args`, as the server's account, in
/// the data directory.
fn as_postgres(plan: &Plan, program: &str, args: Vec<String>) -> Spawn {
    Spawn {
        program: plan.bin.join(program).to_string_lossy().into_owned(),
        args,
        env: plan.env.clone(),
        cwd: plan.data.clone(),
        run_as: plan.owner,
    }
}

/// initdb as the entrypoint runs it, the superuser's password (if any) through a 0600 file
/// that is removed afterwards.
async fn initdb(
    ctx: &PodCtx,
    plan: &Plan,
    password: Option<&str>,
    log: &std::fs::File,
) -> Result<(), String> {
    let mut initdb_args = vec![
        "-D".to_owned(),
        plan.data.to_string_lossy().into_owned(),
        "--username".into(),
        plan.user.clone(),
        "-E".into(),
        "UTF8".into(),
        "--locale=C.UTF-8".into(),
        "--no-sync".into(),
    ];
    let pwfile = ctx.rt.dir.join("rootfs").join(".pwfile");
    if let Some(pw) = password {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&pwfile)
            .map_err(|e| format!("writing the password file: {e}"))?;
        f.write_all(pw.as_bytes()).map_err(|e| e.to_string())?;
        chown(&pwfile, plan.owner)?;
        initdb_args.push(format!("--pwfile={}", pwfile.display()));
    }
    initdb_args.extend(plan.initdb_args.iter().cloned());
    let r = helper(ctx, &as_postgres(plan, "initdb", initdb_args), log).await;
    let _ = std::fs::remove_file(&pwfile);
    r
}

/// The init scripts, run against a server started on the socket only (as the entrypoint's
/// temporary server), which is stopped afterwards whatever happened.
async fn init_scripts_on_private_server(
    ctx: &PodCtx,
    plan: &Plan,
    log: &std::fs::File,
) -> Result<(), String> {
    let mut log_w = log;
    let opts = format!(
        "-c listen_addresses='' -c unix_socket_directories='{}' -p {}",
        plan.socket_dir.display(),
        plan.port
    );
    let _ = writeln!(log_w, "waiting for server to start....");
    let start = as_postgres(
        plan,
        "pg_ctl",
        vec![
            "-D".into(),
            plan.data.to_string_lossy().into_owned(),
            "-o".into(),
            opts,
            "-w".into(),
            "-t".into(),
            "60".into(),
            "start".into(),
        ],
    );
    let (server_group, started) = helper_group(ctx, &start, log, true).await;
    let result = match started {
        Ok(()) => run_init_scripts(ctx, plan, log).await,
        Err(e) => Err(e),
    };
    let stop = as_postgres(
        plan,
        "pg_ctl",
        vec![
            "-D".into(),
            plan.data.to_string_lossy().into_owned(),
            "-m".into(),
            "fast".into(),
            "-w".into(),
            "stop".into(),
        ],
    );
    let stopped = helper(ctx, &stop, log).await;
    if server_group > 0 {
        super::process::signal_group(server_group, nix::sys::signal::Signal::SIGKILL);
        ctx.shared.reaper.untrack(server_group);
    }
    result?;
    stopped
}

/// The entrypoint's database creation (for a `POSTGRES_DB` other than `postgres`), then every
/// file of `/docker-entrypoint-initdb.d` in name order.
async fn run_init_scripts(ctx: &PodCtx, plan: &Plan, log: &std::fs::File) -> Result<(), String> {
    if plan.db != "postgres" {
        let create = vec![
            "-c".into(),
            format!("CREATE DATABASE {}", quote_ident(&plan.db)),
        ];
        helper(ctx, &psql(plan, "postgres", create), log).await?;
    }
    let Some(dir) = &plan.init_dir else {
        return Ok(());
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut log_w = log;
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(command) = init_script(plan, &name, f.to_string_lossy().into_owned()) else {
            let _ = writeln!(
                log_w,
                "/usr/local/bin/docker-entrypoint.sh: ignoring /docker-entrypoint-initdb.d/{name}"
            );
            continue;
        };
        let _ = writeln!(
            log_w,
            "/usr/local/bin/docker-entrypoint.sh: running /docker-entrypoint-initdb.d/{name}"
        );
        helper(ctx, &command, log).await?;
    }
    Ok(())
}

/// psql on the private server's socket as the superuser, on database `db`, with `extra`.
fn psql(plan: &Plan, db: &str, extra: Vec<String>) -> Spawn {
    let mut args = vec![
        "-v".to_owned(),
        "ON_ERROR_STOP=1".into(),
        "--username".into(),
        plan.user.clone(),
        "--no-password".into(),
        "--no-psqlrc".into(),
        "--dbname".into(),
        db.to_owned(),
        "-h".into(),
        plan.socket_dir.to_string_lossy().into_owned(),
        "-p".into(),
        plan.port.to_string(),
    ];
    args.extend(extra);
    Spawn {
        program: plan.bin.join("psql").to_string_lossy().into_owned(),
        args,
        env: plan.env.clone(),
        cwd: plan.cwd.clone(),
        run_as: None,
    }
}

/// How the entrypoint runs the init file `name` (at `path`): `.sql` by psql, compressed SQL
/// through its decompressor into psql, `.sh` by sh (with PGHOST and PGPORT set); `None` for
/// any other file, which it ignores.
fn init_script(plan: &Plan, name: &str, path: String) -> Option<Spawn> {
    let mut env = plan.env.clone();
    env.push((
        "PGHOST".into(),
        plan.socket_dir.to_string_lossy().into_owned(),
    ));
    env.push(("PGPORT".into(), plan.port.to_string()));
    if name.ends_with(".sql") {
        Some(psql(plan, &plan.db, vec!["-f".into(), path]))
    } else if name.ends_with(".sql.gz") || name.ends_with(".sql.xz") || name.ends_with(".sql.zst") {
        let decompress = if name.ends_with(".gz") {
            "gunzip -c"
        } else if name.ends_with(".xz") {
            "xzcat"
        } else {
            "zstd -dc"
        };
        let p = psql(plan, &plan.db, Vec::new());
        // $0 is psql, $1 the file, the rest psql's arguments.
        let script = format!("f=$1; shift; {decompress} \"$f\" | \"$0\" \"$@\"");
        let args = vec!["-c".to_owned(), script, p.program.clone(), path];
        Some(Spawn {
            program: "/bin/sh".into(),
            args: [args, p.args].concat(),
            env,
            cwd: plan.cwd.clone(),
            run_as: None,
        })
    } else if name.ends_with(".sh") {
        Some(Spawn {
            program: "/bin/sh".into(),
            args: vec![path],
            env,
            cwd: plan.cwd.clone(),
            run_as: None,
        })
    } else {
        None
    }
}
