//! Resource statistics of the node and its pods, as the kubelet serves them at
//! /stats/summary and /metrics/resource: CPU and memory from the pod and container cgroups
//! ([`cgroup`]) and the node's from the root of its cgroup namespace (the machine's /proc
//! figures where that root has none, [`host`]), network counters from each pod's network
//! namespace, and disk use of writable layers, logs, volumes and the image store. A sampler
//! reads CPU time every 10 s so that a summary can give a rate (`usageNanoCores`) at once, as
//! cAdvisor's housekeeping does; disk use is measured at most every 30 s per directory (a walk
//! of every file), as upstream measures volumes in the background.

pub mod cgroup;
pub mod host;
pub mod summary;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_images::DiskUsage;
use baton_runtime::{ContainerRuntime, ContainerState, ContainerStatus};
use k8s_openapi::api::core::v1::{Pod, Volume};
use kube::ResourceExt;

use crate::cgroup_names::container_cgroup_path;
use crate::container_start::parse_container_id;
use crate::context::KubeletContext;
use crate::pod_dirs::PodDirs;
use summary::{
    ContainerStats, CpuStats, FsStats, MemoryStats, NetworkStats, NodeStats, PodReference,
    PodStats, ProcessStats, RlimitStats, RuntimeStats, Summary, VolumeStats,
};

/// How often the sampler reads CPU time.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// The shortest window a CPU rate is computed over.
const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);

/// How long a directory's measured disk use is served before it is walked again.
const DISK_USAGE_TTL: Duration = Duration::from_secs(30);

/// What a collection includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// CPU and memory only (`only_cpu_and_memory=true`, /metrics/resource).
    CpuAndMemory,
    /// Everything: network, filesystems, volumes and processes too.
    Full,
}

/// Statistics could not be collected.
#[derive(Debug, thiserror::Error)]
#[error("collecting statistics: {0}")]
pub struct CollectStatsError(String);

/// Collects statistics and keeps the CPU samples rates are computed from.
pub struct StatsCollector {
    ctx: Arc<KubeletContext>,
    cpu: Mutex<CpuRates>,
    disk: Mutex<HashMap<PathBuf, (Instant, DiskUsage)>>,
}

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsCollector").finish_non_exhaustive()
    }
}

