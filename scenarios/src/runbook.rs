//! `runbook`: the team's own document executed command by command. Cluster A comes up with
//! titanium-prod deployed, seeded and under the load generator (as `rehearsal run` builds
//! it); the document's blocks run in one confined shell session with `KUBECONFIG` pointing at
//! A; before the document's rebuild phase, A is destroyed for real and cluster B created, and
//! the session switched to B. Stand-ins do what a rehearsal cannot have, and say so: the
//! goose load gate for `k6 run` (through the ingress gateway, as k6 targets `$INGRESS_IP`),
//! the overlay's CRDs and the rehearsal's ingress gateway for `istioctl install`, a GET through
//! that gateway by a port-forward for `curl http://$INGRESS_IP/...` where the cluster gives it
//! no LoadBalancer IP (on the simulator it has one, and the curls run as written), a scratch copy of
//! `fixtures/terraform` (initialised and applied) for the author's terraform directory, the
//! project's overlay for the author's kustomize directory, cluster B's kubeconfig for the one
//! the document downloads from the cloud console.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use harness::cluster::{AnyCluster, Cluster, ProviderSpec};
use harness::keep::ScratchDir;
use harness::load::LoadGate;
use harness::process::GuardedSpawn;
use harness::report::runbook::RunbookReport;
use harness::runbook::{Block, Session, SessionOptions, StandIn, StandIns};

use crate::full_rebuild;
use crate::titanium::{self, LOAD_GENERATOR};

/// What to run, where.
#[derive(Clone, Debug)]
pub struct Config {
    /// The document.
    pub document: PathBuf,
    /// Every block of the document (where its rebuild section is).
    pub document_blocks: Vec<Block>,
    /// The blocks to run (all, or those kept by [`Config::select`]).
    pub blocks: Vec<Block>,
    /// Where clusters come from.
    pub provider: ProviderSpec,
    /// The kustomize overlay of the provider.
    pub overlay: PathBuf,
    /// The report directory (goose's report goes there).
    pub report_dir: PathBuf,
    /// Users and posts seeded into cluster A.
    pub users: u32,
    /// Posts seeded.
    pub posts: u32,
    /// Each command's deadline.
    pub deadline: Duration,
    /// How long the load gate standing in for `k6 run` runs.
    pub load_time: Duration,
    /// The section (path substring) before which cluster A is destroyed and B created: before
    /// the first block run that is in it or after it in the document.
    pub rebuild_at: String,
}

impl Config {
    /// Defaults for `document` on `provider`: a modest dataset, 120 s per command, B built
    /// before the section `Phase 4`.
    pub fn new(
        document: PathBuf,
        blocks: Vec<Block>,
        provider: ProviderSpec,
        overlay: PathBuf,
        report_dir: PathBuf,
    ) -> Self {
        Self {
            document,
            document_blocks: blocks.clone(),
            blocks,
            provider,
            overlay,
            report_dir,
            users: 100,
            posts: 1000,
            deadline: Duration::from_secs(120),
            load_time: Duration::from_secs(3),
            rebuild_at: "Phase 4".into(),
        }
    }
}

impl Config {
    /// Keeps the blocks from the first one whose section path contains `from`, and only those
    /// whose section path contains `only`.
    ///
    /// # Errors
    /// When either matches no section.
    pub fn select(
        &mut self,
        from: Option<&str>,
        only: Option<&str>,
    ) -> Result<(), harness::runbook::RunbookError> {
        self.blocks = harness::runbook::select(self.document_blocks.clone(), from, only)?;
        Ok(())
    }

    /// The index of the document's first block in its rebuild section.
    fn rebuild_index(&self) -> Option<usize> {
        self.document_blocks
            .iter()
            .find(|b| b.section_path().contains(&self.rebuild_at))
            .map(|b| b.index)
    }
}

