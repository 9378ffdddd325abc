//! A real Kubernetes control plane as local processes: etcd, kube-apiserver (TLS, client
//! certificates, `Node,RBAC` authorization), kube-controller-manager and kube-scheduler, all on
//! 127.0.0.1 and free ports, their state in one private scratch directory.
//!
//! Usable on its own (an API server to compare the simulator against) and as the `local`
//! provider's control plane. Dropping it stops every process and removes the directory
//! (kept with `HARNESS_KEEP=1`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::daemon::{Daemon, free_port, mkdir, wait_for};
use super::pki::{CertPair, Pki, write_kubeconfig};
use super::{LocalError, binaries};
use crate::keep::ScratchDir;

/// The Service IP range (the first address is the `kubernetes` Service).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// Options for [`ControlPlane::start`].
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// The directory holding kube-apiserver, kube-controller-manager and kube-scheduler
    /// (default: `$RR_K8S_BIN`, else the cache of `ci/k8s/build.sh`).
    pub bin_dir: PathBuf,
    /// The kubeconfig context's name.
    pub context: String,
    /// How long the whole start may take.
    pub timeout: Duration,
}

impl ControlPlaneOptions {
    /// Options with the default binaries (see [`binaries::bin_dir`]).
    ///
    /// # Errors
    /// [`LocalError::NotFound`] when no binaries are found.
    pub fn new(context: &str) -> Result<Self, LocalError> {
        Ok(Self {
            bin_dir: binaries::bin_dir(None)?,
            context: context.to_owned(),
            timeout: Duration::from_secs(90),
        })
    }
}

/// A running control plane. Dropping it stops every process and removes its directory.
#[derive(Debug)]
pub struct ControlPlane {
    minor: u32,
    // Fields drop in order: the processes first, then the directory.
    scheduler: Daemon,
    controller_manager: Daemon,
    apiserver: Daemon,
    etcd: Daemon,
    pki: Pki,
    url: String,
    context: String,
    kubeconfig: PathBuf,
    started_in: Duration,
    dir: Option<ScratchDir>,
}

/// The certificates and keys issued before any component starts.
struct Certs {
    /// The API server's serving certificate.
    serving: CertPair,
    /// The API server's client certificate towards kubelets.
    kubelet_client: CertPair,
    /// `kubernetes-admin` in `system:masters`, for the admin kubeconfig.
    admin: CertPair,
    /// The service-account token signing key and its public half.
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl Certs {
    /// Issues them from the cluster's CA.
    fn issue(pki: &Pki) -> Result<Certs, LocalError> {
        let serving = pki.server(
            "kube-apiserver",
            &[
                "IP:127.0.0.1".to_owned(),
                "IP:10.96.0.1".to_owned(),
                "DNS:localhost".to_owned(),
                "DNS:kubernetes".to_owned(),
                "DNS:kubernetes.default".to_owned(),
                "DNS:kubernetes.default.svc".to_owned(),
                "DNS:kubernetes.default.svc.cluster.local".to_owned(),
            ],
        )?;
        let kubelet_client = pki.client(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
        )?;
        let admin = pki.client("admin", "kubernetes-admin", &["system:masters"])?;
        let (sa_key, sa_pub) = pki.service_account_keys()?;
        Ok(Certs {
            serving,
            kubelet_client,
            admin,
            sa_key,
            sa_pub,
        })
    }
}

/// What the components' command lines share: the state directory and its `logs/`, the
/// binaries, the kubeconfig context, the API server's URL, the CA and the minor version.
struct Components<'a> {
    root: &'a Path,
    logs: PathBuf,
    bin_dir: &'a Path,
    context: &'a str,
    url: &'a str,
    pki: &'a Pki,
    minor: u32,
}

/// A path as a flag's value.
fn p(path: &Path) -> String {
    path.display().to_string()
}

