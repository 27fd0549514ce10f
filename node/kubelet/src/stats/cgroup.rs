//! CPU, memory and process counts of a cgroup, read from its files as cAdvisor reads them for
//! the kubelet's stats: `cpuacct.usage`, `memory.usage_in_bytes` and `memory.stat` on cgroup
//! v1 (one hierarchy per controller); `cpu.stat`, `memory.current` and `memory.stat` on v2.
//! The working set is the usage less the inactive file cache, as upstream counts it.

use std::path::{Path, PathBuf};

/// The cgroup file system.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One reading of a cgroup; a field is `None` when its controller or file is not there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time used, in nanoseconds, since the cgroup was made.
    pub cpu_usage_ns: Option<u64>,
    /// Memory use.
    pub memory: Option<MemoryStats>,
    /// Processes (not threads) directly in the cgroup (`cgroup.procs`).
    pub processes: Option<u64>,
    /// Tasks (threads) in the cgroup and below (`pids.current`).
    pub tasks: Option<u64>,
}

/// Memory figures of a cgroup, in bytes and counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Total use, page cache included.
    pub usage_bytes: u64,
    /// The use less inactive file pages (what the OOM killer and eviction look at).
    pub working_set_bytes: u64,
    /// Anonymous memory and swap cache.
    pub rss_bytes: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
}

/// Reads cgroup `path` (e.g. `/kubepods/besteffort/pod<uid>`) from the v2 tree or the v1
/// controllers.
pub fn read(path: &str, v2: bool) -> CgroupStats {
    let relative = path.trim_start_matches('/');
    let root = Path::new(CGROUP_ROOT);
    if v2 {
        let dir = root.join(relative);
        let stat = read_file(&dir.join("memory.stat"));
        CgroupStats {
            cpu_usage_ns: read_file(&dir.join("cpu.stat"))
                .and_then(|text| keyed(&text, "usage_usec"))
                .map(|usec| usec.saturating_mul(1000)),
            memory: read_number(&dir.join("memory.current"))
                .map(|usage| memory_stats(usage, stat.as_deref(), V2_KEYS)),
            processes: count_lines(&dir.join("cgroup.procs")),
            tasks: read_number(&dir.join("pids.current")),
        }
    } else {
        let memory_dir = root.join("memory").join(relative);
        let stat = read_file(&memory_dir.join("memory.stat"));
        CgroupStats {
            cpu_usage_ns: v1_dir("cpuacct", relative)
                .and_then(|dir| read_number(&dir.join("cpuacct.usage"))),
            memory: read_number(&memory_dir.join("memory.usage_in_bytes"))
                .map(|usage| memory_stats(usage, stat.as_deref(), V1_KEYS)),
            processes: count_lines(&memory_dir.join("cgroup.procs")),
            tasks: read_number(&root.join("pids").join(relative).join("pids.current")),
        }
    }
}

/// The names of `memory.stat`'s keys: inactive file, rss, faults, major faults.
type StatKeys = [&'static str; 4];
const V1_KEYS: StatKeys = [
    "total_inactive_file",
    "total_rss",
    "total_pgfault",
    "total_pgmajfault",
];
const V2_KEYS: StatKeys = ["inactive_file", "anon", "pgfault", "pgmajfault"];

fn memory_stats(usage: u64, stat: Option<&str>, keys: StatKeys) -> MemoryStats {
    let value = |key| stat.and_then(|text| keyed(text, key)).unwrap_or(0);
    let [inactive_file, rss, faults, major] = keys;
    MemoryStats {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(value(inactive_file)),
        rss_bytes: value(rss),
        page_faults: value(faults),
        major_page_faults: value(major),
    }
}

/// The v1 hierarchy directory of `controller` for the cgroup (`cpuacct` may be mounted
/// alone or joined as `cpu,cpuacct`).
fn v1_dir(controller: &str, relative: &str) -> Option<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    [controller.to_owned(), format!("cpu,{controller}")]
        .iter()
        .map(|name| root.join(name).join(relative))
        .find(|dir| dir.is_dir())
}

fn read_file(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// A file holding one number (`memory.current`, `/proc/sys/kernel/pid_max` ...).
pub fn read_number(path: &Path) -> Option<u64> {
    read_file(path)?.trim().parse().ok()
}

fn count_lines(path: &Path) -> Option<u64> {
    Some(read_file(path)?.lines().count() as u64)
}

/// The value of `key` in a `key value` per line file (`memory.stat`, `cpu.stat`,
/// `/proc/vmstat`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_is_usage_less_inactive_file() {
        let v1 = "cache 100\nrss 7\ntotal_inactive_file 4096\ntotal_rss 8192\ntotal_pgfault 12\ntotal_pgmajfault 1\n";
        assert_eq!(
            memory_stats(10_000, Some(v1), V1_KEYS),
            MemoryStats {
                usage_bytes: 10_000,
                working_set_bytes: 5_904,
                rss_bytes: 8_192,
                page_faults: 12,
                major_page_faults: 1,
            }
        );
        let v2 = "anon 300\nfile 900\ninactive_file 900\npgfault 5\npgmajfault 0\n";
        // More inactive file pages than usage (counters read at different moments) gives 0.
        let stats = memory_stats(800, Some(v2), V2_KEYS);
        assert_eq!((stats.working_set_bytes, stats.rss_bytes), (0, 300));
        assert_eq!(memory_stats(5, None, V2_KEYS).working_set_bytes, 5);
    }

    #[test]
    fn keyed_files_give_their_values() {
        let cpu = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(keyed(cpu, "usage_usec"), Some(1500));
        assert_eq!(keyed(cpu, "nr_periods"), None);
    }

    #[test]
    fn the_test_processs_own_cgroup_can_be_read() {
        // Whatever the host's layout (v2, or v1 with a memory hierarchy), this process's
        // cgroup has memory figures and lists this process.
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own
            .lines()
            .find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                let wanted = if v2 {
                    controllers.is_empty()
                } else {
                    controllers.split(',').any(|c| c == "memory")
                };
                wanted.then(|| path.to_owned())
            })
            .unwrap();
        let stats = read(&path, v2);
        let memory = stats.memory.expect("memory of this process's cgroup");
        assert!(memory.usage_bytes > 0 && memory.working_set_bytes <= memory.usage_bytes);
        assert!(stats.processes.unwrap_or(0) >= 1, "{stats:?}");
    }
}
