//! InterPodAffinity: required pod affinity and anti-affinity of the incoming pod, and the
//! required anti-affinity of pods already placed (symmetrically), per topology domain
//! (filter); preferred terms of both sides, and existing pods' required affinity with
//! upstream's hardPodAffinityWeight of 1, add or subtract weights per domain (score).

use std::collections::{BTreeMap, HashMap};

use crate::cache::Cache;
use crate::framework::{Code, MAX_NODE_SCORE, Plugin, Rejection, ScoreContext};
use crate::node_info::NodeInfo;
use crate::pod_info::{AffinityTerm, PodInfo};

/// The reason when the pod's required affinity is not met.
pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
/// The reason when the pod's required anti-affinity is not met.
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
/// The reason when an existing pod's required anti-affinity rejects the pod.
pub const REASON_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// The weight of an existing pod's required affinity term when scoring.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// Counts per topology key and value.
#[derive(Debug, Clone, Default)]
struct TopologyCounts(HashMap<String, HashMap<String, i64>>);

impl TopologyCounts {
    fn add(&mut self, key: &str, value: &str, delta: i64) {
        let values = self.0.entry(key.to_string()).or_default();
        let count = values.entry(value.to_string()).or_default();
        *count += delta;
        if *count == 0 {
            values.remove(value);
            if values.is_empty() {
                self.0.remove(key);
            }
        }
    }