/// Runs the document and returns its report; clusters and the scratch directory are torn
/// down (unless `HARNESS_KEEP`), also when a step fails.
///
/// # Errors
/// When cluster A cannot be brought up, or the shell cannot be confined: nothing of the
/// document has run then.
pub async fn run(config: &Config) -> anyhow::Result<RunbookReport> {
    let scratch = ScratchDir::new("harness-runbook-", "runbook scratch directory")
        .context("create the runbook's scratch directory")?;
    let mut stand_ins = Titanium {
        config: config.clone(),
        a: None,
        b: None,
        infrastructure: false,
        rebuilt: false,
        session_home: scratch.path().join("home"),
    };
    let outcome = run_in(config, &scratch, &mut stand_ins).await;
    full_rebuild::teardown_all(stand_ins.a.take().into_iter().chain(stand_ins.b.take())).await;
    if harness::keep::keep_requested() {
        eprintln!(
            "kept the runbook's scratch directory: {}",
            scratch.path().display()
        );
    }
    drop(scratch);
    outcome
}

async fn run_in(
    config: &Config,
    scratch: &ScratchDir,
    stand_ins: &mut Titanium,
) -> anyhow::Result<RunbookReport> {
    let a = stand_ins
        .a
        .insert(config.provider.create().await.context("create cluster A")?);
    let mut fr = full_rebuild::Config::modest(
        config.provider.clone(),
        config.overlay.clone(),
        config.report_dir.clone(),
    );
    fr.users = config.users;
    fr.posts = config.posts;
    full_rebuild::deploy(a, &fr)
        .await
        .context("deploy titanium-prod on cluster A")?;
    let (users, posts, _) = full_rebuild::seed(a, &fr).await.context("seed cluster A")?;
    let client = a.client().await?;
    titanium::scale(&client, LOAD_GENERATOR, 2, fr.ready_timeout)
        .await
        .context("start the load generator")?;
    let password = titanium::db_password(&client).await?;
    let secrets = {
        use base64::Engine as _;
        let plain = password.expose().to_owned();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&plain);
        vec![plain, encoded]
    };
    // The session sees only the scratch directory's /tmp: the cluster's kubeconfig is copied in.
    let kubeconfig_a = copy_kubeconfig(a, scratch.path(), "cluster-a")?;
    let options = SessionOptions {
        scratch: scratch.path().to_owned(),
        home: stand_ins.session_home.clone(),
        env: vec![
            ("KUBECONFIG".into(), kubeconfig_a.display().to_string()),
            ("CHECKPOINT_DISABLE".into(), "1".into()),
        ],
    };
    let mut session = tokio::task::block_in_place(|| Session::start(options))?;
    let mut report = harness::runbook::run(
        &config.document.display().to_string(),
        config.provider.kind().as_str(),
        &config.blocks,
        &mut session,
        stand_ins,
        &harness::runbook::Options {
            deadline: config.deadline,
            secrets,
        },
    )
    .await;
    report.events.insert(
        0,
        format!(
            "cluster A ({}) up with titanium-prod: {users} users and {posts} posts seeded, \
             the load generator writing; KUBECONFIG in the session points at it",
            config.provider.kind()
        ),
    );
    drop(session);
    Ok(report)
}

/// The stand-ins for the Titanium runbook's environment.
struct Titanium {
    config: Config,
    a: Option<AnyCluster>,
    b: Option<AnyCluster>,
    infrastructure: bool,
    rebuilt: bool,
    session_home: PathBuf,
}

impl Titanium {
    fn current(&self) -> Option<&AnyCluster> {
        self.b.as_ref().or(self.a.as_ref())
    }

    async fn rebuild(&mut self, session: &mut Session) -> Result<Vec<String>, String> {
        let mut events = Vec::new();
        if let Some(mut a) = self.a.take() {
            a.destroy()
                .await
                .map_err(|e| format!("destroy cluster A: {}", harness::error_chain(&e)))?;
            events.push(
                "cluster A destroyed and checked gone (the document's cluster deletion)".into(),
            );
        }
        let b = self
            .config
            .provider
            .create()
            .await
            .map_err(|e| format!("create cluster B: {}", harness::error_chain(&e)))?;
        let kubeconfig = copy_kubeconfig(&b, session.scratch(), "cluster-b")
            .map_err(|e| format!("{e:#}"))?
            .display()
            .to_string();
        let switched = tokio::task::block_in_place(|| {
            session.run(
                &format!("export KUBECONFIG={}", shell_quote(&kubeconfig)),
                Duration::from_secs(10),
            )
        })
        .map_err(|e| harness::error_chain(&e))?;
        if switched.status != Some(0) {
            return Err(format!("switch KUBECONFIG: {}", switched.stderr));
        }
        events.push(format!(
            "cluster B ({}) created, empty; KUBECONFIG in the session switched to it",
            b.provider()
        ));
        self.b = Some(b);
        Ok(events)
    }

