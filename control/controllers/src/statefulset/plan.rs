//! The StatefulSet's decision (upstream's updateStatefulSet), as data: which Pods to create,
//! recreate, relabel, delete for scale-down and delete for the rolling update, in which
//! order, and where to stop.
//!
//! OrderedReady (monotonic): ordinals are created one at a time, lowest first, each only once
//! all below it are Running and Ready (and available); scale-down removes the highest ordinal
//! first, one at a time, after the others are healthy. Parallel: every missing Pod is created
//! and every surplus Pod deleted at once. RollingUpdate then deletes, from the highest
//! ordinal down to the partition, the first Pod not at the update revision, waiting while a
//! Pod is unhealthy; OnDelete leaves outdated Pods alone.

use baton_client::CachedPod;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;

use super::identity::{
    identity_matches, member_ordinal, pod_name, pod_revision, replicas, start_ordinal,
    storage_matches,
};
use crate::pod_control::{is_pod_available, is_pod_ready};

/// One action on the StatefulSet's Pods.
#[derive(Debug, Clone)]
pub enum Step {
    /// Create the Pod of `ordinal` (after its claims), at the update revision or else at the
    /// current one.
    Create {
        ordinal: i32,
        at_update_revision: bool,
    },
    /// Delete a Failed or Succeeded Pod so that it is created anew.
    Recreate(Arc<CachedPod>),
    /// Create the missing claims of a pending Pod.
    EnsureClaims(Arc<CachedPod>),
    /// Put the Pod's identity labels back (and its missing claims).
    FixIdentity(Arc<CachedPod>),
    /// Delete a Pod beyond the replica count.
    ScaleDown(Arc<CachedPod>),
    /// Delete an outdated Pod so that it comes back at the update revision.
    Update(Arc<CachedPod>),
}

/// The steps of one reconcile: phases run in order, the steps of a phase one by one when
/// `monotonic`, else in slow-start batches; the first failure stops everything after it.
#[derive(Debug, Default)]
pub struct Plan {
    pub monotonic: bool,
    pub phases: Vec<Vec<Step>>,
}

/// What the decision is made from.
#[derive(Debug)]
pub struct PlanInput<'a> {
    pub set: &'a StatefulSet,
    /// The set's Pods (members with an ordinal).
    pub pods: &'a [Arc<CachedPod>],
    pub update_revision: &'a str,
    pub now: jiff::Timestamp,
}

/// A replica position: its Pod, or the ordinal whose Pod is missing.
#[derive(Debug, Clone)]
enum Slot {
    Pod(Arc<CachedPod>),
    Missing(i32),
}

