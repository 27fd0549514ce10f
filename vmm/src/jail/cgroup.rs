//! The jail's cgroup: the jailed VMM's memory and CPU limits. On a cgroup v1 host one
//! directory in the memory hierarchy and one in the cpu hierarchy, below the cgroups this
//! process is in; on a v2 host one directory below `/sys/fs/cgroup/baton-vmm` with the
//! memory and cpu controllers enabled for it (that parent stays, empty, as Docker's does:
//! removing it would race with jails starting). Made before the VMM starts, removed after it
//! ended.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::JailConfig;
use crate::config::jail::CPU_PERIOD_US;

/// Where the host's cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The directory below a v2 root that holds the jails' cgroups.
pub const V2_PARENT: &str = "baton-vmm";

/// A cgroup step failed.
#[derive(Debug, thiserror::Error)]
#[error("jail cgroup: cannot {action} {}", path.display())]
pub struct JailCgroupError {
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
) -> impl FnOnce(std::io::Error) -> JailCgroupError + 'a {
    move |source| JailCgroupError {
        action,
        path: path.to_owned(),
        source,
    }
}

/// One limit file and the value written to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitFile {
    /// The file's name in the cgroup directory.
    pub name: &'static str,
    /// What is written.
    pub value: String,
}

/// One directory of the jail's cgroup and the limits written into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// The directory.
    pub path: PathBuf,
    /// Its limits, written in order.
    pub limits: Vec<LimitFile>,
    /// v2 directories whose `cgroup.subtree_control` must enable memory and cpu first.
    pub enable_in: Vec<PathBuf>,
}

/// The jail's cgroup directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailCgroup {
    /// One per hierarchy (two on v1, one on v2).
    pub dirs: Vec<CgroupDir>,
}

/// The directories and limit files of cgroup `name` for `jail`, given this process's
/// `/proc/self/cgroup` text.
pub fn plan(proc_self_cgroup: &str, name: &str, jail: &JailConfig) -> Option<JailCgroup> {
    let memory_bytes = jail.memory_bytes().to_string();
    let quota = jail.cpu_quota_us();
    let mut memory_v1 = None;
    let mut cpu_v1 = None;
    let mut unified = None;
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if controllers.is_empty() {
            unified = Some(relative.to_owned());
        }
        for controller in controllers.split(',') {
            let dir = Path::new(CGROUP_ROOT)
                .join(controllers)
                .join(relative)
                .join(name);
            match controller {
                "memory" => memory_v1 = Some(dir),
                "cpu" => cpu_v1 = Some(dir),
                _ => {}
            }
        }
    }
    if let (Some(memory), Some(cpu)) = (memory_v1, cpu_v1) {
        return Some(JailCgroup {
            dirs: vec![
                CgroupDir {
                    path: memory,
                    limits: vec![LimitFile {
                        name: "memory.limit_in_bytes",
                        value: memory_bytes,
                    }],
                    enable_in: Vec::new(),
                },
                CgroupDir {
                    path: cpu,
                    limits: vec![
                        LimitFile {
                            name: "cpu.cfs_period_us",
                            value: CPU_PERIOD_US.to_string(),
                        },
                        LimitFile {
                            name: "cpu.cfs_quota_us",
                            value: quota.to_string(),
                        },
                    ],
                    enable_in: Vec::new(),
                },
            ],
        });
    }
    // v2: below the root, where a parent with processes of its own cannot hand
    // controllers down.
    unified?;
    let root = PathBuf::from(CGROUP_ROOT);
    let parent = root.join(V2_PARENT);
    Some(JailCgroup {
        dirs: vec![CgroupDir {
            path: parent.join(name),
            limits: vec![
                LimitFile {
                    name: "memory.max",
                    value: memory_bytes,
                },
                LimitFile {
                    name: "memory.swap.max",
                    value: "0".into(),
                },
                LimitFile {
                    name: "cpu.max",
                    value: format!("{quota} {CPU_PERIOD_US}"),
                },
            ],
            enable_in: vec![root, parent],
        }],
    })
}

impl JailCgroup {
    /// The jail cgroup `name` for this process's hierarchies, each checked to be a cgroup
    /// file system (where one is missing, /sys/fs/cgroup may be a plain tmpfs that would
    /// take the limit files and enforce nothing).
    pub fn for_this_process(name: &str, jail: &JailConfig) -> Result<Self, JailCgroupError> {
        let own = Path::new("/proc/self/cgroup");
        let text = std::fs::read_to_string(own).map_err(fail("read", own))?;
        let plan = plan(&text, name, jail).ok_or_else(|| JailCgroupError {
            action: "find the memory and cpu controllers in",
            path: own.to_owned(),
            source: std::io::Error::other("neither cgroup v1 memory and cpu nor cgroup v2"),
        })?;
        for dir in &plan.dirs {
            let hierarchy = dir
                .enable_in
                .first()
                .cloned()
                .or_else(|| dir.path.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from(CGROUP_ROOT));
            let kind = nix::sys::statfs::statfs(&hierarchy)
                .map_err(|e| fail("inspect", &hierarchy)(e.into()))?
                .filesystem_type();
            let expected = if dir.enable_in.is_empty() {
                nix::sys::statfs::CGROUP_SUPER_MAGIC
            } else {
                nix::sys::statfs::CGROUP2_SUPER_MAGIC
            };
            if kind != expected {
                return Err(JailCgroupError {
                    action: "use",
                    path: hierarchy,
                    source: std::io::Error::other(
                        "not a cgroup file system of the kind its processes list",
                    ),
                });
            }
        }
        Ok(plan)
    }

