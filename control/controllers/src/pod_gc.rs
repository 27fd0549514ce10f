//! The Pod garbage collector (kube-controller-manager's pod-garbage-collector-controller):
//! - Pods bound to a node that no longer exists are marked Failed (with the DisruptionTarget
//!   condition, reason DeletionByPodGC) and force-deleted (grace 0), after the node has been
//!   missing for a 40 s quarantine and a direct read confirms it is gone;
//! - terminating Pods never scheduled, and terminating Pods on a node that is not Ready and
//!   carries the `node.kubernetes.io/out-of-service` taint, are force-deleted;
//! - beyond --terminated-pod-gc-threshold finished (Succeeded or Failed) Pods, the oldest are
//!   deleted.

use baton_client::CachedPod;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::InformerEvent;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::Context;
use crate::failure_backoff::{FailureBackoff, log_failure};
use crate::pod_control::is_pod_terminal;
use crate::pods_by_node::node_of;

/// How long a node must be missing before its Pods are deleted (upstream's quarantineTime).
pub const QUARANTINE: Duration = Duration::from_secs(40);
/// The taint that lets terminating Pods of a node that is down be force-deleted.
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";
/// Deletions at once when trimming finished Pods.
const PARALLEL_DELETES: usize = 20;

/// Collecting a Pod failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectPodError {
    #[error("reading node {0}")]
    GetNode(String, #[source] kube::Error),
    #[error("marking pod {0} failed")]
    MarkFailed(String, #[source] kube::Error),
    #[error("force-deleting pod {0}")]
    Delete(String, #[source] kube::Error),
}

struct State {
    client: Client,
    nodes: Store<Node>,
    /// When each node was first found missing.
    missing_since: Mutex<HashMap<String, Instant>>,
    backoff: FailureBackoff,
}

/// Whether a node is out of service: not Ready and tainted out-of-service with NoExecute.
pub fn out_of_service(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| {
            t.iter()
                .any(|t| t.key == OUT_OF_SERVICE && t.effect == "NoExecute")
        });
    !ready && tainted
}

/// What the collector does with one Pod, given whether its node is in the cache (`None`: the
/// Pod is not bound) and whether that node is out of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Nothing to do.
    Keep,
    /// Its node is missing: check after the quarantine, then delete.
    Orphaned,
    /// Force-delete now.
    ForceDelete,
}

/// The fate of a Pod: orphaned when bound to a node not in the cache; force-deleted when
/// terminating and never scheduled, or terminating on an out-of-service node.
pub fn fate(pod: &CachedPod, node: Option<Option<&Node>>) -> Fate {
    let terminating = pod.metadata.deletion_timestamp.is_some();
    match node {
        None if terminating => Fate::ForceDelete,
        None => Fate::Keep,
        Some(None) => Fate::Orphaned,
        Some(Some(node)) if terminating && out_of_service(node) => Fate::ForceDelete,
        Some(Some(_)) => Fate::Keep,
    }
}

/// Registers the controller's subscriptions and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let pods_by_node = ctx.pods_by_node();
    let nodes = ctx.nodes.store();
    let by_pods = ctx
        .pods
        .subscribe(move |event: &InformerEvent<'_, CachedPod>| {
            let InformerEvent::Applied { new, .. } = event else {
                return None;
            };
            let node = node_of(new).map(|n| nodes.get(&ObjectRef::new(n)));
            (fate(new, node.as_ref().map(|n| n.as_deref())) != Fate::Keep)
                .then(|| ObjectRef::from_obj(*new))
        });
    let index = pods_by_node.clone();
    let by_nodes = ctx
        .nodes
        .subscribe(move |event: &InformerEvent<'_, Node>| match event {
            InformerEvent::Deleted(node) => index.pods_on(&node.name_any()),
            InformerEvent::Applied { old, new } => {
                if out_of_service(new) && !old.is_some_and(out_of_service) {
                    index.pods_on(&new.name_any())
                } else {
                    vec![]
                }
            }
        });
    // Finished Pods, counted, to trim them past the threshold.
    let threshold = ctx.terminated_pod_gc_threshold;
    let terminated = Arc::new(AtomicI64::new(0));
    let over = Arc::new(Notify::new());
    if threshold > 0 {
        let count = terminated.clone();
        let wake = over.clone();
        ctx.pods.on_event(move |event| {
            let (was, is) = match event {
                InformerEvent::Applied { old, new } => {
                    (old.is_some_and(is_pod_terminal), is_pod_terminal(new))
                }
                InformerEvent::Deleted(pod) => (is_pod_terminal(pod), false),
            };
            let delta = i64::from(is) - i64::from(was);
            if delta != 0 && count.fetch_add(delta, Ordering::Relaxed) + delta > threshold {
                wake.notify_one();
            }
        });
    }
    let state = Arc::new(State {
        client: ctx.client.clone(),
        nodes: ctx.nodes.store(),
        missing_since: Mutex::default(),
        backoff: FailureBackoff::default(),
    });
    let pods = ctx.pods.store();
    let concurrency = ctx.concurrent_syncs;
    async move {
        let trim = trim_terminated(
            state.client.clone(),
            pods.clone(),
            threshold,
            terminated,
            over,
        );
        let controller = Controller::for_shared_stream(futures::stream::empty(), pods)
            .with_config(kube::runtime::Config::default().concurrency(concurrency))
            .reconcile_on(by_pods)
            .reconcile_on(by_nodes)
            .run(reconcile, error_policy, state.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::trace!(error = %e, "pod gc reconcile");
                }
            });
        tokio::join!(trim, controller);
    }
    .boxed()
}

