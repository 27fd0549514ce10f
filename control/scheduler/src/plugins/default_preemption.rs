//! DefaultPreemption (post-filter): when a pod fits no node, find nodes where evicting pods of
//! lower priority would make it fit, choose the fewest and least important victims, and
//! nominate the node for the pod; otherwise explain why preemption does not help (the
//! "preemption: ..." part of upstream's message). Also the nominator: pods nominated to a node
//! keep their room there against pods of lower or equal priority.
//!
//! PodDisruptionBudgets are not consulted when choosing victims (upstream prefers victims whose
//! eviction violates no budget).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::Cache;
use crate::fit_error::{Diagnosis, fit_error_message};
use crate::framework::{Code, CycleState, Rejection, run_filters};
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;

/// The reason for nodes where no eviction could help.
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
/// The reason for nodes without lower-priority pods.
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// The message for pods with preemptionPolicy Never.
pub const NEVER: &str = "not eligible due to preemptionPolicy=Never.";
/// The message while victims on the pod's nominated node are still terminating.
pub const TERMINATING_VICTIM: &str = "not eligible due to a terminating pod on the nominated node.";

/// At least this many candidate nodes are looked for, or this percentage of the nodes.
const MIN_CANDIDATE_NODES_ABSOLUTE: usize = 100;
const MIN_CANDIDATE_NODES_PERCENTAGE: usize = 10;

/// Pods nominated to nodes by preemption (this scheduler's or recorded in pod status).
#[derive(Debug, Default)]
pub struct Nominator {
    by_node: HashMap<String, Vec<Arc<PodInfo>>>,
    by_pod: HashMap<Arc<str>, String>,
}

impl Nominator {
    /// Nominates `pod` to `node` (replacing an earlier nomination).
    pub fn set(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.remove(&pod.key);
        self.by_pod.insert(pod.key.clone(), node.to_string());
        self.by_node.entry(node.to_string()).or_default().push(pod);
    }

    /// Drops the nomination of the pod with `key`.
    pub fn remove(&mut self, key: &str) {
        if let Some(node) = self.by_pod.remove(key)
            && let Some(list) = self.by_node.get_mut(&node)
        {
            list.retain(|p| &*p.key != key);
            if list.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }

    /// Whether no pod is nominated anywhere.
    pub fn is_empty(&self) -> bool {
        self.by_pod.is_empty()
    }

    /// The node the pod with `key` is nominated to.
    pub fn node_of(&self, key: &str) -> Option<&str> {
        self.by_pod.get(key).map(String::as_str)
    }

    /// The pods nominated to `node`.
    pub fn on_node(&self, node: &str) -> &[Arc<PodInfo>] {
        self.by_node
            .get(node)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// Runs the filters as if the pods nominated to the node with priority at least the pod's
/// were already there, and (when they pass) once more without them.
pub fn filter_with_nominated(
    state: &CycleState<'_>,
    node: &NodeInfo,
    nominator: &Nominator,
) -> Result<(), Rejection> {
    if nominator.is_empty() {
        return run_filters(state, node);
    }
    let pod = state.pod;
    let mut nominated = nominator
        .on_node(&node.name)
        .iter()
        .filter(|p| p.key != pod.key && p.priority >= pod.priority)
        .peekable();
    if nominated.peek().is_none() {
        return run_filters(state, node);
    }
    let mut with = node.snapshot();
    for p in nominated {
        with.add_pod(p.clone());
    }
    run_filters(state, &with)?;
    run_filters(state, node)
}

/// What the post-filter decided.
#[derive(Debug)]
pub enum PostFilter {
    /// The pod may not preempt (now); the message to append to the failure.
    NotEligible(String),
    /// Evicting pods helps nowhere; the message to append to the failure (and any earlier
    /// nomination of the pod is void).
    NotHelpful(String),
    /// Evicting `victims` from the node in `slot` makes room: nominate it.
    Preempt {
        slot: usize,
        victims: Vec<Arc<PodInfo>>,
    },
}

fn terminating_by_preemption(pod: &PodInfo) -> bool {
    pod.terminating
        && pod
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| {
                c.type_ == "DisruptionTarget"
                    && c.reason.as_deref() == Some("PreemptionByScheduler")
            })
}

/// The node recorded in the pod's status.nominatedNodeName.
pub fn nominated_node_name(pod: &PodInfo) -> Option<&str> {
    pod.pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// upstream's PodEligibleToPreemptOthers: the reason it is not, if so.
fn not_eligible(pod: &PodInfo, cache: &Cache, diagnosis: &Diagnosis) -> Option<&'static str> {
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Some(NEVER);
    }
    let nominated = nominated_node_name(pod)?;
    let slot = cache.slot_of(nominated)?;
    if diagnosis.code_of(slot) == Some(Code::UnschedulableAndUnresolvable) {
        return None;
    }
    cache
        .node(slot)
        .pods
        .iter()
        .any(|p| p.priority < pod.priority && terminating_by_preemption(p))
        .then_some(TERMINATING_VICTIM)
}

/// The start time of a pod (its creation time when it has not started).
fn start_time(pod: &PodInfo) -> i128 {
    pod.pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(pod.pod.metadata.creation_timestamp.as_ref())
        .map(|t| t.0.as_nanosecond())
        .unwrap_or(0)
}

/// Higher priority first, then the longer-running.
fn more_important(a: &PodInfo, b: &PodInfo) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| start_time(a).cmp(&start_time(b)))
}