impl Components<'_> {
    /// etcd serving clients at `etcd_url`, its data under the state directory.
    fn start_etcd(&self, etcd_url: &str, peer_port: u16) -> Result<Daemon, LocalError> {
        let etcd_data = self.root.join("etcd");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        Daemon::start(
            "etcd",
            Path::new("etcd"),
            &[
                "--name=local".to_owned(),
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=local={peer_url}"),
                "--log-level=warn".to_owned(),
            ],
            &self.logs.join("etcd.log"),
        )
    }

    /// kube-apiserver on `api_port` over etcd, with client-certificate TLS and `Node,RBAC`.
    fn start_apiserver(
        &self,
        etcd_url: &str,
        api_port: u16,
        certs: &Certs,
    ) -> Result<Daemon, LocalError> {
        Daemon::start(
            "kube-apiserver",
            &self.bin_dir.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".to_owned(),
                "--advertise-address=127.0.0.1".to_owned(),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", p(&self.root.join("apiserver-certs"))),
                format!("--tls-cert-file={}", p(&certs.serving.cert)),
                format!("--tls-private-key-file={}", p(&certs.serving.key)),
                format!("--client-ca-file={}", p(&self.pki.ca.cert)),
                format!("--service-account-key-file={}", p(&certs.sa_pub)),
                format!("--service-account-signing-key-file={}", p(&certs.sa_key)),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--authorization-mode=Node,RBAC".to_owned(),
                "--enable-admission-plugins=NodeRestriction".to_owned(),
                "--allow-privileged=true".to_owned(),
                format!(
                    "--kubelet-client-certificate={}",
                    p(&certs.kubelet_client.cert)
                ),
                format!("--kubelet-client-key={}", p(&certs.kubelet_client.key)),
                // The node is `localhost` and its kubelet listens on 127.0.0.1 only.
                "--kubelet-preferred-address-types=Hostname,InternalIP".to_owned(),
                // The `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints
                // refuse: the node writes them, naming its relay on the pod bridge
                // (`api_relay.rs`).
                "--endpoint-reconciler-type=none".to_owned(),
                "--profiling=false".to_owned(),
            ]
            .into_iter()
            .chain((self.minor < 24).then(|| "--insecure-port=0".to_owned()))
            .collect::<Vec<_>>(),
            &self.logs.join("kube-apiserver.log"),
        )
    }

    /// kube-controller-manager as `system:kube-controller-manager`, signing service-account
    /// tokens with `sa_key`.
    fn start_controller_manager(&self, sa_key: &Path) -> Result<Daemon, LocalError> {
        let pki = self.pki;
        let cm_user = pki.client(
            "kube-controller-manager",
            "system:kube-controller-manager",
            &[],
        )?;
        let cm_config = self.root.join("kube-controller-manager.kubeconfig");
        write_kubeconfig(&cm_config, self.context, self.url, &pki.ca.cert, &cm_user)?;
        Daemon::start(
            "kube-controller-manager",
            &self.bin_dir.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", p(&cm_config)),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={}", free_port()?),
                format!(
                    "--cert-dir={}",
                    p(&self.root.join("controller-manager-certs"))
                ),
                format!("--service-account-private-key-file={}", p(sa_key)),
                format!("--root-ca-file={}", p(&pki.ca.cert)),
                format!("--cluster-signing-cert-file={}", p(&pki.ca.cert)),
                format!("--cluster-signing-key-file={}", p(&pki.ca.key)),
                "--use-service-account-credentials=true".to_owned(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--leader-elect=false".to_owned(),
                "--profiling=false".to_owned(),
            ]
            .into_iter()
            .chain((self.minor < 24).then(|| "--port=0".to_owned()))
            .collect::<Vec<_>>(),
            &self.logs.join("kube-controller-manager.log"),
        )
    }

    /// kube-scheduler as `system:kube-scheduler`.
    fn start_scheduler(&self) -> Result<Daemon, LocalError> {
        let pki = self.pki;
        let sched_user = pki.client("kube-scheduler", "system:kube-scheduler", &[])?;
        let sched_config = self.root.join("kube-scheduler.kubeconfig");
        write_kubeconfig(
            &sched_config,
            self.context,
            self.url,
            &pki.ca.cert,
            &sched_user,
        )?;
        Daemon::start(
            "kube-scheduler",
            &self.bin_dir.join("kube-scheduler"),
            &[
                format!("--kubeconfig={}", p(&sched_config)),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={}", free_port()?),
                format!("--cert-dir={}", p(&self.root.join("scheduler-certs"))),
                "--leader-elect=false".to_owned(),
                "--profiling=false".to_owned(),
            ]
            .into_iter()
            .chain((self.minor < 24).then(|| "--port=0".to_owned()))
            .collect::<Vec<_>>(),
            &self.logs.join("kube-scheduler.log"),
        )
    }
}

