//! When a ready Pod counts as available (ready for longer than minReadySeconds): the time a
//! controller must look again to count it. Whether a Pod is active, ready or available at all
//! is pod_control's (upstream's IsPodActive, IsPodReady, IsPodAvailable).

use baton_client::CachedPod;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::pod_control::{is_pod_available, is_pod_ready};

/// Since when the Pod has been ready (its Ready condition's lastTransitionTime), if it is.
pub(crate) fn ready_since(pod: &CachedPod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

/// How long until the first of `pods` that is ready but not yet available becomes available:
/// the exact moment a controller must look again to count it (upstream requeues after
/// minReadySeconds as a whole; this is the precise time).
pub(crate) fn next_available_in<'a>(
    pods: impl IntoIterator<Item = &'a CachedPod>,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Option<Duration> {
    if min_ready_seconds <= 0 {
        return None;
    }
    pods.into_iter()
        .filter(|pod| is_pod_ready(pod) && !is_pod_available(pod, min_ready_seconds, now))
        .filter_map(ready_since)
        .map(|since| since + SignedDuration::from_secs(i64::from(min_ready_seconds)))
        .min()
        .map(|at| {
            let wait = now.duration_until(at);
            // Availability needs the instant to have passed: wake just after it.
            Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(1)
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    /// A test Pod: `phase`, ready since `ready_since` when given, on `node` when non-empty.
    pub(crate) fn pod(
        name: &str,
        node: &str,
        phase: &str,
        ready_since: Option<Timestamp>,
    ) -> CachedPod {
        CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.to_string()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_since.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(t)),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now: Timestamp = "2025-01-01T00:00:10Z".parse().unwrap();
        let since: Timestamp = "2025-01-01T00:00:05Z".parse().unwrap();
        let p = pod("a", "n", "Running", Some(since));
        assert!(is_pod_available(&p, 0, now));
        assert!(is_pod_available(&p, 4, now));
        assert!(
            !is_pod_available(&p, 5, now),
            "exactly minReadySeconds is not yet available"
        );
        assert!(!is_pod_available(&p, 8, now));
        assert_eq!(ready_since(&p), Some(since));
        let wait = next_available_in([&p], 8, now).unwrap();
        assert_eq!(wait, Duration::from_secs(3) + Duration::from_millis(1));
        assert_eq!(next_available_in([&p], 4, now), None);
        let unready = pod("b", "n", "Running", None);
        assert!(!is_pod_available(&unready, 0, now));
        assert_eq!(ready_since(&unready), None);
        assert_eq!(next_available_in([&unready], 8, now), None);
    }
}