    /// Makes the directories and writes the limits; on failure removes what it made.
    pub fn create(&self) -> Result<(), JailCgroupError> {
        let result = self.create_dirs();
        if result.is_err() {
            let _ = self.remove();
        }
        result
    }

    fn create_dirs(&self) -> Result<(), JailCgroupError> {
        for dir in &self.dirs {
            for parent in &dir.enable_in {
                std::fs::create_dir_all(parent).map_err(fail("make", parent))?;
                let control = parent.join("cgroup.subtree_control");
                std::fs::write(&control, "+memory +cpu").map_err(fail("write", &control))?;
            }
            std::fs::create_dir(&dir.path).map_err(fail("make", &dir.path))?;
            for limit in &dir.limits {
                let file = dir.path.join(limit.name);
                // memory.swap.max exists only where swap accounting is on.
                if limit.name == "memory.swap.max" && !file.exists() {
                    continue;
                }
                std::fs::write(&file, &limit.value).map_err(fail("write", &file))?;
            }
        }
        Ok(())
    }

    /// Moves process `pid` into every directory.
    pub fn add(&self, pid: i32) -> Result<(), JailCgroupError> {
        for dir in &self.dirs {
            let procs = dir.path.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(fail("write", &procs))?;
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer killed a process in the cgroup, where the
    /// kernel says (v1 `memory.oom_control`, v2 `memory.events`).
    pub fn oom_kills(&self) -> Option<u64> {
        self.dirs.iter().find_map(|dir| {
            ["memory.oom_control", "memory.events"]
                .iter()
                .find_map(|name| std::fs::read_to_string(dir.path.join(name)).ok())
                .and_then(|text| {
                    text.lines()
                        .find_map(|line| line.strip_prefix("oom_kill "))
                        .and_then(|n| n.trim().parse().ok())
                })
        })
    }

    /// Removes the directories (the processes in them must have ended; the kernel may take
    /// a moment to let go of a cgroup whose last process was just reaped).
    pub fn remove(&self) -> Result<(), JailCgroupError> {
        for dir in &self.dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut pause = Duration::from_millis(1);
            loop {
                match std::fs::remove_dir(&dir.path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(100));
                    }
                    Err(e) => return Err(fail("remove", &dir.path)(e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MachineConfig;
    use crate::config::jail::JailFile;

    fn jail() -> JailConfig {
        let file = JailFile {
            memory_mib: Some(200),
            cpus: Some(1.5),
            ..Default::default()
        };
        JailConfig::new(file, &MachineConfig::new(2, 128).unwrap()).unwrap()
    }

    #[test]
    fn v1_hosts_get_a_memory_and_a_cpu_directory_below_their_own() {
        let text = "9:name=systemd:/\n4:memory:/ci/job\n2:cpu,cpuacct:/ci\n0::/\n";
        let plan = plan(text, "vm-7", &jail()).unwrap();
        assert_eq!(plan.dirs.len(), 2);
        assert_eq!(
            plan.dirs[0].path,
            Path::new("/sys/fs/cgroup/memory/ci/job/vm-7")
        );
        assert_eq!(plan.dirs[0].limits[0].value, (200u64 << 20).to_string());
        assert_eq!(
            plan.dirs[1].path,
            Path::new("/sys/fs/cgroup/cpu,cpuacct/ci/vm-7")
        );
        assert_eq!(plan.dirs[1].limits[1].name, "cpu.cfs_quota_us");
        assert_eq!(plan.dirs[1].limits[1].value, "150000");
    }

    #[test]
    fn v2_hosts_get_one_directory_below_the_root() {
        let plan = plan("0::/user.slice/session-2.scope\n", "vm-7", &jail()).unwrap();
        assert_eq!(plan.dirs.len(), 1);
        let dir = &plan.dirs[0];
        assert_eq!(dir.path, Path::new("/sys/fs/cgroup/baton-vmm/vm-7"));
        assert_eq!(
            dir.enable_in,
            vec![
                PathBuf::from("/sys/fs/cgroup"),
                PathBuf::from("/sys/fs/cgroup/baton-vmm")
            ]
        );
        let cpu = dir.limits.iter().find(|l| l.name == "cpu.max").unwrap();
        assert_eq!(cpu.value, "150000 100000");
    }

    #[test]
    fn hosts_without_memory_and_cpu_controllers_have_no_plan() {
        assert_eq!(plan("3:pids:/\n4:memory:/\n", "vm", &jail()), None);
    }
}
