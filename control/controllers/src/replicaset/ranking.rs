//! Which Pods a ReplicaSet deletes first when it has too many, after upstream's
//! ActivePodsWithRanks: unassigned before assigned; Pending before Unknown before Running;
//! not ready before ready; lower `controller.kubernetes.io/pod-deletion-cost` first; Pods on
//! nodes crowded with related Pods first; the more recently ready first; more container
//! restarts first; newer before older. Times compare in logarithmic buckets of age
//! (upstream's LogarithmicScaleDown), so Pods of about the same age count as equally old.
//!
//! Upstream breaks ties between Pods of the same age bucket by uid right away; here the later
//! criteria (restarts, creation) still apply first and uid comes last, which keeps the order
//! total (a sort must never see a < b < c < a).

use baton_client::CachedPod;
use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;

use super::pods;
use crate::pod_control::{is_pod_active, is_pod_ready};

/// The annotation that makes a Pod cheaper (lower) or dearer (higher) to delete.
const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The `count` Pods of `active` to delete first. `related` are the active and inactive Pods of
/// every ReplicaSet with the same controller (the Deployment's other ReplicaSets): a Pod whose
/// node holds many of them goes first, spreading what remains.
pub(crate) fn pods_to_delete<'a>(
    active: &[&'a CachedPod],
    related: &[&CachedPod],
    count: usize,
    now: Timestamp,
) -> Vec<&'a CachedPod> {
    if count >= active.len() {
        return active.to_vec();
    }
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for pod in related.iter().filter(|p| is_pod_active(p)) {
        *on_node.entry(node_of(pod)).or_default() += 1;
    }
    let mut ranked: Vec<(DeletionKey<'a>, &'a CachedPod)> = active
        .iter()
        .map(|pod| {
            let colocated = on_node.get(node_of(pod)).copied().unwrap_or(0);
            (DeletionKey::of(pod, colocated, now), *pod)
        })
        .collect();
    ranked.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    ranked.into_iter().take(count).map(|(_, pod)| pod).collect()
}

fn node_of(pod: &CachedPod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// A Pod's place in the deletion order: smaller keys go first. Field order is priority order.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct DeletionKey<'a> {
    assigned: bool,
    phase: u8,
    ready: bool,
    deletion_cost: i32,
    /// More related Pods on the same node first.
    crowding: std::cmp::Reverse<usize>,
    ready_age: Age,
    /// Higher restart counts first: regular containers, then restartable init containers.
    restarts: std::cmp::Reverse<(i32, i32)>,
    created_age: Age,
    uid: &'a str,
}

/// An age in logarithmic buckets; an unknown time sorts first (upstream's "zero time").
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Age {
    Unknown,
    Bucket(i64),
}

impl Age {
    fn of(time: Option<Timestamp>, now: Timestamp) -> Age {
        match time {
            None => Age::Unknown,
            Some(t) => {
                let nanos = now.duration_since(t).as_nanos();
                if nanos <= 0 {
                    Age::Bucket(-1)
                } else {
                    Age::Bucket(i64::from((nanos as f64).log2() as i32))
                }
            }
        }
    }
}