fn error_policy(pod: Arc<CachedPod>, err: &CollectPodError, state: Arc<State>) -> Action {
    let delay = state
        .backoff
        .next_delay(&crate::pod_control::key_of(pod.as_ref()));
    log_failure!(
        "pod garbage collection failed",
        &crate::pod_control::key_of(pod.as_ref()),
        err,
        delay,
    );
    Action::requeue(delay)
}

async fn reconcile(pod: Arc<CachedPod>, state: Arc<State>) -> Result<Action, CollectPodError> {
    let key = crate::pod_control::key_of(pod.as_ref());
    let node_name = node_of(&pod).map(str::to_string);
    let node = node_name
        .as_ref()
        .map(|n| state.nodes.get(&ObjectRef::new(n)));
    match fate(&pod, node.as_ref().map(|n| n.as_deref())) {
        Fate::Keep => {
            if let Some(name) = &node_name {
                state
                    .missing_since
                    .lock()
                    .expect("missing nodes")
                    .remove(name);
            }
            Ok(Action::await_change())
        }
        Fate::ForceDelete => {
            force_delete(&state.client, &pod, &key, false).await?;
            state.backoff.reset(&key);
            Ok(Action::await_change())
        }
        Fate::Orphaned => {
            let name = node_name.expect("orphaned pods are bound");
            let since = *state
                .missing_since
                .lock()
                .expect("missing nodes")
                .entry(name.clone())
                .or_insert_with(Instant::now);
            let elapsed = since.elapsed();
            if elapsed < QUARANTINE {
                return Ok(Action::requeue(QUARANTINE - elapsed));
            }
            // The cache may lag: only a direct read saying so makes the node gone.
            let api: Api<Node> = Api::all(state.client.clone());
            match api.get_metadata_opt(&name).await {
                Ok(Some(_)) => {
                    state
                        .missing_since
                        .lock()
                        .expect("missing nodes")
                        .remove(&name);
                    Ok(Action::await_change())
                }
                Ok(None) => {
                    tracing::info!(pod = %key, node = %name, "force-deleting a pod whose node is gone");
                    force_delete(&state.client, &pod, &key, true).await?;
                    state.backoff.reset(&key);
                    Ok(Action::await_change())
                }
                Err(e) => Err(CollectPodError::GetNode(name, e)),
            }
        }
    }
}

/// Upstream's markFailedAndDeletePod(WithCondition): a Pod not finished yet is marked Failed
/// (with the DisruptionTarget condition when its node is gone), then deleted with grace 0.
async fn force_delete(
    client: &Client,
    pod: &CachedPod,
    key: &str,
    node_gone: bool,
) -> Result<(), CollectPodError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    if !is_pod_terminal(pod) {
        let mut status = json!({ "phase": "Failed" });
        if node_gone {
            status["conditions"] = json!([{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByPodGC",
                "message": "PodGC: node no longer exists",
                "lastTransitionTime": Timestamp::now(),
            }]);
        }
        let patch = json!({ "metadata": { "uid": pod.metadata.uid }, "status": status });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(CollectPodError::MarkFailed(key.to_string(), e)),
        }
    }
    delete_now(&api, pod)
        .await
        .map_err(|e| CollectPodError::Delete(key.to_string(), e))
}

