//! PodTopologySpread: DoNotSchedule constraints bound the skew of matching pods across
//! topology domains (filter); ScheduleAnyway constraints, or upstream's system defaults for
//! pods that have none (hostname maxSkew 3, zone maxSkew 5, selecting the pods of the same
//! Services and ReplicaSet/StatefulSet/ReplicationController), favour nodes in domains with
//! fewer matching pods (score).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;

use crate::cache::Cache;
use crate::framework::{Code, MAX_NODE_SCORE, Plugin, Rejection, ScoreContext};
use crate::node_info::NodeInfo;
use crate::plugins::node_affinity::{RequiredNodeAffinity, pod_matches_node};
use crate::plugins::taint_toleration::first_untolerated;
use crate::pod_info::PodInfo;
use crate::selector::{Requirement, Selector};

/// The reason a node that would break a constraint's skew gives.
pub const REASON: &str = "node(s) didn't match pod topology spread constraints";
/// The reason a node without a constraint's topology label gives.
pub const REASON_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = crate::cache::ZONE_LABEL;

/// Which pods a constraint counts.
#[derive(Debug, Clone)]
pub enum SpreadSelector {
    /// The constraint's label selector (with matchLabelKeys merged in).
    Labels(Selector),
    /// Upstream's default selector: the pods the same Services select and, when the pod has a
    /// replicating controller, the pods of that controller (by owner UID).
    Default {
        services: Selector,
        owner: Option<String>,
    },
}

impl SpreadSelector {
    /// Whether `pod` is counted (namespace and termination aside).
    pub fn matches(&self, pod: &PodInfo) -> bool {
        match self {
            SpreadSelector::Labels(selector) => selector.matches(pod.labels()),
            SpreadSelector::Default { services, owner } => {
                services.matches(pod.labels())
                    && owner
                        .as_ref()
                        .is_none_or(|o| pod.spreading_owner.as_ref() == Some(o))
            }
        }
    }

    /// How many non-terminating pods of `namespace` on `node` are counted.
    pub fn count_on(&self, node: &NodeInfo, namespace: &str) -> i64 {
        if let SpreadSelector::Default {
            services,
            owner: Some(owner),
        } = self
            && services.is_everything()
        {
            // The owner's pods share its namespace; terminating ones are not in the index.
            return i64::from(node.owner_counts.get(owner).copied().unwrap_or(0));
        }
        node.pods
            .iter()
            .filter(|p| !p.terminating && p.namespace == namespace && self.matches(p))
            .count() as i64
    }
}

/// A topology spread constraint, compiled.
#[derive(Debug, Clone)]
pub struct Constraint {
    pub max_skew: i64,
    pub topology_key: String,
    pub selector: SpreadSelector,
    pub min_domains: i64,
    pub honor_node_affinity: bool,
    pub honor_node_taints: bool,
}

impl Constraint {
    fn new(c: &TopologySpreadConstraint, pod: &PodInfo) -> Self {
        let mut selector = Selector::from_label_selector(c.label_selector.as_ref());
        let keys: Vec<Requirement> = c
            .match_label_keys
            .iter()
            .flatten()
            .filter_map(|k| {
                pod.labels()
                    .get(k)
                    .map(|v| Requirement::In(k.clone(), vec![v.clone()]))
            })
            .collect();
        if !keys.is_empty() {
            if selector.is_nothing() {
                selector = Selector::All(keys);
            } else {
                selector.and(keys);
            }
        }
        Constraint {
            max_skew: i64::from(c.max_skew),
            topology_key: c.topology_key.clone(),
            selector: SpreadSelector::Labels(selector),
            min_domains: i64::from(c.min_domains.unwrap_or(1)),
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_node_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        }
    }

    /// Whether `node` counts for this constraint (nodeAffinityPolicy and nodeTaintsPolicy).
    fn includes(
        &self,
        pod: &PodInfo,
        required: Option<&RequiredNodeAffinity>,
        node: &NodeInfo,
    ) -> bool {
        (!self.honor_node_affinity || pod_matches_node(required, node))
            && (!self.honor_node_taints
                || first_untolerated(node.taints(), pod.tolerations()).is_none())
    }
}

fn pod_constraints(pod: &PodInfo) -> &[TopologySpreadConstraint] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default()
}

