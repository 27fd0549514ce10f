//! NodeResourcesFit: the pod's requests must fit in what the node has left (filter: cpu,
//! memory, ephemeral-storage, extended resources, pod count); emptier nodes score higher
//! (the LeastAllocated strategy over cpu and memory, weight 1 each).

use std::borrow::Cow;

use crate::framework::{Code, MAX_NODE_SCORE, Plugin, Rejection, ScoreContext};
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;

/// One resource the node is short of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insufficient {
    pub reason: Cow<'static, str>,
    /// The pod alone asks for more than the node's allocatable (preemption cannot help).
    pub unresolvable: bool,
}

/// The resources `pod` does not fit in on `node`, in upstream's order.
pub fn insufficient_resources(pod: &PodInfo, node: &NodeInfo) -> Vec<Insufficient> {
    let mut out = Vec::new();
    if node.pods.len() as i64 + 1 > node.allowed_pods {
        out.push(Insufficient {
            reason: Cow::Borrowed("Too many pods"),
            unresolvable: false,
        });
    }
    let want = &pod.requests.requests;
    if want.is_zero() {
        return out;
    }
    let have = &node.allocatable;
    let used = &node.requested;
    let mut check = |requested: i64, allocatable: i64, in_use: i64, reason: &'static str| {
        if requested > 0 && requested > allocatable.saturating_sub(in_use) {
            out.push(Insufficient {
                reason: Cow::Borrowed(reason),
                unresolvable: requested > allocatable,
            });
        }
    };
    check(
        want.milli_cpu,
        have.milli_cpu,
        used.milli_cpu,
        "Insufficient cpu",
    );
    check(want.memory, have.memory, used.memory, "Insufficient memory");
    check(
        want.ephemeral_storage,
        have.ephemeral_storage,
        used.ephemeral_storage,
        "Insufficient ephemeral-storage",
    );
    for (name, requested) in &want.scalar {
        let allocatable = have.scalar(name);
        if *requested > 0 && *requested > allocatable.saturating_sub(used.scalar(name)) {
            out.push(Insufficient {
                reason: Cow::Owned(format!("Insufficient {name}")),
                unresolvable: *requested > allocatable,
            });
        }
    }
    out
}

/// Rejects nodes without room for the pod, listing every resource that is short.
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let short = insufficient_resources(pod, node);
    if short.is_empty() {
        return Ok(());
    }
    let code = if short.iter().any(|s| s.unresolvable) {
        Code::UnschedulableAndUnresolvable
    } else {
        Code::Unschedulable
    };
    Err(Rejection {
        plugin: Plugin::NodeResourcesFit,
        code,
        reasons: short.into_iter().map(|s| s.reason).collect(),
    })
}

fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

/// LeastAllocated: the average share of cpu and memory left free after placing the pod
/// (requests with the defaults for containers that set none).
pub fn score(ctx: &ScoreContext<'_>, nodes: &[&NodeInfo], out: &mut [i64]) -> bool {
    let pod = &ctx.pod.requests;
    for (node, score) in nodes.iter().zip(out.iter_mut()) {
        let mut sum = 0;
        let mut weights = 0;
        for (requested, allocatable) in [
            (
                node.non_zero_milli_cpu + pod.non_zero_milli_cpu,
                node.allocatable.milli_cpu,
            ),
            (
                node.non_zero_memory + pod.non_zero_memory,
                node.allocatable.memory,
            ),
        ] {
            if allocatable == 0 {
                continue;
            }
            sum += least_requested(requested, allocatable);
            weights += 1;
        }
        *score = if weights == 0 { 0 } else { sum / weights };
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::pod_info::testing::{node, pod};

    fn node_info(allocatable: &[(&str, &str)]) -> NodeInfo {
        let mut n = NodeInfo::new("n".into());
        n.set_node(node("n").allocatable(allocatable).build());
        n
    }

    #[test]
    fn reasons_for_each_short_resource() {
        let mut n = node_info(&[
            ("cpu", "2"),
            ("memory", "2Gi"),
            ("pods", "2"),
            ("example.com/gpu", "1"),
        ]);
        n.add_pod(
            pod("a")
                .requests(&[("cpu", "1500m"), ("memory", "1Gi")])
                .info(),
        );
        assert!(filter(&pod("p").requests(&[("cpu", "500m")]).info(), &n).is_ok());
        let err = filter(
            &pod("p")
                .requests(&[("cpu", "1"), ("memory", "1536Mi")])
                .info(),
            &n,
        )
        .unwrap_err();
        assert_eq!(err.reasons, vec!["Insufficient cpu", "Insufficient memory"]);
        assert_eq!(err.code, Code::Unschedulable);
        let err = filter(&pod("p").requests(&[("cpu", "3")]).info(), &n).unwrap_err();
        assert_eq!(
            err.code,
            Code::UnschedulableAndUnresolvable,
            "more than the whole node"
        );
        let err = filter(&pod("p").requests(&[("example.com/gpu", "2")]).info(), &n).unwrap_err();
        assert_eq!(err.reasons, vec!["Insufficient example.com/gpu"]);
        let err = filter(
            &pod("p").requests(&[("ephemeral-storage", "1Gi")]).info(),
            &n,
        )
        .unwrap_err();
        assert_eq!(err.reasons, vec!["Insufficient ephemeral-storage"]);
        n.add_pod(pod("b").info());
        let err = filter(&pod("p").info(), &n).unwrap_err();
        assert_eq!(err.reasons, vec!["Too many pods"]);
        assert_eq!(err.code, Code::Unschedulable);
    }

    #[test]
    fn missing_allocatable_counts_as_zero() {
        let n = node_info(&[("cpu", "2")]);
        let err = filter(&pod("p").info(), &n).unwrap_err();
        assert_eq!(err.reasons, vec!["Too many pods"]);
    }

    #[test]
    fn least_allocated() {
        let cache = Cache::default();
        let mut a = node_info(&[("cpu", "4"), ("memory", "10Gi"), ("pods", "10")]);
        a.add_pod(pod("x").requests(&[("cpu", "3"), ("memory", "5Gi")]).info());
        let b = node_info(&[("cpu", "4"), ("memory", "10Gi"), ("pods", "10")]);
        let p = pod("p").requests(&[("cpu", "1"), ("memory", "0")]).info();
        let ctx = ScoreContext {
            pod: &p,
            cache: &cache,
        };
        let mut out = vec![0; 2];
        score(&ctx, &[&a, &b], &mut out);
        // a: cpu (4-4)/4 = 0, memory (10-5)/10 = 50 -> 25; b: cpu 75, memory 100 -> 87.
        assert_eq!(out, vec![25, 87]);
    }
}
