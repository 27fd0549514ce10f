//! The node lifecycle controller (kube-controller-manager's node-lifecycle-controller): nodes
//! heartbeat through their Lease in kube-node-lease (and their Ready condition). A node whose
//! last heartbeat is older than --node-monitor-grace-period (--node-startup-grace-period for
//! one that never reported Ready) gets its Ready, MemoryPressure, DiskPressure and PIDPressure
//! conditions set to Unknown ("Kubelet stopped posting node status."), and its Pods' Ready
//! condition set to False. Taints follow the conditions, as upstream's taint-based eviction and
//! TaintNodesByCondition: `node.kubernetes.io/unreachable` (Ready Unknown) or `not-ready`
//! (Ready False) with effect NoExecute, and NoSchedule taints for those and for memory, disk
//! and PID pressure, an unavailable network and an unschedulable node; they go when the
//! condition does. Each node is looked at again exactly when its heartbeat would expire.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use baton_client::{CachedPod, Informer, InformerEvent};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::Context;
use crate::failure_backoff::{FailureBackoff, log_failure};
use crate::pod_control::is_pod_ready;
use crate::pods_by_node::node_of;

/// The namespace of the node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Taint of a node whose Ready condition is Unknown.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a node whose Ready condition is False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Pods marked not ready at once.
const PARALLEL_POD_UPDATES: u16 = 20;
/// Taint of an unschedulable node.
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// The conditions a silent node has set to Unknown (NetworkUnavailable is left alone).
const CONDITIONS_TO_UNKNOWN: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// (condition type, status) -> NoSchedule taint key, as upstream's TaintNodesByCondition.
const NO_SCHEDULE_TAINTS: [(&str, &str, &str); 6] = [
    ("Ready", "False", NOT_READY),
    ("Ready", "Unknown", UNREACHABLE),
    (
        "MemoryPressure",
        "True",
        "node.kubernetes.io/memory-pressure",
    ),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "True",
        "node.kubernetes.io/network-unavailable",
    ),
];

/// Updating a node's health failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateNodeHealthError {
    #[error("updating the status of node {0}")]
    Status(String, #[source] kube::Error),
    #[error("updating the taints of node {0}")]
    Taints(String, #[source] kube::Error),
    #[error("marking pod {0} not ready")]
    MarkPod(String, #[source] kube::Error),
}

struct State {
    client: Client,
    leases: Informer<Lease>,
    nodes: Store<Node>,
    recorder: Recorder,
    grace: Duration,
    startup_grace: Duration,
    backoff: FailureBackoff,
}

/// Registers the controller's subscriptions and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let leases = Informer::new(
        Api::<Lease>::namespaced(ctx.client.clone(), LEASE_NAMESPACE),
        watcher::Config::default(),
    );
    // Renewals need no reconcile (each node is looked at when its heartbeat would expire);
    // a new or removed Lease does.
    let by_leases = leases.subscribe(|event| match event {
        InformerEvent::Applied { old: None, new } => Some(ObjectRef::<Node>::new(&new.name_any())),
        InformerEvent::Applied { .. } => None,
        InformerEvent::Deleted(lease) => Some(ObjectRef::<Node>::new(&lease.name_any())),
    });
    let by_nodes = ctx.nodes.subscribe(|event| match event {
        InformerEvent::Applied { new, .. } => Some(ObjectRef::from_obj(*new)),
        InformerEvent::Deleted(_) => None,
    });
    let state = Arc::new(State {
        client: ctx.client.clone(),
        leases,
        nodes: ctx.nodes.store(),
        recorder: ctx.recorder("node-controller"),
        grace: ctx.node_monitor_grace_period,
        startup_grace: ctx.node_startup_grace_period,
        backoff: FailureBackoff::default(),
    });
    // The Pods of a node whose Ready turned Unknown, and a Pod turning Ready on such a node,
    // are marked not ready (by a Pod-level loop, so that a node's Pods do not hold up the
    // health of the other nodes).
    let index = ctx.pods_by_node();
    let pods_of_lost_nodes = ctx.nodes.subscribe(move |event| match event {
        InformerEvent::Applied { old, new }
            if ready_status(new) == Some("Unknown")
                && old.is_none_or(|o| ready_status(o) != Some("Unknown")) =>
        {
            index.pods_on(&new.name_any())
        }
        _ => vec![],
    });
    let nodes = ctx.nodes.store();
    let ready_pods_on_lost_nodes = ctx.pods.subscribe(move |event| match event {
        InformerEvent::Applied { new, .. } if is_pod_ready(new) && on_lost_node(&nodes, new) => {
            Some(ObjectRef::from_obj(*new))
        }
        _ => None,
    });
    let nodes = ctx.nodes.store();
    let pods = ctx.pods.store();
    let concurrency = ctx.concurrent_syncs;
    async move {
        let work = async {
            state.leases.wait_until_ready().await;
            let health = Controller::for_shared_stream(futures::stream::empty(), nodes)
                .with_config(kube::runtime::Config::default().concurrency(concurrency))
                .reconcile_on(by_nodes)
                .reconcile_on(by_leases)
                .run(reconcile, error_policy, state.clone())
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "node lifecycle reconcile");
                    }
                });
            let pods = Controller::for_shared_stream(futures::stream::empty(), pods)
                .with_config(kube::runtime::Config::default().concurrency(PARALLEL_POD_UPDATES))
                .reconcile_on(pods_of_lost_nodes)
                .reconcile_on(ready_pods_on_lost_nodes)
                .run(reconcile_pod, pod_error_policy, state.clone())
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::trace!(error = %e, "marking pods not ready");
                    }
                });
            tokio::join!(health, pods);
        };
        tokio::join!(state.leases.run(), work);
    }
    .boxed()
}

