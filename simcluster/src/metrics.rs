//! The resource metrics pipeline behind `metrics.k8s.io/v1beta1` (what metrics-server serves,
//! and what `kubectl top` reads), measured on the machine the simulated node runs on.
//!
//! The kubelet calls [`Metrics::sample`] every [`RESOLUTION`] with the process group of every
//! running container; each sample reads cumulative counters, and the usage served is the rate
//! between the last two samples, stamped with the later one's time and the window between them,
//! as metrics-server does with the kubelet's cumulative CPU counters:
//!
//! - container CPU: `utime + stime + cutime + cstime` of every process in the container's
//!   process group (`/proc/PID/stat`), over the window: the group's own time and that of the
//!   children it has waited for;
//! - container memory: the proportional set size (`Pss` of `/proc/PID/smaps_rollup`, or the
//!   resident set of `statm` where that file is missing) summed over the group, so pages the
//!   processes share (PostgreSQL's shared buffers) count once, as a cgroup would count them;
//! - node CPU and memory: the sum of its pods' (the node runs only them). Not the whole
//!   machine's (`/proc/stat`): the machine also runs the harness, other simulated clusters and
//!   whatever else shares it, none of which is this node's; charged to the node, they turned
//!   a rehearsal's rollback criterion 4 red while its cluster was idle (`pitr` rolled back
//!   on 98.8-100 % node CPU while another trial ran beside it). The node's capacity is the
//!   machine's ([`capacity`]).
//!
//! A container, pod or node with fewer than two samples has no usage yet: it is left out of
//! lists and a get of it is answered 404, as metrics-server answers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often the kubelet samples (metrics-server's `--metric-resolution`, 15 s by default; the
/// simulator samples faster so that a rehearsal's observations span several windows).
pub(crate) const RESOLUTION: Duration = Duration::from_secs(2);

/// A running container's processes, as the kubelet knows them.
#[derive(Debug, Clone)]
pub(crate) struct ContainerProcesses {
    /// The container's name.
    pub(crate) name: String,
    /// The process group its processes run in (the main process's pid).
    pub(crate) pgid: i32,
}

/// A running pod's containers, as the kubelet knows them.
#[derive(Debug, Clone)]
pub(crate) struct PodProcesses {
    pub(crate) uid: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) containers: Vec<ContainerProcesses>,
}

/// One usage figure: a rate over a window ending at `timestamp`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Usage {
    /// CPU in nanocores (1e9 = one core busy for the whole window).
    pub(crate) cpu_nanocores: u64,
    /// Memory working set in bytes.
    pub(crate) memory_bytes: u64,
}

/// The node's usage over the last window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeUsage {
    pub(crate) timestamp: SystemTime,
    pub(crate) window: Duration,
    pub(crate) usage: Usage,
}

/// A pod's usage over the last window, per container.
#[derive(Debug, Clone)]
pub(crate) struct PodUsage {
    pub(crate) timestamp: SystemTime,
    pub(crate) window: Duration,
    pub(crate) containers: Vec<(String, Usage)>,
}

/// What the machine is: the node's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capacity {
    /// Online CPUs (the `cpuN` lines of `/proc/stat`, the CPUs its `cpu` line sums).
    pub(crate) cpus: u64,
    /// `MemTotal` in bytes.
    pub(crate) memory_bytes: u64,
}

/// The machine's capacity, read from `/proc`.
///
/// # Errors
/// `/proc/stat` or `/proc/meminfo` cannot be read or parsed.
pub(crate) fn capacity() -> std::io::Result<Capacity> {
    let cpus = online_cpus(&std::fs::read_to_string("/proc/stat")?);
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let memory_bytes = meminfo_kib(&meminfo, "MemTotal")
        .map(|k| k * 1024)
        .ok_or_else(|| invalid("/proc/meminfo has no MemTotal"))?;
    if cpus == 0 {
        return Err(invalid("/proc/stat lists no cpuN line"));
    }
    Ok(Capacity { cpus, memory_bytes })
}

/// The `cpuN` lines of `/proc/stat`: the CPUs its aggregate `cpu` line sums.
fn online_cpus(stat: &str) -> u64 {
    stat.lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count() as u64
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// A `Key: N kB` line of `/proc/meminfo` (or `smaps_rollup`), in KiB.
fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `(pgrp, utime + stime + cutime + cstime)` of a `/proc/PID/stat` line.
fn process_stat(stat: &str) -> Option<(i32, u64)> {
    // The command name is in parentheses and may hold spaces or parentheses: the fields
    // start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): pgrp is field 5, utime..cstime fields 14..17.
    let pgrp = f.get(2)?.parse().ok()?;
    let mut ticks = 0u64;
    for i in 11..15 {
        ticks += f.get(i)?.parse::<u64>().ok()?;
    }
    Some((pgrp, ticks))
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(4096)
}

/// A process's memory: `Pss` of `smaps_rollup`, else the resident set of `statm`. `None` when
/// the process is gone.
fn process_memory(dir: &Path, page: u64) -> Option<u64> {
    if let Ok(rollup) = std::fs::read_to_string(dir.join("smaps_rollup"))
        && let Some(kib) = meminfo_kib(&rollup, "Pss")
    {
        return Some(kib * 1024);
    }
    let statm = std::fs::read_to_string(dir.join("statm")).ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident * page)
}

