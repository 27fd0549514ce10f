//! What the benchmarks share: quantiles, millisecond formatting, process memory, heap
//! profiles.

use std::time::Duration;

use baton_test_harness::wait_until;

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

/// CPU time (user + system) a process has used so far, its exited threads included (from
/// /proc/PID/stat, in 10 ms ticks).
#[allow(dead_code, reason = "not every benchmark reads CPU time")]
pub fn process_cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 of what follows the name
    // (counted from 1: the state letter is the first, and some fields are negative, so every
    // field is kept, not only those that parse).
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((field(11) + field(12)) * 10)
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

/// When this is a heap-profiling build (`--features dhat-heap`) and `role` is listed in
/// BATON_DHAT_ROLES, asks the process `pid` of that role for its heap profile of this moment
/// and waits until it is written (see docs/benchmarks.md); otherwise does nothing.
#[allow(dead_code, reason = "not every benchmark profiles")]
pub async fn heap_profile(role: &str, pid: u32) -> anyhow::Result<()> {
    let profiled = cfg!(feature = "dhat-heap")
        && std::env::var("BATON_DHAT_ROLES")
            .is_ok_and(|roles| roles.split(',').any(|r| r.trim() == role));
    let Some(dir) = std::env::var_os("BATON_DHAT_DIR").filter(|_| profiled) else {
        return Ok(());
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::write(dir.join(format!("dump-{role}")), "")?;
    let profile = dir.join(format!("dhat-{role}-{pid}.json"));
    wait_until(
        "the heap profile",
        // dhat writes every allocation site of a busy process: minutes for a large one.
        Duration::from_secs(600),
        || {
            let written = std::fs::read(&profile)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
            async move { written.map(|_| ()) }
        },
    )
    .await?;
    Ok(())
}
