//! One scheduling decision, as upstream's schedulePod: PreFilter, then filters over the nodes
//! starting where the last search stopped until enough feasible nodes are found (an adaptive
//! percentage of large clusters), then scores, and the highest total wins (ties at random).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::cache::Cache;
use crate::fit_error::Diagnosis;
use crate::framework::{Code, CycleState, ScoreContext, pre_filter, run_scores};
use crate::node_info::NodeInfo;
use crate::plugins::default_preemption::{Nominator, filter_with_nominated, nominated_node_name};
use crate::pod_info::PodInfo;

/// Below this many nodes every node is checked.
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The adaptive percentage never goes below this.
const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// How many feasible nodes to look for among `all` (percentageOfNodesToScore unset: 50% minus
/// 1% per 125 nodes, at least 5%, at least 100 nodes).
pub fn num_feasible_nodes_to_find(all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let percentage = 50usize
        .saturating_sub(all / 125)
        .max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND);
    (all * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// A small xorshift generator for tie-breaks (no cryptographic use).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the process's random hasher keys.
    pub fn new() -> Self {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(0x9e37_79b9_7f4a_7c15);
        Rng(hasher.finish() | 1)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x % n as u64) as usize
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

/// The result of scheduling one pod.
#[derive(Debug)]
pub enum Outcome {
    /// The pod goes to the node in `slot`.
    Fit {
        slot: usize,
        evaluated: usize,
        feasible: usize,
    },
    /// No node fits; `total_nodes` is how many nodes there are.
    Unfit {
        diagnosis: Diagnosis,
        total_nodes: usize,
    },
    /// The cluster has no nodes.
    NoNodes,
}

/// Scheduling state carried across cycles: where the next search starts, the tie-break
/// generator and score buffers.
#[derive(Debug, Default)]
pub struct Algorithm {
    next_start: usize,
    pub rng: Rng,
    totals: Vec<i64>,
    scratch: Vec<i64>,
}

impl Algorithm {
    /// Chooses a node for `pod` (call `cache.prepare_order()` first). The PreFilter state is
    /// handed back: for the post-filter when nothing fits, for the claims to annotate with the
    /// node when one does.
    pub fn schedule<'a>(
        &mut self,
        pod: &'a PodInfo,
        cache: &Cache,
        nominator: &Nominator,
    ) -> (Outcome, Option<CycleState<'a>>) {
        let all = cache.order();
        if all.is_empty() {
            return (Outcome::NoNodes, None);
        }
        let total = all.len();
        let (state, names) = match pre_filter(pod, cache) {
            Ok(result) => result,
            Err(rejection) => {
                let mut diagnosis = Diagnosis {
                    pre_filter_message: Some(rejection.message.clone()),
                    absent: Some((Code::UnschedulableAndUnresolvable, rejection.message.into())),
                    ..Default::default()
                };
                diagnosis.plugins.insert(rejection.plugin);
                return (
                    Outcome::Unfit {
                        diagnosis,
                        total_nodes: total,
                    },
                    None,
                );
            }
        };

        // A node nominated by an earlier preemption is tried first, alone.
        if let Some(name) = nominated_node_name(pod).or(nominator.node_of(&pod.key))
            && let Some(slot) = cache.slot_of(name)
            && cache.node(slot).node.is_some()
            && filter_with_nominated(&state, cache.node(slot), nominator).is_ok()
        {
            return (
                Outcome::Fit {
                    slot,
                    evaluated: 1,
                    feasible: 1,
                },
                Some(state),
            );
        }

        let mut diagnosis = Diagnosis::default();
        let restricted: Option<Vec<usize>> = names.map(|names| {
            diagnosis.absent = Some((
                Code::UnschedulableAndUnresolvable,
                "node(s) didn't satisfy plugin(s) [NodeAffinity]".into(),
            ));
            names
                .iter()
                .filter_map(|n| cache.slot_of(n))
                .filter(|s| cache.node(*s).node.is_some())
                .collect()
        });
        let nodes: &[usize] = restricted.as_deref().unwrap_or(all);
        let to_find = num_feasible_nodes_to_find(nodes.len());
        let mut feasible: Vec<usize> = Vec::with_capacity(to_find);
        let mut processed = 0;
        for i in 0..nodes.len() {
            let slot = nodes[(self.next_start + i) % nodes.len()];
            processed += 1;
            match filter_with_nominated(&state, cache.node(slot), nominator) {
                Ok(()) => {
                    feasible.push(slot);
                    if feasible.len() >= to_find {
                        break;
                    }
                }
                Err(rejection) => {
                    diagnosis.plugins.insert(rejection.plugin);
                    diagnosis.node_statuses.push((slot, rejection));
                }
            }
        }
        if !nodes.is_empty() {
            self.next_start = (self.next_start + processed) % nodes.len();
        }
        if feasible.is_empty() {
            return (
                Outcome::Unfit {
                    diagnosis,
                    total_nodes: total,
                },
                Some(state),
            );
        }
        let evaluated = processed + total.saturating_sub(nodes.len());
        if feasible.len() == 1 {
            return (
                Outcome::Fit {
                    slot: feasible[0],
                    evaluated,
                    feasible: 1,
                },
                Some(state),
            );
        }
        let refs: Vec<&NodeInfo> = feasible.iter().map(|s| cache.node(*s)).collect();
        let ctx = ScoreContext { pod, cache };
        run_scores(&ctx, &refs, &mut self.totals, &mut self.scratch);
        let totals = std::mem::take(&mut self.totals);
        let best = self.select_host(&totals);
        self.totals = totals;
        (
            Outcome::Fit {
                slot: feasible[best],
                evaluated,
                feasible: feasible.len(),
            },
            Some(state),
        )
    }

    /// The index of the highest score, a uniformly random one among equals.
    pub fn select_host(&mut self, scores: &[i64]) -> usize {
        let mut best = 0;
        let mut ties = 0;
        for (i, score) in scores.iter().enumerate() {
            if i == 0 || *score > scores[best] {
                best = i;
                ties = 1;
            } else if *score == scores[best] {
                ties += 1;
                if self.rng.below(ties) == 0 {
                    best = i;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit_error::diagnosis_message;
    use crate::pod_info::testing::{map, node, pod};

    #[test]
    fn adaptive_node_count() {
        assert_eq!(num_feasible_nodes_to_find(50), 50);
        assert_eq!(num_feasible_nodes_to_find(99), 99);
        assert_eq!(num_feasible_nodes_to_find(100), 100);
        assert_eq!(num_feasible_nodes_to_find(200), 100);
        assert_eq!(num_feasible_nodes_to_find(1000), 420);
        assert_eq!(num_feasible_nodes_to_find(5000), 500);
        assert_eq!(num_feasible_nodes_to_find(6000), 300);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let mut a = Algorithm::default();
        let mut seen = [0; 3];
        for _ in 0..300 {
            let i = a.select_host(&[9, 5, 9]);
            seen[i] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 50 && seen[2] > 50, "{seen:?}");
        assert_eq!(a.select_host(&[1, 7, 3]), 1);
    }

    fn cluster(n: usize) -> Cache {
        let mut cache = Cache::default();
        for i in 0..n {
            cache.upsert_node(node(&format!("n{i}")).build());
        }
        cache.prepare_order();
        cache
    }

    #[test]
    fn search_resumes_where_it_stopped() {
        let cache = cluster(1000);
        let mut a = Algorithm::default();
        let p = pod("p").info();
        let nominator = Nominator::default();
        let (outcome, _) = a.schedule(&p, &cache, &nominator);
        assert!(matches!(
            outcome,
            Outcome::Fit {
                evaluated: 420,
                feasible: 420,
                ..
            }
        ));
        assert_eq!(a.next_start, 420);
        a.schedule(&p, &cache, &nominator);
        assert_eq!(a.next_start, 840);
        a.schedule(&p, &cache, &nominator);
        assert_eq!(a.next_start, 260);
    }

    #[test]
    fn picks_the_best_node_and_explains_failures() {
        let mut cache = Cache::default();
        cache.upsert_node(
            node("small")
                .allocatable(&[("cpu", "1"), ("memory", "1Gi"), ("pods", "10")])
                .build(),
        );
        cache.upsert_node(
            node("big")
                .allocatable(&[("cpu", "8"), ("memory", "16Gi"), ("pods", "10")])
                .build(),
        );
        cache.upsert_node(node("gpu").label("gpu", "true").build());
        cache.prepare_order();
        let mut a = Algorithm::default();
        let nominator = Nominator::default();
        let p = pod("p")
            .requests(&[("cpu", "500m"), ("memory", "512Mi")])
            .info();
        let (outcome, _) = a.schedule(&p, &cache, &nominator);
        let Outcome::Fit { slot, .. } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(&*cache.node(slot).name, "big", "least allocated");

        let p = pod("p")
            .requests(&[("memory", "2Gi")])
            .with_spec(|s| s.node_selector = Some(map(&[("disk", "ssd")])))
            .info();
        let (outcome, _) = a.schedule(&p, &cache, &nominator);
        let Outcome::Unfit {
            diagnosis,
            total_nodes,
        } = outcome
        else {
            panic!()
        };
        assert_eq!(
            diagnosis_message(total_nodes, &diagnosis, None),
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
        );
        let p = pod("p").requests(&[("memory", "20Gi")]).info();
        let (outcome, _) = a.schedule(&p, &cache, &nominator);
        let Outcome::Unfit {
            diagnosis,
            total_nodes,
        } = outcome
        else {
            panic!()
        };
        assert_eq!(
            diagnosis_message(total_nodes, &diagnosis, None),
            "0/3 nodes are available: 3 Insufficient memory."
        );
        let empty = Cache::default();
        assert!(matches!(
            a.schedule(&p, &empty, &nominator).0,
            Outcome::NoNodes
        ));
    }

    #[test]
    fn daemon_pods_only_try_their_node() {
        use k8s_openapi::api::core::v1::{
            Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
        };
        let mut cache = Cache::default();
        for n in ["n1", "n2", "n3"] {
            cache.upsert_node(node(n).allocatable(&[("cpu", "1"), ("pods", "10")]).build());
        }
        cache.prepare_order();
        let daemon = |cpu: &str| {
            pod("ds")
                .requests(&[("cpu", cpu)])
                .with_spec(|s| {
                    s.affinity = Some(Affinity {
                        node_affinity: Some(NodeAffinity {
                            required_during_scheduling_ignored_during_execution: Some(
                                NodeSelector {
                                    node_selector_terms: vec![NodeSelectorTerm {
                                        match_fields: Some(vec![NodeSelectorRequirement {
                                            key: "metadata.name".into(),
                                            operator: "In".into(),
                                            values: Some(vec!["n2".into()]),
                                        }]),
                                        ..Default::default()
                                    }],
                                },
                            ),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                })
                .info()
        };
        let mut a = Algorithm::default();
        let nominator = Nominator::default();
        let (outcome, _) = a.schedule(&daemon("100m"), &cache, &nominator);
        let Outcome::Fit { slot, .. } = outcome else {
            panic!()
        };
        assert_eq!(&*cache.node(slot).name, "n2");
        let (outcome, _) = a.schedule(&daemon("2"), &cache, &nominator);
        let Outcome::Unfit {
            diagnosis,
            total_nodes,
        } = outcome
        else {
            panic!()
        };
        assert_eq!(
            diagnosis_message(total_nodes, &diagnosis, None),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't satisfy plugin(s) [NodeAffinity]."
        );
    }
}