fn phase(pod: &CachedPod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Whether a Pod is being deleted.
pub fn is_terminating(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Running with its Ready condition True.
pub fn is_running_and_ready(pod: &CachedPod) -> bool {
    phase(pod) == Some("Running") && is_pod_ready(pod)
}

/// Running and Ready for at least minReadySeconds.
pub fn is_running_and_available(
    pod: &CachedPod,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> bool {
    phase(pod) == Some("Running") && is_pod_available(pod, min_ready_seconds, now)
}

fn is_healthy(slot: &Slot) -> bool {
    match slot {
        Slot::Pod(pod) => is_running_and_ready(pod) && !is_terminating(pod),
        Slot::Missing(_) => false,
    }
}

/// Whether the set's Pods are created and deleted one at a time (OrderedReady).
pub fn is_monotonic(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.pod_management_policy.as_deref())
        != Some("Parallel")
}

/// The partition of a RollingUpdate (`None` for OnDelete).
fn rolling_partition(set: &StatefulSet) -> Option<i32> {
    let strategy = set.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
    match strategy
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
    {
        "RollingUpdate" => Some(
            strategy
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.partition)
                .unwrap_or(0),
        ),
        _ => None,
    }
}

/// Whether a new Pod of `ordinal` is made at the update revision (the ordinals below a
/// RollingUpdate's partition keep the current one).
pub fn created_at_update_revision(set: &StatefulSet, ordinal: i32) -> bool {
    match rolling_partition(set) {
        Some(partition) => ordinal >= start_ordinal(set) + partition,
        None => true,
    }
}

/// Decides one reconcile's steps.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let set = input.set;
    let monotonic = is_monotonic(set);
    let mut plan = Plan {
        monotonic,
        phases: Vec::new(),
    };
    if set.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let start = start_ordinal(set);
    let count = replicas(set);
    let end = start + count - 1;
    let min_ready = set
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let has_claims = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .is_some_and(|t| !t.is_empty());

    let mut slots: Vec<Slot> = (start..=end).map(Slot::Missing).collect();
    let mut condemned: Vec<Arc<CachedPod>> = Vec::new();
    for pod in input.pods {
        let Some(ordinal) = member_ordinal(set, pod) else {
            continue;
        };
        if (start..=end).contains(&ordinal) {
            slots[(ordinal - start) as usize] = Slot::Pod(pod.clone());
        } else {
            condemned.push(pod.clone());
        }
    }
    // Highest ordinal first.
    condemned.sort_by_key(|p| std::cmp::Reverse(member_ordinal(set, p)));

    let first_unhealthy: Option<String> = slots
        .iter()
        .find(|s| !is_healthy(s))
        .map(|s| match s {
            Slot::Pod(p) => p.metadata.name.clone().unwrap_or_default(),
            Slot::Missing(ordinal) => pod_name(set, *ordinal),
        })
        .or_else(|| {
            condemned
                .iter()
                .rev()
                .find(|p| !is_running_and_ready(p) || is_terminating(p))
                .and_then(|p| p.metadata.name.clone())
        });

    // The replicas, lowest ordinal first.
    let mut steps = Vec::new();
    for slot in &slots {
        let (step, stop) = replica_step(input, slot, monotonic, min_ready, has_claims);
        steps.extend(step);
        if stop && monotonic {
            plan.phases.push(steps);
            return plan;
        }
    }
    plan.phases.push(steps);

    // Scale down, highest ordinal first.
    let mut steps = Vec::new();
    for pod in &condemned {
        if is_terminating(pod) {
            if monotonic {
                plan.phases.push(steps);
                return plan;
            }
            continue;
        }
        let is_first_unhealthy = first_unhealthy.as_deref() == pod.metadata.name.as_deref();
        if monotonic && !is_first_unhealthy && !is_running_and_available(pod, min_ready, input.now)
        {
            plan.phases.push(steps);
            return plan;
        }
        steps.push(Step::ScaleDown(pod.clone()));
        if monotonic {
            plan.phases.push(steps);
            return plan;
        }
    }
    plan.phases.push(steps);

    // The rolling update: the highest outdated Pod at or above the partition.
    let Some(partition) = rolling_partition(set) else {
        return plan;
    };
    let lowest = partition.max(0) as usize;
    for (index, slot) in slots.iter().enumerate().rev() {
        if index < lowest {
            break;
        }
        if let Slot::Pod(pod) = slot
            && pod_revision(pod) != Some(input.update_revision)
            && !is_terminating(pod)
        {
            plan.phases.push(vec![Step::Update(pod.clone())]);
            return plan;
        }
        if !is_healthy(slot) {
            break;
        }
    }
    plan
}

