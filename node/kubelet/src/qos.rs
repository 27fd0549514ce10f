//! Pod QoS classes (upstream's `GetPodQOS`) and what they imply for the pod-level cgroup
//! (upstream's `ResourceConfigForPod`): its name and its CPU and memory settings.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::cgroup_names::pod_cgroup_name_for;
use crate::container_spec::resources::{
    CPU_PERIOD_US, MIN_SHARES, milli_cpu_to_quota, milli_cpu_to_shares,
};
use crate::quantity;

/// A pod's quality-of-service class, as in `status.qosClass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The name used in `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// Parses a `status.qosClass` value.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "Burstable" => Some(QosClass::Burstable),
            "BestEffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }
}

impl std::fmt::Display for QosClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pod's QoS class: `status.qosClass` when set (it never changes once set), else computed
/// from the containers' resources.
pub fn qos_class(pod: &Pod) -> QosClass {
    pod.status
        .as_ref()
        .and_then(|s| s.qos_class.as_deref())
        .and_then(QosClass::parse)
        .unwrap_or_else(|| compute_qos_class(pod))
}

/// Upstream's `ComputePodQOS`: BestEffort when no container (init containers included) requests
/// or limits CPU or memory; Guaranteed when every container limits both and the summed requests
/// equal the summed limits; Burstable otherwise.
pub fn compute_qos_class(pod: &Pod) -> QosClass {
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    for container in all_containers(pod) {
        for name in QOS_RESOURCES {
            if let Some(amount) = request(container, name).map(quantity::nanos)
                && amount > 0
            {
                *requests.entry(name).or_default() += amount;
            }
        }
        let mut limited = 0;
        for name in QOS_RESOURCES {
            if let Some(amount) = limit(container, name).map(quantity::nanos)
                && amount > 0
            {
                limited += 1;
                *limits.entry(name).or_default() += amount;
            }
        }
        if limited != QOS_RESOURCES.len() {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(name, r)| limits.get(name) == Some(r))
    {
        return QosClass::Guaranteed;
    }
    QosClass::Burstable
}

/// The resources that decide the QoS class.
const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .chain(
            spec.and_then(|s| s.init_containers.as_deref())
                .unwrap_or_default(),
        )
}

/// The container's limit for `name`.
pub fn limit<'a>(container: &'a Container, name: &str) -> Option<&'a Quantity> {
    container.resources.as_ref()?.limits.as_ref()?.get(name)
}

/// The container's request for `name`, defaulted to its limit when only the limit is set (as
/// the API server's defaulting does).
pub fn request<'a>(container: &'a Container, name: &str) -> Option<&'a Quantity> {
    let resources = container.resources.as_ref()?;
    resources
        .requests
        .as_ref()
        .and_then(|r| r.get(name))
        .or_else(|| resources.limits.as_ref()?.get(name))
}

/// Whether the container is a sidecar: an init container with `restartPolicy: Always`.
pub fn is_restartable_init_container(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// The name of the pod's cgroup (`/kubepods/burstable/pod<uid>`, see [`crate::cgroup_names`]).
pub fn pod_cgroup_name(pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    pod_cgroup_name_for(qos_class(pod), uid)
}

/// CPU and memory settings of a pod's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCgroupResources {
    /// `cpu.shares` (cgroup v1; the v2 weight is derived from it by the cgroup manager).
    pub cpu_shares: u64,
    /// CFS quota in microseconds per [`Self::cpu_period`]; `None` for no quota.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds, set together with the quota.
    pub cpu_period: Option<u64>,
    /// Memory limit in bytes; `None` for no limit.
    pub memory_limit: Option<i64>,
}

/// A pod's effective CPU (milli) and memory (bytes) amounts, summed as the scheduler and the
/// kubelet do: regular containers and sidecars added up, each init container's use (with the
/// sidecars started before it) as a floor, plus the pod overhead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodAmounts {
    pub milli_cpu: i64,
    pub memory: i64,
}

