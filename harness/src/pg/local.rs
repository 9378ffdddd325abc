//! `LocalPostgres`: a private PostgreSQL server process in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::error::tail;
use super::{ConnParams, PgError, PgTools, PostgresProvider, Secret};
use crate::keep::{self, ScratchDir};

/// Options for [`LocalPostgres`].
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Superuser name.
    pub user: String,
    /// When set, TCP connections need this password (scram-sha-256); the private Unix socket
    /// stays trusted. When unset, the server trusts every local connection.
    pub password: Option<Secret>,
    /// Database created after start-up (besides `postgres`); the init SQL runs in it.
    pub database: String,
    /// SQL files run in order with psql after start-up, like `/docker-entrypoint-initdb.d`.
    pub init_sql: Vec<PathBuf>,
    /// Keep fsync on. Off by default: rehearsal data lives as long as a test.
    pub durable: bool,
    /// How long to wait for the server to accept connections.
    pub start_timeout: Duration,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
    /// Start from this prepared data directory instead of `initdb` (a base backup set up for
    /// recovery, see `crate::pitr`): it is moved into the server's scratch directory (same
    /// file system) and given to the server's account. Its `pg_hba.conf` decides who may
    /// connect; the harness connects through the private socket.
    pub data_from: Option<PathBuf>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            user: "postgres".to_owned(),
            password: None,
            database: "postgres".to_owned(),
            init_sql: Vec::new(),
            durable: false,
            start_timeout: Duration::from_secs(30),
            settings: Vec::new(),
            data_from: None,
        }
    }
}

impl LocalOptions {
    /// The Titanium database: `titanium`, with the schema init script from `fixtures/sql`.
    pub fn titanium() -> Self {
        Self {
            database: "titanium".to_owned(),
            init_sql: vec![crate::data::schema_sql_path()],
            ..Self::default()
        }
    }
}

/// A PostgreSQL server started by `initdb` + `postgres` on 127.0.0.1 and a free port, with its
/// data and socket in a private temporary directory. Dropping it stops the server and removes
/// the directory (kept with `HARNESS_KEEP=1`).
#[derive(Debug)]
pub struct LocalPostgres {
    child: Option<Child>,
    tools: PgTools,
    params: ConnParams,
    socket_dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    owner: Option<ServerOwner>,
    // Declared last so the directory outlives the server in drop order.
    dir: ScratchDir,
}

