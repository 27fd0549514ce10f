//! Cgroup resources of a container (upstream `calculateLinuxResources`: CPU shares from the
//! request, CFS quota from the limit, the memory limit, the OOM group on cgroup v2) and its
//! `oom_score_adj` by QoS class (upstream `GetContainerOOMScoreAdjust`). Hugepages are not
//! limited.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use oci_spec::runtime::{
    LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxPids, LinuxResources,
};

use crate::qos::{self, QosClass};
use crate::quantity;

/// The fewest CPU shares a cgroup gets (a request of 0 or nothing).
pub const MIN_SHARES: u64 = 2;
/// The most CPU shares a cgroup gets.
pub const MAX_SHARES: u64 = 262_144;
const SHARES_PER_CPU: i64 = 1024;
const MILLI_CPU_PER_CPU: i64 = 1000;
/// The CFS period, 100 ms.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota, 1 ms.
pub const MIN_QUOTA_US: i64 = 1000;

/// Upstream `MilliCPUToShares`: 1024 shares per CPU, at least 2 and at most 262144.
pub fn milli_cpu_to_shares(milli_cpu: i64) -> u64 {
    if milli_cpu <= 0 {
        return MIN_SHARES;
    }
    let shares = milli_cpu.saturating_mul(SHARES_PER_CPU) / MILLI_CPU_PER_CPU;
    (shares.max(0) as u64).clamp(MIN_SHARES, MAX_SHARES)
}

/// Upstream `MilliCPUToQuota`: the CPU time per `period` microseconds, at least 1 ms; 0 (no
/// quota) for no limit.
pub fn milli_cpu_to_quota(milli_cpu: i64, period: i64) -> i64 {
    if milli_cpu <= 0 {
        return 0;
    }
    (milli_cpu.saturating_mul(period) / MILLI_CPU_PER_CPU).max(MIN_QUOTA_US)
}

/// The container's cgroup resources. Unprivileged containers get a deny-all device rule (the
/// runtime adds the standard devices); privileged ones may use every device.
pub fn container_resources(
    container: &Container,
    pids_limit: Option<i64>,
    cgroup_v2: bool,
    privileged: bool,
) -> LinuxResources {
    let cpu_request = qos::request(container, "cpu")
        .map(quantity::milli_value)
        .unwrap_or(0);
    let cpu_limit = qos::limit(container, "cpu")
        .map(quantity::milli_value)
        .unwrap_or(0);
    let memory_limit = qos::limit(container, "memory")
        .map(quantity::value)
        .unwrap_or(0);

    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(milli_cpu_to_shares(cpu_request)));
    cpu.set_period(Some(CPU_PERIOD_US));
    let quota = milli_cpu_to_quota(cpu_limit, CPU_PERIOD_US as i64);
    if quota != 0 {
        cpu.set_quota(Some(quota));
    }

    let mut resources = LinuxResources::default();
    resources.set_cpu(Some(cpu));
    if memory_limit > 0 {
        let mut memory = LinuxMemory::default();
        memory.set_limit(Some(memory_limit));
        resources.set_memory(Some(memory));
    }
    if let Some(limit) = pids_limit.filter(|l| *l > 0) {
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        resources.set_pids(Some(pids));
    }
    if cgroup_v2 {
        // Kill the whole container, not one process, when it runs out of memory.
        resources.set_unified(Some(HashMap::from([(
            "memory.oom.group".to_string(),
            "1".to_string(),
        )])));
    }
    let mut devices = LinuxDeviceCgroup::default();
    devices.set_allow(privileged);
    devices.set_typ(Some(LinuxDeviceType::A));
    devices.set_access(Some("rwm".to_string()));
    resources.set_devices(Some(vec![devices]));
    resources
}

const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
const BESTEFFORT_OOM_SCORE_ADJ: i64 = 1000;
const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// Upstream `IsNodeCriticalPod`: priority class `system-node-critical` on a critical pod
/// (static or mirror pod, or priority at least the system-critical threshold).
fn is_node_critical(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.priority_class_name.as_deref()) != Some("system-node-critical") {
        return false;
    }
    let annotations = pod.metadata.annotations.as_ref();
    let mirror = annotations.is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let static_pod = annotations
        .and_then(|a| a.get("kubernetes.io/config.source"))
        .is_some_and(|source| source != "api");
    mirror
        || static_pod
        || spec
            .and_then(|s| s.priority)
            .is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

