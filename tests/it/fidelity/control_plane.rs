//! A real Kubernetes control plane for the fidelity test: etcd, kube-apiserver and
//! kube-controller-manager on loopback, with certificates made by `openssl` in a temporary
//! directory. Everything it started is stopped, and the directory removed, on `Drop`
//! (`HARNESS_KEEP=1` keeps the directory and prints where it is).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Where the real binaries are: `RR_K8S_BIN`, else the newest complete build under
/// `RR_K8S_CACHE` (default `/var/cache/rebuild-rehearsal/k8s`, as `ci/k8s/build.sh` writes).
pub(crate) fn k8s_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("RR_K8S_BIN") {
        return Some(PathBuf::from(dir));
    }
    let cache = std::env::var_os("RR_K8S_CACHE").map_or_else(
        || PathBuf::from("/var/cache/rebuild-rehearsal/k8s"),
        PathBuf::from,
    );
    let mut builds: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("COMPLETE").is_file() && p.join("bin/kube-apiserver").is_file())
        .collect();
    builds.sort();
    builds.pop().map(|p| p.join("bin"))
}

/// The running control plane.
pub(crate) struct ControlPlane {
    dir: Option<tempfile::TempDir>,
    children: Vec<(String, Child)>,
    /// An admin kubeconfig (client certificate in `system:masters`).
    pub(crate) kubeconfig: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl ControlPlane {
    /// Start etcd, then kube-apiserver (waiting for `/readyz`), then kube-controller-manager.
    ///
    /// # Errors
    /// A tool that fails, or an API server that is not ready within 60 seconds (its log is
    /// in the error).
    pub(crate) async fn start(bin: &Path, etcd: &Path) -> anyhow::Result<ControlPlane> {
        let dir = tempfile::Builder::new()
            .prefix("fidelity-k8s-")
            .tempdir()
            .context("temporary directory")?;
        let d = dir.path().to_owned();
        let pki = d.join("pki");
        std::fs::create_dir_all(&pki)?;
        let api_port = free_port()?;
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        // X.509 v3 throughout (extensions make it v3): rustls refuses v1 certificates.
        std::fs::write(
            pki.join("san.cnf"),
            "[req]\ndistinguished_name=dn\n[dn]\n[ext]\nsubjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes.default\n[client]\nextendedKeyUsage=clientAuth\n",
        )?;
        for args in [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=fidelity-ca",
            ][..],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "apiserver.key",
                "-out",
                "apiserver.csr",
                "-subj",
                "/CN=kube-apiserver",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "apiserver.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "apiserver.crt",
                "-days",
                "2",
                "-extfile",
                "san.cnf",
                "-extensions",
                "ext",
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "admin.key",
                "-out",
                "admin.csr",
                "-subj",
                "/O=system:masters/CN=admin",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "admin.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "admin.crt",
                "-days",
                "2",
                "-extfile",
                "san.cnf",
                "-extensions",
                "client",
            ],
            &["genrsa", "-out", "sa.key", "2048"],
            &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
        ] {
            openssl(&pki, args)?;
        }
        let kubeconfig = d.join("kubeconfig");
        let p = |f: &str| pki.join(f).display().to_string();
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: real\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: real\n  context: {{cluster: real, user: admin}}\ncurrent-context: real\n",
                p("ca.crt"),
                p("admin.crt"),
                p("admin.key")
            ),
        )?;
        let mut cp = ControlPlane {
            dir: Some(dir),
            children: Vec::new(),
            kubeconfig: kubeconfig.clone(),
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        cp.spawn(
            "etcd",
            etcd,
            &[
                "--data-dir".into(),
                d.join("etcd").display().to_string(),
                "--listen-client-urls".into(),
                etcd_url.clone(),
                "--advertise-client-urls".into(),
                etcd_url.clone(),
                "--listen-peer-urls".into(),
                format!("http://127.0.0.1:{peer_port}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://127.0.0.1:{peer_port}"),
                "--initial-cluster".into(),
                format!("default=http://127.0.0.1:{peer_port}"),
            ],
        )?;
        cp.spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                "--insecure-port=0".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--cert-dir={}", d.join("certs").display()),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--authorization-mode=RBAC".into(),
            ],
        )?;
        cp.wait_ready(api_port).await?;
        cp.spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", kubeconfig.display()),
                "--bind-address=127.0.0.1".into(),
                "--port=0".into(),
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                "--use-service-account-credentials=false".into(),
                "--controllers=*".into(),
            ],
        )?;
        Ok(cp)
    }

    /// Spawn `program` with its output in `<dir>/<name>.log`. `setpriv --pdeathsig KILL`
    /// makes the kernel kill it if this test process dies without running `Drop`.
    fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> anyhow::Result<()> {
        let dir = self.dir()?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new("setpriv")
            .arg("--pdeathsig")
            .arg("KILL")
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    fn dir(&self) -> anyhow::Result<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.path().to_owned())
            .context("control plane directory already released")
    }

    /// A component's log, for error messages.
    pub(crate) fn log(&self, name: &str) -> String {
        self.dir()
            .and_then(|d| Ok(std::fs::read_to_string(d.join(format!("{name}.log")))?))
            .map(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            })
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    async fn wait_ready(&mut self, port: u16) -> anyhow::Result<()> {
        let client = super::http::client(&self.kubeconfig).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut exited = None;
            for (name, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    exited = Some((name.clone(), status));
                }
            }
            if let Some((name, status)) = exited {
                bail!(
                    "{name} exited ({status}) before the API server on port {port} was ready:\n{}",
                    self.log(&name)
                );
            }
            if let Ok((200, _)) = super::http::call(&client, "GET", "/readyz", "", Vec::new()).await
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready within 60 s:\n{}",
                    self.log("kube-apiserver")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Controller manager first, etcd last; each gets SIGTERM and five seconds.
        for (name, mut child) in self.children.drain(..).rev() {
            let pid = nix::unistd::Pid::from_raw(child.id().cast_signed());
            if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
                eprintln!("stopping {name}: {e}");
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        if let Err(e) = child.kill() {
                            eprintln!("killing {name}: {e}");
                        }
                        if let Err(e) = child.wait() {
                            eprintln!("reaping {name}: {e}");
                        }
                        break;
                    }
                }
            }
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("HARNESS_KEEP").is_some_and(|v| v == "1") {
                eprintln!("HARNESS_KEEP=1: kept {}", dir.keep().display());
            }
        }
    }
}
