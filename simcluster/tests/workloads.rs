//! Workloads on the simulated cluster, driven with the real kubectl and kube-rs: a
//! PostgreSQL StatefulSet with a real server, exec and logs, Deployments and readiness,
//! CrashLoopBackOff, Jobs, port-forward, and no process left behind when the simulator dies.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use simcluster::{SimCluster, SimConfig};
use tokio::io::AsyncWriteExt as _;

/// Run a test body with a deadline, so that a hang fails the test instead of the CI run.
async fn bounded(body: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(240), body)
        .await
        .context("the test did not finish within 240 s")?
}

/// A cluster in a private directory (traversable, so PostgreSQL's account can reach its
/// data), and kubectl pointed at it.
struct Env {
    // Field order is drop order: the cluster stops before its directory goes.
    cluster: Option<SimCluster>,
    dir: tempfile::TempDir,
}

struct Out {
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Env {
    async fn start() -> Result<Env> {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("simcluster=warn")
            .try_init();
        let dir = tempfile::Builder::new()
            .prefix("simcluster-workloads-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        let cfg = SimConfig::new(
            "workloads",
            dir.path().join("state"),
            dir.path().join("kubeconfig"),
        );
        let cluster = SimCluster::start(cfg)
            .await
            .context("starting the cluster")?;
        Ok(Env {
            cluster: Some(cluster),
            dir,
        })
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    async fn kubectl_in(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Out> {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running kubectl")?;
        if let Some(data) = stdin {
            let mut w = child.stdin.take().context("kubectl stdin")?;
            w.write_all(data).await?;
            drop(w);
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .context("kubectl timed out")??;
        Ok(Out {
            ok: out.status.success(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// [`Env::kubectl`] with owned arguments.
    async fn kubectl_v(&self, args: &[String]) -> Result<String> {
        self.kubectl(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await
    }

    /// kubectl that must succeed; its stdout.
    async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl_in(args, None).await?;
        ensure!(out.ok, "kubectl {} failed: {}", args.join(" "), out.stderr);
        Ok(out.text())
    }

    async fn apply(&self, yaml: &str) -> Result<()> {
        let out = self
            .kubectl_in(&["apply", "-f", "-"], Some(yaml.as_bytes()))
            .await?;
        ensure!(out.ok, "kubectl apply failed: {}", out.stderr);
        Ok(())
    }

    /// Retry a kubectl command until it succeeds (for example `wait` before the pods exist).
    async fn eventually(&self, args: &[&str], within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let out = self.kubectl_in(args, None).await?;
            if out.ok {
                return Ok(out.text());
            }
            if Instant::now() > deadline {
                bail!("kubectl {} kept failing: {}", args.join(" "), out.stderr);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Poll a jsonpath until `pred` holds.
    async fn until(
        &self,
        args: &[&str],
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let out = self.kubectl_in(args, None).await?;
            let text = out.text();
            if out.ok && pred(&text) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                bail!(
                    "kubectl {}: condition not met, last output {text:?} {}",
                    args.join(" "),
                    out.stderr
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(c) = self.cluster.take() {
            c.shutdown().await?;
        }
        Ok(())
    }
}

const POSTGRES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: db}
---
apiVersion: v1
kind: Secret
metadata: {name: postgresql-secret, namespace: db}
stringData: {POSTGRES_PASSWORD: rehearsal-pw}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: postgresql-init-script, namespace: db}
data:
  001-schema.sql: |
    CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL);
    CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users(id), body bytea);
    INSERT INTO users (name) VALUES ('ada'), ('grace');
    INSERT INTO posts (user_id, body) SELECT 1 + i % 2, decode(repeat(md5(i::text), 20), 'hex') FROM generate_series(1, 200) i;
---
apiVersion: v1
kind: Service
metadata: {name: postgresql-service, namespace: db}
spec:
  selector: {app: postgresql}
  ports: [{name: postgresql, port: 5432, targetPort: postgresql}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: postgresql, namespace: db}
spec:
  serviceName: postgresql-service
  replicas: 1
  selector: {matchLabels: {app: postgresql}}
  template:
    metadata: {labels: {app: postgresql}}
    spec:
      containers:
        - name: postgresql
          image: postgres:15-alpine
          ports: [{name: postgresql, containerPort: 5432}]
          env:
            - {name: POSTGRES_DB, value: titanium}
            - {name: POSTGRES_USER, value: postgres}
            - name: POSTGRES_PASSWORD
              valueFrom: {secretKeyRef: {name: postgresql-secret, key: POSTGRES_PASSWORD}}
            - {name: PGDATA, value: /var/lib/postgresql/data/pgdata}
          volumeMounts:
            - {name: data, mountPath: /var/lib/postgresql/data}
            - {name: init-script, mountPath: /docker-entrypoint-initdb.d, readOnly: true}
          readinessProbe:
            exec: {command: ["pg_isready", "-U", "postgres", "-d", "titanium", "-h", "127.0.0.1"]}
            initialDelaySeconds: 5
            periodSeconds: 5
      volumes:
        - name: init-script
          configMap: {name: postgresql-init-script}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: local-path
        resources: {requests: {storage: 1Gi}}
"#;

fn psql(sql: &str) -> Vec<&str> {
    vec![
        "exec",
        "-n",
        "db",
        "postgresql-0",
        "--",
        "psql",
        "-U",
        "postgres",
        "-d",
        "titanium",
        "-tAc",
        sql,
    ]
}

async fn wait_postgres_ready(env: &Env) -> Result<()> {
    let r = env
        .eventually(
            &[
                "wait",
                "-n",
                "db",
                "--for=condition=ready",
                "pod",
                "-l",
                "app=postgresql",
                "--timeout=60s",
            ],
            Duration::from_secs(90),
        )
        .await;
    if let Err(e) = r {
        let state = env
            .kubectl_in(
                &[
                    "get",
                    "statefulsets,pods,pvc,pv,events",
                    "-n",
                    "db",
                    "-o",
                    "wide",
                ],
                None,
            )
            .await?;
        bail!("{e:#}\n{}{}", state.text(), state.stderr);
    }
    Ok(())
}

/// The TOC of a custom-format dump, without the header (which names times and sizes).
fn toc(dump: &Path) -> Result<Vec<String>> {
    let out = std::process::Command::new("pg_restore")
        .arg("--list")
        .arg(dump)
        .output()?;
    ensure!(
        out.status.success(),
        "pg_restore --list {}: {}",
        dump.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_statefulset_runs_a_real_server_with_persistent_data() -> Result<()> {
    bounded(async move {
    let env = Env::start().await?;
    env.apply(POSTGRES).await?;
    wait_postgres_ready(&env).await?;

    // The init script ran once, on the empty data directory.
    let tables = env.kubectl(&["exec", "-n", "db", "postgresql-0", "--", "psql", "-U", "postgres", "-d", "titanium", "-c", r"\dt"]).await?;
    ensure!(tables.contains("users") && tables.contains("posts"), "init tables missing: {tables}");
    env.kubectl(&psql("INSERT INTO users (name) VALUES ('linus')")).await?;

    // Data survives the pod.
    env.kubectl(&["delete", "pod", "-n", "db", "postgresql-0"]).await?;
    wait_postgres_ready(&env).await?;
    ensure!(env.kubectl(&psql("SELECT count(*) FROM users")).await?.trim() == "3", "rows lost with the pod");
    let logs = env.kubectl(&["logs", "-n", "db", "postgresql-0"]).await?;
    ensure!(logs.contains("Skipping initialization"), "second start re-initialised: {logs}");
    ensure!(logs.contains("ready to accept connections"), "no server log: {logs}");
    let rollout = env.kubectl(&["rollout", "status", "-n", "db", "statefulset/postgresql", "--timeout=30s"]).await?;
    ensure!(rollout.contains("roll out complete"), "{rollout}");

    // `kubectl cp` both ways through a mounted path.
    let local = env.dir.path().join("cp-in.txt");
    std::fs::write(&local, "copied\n")?;
    env.kubectl(&["cp", &local.to_string_lossy(), "db/postgresql-0:/var/lib/postgresql/data/cp.txt"]).await?;
    let back = env.dir.path().join("cp-out.txt");
    env.kubectl(&["cp", "db/postgresql-0:/var/lib/postgresql/data/cp.txt", &back.to_string_lossy()]).await?;
    ensure!(std::fs::read_to_string(&back)? == "copied\n", "kubectl cp round trip changed the file");

    // `kubectl exec -i ... psql < file.sql` restores.
    let sql = b"CREATE TABLE restored (k int PRIMARY KEY, v text);\nINSERT INTO restored SELECT i, repeat('x', i) FROM generate_series(1, 500) i;\n";
    let out = env.kubectl_in(&["exec", "-i", "-n", "db", "postgresql-0", "--", "psql", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "titanium"], Some(sql)).await?;
    ensure!(out.ok, "psql < file.sql failed: {}", out.stderr);
    ensure!(env.kubectl(&psql("SELECT sum(length(v)) FROM restored")).await?.trim() == "125250");

    // Exit codes propagate.
    let out = env.kubectl_in(&["exec", "-n", "db", "postgresql-0", "--", "psql", "-U", "postgres", "-d", "titanium", "-c", "SELECT * FROM missing"], None).await?;
    ensure!(!out.ok && out.stderr.contains("exit code 1"), "a failing psql must fail kubectl: {}", out.stderr);

    // pg_dump -Fc through exec equals a direct pg_dump of the same database.
    let through_exec = env.dir.path().join("exec.dump");
    let out = env.kubectl_in(&["exec", "-n", "db", "postgresql-0", "--", "pg_dump", "-U", "postgres", "-d", "titanium", "-Fc"], None).await?;
    ensure!(out.ok, "pg_dump through exec failed: {}", out.stderr);
    std::fs::write(&through_exec, &out.stdout)?;
    let ip = env.kubectl(&["get", "svc", "-n", "db", "postgresql-service", "-o", "jsonpath={.spec.clusterIP}"]).await?;
    let direct = env.dir.path().join("direct.dump");
    let st = std::process::Command::new("pg_dump")
        .args(["-h", &ip, "-U", "postgres", "-d", "titanium", "-Fc", "-f"])
        .arg(&direct)
        .env("PGPASSWORD", "rehearsal-pw")
        .status()?;
    ensure!(st.success(), "direct pg_dump through the Service failed");
    ensure!(toc(&through_exec)? == toc(&direct)?, "the dumps differ");
    let restored = |dump: &Path| -> Result<String> {
        let out = std::process::Command::new("pg_restore").args(["--data-only", "--table=posts", "-f", "-"]).arg(dump).output()?;
        ensure!(out.status.success(), "pg_restore of {} failed: {}", dump.display(), String::from_utf8_lossy(&out.stderr));
        // `\restrict` lines carry a random key per dump (psql's meta-command guard).
        let keep = |l: &&str| !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict");
        Ok(String::from_utf8_lossy(&out.stdout).lines().filter(keep).collect::<Vec<_>>().join("\n"))
    };
    ensure!(restored(&through_exec)? == restored(&direct)?, "the dumps hold different data");

    // The claim outlives the StatefulSet; deleting it deletes the data.
    env.kubectl(&["delete", "statefulset", "-n", "db", "postgresql"]).await?;
    env.until(&["get", "pods", "-n", "db", "-o", "name"], Duration::from_secs(60), |s| s.trim().is_empty()).await?;
    env.kubectl(&["get", "pvc", "-n", "db", "data-postgresql-0"]).await?;
    let volumes = env.dir.path().join("state/volumes");
    ensure!(std::fs::read_dir(&volumes)?.count() == 1, "the volume directory must exist");
    env.kubectl(&["delete", "pvc", "-n", "db", "data-postgresql-0"]).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&volumes)?.count() != 0 {
        ensure!(Instant::now() < deadline, "the volume directory outlived its claim");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.apply(POSTGRES).await?;
    wait_postgres_ready(&env).await?;
    ensure!(env.kubectl(&psql("SELECT count(*) FROM users")).await?.trim() == "2", "a new claim must start empty");
    env.stop().await
    })
    .await
}

const WEB: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: web
          image: python:3-slim
          command: ["sh", "-c", "echo web-started; exec python3 -m http.server 8080 --bind $(POD_IP) --directory /srv"]
          env:
            - name: POD_IP
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
          ports: [{name: http, containerPort: 8080}]
          volumeMounts: [{name: srv, mountPath: /srv}]
          readinessProbe:
            exec: {command: ["test", "-f", "/srv/ready"]}
            periodSeconds: 1
      volumes: [{name: srv, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb, namespace: web}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{name: http, port: 8081, targetPort: http}]
"#;

async fn http_get(addr: &str) -> Result<String> {
    use tokio::io::AsyncReadExt as _;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf)).await??;
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_gates_endpoints_and_rollout() -> Result<()> {
    bounded(async move {
        let env = Env::start().await?;
        env.apply(WEB).await?;
        let pods = env
            .until(
                &[
                    "get",
                    "pods",
                    "-n",
                    "web",
                    "-l",
                    "app=web",
                    "-o",
                    "jsonpath={.items[*].status.containerStatuses[0].state.running.startedAt}",
                ],
                Duration::from_secs(30),
                |s| s.split_whitespace().count() == 2,
            )
            .await?;
        ensure!(!pods.is_empty());
        let names = env
            .kubectl(&[
                "get",
                "pods",
                "-n",
                "web",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ])
            .await?;
        let names: Vec<&str> = names.split_whitespace().collect();
        for n in &names {
            ensure!(
                n.starts_with("web-") && n.len() > "web-".len() + 10,
                "pod name {n} lacks the template hash"
            );
        }
        let hash = env
            .kubectl(&[
                "get",
                "pods",
                "-n",
                "web",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[0].metadata.labels.pod-template-hash}",
            ])
            .await?;
        ensure!(!hash.is_empty(), "no pod-template-hash label");

        // Not ready: the Service has no endpoint, and its address refuses work.
        let ep = env
            .kubectl(&[
                "get",
                "endpoints",
                "-n",
                "web",
                "web",
                "-o",
                "jsonpath={.subsets[*].notReadyAddresses[*].ip}",
            ])
            .await?;
        ensure!(
            ep.split_whitespace().count() == 2,
            "both pods must be listed as not ready: {ep:?}"
        );
        let ip = env
            .kubectl(&[
                "get",
                "svc",
                "-n",
                "web",
                "web",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ])
            .await?;
        let addr = format!("{ip}:80");
        ensure!(
            http_get(&addr).await.map_or(true, |r| r.is_empty()),
            "an unready Service must not answer"
        );
        let out = env
            .kubectl_in(
                &[
                    "wait",
                    "-n",
                    "web",
                    "--for=condition=ready",
                    "pod",
                    "-l",
                    "app=web",
                    "--timeout=1s",
                ],
                None,
            )
            .await?;
        ensure!(!out.ok, "pods must not be ready yet");

        // Ready once the probe passes; rollout completes; the Service answers.
        for n in &names {
            env.kubectl(&[
                "exec",
                "-n",
                "web",
                n,
                "--",
                "sh",
                "-c",
                "echo hello > /srv/ready",
            ])
            .await?;
        }
        env.kubectl(&[
            "wait",
            "-n",
            "web",
            "--for=condition=ready",
            "pod",
            "-l",
            "app=web",
            "--timeout=30s",
        ])
        .await?;
        env.kubectl(&[
            "rollout",
            "status",
            "-n",
            "web",
            "deployment/web",
            "--timeout=30s",
        ])
        .await?;
        env.until(
            &[
                "get",
                "endpoints",
                "-n",
                "web",
                "web",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ],
            Duration::from_secs(10),
            |s| s.split_whitespace().count() == 2,
        )
        .await?;
        let answer = http_get(&addr).await?;
        // A LoadBalancer reports a loopback ingress address that answers on its port.
        let lb = env
            .until(
                &[
                    "get",
                    "svc",
                    "-n",
                    "web",
                    "web-lb",
                    "-o",
                    "jsonpath={.status.loadBalancer.ingress[0].ip}",
                ],
                Duration::from_secs(10),
                |s| !s.is_empty(),
            )
            .await?;
        ensure!(lb.starts_with("127."), "ingress {lb}");
        let lb_answer = http_get(&format!("{lb}:8081")).await?;
        ensure!(lb_answer.ends_with("hello\n"), "{lb_answer}");
        ensure!(
            answer.starts_with("HTTP/1.0 200") && answer.ends_with("hello\n"),
            "{answer}"
        );

        // kube-rs agrees the Deployment is complete.
        let kubeconfig = kube::config::Kubeconfig::read_from(env.kubeconfig())?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        let client = kube::Client::try_from(config)?;
        let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(client, "web");
        let done = kube::runtime::wait::await_condition(
            deployments,
            "web",
            kube::runtime::wait::conditions::is_deployment_completed(),
        );
        tokio::time::timeout(Duration::from_secs(10), done).await??;

        // Logs of each pod: its own output and the request it served.
        let logs = env
            .kubectl(&["logs", "-n", "web", "deployment/web"])
            .await?;
        ensure!(logs.contains("web-started"), "{logs}");

        // Readiness lost: out of the endpoints again.
        env.kubectl(&["exec", "-n", "web", names[0], "--", "rm", "/srv/ready"])
            .await?;
        env.until(
            &[
                "get",
                "endpoints",
                "-n",
                "web",
                "web",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ],
            Duration::from_secs(15),
            |s| s.split_whitespace().count() == 1,
        )
        .await?;

        // Scale down to one replica.
        env.kubectl(&["scale", "-n", "web", "deployment/web", "--replicas=1"])
            .await?;
        env.until(
            &["get", "pods", "-n", "web", "-l", "app=web", "-o", "name"],
            Duration::from_secs(30),
            |s| s.lines().count() == 1,
        )
        .await?;
        env.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_program_that_exits_goes_into_crash_loop_backoff() -> Result<()> {
    bounded(async move {
        let env = Env::start().await?;
        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: crasher, namespace: default}
spec:
  containers:
    - name: main
      image: busybox
      command: ["sh", "-c", "echo boom; exit 3"]
"#,
        )
        .await?;
        env.until(
            &[
                "get",
                "pod",
                "crasher",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
            ],
            Duration::from_secs(30),
            |s| s == "CrashLoopBackOff",
        )
        .await?;
        let count = env
            .until(
                &[
                    "get",
                    "pod",
                    "crasher",
                    "-o",
                    "jsonpath={.status.containerStatuses[0].restartCount}",
                ],
                Duration::from_secs(30),
                |s| s.parse::<u32>().is_ok_and(|n| n >= 2),
            )
            .await?;
        ensure!(!count.is_empty());
        let last = env
            .kubectl(&[
                "get",
                "pod",
                "crasher",
                "-o",
                "jsonpath={.status.containerStatuses[0].lastState.terminated.exitCode}",
            ])
            .await?;
        ensure!(last == "3", "last exit code {last}");
        let logs = env.kubectl(&["logs", "crasher", "--previous"]).await?;
        ensure!(logs == "boom\n", "{logs:?}");
        let events = env
            .kubectl(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=crasher",
                "-o",
                "jsonpath={.items[*].reason}",
            ])
            .await?;
        ensure!(events.contains("BackOff"), "no BackOff event: {events}");
        env.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_complete_and_fail_and_cronjobs_run_on_demand() -> Result<()> {
    bounded(async move {
        let env = Env::start().await?;
        env.apply(
            r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: default}
spec:
  schedule: "0 2 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: backup
              image: postgres:15-alpine
              command: ["/bin/sh", "-c", "echo backup done from $(HOSTNAME)"]
---
apiVersion: batch/v1
kind: Job
metadata: {name: failing, namespace: default}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          image: busybox
          command: ["false"]
"#,
        )
        .await?;
        // `kubectl create job --from` posts the Job as protobuf, which the API server does not
        // decode for Jobs yet; the client-side dry run builds the very same object.
        let job = env
            .kubectl(&[
                "create",
                "job",
                "manual",
                "--from=cronjob/nightly",
                "--dry-run=client",
                "-o",
                "json",
            ])
            .await?;
        let out = env
            .kubectl_in(&["create", "-f", "-"], Some(job.as_bytes()))
            .await?;
        ensure!(out.ok, "creating the job failed: {}", out.stderr);
        env.kubectl(&[
            "wait",
            "--for=condition=complete",
            "job/manual",
            "--timeout=60s",
        ])
        .await?;
        let logs = env.kubectl(&["logs", "job/manual"]).await?;
        ensure!(logs.starts_with("backup done from manual-"), "{logs:?}");
        // Following a finished container returns at once with its output.
        let followed = env.kubectl(&["logs", "-f", "job/manual"]).await?;
        ensure!(followed == logs, "{followed:?}");
        env.kubectl(&[
            "wait",
            "--for=condition=failed",
            "job/failing",
            "--timeout=60s",
        ])
        .await?;
        let failed = env
            .kubectl(&["get", "job", "failing", "-o", "jsonpath={.status.failed}"])
            .await?;
        ensure!(
            failed == "2",
            "backoffLimit 1 means two failed pods, got {failed}"
        );
        env.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kube_rs_exec_and_port_forward() -> Result<()> {
    bounded(async move {
        use kube::api::AttachParams;
        use tokio::io::AsyncReadExt as _;
        let env = Env::start().await?;
        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: redis, namespace: default, labels: {app: redis}}
spec:
  containers:
    - name: redis
      image: redis:7-alpine
      ports: [{containerPort: 6379}]
      readinessProbe:
        tcpSocket: {port: 6379}
        periodSeconds: 1
"#,
        )
        .await?;
        env.eventually(
            &[
                "wait",
                "--for=condition=ready",
                "pod/redis",
                "--timeout=30s",
            ],
            Duration::from_secs(40),
        )
        .await?;
        let kubeconfig = kube::config::Kubeconfig::read_from(env.kubeconfig())?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        let client = kube::Client::try_from(config)?;
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(client, "default");
        // Binary-safe stdout and the exit status.
        let mut attached = pods
            .exec(
                "redis",
                ["sh", "-c", "printf '\\000\\377\\001'; exit 5"],
                &AttachParams::default().stderr(false),
            )
            .await?;
        let mut stdout = attached.stdout().context("stdout")?;
        let status = attached.take_status().context("status")?;
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).await?;
        ensure!(bytes == [0, 255, 1], "{bytes:?}");
        let status = status.await.context("no status")?;
        ensure!(
            status.reason.as_deref() == Some("NonZeroExitCode"),
            "{status:?}"
        );
        let code = status
            .details
            .and_then(|d| d.causes)
            .and_then(|c| {
                c.into_iter()
                    .find(|c| c.reason.as_deref() == Some("ExitCode"))
            })
            .and_then(|c| c.message);
        ensure!(code.as_deref() == Some("5"), "{code:?}");
        attached.join().await?;
        // stdin, closed by the client, reaches the command.
        let mut attached = pods
            .exec(
                "redis",
                ["redis-cli", "-x", "-h", "localhost", "set", "k"],
                &AttachParams::default().stdin(true).stderr(false),
            )
            .await?;
        let mut stdin = attached.stdin().context("stdin")?;
        stdin.write_all(b"value-from-stdin").await?;
        // kube-rs signals EOF on shutdown (the v5 stdin close); dropping the writer is not enough.
        stdin.shutdown().await?;
        drop(stdin);
        let mut stdout = attached.stdout().context("stdout")?;
        let mut out = String::new();
        stdout.read_to_string(&mut out).await?;
        ensure!(out.trim() == "OK", "{out:?}");
        attached.join().await?;
        // Port-forward to redis.
        let mut pf = pods.portforward("redis", &[6379]).await?;
        let mut s = pf.take_stream(6379).context("port stream")?;
        s.write_all(b"GET k\r\n").await?;
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
        ensure!(
            &buf[..n] == b"$16\r\nvalue-from-stdin\r\n",
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        drop(s);
        tokio::time::timeout(Duration::from_secs(10), pf.join())
            .await
            .context("port-forward did not close")??;
        drop(pods);
        env.stop().await
    })
    .await
}

/// Live (non-zombie) processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(marker)
        {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_simulator_leaves_no_process_behind() -> Result<()> {
    bounded(async move {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("simcluster-kill-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        let kubeconfig = dir.path().join("kubeconfig");
        let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_simcluster"))
            .arg("serve")
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !kubeconfig.exists() {
            ensure!(
                Instant::now() < deadline,
                "the simulator wrote no kubeconfig"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let env = Env { cluster: None, dir };
        let marker = format!("{}", 100_000 + std::process::id());
        env.apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: sleeper, namespace: default}}
spec:
  containers:
    - name: direct
      image: busybox
      command: ["sleep", "{marker}"]
    - name: grandchild
      image: busybox
      command: ["sh", "-c", "sleep {marker} & sleep {marker}; wait"]
"#
        ))
        .await?;
        // Both containers reported running: their process groups are known to the reaper
        // (a group is recorded right after its spawn, before the status says so).
        env.until(
            &[
                "get",
                "pod",
                "sleeper",
                "-o",
                "jsonpath={.status.containerStatuses[*].state.running.startedAt}",
            ],
            Duration::from_secs(30),
            |s| s.split_whitespace().count() == 2,
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while processes_with(&format!("sleep {marker}")).len() < 4 {
            ensure!(
                Instant::now() < deadline,
                "the pod's processes did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sim.start_kill()?;
        sim.wait().await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_with(&format!("sleep {marker}"));
            if left.is_empty() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "processes outlived the simulator: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The reaper itself exits once it has done its work.
        let dir = env.dir.path().to_string_lossy().into_owned();
        let reaper_alive = || {
            processes_with("simcluster-reaper").iter().any(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .unwrap_or_default()
                    .contains(&dir)
            })
        };
        while reaper_alive() {
            ensure!(
                Instant::now() < deadline,
                "the reaper outlived the simulator"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    })
    .await
}

/// A VolumeSnapshot of `claim` in namespace `db` (class `csi-snapclass` unless `class` says).
fn snapshot(name: &str, claim: &str, class: &str) -> String {
    format!(
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {{name: {name}, namespace: db}}\n\
         spec: {{volumeSnapshotClassName: {class}, source: {{persistentVolumeClaimName: {claim}}}}}\n"
    )
}

/// A claim in `db` provisioned from the snapshot `from`, and a PostgreSQL pod on it.
fn restored(name: &str, from: &str, size: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: db}}
spec:
  dataSource: {{name: {from}, kind: VolumeSnapshot, apiGroup: snapshot.storage.k8s.io}}
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: {size}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: db, labels: {{app: {name}}}}}
spec:
  containers:
    - name: postgresql
      image: postgres:15-alpine
      env:
        - {{name: POSTGRES_PASSWORD, value: unused}}
        - {{name: PGDATA, value: /var/lib/postgresql/data/pgdata}}
      volumeMounts: [{{name: data, mountPath: /var/lib/postgresql/data}}]
      readinessProbe:
        exec: {{command: ["pg_isready", "-U", "postgres", "-h", "127.0.0.1"]}}
        periodSeconds: 2
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: {name}}}}}]
"#
    )
}

fn jsonpath(kind: &str, name: &str, path: &str) -> Vec<String> {
    [
        "get",
        kind,
        name,
        "-n",
        "db",
        "-o",
        &format!("jsonpath={path}"),
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_snapshots_are_crash_consistent_and_fail_as_on_a_real_cluster() -> Result<()> {
    bounded(async move {
    let env = Env::start().await?;
    // The claim on the CSI driver's class, which takes snapshots.
    env.apply(&POSTGRES.replace("storageClassName: local-path", "storageClassName: standard")).await?;
    wait_postgres_ready(&env).await?;

    // Errors, as the real snapshot controller writes them.
    env.apply("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: plain, namespace: db}\nspec: {storageClassName: local-path, accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Mi}}}\n").await?;
    env.until(&["get", "pvc", "plain", "-n", "db", "-o", "jsonpath={.status.phase}"], Duration::from_secs(20), |s| s == "Bound").await?;
    env.apply(&snapshot("no-class", "data-postgresql-0", "nope")).await?;
    env.apply(&snapshot("no-claim", "missing", "csi-snapclass")).await?;
    env.apply(&snapshot("not-csi", "plain", "csi-snapclass")).await?;
    for (name, want) in [
        ("no-class", r#"volumesnapshotclass.snapshot.storage.k8s.io "nope" not found"#),
        ("no-claim", "failed to retrieve PVC missing"),
        ("not-csi", "snapshotting non-CSI volumes is not supported, snapshot:db/not-csi"),
    ] {
        let path = jsonpath("volumesnapshot", name, "{.status.readyToUse} {.status.error.message}");
        env.until(&path.iter().map(String::as_str).collect::<Vec<_>>(), Duration::from_secs(20), |s| s.starts_with("false ") && s.contains(want)).await?;
    }

    // A claim from a snapshot that does not exist yet waits, and says why.
    env.apply(&restored("early", "later", "1Gi")).await?;
    env.until(&["get", "events", "-n", "db", "--field-selector", "involvedObject.name=early,reason=ProvisioningFailed", "-o", "jsonpath={.items[*].message}"],
        Duration::from_secs(20), |s| s.contains(r#"volumesnapshots.snapshot.storage.k8s.io "later" not found"#)).await?;

    // Under write load: a writer commits one row per transaction while the snapshot is taken.
    env.kubectl(&psql("CREATE TABLE ticks (n int PRIMARY KEY)")).await?;
    let writer = env.kubectl_in(&["exec", "-n", "db", "postgresql-0", "--", "psql", "-U", "postgres", "-d", "titanium", "-c",
        "DO $$ BEGIN FOR i IN 1..4000 LOOP INSERT INTO ticks VALUES (i); COMMIT; END LOOP; END $$"], None);
    let snap = async {
        env.until(&psql("SELECT count(*) > 200 FROM ticks"), Duration::from_secs(60), |s| s.trim() == "t").await?;
        env.apply(&snapshot("later", "data-postgresql-0", "csi-snapclass")).await?;
        env.until(&jsonpath("volumesnapshot", "later", "{.status.readyToUse}").iter().map(String::as_str).collect::<Vec<_>>(),
            Duration::from_secs(30), |s| s == "true").await
    };
    let (written, snapped) = tokio::join!(writer, snap);
    snapped?;
    ensure!(written?.ok, "the writer failed");
    let size = env.kubectl_v(&jsonpath("volumesnapshot", "later", "{.status.restoreSize}")).await?;
    ensure!(size == "1Gi", "restoreSize {size}");

    // The waiting claim is provisioned once the snapshot is ready; the server recovers.
    env.eventually(&["wait", "-n", "db", "--for=condition=ready", "pod/early", "--timeout=60s"], Duration::from_secs(90)).await?;
    let logs = env.kubectl(&["logs", "-n", "db", "early"]).await?;
    ensure!(logs.contains("automatic recovery in progress"), "no crash recovery: {logs}");
    let q = |sql: &str| ["exec", "-n", "db", "early", "--", "psql", "-U", "postgres", "-d", "titanium", "-tAc", sql].map(str::to_owned).to_vec();
    // Every committed row up to some point, none after: one instant of the volume.
    let got = env.kubectl_v(&q("SELECT count(*), coalesce(max(n), 0), count(*) = coalesce(max(n), 0) FROM ticks")).await?;
    let fields: Vec<&str> = got.trim().split('|').collect();
    ensure!(fields.get(2) == Some(&"t"), "rows missing before the last committed one: {got}");
    let n: u32 = fields[0].parse()?;
    ensure!(n > 200 && n <= 4000, "the snapshot holds {n} ticks");
    let digest = "SELECT md5(string_agg(id::text || ':' || md5(body), ',' ORDER BY id)) FROM posts";
    ensure!(env.kubectl_v(&q(digest)).await? == env.kubectl(&psql(digest)).await?, "posts differ from the source");

    // A claim smaller than the snapshot is refused.
    env.apply(&restored("small", "later", "1Mi")).await?;
    env.until(&["get", "events", "-n", "db", "--field-selector", "involvedObject.name=small,reason=ProvisioningFailed", "-o", "jsonpath={.items[*].message}"],
        Duration::from_secs(20), |s| s.contains("is less than the size 1073741824 for the source snapshot later")).await?;

    // Deleting the snapshot removes its content and its copy.
    env.kubectl(&["delete", "volumesnapshot", "-n", "db", "later"]).await?;
    env.until(&["get", "volumesnapshotcontents", "-o", "name"], Duration::from_secs(20), |s| s.trim().is_empty()).await?;
    let left: Vec<_> = std::fs::read_dir(env.dir.path().join("state/snapshots"))?.collect();
    ensure!(left.is_empty(), "snapshot copies left: {left:?}");
    env.stop().await
    })
    .await
}

/// The millicores of a `kubectl top` CPU column (`245m`, `1`, `0m`).
fn millicores(cell: &str) -> Option<f64> {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => cell.parse::<f64>().ok().map(|c| c * 1000.0),
    }
}

/// The row of `name` in `kubectl top` output, split into columns.
fn row<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.contains(&name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_top_shows_the_pods_processes_on_a_node_the_size_of_the_machine() -> Result<()> {
    bounded(async move {
        let env = Env::start().await?;
        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: burner, namespace: default, labels: {app: burner}}
spec:
  containers:
    - name: main
      image: busybox
      command: ["sh", "-c", "while :; do :; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: idler, namespace: default}
spec:
  containers:
    - name: main
      image: busybox
      command: ["sleep", "3600"]
"#,
        )
        .await?;
        // The Node's capacity is the machine's.
        let cpus = std::fs::read_to_string("/proc/stat")?
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")?
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("MemTotal")?;
        let capacity = env
            .kubectl(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={.items[0].status.allocatable}",
            ])
            .await?;
        let capacity: serde_json::Value = serde_json::from_str(&capacity)?;
        ensure!(
            capacity["cpu"].as_str() == Some(cpus.to_string().as_str()),
            "{capacity}"
        );
        ensure!(capacity["memory"] == format!("{mem_kib}Ki"), "{capacity}");

        // Discovery lists the group as metrics-server's APIService does.
        let resources = env
            .kubectl(&["api-resources", "--api-group=metrics.k8s.io", "-o", "wide"])
            .await?;
        ensure!(
            resources.contains("NodeMetrics") && resources.contains("PodMetrics"),
            "{resources}"
        );
        ensure!(resources.contains("get,list"), "{resources}");

        // A pod is in the metrics once two samples of it were taken.
        let pods = env
            .until(&["top", "pods"], Duration::from_secs(30), |t| {
                row(t, "burner").is_some() && row(t, "idler").is_some()
            })
            .await?;
        ensure!(pods.starts_with("NAME"), "{pods}");
        let burner = row(&pods, "burner").context("burner")?;
        let cpu = millicores(burner[1]).context("burner's CPU")?;
        // A shell spinning on a shared machine: well above zero.
        ensure!(cpu >= 100.0, "a busy pod shows CPU: {pods}");
        ensure!(burner[2].ends_with("Mi"), "{pods}");
        let idler = row(&pods, "idler").context("idler")?;
        ensure!(
            millicores(idler[1]).is_some_and(|c| c < cpu),
            "the sleeping pod uses less CPU than the busy one: {pods}"
        );

        let containers = env
            .kubectl(&["top", "pod", "burner", "--containers"])
            .await?;
        ensure!(row(&containers, "main").is_some(), "{containers}");
        let selected = env.kubectl(&["top", "pods", "-l", "app=burner"]).await?;
        ensure!(
            row(&selected, "burner").is_some() && row(&selected, "idler").is_none(),
            "{selected}"
        );

        let nodes = env.kubectl(&["top", "nodes"]).await?;
        let node = row(&nodes, "workloads-control-plane").context("the node's row")?;
        ensure!(
            nodes.contains("CPU(%)") && nodes.contains("MEMORY(%)"),
            "{nodes}"
        );
        // The busy pod is on this machine: the node's CPU is at least the pod's.
        ensure!(
            millicores(node[1]).is_some_and(|n| n + 50.0 >= cpu),
            "node {nodes} vs pod {pods}"
        );
        ensure!(node[2].ends_with('%') && node[4].ends_with('%'), "{nodes}");

        // Read-only, and a pod without metrics is not found, as on metrics-server.
        let missing = env.kubectl_in(&["top", "pod", "nobody"], None).await?;
        ensure!(!missing.ok, "top of a missing pod succeeded");
        ensure!(
            missing
                .stderr
                .contains("podmetrics.metrics.k8s.io \"default/nobody\" not found"),
            "{}",
            missing.stderr
        );
        let delete = env
            .kubectl_in(
                &[
                    "delete",
                    "--raw",
                    "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/burner",
                ],
                None,
            )
            .await?;
        ensure!(
            !delete.ok && delete.stderr.contains("MethodNotAllowed"),
            "{}",
            delete.stderr
        );
        env.stop().await
    })
    .await
}