/// The pod's constraints with `when_unsatisfiable` (DoNotSchedule or ScheduleAnyway).
pub fn constraints(pod: &PodInfo, when_unsatisfiable: &str) -> Vec<Constraint> {
    pod_constraints(pod)
        .iter()
        .filter(|c| c.when_unsatisfiable == when_unsatisfiable)
        .map(|c| Constraint::new(c, pod))
        .collect()
}

/// Upstream's system default constraints for a pod without constraints of its own (empty
/// when nothing selects the pod: no Service and no replicating controller).
pub fn default_constraints(pod: &PodInfo, cache: &Cache) -> Vec<Constraint> {
    let services = cache.service_selector_for(pod);
    if services.is_empty() && pod.spreading_owner.is_none() {
        return Vec::new();
    }
    let selector = SpreadSelector::Default {
        services: Selector::from_set(&services),
        owner: pod.spreading_owner.clone(),
    };
    [(HOSTNAME, 3), (ZONE, 5)]
        .into_iter()
        .map(|(key, skew)| Constraint {
            max_skew: skew,
            topology_key: key.to_string(),
            selector: selector.clone(),
            min_domains: 1,
            honor_node_affinity: true,
            honor_node_taints: false,
        })
        .collect()
}

fn has_all_keys(node: &NodeInfo, constraints: &[Constraint]) -> bool {
    let labels = node.labels();
    constraints
        .iter()
        .all(|c| labels.contains_key(&c.topology_key))
}

/// What the filter reads: per constraint, the matching pods per domain and the minimum.
#[derive(Debug, Clone)]
pub struct FilterState {
    constraints: Vec<Constraint>,
    counts: Vec<HashMap<String, i64>>,
    minimums: Vec<i64>,
    required: Option<RequiredNodeAffinity>,
}

impl FilterState {
    fn update_minimums(&mut self) {
        self.minimums = self
            .counts
            .iter()
            .map(|c| c.values().copied().min().unwrap_or(i64::from(i32::MAX)))
            .collect();
    }

    /// Counts (`delta` 1) or stops counting (-1) `victim` on `node` (a preemption what-if).
    pub fn update_pod(&mut self, pod: &PodInfo, victim: &PodInfo, node: &NodeInfo, delta: i64) {
        if victim.terminating
            || victim.namespace != pod.namespace
            || !has_all_keys(node, &self.constraints)
        {
            return;
        }
        for (i, c) in self.constraints.iter().enumerate() {
            if !c.includes(pod, self.required.as_ref(), node) || !c.selector.matches(victim) {
                continue;
            }
            if let Some(value) = node.labels().get(&c.topology_key)
                && let Some(count) = self.counts[i].get_mut(value)
            {
                *count += delta;
            }
        }
        self.update_minimums();
    }
}

/// The PreFilter: counts matching pods per domain over all nodes; `None` when the pod has no
/// DoNotSchedule constraints.
pub fn pre_filter(pod: &PodInfo, cache: &Cache) -> Option<FilterState> {
    let constraints = constraints(pod, "DoNotSchedule");
    if constraints.is_empty() {
        return None;
    }
    let required = RequiredNodeAffinity::of(&pod.pod);
    let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); constraints.len()];
    for node in cache.nodes() {
        if !has_all_keys(node, &constraints) {
            continue;
        }
        let labels = node.labels();
        for (i, c) in constraints.iter().enumerate() {
            if !c.includes(pod, required.as_ref(), node) {
                continue;
            }
            let value = &labels[&c.topology_key];
            let count = c.selector.count_on(node, &pod.namespace);
            *counts[i].entry(value.clone()).or_default() += count;
        }
    }
    let mut state = FilterState {
        constraints,
        counts,
        minimums: Vec::new(),
        required,
    };
    state.update_minimums();
    Some(state)
}

/// Rejects nodes where placing the pod would exceed a constraint's maxSkew.
pub fn filter(state: &FilterState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let labels = node.labels();
    for (i, c) in state.constraints.iter().enumerate() {
        let Some(value) = labels.get(&c.topology_key) else {
            return Err(Rejection::new(
                Plugin::PodTopologySpread,
                Code::UnschedulableAndUnresolvable,
                REASON_MISSING_LABEL,
            ));
        };
        let counts = &state.counts[i];
        let minimum = if (counts.len() as i64) < c.min_domains {
            0
        } else {
            state.minimums[i]
        };
        let self_match = i64::from(c.selector.matches(pod));
        let matching = counts.get(value).copied().unwrap_or(0);
        if matching + self_match - minimum > c.max_skew {
            return Err(Rejection::new(
                Plugin::PodTopologySpread,
                Code::Unschedulable,
                REASON,
            ));
        }
    }
    Ok(())
}

