//! A Deployment's status (what `kubectl get deploy` and `kubectl rollout status` read):
//! replica counts summed over its ReplicaSets, observedGeneration, and the conditions
//! Available (MinimumReplicasAvailable / MinimumReplicasUnavailable), Progressing
//! (NewReplicaSetCreated, FoundNewReplicaSet, ReplicaSetUpdated, NewReplicaSetAvailable,
//! ProgressDeadlineExceeded, DeploymentPaused, DeploymentResumed, ReplicaSetCreateError) and
//! ReplicaFailure (carried over from a ReplicaSet that cannot create Pods).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::scale::{max_unavailable, saturating_sum};
use super::{desired, rs_available, rs_ready, rs_status_replicas};
use crate::replicaset::status::now_seconds;

pub(crate) const AVAILABLE: &str = "Available";
pub(crate) const PROGRESSING: &str = "Progressing";
pub(crate) const REPLICA_FAILURE: &str = "ReplicaFailure";

pub(crate) const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub(crate) const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub(crate) const RS_UPDATED: &str = "ReplicaSetUpdated";
pub(crate) const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub(crate) const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub(crate) const PAUSED: &str = "DeploymentPaused";
pub(crate) const RESUMED: &str = "DeploymentResumed";
pub(crate) const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";
const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

/// Whether the Deployment has a progress deadline (unset or i32::MAX means none).
pub(crate) fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|s| s != i32::MAX)
}

/// A condition stamped `now` (to the second, as stored).
pub(crate) fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    let at = Time(now_seconds(now));
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(at.clone()),
        last_transition_time: Some(at),
    }
}

/// The condition of `type_` in `status`.
pub(crate) fn get_condition<'a>(
    status: Option<&'a DeploymentStatus>,
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn reason_of(c: &DeploymentCondition) -> &str {
    c.reason.as_deref().unwrap_or_default()
}

/// Sets `cond` unless one with the same status and reason is there; keeps the transition time
/// when only the reason changes (upstream's SetDeploymentCondition).
pub(crate) fn set_condition(status: &mut DeploymentStatus, mut cond: DeploymentCondition) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some(current) = conditions.iter().find(|c| c.type_ == cond.type_) {
        if current.status == cond.status && current.reason == cond.reason {
            return;
        }
        if current.status == cond.status {
            cond.last_transition_time = current.last_transition_time.clone();
        }
    }
    conditions.retain(|c| c.type_ != cond.type_);
    conditions.push(cond);
}

/// Removes the condition of `type_`.
pub(crate) fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != type_);
        if conditions.is_empty() {
            status.conditions = None;
        }
    }
}

fn nonzero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

