//! What the node API's status reports about the machine: memory, disks, addresses; and the
//! kernel's log records from /dev/kmsg.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use baton_node_api::proto::{Address, Disk};

/// The file systems whose size the status reports.
pub const REPORTED_MOUNTS: &[&str] = &["/", "/var"];

/// `MemTotal` and `MemAvailable` of /proc/meminfo, in bytes (zero when unknown).
pub fn memory(meminfo: &str) -> (u64, u64) {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Field `field` (`VmRSS`, `RssAnon` ...) of a /proc/PID/status, in bytes (zero when
/// unknown).
pub fn status_memory(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// The size, free space and device of each file system in `mounts` that can be queried.
pub fn disks(mounts: &[&str]) -> Vec<Disk> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .iter()
        .filter_map(|mount| {
            let stat = nix::sys::statvfs::statvfs(Path::new(mount)).ok()?;
            let unit = stat.fragment_size();
            Some(Disk {
                mount_point: (*mount).to_string(),
                total_bytes: stat.blocks() * unit,
                available_bytes: stat.blocks_available() * unit,
                device: mounted_device(&table, mount).unwrap_or_default(),
            })
        })
        .collect()
}

/// What is mounted on `mount_point` according to the mount table `table` (/proc/self/mounts
/// format; the last mount on a point is the one seen).
pub fn mounted_device(table: &str, mount_point: &str) -> Option<String> {
    table.lines().rev().find_map(|line| {
        let mut fields = line.split_whitespace();
        let device = fields.next()?;
        (fields.next()? == mount_point).then(|| device.to_string())
    })
}

/// Every IPv4 address of every interface, as `address/prefix`.
pub fn addresses() -> Vec<Address> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter_map(|interface| {
            let address = interface.address?.as_sockaddr_in()?.ip();
            let prefix = interface
                .netmask
                .and_then(|mask| mask.as_sockaddr_in().map(|m| m.ip().to_bits().count_ones()))
                .unwrap_or(32);
            Some(Address {
                interface: interface.interface_name,
                address: format!("{address}/{prefix}"),
            })
        })
        .collect()
}

/// One /dev/kmsg record (`priority,sequence,microseconds,flags;message`) as dmesg shows it:
/// `[seconds.micros] message`.
pub fn kmsg_line(record: &str) -> Option<String> {
    let (header, message) = record.split_once(';')?;
    let micros: u64 = header.split(',').nth(2)?.parse().ok()?;
    let message = message.lines().next().unwrap_or_default();
    Some(format!(
        "[{:5}.{:06}] {message}",
        micros / 1_000_000,
        micros % 1_000_000
    ))
}

/// Opens /dev/kmsg for reading from its oldest record; `follow` makes reads wait for new ones.
pub fn open_kmsg(follow: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if !follow {
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open("/dev/kmsg")
}

/// Reads the next record (one per read(2) on /dev/kmsg); `None` when there is none left (a
/// non-blocking reader) or the device fails.
pub fn read_kmsg_record(kmsg: &mut std::fs::File) -> Option<String> {
    let mut buffer = [0u8; 8192];
    loop {
        match kmsg.read(&mut buffer) {
            Ok(0) => return None,
            Ok(count) => return Some(String::from_utf8_lossy(&buffer[..count]).into_owned()),
            // A record overwritten before it was read: go on with the next.
            Err(err) if err.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_bytes() {
        let meminfo = "MemTotal:        2000 kB\nMemFree:  10 kB\nMemAvailable:    1500 kB\n";
        assert_eq!(memory(meminfo), (2000 * 1024, 1500 * 1024));
        assert_eq!(memory(""), (0, 0));
        let status = "Name:\tinit\nVmRSS:\t    5120 kB\nRssAnon:\t  1024 kB\n";
        assert_eq!(status_memory(status, "VmRSS"), 5120 * 1024);
        assert_eq!(status_memory(status, "RssAnon"), 1024 * 1024);
    }

    #[test]
    fn kernel_records_read_as_dmesg_shows_them() {
        assert_eq!(
            kmsg_line("6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net")
                .as_deref(),
            Some("[    5.140900] NET: Registered protocol family 10")
        );
        assert_eq!(kmsg_line("garbage"), None);
    }

    #[test]
    fn the_last_mount_on_a_point_names_its_device() {
        let table = "sysfs /sys sysfs rw 0 0\ntmpfs /var tmpfs rw 0 0\n/dev/vda /var ext4 rw 0 0\n";
        assert_eq!(mounted_device(table, "/var").as_deref(), Some("/dev/vda"));
        assert_eq!(mounted_device(table, "/run"), None);
    }

    #[test]
    fn the_loopback_address_is_listed() {
        let found = addresses();
        assert!(
            found
                .iter()
                .any(|a| a.interface == "lo" && a.address == "127.0.0.1/8"),
            "{found:?}"
        );
        let root = disks(&["/"]);
        assert_eq!(root.len(), 1);
        assert!(!root[0].device.is_empty(), "{root:?}");
        assert!(root[0].total_bytes >= root[0].available_bytes && root[0].total_bytes > 0);
    }
}
