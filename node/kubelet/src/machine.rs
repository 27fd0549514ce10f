//! What the kubelet reports about the machine it runs on: capacity (CPUs, memory, the
//! filesystem of its root directory, pids), identity (machine id, boot id, kernel, OS image)
//! and addresses.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// Facts about this machine, read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Online CPUs.
    pub cpus: u32,
    /// Physical memory in bytes.
    pub memory_bytes: u64,
    /// Size in bytes of the filesystem holding the kubelet's root directory.
    pub ephemeral_storage_bytes: u64,
    /// Largest pid (/proc/sys/kernel/pid_max).
    pub pid_max: u64,
    /// /etc/machine-id, or empty.
    pub machine_id: String,
    /// /proc/sys/kernel/random/boot_id.
    pub boot_id: String,
    /// The kernel release (uname -r).
    pub kernel_version: String,
    /// PRETTY_NAME of /etc/os-release.
    pub os_image: String,
}

impl Machine {
    /// Reads the machine's facts; `root_dir` is the kubelet's state directory (its
    /// filesystem is the node's ephemeral storage).
    pub fn read(root_dir: &Path) -> Self {
        let read = |path: &str| {
            fs::read_to_string(path)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let memory_bytes =
            crate::stats::host::meminfo_bytes(&read("/proc/meminfo"), "MemTotal").unwrap_or(0);
        // A node that is a cgroup of a larger host (the `process` provider's, with its own
        // cgroup namespace) has the memory its cgroup allows, not the host's.
        let memory_bytes = match cgroup_memory_limit(&[
            &read("/sys/fs/cgroup/memory.max"),
            &read("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        ]) {
            Some(limit) if limit < memory_bytes => limit,
            _ => memory_bytes,
        };
        let ephemeral_storage_bytes = nix::sys::statvfs::statvfs(root_dir)
            .map(|stat| stat.blocks() * stat.fragment_size())
            .unwrap_or(0);
        let uname = nix::sys::utsname::uname().ok();
        Self {
            cpus,
            memory_bytes,
            ephemeral_storage_bytes,
            pid_max: read("/proc/sys/kernel/pid_max").parse().unwrap_or(32768),
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            kernel_version: uname
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os_image: os_pretty_name(&read("/etc/os-release")).unwrap_or_else(|| "Linux".into()),
        }
    }
}

/// The memory limit of the cgroup at the root of this process's cgroup namespace, from the
/// contents of its v2 `memory.max` and v1 `memory.limit_in_bytes` (empty when absent; the
/// true root cgroup has neither); `max` and v1's page-rounded `i64::MAX` mean no limit.
fn cgroup_memory_limit(files: &[&str]) -> Option<u64> {
    const V1_UNLIMITED: u64 = 0x7fff_ffff_ffff_f000;
    files
        .iter()
        .filter_map(|text| text.trim().parse::<u64>().ok())
        .filter(|limit| *limit < V1_UNLIMITED)
        .min()
}

/// PRETTY_NAME of an os-release file.
fn os_pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        line.strip_prefix("PRETTY_NAME=")
            .map(|value| value.trim_matches('"').to_owned())
    })
}

/// The node's InternalIP when none is given: the first global IPv4 address of an interface
/// that is up, else 127.0.0.1.
pub fn default_node_ip() -> IpAddr {
    nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter(|interface| {
            interface
                .flags
                .contains(nix::net::if_::InterfaceFlags::IFF_UP)
                && !interface
                    .flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|interface| {
            interface
                .address
                .and_then(|address| address.as_sockaddr_in().map(|sin| sin.ip()))
        })
        .find(|ip: &Ipv4Addr| !ip.is_loopback() && !ip.is_link_local())
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_os_release_are_read() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        let total = |text| crate::stats::host::meminfo_bytes(text, "MemTotal");
        assert_eq!(total(meminfo), Some(24576000 * 1024));
        assert_eq!(total("MemFree: 1 kB"), None);
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_pretty_name(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn a_cgroup_limit_is_the_memory_of_a_node_inside_a_cgroup() {
        assert_eq!(cgroup_memory_limit(&["1073741824", ""]), Some(1 << 30));
        assert_eq!(cgroup_memory_limit(&["", "536870912"]), Some(1 << 29));
        assert_eq!(cgroup_memory_limit(&["max", "9223372036854771712"]), None);
        assert_eq!(cgroup_memory_limit(&["", ""]), None);
    }

    #[test]
    fn this_machine_has_cpus_and_memory() {
        let machine = Machine::read(Path::new("/"));
        assert!(machine.cpus >= 1);
        assert!(machine.memory_bytes > 64 << 20);
        assert!(machine.ephemeral_storage_bytes > 0);
        assert!(!machine.kernel_version.is_empty());
    }
}
