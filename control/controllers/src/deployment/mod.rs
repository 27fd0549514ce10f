//! The Deployment controller (kube-controller-manager's "deployment-controller"): runs each
//! Deployment's Pod template through ReplicaSets named `<deployment>-<pod-template-hash>`,
//! rolling from old to new ones by the RollingUpdate or Recreate strategy, scaling them
//! proportionally when the Deployment is scaled mid-rollout, keeping revisions for
//! `kubectl rollout history` and `undo`, and reporting progress against
//! progressDeadlineSeconds in the status `kubectl rollout status` reads.
//!
//! It watches Deployments and ReplicaSets (its own informers) and, for Recreate, the shared
//! Pod cache (the new ReplicaSet waits for the old Pods to be gone).

mod hash;
mod recreate;
mod revisions;
mod rolling;
pub(crate) mod scale;
mod status;
mod sync;

use std::cmp::Ordering;
use std::sync::Arc;

use baton_client::{CachedPod, Informer, InformerEvent};
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::core::{ParseExpressionError, Selector, SelectorExt};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::Context;
use crate::failure_backoff::FailureBackoff;
use crate::pod_control;
use crate::replicaset::claim::ClaimError;
use crate::replicaset::events::{EventType, EventWriter};
use sync::Rollout;

const COMPONENT: &str = "deployment-controller";

/// Syncing a Deployment failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncDeploymentError {
    #[error("deployment {deployment}: invalid selector")]
    Selector {
        deployment: String,
        #[source]
        source: ParseExpressionError,
    },
    #[error("deployment {deployment}: claiming replica sets")]
    Claim {
        deployment: String,
        #[source]
        source: ClaimError,
    },
    #[error("deployment {deployment}: updating it")]
    UpdateDeployment {
        deployment: String,
        #[source]
        source: kube::Error,
    },
    #[error("deployment {deployment}: updating status")]
    UpdateStatus {
        deployment: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating replica set {replicaset}")]
    CreateReplicaSet {
        replicaset: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "deployment {deployment}: replica set {replicaset} exists with another template; collisionCount raised"
    )]
    HashCollision {
        deployment: String,
        replicaset: String,
    },
    #[error("updating replica set {replicaset}")]
    UpdateReplicaSet {
        replicaset: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting replica set {replicaset}")]
    DeleteReplicaSet {
        replicaset: String,
        #[source]
        source: kube::Error,
    },
}

impl SyncDeploymentError {
    /// A write lost a race with another writer (the retry reads the newer object).
    fn is_conflict(&self) -> bool {
        match self {
            SyncDeploymentError::UpdateDeployment { source, .. }
            | SyncDeploymentError::UpdateStatus { source, .. }
            | SyncDeploymentError::UpdateReplicaSet { source, .. } => {
                matches!(source, kube::Error::Api(s) if s.code == 409)
            }
            SyncDeploymentError::HashCollision { .. } => true,
            _ => false,
        }
    }
}

/// spec.replicas of a Deployment (1 when unset, as defaulted).
pub(crate) fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// spec.replicas of a ReplicaSet (1 when unset, as defaulted).
pub(crate) fn rs_spec(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// status.replicas of a ReplicaSet.
pub(crate) fn rs_status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

/// status.readyReplicas of a ReplicaSet.
pub(crate) fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// status.availableReplicas of a ReplicaSet.
pub(crate) fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// Whether the Deployment rolls (RollingUpdate, the default) rather than recreates.
pub(crate) fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        != Some("Recreate")
}

/// Older first; same time, by name (upstream's ReplicaSetsByCreationTimestamp).
pub(crate) fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    a.metadata
        .creation_timestamp
        .cmp(&b.metadata.creation_timestamp)
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// The Deployment that controls `rs`, by name.
fn controlling_deployment(rs: &ReplicaSet) -> Option<&str> {
    rs.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .filter(|r| r.kind == "Deployment" && r.api_version.starts_with("apps/"))
        .map(|r| r.name.as_str())
}

fn selector_of(d: &Deployment) -> Result<Selector, ParseExpressionError> {
    d.spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default()
        .try_into()
}

/// The controller's state shared by its reconciles and informer handlers.
pub(crate) struct Deployments {
    client: Client,
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    pods: Store<CachedPod>,
    events: EventWriter,
    backoff: FailureBackoff,
}

impl std::fmt::Debug for Deployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployments").finish_non_exhaustive()
    }
}

/// Registers the controller's watches and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let client = ctx.client.clone();
    let deployments = Arc::new(Informer::<Deployment>::new(
        Api::all(client.clone()),
        watcher::Config::default(),
    ));
    let replicasets = Arc::new(Informer::<ReplicaSet>::new(
        Api::all(client.clone()),
        watcher::Config::default(),
    ));
    let (events, event_writer) = EventWriter::new(client.clone(), COMPONENT);
    let state = Arc::new(Deployments {
        client,
        deployments: deployments.store(),
        replicasets: replicasets.store(),
        pods: ctx.pods.store(),
        events,
        backoff: FailureBackoff::default(),
    });

    let d_triggers = deployments.subscribe(|event| match event {
        InformerEvent::Applied { new, .. } => Some(ObjectRef::from_obj(*new)),
        InformerEvent::Deleted(_) => None,
    });
    let forget = state.clone();
    deployments.on_event(move |event| {
        if let InformerEvent::Deleted(d) = event {
            forget.backoff.reset(&pod_control::key_of(*d));
        }
    });
    let s = state.clone();
    let rs_triggers = replicasets.subscribe(move |event| s.deployments_for_rs_event(event));
    let s = state.clone();
    let pod_triggers = ctx
        .pods
        .subscribe(move |event| s.deployments_for_pod_event(event));

    let controller = Controller::for_stream(
        futures::stream::pending::<Result<Deployment, watcher::Error>>(),
        deployments.store(),
    )
    .reconcile_on(d_triggers)
    .reconcile_on(rs_triggers)
    .reconcile_on(pod_triggers)
    .with_config(Config::default().concurrency(ctx.concurrent_syncs));

    Box::pin(async move {
        let run = async {
            // A Deployment must see its ReplicaSets before it decides to create one.
            replicasets.wait_until_ready().await;
            controller
                .run(reconcile, error_policy, state)
                .for_each(|_| futures::future::ready(()))
                .await;
        };
        tokio::join!(deployments.run(), replicasets.run(), run, event_writer);
    })
}