fn ready_status(node: &Node) -> Option<&str> {
    condition(node, "Ready").map(|c| c.status.as_str())
}

/// Whether the Pod is bound to a node whose Ready condition is Unknown.
fn on_lost_node(nodes: &Store<Node>, pod: &CachedPod) -> bool {
    node_of(pod)
        .and_then(|n| nodes.get(&ObjectRef::new(n)))
        .is_some_and(|n| ready_status(&n) == Some("Unknown"))
}

fn pod_error_policy(pod: Arc<CachedPod>, err: &UpdateNodeHealthError, state: Arc<State>) -> Action {
    let delay = state
        .backoff
        .next_delay(&crate::pod_control::key_of(pod.as_ref()));
    log_failure!(
        "marking a pod not ready failed",
        &crate::pod_control::key_of(pod.as_ref()),
        err,
        delay,
    );
    Action::requeue(delay)
}

/// Upstream's MarkPodsNotReady, per Pod: a Pod Ready on an unreachable node gets Ready False.
async fn reconcile_pod(
    pod: Arc<CachedPod>,
    state: Arc<State>,
) -> Result<Action, UpdateNodeHealthError> {
    if is_pod_ready(&pod) && on_lost_node(&state.nodes, &pod) {
        let key = crate::pod_control::key_of(pod.as_ref());
        mark_pod_not_ready(&state, &pod)
            .await
            .map_err(|e| UpdateNodeHealthError::MarkPod(key.clone(), e))?;
        state.backoff.reset(&key);
    }
    Ok(Action::await_change())
}

fn error_policy(node: Arc<Node>, err: &UpdateNodeHealthError, state: Arc<State>) -> Action {
    let delay = state.backoff.next_delay(&node.name_any());
    log_failure!("updating node health failed", &node.name_any(), err, delay);
    Action::requeue(delay)
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// When a node was last heard from, and how long it may stay silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The newest of its Lease's renewTime and its Ready condition's lastHeartbeatTime (its
    /// creation when it has neither).
    pub last: Timestamp,
    /// The grace period that applies: the startup one until it reports Ready.
    pub grace: Duration,
}

impl Heartbeat {
    /// When the node goes silent for good.
    pub fn deadline(&self) -> Timestamp {
        let grace = SignedDuration::try_from(self.grace).unwrap_or(SignedDuration::MAX);
        self.last.checked_add(grace).unwrap_or(Timestamp::MAX)
    }

    /// Whether the node has been silent longer than its grace period at `now`.
    pub fn expired(&self, now: Timestamp) -> bool {
        now > self.deadline()
    }
}