/// The step for one replica and whether an OrderedReady set must stop there.
fn replica_step(
    input: &PlanInput<'_>,
    slot: &Slot,
    monotonic: bool,
    min_ready: i32,
    has_claims: bool,
) -> (Option<Step>, bool) {
    let pod = match slot {
        Slot::Missing(ordinal) => {
            let step = Step::Create {
                ordinal: *ordinal,
                at_update_revision: created_at_update_revision(input.set, *ordinal),
            };
            return (Some(step), true);
        }
        Slot::Pod(pod) => pod,
    };
    if matches!(phase(pod), Some("Failed" | "Succeeded")) {
        let step = (!is_terminating(pod)).then(|| Step::Recreate(pod.clone()));
        return (step, true);
    }
    let mut step = None;
    if phase(pod) == Some("Pending") && has_claims {
        step = Some(Step::EnsureClaims(pod.clone()));
    }
    if monotonic
        && (is_terminating(pod)
            || !is_running_and_ready(pod)
            || !is_running_and_available(pod, min_ready, input.now))
    {
        return (step, true);
    }
    if !identity_matches(input.set, pod) || !storage_matches(input.set, pod) {
        // Relabelling also creates missing claims: one step covers both.
        step = Some(Step::FixIdentity(pod.clone()));
    }
    (step, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller_revision::POD_REVISION_LABEL;
    use crate::statefulset::identity::{POD_INDEX_LABEL, POD_NAME_LABEL};
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetUpdateStrategy,
    };
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn set(replicas: i32, parallel: bool) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                pod_management_policy: Some(
                    if parallel { "Parallel" } else { "OrderedReady" }.into(),
                ),
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateStatefulSetStrategy {
                        partition: Some(0),
                        max_unavailable: None,
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[derive(Clone, Copy)]
    enum State {
        Pending,
        Ready,
        NotReady,
        Failed,
        Terminating,
    }

    fn pod(ordinal: i32, state: State, revision: &str) -> Arc<CachedPod> {
        let name = format!("web-{ordinal}");
        let (phase, ready) = match state {
            State::Pending => ("Pending", false),
            State::Ready | State::Terminating => ("Running", true),
            State::NotReady => ("Running", false),
            State::Failed => ("Failed", false),
        };
        Arc::new(CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("ns".into()),
                labels: Some(
                    [
                        (POD_NAME_LABEL.to_string(), name),
                        (POD_INDEX_LABEL.to_string(), ordinal.to_string()),
                        (POD_REVISION_LABEL.to_string(), revision.to_string()),
                    ]
                    .into(),
                ),
                deletion_timestamp: matches!(state, State::Terminating)
                    .then_some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: Some(Default::default()),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }))
    }

    fn run(set: &StatefulSet, pods: &[Arc<CachedPod>]) -> Vec<String> {
        let plan = plan(&PlanInput {
            set,
            pods,
            update_revision: "new",
            now: jiff::Timestamp::from_second(1000).unwrap(),
        });
        plan.phases
            .iter()
            .flatten()
            .map(|s| match s {
                Step::Create { ordinal, .. } => format!("create {ordinal}"),
                Step::Recreate(p) => format!("recreate {}", p.metadata.name.as_ref().unwrap()),
                Step::EnsureClaims(p) => format!("claims {}", p.metadata.name.as_ref().unwrap()),
                Step::FixIdentity(p) => format!("fix {}", p.metadata.name.as_ref().unwrap()),
                Step::ScaleDown(p) => format!("scale-down {}", p.metadata.name.as_ref().unwrap()),
                Step::Update(p) => format!("update {}", p.metadata.name.as_ref().unwrap()),
            })
            .collect()
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time() {
        let s = set(3, false);
        assert_eq!(run(&s, &[]), ["create 0"]);
        assert!(run(&s, &[pod(0, State::Pending, "new")]).is_empty());
        assert!(run(&s, &[pod(0, State::NotReady, "new")]).is_empty());
        assert_eq!(run(&s, &[pod(0, State::Ready, "new")]), ["create 1"]);
        assert_eq!(
            run(
                &s,
                &[pod(0, State::Ready, "new"), pod(1, State::Ready, "new")]
            ),
            ["create 2"]
        );
    }

    #[test]
    fn parallel_creates_every_missing_pod() {
        let s = set(3, true);
        assert_eq!(run(&s, &[]), ["create 0", "create 1", "create 2"]);
        assert_eq!(
            run(&s, &[pod(1, State::Pending, "new")]),
            ["create 0", "create 2"]
        );
    }

    #[test]
    fn failed_pods_are_recreated() {
        let s = set(2, false);
        assert_eq!(
            run(
                &s,
                &[pod(0, State::Failed, "new"), pod(1, State::Ready, "new")]
            ),
            ["recreate web-0"]
        );
    }

    #[test]
    fn ordered_scale_down_removes_the_highest_first_and_waits() {
        let s = set(1, false);
        let pods = [
            pod(0, State::Ready, "new"),
            pod(1, State::Ready, "new"),
            pod(2, State::Ready, "new"),
        ];
        assert_eq!(run(&s, &pods), ["scale-down web-2"]);
        let pods = [
            pod(0, State::Ready, "new"),
            pod(1, State::Ready, "new"),
            pod(2, State::Terminating, "new"),
        ];
        assert!(run(&s, &pods).is_empty());
        // An unhealthy replica holds scale-down back unless it is the one to remove.
        let pods = [pod(0, State::NotReady, "new"), pod(1, State::Ready, "new")];
        assert!(run(&s, &pods).is_empty());
        let s0 = set(0, false);
        let pods = [pod(0, State::Ready, "new"), pod(1, State::NotReady, "new")];
        assert_eq!(run(&s0, &pods), ["scale-down web-1"]);
    }

    #[test]
    fn parallel_scale_down_removes_all_surplus_at_once() {
        let s = set(1, true);
        let pods = [
            pod(0, State::Ready, "new"),
            pod(1, State::NotReady, "new"),
            pod(2, State::Terminating, "new"),
            pod(3, State::Ready, "new"),
        ];
        assert_eq!(run(&s, &pods), ["scale-down web-3", "scale-down web-1"]);
    }

    #[test]
    fn rolling_update_goes_from_the_highest_ordinal_down() {
        let s = set(3, false);
        let all_old = [
            pod(0, State::Ready, "old"),
            pod(1, State::Ready, "old"),
            pod(2, State::Ready, "old"),
        ];
        assert_eq!(run(&s, &all_old), ["update web-2"]);
        let two_done = [
            pod(0, State::Ready, "old"),
            pod(1, State::Ready, "new"),
            pod(2, State::Ready, "new"),
        ];
        assert_eq!(run(&s, &two_done), ["update web-0"]);
        // A recreated Pod that is not ready yet holds the update back (in Parallel too).
        let waiting = [
            pod(0, State::Ready, "old"),
            pod(1, State::Ready, "old"),
            pod(2, State::NotReady, "new"),
        ];
        assert!(run(&set(3, true), &waiting).is_empty());
        let done = [
            pod(0, State::Ready, "new"),
            pod(1, State::Ready, "new"),
            pod(2, State::Ready, "new"),
        ];
        assert!(run(&s, &done).is_empty());
    }

    #[test]
    fn partition_and_on_delete_limit_the_update() {
        let mut s = set(3, false);
        s.spec
            .as_mut()
            .unwrap()
            .update_strategy
            .as_mut()
            .unwrap()
            .rolling_update = Some(RollingUpdateStatefulSetStrategy {
            partition: Some(2),
            max_unavailable: None,
        });
        let pods = [
            pod(0, State::Ready, "old"),
            pod(1, State::Ready, "old"),
            pod(2, State::Ready, "new"),
        ];
        assert!(run(&s, &pods).is_empty());
        assert!(!created_at_update_revision(&s, 1));
        assert!(created_at_update_revision(&s, 2));

        s.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        });
        let all_old = [
            pod(0, State::Ready, "old"),
            pod(1, State::Ready, "old"),
            pod(2, State::Ready, "old"),
        ];
        assert!(run(&s, &all_old).is_empty());
        assert!(created_at_update_revision(&s, 0));
    }

    #[test]
    fn start_ordinal_shifts_the_range() {
        let mut s = set(2, false);
        s.spec.as_mut().unwrap().ordinals =
            Some(k8s_openapi::api::apps::v1::StatefulSetOrdinals { start: Some(3) });
        assert_eq!(run(&s, &[]), ["create 3"]);
        // web-0 is outside [3, 4]: condemned once 3 and 4 are healthy.
        let pods = [
            pod(0, State::Ready, "new"),
            pod(3, State::Ready, "new"),
            pod(4, State::Ready, "new"),
        ];
        assert_eq!(run(&s, &pods), ["scale-down web-0"]);
    }

    #[test]
    fn wrong_identity_is_fixed() {
        let s = set(1, false);
        let mut p = (*pod(0, State::Ready, "new")).clone();
        p.metadata.labels.as_mut().unwrap().remove(POD_INDEX_LABEL);
        assert_eq!(run(&s, &[Arc::new(p)]), ["fix web-0"]);
    }
}
