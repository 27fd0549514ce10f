//! The DaemonSet controller (kube-controller-manager's "daemonset-controller"): one Pod of
//! each DaemonSet on every eligible node. Pods are pinned to their node by a required node
//! affinity on the node's name and bound by the scheduler, as upstream does. Each reconcile:
//! find or make the ControllerRevision of the template; unless creations or deletions are
//! still unobserved, create the missing daemons and delete the misplaced, failed (with
//! backoff) and surplus ones; when nothing else is to do, take one RollingUpdate step; prune
//! old revisions; write the status `kubectl rollout status` reads.
//!
//! Woken by changes of its DaemonSets, of their Pods and ControllerRevisions, and by nodes
//! that appear, go, or change labels, taints or schedulability.

mod backoff;
mod eligibility;
mod history;
mod manage;
mod pods;
mod rolling;
mod status;

use crate::pod_control::{controller_changes, create_pods_recorded};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_client::{CachedPod, Informer, InformerEvent};
use futures::future::{BoxFuture, join_all};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use self::backoff::FailedPodBackoff;
use self::eligibility::Placement;
use crate::Context;
use crate::failure_backoff::FailureBackoff;
use crate::pod_control::{
    EXPECTATIONS_TIMEOUT, Expectations, api_error_message, controller_uid, key_of,
    observe_pod_event, publish_event,
};

const KIND: &str = "DaemonSet";
/// At most this many creations and deletions per reconcile (upstream's BurstReplicas).
const BURST_REPLICAS: usize = 250;