impl ControlPlane {
    /// Starts etcd, the API server, the controller manager and the scheduler, and waits until
    /// the API serves the `default` namespace and the controller manager has made the `default` service
    /// account's token (pods can be admitted).
    ///
    /// # Errors
    /// [`LocalError::ProgramMissing`] without etcd or openssl, [`LocalError::Exited`] with the
    /// end of a component's log when it dies, [`LocalError::NotReady`] after the deadline.
    pub async fn start(options: ControlPlaneOptions) -> Result<Self, LocalError> {
        let started = Instant::now();
        super::require_programs(&[("etcd", "etcd-server"), ("openssl", "openssl")])?;
        let dir = ScratchDir::new("harness-k8s-cp-", "local control plane").map_err(|source| {
            LocalError::Io {
                action: "create",
                path: std::env::temp_dir(),
                source,
            }
        })?;
        let root = dir.path().to_owned();
        // Flags removed in later versions are passed only to the versions that have them.
        let minor = binaries::minor_version(&options.bin_dir)?;
        let pki = Pki::create(&root.join("pki"))?;
        let certs = Certs::issue(&pki)?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let url = format!("https://127.0.0.1:{api_port}");
        let components = Components {
            root: &root,
            logs: root.join("logs"),
            bin_dir: &options.bin_dir,
            context: &options.context,
            url: &url,
            pki: &pki,
            minor,
        };
        mkdir(&components.logs)?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd = components.start_etcd(&etcd_url, peer_port)?;
        let mut apiserver = components.start_apiserver(&etcd_url, api_port, &certs)?;
        let kubeconfig = root.join("admin.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &options.context,
            &url,
            &pki.ca.cert,
            &certs.admin,
        )?;
        let client = client(&kubeconfig, &options.context).await?;
        let remaining = |started: Instant| options.timeout.saturating_sub(started.elapsed());
        wait_for(
            "kube-apiserver",
            remaining(started),
            &mut [&mut etcd, &mut apiserver],
            || readyz(&client),
        )
        .await?;

        let mut controller_manager = components.start_controller_manager(&certs.sa_key)?;
        let mut scheduler = components.start_scheduler()?;
        wait_for(
            "kube-controller-manager (the default service account's token)",
            remaining(started),
            &mut [
                &mut etcd,
                &mut apiserver,
                &mut controller_manager,
                &mut scheduler,
            ],
            // Since 1.24 no token Secret is made: the ServiceAccount itself is the sign.
            || default_service_account(&client, minor < 24),
        )
        .await?;
        let started_in = started.elapsed();
        tracing::info!(%url, seconds = started_in.as_secs_f64(), "local control plane ready");
        Ok(Self {
            minor,
            scheduler,
            controller_manager,
            apiserver,
            etcd,
            pki,
            url,
            context: options.context,
            kubeconfig,
            started_in,
            dir: Some(dir),
        })
    }