/// Deletes a Pod with grace 0 (a Pod already gone, or replaced, counts as deleted).
async fn delete_now(api: &Api<Pod>, pod: &CachedPod) -> Result<(), kube::Error> {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The finished Pods to delete to get back to `threshold`: the oldest by creation time.
pub fn oldest_beyond(mut finished: Vec<Arc<CachedPod>>, threshold: i64) -> Vec<Arc<CachedPod>> {
    let excess = finished.len() as i64 - threshold;
    if threshold <= 0 || excess <= 0 {
        return vec![];
    }
    finished.sort_by(|a, b| {
        let created = |p: &CachedPod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    finished.truncate(excess as usize);
    finished
}

/// Deletes the oldest finished Pods whenever there are more than `threshold` of them.
async fn trim_terminated(
    client: Client,
    pods: Store<CachedPod>,
    threshold: i64,
    count: Arc<AtomicI64>,
    over: Arc<Notify>,
) {
    if threshold <= 0 {
        return;
    }
    loop {
        if count.load(Ordering::Relaxed) <= threshold {
            over.notified().await;
            continue;
        }
        let finished: Vec<Arc<CachedPod>> = pods
            .state()
            .into_iter()
            .filter(|p| is_pod_terminal(p))
            .collect();
        let doomed = oldest_beyond(finished, threshold);
        if doomed.is_empty() {
            over.notified().await;
            continue;
        }
        tracing::info!(
            count = doomed.len(),
            threshold,
            "deleting the oldest finished pods"
        );
        let failures = futures::stream::iter(doomed)
            .map(|pod| {
                let api: Api<Pod> =
                    Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                async move { delete_now(&api, &pod).await.err() }
            })
            .buffer_unordered(PARALLEL_DELETES)
            .filter_map(|e| async move { e })
            .collect::<Vec<_>>()
            .await;
        if let Some(e) = failures.first() {
            tracing::warn!(failed = failures.len(), error = %e, "deleting finished pods");
        }
        // The deletions arrive through the watch; look again once they have (or once more
        // finish), not in a loop against a cache that has not caught up.
        let _ = tokio::time::timeout(Duration::from_secs(1), over.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{
        NodeCondition, NodeSpec, NodeStatus, PodSpec, PodStatus, Taint,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(name: &str, node: Option<&str>, phase: &str, created: &str) -> CachedPod {
        CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                creation_timestamp: Some(Time(created.parse().unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        })
    }

    fn node(ready: &str, out_of_service: bool) -> Node {
        Node {
            metadata: Default::default(),
            spec: Some(NodeSpec {
                taints: out_of_service.then(|| {
                    vec![Taint {
                        key: OUT_OF_SERVICE.into(),
                        effect: "NoExecute".into(),
                        value: Some("nodeshutdown".into()),
                        time_added: None,
                    }]
                }),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn fates() {
        let running = pod("a", Some("n1"), "Running", "2025-01-01T00:00:00Z");
        let mut terminating = running.clone();
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let healthy = node("True", false);
        let down = node("False", true);
        assert_eq!(fate(&running, Some(Some(&healthy))), Fate::Keep);
        assert_eq!(fate(&running, Some(None)), Fate::Orphaned);
        assert_eq!(fate(&terminating, Some(None)), Fate::Orphaned);
        assert_eq!(fate(&terminating, Some(Some(&healthy))), Fate::Keep);
        assert_eq!(fate(&terminating, Some(Some(&down))), Fate::ForceDelete);
        assert_eq!(fate(&running, Some(Some(&down))), Fate::Keep);
        assert_eq!(
            fate(&terminating, Some(Some(&node("True", true)))),
            Fate::Keep
        );
        let mut unscheduled = pod("b", None, "Pending", "2025-01-01T00:00:00Z");
        assert_eq!(fate(&unscheduled, None), Fate::Keep);
        unscheduled.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert_eq!(fate(&unscheduled, None), Fate::ForceDelete);
    }

    #[test]
    fn the_oldest_finished_pods_go_first() {
        let finished = vec![
            Arc::new(pod("c", Some("n"), "Succeeded", "2025-01-03T00:00:00Z")),
            Arc::new(pod("a", Some("n"), "Failed", "2025-01-01T00:00:00Z")),
            Arc::new(pod("b", Some("n"), "Succeeded", "2025-01-02T00:00:00Z")),
        ];
        let names = |v: Vec<Arc<CachedPod>>| v.iter().map(|p| p.name_any()).collect::<Vec<_>>();
        assert_eq!(names(oldest_beyond(finished.clone(), 1)), ["a", "b"]);
        assert!(oldest_beyond(finished.clone(), 3).is_empty());
        assert!(oldest_beyond(finished, 0).is_empty());
    }
}