/// Scores nodes by the matching pods in their domains (fewer is better), normalized so that
/// the least crowded node scores 100.
pub fn score(ctx: &ScoreContext<'_>, nodes: &[&NodeInfo], out: &mut [i64]) -> bool {
    let pod = ctx.pod;
    let own = !pod_constraints(pod).is_empty();
    let constraints = if own {
        constraints(pod, "ScheduleAnyway")
    } else {
        default_constraints(pod, ctx.cache)
    };
    if constraints.is_empty() {
        return false;
    }
    // Custom constraints need every key on a node; the defaults let nodes without a zone
    // still be spread by hostname.
    let require_all = own;
    let ignored: Vec<bool> = nodes
        .iter()
        .map(|n| require_all && !has_all_keys(n, &constraints))
        .collect();
    let scored = ignored.iter().filter(|i| !**i).count() as i64;

    // Domains of the candidate nodes per (non-hostname) constraint, with their pod counts.
    let mut counts: Vec<HashMap<&str, i64>> = vec![HashMap::new(); constraints.len()];
    for (node, ignored) in nodes.iter().zip(&ignored) {
        if *ignored {
            continue;
        }
        let labels = node.labels();
        for (i, c) in constraints.iter().enumerate() {
            if c.topology_key != HOSTNAME {
                let value = labels
                    .get(&c.topology_key)
                    .map(String::as_str)
                    .unwrap_or("");
                counts[i].entry(value).or_insert(0);
            }
        }
    }
    let weights: Vec<f64> = constraints
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let size = if c.topology_key == HOSTNAME {
                scored
            } else {
                counts[i].len() as i64
            };
            ((size + 2) as f64).ln()
        })
        .collect();

    // Domain counts: from the cache's per-owner zone totals for the default zone constraint of
    // a pod without node affinity (every node counts), else by walking all nodes.
    let required = RequiredNodeAffinity::of(&pod.pod);
    let mut walk = vec![false; constraints.len()];
    for (i, c) in constraints.iter().enumerate() {
        if c.topology_key == HOSTNAME || counts[i].keys().all(|v| v.is_empty()) {
            continue;
        }
        match &c.selector {
            SpreadSelector::Default {
                services,
                owner: Some(owner),
            } if c.topology_key == ZONE
                && services.is_everything()
                && (required.is_none() || !c.honor_node_affinity)
                && !c.honor_node_taints =>
            {
                for (value, count) in counts[i].iter_mut() {
                    *count = i64::from(ctx.cache.owner_zone_count(owner, value));
                }
            }
            _ => walk[i] = true,
        }
    }
    if walk.iter().any(|w| *w) {
        for node in ctx.cache.nodes() {
            if require_all && !has_all_keys(node, &constraints) {
                continue;
            }
            let labels = node.labels();
            for (i, c) in constraints.iter().enumerate() {
                if !walk[i] {
                    continue;
                }
                // Nodes without the label only feed the "" domain, which no node reads.
                let Some(value) = labels.get(&c.topology_key) else {
                    continue;
                };
                let Some(count) = counts[i].get_mut(value.as_str()) else {
                    continue;
                };
                if c.includes(pod, required.as_ref(), node) {
                    *count += c.selector.count_on(node, &pod.namespace);
                }
            }
        }
    }

    for ((node, ignored), score) in nodes.iter().zip(&ignored).zip(out.iter_mut()) {
        if *ignored {
            *score = -1;
            continue;
        }
        let labels = node.labels();
        let mut total = 0f64;
        for (i, c) in constraints.iter().enumerate() {
            let Some(value) = labels.get(&c.topology_key) else {
                continue;
            };
            let count = if c.topology_key == HOSTNAME {
                c.selector.count_on(node, &pod.namespace)
            } else {
                counts[i].get(value.as_str()).copied().unwrap_or(0)
            };
            total += count as f64 * weights[i] + (c.max_skew - 1) as f64;
        }
        *score = total.round() as i64;
    }

    // Normalize: fewer matching pods is better; ignored nodes get 0.
    let valid = || out.iter().copied().filter(|s| *s >= 0);
    let min = valid().min().unwrap_or(0);
    let max = valid().max().unwrap_or(0);
    for score in out.iter_mut() {
        *score = if *score < 0 {
            0
        } else if max == 0 {
            MAX_NODE_SCORE
        } else {
            MAX_NODE_SCORE * (max + min - *score) / max
        };
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_info::testing::{map, node, pod};
    use k8s_openapi::api::core::v1::{Service, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use std::sync::Arc;

    fn spread(key: &str, skew: i32, when: &str) -> TopologySpreadConstraint {
        TopologySpreadConstraint {
            max_skew: skew,
            topology_key: key.into(),
            when_unsatisfiable: when.into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(map(&[("app", "web")])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn web(name: &str, constraints: Vec<TopologySpreadConstraint>) -> Arc<PodInfo> {
        pod(name)
            .label("app", "web")
            .with_spec(|s| s.topology_spread_constraints = Some(constraints))
            .info()
    }

    /// Nodes a1, a2 in zone a and b1 in zone b; `placed` pods (node, labels app=web).
    fn cluster(placed: &[&str]) -> Cache {
        let mut cache = Cache::default();
        for (name, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
            cache.upsert_node(node(name).label(ZONE, zone).build());
        }
        for (i, n) in placed.iter().enumerate() {
            cache.upsert_bound_pod(
                pod(&format!("e{i}"))
                    .label("app", "web")
                    .node_name(n)
                    .info(),
            );
        }
        cache
    }

    fn filter_on(cache: &Cache, p: &PodInfo, node_name: &str) -> Result<(), Rejection> {
        let state = pre_filter(p, cache).unwrap();
        filter(&state, p, cache.node(cache.slot_of(node_name).unwrap()))
    }

    #[test]
    fn zone_skew() {
        let cache = cluster(&["a1", "a2"]);
        let p = web("p", vec![spread(ZONE, 1, "DoNotSchedule")]);
        // Zone a has 2, zone b 0: a third pod in zone a would make the skew 3.
        let err = filter_on(&cache, &p, "a1").unwrap_err();
        assert_eq!(err.reasons[0], REASON);
        assert_eq!(err.code, Code::Unschedulable);
        assert!(filter_on(&cache, &p, "b1").is_ok());
        let p = web("p", vec![spread(ZONE, 2, "DoNotSchedule")]);
        assert!(filter_on(&cache, &p, "a1").is_err());
        let p = web("p", vec![spread(ZONE, 3, "DoNotSchedule")]);
        assert!(filter_on(&cache, &p, "a1").is_ok());
    }

    #[test]
    fn missing_label_and_min_domains() {
        let mut cache = cluster(&["a1"]);
        cache.upsert_node(node("x").build());
        let p = web("p", vec![spread(ZONE, 1, "DoNotSchedule")]);
        let err = filter_on(&cache, &p, "x").unwrap_err();
        assert_eq!(err.reasons[0], REASON_MISSING_LABEL);
        assert_eq!(err.code, Code::UnschedulableAndUnresolvable);
        // Two domains with counts a=1, b=0: fine on b; minDomains 3 makes the minimum 0.
        let mut c = spread(ZONE, 1, "DoNotSchedule");
        c.min_domains = Some(3);
        let p = web("p", vec![c]);
        assert!(filter_on(&cache, &p, "b1").is_ok());
        assert!(filter_on(&cache, &p, "a1").is_err());
    }

    #[test]
    fn node_affinity_policy_limits_the_domains() {
        let cache = cluster(&["a1"]);
        // Only zone a nodes count (nodeAffinityPolicy Honor by default): zone b is not a
        // domain, so the minimum is zone a's 1 and another pod there is within skew 1.
        let p = pod("p")
            .label("app", "web")
            .with_spec(|s| {
                s.node_selector = Some(map(&[(ZONE, "a")]));
                s.topology_spread_constraints = Some(vec![spread(ZONE, 1, "DoNotSchedule")]);
            })
            .info();
        assert!(filter_on(&cache, &p, "a2").is_ok());
        let mut c = spread(ZONE, 1, "DoNotSchedule");
        c.node_affinity_policy = Some("Ignore".into());
        let p = pod("p")
            .label("app", "web")
            .with_spec(|s| {
                s.node_selector = Some(map(&[(ZONE, "a")]));
                s.topology_spread_constraints = Some(vec![c]);
            })
            .info();
        assert!(filter_on(&cache, &p, "a2").is_err());
    }

    #[test]
    fn match_label_keys_narrow_the_selector() {
        let mut cache = cluster(&[]);
        cache.upsert_bound_pod(
            pod("old")
                .label("app", "web")
                .label("rev", "1")
                .node_name("a1")
                .info(),
        );
        let mut c = spread(HOSTNAME, 1, "DoNotSchedule");
        c.match_label_keys = Some(vec!["rev".into()]);
        let p = pod("p")
            .label("app", "web")
            .label("rev", "2")
            .with_spec(|s| s.topology_spread_constraints = Some(vec![c]))
            .info();
        // The rev=1 pod does not count, so a1 is as good as any other node.
        for n in ["a1", "a2", "b1"] {
            cache.upsert_node(
                node(n)
                    .label(ZONE, if n == "b1" { "b" } else { "a" })
                    .build(),
            );
            assert!(filter_on(&cache, &p, n).is_ok(), "{n}");
        }
    }

    fn scores(cache: &Cache, p: &PodInfo) -> Vec<i64> {
        let nodes: Vec<&NodeInfo> = ["a1", "a2", "b1"]
            .iter()
            .map(|n| cache.node(cache.slot_of(n).unwrap()))
            .collect();
        let ctx = ScoreContext { pod: p, cache };
        let mut out = vec![0; nodes.len()];
        assert!(score(&ctx, &nodes, &mut out));
        out
    }

    #[test]
    fn schedule_anyway_prefers_emptier_domains() {
        let cache = cluster(&["a1", "a1"]);
        let p = web("p", vec![spread(HOSTNAME, 1, "ScheduleAnyway")]);
        let s = scores(&cache, &p);
        assert!(s[1] > s[0] && s[2] > s[0], "{s:?}");
        assert_eq!(s[1], 100);
        assert_eq!(s[2], 100);
    }

    #[test]
    fn system_defaults_follow_the_owner_and_services() {
        let mut cache = cluster(&[]);
        for (i, n) in ["a1", "a1", "a2"].iter().enumerate() {
            cache.upsert_bound_pod(
                pod(&format!("r{i}"))
                    .owner("ReplicaSet", "rs1")
                    .node_name(n)
                    .info(),
            );
        }
        // A pod of another owner is not counted.
        cache.upsert_bound_pod(
            pod("other")
                .owner("ReplicaSet", "rs2")
                .node_name("b1")
                .info(),
        );
        let p = pod("p").owner("ReplicaSet", "rs1").info();
        let s = scores(&cache, &p);
        // b1 (zone b, no pods of rs1) is best; a1 (2 pods) worst.
        assert!(s[2] > s[1] && s[1] > s[0], "{s:?}");
        assert_eq!(s[2], 100);

        // No owner and no Service: no default constraints.
        let lonely = pod("q").info();
        let ctx = ScoreContext {
            pod: &lonely,
            cache: &cache,
        };
        let nodes = [cache.node(cache.slot_of("a1").unwrap())];
        assert!(!score(&ctx, &nodes, &mut [0]));

        // A Service selecting the pod brings the defaults back.
        cache.upsert_service(&Service {
            metadata: ObjectMeta {
                name: Some("svc".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(map(&[("tier", "fe")])),
                ..Default::default()
            }),
            ..Default::default()
        });
        cache.upsert_bound_pod(pod("fe1").label("tier", "fe").node_name("b1").info());
        let fe = pod("fe2").label("tier", "fe").info();
        let s = scores(&cache, &fe);
        assert!(s[0] > s[2], "{s:?}");
    }

    #[test]
    fn own_constraints_ignore_nodes_without_the_key() {
        let mut cache = cluster(&["a1"]);
        cache.upsert_node(node("x").build());
        let p = web("p", vec![spread(ZONE, 1, "ScheduleAnyway")]);
        let nodes: Vec<&NodeInfo> = ["a1", "b1", "x"]
            .iter()
            .map(|n| cache.node(cache.slot_of(n).unwrap()))
            .collect();
        let ctx = ScoreContext {
            pod: &p,
            cache: &cache,
        };
        let mut out = vec![0; 3];
        assert!(score(&ctx, &nodes, &mut out));
        // x lacks the zone label: scored 0; b1 (no web pods in zone b) best.
        assert_eq!(out[2], 0);
        assert_eq!(out[1], 100);
        assert!(out[0] < out[1], "{out:?}");
    }
}