/// Counts summed over `all`, `new`'s as updatedReplicas, and the Available condition (upstream's
/// calculateStatus).
pub(crate) fn calculate(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let available = saturating_sum(all.iter().map(|rs| rs_available(rs)));
    let total = saturating_sum(all.iter().map(|rs| super::rs_spec(rs)));
    let current = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: nonzero(saturating_sum(all.iter().map(|rs| rs_status_replicas(rs)))),
        updated_replicas: nonzero(new.map_or(0, rs_status_replicas)),
        ready_replicas: nonzero(saturating_sum(all.iter().map(|rs| rs_ready(rs)))),
        available_replicas: nonzero(available),
        unavailable_replicas: nonzero(total.saturating_sub(available).max(0)),
        collision_count: current.collision_count,
        conditions: current.conditions,
        terminating_replicas: None,
    };
    if available >= desired(d).saturating_sub(max_unavailable(d)) {
        set_condition(
            &mut status,
            condition(
                AVAILABLE,
                "True",
                MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut status,
            condition(
                AVAILABLE,
                "False",
                MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    status
}

/// All of spec.replicas updated, available and alone, for the current generation.
pub(crate) fn deployment_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = desired(d);
    s.updated_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Whether `new` shows progress over the Deployment's recorded status: more updated, fewer old,
/// more ready or more available replicas.
pub(crate) fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = old
        .replicas
        .unwrap_or(0)
        .saturating_sub(old.updated_replicas.unwrap_or(0));
    let new_old = new
        .replicas
        .unwrap_or(0)
        .saturating_sub(new.updated_replicas.unwrap_or(0));
    new.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new_old < old_old
        || new.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || new.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

/// When the progress deadline passes, counted from the Progressing condition's last update.
fn deadline(d: &Deployment, cond: &DeploymentCondition) -> Option<Timestamp> {
    let seconds = d.spec.as_ref()?.progress_deadline_seconds?;
    let from = cond.last_update_time.as_ref()?.0;
    from.checked_add(SignedDuration::from_secs(i64::from(seconds)))
        .ok()
}

/// Whether the rollout has gone without progress past its deadline.
pub(crate) fn timed_out(d: &Deployment, s: &DeploymentStatus, now: Timestamp) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let Some(cond) = get_condition(Some(s), PROGRESSING) else {
        return false;
    };
    match reason_of(cond) {
        NEW_RS_AVAILABLE => false,
        TIMED_OUT => true,
        _ => deadline(d, cond).is_some_and(|at| at < now),
    }
}

fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// The status after a rollout step (upstream's syncRolloutStatus): counts, and the Progressing
/// condition moved to complete, progressing or timed out; ReplicaFailure copied from the
/// ReplicaSets (the new one's first).
pub(crate) fn rollout(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let mut status = calculate(d, all, new, now);
    if !has_progress_deadline(d) {
        remove_condition(&mut status, PROGRESSING);
    }
    let current = get_condition(d.status.as_ref(), PROGRESSING);
    let is_complete = status.replicas == status.updated_replicas
        && current.is_some_and(|c| reason_of(c) == NEW_RS_AVAILABLE);
    if has_progress_deadline(d) && !is_complete {
        let name = d.metadata.name.as_deref().unwrap_or_default();
        let new_name = new.and_then(|rs| rs.metadata.name.as_deref());
        if deployment_complete(d, &status) {
            let message = match new_name {
                Some(rs) => format!("ReplicaSet {} has successfully progressed.", quoted(rs)),
                None => format!("Deployment {} has successfully progressed.", quoted(name)),
            };
            set_condition(
                &mut status,
                condition(PROGRESSING, "True", NEW_RS_AVAILABLE, message, now),
            );
        } else if deployment_progressing(d, &status) {
            let message = match new_name {
                Some(rs) => format!("ReplicaSet {} is progressing.", quoted(rs)),
                None => format!("Deployment {} is progressing.", quoted(name)),
            };
            let mut cond = condition(PROGRESSING, "True", RS_UPDATED, message, now);
            // Progress refreshes lastUpdateTime even with an unchanged reason.
            if let Some(current) = current
                && current.status == "True"
            {
                cond.last_transition_time = current.last_transition_time.clone();
            }
            remove_condition(&mut status, PROGRESSING);
            set_condition(&mut status, cond);
        } else if timed_out(d, &status, now) {
            let message = match new_name {
                Some(rs) => format!("ReplicaSet {} has timed out progressing.", quoted(rs)),
                None => format!("Deployment {} has timed out progressing.", quoted(name)),
            };
            set_condition(
                &mut status,
                condition(PROGRESSING, "False", TIMED_OUT, message, now),
            );
        }
    }
    match replica_failure(all, new) {
        Some(failure) => set_condition(&mut status, failure),
        None => remove_condition(&mut status, REPLICA_FAILURE),
    }
    status
}

/// The first ReplicaFailure condition of the new ReplicaSet, else of any ReplicaSet.
fn replica_failure(all: &[&ReplicaSet], new: Option<&ReplicaSet>) -> Option<DeploymentCondition> {
    let failure_of = |rs: &ReplicaSet| {
        rs.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == REPLICA_FAILURE)
            .map(|c| DeploymentCondition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_update_time: c.last_transition_time.clone(),
                last_transition_time: c.last_transition_time.clone(),
            })
    };
    new.and_then(failure_of)
        .or_else(|| all.iter().find_map(|rs| failure_of(rs)))
}

/// When to look at the Deployment again to tell whether it timed out: just after its progress
/// deadline, unless it completed, already timed out, or has no deadline.
pub(crate) fn requeue_for_deadline(
    d: &Deployment,
    s: &DeploymentStatus,
    now: Timestamp,
) -> Option<Duration> {
    if !has_progress_deadline(d) {
        return None;
    }
    let cond = get_condition(Some(s), PROGRESSING)?;
    if deployment_complete(d, s) || matches!(reason_of(cond), TIMED_OUT | NEW_RS_AVAILABLE | PAUSED)
    {
        return None;
    }
    let at = deadline(d, cond)?;
    let wait = Duration::try_from(now.duration_until(at)).unwrap_or_default();
    // A second past it, as upstream, so the deadline has surely passed when we look.
    Some(wait + Duration::from_secs(1))
}