/// Cumulative CPU ticks and current memory of every process group in `wanted`.
///
/// # Errors
/// `/proc` cannot be listed.
fn group_counters(wanted: &[i32]) -> std::io::Result<HashMap<i32, (u64, u64)>> {
    let mut out: HashMap<i32, (u64, u64)> = HashMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let page = page_size();
    let entries = std::fs::read_dir("/proc")?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = entry.path();
        // A process may end between the listing and the read: it is simply not counted.
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some((pgrp, ticks)) = process_stat(&stat) else {
            continue;
        };
        if !wanted.contains(&pgrp) {
            continue;
        }
        let Some(memory) = process_memory(&dir, page) else {
            continue;
        };
        let e = out.entry(pgrp).or_default();
        e.0 += ticks;
        e.1 += memory;
    }
    Ok(out)
}

/// A cumulative counter as last read.
#[derive(Debug, Clone, Copy)]
struct Counter {
    at: Instant,
    ticks: u64,
}

#[derive(Default)]
struct Inner {
    last_sample: Option<Instant>,
    node: Option<NodeUsage>,
    /// By (pod uid, container): the process group and its last CPU counter.
    containers: HashMap<(String, String), (i32, Counter)>,
    /// By (namespace, name).
    pods: HashMap<(String, String), PodUsage>,
}

/// The latest usage figures, shared by the kubelet's sampler and the API server.
#[derive(Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take one sample of `pods`' processes. Blocking (reads `/proc`). A sample that cannot
    /// list `/proc` changes nothing: the figures served keep their old timestamp rather than
    /// show an empty node.
    pub(crate) fn sample(&self, pods: &[PodProcesses]) {
        let hz = clock_ticks() as f64;
        let now = Instant::now();
        let wall = SystemTime::now();
        let wanted: Vec<i32> = pods
            .iter()
            .flat_map(|p| p.containers.iter().map(|c| c.pgid))
            .collect();
        let groups = match group_counters(&wanted) {
            Ok(groups) => groups,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list /proc: no resource metrics sample");
                return;
            }
        };

        let mut inner = self.lock();
        let mut containers = HashMap::new();
        let mut usages = HashMap::new();
        for pod in pods {
            let mut measured = Vec::new();
            let mut window = None;
            for c in &pod.containers {
                let Some(&(ticks, memory)) = groups.get(&c.pgid) else {
                    continue;
                };
                let key = (pod.uid.clone(), c.name.clone());
                if let Some((pgid, last)) = inner.containers.get(&key)
                    && *pgid == c.pgid
                {
                    let secs = now.duration_since(last.at).as_secs_f64();
                    if secs > 0.0 {
                        let cores = ticks.saturating_sub(last.ticks) as f64 / hz / secs;
                        measured.push((
                            c.name.clone(),
                            Usage {
                                cpu_nanocores: (cores * 1e9) as u64,
                                memory_bytes: memory,
                            },
                        ));
                        window = Some(now.duration_since(last.at));
                    }
                }
                containers.insert(key, (c.pgid, Counter { at: now, ticks }));
            }
            if let Some(window) = window {
                usages.insert(
                    (pod.namespace.clone(), pod.name.clone()),
                    PodUsage {
                        timestamp: wall,
                        window,
                        containers: measured,
                    },
                );
            }
        }
        // The node runs exactly the pods: its usage is theirs, over the same window.
        if let Some(last) = inner.last_sample {
            let node = usages
                .values()
                .flat_map(|p| p.containers.iter().map(|(_, u)| u.cpu_nanocores))
                .sum();
            inner.node = Some(NodeUsage {
                timestamp: wall,
                window: now.duration_since(last),
                usage: Usage {
                    cpu_nanocores: node,
                    memory_bytes: groups.values().map(|(_, memory)| memory).sum(),
                },
            });
        }
        inner.last_sample = Some(now);
        inner.containers = containers;
        inner.pods = usages;
    }

    /// The node's usage over the last window, once two samples were taken.
    pub(crate) fn node(&self) -> Option<NodeUsage> {
        self.lock().node
    }

    /// A pod's usage over the last window, once two samples of one of its containers were
    /// taken.
    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Option<PodUsage> {
        self.lock()
            .pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_lines() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\ncpu1 50 3 25 500 10 2 1 1 0 0\n";
        assert_eq!(online_cpus(stat), 2);
        let pid = "4242 (post gres: (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 30 12 4 2 20 0 1 0";
        assert_eq!(process_stat(pid), Some((4242, 48)));
        assert_eq!(
            meminfo_kib(
                "MemTotal:       16316412 kB\nMemAvailable:    8000000 kB\n",
                "MemAvailable"
            ),
            Some(8_000_000)
        );
    }

    #[test]
    fn a_busy_process_group_shows_cpu_after_two_samples() {
        let metrics = Metrics::default();
        // This test's own process group stands in for a container's.
        let pgid = nix::unistd::getpgrp().as_raw();
        let pods = [PodProcesses {
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "p".into(),
            containers: vec![ContainerProcesses {
                name: "c".into(),
                pgid,
            }],
        }];
        metrics.sample(&pods);
        assert!(metrics.pod("ns", "p").is_none(), "one sample is no rate");
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        metrics.sample(&pods);
        let usage = metrics.pod("ns", "p").expect("a rate after two samples");
        let (name, u) = &usage.containers[0];
        assert_eq!(name, "c");
        assert!(u.cpu_nanocores > 100_000_000, "{u:?}");
        assert!(u.memory_bytes > 0, "{u:?}");
        let node = metrics.node().expect("node usage after two samples");
        // The node's usage is its pods'.
        assert_eq!(node.usage, *u);
        let cap = capacity().unwrap();
        assert!(cap.cpus >= 1 && cap.memory_bytes > node.usage.memory_bytes);
    }
}