    /// A GET of `path` through the ingress gateway by a port-forward: where the cluster
    /// gives the gateway's Service no LoadBalancer IP (kind without MetalLB, the `local`
    /// provider), `$INGRESS_IP` is empty and the runbook's curl has no host. The request still
    /// goes through the gateway's routing (the restored VirtualService); only the address
    /// differs.
    async fn ingress_get(&self, path: &str) -> StandIn {
        let by = "a GET of the same path through istio-system/istio-ingressgateway by a \
                  port-forward: its Service has no LoadBalancer IP on this cluster, so \
                  INGRESS_IP is empty"
            .to_owned();
        let Some(cluster) = self.current() else {
            return StandIn {
                by,
                result: Err("no cluster is up".into()),
            };
        };
        let result = async {
            let ingress = titanium::ingress(cluster).await?;
            let response = reqwest::Client::new()
                .get(format!("{}{path}", ingress.base_url))
                .timeout(Duration::from_secs(10))
                .send()
                .await?;
            let status = response.status();
            let body = response.text().await?;
            let head: String = body.chars().take(200).collect();
            anyhow::Ok((status, head, body.len(), ingress.path.clone()))
        }
        .await;
        let result = match result {
            Ok((status, head, len, via)) if status.is_success() => Ok(format!(
                "GET {path} through {via}: HTTP {status}, {len} bytes: {head}"
            )),
            Ok((status, head, _, via)) => {
                Err(format!("GET {path} through {via}: HTTP {status}: {head}"))
            }
            Err(e) => Err(format!(
                "GET {path} through the ingress gateway failed: {e:#}"
            )),
        };
        StandIn { by, result }
    }

    async fn load_gate(&self, script: &str) -> StandIn {
        let by = "the goose load gate (harness::load) with k6's thresholds: p95 < 500 ms, \
                  failures < 1 %, a minimum request rate"
            .to_owned();
        let Some(cluster) = self.current() else {
            return StandIn {
                by,
                result: Err("no cluster is up".into()),
            };
        };
        let result = async {
            // k6's scripts target $INGRESS_IP: the gate goes through the ingress too.
            let ingress = titanium::ingress(cluster).await?;
            let base = ingress.base_url.clone();
            let mut gate = if script.contains("load") {
                LoadGate::full(&base)
            } else {
                LoadGate::quick(&base)
            };
            gate.run_time = self.config.load_time;
            gate.report_dir = Some(self.config.report_dir.clone());
            anyhow::Ok((gate.run().await?, ingress.path))
        }
        .await;
        let result = match result {
            Ok((v, path)) if v.passed => Ok(format!(
                "{} ({script}, through {path}): {}",
                "load gate passed",
                v.to_string().lines().next().unwrap_or("")
            )),
            Ok((v, path)) => Err(format!(
                "the load gate failed ({script}, through {path}): {}",
                harness::verify::findings_text(&v.findings, "; ")
            )),
            Err(e) => Err(format!("the load gate could not run: {e:#}")),
        };
        StandIn { by, result }
    }
}

/// Copies `cluster`'s kubeconfig into `scratch/clusters/NAME.kubeconfig` (0600).
fn copy_kubeconfig(cluster: &AnyCluster, scratch: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = scratch.join("clusters");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("{name}.kubeconfig"));
    let text = std::fs::read(cluster.kubeconfig())
        .with_context(|| format!("read {}", cluster.kubeconfig().display()))?;
    harness::keep::write_private(&path, &text)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Claims of titanium-prod, new since `since` or named by the command `text`, that wait for a
