//! What a node leaves on the host and how it goes: pod processes (in the kubelet's `kubepods`
//! cgroups), containerd's shims (their own sessions, so no process group reaches them), mounts
//! under the node's directory (container root file systems, pod volumes, network namespaces,
//! the kubelet's bind mount of its root), the cgroups, the pod bridge, and the iptables
//! chains of kube-proxy, the kubelet and the CNI plugins. The same steps sweep what a killed
//! run left, since only one local node runs per machine (the node lock).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::daemon::run_with_input;

/// The comment on the provider's own iptables rules (the pod bridge's FORWARD accepts).
pub(crate) const RULE_COMMENT: &str = "rebuild-rehearsal-local";

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The pids in the `kubepods` cgroups of every hierarchy.
pub(crate) fn pod_processes() -> Vec<i32> {
    let mut pids = Vec::new();
    for hierarchy in hierarchies() {
        collect_procs(&hierarchy.join("kubepods"), &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir(CGROUP_ROOT)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn collect_procs(dir: &Path, pids: &mut Vec<i32>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_procs(&entry.path(), pids);
        }
    }
}

/// containerd shims serving a containerd whose socket path contains `marker`.
pub(crate) fn shims(marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.first().is_some_and(|a| a.contains("containerd-shim"))
                && args.iter().any(|a| a.contains(marker))
        })
        .collect()
}

/// SIGKILLs `find()`'s processes until none is left or `timeout` passes; returns the pids
/// still there.
pub(crate) fn kill_all(find: impl Fn() -> Vec<i32>, timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = find();
        if pids.is_empty() || Instant::now() >= deadline {
            return pids;
        }
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mount points at or below `dir`, deepest first.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(digits) = std::str::from_utf8(&bytes[i + 1..i + 4])
            && let Ok(v) = u8::from_str_radix(digits, 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts everything at or below `dir`, repeating while mounts remain (a bind mount
/// may be stacked); returns what is still mounted.
pub(crate) fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    for _ in 0..5 {
        let points = mounts_under(dir);
        if points.is_empty() {
            break;
        }
        for point in points {
            if let Err(err) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
                tracing::debug!(point = %point.display(), error = %err, "umount");
            }
        }
    }
    mounts_under(dir)
}

/// Removes the kubelet's `kubepods` cgroups (deepest first) and containerd's empty `k8s.io`
/// ones; returns those that could not be removed.
pub(crate) fn remove_cgroups() -> Vec<PathBuf> {
    let mut left = Vec::new();
    for hierarchy in hierarchies() {
        for top in ["kubepods", "k8s.io"] {
            let root = hierarchy.join(top);
            if root.is_dir() {
                remove_cgroup_tree(&root, &mut left);
            }
        }
    }
    left
}

fn remove_cgroup_tree(dir: &Path, left: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path(), left);
            }
        }
    }
    if let Err(err) = std::fs::remove_dir(dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        left.push(dir.to_owned());
    }
}

/// Whether a network link exists.
pub(crate) fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Deletes a link if it exists.
pub(crate) fn delete_link(name: &str) -> Result<(), super::LocalError> {
    if link_exists(name) {
        super::daemon::run("ip", &["link", "delete", name])?;
    }
    Ok(())
}

/// Removes every `KUBE-*` and `CNI-*` chain, the rules that jump to them, and the provider's
/// own rules, from the filter, nat and mangle tables (IPv4 and IPv6), leaving every other rule
/// (Docker's) as it was: each table is saved, filtered and restored as a whole.
pub(crate) fn clean_iptables() -> Result<(), super::LocalError> {
    for (save, restore) in [
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ] {
        if which::which(save).is_err() {
            continue;
        }
        for table in ["filter", "nat", "mangle"] {
            let saved = super::daemon::run(save, &["-t", table])?;
            let kept = filter_rules(&saved);
            if kept.len() != saved.lines().filter(|l| !l.starts_with('#')).count() {
                let text = kept.join("\n") + "\n";
                run_with_input(restore, &["-w"], Some(text.as_bytes()))?;
            }
        }
    }
    Ok(())
}

/// The lines of an `iptables-save` table without Kubernetes' and CNI's chains and jumps, and
/// without the provider's own rules; comments dropped.
pub(crate) fn filter_rules(saved: &str) -> Vec<String> {
    let ours = |line: &str| {
        let chain = |p: &str| p.starts_with("KUBE-") || p.starts_with("CNI-");
        if let Some(rest) = line.strip_prefix(':') {
            return chain(rest);
        }
        if let Some(rest) = line.strip_prefix("-A ")
            && rest.split(' ').next().is_some_and(chain)
        {
            return true;
        }
        let words: Vec<&str> = line.split(' ').collect();
        words
            .windows(2)
            .any(|w| (w[0] == "-j" || w[0] == "-g") && chain(w[1]))
            || line.contains(RULE_COMMENT)
    };
    saved
        .lines()
        .filter(|l| !l.starts_with('#') && !ours(l))
        .map(str::to_owned)
        .collect()
}

/// Whether any `KUBE-*`/`CNI-*` chain or provider rule is left in the IPv4 tables.
pub(crate) fn iptables_leftovers() -> Result<Vec<String>, super::LocalError> {
    let mut left = Vec::new();
    for table in ["filter", "nat", "mangle"] {
        let saved = super::daemon::run("iptables-save", &["-t", table])?;
        let kept = filter_rules(&saved);
        left.extend(
            saved
                .lines()
                .filter(|l| !l.starts_with('#') && !kept.iter().any(|k| k == l))
                .map(|l| format!("{table}: {l}")),
        );
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kubernetes_cni_and_our_rules_are_filtered() {
        let saved = "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
            :KUBE-SERVICES - [0:0]\n:CNI-abc - [0:0]\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
            -A KUBE-SERVICES -j RETURN\n-A POSTROUTING -s 10.244.0.2/32 -j CNI-abc\n\
            -A FORWARD -i rrlocal0 -m comment --comment rebuild-rehearsal-local -j ACCEPT\nCOMMIT";
        assert_eq!(
            filter_rules(saved),
            [
                "*nat",
                ":PREROUTING ACCEPT [0:0]",
                ":DOCKER - [0:0]",
                "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
                "COMMIT"
            ]
        );
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape("/tmp/plain"), "/tmp/plain");
    }
}