/// A node's heartbeat from its Lease and its Ready condition.
pub fn heartbeat(
    node: &Node,
    lease: Option<&Lease>,
    grace: Duration,
    startup_grace: Duration,
) -> Heartbeat {
    let ready = condition(node, "Ready");
    let created = node
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let reported = ready
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    let last = [Some(created), renewed, reported]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(created);
    Heartbeat {
        last,
        grace: if ready.is_some() {
            grace
        } else {
            startup_grace
        },
    }
}

/// Sets the conditions of a silent node to Unknown, as upstream: existing ones that are not
/// Unknown yet get reason NodeStatusUnknown, missing ones are added with reason
/// NodeStatusNeverUpdated. Returns whether the Ready condition changed.
pub fn mark_unknown(
    conditions: &mut Vec<NodeCondition>,
    created: Option<&Time>,
    now: Timestamp,
) -> bool {
    let before = conditions.iter().find(|c| c.type_ == "Ready").cloned();
    for type_ in CONDITIONS_TO_UNKNOWN {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            None => conditions.push(NodeCondition {
                type_: type_.into(),
                status: "Unknown".into(),
                reason: Some("NodeStatusNeverUpdated".into()),
                message: Some("Kubelet never posted node status.".into()),
                last_heartbeat_time: created.cloned(),
                last_transition_time: Some(Time(now)),
            }),
            Some(c) if c.status != "Unknown" => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(Time(now));
            }
            Some(_) => {}
        }
    }
    conditions.iter().find(|c| c.type_ == "Ready") != before.as_ref()
}

/// The node's taints with the controller's own set to match its conditions, or `None` when
/// they already do. Taints kept keep their timeAdded; new ones are added at `now`.
pub fn reconcile_taints(
    taints: &[Taint],
    conditions: &[NodeCondition],
    unschedulable: bool,
    now: Timestamp,
) -> Option<Vec<Taint>> {
    let status_of = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.as_str())
    };
    let mut wanted: BTreeSet<(&str, &str)> = BTreeSet::new();
    match status_of("Ready") {
        Some("False") => {
            wanted.insert((NOT_READY, "NoExecute"));
        }
        Some("Unknown") => {
            wanted.insert((UNREACHABLE, "NoExecute"));
        }
        _ => {}
    }
    for (type_, status, key) in NO_SCHEDULE_TAINTS {
        if status_of(type_) == Some(status) {
            wanted.insert((key, "NoSchedule"));
        }
    }
    if unschedulable {
        wanted.insert((UNSCHEDULABLE, "NoSchedule"));
    }
    let managed = |t: &Taint| match t.effect.as_str() {
        "NoExecute" => t.key == NOT_READY || t.key == UNREACHABLE,
        "NoSchedule" => {
            t.key == UNSCHEDULABLE || NO_SCHEDULE_TAINTS.iter().any(|(_, _, k)| *k == t.key)
        }
        _ => false,
    };
    let mut next: Vec<Taint> = taints
        .iter()
        .filter(|t| !managed(t) || wanted.contains(&(t.key.as_str(), t.effect.as_str())))
        .cloned()
        .collect();
    for (key, effect) in &wanted {
        if !next.iter().any(|t| t.key == *key && t.effect == *effect) {
            next.push(Taint {
                key: key.to_string(),
                effect: effect.to_string(),
                value: None,
                time_added: Some(Time(now)),
            });
        }
    }
    let same = next.len() == taints.len()
        && next.iter().all(|t| {
            taints
                .iter()
                .any(|o| o.key == t.key && o.effect == t.effect)
        });
    (!same).then_some(next)
}