    /// The admin kubeconfig (user `kubernetes-admin` in `system:masters`), 0600.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The context in [`ControlPlane::kubeconfig_path`].
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The API server's URL (`https://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long [`ControlPlane::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The directory holding the state, certificates and logs (`logs/<component>.log`).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or_else(|| Path::new(""), |d| d.path())
    }

    /// An admin kube-rs client.
    ///
    /// # Errors
    /// [`LocalError::Client`] when the kubeconfig cannot be used.
    pub async fn client(&self) -> Result<kube::Client, LocalError> {
        client(&self.kubeconfig, &self.context).await
    }

    /// A kubeconfig at `path` for a user of this cluster's CA: `user` in `groups` (RBAC
    /// decides what it may do). Its certificate and key are written next to it.
    ///
    /// # Errors
    /// When openssl fails or a file cannot be written.
    pub fn user_kubeconfig(
        &self,
        path: &Path,
        user: &str,
        groups: &[&str],
    ) -> Result<(), LocalError> {
        let name = user.replace(':', "-");
        let issued = self.pki.client(&name, user, groups)?;
        let pair = CertPair {
            cert: issued.cert,
            key: issued.key,
        };
        write_kubeconfig(path, &self.context, &self.url, &self.pki.ca.cert, &pair)
    }

    /// The Kubernetes minor version of its binaries (20 for v1.20.2).
    pub fn minor_version(&self) -> u32 {
        self.minor
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca.cert
    }

    /// The pids of its processes while they run.
    pub fn pids(&self) -> Vec<i32> {
        [
            &self.etcd,
            &self.apiserver,
            &self.controller_manager,
            &self.scheduler,
        ]
        .iter()
        .filter_map(|d| d.pid())
        .collect()
    }

    /// Stops every process (scheduler and controller manager first, etcd last) and removes the
    /// directory, even with `HARNESS_KEEP` (stopping means stopping).
    ///
    /// # Errors
    /// [`LocalError::Io`] when the directory cannot be removed.
    pub fn stop(mut self) -> Result<(), LocalError> {
        self.stop_processes();
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            dir.remove().map_err(|source| LocalError::Io {
                action: "remove",
                path,
                source,
            })?;
        }
        Ok(())
    }

    fn stop_processes(&mut self) {
        self.scheduler.stop(Duration::from_secs(5));
        self.controller_manager.stop(Duration::from_secs(5));
        self.apiserver.stop(Duration::from_secs(10));
        self.etcd.stop(Duration::from_secs(10));
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if crate::keep::keep_requested() {
            eprintln!(
                "{}: local control plane kept at {} (kubeconfig {})",
                crate::keep::KEEP_ENV,
                self.url,
                self.kubeconfig.display()
            );
            return; // The daemons and the directory say where they are as they drop.
        }
        self.stop_processes();
        // The ScratchDir's own drop removes the directory.
    }
}

/// An admin client from a kubeconfig.
pub(crate) async fn client(kubeconfig: &Path, context: &str) -> Result<kube::Client, LocalError> {
    crate::cluster::kubeconfig::client_for(kubeconfig, Some(context))
        .await
        .map_err(|err| LocalError::Client {
            detail: crate::error_chain(&err),
        })
}

/// Ready for clients: the API answers with the `default` namespace, which the API server's
/// own bootstrap creates once its post-start hooks ran.
async fn readyz(client: &kube::Client) -> Result<bool, String> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    match api.get_opt("default").await {
        Ok(found) => Ok(found.is_some()),
        Err(err) => Err(crate::error_chain(&err)),
    }
}

async fn default_service_account(client: &kube::Client, token: bool) -> Result<bool, String> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let api: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), "default");
    match api.get_opt("default").await {
        Ok(Some(sa)) => Ok(!token || sa.secrets.is_some_and(|s| !s.is_empty())),
        Ok(None) => Ok(false),
        Err(err) => Err(crate::error_chain(&err)),
    }
}