/// A DaemonSet could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum SyncDaemonSetError {
    #[error("invalid selector")]
    Selector(#[from] kube::core::ParseExpressionError),
    #[error(transparent)]
    History(#[from] history::ConstructHistoryError),
    #[error("rolling update")]
    RollingUpdate(#[from] rolling::IntOrPercentError),
    #[error("creating daemon pods")]
    CreatePods(#[source] kube::Error),
    #[error("deleting daemon pods")]
    DeletePods(#[source] kube::Error),
    #[error("pruning revision history")]
    CleanupHistory(#[source] kube::Error),
    #[error("updating status")]
    UpdateStatus(#[source] kube::Error),
}

struct DaemonSetController {
    client: Client,
    pods: Store<CachedPod>,
    nodes: Store<Node>,
    revisions: Arc<Informer<ControllerRevision>>,
    expectations: Expectations,
    failed_pods: FailedPodBackoff,
    errors: FailureBackoff,
    recorder: Recorder,
}

/// Registers the DaemonSet controller's watches and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let revisions = Arc::new(crate::controller_revision::informer(&ctx.client));
    let this = Arc::new(DaemonSetController {
        client: ctx.client.clone(),
        pods: ctx.pods.store(),
        nodes: ctx.nodes.store(),
        revisions: revisions.clone(),
        expectations: Expectations::default(),
        failed_pods: FailedPodBackoff::default(),
        errors: FailureBackoff::default(),
        recorder: ctx.recorder("daemonset-controller"),
    });
    let observer = this.clone();
    ctx.pods
        .on_event(move |event| observe_pod_event(&observer.expectations, KIND, event));
    let pod_changes = controller_changes::<DaemonSet, _>(&ctx.pods);
    let revision_changes = controller_changes::<DaemonSet, _>(&revisions);

    let controller = Controller::new(
        Api::<DaemonSet>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let daemonsets = controller.store();
    let node_changes = ctx.nodes.subscribe(move |event| {
        if node_matters(event) {
            daemonsets
                .state()
                .iter()
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect()
        } else {
            Vec::new()
        }
    });
    let concurrency = ctx.concurrent_syncs;
    async move {
        let run = async {
            revisions.wait_until_ready().await;
            controller
                .reconcile_on(pod_changes)
                .reconcile_on(revision_changes)
                .reconcile_on(node_changes)
                .with_config(Config::default().concurrency(concurrency))
                .run(reconcile, error_policy, this)
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "daemonset reconcile");
                    }
                })
                .await;
        };
        tokio::join!(revisions.run(), run);
    }
    .boxed()
}

/// Whether a node event can change where daemons belong.
fn node_matters(event: &InformerEvent<'_, Node>) -> bool {
    match event {
        InformerEvent::Applied {
            old: Some(old),
            new,
        } => {
            let taints = |n: &Node| n.spec.as_ref().and_then(|s| s.taints.clone());
            let unschedulable = |n: &Node| n.spec.as_ref().and_then(|s| s.unschedulable);
            old.metadata.labels != new.metadata.labels
                || taints(old) != taints(new)
                || unschedulable(old) != unschedulable(new)
        }
        _ => true,
    }
}

fn error_policy(
    ds: Arc<DaemonSet>,
    error: &SyncDaemonSetError,
    this: Arc<DaemonSetController>,
) -> Action {
    let key = key_of(ds.as_ref());
    let delay = this.errors.next_delay(&key);
    tracing::warn!(daemonset = %key, error = %error, retry_in = ?delay, "daemonset sync failed");
    Action::requeue(delay)
}

async fn reconcile(
    ds: Arc<DaemonSet>,
    this: Arc<DaemonSetController>,
) -> Result<Action, SyncDaemonSetError> {
    let key = key_of(ds.as_ref());
    let action = this.sync(&ds, &key).await?;
    this.errors.reset(&key);
    Ok(action)
}

impl DaemonSetController {
    async fn sync(&self, ds: &DaemonSet, key: &str) -> Result<Action, SyncDaemonSetError> {
        if ds.metadata.deletion_timestamp.is_some() {
            self.expectations.forget(key);
            return Ok(Action::await_change());
        }
        let spec = ds.spec.clone().unwrap_or_default();
        let selector = Selector::try_from(spec.selector.clone())?;
        if selector.selects_all() {
            publish_event(
                &self.recorder,
                &ds.object_ref(&()),
                true,
                "SelectingAll",
                "This daemon set is selecting all pods. A non-empty selector is required.".into(),
                None,
            )
            .await;
            return Ok(Action::await_change());
        }
        let namespace = ds.namespace().unwrap_or_default();
        let uid = ds.uid().unwrap_or_default();
        let owned: Vec<Arc<CachedPod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(&namespace)
                    && controller_uid(p.as_ref()) == Some(&uid)
            })
            .collect();
        let mut nodes = self.nodes.state();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let history = history::construct(&self.client, &self.revisions.store(), ds, &owned).await?;
        let hash = history.hash.as_str();
        let placement = Placement::of(&spec.template.spec.clone().unwrap_or_default());
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let updated = |p: &CachedPod| pods::is_updated(p, ds, hash);
        let mut retry_after = None;
        let mut outcome = Ok(());
        // Unobserved creations or deletions: only the status is brought up to date, and the
        // generation is not marked observed.
        let processed = self.expectations.satisfied(key);
        if processed {
            outcome = self
                .update(
                    ds,
                    key,
                    &spec,
                    &nodes,
                    &owned,
                    &placement,
                    &history,
                    &mut retry_after,
                )
                .await;
        }

        let counting: HashMap<String, Vec<Arc<CachedPod>>> =
            live_by_node(&owned).into_iter().collect();
        let counts = status::count(
            &placement,
            &nodes,
            &counting,
            min_ready,
            jiff::Timestamp::now(),
            updated,
        );
        let generation = if processed {
            ds.metadata.generation
        } else {
            None
        };
        if let Some(next) = status::next_status(ds.status.as_ref(), counts, generation) {
            self.write_status(ds, next).await?;
        }
        outcome?;
        if min_ready > 0 && counts.ready != counts.available {
            let wait = Duration::from_secs(min_ready as u64);
            retry_after = Some(retry_after.map_or(wait, |r: Duration| r.min(wait)));
        }
        if !processed {
            // Should the awaited Pod events never come, act once the expectations expire.
            retry_after =
                Some(retry_after.map_or(EXPECTATIONS_TIMEOUT, |r| r.min(EXPECTATIONS_TIMEOUT)));
        }
        Ok(retry_after.map_or_else(Action::await_change, Action::requeue))
    }

    /// The core loop, then one rolling update step when the core loop had nothing to do, then
    /// the pruning of old revisions (upstream's updateDaemonSet).
    #[allow(clippy::too_many_arguments)]
    async fn update(
        &self,
        ds: &DaemonSet,
        key: &str,
        spec: &k8s_openapi::api::apps::v1::DaemonSetSpec,
        nodes: &[Arc<Node>],
        owned: &[Arc<CachedPod>],
        placement: &Placement,
        history: &history::History,
        retry_after: &mut Option<Duration>,
    ) -> Result<(), SyncDaemonSetError> {
        let hash = history.hash.as_str();
        let updated = |p: &CachedPod| pods::is_updated(p, ds, hash);
        let uid = ds.uid().unwrap_or_default();
        let input = manage::ManageInput {
            placement,
            allows_surge: rolling::surge_and_unavailable(ds, 1)?.0 > 0,
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            now: jiff::Timestamp::now(),
        };
        let generation = ds
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .unwrap_or(0);
        let now = Instant::now();
        let plan = manage::plan(
            &input,
            nodes,
            &pods::by_node(owned),
            |node| {
                let backoff_key = format!("{uid}/{generation}/{node}");
                let wait = self.failed_pods.remaining(&backoff_key, now);
                if wait.is_none() {
                    self.failed_pods.record(&backoff_key, now);
                }
                wait
            },
            updated,
        );
        *retry_after = plan.retry_after;
        let regarding = ds.object_ref(&());
        for notice in &plan.notices {
            publish_event(
                &self.recorder,
                &regarding,
                notice.warning,
                notice.reason,
                notice.message.clone(),
                None,
            )
            .await;
        }
        let acted = !plan.create_on.is_empty() || !plan.delete.is_empty();
        self.sync_nodes(ds, key, plan.delete, plan.create_on, hash)
            .await?;
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        if !acted && rolling {
            let live = live_by_node(owned);
            let step = rolling::plan(ds, placement, nodes, &live, jiff::Timestamp::now(), updated)?;
            self.sync_nodes(ds, key, step.delete, step.create_on, hash)
                .await?;
        }
        history::cleanup(&self.client, ds, &history.old, owned)
            .await
            .map_err(SyncDaemonSetError::CleanupHistory)
    }

    /// Creates daemon Pods on `create_on` and deletes `delete`, at most BURST_REPLICAS of each,
    /// with expectations so that the next reconcile waits to see them.
    async fn sync_nodes(
        &self,
        ds: &DaemonSet,
        key: &str,
        mut delete: Vec<Arc<CachedPod>>,
        mut create_on: Vec<String>,
        hash: &str,
    ) -> Result<(), SyncDaemonSetError> {
        if delete.is_empty() && create_on.is_empty() {
            return Ok(());
        }
        create_on.truncate(BURST_REPLICAS);
        delete.truncate(BURST_REPLICAS);
        self.expectations.expect(key, create_on.len(), delete.len());
        let namespace = ds.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let regarding = ds.object_ref(&());

        let deletions = join_all(delete.iter().map(|pod| {
            let api = api.clone();
            let name = pod.name_any();
            async move { (api.delete(&name, &DeleteParams::default()).await, name) }
        }))
        .await;
        let mut delete_error = None;
        for (result, name) in deletions {
            let related = Some(pod_reference(&namespace, &name));
            match result {
                Ok(_) => {
                    publish_event(
                        &self.recorder,
                        &regarding,
                        false,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                        related,
                    )
                    .await
                }
                // Already gone: its deletion may have been seen before it was expected.
                Err(kube::Error::Api(s)) if s.code == 404 => self.expectations.deletion_failed(key),
                Err(e) => {
                    self.expectations.deletion_failed(key);
                    publish_event(
                        &self.recorder,
                        &regarding,
                        true,
                        "FailedDelete",
                        format!("Error deleting: {}", api_error_message(&e)),
                        related,
                    )
                    .await;
                    delete_error.get_or_insert(e);
                }
            }
        }

        let new_pods: Vec<Pod> = create_on
            .iter()
            .map(|node| pods::daemon_pod(ds, node, hash))
            .collect();
        let (_, create_error) = create_pods_recorded(
            &api,
            new_pods,
            &self.recorder,
            &regarding,
            &self.expectations,
            key,
        )
        .await;
        if let Some(e) = delete_error {
            return Err(SyncDaemonSetError::DeletePods(e));
        }
        if let Some(e) = create_error {
            return Err(SyncDaemonSetError::CreatePods(e));
        }
        Ok(())
    }

    /// Writes the status (on a conflict, once more onto the current object, as upstream).
    async fn write_status(
        &self,
        ds: &DaemonSet,
        status: k8s_openapi::api::apps::v1::DaemonSetStatus,
    ) -> Result<(), SyncDaemonSetError> {
        let api: Api<DaemonSet> =
            Api::namespaced(self.client.clone(), &ds.namespace().unwrap_or_default());
        let mut next = ds.clone();
        next.status = Some(status.clone());
        match api
            .replace_status(&ds.name_any(), &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let mut fresh = api
                    .get_status(&ds.name_any())
                    .await
                    .map_err(SyncDaemonSetError::UpdateStatus)?;
                let collision_count = fresh.status.as_ref().and_then(|s| s.collision_count);
                fresh.status = Some(k8s_openapi::api::apps::v1::DaemonSetStatus {
                    collision_count,
                    ..status
                });
                api.replace_status(&ds.name_any(), &PostParams::default(), &fresh)
                    .await
                    .map(|_| ())
                    .map_err(SyncDaemonSetError::UpdateStatus)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(SyncDaemonSetError::UpdateStatus(e)),
        }
    }
}

