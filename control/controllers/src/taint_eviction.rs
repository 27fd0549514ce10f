//! The taint eviction controller (kube-controller-manager's taint-eviction-controller, the
//! NoExecuteTaintManager): a Pod on a node with a NoExecute taint it does not tolerate is
//! deleted at once; one that tolerates every such taint, some only for tolerationSeconds, is
//! deleted when the first of those runs out (counted from the taint's timeAdded). Before
//! deleting, the Pod gets the DisruptionTarget condition (reason DeletionByTaintManager) and an
//! event TaintManagerEviction "Marking for deletion Pod <ns>/<name>". A scheduled eviction
//! whose taint goes away is cancelled.

use baton_client::CachedPod;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_client::InformerEvent;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::Context;
use crate::failure_backoff::{FailureBackoff, log_failure};
use crate::pods_by_node::node_of;

/// Evicting a Pod failed.
#[derive(Debug, thiserror::Error)]
pub enum EvictPodError {
    #[error("marking pod {0} as a disruption target")]
    Condition(String, #[source] kube::Error),
    #[error("deleting pod {0}")]
    Delete(String, #[source] kube::Error),
}

struct State {
    client: Client,
    nodes: Store<Node>,
    recorder: Recorder,
    /// Pods with an eviction scheduled (`namespace/name`), to report a cancellation.
    scheduled: Mutex<HashSet<String>>,
    backoff: FailureBackoff,
}

/// The NoExecute taints of a node.
fn no_execute(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| {
            t.iter()
                .filter(|t| t.effect == "NoExecute")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn tolerations(pod: &CachedPod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

/// Registers the controller's subscriptions and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let pods_by_node = ctx.pods_by_node();
    let nodes = ctx.nodes.store();
    let by_pods = ctx
        .pods
        .subscribe(move |event: &InformerEvent<'_, CachedPod>| {
            let InformerEvent::Applied { old, new } = event else {
                return None;
            };
            let node = node_of(new)?;
            let relevant = old.is_none_or(|old| {
                node_of(old) != Some(node) || tolerations(old) != tolerations(new)
            });
            let tainted = nodes
                .get(&ObjectRef::new(node))
                .is_some_and(|n| !no_execute(&n).is_empty());
            (relevant && tainted && new.metadata.deletion_timestamp.is_none())
                .then(|| ObjectRef::from_obj(*new))
        });
    let index = pods_by_node.clone();
    let by_nodes = ctx.nodes.subscribe(move |event: &InformerEvent<'_, Node>| {
        let InformerEvent::Applied { old, new } = event else {
            return vec![];
        };
        let before = old.map(no_execute).unwrap_or_default();
        let after = no_execute(new);
        if before == after {
            return vec![];
        }
        index.pods_on(&new.name_any())
    });
    let state = Arc::new(State {
        client: ctx.client.clone(),
        nodes: ctx.nodes.store(),
        recorder: ctx.recorder("taint-eviction-controller"),
        scheduled: Mutex::default(),
        backoff: FailureBackoff::default(),
    });
    Controller::for_shared_stream(futures::stream::empty(), ctx.pods.store())
        .with_config(kube::runtime::Config::default().concurrency(ctx.concurrent_syncs))
        .reconcile_on(by_pods)
        .reconcile_on(by_nodes)
        .run(reconcile, error_policy, state)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::trace!(error = %e, "taint eviction reconcile");
            }
        })
        .boxed()
}

fn error_policy(pod: Arc<CachedPod>, err: &EvictPodError, state: Arc<State>) -> Action {
    let delay = state
        .backoff
        .next_delay(&crate::pod_control::key_of(pod.as_ref()));
    log_failure!(
        "taint eviction failed",
        &crate::pod_control::key_of(pod.as_ref()),
        err,
        delay,
    );
    Action::requeue(delay)
}

/// Upstream's ToleratesTaint: effect and key match when given, and the value for `Equal`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    if toleration
        .key
        .as_deref()
        .is_some_and(|k| !k.is_empty() && k != taint.key)
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// What to do with a Pod on a node with NoExecute taints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every taint is tolerated forever (or there are none).
    Keep,
    /// Some taint is not tolerated, or a toleration ran out.
    EvictNow,
    /// Tolerated until then.
    EvictAt(Timestamp),
}

/// The verdict for a Pod with `tolerations` on a node with NoExecute `taints` at `now`: each
/// taint is matched with the first toleration that tolerates it; the Pod goes when the
/// shortest tolerationSeconds, counted from its taint's timeAdded (or `now`), runs out.
pub fn verdict(tolerations: &[Toleration], taints: &[Taint], now: Timestamp) -> Verdict {
    let mut earliest: Option<Timestamp> = None;
    for taint in taints {
        let Some(toleration) = tolerations.iter().find(|t| tolerates(t, taint)) else {
            return Verdict::EvictNow;
        };
        let Some(seconds) = toleration.toleration_seconds else {
            continue;
        };
        let since = taint.time_added.as_ref().map_or(now, |t| t.0);
        let at = since
            .checked_add(SignedDuration::from_secs(seconds.max(0)))
            .unwrap_or(Timestamp::MAX);
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
    }
    match earliest {
        None => Verdict::Keep,
        Some(at) if at <= now => Verdict::EvictNow,
        Some(at) => Verdict::EvictAt(at),
    }
}