impl LocalPostgres {
    /// The binaries this server runs from (use its psql, pg_dump, pg_restore).
    pub fn tools(&self) -> &PgTools {
        &self.tools
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The private Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The server process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The scratch directory holding data, socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server: fast shutdown (SIGINT), then SIGKILL after 15 s.
    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    // The whole group: the postmaster's backends too.
                    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    async fn start_inner(options: LocalOptions) -> Result<Self, PgError> {
        let tools = PgTools::discover()?;
        let dir =
            ScratchDir::new("harness-pg-", "PostgreSQL data directory").map_err(|source| {
                PgError::Io {
                    action: "create",
                    path: std::env::temp_dir(),
                    source,
                }
            })?;
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("socket");
        let log_path = dir.path().join("postgres.log");
        std::fs::create_dir(&socket_dir).map_err(|source| PgError::Io {
            action: "create",
            path: socket_dir.clone(),
            source,
        })?;
        keep::set_private_dir(&socket_dir).map_err(|source| PgError::Io {
            action: "chmod",
            path: socket_dir.clone(),
            source,
        })?;
        let owner = server_owner();
        if let Some(owner) = &owner {
            for path in [dir.path(), socket_dir.as_path()] {
                owner.chown(path)?;
            }
        }
        match &options.data_from {
            Some(prepared) => adopt_data_dir(prepared, &data_dir, owner.as_ref())?,
            None => initdb(&tools, dir.path(), &data_dir, &options, owner.as_ref())?,
        }

        let mut server = Self {
            child: None,
            tools,
            params: ConnParams {
                host: "127.0.0.1".to_owned(),
                port: 0,
                user: options.user.clone(),
                password: options.password.clone(),
                dbname: "postgres".to_owned(),
            },
            socket_dir,
            data_dir,
            log_path,
            owner,
            dir,
        };
        // A free port can be taken by someone else between our probe and the server's bind:
        // try a few. On any error `server` is dropped, which stops it and removes the directory.
        let mut attempts = 0;
        loop {
            server.params.port = free_port()?;
            match server.spawn_and_wait(&options).await {
                Ok(()) => break,
                Err(err) => {
                    let log = server.log();
                    let port_taken =
                        log.contains("could not bind") || log.contains("already in use");
                    server.shutdown();
                    attempts += 1;
                    if !port_taken || attempts >= 5 {
                        return Err(err);
                    }
                }
            }
        }
        server.initialise(&options).await?;
        Ok(server)
    }

    async fn spawn_and_wait(&mut self, options: &LocalOptions) -> Result<(), PgError> {
        let postgres = self.tools.bin_dir().join("postgres");
        let log = std::fs::File::create(&self.log_path).map_err(|source| PgError::Io {
            action: "create",
            path: self.log_path.clone(),
            source,
        })?;
        if let Some(owner) = &self.owner {
            owner.chown(&self.log_path)?;
        }
        let log_err = log.try_clone().map_err(|source| PgError::Io {
            action: "open",
            path: self.log_path.clone(),
            source,
        })?;
        // Its own process group, killed with us even on SIGKILL unless HARNESS_KEEP asks to
        // leave it running (see crate::process).
        let mut cmd = crate::process::server_command(&postgres);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.params.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1"]);
        if !options.durable {
            // wal_level=minimal lets bulk loads into fresh tables skip WAL entirely.
            cmd.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
            cmd.args(["-c", "wal_level=minimal", "-c", "max_wal_senders=0"]);
        }
        for (name, value) in &options.settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        if let Some(owner) = &self.owner {
            owner.apply(&mut cmd);
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = crate::process::spawn(cmd).map_err(|source| PgError::Io {
            action: "start",
            path: postgres.clone(),
            source,
        })?;
        self.child = Some(child);

        let deadline = Instant::now() + options.start_timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(PgError::Exited {
                    status: status.to_string(),
                    log_tail: tail(&self.log(), 15),
                });
            }
            // Probe through the socket: it is trusted, so this works with or without a password.
            let mut probe = tokio_postgres::Config::new();
            probe
                .host_path(&self.socket_dir)
                .port(self.params.port)
                .user(&options.user)
                .dbname("postgres");
            if let Ok((client, conn)) = probe.connect(tokio_postgres::NoTls).await {
                drop(client);
                drop(conn);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PgError::StartTimeout {
                    port: self.params.port,
                    seconds: options.start_timeout.as_secs(),
                    log_tail: tail(&self.log(), 15),
                });
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }

    async fn initialise(&mut self, options: &LocalOptions) -> Result<(), PgError> {
        let socket = self.socket_params();
        if options.database != "postgres" {
            super::create_database(&socket, &options.database).await?;
        }
        self.params.dbname = options.database.clone();
        let socket = socket.with_dbname(&options.database);
        for file in &options.init_sql {
            self.tools.psql_file(&socket, file).await?;
        }
        Ok(())
    }

    /// Parameters for the private, trusted Unix socket (no password needed).
    pub fn socket_params(&self) -> ConnParams {
        ConnParams {
            host: self.socket_dir.display().to_string(),
            port: self.params.port,
            user: self.params.user.clone(),
            password: None,
            dbname: self.params.dbname.clone(),
        }
    }
}

impl PostgresProvider for LocalPostgres {
    type Options = LocalOptions;

    async fn start(options: LocalOptions) -> Result<Self, PgError> {
        Self::start_inner(options).await
    }

    fn params(&self) -> ConnParams {
        self.params.clone()
    }