/// Pods by node, without the finished Pods already being deleted (upstream's
/// getNodesToDaemonPods without deleted terminal Pods), in a stable order.
fn live_by_node(owned: &[Arc<CachedPod>]) -> BTreeMap<String, Vec<Arc<CachedPod>>> {
    let live: Vec<Arc<CachedPod>> = owned
        .iter()
        .filter(|p| {
            let terminal = matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            !(terminal && p.metadata.deletion_timestamp.is_some())
        })
        .cloned()
        .collect();
    pods::by_node(&live).into_iter().collect()
}

fn pod_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_control::controller_ref_of;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    #[test]
    fn owners_are_found_by_controller_reference() {
        let meta = ObjectMeta {
            namespace: Some("ns".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: "agent".into(),
                uid: "u".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..Default::default()
        };
        assert_eq!(
            controller_ref_of::<DaemonSet>(&meta),
            Some(ObjectRef::new("agent").within("ns"))
        );
        assert_eq!(controller_ref_of::<DaemonSet>(&ObjectMeta::default()), None);
        assert_eq!(
            controller_ref_of::<k8s_openapi::api::batch::v1::Job>(&meta),
            None
        );
    }

    #[test]
    fn only_placement_relevant_node_changes_matter() {
        let node = |taint: bool, ready: &str| Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: taint.then(|| {
                    vec![Taint {
                        key: "k".into(),
                        effect: "NoSchedule".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            status: Some(k8s_openapi::api::core::v1::NodeStatus {
                phase: Some(ready.into()),
                ..Default::default()
            }),
        };
        let (a, b, c) = (node(false, "x"), node(false, "y"), node(true, "x"));
        assert!(!node_matters(&InformerEvent::Applied {
            old: Some(&a),
            new: &b
        }));
        assert!(node_matters(&InformerEvent::Applied {
            old: Some(&a),
            new: &c
        }));
        assert!(node_matters(&InformerEvent::Applied { old: None, new: &a }));
        assert!(node_matters(&InformerEvent::Deleted(&a)));
    }

    #[test]
    fn finished_pods_being_deleted_do_not_count() {
        let pod = |name: &str, phase: &str, deleting: bool| {
            Arc::new(CachedPod::from(Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    deletion_timestamp: deleting.then_some(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            jiff::Timestamp::UNIX_EPOCH,
                        ),
                    ),
                    ..Default::default()
                },
                spec: Some(k8s_openapi::api::core::v1::PodSpec {
                    node_name: Some("n".into()),
                    ..Default::default()
                }),
                status: Some(k8s_openapi::api::core::v1::PodStatus {
                    phase: Some(phase.into()),
                    ..Default::default()
                }),
            }))
        };
        let owned = [
            pod("a", "Failed", true),
            pod("b", "Running", true),
            pod("c", "Failed", false),
        ];
        let live = live_by_node(&owned);
        let names: Vec<_> = live["n"].iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["b", "c"]);
    }
}