/// A lock that a panicked holder did not spoil: the data is plain numbers.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StatsCollector {
    /// A collector for the kubelet of `ctx`.
    pub fn new(ctx: Arc<KubeletContext>) -> Self {
        Self {
            ctx,
            cpu: Mutex::new(CpuRates::default()),
            disk: Mutex::new(HashMap::new()),
        }
    }

    /// Reads CPU time every [`SAMPLE_EVERY`], forever.
    pub async fn run_sampler(self: Arc<Self>, pods: impl Fn() -> Vec<Arc<Pod>> + Send) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = self.collect(&pods(), Detail::CpuAndMemory).await {
                tracing::warn!(%err, "sampling CPU time");
            }
        }
    }

    /// The summary of the node and of `pods` (the pods bound to it). A runtime that cannot
    /// list its containers still gives the node's figures, with
    /// [`Summary::scrape_error`] set.
    pub async fn collect(
        self: &Arc<Self>,
        pods: &[Arc<Pod>],
        detail: Detail,
    ) -> Result<Summary, CollectStatsError> {
        let (containers, scrape_error) = match self.ctx.runtime.list_containers().await {
            Ok(containers) => (containers, false),
            Err(err) => {
                tracing::warn!(%err, "listing containers for statistics");
                (vec![], true)
            }
        };
        let pods = pods.to_vec();
        let this = self.clone();
        let mut summary =
            tokio::task::spawn_blocking(move || this.collect_blocking(&pods, &containers, detail))
                .await
                .map_err(|err| CollectStatsError(err.to_string()))?;
        summary.scrape_error = scrape_error;
        Ok(summary)
    }

    fn collect_blocking(
        &self,
        pods: &[Arc<Pod>],
        containers: &[ContainerStatus],
        detail: Detail,
    ) -> Summary {
        let at = jiff::Timestamp::now();
        let time = timestamp(at);
        let v2 = self.ctx.cgroup_v2;
        let mut seen = HashSet::new();
        // Each reading is timed when it is taken, so that slow disk walks between readings
        // do not skew the rates.
        let mut cpu_of = |key: String, usage: Option<u64>| {
            let usage = usage?;
            let rate = lock(&self.cpu).observe(&key, Instant::now(), usage);
            seen.insert(key);
            Some(CpuStats {
                time: time.clone(),
                usage_nano_cores: rate,
                usage_core_nano_seconds: usage,
            })
        };
        // The node: the root of this cgroup namespace (the node's own cgroup when the node is
        // a cgroup of a larger host), else the machine's figures.
        let root = cgroup::read("/", v2);
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let node_cpu_ns = root.cpu_usage_ns.or_else(|| {
            let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .map_or(100, |t| t as u64);
            host::cpu_usage_ns(&stat, ticks)
        });
        let node_cpu = cpu_of(String::new(), node_cpu_ns);
        let node_memory = root
            .memory
            .or_else(|| {
                host::memory(
                    &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
                    &std::fs::read_to_string("/proc/vmstat").unwrap_or_default(),
                )
            })
            .map(|m| memory_stats(&time, m, Some(self.ctx.machine.memory_bytes)));

        let full = detail == Detail::Full;
        let mut measured = HashSet::new();
        let mut usage_of = |dir: &Path| {
            measured.insert(dir.to_path_buf());
            self.disk_usage(dir)
        };
        let mut pod_stats = Vec::new();
        for pod in pods {
            let uid = pod.uid().unwrap_or_default();
            let pod_cgroup = crate::cgroups::pod_cgroup(&self.ctx.cgroup_root, pod);
            let pod_cgroup_stats = cgroup::read(&pod_cgroup, v2);
            let dirs = PodDirs::new(
                &self.ctx.root_dir,
                &self.ctx.pod_logs_dir,
                &pod.namespace().unwrap_or_default(),
                &pod.name_any(),
                &uid,
            );
            let running: Vec<(&str, &ContainerStatus)> = containers
                .iter()
                .filter(|c| c.state == ContainerState::Running)
                .filter_map(|c| {
                    let (pod_uid, name, _) = parse_container_id(&c.id)?;
                    (pod_uid == uid).then_some((name, c))
                })
                .collect();
            let mut ephemeral = full.then(|| fs_of(&self.ctx.root_dir)).flatten();
            let mut processes = 0;
            let mut container_stats = Vec::new();
            for (name, container) in &running {
                let cgroup_stats =
                    cgroup::read(&container_cgroup_path(&pod_cgroup, &container.id), v2);
                processes += cgroup_stats.processes.unwrap_or(0);
                let mut stats = ContainerStats {
                    name: (*name).to_owned(),
                    start_time: container.started_at.as_deref().and_then(rfc3339_seconds),
                    cpu: cpu_of(container.id.clone(), cgroup_stats.cpu_usage_ns),
                    memory: cgroup_stats.memory.map(|m| memory_stats(&time, m, None)),
                    rootfs: None,
                    logs: None,
                };
                if full {
                    let rootfs = usage_of(&container.bundle.join("upper"));
                    let logs = usage_of(&dirs.logs.join(name));
                    for part in [&rootfs, &logs].into_iter().flatten() {
                        add_used(&mut ephemeral, part);
                    }
                    stats.rootfs = rootfs.map(|u| fs_stats(&time, u));
                    stats.logs = logs.map(|u| fs_stats(&time, u));
                }
                container_stats.push(stats);
            }
            let mut volumes = Vec::new();
            if full {
                for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
                    if volume.host_path.is_some() {
                        continue;
                    }
                    let Some(usage) = usage_of(&dirs.volume(&volume.name)) else {
                        continue;
                    };
                    if is_local_ephemeral(volume) {
                        add_used(&mut ephemeral, &usage);
                    }
                    volumes.push(VolumeStats {
                        fs: fs_stats(&time, usage),
                        name: volume.name.clone(),
                    });
                }
            }
            let network = full
                .then(|| running.iter().find_map(|(_, c)| c.pid))
                .flatten()
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok())
                .and_then(|dev| network_stats(&time, host::interfaces(&dev)));
            pod_stats.push(PodStats {
                pod_ref: PodReference {
                    name: pod.name_any(),
                    namespace: pod.namespace().unwrap_or_default(),
                    uid: uid.clone(),
                },
                start_time: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .map(|t| timestamp(t.0)),
                containers: container_stats,
                cpu: cpu_of(format!("pod:{uid}"), pod_cgroup_stats.cpu_usage_ns),
                memory: pod_cgroup_stats
                    .memory
                    .map(|m| memory_stats(&time, m, None)),
                network,
                volume: volumes,
                ephemeral_storage: ephemeral.map(|u| fs_stats(&time, u)),
                process_stats: full.then_some(ProcessStats {
                    process_count: processes,
                }),
            });
        }
        lock(&self.cpu).keep_only(&seen);

        let mut node = NodeStats {
            node_name: self.ctx.node_name.clone(),
            start_time: host::boot_time(&stat)
                .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
                .map_or_else(|| time.clone(), timestamp),
            cpu: node_cpu,
            memory: node_memory,
            network: None,
            fs: None,
            runtime: None,
            rlimit: None,
        };
        if full {
            let image_root = self.ctx.images.root().to_path_buf();
            measured.insert(image_root.clone());
            let image_fs = self.cached(&image_root, || self.ctx.images.disk_usage().ok());
            node.network = std::fs::read_to_string("/proc/net/dev")
                .ok()
                .and_then(|dev| network_stats(&time, host::interfaces(&dev)));
            node.fs = fs_of(&self.ctx.root_dir).map(|u| {
                fs_stats(
                    &time,
                    DiskUsage {
                        used_bytes: u.capacity_bytes.saturating_sub(u.free_bytes),
                        inodes_used: u.inodes.saturating_sub(u.inodes_free),
                        ..u
                    },
                )
            });
            node.runtime = image_fs.map(|u| RuntimeStats {
                image_fs: fs_stats(&time, u),
                container_fs: fs_stats(&time, u),
            });
            let threads_max = cgroup::read_number(Path::new("/proc/sys/kernel/threads-max"));
            let maxpid = [threads_max, Some(self.ctx.machine.pid_max)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(self.ctx.machine.pid_max);
            node.rlimit = root
                .tasks
                .or_else(|| {
                    std::fs::read_to_string("/proc/loadavg")
                        .ok()
                        .and_then(|l| host::tasks(&l))
                })
                .map(|curproc| RlimitStats {
                    time: time.clone(),
                    maxpid,
                    curproc,
                });
            lock(&self.disk).retain(|dir, _| measured.contains(dir));
        }
        Summary {
            node,
            pods: pod_stats,
            at,
            scrape_error: false,
        }
    }

    /// What the files under `dir` use of their filesystem, walked at most every
    /// [`DISK_USAGE_TTL`].
    fn disk_usage(&self, dir: &Path) -> Option<DiskUsage> {
        self.cached(dir, || {
            let mut usage = fs_of(dir)?;
            usage.add_directory(dir).ok()?;
            Some(usage)
        })
    }

    fn cached(&self, key: &Path, measure: impl FnOnce() -> Option<DiskUsage>) -> Option<DiskUsage> {
        if let Some((at, usage)) = lock(&self.disk).get(key)
            && at.elapsed() < DISK_USAGE_TTL
        {
            return Some(*usage);
        }
        let usage = measure()?;
        lock(&self.disk).insert(key.to_path_buf(), (Instant::now(), usage));
        Some(usage)
    }
}

