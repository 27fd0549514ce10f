//! What the benchmarks share: quantiles, millisecond formatting, process memory.

use std::time::Duration;

/// The `q` quantile (0..=1) of sorted durations (nearest rank).
#[allow(dead_code, reason = "not every benchmark reports durations")]
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1)]
}

/// A duration as whole milliseconds.
#[allow(dead_code, reason = "not every benchmark reports durations")]
pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Resident and peak resident memory of a process, in MiB.
#[allow(dead_code, reason = "not every benchmark reads memory")]
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A process's resident memory split into anonymous (heap, stacks) and file-backed (the
/// binary's pages it touched, shared with other processes of the same binary), in MiB.
#[allow(dead_code, reason = "not every benchmark reads memory")]
pub fn rss_split_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("RssAnon:"), field("RssFile:") + field("RssShmem:"))
}

/// How many threads a process has now.
#[allow(dead_code, reason = "not every benchmark reads memory")]
pub fn thread_count(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Proportional set size of a process in MiB (/proc/PID/smaps_rollup): its share of the pages
/// it shares with others, so that the figures of processes running one binary add up.
#[allow(dead_code, reason = "not every benchmark reads memory")]
pub fn pss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|kib| kib.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}