async fn reconcile(node: Arc<Node>, state: Arc<State>) -> Result<Action, UpdateNodeHealthError> {
    let name = node.name_any();
    let now = Timestamp::now();
    let lease = state
        .leases
        .store()
        .get(&ObjectRef::new(&name).within(LEASE_NAMESPACE));
    let beat = heartbeat(&node, lease.as_deref(), state.grace, state.startup_grace);
    let api: Api<Node> = Api::all(state.client.clone());
    let mut current = node.as_ref().clone();
    let was_ready = condition(&node, "Ready").is_some_and(|c| c.status == "True");
    if beat.expired(now) {
        let mut conditions = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if mark_unknown(
            &mut conditions,
            node.metadata.creation_timestamp.as_ref(),
            now,
        ) {
            let patch = json!({
                "metadata": { "resourceVersion": node.metadata.resource_version },
                "status": { "conditions": conditions },
            });
            current = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| UpdateNodeHealthError::Status(name.clone(), e))?;
            tracing::info!(node = %name, last_heartbeat = %beat.last, "node stopped posting status; marked Unknown");
            if was_ready {
                record_not_ready(&state.recorder, &node).await;
            }
        }
    }
    let conditions = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let spec = current.spec.clone().unwrap_or_default();
    let taints = spec.taints.clone().unwrap_or_default();
    if let Some(next) = reconcile_taints(
        &taints,
        &conditions,
        spec.unschedulable.unwrap_or(false),
        now,
    ) {
        let patch = json!({
            "metadata": { "resourceVersion": current.metadata.resource_version },
            "spec": { "taints": next },
        });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| UpdateNodeHealthError::Taints(name.clone(), e))?;
    }
    state.backoff.reset(&name);
    if beat.expired(now) {
        // Nothing changes until the node (or its Lease) does.
        return Ok(Action::await_change());
    }
    let wait = now.duration_until(beat.deadline());
    let wait = Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(1);
    Ok(Action::requeue(wait))
}

async fn record_not_ready(recorder: &Recorder, node: &Node) {
    let event = Event {
        type_: EventType::Normal,
        reason: "NodeNotReady".into(),
        note: Some(format!(
            "Node {} status is now: NodeNotReady",
            node.name_any()
        )),
        action: "NodeNotReady".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &node.object_ref(&())).await {
        tracing::debug!(error = %e, "recording NodeNotReady");
    }
}