impl Deployments {
    /// The Deployments to sync for a ReplicaSet change: its controller, and for an orphan that
    /// appeared or changed labels, every Deployment that selects it.
    fn deployments_for_rs_event(
        &self,
        event: &InformerEvent<'_, ReplicaSet>,
    ) -> Vec<ObjectRef<Deployment>> {
        let mut refs: Vec<ObjectRef<Deployment>> = Vec::new();
        for rs in event.objects() {
            if let Some(name) = controlling_deployment(rs) {
                let namespace = rs.namespace().unwrap_or_default();
                let r = ObjectRef::new(name).within(&namespace);
                if !refs.contains(&r) {
                    refs.push(r);
                }
            }
        }
        if let InformerEvent::Applied { old, new } = event
            && controlling_deployment(new).is_none()
            && new.metadata.deletion_timestamp.is_none()
            && old.is_none_or(|old| {
                old.metadata.labels != new.metadata.labels
                    || old.metadata.owner_references != new.metadata.owner_references
            })
        {
            let namespace = new.namespace();
            for d in self.deployments.state() {
                if d.namespace() == namespace
                    && selector_of(&d).is_ok_and(|s| !s.selects_all() && s.matches(new.labels()))
                {
                    refs.push(ObjectRef::from_obj(d.as_ref()));
                }
            }
        }
        refs
    }

    /// The Recreate Deployment to sync when one of its old Pods is gone or finished.
    fn deployments_for_pod_event(
        &self,
        event: &InformerEvent<'_, CachedPod>,
    ) -> Option<ObjectRef<Deployment>> {
        let finished = |pod: &CachedPod| {
            matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        };
        let pod = match event {
            InformerEvent::Deleted(pod) => *pod,
            InformerEvent::Applied { old, new } if finished(new) && !old.is_some_and(finished) => {
                *new
            }
            InformerEvent::Applied { .. } => return None,
        };
        let namespace = pod.namespace().unwrap_or_default();
        let rs_name = crate::replicaset::controlling_rs(pod)?;
        let rs = self
            .replicasets
            .get(&ObjectRef::new(rs_name).within(&namespace))?;
        let d_name = controlling_deployment(&rs)?;
        let d = self
            .deployments
            .get(&ObjectRef::new(d_name).within(&namespace))?;
        if is_rolling(&d) {
            return None;
        }
        Some(ObjectRef::from_obj(d.as_ref()))
    }

    async fn sync(&self, d: &Deployment) -> Result<Action, SyncDeploymentError> {
        let key = pod_control::key_of(d);
        let selector = selector_of(d).map_err(|source| SyncDeploymentError::Selector {
            deployment: key.clone(),
            source,
        })?;
        let mut rollout = Rollout::new(self, d.clone());
        if selector.selects_all() {
            self.events.emit(
                kube::Resource::object_ref(d, &()),
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.".into(),
            );
            let observed = d.status.as_ref().and_then(|s| s.observed_generation);
            if observed < d.metadata.generation {
                let mut s = d.status.clone().unwrap_or_default();
                s.observed_generation = d.metadata.generation;
                rollout.write_status(s).await?;
            }
            return Ok(Action::await_change());
        }
        rollout.claim(&selector).await?;
        if d.metadata.deletion_timestamp.is_some() {
            rollout.sync_status_only().await?;
            return Ok(Action::await_change());
        }
        rollout.check_paused_conditions().await?;
        if rollout
            .d
            .spec
            .as_ref()
            .and_then(|s| s.paused)
            .unwrap_or(false)
        {
            rollout.sync().await?;
            return Ok(Action::await_change());
        }
        if revisions::rollback_to(&rollout.d).is_some() {
            rollout.rollback().await?;
            return Ok(Action::await_change());
        }
        if rollout.is_scaling_event().await? {
            rollout.sync().await?;
            return Ok(Action::await_change());
        }
        let requeue = if is_rolling(&rollout.d) {
            rollout.rolling().await?
        } else {
            rollout.recreate().await?
        };
        Ok(requeue.map_or_else(Action::await_change, Action::requeue))
    }
}

async fn reconcile(
    d: Arc<Deployment>,
    ctl: Arc<Deployments>,
) -> Result<Action, SyncDeploymentError> {
    let action = ctl.sync(&d).await?;
    ctl.backoff.reset(&pod_control::key_of(d.as_ref()));
    Ok(action)
}

fn error_policy(d: Arc<Deployment>, error: &SyncDeploymentError, ctl: Arc<Deployments>) -> Action {
    if error.is_conflict() {
        tracing::debug!(error = %error, "deployment or replica set changed meanwhile; retrying");
    } else {
        tracing::warn!(error = %error, cause = ?std::error::Error::source(error).map(ToString::to_string), "syncing deployment failed");
    }
    Action::requeue(ctl.backoff.next_delay(&pod_control::key_of(d.as_ref())))
}