    fn get(&self, key: &str, value: &str) -> i64 {
        self.0
            .get(key)
            .and_then(|v| v.get(value))
            .copied()
            .unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `delta` at `node`'s value of `key` (nodes without the label are skipped).
    fn add_at(&mut self, labels: &BTreeMap<String, String>, key: &str, delta: i64) {
        if let Some(value) = labels.get(key) {
            self.add(key, value, delta);
        }
    }
}

/// What the filter reads, computed once per pod.
#[derive(Debug, Clone)]
pub struct FilterState {
    affinity_terms: Vec<AffinityTerm>,
    anti_affinity_terms: Vec<AffinityTerm>,
    /// Domains where existing pods' anti-affinity terms match the incoming pod.
    existing_anti: TopologyCounts,
    /// Domains with pods matching all of the incoming pod's affinity terms.
    affinity: TopologyCounts,
    /// Domains with pods matching the incoming pod's anti-affinity terms.
    anti_affinity: TopologyCounts,
    /// The incoming pod matches all its own affinity terms.
    self_match: bool,
}

fn matches_all(terms: &[AffinityTerm], pod: &PodInfo, cache: &Cache) -> bool {
    let ns = cache.namespace_labels(&pod.namespace);
    !terms.is_empty() && terms.iter().all(|t| t.matches(pod, ns))
}

impl FilterState {
    /// Counts (`delta` 1) or stops counting (-1) `existing` on `node` for the incoming `pod`
    /// (-1 and 1 again in a preemption what-if).
    pub fn update_pod(
        &mut self,
        pod: &PodInfo,
        existing: &PodInfo,
        node: &NodeInfo,
        cache: &Cache,
        delta: i64,
    ) {
        let labels = node.labels();
        if existing.has_required_anti_affinity() {
            let ns = cache.namespace_labels(&pod.namespace);
            for term in &existing.required_anti_affinity {
                if term.matches(pod, ns) {
                    self.existing_anti.add_at(labels, &term.topology_key, delta);
                }
            }
        }
        if !self.affinity_terms.is_empty() && matches_all(&self.affinity_terms, existing, cache) {
            for term in &self.affinity_terms {
                self.affinity.add_at(labels, &term.topology_key, delta);
            }
        }
        if !self.anti_affinity_terms.is_empty() {
            let ns = cache.namespace_labels(&existing.namespace);
            for term in &self.anti_affinity_terms {
                if term.matches(existing, ns) {
                    self.anti_affinity.add_at(labels, &term.topology_key, delta);
                }
            }
        }
    }
}

/// The PreFilter: `None` when neither the pod nor any existing pod has required terms that
/// could concern it.
pub fn pre_filter(pod: &PodInfo, cache: &Cache) -> Option<FilterState> {
    let has_terms = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
    if !has_terms && cache.pods_with_required_anti_affinity() == 0 {
        return None;
    }
    let mut state = FilterState {
        affinity_terms: pod.required_affinity.clone(),
        anti_affinity_terms: pod.required_anti_affinity.clone(),
        existing_anti: TopologyCounts::default(),
        affinity: TopologyCounts::default(),
        anti_affinity: TopologyCounts::default(),
        self_match: matches_all(&pod.required_affinity, pod, cache),
    };
    for node in cache.nodes() {
        if has_terms {
            for existing in &node.pods {
                state.update_pod(pod, existing, node, cache, 1);
            }
        } else if node.pods_with_required_anti_affinity > 0 {
            for existing in node.pods.iter().filter(|p| p.has_required_anti_affinity()) {
                state.update_pod(pod, existing, node, cache, 1);
            }
        }
    }
    if !has_terms && state.existing_anti.is_empty() {
        return None;
    }
    Some(state)
}

fn satisfies_affinity(state: &FilterState, labels: &BTreeMap<String, String>) -> bool {
    let mut pods_exist = true;
    for term in &state.affinity_terms {
        match labels.get(&term.topology_key) {
            Some(value) => {
                if state.affinity.get(&term.topology_key, value) <= 0 {
                    pods_exist = false;
                }
            }
            // Every topology key must be on the node.
            None => return false,
        }
    }
    // The first pod of a group with affinity to itself may go anywhere the keys exist.
    pods_exist || (state.affinity.is_empty() && state.self_match)
}

fn satisfies_anti_affinity(state: &FilterState, labels: &BTreeMap<String, String>) -> bool {
    state.anti_affinity.is_empty()
        || state.anti_affinity_terms.iter().all(|term| {
            labels
                .get(&term.topology_key)
                .is_none_or(|value| state.anti_affinity.get(&term.topology_key, value) <= 0)
        })
}

fn satisfies_existing_anti_affinity(
    state: &FilterState,
    labels: &BTreeMap<String, String>,
) -> bool {
    state.existing_anti.is_empty()
        || labels
            .iter()
            .all(|(key, value)| state.existing_anti.get(key, value) <= 0)
}

/// Rejects nodes that break the pod's required (anti-)affinity or existing pods' required
/// anti-affinity.
pub fn filter(state: &FilterState, node: &NodeInfo) -> Result<(), Rejection> {
    let labels = node.labels();
    if !state.affinity_terms.is_empty() && !satisfies_affinity(state, labels) {
        return Err(Rejection::new(
            Plugin::InterPodAffinity,
            Code::UnschedulableAndUnresolvable,
            REASON_AFFINITY,
        ));
    }
    if !satisfies_anti_affinity(state, labels) {
        return Err(Rejection::new(
            Plugin::InterPodAffinity,
            Code::Unschedulable,
            REASON_ANTI_AFFINITY,
        ));
    }
    if !satisfies_existing_anti_affinity(state, labels) {
        return Err(Rejection::new(
            Plugin::InterPodAffinity,
            Code::Unschedulable,
            REASON_EXISTING_ANTI_AFFINITY,
        ));
    }
    Ok(())
}

/// Adds the weights of the terms on both sides for one existing pod.
fn score_existing_pod(
    scores: &mut TopologyCounts,
    pod: &PodInfo,
    existing: &PodInfo,
    labels: &BTreeMap<String, String>,
    cache: &Cache,
) {
    if labels.is_empty() {
        return;
    }
    let existing_ns = cache.namespace_labels(&existing.namespace);
    for (terms, sign) in [
        (&pod.preferred_affinity, 1),
        (&pod.preferred_anti_affinity, -1),
    ] {
        for t in terms.iter() {
            if t.term.matches(existing, existing_ns) {
                scores.add_at(labels, &t.term.topology_key, t.weight * sign);
            }
        }
    }
    let pod_ns = cache.namespace_labels(&pod.namespace);
    for term in &existing.required_affinity {
        if term.matches(pod, pod_ns) {
            scores.add_at(labels, &term.topology_key, HARD_POD_AFFINITY_WEIGHT);
        }
    }
    for (terms, sign) in [
        (&existing.preferred_affinity, 1),
        (&existing.preferred_anti_affinity, -1),
    ] {
        for t in terms.iter() {
            if t.term.matches(pod, pod_ns) {
                scores.add_at(labels, &t.term.topology_key, t.weight * sign);
            }
        }
    }
}

/// Scores nodes by the summed weights of their domains, scaled to 0..=100 between the lowest
/// and the highest.
pub fn score(ctx: &ScoreContext<'_>, nodes: &[&NodeInfo], out: &mut [i64]) -> bool {
    let pod = ctx.pod;
    let has_preferences =
        !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
    if !has_preferences && ctx.cache.pods_with_affinity() == 0 {
        return false;
    }
    let mut topology = TopologyCounts::default();
    for node in ctx.cache.nodes() {
        if !has_preferences && node.pods_with_affinity == 0 {
            continue;
        }
        let labels = node.labels();
        for existing in &node.pods {
            if has_preferences || existing.has_affinity() {
                score_existing_pod(&mut topology, pod, existing, labels, ctx.cache);
            }
        }
    }
    if topology.is_empty() {
        return false;
    }
    for (node, score) in nodes.iter().zip(out.iter_mut()) {
        let labels = node.labels();
        *score = topology
            .0
            .iter()
            .filter_map(|(key, values)| labels.get(key).and_then(|v| values.get(v)))
            .sum();
    }
    let min = out.iter().copied().min().unwrap_or(0);
    let max = out.iter().copied().max().unwrap_or(0);
    let spread = max - min;
    for score in out.iter_mut() {
        *score = if spread > 0 {
            (MAX_NODE_SCORE as f64 * ((*score - min) as f64 / spread as f64)) as i64
        } else {
            0
        };
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_info::testing::{PodBuilder, map, node, pod};
    use k8s_openapi::api::core::v1::{
        Affinity, Namespace, PodAffinity, PodAffinityTerm, PodAntiAffinity, WeightedPodAffinityTerm,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    const ZONE: &str = "topology.kubernetes.io/zone";
    const HOST: &str = "kubernetes.io/hostname";

    fn term(app: &str, key: &str) -> PodAffinityTerm {
        PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some(map(&[("app", app)])),
                ..Default::default()
            }),
            topology_key: key.into(),
            ..Default::default()
        }
    }