/// The container's `oom_score_adj`: -997 for Guaranteed and node-critical pods, 1000 for
/// BestEffort, and for Burstable `1000 - 1000 * memory request / memory capacity` kept within
/// [3, 999] (a sidecar gets no more than the smallest regular container's).
pub fn oom_score_adj(pod: &Pod, container: &Container, memory_capacity: u64) -> i32 {
    if is_node_critical(pod) {
        return GUARANTEED_OOM_SCORE_ADJ as i32;
    }
    match qos::qos_class(pod) {
        QosClass::Guaranteed => return GUARANTEED_OOM_SCORE_ADJ as i32,
        QosClass::BestEffort => return BESTEFFORT_OOM_SCORE_ADJ as i32,
        QosClass::Burstable => {}
    }
    let capacity = i64::try_from(memory_capacity).unwrap_or(i64::MAX).max(1);
    let score_for = |request: i64| {
        let share = i128::from(request) * 1000 / i128::from(capacity);
        1000 - i64::try_from(share).unwrap_or(i64::MAX)
    };
    let request_of = |c: &Container| qos::request(c, "memory").map(quantity::value).unwrap_or(0);
    let mut score = score_for(request_of(container));
    let spec = pod.spec.as_ref();
    let is_sidecar = qos::is_restartable_init_container(container)
        && spec
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|init| init.iter().any(|c| c.name == container.name));
    if is_sidecar
        && let Some(smallest) = spec.and_then(|s| s.containers.iter().map(request_of).min())
    {
        score = score.min(score_for(smallest));
    }
    if score < 1000 + GUARANTEED_OOM_SCORE_ADJ {
        return (1000 + GUARANTEED_OOM_SCORE_ADJ) as i32;
    }
    if score == BESTEFFORT_OOM_SCORE_ADJ {
        return (score - 1) as i32;
    }
    score as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qos::tests::{container, pod};
    use std::collections::BTreeMap;

    #[test]
    fn shares_and_quota_conversions() {
        let shares = [
            (0, 2),
            (1, 2),
            (2, 2),
            (10, 10),
            (100, 102),
            (250, 256),
            (1000, 1024),
            (300_000, 262_144),
        ];
        for (milli, want) in shares {
            assert_eq!(milli_cpu_to_shares(milli), want, "shares for {milli}m");
        }
        let quotas = [
            (0, 0),
            (1, 1000),
            (5, 1000),
            (10, 1000),
            (250, 25_000),
            (1500, 150_000),
        ];
        for (milli, want) in quotas {
            assert_eq!(
                milli_cpu_to_quota(milli, 100_000),
                want,
                "quota for {milli}m"
            );
        }
    }

    #[test]
    fn container_cgroup_resources() {
        let c = container(
            "c",
            &[("cpu", "250m")],
            &[("cpu", "500m"), ("memory", "64Mi")],
        );
        let r = container_resources(&c, Some(1024), true, false);
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.shares(), Some(256));
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 * 1024 * 1024));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 1024);
        assert_eq!(
            r.unified()
                .as_ref()
                .unwrap()
                .get("memory.oom.group")
                .map(String::as_str),
            Some("1")
        );
        let devices = r.devices().as_ref().unwrap();
        assert!(!devices[0].allow());
        assert_eq!(devices[0].to_string(), "a *:* rwm");
        assert_eq!(devices[0].access().as_deref(), Some("rwm"));

        // A limit without a request: shares from the limit.
        let limit_only = container("c", &[], &[("cpu", "2")]);
        let r = container_resources(&limit_only, None, false, true);
        assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(2048));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(200_000));
        assert!(r.memory().is_none());
        assert!(r.pids().is_none());
        assert!(r.unified().is_none(), "cgroup v1 has no unified settings");
        assert!(r.devices().as_ref().unwrap()[0].allow(), "privileged");

        // Nothing set: minimum shares, no quota.
        let r = container_resources(&container("c", &[], &[]), None, false, false);
        assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(2));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), None);
    }

    const GIB: u64 = 1024 * 1024 * 1024;

    #[test]
    fn oom_score_adj_by_qos() {
        let guaranteed = container("c", &[], &[("cpu", "1"), ("memory", "1Gi")]);
        let p = pod(vec![guaranteed.clone()], vec![]);
        assert_eq!(oom_score_adj(&p, &guaranteed, 16 * GIB), -997);

        let besteffort = container("c", &[], &[]);
        let p = pod(vec![besteffort.clone()], vec![]);
        assert_eq!(oom_score_adj(&p, &besteffort, 16 * GIB), 1000);

        let cases: &[(&str, i32)] = &[
            ("1Gi", 938), // 1000 - 62.5, truncated
            ("8Gi", 500),
            ("16Gi", 3), // at most the floor
            ("32Gi", 3),
            ("1", 999),     // a rounding to 1000 stays below BestEffort
            ("100Mi", 994), // 1000 - 6.1
        ];
        for (request, want) in cases {
            let c = container("c", &[("memory", request)], &[]);
            let p = pod(vec![c.clone()], vec![]);
            assert_eq!(oom_score_adj(&p, &c, 16 * GIB), *want, "request {request}");
        }
        // A burstable container without a memory request.
        let cpu_only = container("c", &[("cpu", "1")], &[]);
        let p = pod(vec![cpu_only.clone()], vec![]);
        assert_eq!(oom_score_adj(&p, &cpu_only, 16 * GIB), 999);
    }

    #[test]
    fn sidecars_score_no_higher_than_the_smallest_regular_container() {
        let mut sidecar = container("proxy", &[("memory", "1Gi")], &[]);
        sidecar.restart_policy = Some("Always".into());
        let app = container("app", &[("memory", "8Gi")], &[]);
        let small = container("small", &[("memory", "4Gi")], &[]);
        let p = pod(vec![app.clone(), small], vec![sidecar.clone()]);
        assert_eq!(oom_score_adj(&p, &app, 16 * GIB), 500);
        // The sidecar alone would get 938; the smallest regular container gets 750.
        assert_eq!(oom_score_adj(&p, &sidecar, 16 * GIB), 750);
    }

    #[test]
    fn node_critical_pods_are_protected() {
        let c = container("c", &[], &[]);
        let mut p = pod(vec![c.clone()], vec![]);
        p.spec.as_mut().unwrap().priority_class_name = Some("system-node-critical".into());
        assert_eq!(
            oom_score_adj(&p, &c, 16 * GIB),
            1000,
            "not critical without priority"
        );
        p.spec.as_mut().unwrap().priority = Some(2_000_001_000);
        assert_eq!(oom_score_adj(&p, &c, 16 * GIB), -997);
        p.spec.as_mut().unwrap().priority = None;
        p.metadata.annotations = Some(BTreeMap::from([(
            "kubernetes.io/config.source".to_string(),
            "file".to_string(),
        )]));
        assert_eq!(oom_score_adj(&p, &c, 16 * GIB), -997, "static pod");
    }
}
