//! NodeResourcesBalancedAllocation: nodes whose cpu and memory would be used in similar
//! proportions after placing the pod score higher. Pods that request neither are not scored
//! (upstream skips best-effort pods so they do not all pile onto one node).

use crate::framework::{MAX_NODE_SCORE, ScoreContext};
use crate::node_info::NodeInfo;

/// Scores `1 - std(fractions)` over the cpu and memory fractions (capped at 1) of each node.
pub fn score(ctx: &ScoreContext<'_>, nodes: &[&NodeInfo], out: &mut [i64]) -> bool {
    let pod = &ctx.pod.requests.requests;
    if pod.milli_cpu == 0 && pod.memory == 0 {
        return false;
    }
    for (node, score) in nodes.iter().zip(out.iter_mut()) {
        let mut fractions = [0f64; 2];
        let mut count = 0;
        for (requested, allocatable) in [
            (
                node.requested.milli_cpu + pod.milli_cpu,
                node.allocatable.milli_cpu,
            ),
            (node.requested.memory + pod.memory, node.allocatable.memory),
        ] {
            if allocatable == 0 {
                continue;
            }
            fractions[count] = (requested as f64 / allocatable as f64).min(1.0);
            count += 1;
        }
        let std = if count == 2 {
            ((fractions[0] - fractions[1]) / 2.0).abs()
        } else {
            0.0
        };
        *score = ((1.0 - std) * MAX_NODE_SCORE as f64) as i64;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::pod_info::testing::{node, pod};

    fn node_info(cpu: &str, memory: &str) -> NodeInfo {
        let mut n = NodeInfo::new("n".into());
        n.set_node(
            node("n")
                .allocatable(&[("cpu", cpu), ("memory", memory), ("pods", "10")])
                .build(),
        );
        n
    }

    #[test]
    fn balanced_nodes_score_higher() {
        let cache = Cache::default();
        let p = pod("p").requests(&[("cpu", "1"), ("memory", "1Gi")]).info();
        let ctx = ScoreContext {
            pod: &p,
            cache: &cache,
        };
        let balanced = node_info("4", "4Gi");
        let skewed = node_info("2", "8Gi");
        let mut out = vec![0; 2];
        assert!(score(&ctx, &[&balanced, &skewed], &mut out));
        // balanced: 0.25/0.25 -> 100; skewed: 0.5 vs 0.125 -> std 0.1875 -> 81.
        assert_eq!(out, vec![100, 81]);
        let best_effort = pod("q").info();
        let ctx = ScoreContext {
            pod: &best_effort,
            cache: &cache,
        };
        assert!(!score(&ctx, &[&balanced], &mut out[..1]));
    }
}
