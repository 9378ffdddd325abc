//! Where the harness's own side work runs: off the first CPU, so that a single-threaded tool on
//! a critical path (a backup's `pg_dump -Fc`) keeps a CPU of its own. Placement only: nothing
//! runs differently, and where the affinity cannot be set, everything runs where it did.

/// The CPUs for work beside a critical path: every CPU this process may use but the lowest,
/// when it may use at least two. `None` on one CPU (nothing to set aside) or when the affinity
/// cannot be read.
fn background_cpus() -> Option<nix::sched::CpuSet> {
    use nix::sched::{CpuSet, sched_getaffinity};
    let allowed = sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    if cpus.len() < 2 {
        return None;
    }
    let mut set = CpuSet::new();
    for &c in &cpus[1..] {
        set.set(c).ok()?;
    }
    Some(set)
}

/// Keeps the calling thread off the first CPU this process may use, so that a single-threaded
/// tool on the critical path (a backup's `pg_dump -Fc`, bound by its compression) keeps a CPU
/// of its own while this thread does the rest (compressing the archive, splitting SQL).
/// Measured: pinning only while the dump runs (and letting the long-lived archive thread,
/// started before it, run anywhere) was slower than pinning the backup's side work always. Returns
/// the affinity to give back with [`restore_affinity`] (a pooled thread goes on to other work);
/// `None` when nothing was changed. Placement only: it changes what runs where, never what runs.
pub fn pin_to_background() -> Option<nix::sched::CpuSet> {
    use nix::sched::{sched_getaffinity, sched_setaffinity};
    let me = nix::unistd::Pid::from_raw(0);
    let before = sched_getaffinity(me).ok()?;
    let set = background_cpus()?;
    sched_setaffinity(me, &set).ok()?;
    Some(before)
}

/// Gives the calling thread back the affinity [`pin_to_background`] returned.
pub fn restore_affinity(before: Option<nix::sched::CpuSet>) {
    if let Some(set) = before {
        // Placement only: a thread left pinned still runs everything, on fewer CPUs.
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// [`pin_to_background`] for another process (a tool just started, before its workers fork).
pub(super) fn pin_process_to_background(pid: u32) {
    if let (Some(set), Ok(pid)) = (background_cpus(), i32::try_from(pid)) {
        // Placement only, as above.
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_thread_leaves_the_first_cpu_and_gets_it_back() {
        std::thread::spawn(|| {
            let me = nix::unistd::Pid::from_raw(0);
            let before = nix::sched::sched_getaffinity(me).expect("affinity");
            let allowed: Vec<usize> = (0..nix::sched::CpuSet::count())
                .filter(|&c| before.is_set(c).unwrap_or(false))
                .collect();
            let pinned = pin_to_background();
            if allowed.len() < 2 {
                assert!(pinned.is_none(), "nothing to set aside on one CPU");
                return;
            }
            let now = nix::sched::sched_getaffinity(me).expect("affinity");
            assert!(
                !now.is_set(allowed[0]).expect("cpu"),
                "still on the first CPU"
            );
            assert!(allowed[1..].iter().all(|&c| now.is_set(c).expect("cpu")));
            restore_affinity(pinned);
            let after = nix::sched::sched_getaffinity(me).expect("affinity");
            assert!(allowed.iter().all(|&c| after.is_set(c).expect("cpu")));
        })
        .join()
        .expect("the test thread");
    }
}