/// Upstream `PodRequests` for CPU and memory (requests defaulted from limits).
pub fn pod_requests(pod: &Pod) -> PodAmounts {
    aggregate(pod, request, |_, _| {}, true)
}

/// Upstream `PodLimits` for CPU and memory, with whether every container (counting sidecars
/// started before an init container) declares a CPU limit and a memory limit.
pub fn pod_limits(pod: &Pod) -> (PodAmounts, bool, bool) {
    let mut cpu_declared = true;
    let mut memory_declared = true;
    let amounts = aggregate(
        pod,
        limit,
        |cpu, memory| {
            cpu_declared &= cpu != 0;
            memory_declared &= memory != 0;
        },
        false,
    );
    (amounts, cpu_declared, memory_declared)
}

fn aggregate(
    pod: &Pod,
    amount_of: for<'a> fn(&'a Container, &str) -> Option<&'a Quantity>,
    mut per_container: impl FnMut(i64, i64),
    overhead_always: bool,
) -> PodAmounts {
    let Some(spec) = pod.spec.as_ref() else {
        return PodAmounts::default();
    };
    let of = |c: &Container| PodAmounts {
        milli_cpu: amount_of(c, "cpu").map(quantity::milli_value).unwrap_or(0),
        memory: amount_of(c, "memory").map(quantity::value).unwrap_or(0),
    };
    let mut total = PodAmounts::default();
    let mut seen = (false, false);
    for container in &spec.containers {
        let a = of(container);
        per_container(a.milli_cpu, a.memory);
        seen.0 |= amount_of(container, "cpu").is_some();
        seen.1 |= amount_of(container, "memory").is_some();
        total.milli_cpu += a.milli_cpu;
        total.memory += a.memory;
    }
    let mut sidecars = PodAmounts::default();
    let mut init_floor = PodAmounts::default();
    for container in spec.init_containers.as_deref().unwrap_or_default() {
        let a = of(container);
        seen.0 |= amount_of(container, "cpu").is_some();
        seen.1 |= amount_of(container, "memory").is_some();
        let in_use = if is_restartable_init_container(container) {
            total.milli_cpu += a.milli_cpu;
            total.memory += a.memory;
            sidecars.milli_cpu += a.milli_cpu;
            sidecars.memory += a.memory;
            sidecars
        } else {
            PodAmounts {
                milli_cpu: a.milli_cpu + sidecars.milli_cpu,
                memory: a.memory + sidecars.memory,
            }
        };
        per_container(in_use.milli_cpu, in_use.memory);
        init_floor.milli_cpu = init_floor.milli_cpu.max(in_use.milli_cpu);
        init_floor.memory = init_floor.memory.max(in_use.memory);
    }
    total.milli_cpu = total.milli_cpu.max(init_floor.milli_cpu);
    total.memory = total.memory.max(init_floor.memory);
    if let Some(overhead) = spec.overhead.as_ref() {
        // Requests always carry the overhead; limits only for resources some container limits.
        if let Some(cpu) = overhead.get("cpu")
            && (overhead_always || seen.0)
        {
            total.milli_cpu += quantity::milli_value(cpu);
        }
        if let Some(memory) = overhead.get("memory")
            && (overhead_always || seen.1)
        {
            total.memory += quantity::value(memory);
        }
    }
    total
}

