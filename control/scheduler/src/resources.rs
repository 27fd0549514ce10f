//! Resource amounts as the scheduler counts them: a pod's effective requests (containers,
//! init and sidecar containers, overhead, in-place resizes) and a node's allocatable.

use baton_client::cached_pod::{CachedContainer, CachedContainerStatus, CachedPod};
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use baton_quantity::{parse_milli, parse_value};

/// The CPU request assumed for a container that sets none, when spreading load (scoring only).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// The memory request assumed for a container that sets none, when spreading load (scoring only).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Amounts of the resources the scheduler accounts for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Extended resources, hugepages and the like, sorted by name.
    pub scalar: Vec<(String, i64)>,
}

/// Whether a resource name is counted in [`Resources::scalar`].
pub fn is_scalar_resource(name: &str) -> bool {
    !name.starts_with("requests.")
        && (name.starts_with("hugepages-")
            || name.starts_with("attachable-volumes-")
            || name.contains('/'))
}

impl Resources {
    /// The resources of a resource list (`requests`, `allocatable`), ignoring malformed entries.
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let mut r = Resources::default();
        for (name, quantity) in list {
            r.set(name, &quantity.0);
        }
        r
    }

    fn set(&mut self, name: &str, text: &str) {
        match name {
            "cpu" => self.milli_cpu = parse_milli(text).unwrap_or(0),
            "memory" => self.memory = parse_value(text).unwrap_or(0),
            "ephemeral-storage" => self.ephemeral_storage = parse_value(text).unwrap_or(0),
            _ if is_scalar_resource(name) => {
                let value = parse_value(text).unwrap_or(0);
                self.set_scalar(name, value);
            }
            _ => {}
        }
    }

    /// The amount of extended resource `name` (0 when absent).
    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .map(|i| self.scalar[i].1)
            .unwrap_or(0)
    }

    fn set_scalar(&mut self, name: &str, value: i64) {
        match self.scalar.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.scalar[i].1 = value,
            Err(i) => self.scalar.insert(i, (name.to_string(), value)),
        }
    }

    /// Adds `other` to these amounts.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        for (name, value) in &other.scalar {
            let sum = self.scalar(name).saturating_add(*value);
            self.set_scalar(name, sum);
        }
    }

    /// Subtracts `other` from these amounts (amounts of pods leaving a node).
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        for (name, value) in &other.scalar {
            let rest = self.scalar(name).saturating_sub(*value);
            self.set_scalar(name, rest);
        }
    }

    /// Raises each amount to at least `other`'s.
    pub fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, value) in &other.scalar {
            if *value > self.scalar(name) {
                self.set_scalar(name, *value);
            }
        }
    }

    /// Whether nothing is requested.
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.iter().all(|(_, v)| *v == 0)
    }
}

/// A pod's effective requests, and the same with defaults for containers that set no CPU or
/// memory request (the "non-zero" requests used to spread pods that request nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests {
    pub requests: Resources,
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
}

/// The requests of `container`, taking an in-place resize into account the way upstream does:
/// the larger of what the spec asks for and what the kubelet reports allocated or applied.
fn container_requests(
    container: &CachedContainer,
    status: Option<&CachedContainerStatus>,
    resize_infeasible: bool,
) -> (Resources, bool, bool) {
    let spec = container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref());
    let mut has_cpu = spec.is_some_and(|s| s.contains_key("cpu"));
    let mut has_memory = spec.is_some_and(|s| s.contains_key("memory"));
    let mut requests = match spec {
        Some(list) if !resize_infeasible || status.is_none() => Resources::from_list(list),
        _ => Resources::default(),
    };
    if let Some(status) = status
        && let Some(actual) = status.resources.as_ref()
    {
        if resize_infeasible {
            requests = Resources::default();
            has_cpu = false;
            has_memory = false;
        }
        for list in [
            actual.requests.as_ref(),
            status.allocated_resources.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            has_cpu |= list.contains_key("cpu");
            has_memory |= list.contains_key("memory");
            requests.max_with(&Resources::from_list(list));
        }
    }
    (requests, has_cpu, has_memory)
}

/// Computes a pod's requests: the sum of its containers, at least the largest need while any
/// init container runs (sidecars, init containers with restartPolicy Always, keep running and
/// add to both), plus the pod overhead.
pub fn pod_requests(pod: &CachedPod) -> PodRequests {
    let Some(spec) = pod.spec.as_ref() else {
        return PodRequests::default();
    };
    let status = pod.status.as_ref();
    let resize_infeasible = status.and_then(|s| s.resize.as_deref()) == Some("Infeasible");
    fn find<'a>(
        statuses: Option<&'a Vec<CachedContainerStatus>>,
        name: &str,
    ) -> Option<&'a CachedContainerStatus> {
        statuses.and_then(|list| list.iter().find(|s| s.name == name))
    }
    let container_statuses = status.and_then(|s| s.container_statuses.as_ref());
    let init_statuses = status.and_then(|s| s.init_container_statuses.as_ref());

    let mut total = Resources::default();
    let mut non_zero = Resources::default();
    let defaulted = |mut r: Resources, has_cpu: bool, has_memory: bool| {
        if !has_cpu {
            r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if !has_memory {
            r.memory = DEFAULT_MEMORY_REQUEST;
        }
        r
    };
    for container in &spec.containers {
        let (r, has_cpu, has_memory) = container_requests(
            container,
            find(container_statuses, &container.name),
            resize_infeasible,
        );
        non_zero.add(&defaulted(r.clone(), has_cpu, has_memory));
        total.add(&r);
    }

    let mut sidecars = Resources::default();
    let mut sidecars_non_zero = Resources::default();
    let mut init_max = Resources::default();
    let mut init_max_non_zero = Resources::default();
    for container in spec.init_containers.iter().flatten() {
        let (r, has_cpu, has_memory) = container_requests(
            container,
            find(init_statuses, &container.name),
            resize_infeasible,
        );
        let nz = defaulted(r.clone(), has_cpu, has_memory);
        if container.restart_policy.as_deref() == Some("Always") {
            total.add(&r);
            non_zero.add(&nz);
            sidecars.add(&r);
            sidecars_non_zero.add(&nz);
            init_max.max_with(&sidecars);
            init_max_non_zero.max_with(&sidecars_non_zero);
        } else {
            let mut running = r;
            running.add(&sidecars);
            init_max.max_with(&running);
            let mut running_nz = nz;
            running_nz.add(&sidecars_non_zero);
            init_max_non_zero.max_with(&running_nz);
        }
    }
    total.max_with(&init_max);
    non_zero.max_with(&init_max_non_zero);

    if let Some(overhead) = spec.overhead.as_ref() {
        let overhead = Resources::from_list(overhead);
        total.add(&overhead);
        non_zero.add(&overhead);
    }
    PodRequests {
        requests: total,
        non_zero_milli_cpu: non_zero.milli_cpu,
        non_zero_memory: non_zero.memory,
    }
}