/// Whether a volume counts towards the pod's ephemeral storage, as upstream's
/// `IsLocalEphemeralVolume`: emptyDir on disk and configMap (secrets, downward API and
/// projected volumes are tmpfs, and Memory emptyDirs count as memory).
fn is_local_ephemeral(volume: &Volume) -> bool {
    volume.config_map.is_some()
        || volume
            .empty_dir
            .as_ref()
            .is_some_and(|e| e.medium.as_deref().unwrap_or_default().is_empty())
}

/// CPU time samples per cgroup, and the rate between the last two far enough apart.
#[derive(Debug, Default)]
struct CpuRates {
    samples: HashMap<String, CpuSample>,
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    usage_ns: u64,
    rate: Option<u64>,
}

impl CpuRates {
    /// Records `usage_ns` for `key` at `now` and gives the rate in nanocores: over the time
    /// since the last sample if that is at least [`MIN_RATE_WINDOW`] ago, else the last rate.
    fn observe(&mut self, key: &str, now: Instant, usage_ns: u64) -> Option<u64> {
        let Some(last) = self.samples.get_mut(key) else {
            self.samples.insert(
                key.to_owned(),
                CpuSample {
                    at: now,
                    usage_ns,
                    rate: None,
                },
            );
            return None;
        };
        let window = now.saturating_duration_since(last.at);
        if window >= MIN_RATE_WINDOW {
            let used = u128::from(usage_ns.saturating_sub(last.usage_ns));
            let rate = used * 1_000_000_000 / window.as_nanos().max(1);
            *last = CpuSample {
                at: now,
                usage_ns,
                rate: Some(u64::try_from(rate).unwrap_or(u64::MAX)),
            };
        }
        last.rate
    }