async fn reconcile(pod: Arc<CachedPod>, state: Arc<State>) -> Result<Action, EvictPodError> {
    let key = crate::pod_control::key_of(pod.as_ref());
    let taints = node_of(&pod)
        .and_then(|n| state.nodes.get(&ObjectRef::new(n)))
        .map(|n| no_execute(&n))
        .unwrap_or_default();
    let now = Timestamp::now();
    let decision = if pod.metadata.deletion_timestamp.is_some() || taints.is_empty() {
        Verdict::Keep
    } else {
        verdict(tolerations(&pod), &taints, now)
    };
    match decision {
        Verdict::Keep => {
            if state.scheduled.lock().expect("scheduled").remove(&key) {
                record(
                    &state.recorder,
                    &pod,
                    format!("Cancelling deletion of Pod {key}"),
                )
                .await;
            }
            state.backoff.reset(&key);
            Ok(Action::await_change())
        }
        Verdict::EvictAt(at) => {
            state.scheduled.lock().expect("scheduled").insert(key);
            let wait = Duration::try_from(now.duration_until(at)).unwrap_or_default();
            Ok(Action::requeue(wait + Duration::from_millis(1)))
        }
        Verdict::EvictNow => {
            evict(&state, &pod, &key).await?;
            state.scheduled.lock().expect("scheduled").remove(&key);
            state.backoff.reset(&key);
            Ok(Action::await_change())
        }
    }
}

async fn record(recorder: &Recorder, pod: &CachedPod, note: String) {
    let event = Event {
        type_: EventType::Normal,
        reason: "TaintManagerEviction".into(),
        note: Some(note),
        action: "Delete".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &pod.object_ref(&())).await {
        tracing::debug!(error = %e, "recording TaintManagerEviction");
    }
}

/// Upstream's addConditionAndDeletePod, with its event.
async fn evict(state: &State, pod: &CachedPod, key: &str) -> Result<(), EvictPodError> {
    tracing::info!(pod = %key, "evicting a pod from a NoExecute-tainted node");
    record(
        &state.recorder,
        pod,
        format!("Marking for deletion Pod {key}"),
    )
    .await;
    let api: Api<Pod> = Api::namespaced(state.client.clone(), &pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    let marked = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        });
    if !marked {
        let patch = json!({
            "metadata": { "uid": pod.metadata.uid },
            "status": { "conditions": [{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint",
                "lastTransitionTime": Timestamp::now(),
            }]},
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(EvictPodError::Condition(key.to_string(), e)),
        }
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(EvictPodError::Delete(key.to_string(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn taint(key: &str, added: Option<&str>) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: added.map(|a| Time(t(a))),
        }
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    #[test]
    fn matching_follows_upstream() {
        let unreachable = taint("node.kubernetes.io/unreachable", None);
        assert!(tolerates(
            &toleration("node.kubernetes.io/unreachable", None),
            &unreachable
        ));
        assert!(!tolerates(&toleration("other", None), &unreachable));
        let everything = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&everything, &unreachable));
        let no_schedule_only = Toleration {
            effect: Some("NoSchedule".into()),
            ..everything.clone()
        };
        assert!(!tolerates(&no_schedule_only, &unreachable));
        let valued = Taint {
            value: Some("a".into()),
            ..taint("k", None)
        };
        let equal = |v: &str| Toleration {
            key: Some("k".into()),
            operator: Some("Equal".into()),
            value: Some(v.into()),
            ..Default::default()
        };
        assert!(tolerates(&equal("a"), &valued));
        assert!(!tolerates(&equal("b"), &valued));
    }

    #[test]
    fn eviction_timing() {
        let now = t("2025-01-01T00:01:00Z");
        let taints = [taint(
            "node.kubernetes.io/unreachable",
            Some("2025-01-01T00:00:30Z"),
        )];
        // Not tolerated: now.
        assert_eq!(verdict(&[], &taints, now), Verdict::EvictNow);
        // Tolerated forever: kept.
        assert_eq!(
            verdict(
                &[toleration("node.kubernetes.io/unreachable", None)],
                &taints,
                now
            ),
            Verdict::Keep
        );
        // 300 s from when the taint was added.
        assert_eq!(
            verdict(
                &[toleration("node.kubernetes.io/unreachable", Some(300))],
                &taints,
                now
            ),
            Verdict::EvictAt(t("2025-01-01T00:05:30Z"))
        );
        // Already ran out.
        assert_eq!(
            verdict(
                &[toleration("node.kubernetes.io/unreachable", Some(10))],
                &taints,
                now
            ),
            Verdict::EvictNow
        );
        // Without timeAdded, counted from now.
        let fresh = [taint("node.kubernetes.io/unreachable", None)];
        assert_eq!(
            verdict(
                &[toleration("node.kubernetes.io/unreachable", Some(2))],
                &fresh,
                now
            ),
            Verdict::EvictAt(t("2025-01-01T00:01:02Z"))
        );
        // Two taints: the shortest toleration wins; one untolerated taint evicts at once.
        let two = [
            taint("a", Some("2025-01-01T00:00:00Z")),
            taint("b", Some("2025-01-01T00:00:50Z")),
        ];
        assert_eq!(
            verdict(
                &[toleration("a", Some(600)), toleration("b", Some(60))],
                &two,
                now
            ),
            Verdict::EvictAt(t("2025-01-01T00:01:50Z"))
        );
        assert_eq!(
            verdict(&[toleration("a", None)], &two, now),
            Verdict::EvictNow
        );
    }
}