/// Sets the Pod's Ready condition False (its reason and message kept), as of the cached Pod's
/// resourceVersion. A strategic patch of that one condition: the cached Pod keeps only the
/// conditions controllers read, so the list is never written whole.
async fn mark_pod_not_ready(state: &State, pod: &CachedPod) -> Result<(), kube::Error> {
    let patch = json!({
        "metadata": { "resourceVersion": pod.metadata.resource_version },
        "status": { "conditions": [{
            "type": "Ready",
            "status": "False",
            "lastTransitionTime": Time(Timestamp::now()),
        }]},
    });
    let api: Api<Pod> = Api::namespaced(state.client.clone(), &pod.namespace().unwrap_or_default());
    match api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    }
    let event = Event {
        type_: EventType::Warning,
        reason: "NodeNotReady".into(),
        note: Some("Node is not ready".into()),
        action: "MarkPodNotReady".into(),
        secondary: None,
    };
    if let Err(e) = state.recorder.publish(&event, &pod.object_ref(&())).await {
        tracing::debug!(error = %e, "recording NodeNotReady");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::NodeStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cond(type_: &str, status: &str, heartbeat: &str) -> NodeCondition {
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            last_heartbeat_time: Some(Time(t(heartbeat))),
            last_transition_time: Some(Time(t(heartbeat))),
            ..Default::default()
        }
    }

    fn node(conditions: Vec<NodeCondition>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                creation_timestamp: Some(Time(t("2025-01-01T00:00:00Z"))),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                conditions: Some(conditions),
                ..Default::default()
            }),
        }
    }

    fn lease(renewed: &str) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(t(renewed))),
                ..Default::default()
            }),
        }
    }

    const GRACE: Duration = Duration::from_secs(40);
    const STARTUP: Duration = Duration::from_secs(60);

    #[test]
    fn the_newest_of_lease_and_ready_heartbeat_counts() {
        let n = node(vec![cond("Ready", "True", "2025-01-01T00:01:00Z")]);
        let l = lease("2025-01-01T00:05:00Z");
        let beat = heartbeat(&n, Some(&l), GRACE, STARTUP);
        assert_eq!(beat.last, t("2025-01-01T00:05:00Z"));
        assert_eq!(beat.deadline(), t("2025-01-01T00:05:40Z"));
        assert!(!beat.expired(t("2025-01-01T00:05:40Z")));
        assert!(beat.expired(t("2025-01-01T00:05:41Z")));
        // An older Lease does not hide a newer status heartbeat.
        let beat = heartbeat(&n, Some(&lease("2025-01-01T00:00:30Z")), GRACE, STARTUP);
        assert_eq!(beat.last, t("2025-01-01T00:01:00Z"));
        // No Lease: the Ready heartbeat.
        assert!(heartbeat(&n, None, GRACE, STARTUP).expired(t("2025-01-01T00:01:41Z")));
    }

    #[test]
    fn a_node_that_never_reported_gets_the_startup_grace() {
        let n = node(vec![]);
        let beat = heartbeat(&n, None, GRACE, STARTUP);
        assert_eq!(beat.last, t("2025-01-01T00:00:00Z"));
        assert_eq!(beat.grace, STARTUP);
        assert!(!beat.expired(t("2025-01-01T00:00:59Z")));
        assert!(beat.expired(t("2025-01-01T00:01:01Z")));
    }

    #[test]
    fn silent_nodes_turn_unknown_once() {
        let now = t("2025-01-01T01:00:00Z");
        let mut conditions = vec![
            cond("Ready", "True", "2025-01-01T00:00:00Z"),
            cond("MemoryPressure", "False", "2025-01-01T00:00:00Z"),
            cond("NetworkUnavailable", "False", "2025-01-01T00:00:00Z"),
        ];
        assert!(mark_unknown(&mut conditions, None, now));
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(
            ready.message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );
        assert_eq!(ready.last_transition_time, Some(Time(now)));
        let disk = conditions
            .iter()
            .find(|c| c.type_ == "DiskPressure")
            .unwrap();
        assert_eq!(disk.reason.as_deref(), Some("NodeStatusNeverUpdated"));
        assert_eq!(
            disk.message.as_deref(),
            Some("Kubelet never posted node status.")
        );
        let net = conditions
            .iter()
            .find(|c| c.type_ == "NetworkUnavailable")
            .unwrap();
        assert_eq!(net.status, "False");
        // Already Unknown: nothing changes.
        assert!(!mark_unknown(
            &mut conditions,
            None,
            t("2025-01-01T02:00:00Z")
        ));
    }

    #[test]
    fn taints_follow_conditions() {
        let now = t("2025-01-01T01:00:00Z");
        let unknown = vec![cond("Ready", "Unknown", "2025-01-01T00:00:00Z")];
        let user = Taint {
            key: "dedicated".into(),
            effect: "NoSchedule".into(),
            value: Some("gpu".into()),
            time_added: None,
        };
        let taints = reconcile_taints(std::slice::from_ref(&user), &unknown, false, now).unwrap();
        let keys: Vec<(&str, &str)> = taints
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("dedicated", "NoSchedule"),
                (UNREACHABLE, "NoExecute"),
                (UNREACHABLE, "NoSchedule")
            ]
        );
        assert_eq!(taints[1].time_added, Some(Time(now)));
        // Stable while nothing changes.
        assert!(reconcile_taints(&taints, &unknown, false, now).is_none());
        // Ready False swaps unreachable for not-ready.
        let not_ready = vec![
            cond("Ready", "False", "2025-01-01T00:00:00Z"),
            cond("DiskPressure", "True", "2025-01-01T00:00:00Z"),
        ];
        let swapped = reconcile_taints(&taints, &not_ready, true, now).unwrap();
        let keys: BTreeSet<(&str, &str)> = swapped
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("dedicated", "NoSchedule"),
                (NOT_READY, "NoExecute"),
                (NOT_READY, "NoSchedule"),
                ("node.kubernetes.io/disk-pressure", "NoSchedule"),
                (UNSCHEDULABLE, "NoSchedule"),
            ]
            .into()
        );
        // Ready again: only the user's taint stays.
        let ready = vec![cond("Ready", "True", "2025-01-01T00:00:00Z")];
        assert_eq!(
            reconcile_taints(&swapped, &ready, false, now).unwrap(),
            vec![user]
        );
    }
}