/// Chooses the victims on one node: all lower-priority pods must go for the pod to fit, then
/// as many as possible (most important first) are reprieved.
fn select_victims(
    state: &CycleState<'_>,
    node: &NodeInfo,
    cache: &Cache,
    nominator: &Nominator,
) -> Result<Vec<Arc<PodInfo>>, Vec<Cow<'static, str>>> {
    let pod = state.pod;
    let mut lower: Vec<Arc<PodInfo>> = node
        .pods
        .iter()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    if lower.is_empty() {
        return Err(vec![Cow::Borrowed(NO_VICTIMS)]);
    }
    let mut what_if = node.snapshot();
    let mut spread = state.spread.clone();
    let mut inter_pod = state.inter_pod.clone();
    for victim in &lower {
        what_if.remove_pod(&victim.key);
        if let Some(s) = spread.as_mut() {
            s.update_pod(pod, victim, node, -1);
        }
        if let Some(s) = inter_pod.as_mut() {
            s.update_pod(pod, victim, node, cache, -1);
        }
    }
    let check =
        |what_if: &NodeInfo,
         spread: &Option<crate::plugins::pod_topology_spread::FilterState>,
         inter_pod: &Option<crate::plugins::inter_pod_affinity::FilterState>| {
            let trial = CycleState {
                pod,
                node_affinity: state.node_affinity.clone(),
                spread: spread.clone(),
                inter_pod: inter_pod.clone(),
                volumes: state.volumes.clone(),
            };
            filter_with_nominated(&trial, what_if, nominator)
        };
    if let Err(rejection) = check(&what_if, &spread, &inter_pod) {
        return Err(rejection.reasons);
    }
    lower.sort_by(|a, b| more_important(a, b));
    let mut victims = Vec::new();
    for candidate in lower {
        what_if.add_pod(candidate.clone());
        if let Some(s) = spread.as_mut() {
            s.update_pod(pod, &candidate, node, 1);
        }
        if let Some(s) = inter_pod.as_mut() {
            s.update_pod(pod, &candidate, node, cache, 1);
        }
        if check(&what_if, &spread, &inter_pod).is_err() {
            what_if.remove_pod(&candidate.key);
            if let Some(s) = spread.as_mut() {
                s.update_pod(pod, &candidate, node, -1);
            }
            if let Some(s) = inter_pod.as_mut() {
                s.update_pod(pod, &candidate, node, cache, -1);
            }
            victims.push(candidate);
        }
    }
    Ok(victims)
}

/// upstream's pickOneNodeForPreemption without PodDisruptionBudgets: the lowest highest
/// victim priority, then the lowest priority sum, the fewest victims, the latest start of
/// the most important victims.
fn pick_candidate(candidates: &[(usize, Vec<Arc<PodInfo>>)]) -> usize {
    if let Some(i) = candidates.iter().position(|(_, v)| v.is_empty()) {
        return i;
    }
    let key = |victims: &Vec<Arc<PodInfo>>| {
        // Victims are sorted most important first.
        let highest = victims[0].priority;
        let sum: i64 = victims
            .iter()
            .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
            .sum();
        let earliest_of_highest = victims
            .iter()
            .filter(|v| v.priority == highest)
            .map(|v| start_time(v))
            .min()
            .unwrap_or(0);
        (
            highest,
            sum,
            victims.len(),
            std::cmp::Reverse(earliest_of_highest),
        )
    };
    let mut best = 0;
    for i in 1..candidates.len() {
        if key(&candidates[i].1) < key(&candidates[best].1) {
            best = i;
        }
    }
    best
}

