//! Reaching into a pod through the Kubernetes API: exec with stdout streamed to a file
//! (binary-safe), and a port-forwarded stream for a database session.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::AsyncWriteExt;

use super::BackupError;
use super::files::{cause_lines, create_private_file};

/// A container in a pod, reached through a Kubernetes client.
#[derive(Clone)]
pub struct PodRef {
    /// The client (any kubeconfig context, the simulated cluster, kind).
    pub client: kube::Client,
    /// Namespace.
    pub namespace: String,
    /// Pod name (`postgresql-0`).
    pub pod: String,
    /// Container, when the pod has several.
    pub container: Option<String>,
}

impl std::fmt::Debug for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodRef")
            .field("namespace", &self.namespace)
            .field("pod", &self.pod)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

/// The standard error of a command is kept up to this many bytes, for messages.
const STDERR_LIMIT: usize = 64 * 1024;

impl PodRef {
    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Fails with [`BackupError::PodNotFound`] when the pod does not exist.
    pub(crate) async fn check_exists(&self) -> Result<(), BackupError> {
        match self.api().get_opt(&self.pod).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                // Say which is missing: the pod, or the whole namespace.
                let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
                    Api::all(self.client.clone());
                let namespace =
                    namespaces
                        .get_opt(&self.namespace)
                        .await
                        .map_err(BackupError::kube(format!(
                            "get namespace {}",
                            self.namespace
                        )))?;
                Err(match namespace {
                    None => BackupError::NamespaceNotFound {
                        namespace: self.namespace.clone(),
                        pod: self.pod.clone(),
                    },
                    Some(_) => BackupError::PodNotFound {
                        namespace: self.namespace.clone(),
                        name: self.pod.clone(),
                    },
                })
            }
            Err(source) => Err(BackupError::Kube {
                what: format!("get pod {}/{}", self.namespace, self.pod),
                source,
            }),
        }
    }

    /// Runs `command` in the container, streaming its standard output into a new private file
    /// at `out`. Returns the bytes written. The command's exit status must arrive: a stream
    /// that ends without one is [`BackupError::ExecCutOff`].
    pub async fn exec_to_file(
        &self,
        command: Vec<String>,
        what: &str,
        out: &Path,
    ) -> Result<u64, BackupError> {
        let file = tokio::fs::File::from_std(create_private_file(out)?);
        let mut writer = WriteFailure {
            inner: tokio::io::BufWriter::with_capacity(1 << 20, file),
            failed: None,
        };
        let streamed = self.exec_into(command, what, &mut writer).await;
        // A failed write (no space left) is the file's fault, not the stream's: name the file.
        if let Some(source) = writer.failed.take() {
            return Err(BackupError::Io {
                action: "write",
                path: out.to_path_buf(),
                source,
            });
        }
        let bytes = streamed?;
        writer
            .inner
            .flush()
            .await
            .map_err(BackupError::io("write", out))?;
        writer
            .inner
            .into_inner()
            .sync_all()
            .await
            .map_err(BackupError::io("sync", out))?;
        Ok(bytes)
    }

    /// Runs `command` and returns its standard output as text.
    pub async fn exec_output(
        &self,
        command: Vec<String>,
        what: &str,
    ) -> Result<String, BackupError> {
        let mut buf = Vec::new();
        self.exec_into(command, what, &mut buf).await?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    async fn exec_into<W>(
        &self,
        command: Vec<String>,
        what: &str,
        sink: &mut W,
    ) -> Result<u64, BackupError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        self.check_exists().await?;
        let program = command.first().cloned().unwrap_or_default();
        let mut params = AttachParams::default()
            .stdin(false)
            .stdout(true)
            .stderr(true);
        if let Some(container) = &self.container {
            params = params.container(container.clone());
        }
        let mut process =
            self.api()
                .exec(&self.pod, command, &params)
                .await
                .map_err(BackupError::kube(format!(
                    "exec {program} in pod {}/{}",
                    self.namespace, self.pod
                )))?;
        let mut stdout = process.stdout().expect("stdout was requested");
        let mut stderr = process.stderr().expect("stderr was requested");
        let status = process.take_status().expect("status is taken once");

        let read_stderr = crate::process::read_kept(&mut stderr, STDERR_LIMIT);
        let (copied, stderr_bytes) = tokio::join!(tokio::io::copy(&mut stdout, sink), read_stderr);
        let bytes = copied.map_err(|source| BackupError::Io {
            action: "stream exec output of",
            path: format!("{}/{}:{program}", self.namespace, self.pod).into(),
            source,
        })?;
        let status = status.await;
        let _ = process.join().await;
        let cut_off = || BackupError::ExecCutOff {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            command: program.clone(),
            bytes,
        };
        let status = status.ok_or_else(cut_off)?;
        if status.status.as_deref() == Some("Success") {
            Ok(bytes)
        } else {
            let reason = status
                .message
                .or(status.reason)
                .unwrap_or_else(|| "no status message".to_owned());
            Err(BackupError::Tool {
                tool: program.clone(),
                what: format!("{what} in pod {}/{}", self.namespace, self.pod),
                status: reason,
                stderr: cause_lines(&String::from_utf8_lossy(&stderr_bytes)),
            })
        }
    }

    /// Opens a PostgreSQL session to `port` of the pod over a port-forward, with `config`
    /// giving user, database and password (host and port are not used). The forward lives as
    /// long as the connection.
    pub(crate) async fn connect_postgres(
        &self,
        port: u16,
        config: &tokio_postgres::Config,
        user: &str,
    ) -> Result<tokio_postgres::Client, BackupError> {
        self.check_exists().await?;
        let target = format!("pod {}/{}:{port}", self.namespace, self.pod);
        let mut forwarder = self
            .api()
            .portforward(&self.pod, &[port])
            .await
            .map_err(BackupError::kube(format!("port-forward to {target}")))?;
        let stream = forwarder
            .take_stream(port)
            .ok_or_else(|| BackupError::PortForward {
                target: target.clone(),
                detail: "no stream for the port".to_owned(),
            })?;
        let (client, connection) = config
            .connect_raw(stream, tokio_postgres::NoTls)
            .await
            .map_err(|source| BackupError::Postgres {
                what: "open the snapshot session".to_owned(),
                source: crate::pg::PgError::from_connect(user, target.clone(), source),
            })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "port-forwarded postgres connection ended");
            }
            drop(forwarder);
        });
        Ok(client)
    }
}

/// A writer that remembers the first error it returned, so that a copy failing on the write
/// side is told apart from one failing on the read side.
struct WriteFailure<W> {
    inner: W,
    failed: Option<std::io::Error>,
}

impl<W> WriteFailure<W> {
    fn note<T>(&mut self, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(err)) = &poll
            && self.failed.is_none()
        {
            self.failed = Some(std::io::Error::new(err.kind(), err.to_string()));
        }
        poll
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteFailure<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(poll)
    }
}

#[cfg(test)]
mod tests {
    use super::WriteFailure;

    /// A copy into a full disk (the kernel's /dev/full) fails on the write side, and the
    /// writer says so: `exec_to_file` then names the file, not the stream.
    #[tokio::test]
    async fn a_full_disk_is_a_write_failure() {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .await
            .expect("open /dev/full");
        let mut writer = WriteFailure {
            inner: file,
            failed: None,
        };
        let mut source: &[u8] = &[7u8; 4096];
        let err = tokio::io::copy(&mut source, &mut writer)
            .await
            .expect_err("/dev/full is full");
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull, "{err}");
        let noted = writer.failed.expect("the write failure is noted");
        assert_eq!(noted.kind(), std::io::ErrorKind::StorageFull);
    }
}