/// VolumeSnapshot which does not exist or failed: no provisioner can ever bind them, so a pod
/// that uses one never starts. Each with the cluster's own words about the snapshot.
async fn unprovisionable_claims(
    cluster: &AnyCluster,
    text: &str,
    since: std::time::SystemTime,
) -> anyhow::Result<Vec<String>> {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use kube::api::{Api, ApiResource, DynamicObject, ListParams};
    let client = cluster.client().await?;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), titanium::NAMESPACE);
    let snapshots = Api::<DynamicObject>::namespaced_with(
        client,
        titanium::NAMESPACE,
        &ApiResource {
            group: "snapshot.storage.k8s.io".into(),
            version: "v1".into(),
            api_version: "snapshot.storage.k8s.io/v1".into(),
            kind: "VolumeSnapshot".into(),
            plural: "volumesnapshots".into(),
        },
    );
    // Creation times have whole seconds.
    let since = chrono::DateTime::<chrono::Utc>::from(since).timestamp() - 1;
    let mut found = Vec::new();
    for claim in claims.list(&ListParams::default()).await?.items {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let Some(source) = claim
            .spec
            .as_ref()
            .and_then(|s| s.data_source.as_ref())
            .filter(|d| d.kind == "VolumeSnapshot")
        else {
            continue;
        };
        let new = claim
            .metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| t.0.as_second() >= since);
        if bound || !(new || text.contains(&name)) {
            continue;
        }
        let problem = match snapshots.get(&source.name).await {
            Ok(snapshot) => {
                let status = snapshot.data.get("status");
                let ready = status.and_then(|s| s.get("readyToUse")) == Some(&true.into());
                match status.and_then(|s| s.pointer("/error/message")) {
                    Some(message) if !ready => Some(format!(
                        "VolumeSnapshot {} failed: {}",
                        source.name,
                        message.as_str().unwrap_or_default()
                    )),
                    _ => None,
                }
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Some(format!(
                "{} (VolumeSnapshot {} is not in {}: a snapshot stays in the cluster that took \
                 it)",
                status.message,
                source.name,
                titanium::NAMESPACE
            )),
            Err(e) => return Err(e).context(format!("get VolumeSnapshot {}", source.name)),
        };
        if let Some(problem) = problem {
            found.push(format!(
                "claim {name} can never be provisioned, so a pod that uses it cannot start: \
                 {problem}"
            ));
        }
    }
    Ok(found)
}

impl StandIns for Titanium {
    async fn before_block(
        &mut self,
        block: &Block,
        session: &mut Session,
    ) -> Result<Vec<String>, String> {
        if !self.rebuilt
            && self
                .config
                .rebuild_index()
                .is_some_and(|first| block.index >= first)
        {
            self.rebuilt = true;
            return self.rebuild(session).await;
        }
        Ok(Vec::new())
    }

    async fn replace(
        &mut self,
        programs: &[Vec<String>],
        text: &str,
        session: &mut Session,
    ) -> Option<StandIn> {
        let first = programs.first()?;
        let word = |i: usize| first.get(i).map(String::as_str);
        match (word(0), word(1)) {
            (Some("k6"), Some("run")) if which::which("k6").is_err() => {
                Some(self.load_gate(word(2).unwrap_or("")).await)
            }
            (Some("istioctl"), Some("install")) if which::which("istioctl").is_err() => {
                let by = "the Istio and monitoring CRDs of the project's overlay and the \
                          rehearsal's ingress gateway in istio-system \
                          (harness::deploy::apply_infrastructure)"
                    .to_owned();
                if self.infrastructure {
                    return Some(StandIn {
                        by,
                        result: Ok("already applied".into()),
                    });
                }
                let Some(cluster) = self.current() else {
                    return Some(StandIn {
                        by,
                        result: Err("no cluster is up".into()),
                    });
                };
                let result = harness::deploy::apply_infrastructure(
                    cluster,
                    &self.config.overlay,
                    self.config.deadline,
                )
                .await
                .map(|done| done.to_string())
                .map_err(|e| harness::error_chain(&e));
                self.infrastructure = result.is_ok();
                Some(StandIn { by, result })
            }
            (Some("curl"), _) if text.contains("$INGRESS_IP") => {
                let empty = tokio::task::block_in_place(|| {
                    session.run("printf '%s' \"${INGRESS_IP:-}\"", Duration::from_secs(10))
                })
                .is_ok_and(|o| o.status == Some(0) && o.stdout.is_empty());
                if !empty {
                    return None;
                }
                let url = first.iter().find(|w| w.contains("$INGRESS_IP"))?;
                let path = url.split("$INGRESS_IP").nth(1).unwrap_or("/").to_owned();
                Some(self.ingress_get(&path).await)
            }
            _ => None,
        }
    }