impl<'a> DeletionKey<'a> {
    fn of(pod: &'a CachedPod, crowding: usize, now: Timestamp) -> Self {
        let status = pod.status.as_ref();
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            Some("Unknown") => 1,
            Some("Running") => 2,
            _ => 0,
        };
        let ready = is_pod_ready(pod);
        let deletion_cost = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DELETION_COST))
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(0);
        let regular = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .map(|c| c.restart_count)
            .max()
            .unwrap_or(0);
        let sidecars: Vec<&str> = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"))
            .map(|c| c.name.as_str())
            .collect();
        let sidecar = status
            .and_then(|s| s.init_container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| sidecars.contains(&c.name.as_str()))
            .map(|c| c.restart_count)
            .max()
            .unwrap_or(0);
        DeletionKey {
            assigned: !node_of(pod).is_empty(),
            phase,
            ready,
            deletion_cost,
            crowding: std::cmp::Reverse(crowding),
            // Only ready Pods compare by how long they have been ready.
            ready_age: if ready {
                Age::of(pods::ready_since(pod), now)
            } else {
                Age::Unknown
            },
            restarts: std::cmp::Reverse((regular, sidecar)),
            created_age: Age::of(pod.metadata.creation_timestamp.as_ref().map(|t| t.0), now),
            uid: pod.metadata.uid.as_deref().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicaset::pods::tests::pod;
    use baton_client::cached_pod::CachedContainerStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::SignedDuration;

    fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    fn ago(secs: i64) -> Timestamp {
        now() - SignedDuration::from_secs(secs)
    }

    fn names(pods: &[&CachedPod]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    fn order(pods: &[CachedPod]) -> Vec<String> {
        let refs: Vec<&CachedPod> = pods.iter().collect();
        names(&pods_to_delete(&refs, &refs, pods.len() - 1, now()))
    }

    #[test]
    fn unassigned_then_pending_then_unready_go_first() {
        let pods = vec![
            pod("running-ready", "n1", "Running", Some(ago(1000))),
            pod("running-unready", "n1", "Running", None),
            pod("pending", "n2", "Pending", None),
            pod("unknown", "n3", "Unknown", None),
            pod("unassigned", "", "Pending", None),
        ];
        assert_eq!(
            order(&pods),
            ["unassigned", "pending", "unknown", "running-unready"]
        );
    }

    #[test]
    fn deletion_cost_beats_crowding_and_age() {
        let mut cheap = pod("cheap", "n1", "Running", Some(ago(100_000)));
        cheap.metadata.annotations = Some([(DELETION_COST.to_string(), "-5".to_string())].into());
        let mut dear = pod("dear", "n2", "Running", Some(ago(10)));
        dear.metadata.annotations = Some([(DELETION_COST.to_string(), "100".to_string())].into());
        let plain = pod("plain", "n3", "Running", Some(ago(10)));
        let pods = [dear, plain, cheap];
        let refs: Vec<&CachedPod> = pods.iter().collect();
        assert_eq!(
            names(&pods_to_delete(&refs, &refs, 2, now())),
            ["cheap", "plain"]
        );
    }

    #[test]
    fn crowded_nodes_then_recently_ready_then_restarts_then_newer() {
        let lonely = pod("lonely", "n1", "Running", Some(ago(10)));
        let crowded_a = pod("crowded-a", "n2", "Running", Some(ago(100_000)));
        let crowded_b = pod("crowded-b", "n2", "Running", Some(ago(10)));
        // Related Pods of a sibling ReplicaSet make n2 the most crowded node.
        let sibling = pod("sibling", "n2", "Running", Some(ago(10)));
        let active = [&lonely, &crowded_a, &crowded_b];
        let related = [&lonely, &crowded_a, &crowded_b, &sibling];
        assert_eq!(
            names(&pods_to_delete(&active, &related, 2, now())),
            ["crowded-b", "crowded-a"]
        );

        let mut restarted = pod("restarted", "n1", "Running", Some(ago(10)));
        restarted.status.as_mut().unwrap().container_statuses = Some(vec![CachedContainerStatus {
            name: "c".into(),
            restart_count: 3,
            ..Default::default()
        }]);
        let mut newer = pod("newer", "n2", "Running", Some(ago(10)));
        newer.metadata.creation_timestamp = Some(Time(ago(20)));
        let mut older = pod("older", "n3", "Running", Some(ago(10)));
        older.metadata.creation_timestamp = Some(Time(ago(20_000)));
        let pods = [older, newer, restarted];
        let refs: Vec<&CachedPod> = pods.iter().collect();
        assert_eq!(
            names(&pods_to_delete(&refs, &[], 3 - 1, now())),
            ["restarted", "newer"]
        );
    }

    #[test]
    fn ready_times_of_similar_age_fall_through_to_later_criteria() {
        // 1000 s and 1010 s ago share a logarithmic bucket: the newer creation goes first.
        let mut a = pod("a", "n1", "Running", Some(ago(1000)));
        a.metadata.creation_timestamp = Some(Time(ago(50_000)));
        let mut b = pod("b", "n2", "Running", Some(ago(1010)));
        b.metadata.creation_timestamp = Some(Time(ago(2000)));
        let pods = [a, b];
        let refs: Vec<&CachedPod> = pods.iter().collect();
        assert_eq!(names(&pods_to_delete(&refs, &[], 1, now())), ["b"]);
    }

    #[test]
    fn deleting_all_keeps_every_pod() {
        let pods = [
            pod("a", "n1", "Running", None),
            pod("b", "", "Pending", None),
        ];
        let refs: Vec<&CachedPod> = pods.iter().collect();
        assert_eq!(pods_to_delete(&refs, &refs, 5, now()).len(), 2);
    }
}