/// The post-filter of a pod that fit no node.
pub fn post_filter(
    state: &CycleState<'_>,
    cache: &Cache,
    diagnosis: &Diagnosis,
    total_nodes: usize,
    nominator: &Nominator,
    offset: usize,
) -> PostFilter {
    let pod = state.pod;
    if let Some(reason) = not_eligible(pod, cache, diagnosis) {
        return PostFilter::NotEligible(format!("preemption: {reason}"));
    }
    let potential: Vec<usize> = diagnosis
        .node_statuses
        .iter()
        .filter(|(_, r)| r.code == Code::Unschedulable)
        .map(|(slot, _)| *slot)
        .collect();
    let wanted = (potential.len() * MIN_CANDIDATE_NODES_PERCENTAGE / 100)
        .max(MIN_CANDIDATE_NODES_ABSOLUTE)
        .min(potential.len());
    let mut statuses: Vec<Vec<Cow<'static, str>>> = Vec::new();
    let mut candidates: Vec<(usize, Vec<Arc<PodInfo>>)> = Vec::new();
    for i in 0..potential.len() {
        let slot = potential[(offset + i) % potential.len()];
        match select_victims(state, cache.node(slot), cache, nominator) {
            Ok(victims) => {
                candidates.push((slot, victims));
                if candidates.len() >= wanted {
                    break;
                }
            }
            Err(reasons) => statuses.push(reasons),
        }
    }
    if candidates.is_empty() {
        let evaluated = statuses.len();
        return PostFilter::NotHelpful(format!(
            "preemption: {}",
            fit_error_message(
                total_nodes,
                statuses.iter().flatten(),
                evaluated,
                Some(NOT_HELPFUL),
                None,
                None,
            )
        ));
    }
    let (slot, victims) = candidates.swap_remove(pick_candidate(&candidates));
    PostFilter::Preempt { slot, victims }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit_error::diagnosis_message;
    use crate::framework::{Plugin, pre_filter};
    use crate::pod_info::testing::{node, pod};

    fn diagnose(cache: &Cache, p: &PodInfo) -> Diagnosis {
        let (state, _) = pre_filter(p, cache).unwrap();
        let mut d = Diagnosis::default();
        for slot in cache.order().to_vec() {
            if let Err(r) = run_filters(&state, cache.node(slot)) {
                d.plugins.insert(r.plugin);
                d.node_statuses.push((slot, r));
            }
        }
        d
    }

    fn run(cache: &mut Cache, p: &PodInfo) -> (Diagnosis, PostFilter) {
        cache.prepare_order();
        let d = diagnose(cache, p);
        let (state, _) = pre_filter(p, cache).unwrap();
        let total = cache.order().len();
        let result = post_filter(&state, cache, &d, total, &Nominator::default(), 0);
        (d, result)
    }

    fn cluster() -> Cache {
        let mut cache = Cache::default();
        for n in ["n1", "n2"] {
            cache.upsert_node(
                node(n)
                    .allocatable(&[("cpu", "2"), ("memory", "4Gi"), ("pods", "10")])
                    .build(),
            );
        }
        cache
    }

    #[test]
    fn no_victims_and_not_helpful() {
        let mut cache = cluster();
        cache.upsert_node(
            node("n3")
                .allocatable(&[("cpu", "2"), ("pods", "10")])
                .taint("a", "b", "NoSchedule")
                .build(),
        );
        cache.upsert_bound_pod(
            pod("x")
                .requests(&[("cpu", "2")])
                .node_name("n1")
                .priority(5)
                .info(),
        );
        cache.upsert_bound_pod(
            pod("y")
                .requests(&[("cpu", "2")])
                .node_name("n2")
                .priority(7)
                .info(),
        );
        let p = pod("p").requests(&[("cpu", "1")]).priority(5).info();
        let (d, result) = run(&mut cache, &p);
        let PostFilter::NotHelpful(message) = result else {
            panic!("expected a message, got {result:?}");
        };
        assert_eq!(
            diagnosis_message(3, &d, Some(&message)),
            "0/3 nodes are available: 1 node(s) had untolerated taint {a: b}, 2 Insufficient cpu. \
             preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No \
             preemption victims found for incoming pod."
        );
        assert!(d.plugins.contains(Plugin::NodeResourcesFit));
    }

    #[test]
    fn never_policy() {
        let mut cache = cluster();
        cache.upsert_bound_pod(pod("x").requests(&[("cpu", "2")]).node_name("n1").info());
        cache.upsert_bound_pod(pod("y").requests(&[("cpu", "2")]).node_name("n2").info());
        let p = pod("p")
            .requests(&[("cpu", "1")])
            .priority(100)
            .with_spec(|s| s.preemption_policy = Some("Never".into()))
            .info();
        let (d, result) = run(&mut cache, &p);
        let PostFilter::NotEligible(message) = result else {
            panic!()
        };
        assert_eq!(
            diagnosis_message(2, &d, Some(&message)),
            "0/2 nodes are available: 2 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
        );
    }

    #[test]
    fn chooses_the_least_important_victims() {
        let mut cache = cluster();
        cache.upsert_bound_pod(
            pod("a")
                .requests(&[("cpu", "1")])
                .priority(1)
                .node_name("n1")
                .info(),
        );
        cache.upsert_bound_pod(
            pod("b")
                .requests(&[("cpu", "1")])
                .priority(3)
                .node_name("n1")
                .info(),
        );
        cache.upsert_bound_pod(
            pod("c")
                .requests(&[("cpu", "1")])
                .priority(2)
                .node_name("n2")
                .info(),
        );
        cache.upsert_bound_pod(
            pod("d")
                .requests(&[("cpu", "1")])
                .priority(2)
                .node_name("n2")
                .info(),
        );
        let p = pod("p").requests(&[("cpu", "1")]).priority(10).info();
        let (_, result) = run(&mut cache, &p);
        let PostFilter::Preempt { slot, victims } = result else {
            panic!("expected preemption, got {result:?}");
        };
        // n1: evicting only "a" (priority 1) suffices; n2 would lose a priority-2 pod.
        assert_eq!(&*cache.node(slot).name, "n1");
        assert_eq!(
            victims.iter().map(|v| v.name()).collect::<Vec<_>>(),
            vec!["a"]
        );
    }

    #[test]
    fn too_big_even_after_eviction() {
        let mut cache = cluster();
        cache.upsert_bound_pod(pod("a").requests(&[("cpu", "1")]).node_name("n1").info());
        cache.upsert_bound_pod(
            pod("b")
                .requests(&[("memory", "3Gi")])
                .priority(50)
                .node_name("n2")
                .info(),
        );
        cache.upsert_bound_pod(pod("c").requests(&[("cpu", "1")]).node_name("n2").info());
        let p = pod("p")
            .requests(&[("cpu", "1500m"), ("memory", "2Gi")])
            .priority(10)
            .info();
        let (d, result) = run(&mut cache, &p);
        let PostFilter::Preempt { slot, victims } = result else {
            panic!("{result:?}")
        };
        assert_eq!(&*cache.node(slot).name, "n1");
        assert_eq!(victims.len(), 1);
        assert_eq!(d.node_statuses.len(), 2);
        // Without n1, n2 stays short of memory even after evicting "c".
        cache.remove_pod("default/a");
        cache.upsert_bound_pod(
            pod("a")
                .requests(&[("cpu", "1")])
                .priority(99)
                .node_name("n1")
                .info(),
        );
        let (d, result) = run(&mut cache, &p);
        let PostFilter::NotHelpful(message) = result else {
            panic!("{result:?}")
        };
        assert_eq!(
            diagnosis_message(2, &d, Some(&message)),
            "0/2 nodes are available: 1 Insufficient memory, 2 Insufficient cpu. preemption: 0/2 \
             nodes are available: 1 Insufficient memory, 1 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn nominated_pods_keep_their_room() {
        let mut cache = cluster();
        cache.prepare_order();
        let mut nominator = Nominator::default();
        let high = pod("high").requests(&[("cpu", "2")]).priority(10).info();
        nominator.set(high.clone(), "n1");
        let low = pod("low").requests(&[("cpu", "1")]).info();
        let (state, _) = pre_filter(&low, &cache).unwrap();
        let n1 = cache.node(cache.slot_of("n1").unwrap());
        assert!(filter_with_nominated(&state, n1, &nominator).is_err());
        let n2 = cache.node(cache.slot_of("n2").unwrap());
        assert!(filter_with_nominated(&state, n2, &nominator).is_ok());
        // The nominated pod itself is not blocked by its own nomination.
        let (state, _) = pre_filter(&high, &cache).unwrap();
        assert!(filter_with_nominated(&state, n1, &nominator).is_ok());
        nominator.remove("default/high");
        assert!(nominator.on_node("n1").is_empty());
    }
}