    async fn inspect(&mut self, text: &str, since: std::time::SystemTime) -> Vec<String> {
        if !text.contains("kubectl") {
            return Vec::new();
        }
        let Some(cluster) = self.current() else {
            return Vec::new();
        };
        match unprovisionable_claims(cluster, text, since).await {
            Ok(found) => found,
            Err(e) => vec![format!(
                "could not check the namespace's claims after the command: {e:#}"
            )],
        }
    }

    async fn prepare(
        &mut self,
        text: &str,
        created: &[PathBuf],
        session: &mut Session,
    ) -> Result<Option<String>, String> {
        let mut notes = Vec::new();
        for dir in created {
            if dir.components().any(|c| c.as_os_str() == "terraform") {
                terraform_stand_in(dir, &self.session_home).await?;
                notes.push(format!(
                    "{}: a scratch copy of fixtures/terraform, initialised and applied (the \
                     existing infrastructure's state)",
                    dir.display()
                ));
            }
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        // `kubectl apply -k DIR` where DIR is the author's: the project's overlay stands in.
        if let Some(i) = words.iter().position(|w| *w == "-k")
            && words.first() == Some(&"kubectl")
            && let Some(rel) = words.get(i + 1)
        {
            let target = session.cwd().join(rel);
            if !target.exists() {
                kustomize_stand_in(&self.config.overlay, &target).map_err(|e| format!("{e:#}"))?;
                notes.push(format!(
                    "{}: the project's overlay {} (with its base) stands in for the author's",
                    target.display(),
                    self.config.overlay.display()
                ));
            }
        }
        // `export KUBECONFIG=PATH` of a file that is not there: the document downloads it from
        // the cloud console; the current cluster's kubeconfig stands in.
        if let Some(value) = words.iter().find_map(|w| w.strip_prefix("KUBECONFIG="))
            && words.first() == Some(&"export")
            && let Some(cluster) = self.current()
        {
            let probe = tokio::task::block_in_place(|| {
                session.run(&format!("printf '%s' {value}"), Duration::from_secs(10))
            })
            .map_err(|e| harness::error_chain(&e))?;
            let path = PathBuf::from(probe.stdout.trim());
            if probe.status == Some(0) && path.starts_with(session.scratch()) && !path.exists() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::fs::copy(cluster.kubeconfig(), &path).map_err(|e| e.to_string())?;
                notes.push(format!(
                    "{}: cluster {}'s kubeconfig stands in for the one the document downloads",
                    path.display(),
                    if self.b.is_some() { "B" } else { "A" }
                ));
            }
        }
        Ok((!notes.is_empty()).then(|| notes.join("; ")))
    }
}

/// Copies `fixtures/terraform` into `dir`, then `terraform init` and `apply` there, so the
/// document's terraform commands find the state the team's directory has.
async fn terraform_stand_in(dir: &Path, home: &Path) -> Result<(), String> {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/terraform/main.tf");
    std::fs::copy(&fixture, dir.join("main.tf"))
        .map_err(|e| format!("copy {}: {e}", fixture.display()))?;
    for args in [
        &["init", "-input=false", "-no-color"][..],
        &["apply", "-auto-approve", "-input=false", "-no-color"][..],
    ] {
        let out = harness::process::tokio_command("terraform")
            .args(args)
            .current_dir(dir)
            .env("HOME", home)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .output_guarded()
            .await
            .map_err(|e| format!("terraform {}: {e}", args[0]))?;
        if !out.status.success() {
            return Err(format!(
                "terraform {} in the stand-in: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// Copies `overlay` to `target` and the base it refers to (`../../base`) beside it.
fn kustomize_stand_in(overlay: &Path, target: &Path) -> anyhow::Result<()> {
    copy_dir(overlay, target)?;
    let base = overlay.join("../../base");
    let target_base = target.join("../../base");
    if !target_base.exists() {
        copy_dir(&base, &target_base)?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)
                .with_context(|| format!("copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}