    fn with_affinity(
        b: PodBuilder,
        affinity: Vec<PodAffinityTerm>,
        anti: Vec<PodAffinityTerm>,
    ) -> PodBuilder {
        b.with_spec(|s| {
            s.affinity = Some(Affinity {
                pod_affinity: (!affinity.is_empty()).then(|| PodAffinity {
                    required_during_scheduling_ignored_during_execution: Some(affinity),
                    ..Default::default()
                }),
                pod_anti_affinity: (!anti.is_empty()).then(|| PodAntiAffinity {
                    required_during_scheduling_ignored_during_execution: Some(anti),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
    }

    fn cluster() -> Cache {
        let mut cache = Cache::default();
        for (name, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
            cache.upsert_node(node(name).label(ZONE, zone).build());
        }
        cache
    }

    fn check(cache: &Cache, p: &PodInfo, n: &str) -> Result<(), Rejection> {
        match pre_filter(p, cache) {
            None => Ok(()),
            Some(state) => filter(&state, cache.node(cache.slot_of(n).unwrap())),
        }
    }

    #[test]
    fn required_affinity_follows_matching_pods() {
        let mut cache = cluster();
        let p = with_affinity(pod("p"), vec![term("db", ZONE)], vec![]).info();
        // No db pod anywhere and p is not a db: nowhere.
        assert_eq!(
            check(&cache, &p, "a1").unwrap_err().reasons[0],
            REASON_AFFINITY
        );
        cache.upsert_bound_pod(pod("db").label("app", "db").node_name("a2").info());
        assert!(check(&cache, &p, "a1").is_ok(), "same zone as the db pod");
        let err = check(&cache, &p, "b1").unwrap_err();
        assert_eq!(err.code, Code::UnschedulableAndUnresolvable);
    }

    #[test]
    fn first_pod_of_a_self_affine_group_goes_anywhere() {
        let cache = cluster();
        let p = with_affinity(pod("p").label("app", "db"), vec![term("db", ZONE)], vec![]).info();
        assert!(check(&cache, &p, "b1").is_ok());
    }

    #[test]
    fn required_anti_affinity() {
        let mut cache = cluster();
        cache.upsert_bound_pod(pod("web1").label("app", "web").node_name("a1").info());
        let p = with_affinity(
            pod("p").label("app", "web"),
            vec![],
            vec![term("web", HOST)],
        )
        .info();
        let err = check(&cache, &p, "a1").unwrap_err();
        assert_eq!(err.reasons[0], REASON_ANTI_AFFINITY);
        assert_eq!(err.code, Code::Unschedulable);
        assert!(check(&cache, &p, "a2").is_ok());
        let p = with_affinity(pod("p"), vec![], vec![term("web", ZONE)]).info();
        assert!(check(&cache, &p, "a2").is_err());
        assert!(check(&cache, &p, "b1").is_ok());
    }

    #[test]
    fn existing_pods_anti_affinity_is_symmetric() {
        let mut cache = cluster();
        cache.upsert_bound_pod(
            with_affinity(
                pod("guard").node_name("a1"),
                vec![],
                vec![term("noisy", ZONE)],
            )
            .info(),
        );
        let noisy = pod("n").label("app", "noisy").info();
        assert_eq!(
            check(&cache, &noisy, "a2").unwrap_err().reasons[0],
            REASON_EXISTING_ANTI_AFFINITY
        );
        assert!(check(&cache, &noisy, "b1").is_ok());
        assert!(pre_filter(&pod("quiet").info(), &cache).is_none());
    }

    #[test]
    fn namespace_selector() {
        let mut cache = cluster();
        cache.upsert_namespace(&Namespace {
            metadata: ObjectMeta {
                name: Some("team-a".into()),
                labels: Some(map(&[("team", "a")])),
                ..Default::default()
            },
            ..Default::default()
        });
        cache.upsert_bound_pod(
            pod("db")
                .namespace("team-a")
                .label("app", "db")
                .node_name("a1")
                .info(),
        );
        let mut t = term("db", HOST);
        let p = with_affinity(pod("p"), vec![t.clone()], vec![]).info();
        assert!(
            check(&cache, &p, "a1").is_err(),
            "other namespace by default"
        );
        t.namespace_selector = Some(LabelSelector {
            match_labels: Some(map(&[("team", "a")])),
            ..Default::default()
        });
        let p = with_affinity(pod("p"), vec![t.clone()], vec![]).info();
        assert!(check(&cache, &p, "a1").is_ok());
        t.namespace_selector = Some(LabelSelector::default());
        let p = with_affinity(pod("p"), vec![t], vec![]).info();
        assert!(
            check(&cache, &p, "a1").is_ok(),
            "empty selector: all namespaces"
        );
    }

    #[test]
    fn preferred_terms_score() {
        let mut cache = cluster();
        cache.upsert_bound_pod(pod("db").label("app", "db").node_name("a1").info());
        let p = pod("p")
            .with_spec(|s| {
                s.affinity = Some(Affinity {
                    pod_affinity: Some(PodAffinity {
                        preferred_during_scheduling_ignored_during_execution: Some(vec![
                            WeightedPodAffinityTerm {
                                weight: 10,
                                pod_affinity_term: term("db", ZONE),
                            },
                        ]),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            })
            .info();
        let nodes: Vec<&NodeInfo> = ["a1", "a2", "b1"]
            .iter()
            .map(|n| cache.node(cache.slot_of(n).unwrap()))
            .collect();
        let ctx = ScoreContext {
            pod: &p,
            cache: &cache,
        };
        let mut out = vec![0; 3];
        assert!(score(&ctx, &nodes, &mut out));
        assert_eq!(out, vec![100, 100, 0]);
        let plain = pod("q").info();
        let ctx = ScoreContext {
            pod: &plain,
            cache: &cache,
        };
        assert!(!score(&ctx, &nodes, &mut out));
    }

    #[test]
    fn existing_pods_terms_score_symmetrically() {
        let mut cache = cluster();
        // An existing pod in zone a with required affinity to app=web (hard weight 1) and one
        // in zone b with preferred anti-affinity to app=web (weight 5).
        cache.upsert_bound_pod(
            with_affinity(pod("fan").node_name("a1"), vec![term("web", ZONE)], vec![]).info(),
        );
        cache.upsert_bound_pod(
            pod("hater")
                .node_name("b1")
                .with_spec(|s| {
                    s.affinity = Some(Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![
                                WeightedPodAffinityTerm {
                                    weight: 5,
                                    pod_affinity_term: term("web", ZONE),
                                },
                            ]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                })
                .info(),
        );
        let web = pod("w").label("app", "web").info();
        let nodes: Vec<&NodeInfo> = ["a1", "a2", "b1"]
            .iter()
            .map(|n| cache.node(cache.slot_of(n).unwrap()))
            .collect();
        let ctx = ScoreContext {
            pod: &web,
            cache: &cache,
        };
        let mut out = vec![0; 3];
        assert!(score(&ctx, &nodes, &mut out));
        // Zone a: +1, zone b: -5 -> normalized between -5 and 1.
        assert_eq!(out, vec![100, 100, 0]);
    }
}
