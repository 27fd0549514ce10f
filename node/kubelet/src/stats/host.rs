//! The machine's own figures from /proc: CPU time (`/proc/stat`), memory (`/proc/meminfo`,
//! `/proc/vmstat`), interface counters (`net/dev` of a network namespace), tasks
//! (`/proc/loadavg`) and the boot time.

use crate::stats::cgroup::{MemoryStats, keyed};
use crate::stats::summary::InterfaceStats;

/// CPU time the machine spent busy (user, nice, system, irq, softirq, steal), in nanoseconds,
/// from the `cpu` line of /proc/stat.
pub fn cpu_usage_ns(stat: &str, ticks_per_second: u64) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy: u128 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| fields.get(*i))
        .map(|ticks| u128::from(*ticks))
        .sum();
    let ns = busy * 1_000_000_000 / u128::from(ticks_per_second.max(1));
    Some(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// The boot time (seconds since the epoch), the `btime` line of /proc/stat.
pub fn boot_time(stat: &str) -> Option<i64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The machine's memory as the kubelet reports the node's: usage is what is not free, the
/// working set that less inactive file pages.
pub fn memory(meminfo: &str, vmstat: &str) -> Option<MemoryStats> {
    let bytes = |key: &str| meminfo_bytes(meminfo, key);
    let usage = bytes("MemTotal")?.saturating_sub(bytes("MemFree")?);
    Some(MemoryStats {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(bytes("Inactive(file)").unwrap_or(0)),
        rss_bytes: bytes("AnonPages").unwrap_or(0),
        page_faults: keyed(vmstat, "pgfault").unwrap_or(0),
        major_page_faults: keyed(vmstat, "pgmajfault").unwrap_or(0),
    })
}

/// A `/proc/meminfo` figure (`MemTotal`, `MemAvailable` ...) in bytes.
pub fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    })
}

/// Every interface of a `net/dev` file but loopback and the host ends of pods' veth pairs
/// (their traffic is the pods', counted again on the node's own interfaces).
pub fn interfaces(net_dev: &str) -> Vec<InterfaceStats> {
    net_dev
        .lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let values: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            // rx: bytes packets errs drop fifo frame compressed multicast; then tx the same.
            (name != "lo" && !name.starts_with("veth") && values.len() >= 16).then(|| {
                InterfaceStats {
                    name: name.to_owned(),
                    rx_bytes: values[0],
                    rx_errors: values[2],
                    tx_bytes: values[8],
                    tx_errors: values[10],
                }
            })
        })
        .collect()
}

/// The tasks on the machine, from the `running/total` field of /proc/loadavg.
pub fn tasks(loadavg: &str) -> Option<u64> {
    loadavg
        .split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_cpu_time_leaves_idle_and_iowait_out() {
        let stat = "cpu  100 10 50 9000 40 5 5 2 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nbtime 1764300000\n";
        // (100 + 10 + 50 + 5 + 5 + 2) ticks at 100 per second.
        assert_eq!(cpu_usage_ns(stat, 100), Some(1_720_000_000));
        assert_eq!(boot_time(stat), Some(1_764_300_000));
        assert_eq!(cpu_usage_ns("intr 1\n", 100), None);
        // A big machine's long uptime (2e11 ticks: 2e20 ns do not fit before the division,
        // 2e18 after it) is not cut short.
        let long = "cpu  200000000000 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(cpu_usage_ns(long, 100), Some(2_000_000_000_000_000_000));
    }

    #[test]
    fn node_memory_counts_what_is_not_free() {
        let meminfo = "MemTotal:       1000 kB\nMemFree:         200 kB\nMemAvailable:    600 kB\nInactive(file):  300 kB\nAnonPages:       150 kB\n";
        let stats = memory(meminfo, "pgfault 77\npgmajfault 3\n").unwrap();
        assert_eq!(stats.usage_bytes, 800 * 1024);
        assert_eq!(stats.working_set_bytes, 500 * 1024);
        assert_eq!(stats.rss_bytes, 150 * 1024);
        assert_eq!((stats.page_faults, stats.major_page_faults), (77, 3));
    }

    #[test]
    fn interfaces_skip_loopback() {
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:    500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0\nveth1a2b:   10       1    0    0    0     0          0         0      10       1    0    0    0     0       0          0\n  eth0:   1200      10    1    0    0     0          0         0      3400      20    2    0    0     0       0          0\n";
        assert_eq!(
            interfaces(dev),
            vec![InterfaceStats {
                name: "eth0".into(),
                rx_bytes: 1200,
                rx_errors: 1,
                tx_bytes: 3400,
                tx_errors: 2,
            }]
        );
        assert_eq!(tasks("0.10 0.20 0.30 2/345 6789\n"), Some(345));
    }
}