/// A node's allocatable resources and how many pods it takes (missing entries count as 0).
pub fn node_allocatable(node: &Node) -> (Resources, i64) {
    let Some(list) = node.status.as_ref().and_then(|s| s.allocatable.as_ref()) else {
        return (Resources::default(), 0);
    };
    let pods = list
        .get("pods")
        .and_then(|q| parse_value(&q.0))
        .unwrap_or(0);
    (Resources::from_list(list), pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_client::cached_pod::{
        CachedContainer, CachedContainerStatus, CachedPod, CachedPodSpec, CachedPodStatus,
    };
    use k8s_openapi::api::core::v1::ResourceRequirements;

    pub(crate) fn list(items: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
    }

    fn container(name: &str, requests: &[(&str, &str)], restart: Option<&str>) -> CachedContainer {
        CachedContainer {
            name: name.into(),
            resources: Some(ResourceRequirements {
                requests: (!requests.is_empty()).then(|| list(requests)),
                ..Default::default()
            }),
            restart_policy: restart.map(String::from),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<CachedContainer>, init: Vec<CachedContainer>) -> CachedPod {
        CachedPod {
            spec: Some(CachedPodSpec {
                containers,
                init_containers: Some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sum_of_containers_and_max_of_init_containers() {
        let p = pod(
            vec![
                container("a", &[("cpu", "2"), ("memory", "1G")], None),
                container("b", &[("cpu", "1"), ("memory", "1G")], None),
            ],
            vec![
                container("i1", &[("cpu", "2"), ("memory", "1G")], None),
                container("i2", &[("cpu", "2"), ("memory", "3G")], None),
            ],
        );
        let r = pod_requests(&p);
        assert_eq!(r.requests.milli_cpu, 3000);
        assert_eq!(r.requests.memory, 3_000_000_000);
    }

    #[test]
    fn sidecars_add_to_the_pod_and_to_later_init_containers() {
        let p = pod(
            vec![container("a", &[("cpu", "1")], None)],
            vec![
                container("sidecar", &[("cpu", "500m")], Some("Always")),
                container("init", &[("cpu", "2")], None),
            ],
        );
        let r = pod_requests(&p);
        // Init phase: 2 + 0.5 sidecar = 2.5; running phase: 1 + 0.5 = 1.5.
        assert_eq!(r.requests.milli_cpu, 2500);
    }

    #[test]
    fn overhead_is_added() {
        let mut p = pod(vec![container("a", &[("cpu", "1")], None)], vec![]);
        p.spec.as_mut().unwrap().overhead = Some(list(&[("cpu", "250m"), ("memory", "120Mi")]));
        let r = pod_requests(&p);
        assert_eq!(r.requests.milli_cpu, 1250);
        assert_eq!(r.requests.memory, 120 << 20);
    }

    #[test]
    fn non_zero_defaults_only_for_missing_requests() {
        let p = pod(
            vec![
                container("a", &[], None),
                container("b", &[("cpu", "0"), ("memory", "1Mi")], None),
            ],
            vec![],
        );
        let r = pod_requests(&p);
        assert_eq!(r.requests.milli_cpu, 0);
        assert_eq!(r.requests.memory, 1 << 20);
        assert_eq!(r.non_zero_milli_cpu, DEFAULT_MILLI_CPU_REQUEST);
        assert_eq!(r.non_zero_memory, DEFAULT_MEMORY_REQUEST + (1 << 20));
    }

    #[test]
    fn in_place_resize_counts_the_larger_amount() {
        let mut p = pod(vec![container("a", &[("cpu", "1")], None)], vec![]);
        p.status = Some(CachedPodStatus {
            container_statuses: Some(vec![CachedContainerStatus {
                name: "a".into(),
                allocated_resources: Some(list(&[("cpu", "2")])),
                resources: Some(Box::new(ResourceRequirements {
                    requests: Some(list(&[("cpu", "2")])),
                    ..Default::default()
                })),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(pod_requests(&p).requests.milli_cpu, 2000);
    }

    #[test]
    fn extended_resources() {
        let p = pod(
            vec![container(
                "a",
                &[("example.com/gpu", "2"), ("hugepages-2Mi", "4Mi")],
                None,
            )],
            vec![],
        );
        let r = pod_requests(&p).requests;
        assert_eq!(r.scalar("example.com/gpu"), 2);
        assert_eq!(r.scalar("hugepages-2Mi"), 4 << 20);
        assert_eq!(r.scalar("other.io/x"), 0);
    }
}