    /// Forgets the cgroups not in `keys` (gone containers and pods).
    fn keep_only(&mut self, keys: &HashSet<String>) {
        self.samples.retain(|key, _| keys.contains(key));
    }
}

fn memory_stats(time: &str, m: cgroup::MemoryStats, capacity: Option<u64>) -> MemoryStats {
    MemoryStats {
        time: time.to_owned(),
        available_bytes: capacity.map(|c| c.saturating_sub(m.working_set_bytes)),
        usage_bytes: m.usage_bytes,
        working_set_bytes: m.working_set_bytes,
        rss_bytes: m.rss_bytes,
        page_faults: m.page_faults,
        major_page_faults: m.major_page_faults,
    }
}

fn network_stats(time: &str, interfaces: Vec<summary::InterfaceStats>) -> Option<NetworkStats> {
    let default = interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| interfaces.first())?
        .clone();
    Some(NetworkStats {
        time: time.to_owned(),
        default,
        interfaces,
    })
}

/// The filesystem holding `path`, nothing counted as used.
fn fs_of(path: &Path) -> Option<DiskUsage> {
    DiskUsage::of_filesystem(path).ok()
}

fn add_used(total: &mut Option<DiskUsage>, part: &DiskUsage) {
    if let Some(total) = total {
        total.used_bytes += part.used_bytes;
        total.inodes_used += part.inodes_used;
    }
}

fn fs_stats(time: &str, u: DiskUsage) -> FsStats {
    FsStats {
        time: time.to_owned(),
        available_bytes: u.available_bytes,
        capacity_bytes: u.capacity_bytes,
        used_bytes: u.used_bytes,
        inodes_free: u.inodes_free,
        inodes: u.inodes,
        inodes_used: u.inodes_used,
    }
}

/// RFC 3339 to the second, as Kubernetes writes times.
fn timestamp(at: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(at.as_second())
        .unwrap_or(at)
        .to_string()
}

fn rfc3339_seconds(text: &str) -> Option<String> {
    text.parse::<jiff::Timestamp>().ok().map(timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rates_need_a_window_of_a_second() {
        let mut rates = CpuRates::default();
        let start = Instant::now();
        assert_eq!(rates.observe("c", start, 1_000), None);
        // Too soon: no rate yet, and the first sample stays the base.
        assert_eq!(
            rates.observe("c", start + Duration::from_millis(300), 2_000),
            None
        );
        // Half a core over two seconds.
        let two = start + Duration::from_secs(2);
        assert_eq!(rates.observe("c", two, 1_000_001_000), Some(500_000_000));
        // Too soon again: the last rate.
        assert_eq!(
            rates.observe("c", two + Duration::from_millis(10), 5_000_000_000),
            Some(500_000_000)
        );
        rates.keep_only(&HashSet::new());
        assert_eq!(rates.observe("c", two + Duration::from_secs(5), 1), None);
    }

    #[test]
    fn times_are_whole_seconds() {
        let at: jiff::Timestamp = "2026-11-29T03:04:05.678Z".parse().unwrap();
        assert_eq!(timestamp(at), "2026-11-29T03:04:05Z");
        assert_eq!(
            rfc3339_seconds("2026-11-29T03:04:05.1+00:00").as_deref(),
            Some("2026-11-29T03:04:05Z")
        );
    }
}