/// Upstream `ResourceConfigForPod` (CFS quota enforced, 100 ms period): CPU shares from the
/// summed requests; for Guaranteed pods the quota and memory limit from the summed limits; for
/// Burstable pods each only when every container declares that limit; BestEffort pods get the
/// minimum shares and nothing else.
pub fn pod_cgroup_resources(pod: &Pod) -> PodCgroupResources {
    let requests = pod_requests(pod);
    let (limits, cpu_declared, memory_declared) = pod_limits(pod);
    let shares = milli_cpu_to_shares(requests.milli_cpu);
    let quota = milli_cpu_to_quota(limits.milli_cpu, CPU_PERIOD_US as i64);
    let with_quota = PodCgroupResources {
        cpu_shares: shares,
        cpu_quota: Some(quota),
        cpu_period: Some(CPU_PERIOD_US),
        memory_limit: Some(limits.memory),
    };
    match qos_class(pod) {
        QosClass::Guaranteed => with_quota,
        QosClass::Burstable => PodCgroupResources {
            cpu_shares: shares,
            cpu_quota: with_quota.cpu_quota.filter(|_| cpu_declared),
            cpu_period: with_quota.cpu_period.filter(|_| cpu_declared),
            memory_limit: with_quota.memory_limit.filter(|_| memory_declared),
        },
        QosClass::BestEffort => PodCgroupResources {
            cpu_shares: MIN_SHARES,
            cpu_quota: None,
            cpu_period: None,
            memory_limit: None,
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// A container with `requests` and `limits` given as `(resource, quantity)` lists.
    pub(crate) fn container(
        name: &str,
        requests: &[(&str, &str)],
        limits: &[(&str, &str)],
    ) -> Container {
        let list = |items: &[(&str, &str)]| {
            (!items.is_empty()).then(|| {
                items
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        Container {
            name: name.to_string(),
            resources: Some(ResourceRequirements {
                requests: list(requests),
                limits: list(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("1234-abcd".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers,
                init_containers: (!init.is_empty()).then_some(init),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn sidecar(mut c: Container) -> Container {
        c.restart_policy = Some("Always".into());
        c
    }

    #[test]
    fn qos_classes_follow_get_pod_qos() {
        let full = [("cpu", "500m"), ("memory", "128Mi")];
        let cases: Vec<(&str, Pod, QosClass)> = vec![
            (
                "nothing set",
                pod(vec![container("a", &[], &[])], vec![]),
                QosClass::BestEffort,
            ),
            (
                "limits only (requests default to limits)",
                pod(vec![container("a", &[], &full)], vec![]),
                QosClass::Guaranteed,
            ),
            (
                "requests equal limits in other notation",
                pod(
                    vec![container(
                        "a",
                        &[("cpu", "0.5"), ("memory", "134217728")],
                        &full,
                    )],
                    vec![],
                ),
                QosClass::Guaranteed,
            ),
            (
                "request below limit",
                pod(vec![container("a", &[("cpu", "100m")], &full)], vec![]),
                QosClass::Burstable,
            ),
            (
                "only a cpu limit",
                pod(vec![container("a", &[], &[("cpu", "1")])], vec![]),
                QosClass::Burstable,
            ),
            (
                "one container without limits",
                pod(
                    vec![container("a", &[], &full), container("b", &[], &[])],
                    vec![],
                ),
                QosClass::Burstable,
            ),
            (
                "init container without limits",
                pod(
                    vec![container("a", &[], &full)],
                    vec![container("i", &[], &[])],
                ),
                QosClass::Burstable,
            ),
            (
                "init container with a request makes it burstable",
                pod(
                    vec![container("a", &[], &[])],
                    vec![container("i", &[("memory", "1Mi")], &[])],
                ),
                QosClass::Burstable,
            ),
            (
                "zero requests are ignored",
                pod(vec![container("a", &[("cpu", "0")], &[])], vec![]),
                QosClass::BestEffort,
            ),
            (
                "other resources do not count",
                pod(
                    vec![container("a", &[("ephemeral-storage", "1Gi")], &[])],
                    vec![],
                ),
                QosClass::BestEffort,
            ),
        ];
        for (what, pod, want) in cases {
            assert_eq!(compute_qos_class(&pod), want, "{what}");
        }
    }

    #[test]
    fn status_qos_class_wins() {
        let mut p = pod(vec![container("a", &[], &[])], vec![]);
        p.status = Some(PodStatus {
            qos_class: Some("Burstable".into()),
            ..Default::default()
        });
        assert_eq!(qos_class(&p), QosClass::Burstable);
        assert_eq!(QosClass::Burstable.to_string(), "Burstable");
    }

    #[test]
    fn pod_cgroup_names_by_class() {
        let full = [("cpu", "1"), ("memory", "1Gi")];
        let g = pod(vec![container("a", &[], &full)], vec![]);
        let b = pod(vec![container("a", &[("cpu", "1")], &[])], vec![]);
        let e = pod(vec![container("a", &[], &[])], vec![]);
        assert_eq!(pod_cgroup_name(&g), "/kubepods/pod1234-abcd");
        assert_eq!(pod_cgroup_name(&b), "/kubepods/burstable/pod1234-abcd");
        assert_eq!(pod_cgroup_name(&e), "/kubepods/besteffort/pod1234-abcd");
    }

    #[test]
    fn guaranteed_pod_cgroup_has_quota_and_memory() {
        let p = pod(
            vec![
                container("a", &[], &[("cpu", "500m"), ("memory", "100Mi")]),
                container("b", &[], &[("cpu", "250m"), ("memory", "50Mi")]),
            ],
            vec![],
        );
        assert_eq!(
            pod_cgroup_resources(&p),
            PodCgroupResources {
                cpu_shares: 768,
                cpu_quota: Some(75_000),
                cpu_period: Some(100_000),
                memory_limit: Some(150 * 1024 * 1024),
            }
        );
    }

    #[test]
    fn burstable_pod_cgroup_limits_only_when_every_container_declares_them() {
        let p = pod(
            vec![
                container("a", &[("cpu", "100m")], &[("cpu", "1"), ("memory", "64Mi")]),
                container("b", &[("cpu", "200m")], &[("cpu", "1")]),
            ],
            vec![],
        );
        assert_eq!(
            pod_cgroup_resources(&p),
            PodCgroupResources {
                cpu_shares: 307,
                cpu_quota: Some(200_000),
                cpu_period: Some(100_000),
                memory_limit: None,
            }
        );
    }

    #[test]
    fn besteffort_pod_cgroup_gets_minimum_shares() {
        let p = pod(vec![container("a", &[], &[])], vec![]);
        assert_eq!(
            pod_cgroup_resources(&p),
            PodCgroupResources {
                cpu_shares: 2,
                cpu_quota: None,
                cpu_period: None,
                memory_limit: None,
            }
        );
    }

    #[test]
    fn init_containers_set_a_floor_and_sidecars_add_up() {
        let p = pod(
            vec![container(
                "app",
                &[("cpu", "100m"), ("memory", "10Mi")],
                &[],
            )],
            vec![
                sidecar(container(
                    "proxy",
                    &[("cpu", "50m"), ("memory", "5Mi")],
                    &[],
                )),
                container("migrate", &[("cpu", "1"), ("memory", "1Mi")], &[]),
            ],
        );
        // Running: app + proxy = 150m / 15Mi; while migrate runs: proxy + migrate = 1050m / 6Mi.
        assert_eq!(
            pod_requests(&p),
            PodAmounts {
                milli_cpu: 1050,
                memory: 15 * 1024 * 1024,
            }
        );
    }

    #[test]
    fn overhead_is_added_to_requests() {
        let mut p = pod(vec![container("a", &[("cpu", "100m")], &[])], vec![]);
        p.spec.as_mut().unwrap().overhead = Some(BTreeMap::from([(
            "cpu".to_string(),
            Quantity("10m".into()),
        )]));
        assert_eq!(pod_requests(&p).milli_cpu, 110);
        let (limits, cpu_declared, _) = pod_limits(&p);
        assert_eq!(limits.milli_cpu, 0, "no container limits cpu");
        assert!(!cpu_declared);
    }
}
