//! The node's cgroup tree.
//!
//! On a machine (and in a sandbox on a cgroup v2 host) init mounts cgroup v2 at
//! /sys/fs/cgroup, moves itself (and so the services it starts) into `/init`, and enables
//! every controller for the root's children: cgroup v2 lets only a cgroup without processes of
//! its own delegate controllers, the root of a sandbox's cgroup namespace included. In a
//! sandbox on a host that still uses cgroup v1 hierarchies (this one does), v2 has no
//! controllers to give, so init mounts the same hierarchies the host has, as a tmpfs of v1
//! mounts, each showing the sandbox's own cgroup as its root.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

/// The cgroup init and its services live in on a cgroup v2 tree.
pub const INIT_CGROUP: &str = "init";

/// One cgroup hierarchy a process belongs to (a line of /proc/PID/cgroup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// The controllers (`cpu`, `cpu,cpuacct`, `name=systemd`); empty for cgroup v2.
    pub controllers: String,
    /// The process's cgroup in it (`/`, `/user.slice`).
    pub path: String,
}

impl Hierarchy {
    /// Whether this is the cgroup v2 (unified) hierarchy.
    pub fn is_v2(&self) -> bool {
        self.controllers.is_empty()
    }

    /// The directory of this hierarchy under /sys/fs/cgroup on a host with v1 hierarchies
    /// (`cpu`, `systemd`, `unified` for v2).
    pub fn mount_dir(&self) -> String {
        if self.is_v2() {
            "unified".to_string()
        } else {
            self.controllers
                .split(',')
                .map(|c| c.strip_prefix("name=").unwrap_or(c))
                .collect::<Vec<_>>()
                .join(",")
        }
    }

    /// The options to mount this v1 hierarchy with.
    pub fn mount_options(&self) -> String {
        if self.controllers.starts_with("name=") {
            format!("none,{}", self.controllers)
        } else {
            self.controllers.clone()
        }
    }
}

/// Parses /proc/PID/cgroup.
pub fn parse_proc_cgroup(text: &str) -> Vec<Hierarchy> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let _id = fields.next()?;
            let controllers = fields.next()?.to_string();
            let path = fields.next()?.to_string();
            Some(Hierarchy { controllers, path })
        })
        .collect()
}

/// Whether these hierarchies include cgroup v1 ones (a legacy or hybrid host).
pub fn uses_v1(hierarchies: &[Hierarchy]) -> bool {
    hierarchies.iter().any(|h| !h.is_v2())
}

/// Why the cgroup tree could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupCgroupsError {
    /// A file or directory operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A mount failed.
    #[error("mounting {what} on {path}")]
    Mount {
        /// The hierarchy.
        what: String,
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SetupCgroupsError + 'a {
    move |source| SetupCgroupsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn mount_at(
    path: &Path,
    fstype: &str,
    options: Option<&str>,
    what: &str,
) -> Result<(), SetupCgroupsError> {
    std::fs::create_dir_all(path).map_err(io_error("creating", path))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some(fstype), path, Some(fstype), flags, options).map_err(|source| {
        SetupCgroupsError::Mount {
            what: what.to_string(),
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Mounts the cgroup tree at `root` (`/sys/fs/cgroup`) for the hierarchies this process is in
/// (from /proc/self/cgroup), and returns a summary for the log.
pub fn setup_cgroups(root: &Path, hierarchies: &[Hierarchy]) -> Result<String, SetupCgroupsError> {
    if uses_v1(hierarchies) {
        mount_at(root, "tmpfs", Some("mode=0755"), "tmpfs")?;
        let mut mounted = Vec::new();
        for hierarchy in hierarchies {
            let dir = root.join(hierarchy.mount_dir());
            if hierarchy.is_v2() {
                mount_at(&dir, "cgroup2", None, "cgroup2")?;
            } else {
                let options = hierarchy.mount_options();
                mount_at(&dir, "cgroup", Some(&options), &options)?;
            }
            mounted.push(hierarchy.mount_dir());
        }
        return Ok(format!("cgroup v1 hierarchies: {}", mounted.join(" ")));
    }
    mount_at(root, "cgroup2", None, "cgroup2")?;
    let init = root.join(INIT_CGROUP);
    std::fs::create_dir_all(&init).map_err(io_error("creating", &init))?;
    let procs = init.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).map_err(io_error("writing", &procs))?;
    let available = root.join("cgroup.controllers");
    let controllers: Vec<String> = std::fs::read_to_string(&available)
        .map_err(io_error("reading", &available))?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let subtree = root.join("cgroup.subtree_control");
    let enable: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    std::fs::write(&subtree, enable.join(" ")).map_err(io_error("writing", &subtree))?;
    Ok(format!("cgroup v2, controllers: {}", controllers.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_hosts_list_v1_hierarchies_and_the_unified_one() {
        let hierarchies = parse_proc_cgroup(
            "9:name=systemd:/\n4:memory:/process_api/1f\n2:cpu,cpuacct:/\n0::/\n",
        );
        assert!(uses_v1(&hierarchies));
        let dirs: Vec<String> = hierarchies.iter().map(Hierarchy::mount_dir).collect();
        assert_eq!(dirs, ["systemd", "memory", "cpu,cpuacct", "unified"]);
        assert_eq!(hierarchies[0].mount_options(), "none,name=systemd");
        assert_eq!(hierarchies[1].path, "/process_api/1f");
        assert!(!uses_v1(&parse_proc_cgroup("0::/init.scope\n")));
    }
}