/// The status with the Progressing condition for a paused or resumed Deployment, if it changes
/// (upstream's checkPausedConditions; a timed-out rollout keeps its condition).
pub(crate) fn paused_conditions(d: &Deployment, now: Timestamp) -> Option<DeploymentStatus> {
    if !has_progress_deadline(d) {
        return None;
    }
    let current = get_condition(d.status.as_ref(), PROGRESSING);
    if current.is_some_and(|c| reason_of(c) == TIMED_OUT) {
        return None;
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let paused_cond = current.is_some_and(|c| reason_of(c) == PAUSED);
    let cond = if paused && !paused_cond {
        condition(
            PROGRESSING,
            "Unknown",
            PAUSED,
            "Deployment is paused".into(),
            now,
        )
    } else if !paused && paused_cond {
        condition(
            PROGRESSING,
            "Unknown",
            RESUMED,
            "Deployment is resumed".into(),
            now,
        )
    } else {
        return None;
    };
    let mut status = d.status.clone().unwrap_or_default();
    set_condition(&mut status, cond);
    Some(status)
}

/// Whether `new` differs from the recorded status (absent and zero counts alike).
pub(crate) fn changed(d: &Deployment, new: &DeploymentStatus) -> bool {
    normalized(d.status.clone().unwrap_or_default()) != normalized(new.clone())
}

fn normalized(mut s: DeploymentStatus) -> DeploymentStatus {
    for field in [
        &mut s.replicas,
        &mut s.updated_replicas,
        &mut s.ready_replicas,
        &mut s.available_replicas,
        &mut s.unavailable_replicas,
        &mut s.terminating_replicas,
    ] {
        if *field == Some(0) {
            *field = None;
        }
    }
    if s.conditions.as_ref().is_some_and(Vec::is_empty) {
        s.conditions = None;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::scale::tests::{deployment, replicaset};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn web(replicas: i32) -> Deployment {
        deployment(
            replicas,
            IntOrString::String("25%".into()),
            IntOrString::String("25%".into()),
        )
    }

    fn progressing(s: &DeploymentStatus) -> (String, String, String) {
        let c = get_condition(Some(s), PROGRESSING).expect("Progressing");
        (
            c.status.clone(),
            reason_of(c).to_string(),
            c.message.clone().unwrap_or_default(),
        )
    }

    #[test]
    fn counts_and_availability() {
        let d = web(4);
        let old = replicaset("web-old", 0, 2, 2, None);
        let new = replicaset("web-new", 1, 3, 1, None);
        let s = calculate(&d, &[&old, &new], Some(&new), at(0));
        assert_eq!(s.replicas, Some(5));
        assert_eq!(s.updated_replicas, Some(3));
        assert_eq!(s.available_replicas, Some(3));
        assert_eq!(s.unavailable_replicas, Some(2));
        assert_eq!(s.observed_generation, Some(1));
        let available = get_condition(Some(&s), AVAILABLE).unwrap();
        assert_eq!(available.status, "True", "3 >= 4 - 1");
        assert_eq!(
            available.message.as_deref(),
            Some("Deployment has minimum availability.")
        );
        let s = calculate(&d, &[&new], Some(&new), at(0));
        let available = get_condition(Some(&s), AVAILABLE).unwrap();
        assert_eq!(
            available.reason.as_deref(),
            Some("MinimumReplicasUnavailable")
        );
        assert_eq!(s.unavailable_replicas, Some(2));
    }

    #[test]
    fn progress_then_completion_then_no_more_estimates() {
        let mut d = web(2);
        let mut status = d.status.clone().unwrap();
        set_condition(
            &mut status,
            condition(
                PROGRESSING,
                "True",
                NEW_RS_CREATED,
                "Created new replica set \"web-new\"".into(),
                at(0),
            ),
        );
        d.status = Some(status);
        let new = replicaset("web-new", 1, 2, 1, None);
        let s = rollout(&d, &[&new], Some(&new), at(5));
        assert_eq!(
            progressing(&s),
            (
                "True".into(),
                RS_UPDATED.into(),
                "ReplicaSet \"web-new\" is progressing.".into()
            )
        );
        let cond = get_condition(Some(&s), PROGRESSING).unwrap();
        assert_eq!(cond.last_update_time.as_ref().unwrap().0, at(5));
        assert_eq!(
            cond.last_transition_time.as_ref().unwrap().0,
            at(0),
            "still True: transition kept"
        );
        d.status = Some(s);
        let new = replicaset("web-new", 1, 2, 2, None);
        let s = rollout(&d, &[&new], Some(&new), at(9));
        assert_eq!(
            progressing(&s),
            (
                "True".into(),
                NEW_RS_AVAILABLE.into(),
                "ReplicaSet \"web-new\" has successfully progressed.".into()
            )
        );
        assert!(deployment_complete(&d, &s));
        assert_eq!(requeue_for_deadline(&d, &s, at(9)), None);
        d.status = Some(s.clone());
        // Complete: a later look changes nothing (no lastUpdateTime churn).
        assert!(!changed(&d, &rollout(&d, &[&new], Some(&new), at(20))));
    }

    #[test]
    fn no_progress_past_the_deadline_times_out() {
        let mut d = web(2);
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(60);
        let new = replicaset("web-new", 1, 2, 0, None);
        let mut status = calculate(&d, &[&new], Some(&new), at(0));
        set_condition(
            &mut status,
            condition(
                PROGRESSING,
                "True",
                RS_UPDATED,
                "ReplicaSet \"web-new\" is progressing.".into(),
                at(0),
            ),
        );
        status.replicas = Some(2);
        status.updated_replicas = Some(2);
        d.status = Some(status);
        let s = rollout(&d, &[&new], Some(&new), at(30));
        assert_eq!(progressing(&s).1, RS_UPDATED, "within the deadline");
        assert!(!changed(&d, &s));
        assert_eq!(
            requeue_for_deadline(&d, &s, at(30)),
            Some(Duration::from_secs(31))
        );
        let s = rollout(&d, &[&new], Some(&new), at(61));
        assert_eq!(
            progressing(&s),
            (
                "False".into(),
                TIMED_OUT.into(),
                "ReplicaSet \"web-new\" has timed out progressing.".into()
            )
        );
        assert_eq!(requeue_for_deadline(&d, &s, at(61)), None);
    }

    #[test]
    fn replica_failures_are_carried_over() {
        let d = web(1);
        let mut new = replicaset("web-new", 1, 1, 0, None);
        new.status.as_mut().unwrap().conditions =
            Some(vec![k8s_openapi::api::apps::v1::ReplicaSetCondition {
                type_: REPLICA_FAILURE.into(),
                status: "True".into(),
                reason: Some("FailedCreate".into()),
                message: Some("quota".into()),
                last_transition_time: Some(Time(at(3))),
            }]);
        let s = rollout(&d, &[&new], Some(&new), at(4));
        let failure = get_condition(Some(&s), REPLICA_FAILURE).unwrap();
        assert_eq!(failure.reason.as_deref(), Some("FailedCreate"));
        assert_eq!(failure.last_update_time.as_ref().unwrap().0, at(3));
        let mut d2 = d.clone();
        d2.status = Some(s);
        let healthy = replicaset("web-new", 1, 1, 0, None);
        let s = rollout(&d2, &[&healthy], Some(&healthy), at(5));
        assert!(get_condition(Some(&s), REPLICA_FAILURE).is_none());
    }

    #[test]
    fn pausing_and_resuming() {
        let mut d = web(1);
        d.spec.as_mut().unwrap().paused = Some(true);
        let s = paused_conditions(&d, at(0)).unwrap();
        assert_eq!(
            progressing(&s),
            (
                "Unknown".into(),
                PAUSED.into(),
                "Deployment is paused".into()
            )
        );
        d.status = Some(s);
        assert!(paused_conditions(&d, at(1)).is_none());
        d.spec.as_mut().unwrap().paused = Some(false);
        let s = paused_conditions(&d, at(2)).unwrap();
        assert_eq!(
            progressing(&s),
            (
                "Unknown".into(),
                RESUMED.into(),
                "Deployment is resumed".into()
            )
        );
    }

    #[test]
    fn set_condition_keeps_same_status_and_reason() {
        let mut s = DeploymentStatus::default();
        set_condition(
            &mut s,
            condition(AVAILABLE, "True", MIN_AVAILABLE, "m".into(), at(0)),
        );
        set_condition(
            &mut s,
            condition(AVAILABLE, "True", MIN_AVAILABLE, "m".into(), at(5)),
        );
        assert_eq!(
            get_condition(Some(&s), AVAILABLE)
                .unwrap()
                .last_update_time
                .as_ref()
                .unwrap()
                .0,
            at(0)
        );
        set_condition(
            &mut s,
            condition(AVAILABLE, "True", "Other", "m".into(), at(6)),
        );
        let c = get_condition(Some(&s), AVAILABLE).unwrap();
        assert_eq!(c.last_update_time.as_ref().unwrap().0, at(6));
        assert_eq!(c.last_transition_time.as_ref().unwrap().0, at(0));
    }
}
