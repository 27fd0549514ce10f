//! The node's delegated cgroups on the host: one directory per hierarchy this process is in,
//! made, joined, and at the end emptied (every process killed) and removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_init::cgroups::{Hierarchy, parse_proc_cgroup, uses_v1};

/// Where the host's cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The node's cgroup directories, one per hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCgroups {
    /// The directories.
    pub dirs: Vec<PathBuf>,
}

/// Why the node's cgroups could not be made, joined or removed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}")]
pub struct NodeCgroupsError {
    /// What was being done.
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn fail<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> NodeCgroupsError + 'a {
    move |source| NodeCgroupsError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The directory of cgroup `name` (`baton/<cluster>/<node>`) in `hierarchy`: below this
/// process's own cgroup in v1 hierarchies (where the host may have put it in a memory cgroup
/// of its own), below the root in v2 (where a parent with processes cannot delegate).
pub fn cgroup_dir(hierarchy: &Hierarchy, v1_host: bool, name: &str) -> PathBuf {
    let mut dir = PathBuf::from(CGROUP_ROOT);
    if v1_host {
        dir.push(hierarchy.mount_dir());
    }
    if !hierarchy.is_v2() {
        dir.push(hierarchy.path.trim_start_matches('/'));
    }
    dir.join(name)
}

impl NodeCgroups {
    /// The node's directories for cgroup `name` in every hierarchy this process is in.
    pub fn for_this_process(name: &str) -> Result<Self, NodeCgroupsError> {
        let own = Path::new("/proc/self/cgroup");
        let text = std::fs::read_to_string(own).map_err(fail("reading", own))?;
        let hierarchies = parse_proc_cgroup(&text);
        let v1_host = uses_v1(&hierarchies);
        let dirs = hierarchies
            .iter()
            .map(|h| cgroup_dir(h, v1_host, name))
            .collect();
        Ok(NodeCgroups { dirs })
    }

    /// Makes every directory (and the parents, with cpuset's cpus and mems copied down and, on
    /// v2, every controller enabled for the children) and moves this process into them.
    pub fn create_and_join(&self) -> Result<(), NodeCgroupsError> {
        for dir in &self.dirs {
            make_dir(dir)?;
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, std::process::id().to_string())
                .map_err(fail("joining", &procs))?;
        }
        Ok(())
    }
}

impl NodeCgroups {
    /// Limits the node to `memory_mib` of memory and `cpus` CPUs (cgroup v1 or v2 files,
    /// whichever the directories have).
    pub fn limit(&self, memory_mib: u64, cpus: u32) -> Result<(), NodeCgroupsError> {
        const PERIOD_US: u64 = 100_000;
        let bytes = memory_mib * 1024 * 1024;
        let quota = u64::from(cpus) * PERIOD_US;
        for dir in &self.dirs {
            let writes: Vec<(&str, String)> = if dir.join("memory.max").exists() {
                // cgroup v2: memory and cpu in the one directory.
                vec![
                    ("memory.max", bytes.to_string()),
                    ("cpu.max", format!("{quota} {PERIOD_US}")),
                ]
            } else if dir.join("memory.limit_in_bytes").exists() {
                vec![("memory.limit_in_bytes", bytes.to_string())]
            } else if dir.join("cpu.cfs_quota_us").exists() {
                vec![
                    ("cpu.cfs_period_us", PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ]
            } else {
                Vec::new()
            };
            for (file, value) in writes {
                let path = dir.join(file);
                if path.exists() {
                    std::fs::write(&path, value).map_err(fail("writing", &path))?;
                }
            }
        }
        Ok(())
    }
}

/// Makes `dir` and its missing parents inside a cgroup hierarchy, each ready to be joined
/// (v1 cpusets with the parent's CPUs and memory nodes).
fn make_dir(dir: &Path) -> Result<(), NodeCgroupsError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    if dir.join("cgroup.procs").exists() && !parent.join("cgroup.procs").exists() {
        // `dir` is the root of its hierarchy.
        return Ok(());
    }
    // Parents first, each made or checked: another node's sandbox may be making them now.
    make_dir(parent)?;
    let v2 = parent.join("cgroup.subtree_control").exists();
    if v2 {
        let available = parent.join("cgroup.controllers");
        let controllers =
            std::fs::read_to_string(&available).map_err(fail("reading", &available))?;
        let enable: Vec<String> = controllers
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        if !enable.is_empty() {
            let subtree = parent.join("cgroup.subtree_control");
            // A parent that has processes of its own cannot delegate (the root can).
            if let Err(err) = std::fs::write(&subtree, enable.join(" ")) {
                tracing::debug!(path = %subtree.display(), %err, "enabling controllers");
            }
        }
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Another node's sandbox made it meanwhile (and may not have set cpuset up yet).
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(fail("creating", dir)(err)),
    }
    // A new v1 cpuset starts with no CPUs and no memory nodes: no process could join it.
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let (from, to) = (parent.join(file), dir.join(file));
        let unset = std::fs::read_to_string(&to).is_ok_and(|v| v.trim().is_empty());
        if let Ok(value) = std::fs::read_to_string(&from)
            && unset
            && !v2
        {
            std::fs::write(&to, value.trim()).map_err(fail("writing", &to))?;
        }
    }
    Ok(())
}

/// The processes in `dir` and every cgroup below it.
fn processes_below(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(processes_below(&entry.path()));
            }
        }
    }
    pids
}

/// Removes `dir` and every cgroup below it, deepest first.
fn remove_tree(dir: &Path) -> Result<(), NodeCgroupsError> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NodeCgroupsError {
            action: "removing",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Kills every process in the cgroups `dirs` (and below) with SIGKILL until none is left, then
/// removes the directories. Gives up after `timeout`.
pub fn kill_and_remove_cgroups(
    dirs: &[PathBuf],
    timeout: Duration,
) -> Result<(), NodeCgroupsError> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids: Vec<i32> = dirs.iter().flat_map(|d| processes_below(d)).collect();
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if Instant::now() >= deadline {
            return Err(NodeCgroupsError {
                action: "emptying",
                path: dirs.first().cloned().unwrap_or_default(),
                source: std::io::Error::other(format!("processes {pids:?} are still there")),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A cgroup is removable only once its last process has been reaped by its parent; retry
    // briefly.
    loop {
        let result = dirs.iter().try_for_each(|d| remove_tree(d));
        match result {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_cgroups_go_below_this_process_and_v2_below_the_root() {
        let hierarchies = parse_proc_cgroup("4:memory:/process_api/1f\n1:cpu:/\n0::/user.slice\n");
        let dirs: Vec<PathBuf> = hierarchies
            .iter()
            .map(|h| cgroup_dir(h, true, "baton/demo/worker-1"))
            .collect();
        assert_eq!(
            dirs,
            [
                PathBuf::from("/sys/fs/cgroup/memory/process_api/1f/baton/demo/worker-1"),
                PathBuf::from("/sys/fs/cgroup/cpu/baton/demo/worker-1"),
                PathBuf::from("/sys/fs/cgroup/unified/baton/demo/worker-1"),
            ]
        );
        let v2_only = parse_proc_cgroup("0::/user.slice/session-1.scope\n");
        assert_eq!(
            cgroup_dir(&v2_only[0], false, "baton/demo/cp-1"),
            PathBuf::from("/sys/fs/cgroup/baton/demo/cp-1")
        );
    }
}
