//! The cluster's certificates, made with the `openssl` program: one CA, the API server's
//! serving certificate, a client certificate per component (the user and groups RBAC and the
//! Node authorizer see), and the service-account signing key. Keys are P-256 (fast to make;
//! Kubernetes 1.20 accepts them everywhere), written 0600.

use std::path::{Path, PathBuf};

use super::LocalError;
use super::daemon::{run, write};

/// A certificate and its key.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key (0600).
    pub key: PathBuf,
}

/// The certificate authority of one cluster, in its directory.
#[derive(Debug)]
pub(crate) struct Pki {
    dir: PathBuf,
    pub(crate) ca: CertPair,
}

impl Pki {
    /// Makes a new CA in `dir` (created 0700).
    pub(crate) fn create(dir: &Path) -> Result<Self, LocalError> {
        super::daemon::mkdir(dir)?;
        crate::keep::set_private_dir(dir).map_err(|source| LocalError::Io {
            action: "chmod",
            path: dir.to_owned(),
            source,
        })?;
        let ca = CertPair {
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        };
        new_key(&ca.key)?;
        run(
            "openssl",
            &[
                "req".as_ref(),
                "-x509".as_ref(),
                "-new".as_ref(),
                "-key".as_ref(),
                ca.key.as_os_str(),
                "-subj".as_ref(),
                "/CN=rebuild-rehearsal-local-ca".as_ref(),
                "-days".as_ref(),
                "30".as_ref(),
                "-out".as_ref(),
                ca.cert.as_os_str(),
            ],
        )?;
        Ok(Self {
            dir: dir.to_owned(),
            ca,
        })
    }

    /// A client certificate for user `user` in `groups`, named `name` in the directory.
    pub(crate) fn client(
        &self,
        name: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<CertPair, LocalError> {
        let subject: String = groups
            .iter()
            .map(|g| format!("/O={g}"))
            .chain(std::iter::once(format!("/CN={user}")))
            .collect();
        self.issue(
            name,
            &subject,
            "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
        )
    }

    /// A serving certificate for the API server, valid for `sans` (`IP:…`, `DNS:…`).
    pub(crate) fn server(&self, name: &str, sans: &[String]) -> Result<CertPair, LocalError> {
        self.issue(
            name,
            &format!("/CN={name}"),
            &format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
                sans.join(",")
            ),
        )
    }

    /// The service-account signing key pair (RSA, which every token reviewer accepts):
    /// `(private, public)`.
    pub(crate) fn service_account_keys(&self) -> Result<(PathBuf, PathBuf), LocalError> {
        let key = self.dir.join("sa.key");
        let public = self.dir.join("sa.pub");
        run(
            "openssl",
            &[
                "genpkey".as_ref(),
                "-algorithm".as_ref(),
                "RSA".as_ref(),
                "-pkeyopt".as_ref(),
                "rsa_keygen_bits:2048".as_ref(),
                "-out".as_ref(),
                key.as_os_str(),
            ],
        )?;
        private(&key)?;
        run(
            "openssl",
            &[
                "pkey".as_ref(),
                "-in".as_ref(),
                key.as_os_str(),
                "-pubout".as_ref(),
                "-out".as_ref(),
                public.as_os_str(),
            ],
        )?;
        Ok((key, public))
    }

    fn issue(&self, name: &str, subject: &str, extensions: &str) -> Result<CertPair, LocalError> {
        let pair = CertPair {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        new_key(&pair.key)?;
        run(
            "openssl",
            &[
                "req".as_ref(),
                "-new".as_ref(),
                "-key".as_ref(),
                pair.key.as_os_str(),
                "-subj".as_ref(),
                subject.as_ref(),
                "-out".as_ref(),
                csr.as_os_str(),
            ],
        )?;
        write(&ext, extensions)?;
        run(
            "openssl",
            &[
                "x509".as_ref(),
                "-req".as_ref(),
                "-in".as_ref(),
                csr.as_os_str(),
                "-CA".as_ref(),
                self.ca.cert.as_os_str(),
                "-CAkey".as_ref(),
                self.ca.key.as_os_str(),
                "-CAcreateserial".as_ref(),
                "-days".as_ref(),
                "30".as_ref(),
                "-extfile".as_ref(),
                ext.as_os_str(),
                "-out".as_ref(),
                pair.cert.as_os_str(),
            ],
        )?;
        Ok(pair)
    }
}

fn new_key(path: &Path) -> Result<(), LocalError> {
    run(
        "openssl",
        &[
            "genpkey".as_ref(),
            "-algorithm".as_ref(),
            "EC".as_ref(),
            "-pkeyopt".as_ref(),
            "ec_paramgen_curve:P-256".as_ref(),
            "-out".as_ref(),
            path.as_os_str(),
        ],
    )?;
    private(path)
}

fn private(path: &Path) -> Result<(), LocalError> {
    crate::keep::set_private_file(path).map_err(|source| LocalError::Io {
        action: "chmod",
        path: path.to_owned(),
        source,
    })
}

/// A kubeconfig for `user` (a client certificate) reaching `server`, written 0600. The
/// certificates and the key are inline (`*-data`), so the file works on its own, copied or
/// seen from a sandbox where the cluster's directory is not (the runbook's shell).
pub(crate) fn write_kubeconfig(
    path: &Path,
    context: &str,
    server: &str,
    ca: &Path,
    user: &CertPair,
) -> Result<(), LocalError> {
    use base64::Engine as _;
    let inline = |file: &Path| -> Result<String, LocalError> {
        let bytes = std::fs::read(file).map_err(|source| LocalError::Io {
            action: "read",
            path: file.to_owned(),
            source,
        })?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    };
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {
            "server": server,
            "certificate-authority-data": inline(ca)?,
        }}],
        "users": [{"name": context, "user": {
            "client-certificate-data": inline(&user.cert)?,
            "client-key-data": inline(&user.key)?,
        }}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
        "current-context": context,
    });
    // JSON is YAML: every kubeconfig reader takes it.
    crate::keep::write_private(path, doc.to_string().as_bytes()).map_err(|source| LocalError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}