    async fn stop(mut self) -> Result<(), PgError> {
        self.shutdown();
        Ok(())
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if keep::keep_requested() && self.child.is_some() {
            eprintln!(
                "{}: PostgreSQL left running at {} (pid {:?}), data in {}",
                keep::KEEP_ENV,
                self.params.target(),
                self.pid(),
                self.dir.path().display()
            );
            // Detach: the server keeps running.
            self.child = None;
            return;
        }
        self.shutdown();
    }
}

/// Moves a prepared data directory into place, private (0700) and owned by the server's account.
fn adopt_data_dir(
    prepared: &Path,
    data_dir: &Path,
    owner: Option<&ServerOwner>,
) -> Result<(), PgError> {
    std::fs::rename(prepared, data_dir).map_err(|source| PgError::Io {
        action: "move the prepared data directory to",
        path: data_dir.to_path_buf(),
        source,
    })?;
    keep::set_private_dir(data_dir).map_err(|source| PgError::Io {
        action: "chmod",
        path: data_dir.to_path_buf(),
        source,
    })?;
    if let Some(owner) = owner {
        chown_tree(data_dir, owner)?;
    }
    Ok(())
}

fn chown_tree(path: &Path, owner: &ServerOwner) -> Result<(), PgError> {
    owner.chown(path)?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| PgError::Io {
        action: "stat",
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|source| PgError::Io {
            action: "list",
            path: path.to_path_buf(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| PgError::Io {
                action: "list",
                path: path.to_path_buf(),
                source,
            })?;
            chown_tree(&entry.path(), owner)?;
        }
    }
    Ok(())
}

fn initdb(
    tools: &PgTools,
    dir: &Path,
    data_dir: &Path,
    options: &LocalOptions,
    owner: Option<&ServerOwner>,
) -> Result<(), PgError> {
    let initdb = tools.bin_dir().join("initdb");
    let mut cmd = crate::process::command(&initdb);
    cmd.arg("-D").arg(data_dir).args([
        "-U",
        &options.user,
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
        "--auth-local=trust",
    ]);
    if let Some(password) = &options.password {
        // The password reaches initdb through a private file, never through argv.
        let pwfile = dir.join("pwfile");
        keep::write_private(&pwfile, password.expose().as_bytes()).map_err(|source| {
            PgError::Io {
                action: "write",
                path: pwfile.clone(),
                source,
            }
        })?;
        if let Some(owner) = owner {
            owner.chown(&pwfile)?;
        }
        cmd.arg("--auth-host=scram-sha-256")
            .arg(format!("--pwfile={}", pwfile.display()));
    } else {
        cmd.arg("--auth-host=trust");
    }
    if let Some(owner) = owner {
        owner.apply(&mut cmd);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = crate::process::spawn(cmd)
        .and_then(Child::wait_with_output)
        .map_err(|source| PgError::Io {
            action: "run",
            path: initdb.clone(),
            source,
        })?;
    let _ = std::fs::remove_file(dir.join("pwfile"));
    if out.status.success() {
        Ok(())
    } else {
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        Err(PgError::InitDb {
            status: out.status.to_string(),
            output: tail(&output, 15),
        })
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, PgError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| PgError::Io {
        action: "bind a port on",
        path: PathBuf::from("127.0.0.1"),
        source,
    })?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| PgError::Io {
            action: "read the port of",
            path: PathBuf::from("127.0.0.1"),
            source,
        })
}

/// The unprivileged account the server runs as when we are root: PostgreSQL refuses to run as
/// root. `HARNESS_PG_OS_USER` names it; otherwise `postgres`, else `nobody`.
#[derive(Clone, Debug)]
struct ServerOwner {
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
}

impl ServerOwner {
    fn chown(&self, path: &Path) -> Result<(), PgError> {
        nix::unistd::chown(path, Some(self.uid), Some(self.gid)).map_err(|errno| PgError::Io {
            action: "change the owner of",
            path: path.to_path_buf(),
            source: std::io::Error::from(errno),
        })
    }

    fn apply(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
    }
}

fn server_owner() -> Option<ServerOwner> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let preferred = std::env::var("HARNESS_PG_OS_USER").ok();
    preferred
        .iter()
        .map(String::as_str)
        .chain(["postgres", "nobody"])
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
        .map(|user| ServerOwner {
            uid: user.uid,
            gid: user.gid,
        })
}
