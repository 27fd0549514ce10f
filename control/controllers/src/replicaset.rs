//! The ReplicaSet controller (kube-controller-manager's "replicaset-controller"): keeps
//! `spec.replicas` active Pods for every ReplicaSet, creating missing ones from its template
//! in slow-start batches and deleting extras in upstream's order; adopts matching orphans and
//! releases Pods that no longer match; and reports replicas, fullyLabeledReplicas,
//! readyReplicas, availableReplicas and the ReplicaFailure condition in its status.
//!
//! Expectations keep a stale cache from creating or deleting twice: after acting, a
//! ReplicaSet waits until the Pod informer has shown it the creations and deletions it made.

pub(crate) mod claim;
pub(crate) mod events;
pub(crate) mod pods;
mod ranking;
pub(crate) mod status;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use baton_client::{CachedPod, Informer, InformerEvent};
use futures::StreamExt;
use futures::future::{BoxFuture, join_all};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::core::{ParseExpressionError, Selector, SelectorExt};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use crate::Context;
use crate::failure_backoff::FailureBackoff;
use crate::pod_control::{self, Expectations};
use events::{EventType, EventWriter};

/// Upstream's burstReplicas: at most this many Pods created or deleted per sync.
const BURST_REPLICAS: usize = 500;
const COMPONENT: &str = "replicaset-controller";

/// Syncing a ReplicaSet failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncReplicaSetError {
    #[error("replicaset {rs}: invalid selector")]
    Selector {
        rs: String,
        #[source]
        source: ParseExpressionError,
    },
    #[error("replicaset {rs}: claiming pods")]
    Claim {
        rs: String,
        #[source]
        source: claim::ClaimError,
    },
    #[error("replicaset {rs}: creating pods")]
    CreatePods {
        rs: String,
        #[source]
        source: kube::Error,
    },
    #[error("replicaset {rs}: deleting pods")]
    DeletePods {
        rs: String,
        #[source]
        source: kube::Error,
    },
    #[error("replicaset {rs}: updating status")]
    UpdateStatus {
        rs: String,
        #[source]
        source: kube::Error,
    },
}

impl SyncReplicaSetError {
    /// What the ReplicaFailure condition says about a failed creation or deletion.
    fn condition_message(&self) -> String {
        match self {
            SyncReplicaSetError::CreatePods { source, .. }
            | SyncReplicaSetError::DeletePods { source, .. } => api_message(source),
            other => other.to_string(),
        }
    }

    /// A write lost a race with another writer (the next sync sees the newer object).
    fn is_conflict(&self) -> bool {
        matches!(self, SyncReplicaSetError::UpdateStatus { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// The message of an API error (`pods "web-" is forbidden: ...`), as upstream prints it.
pub(crate) fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    }
}

/// Whether a creation failed because the namespace is being deleted (nothing to report).
pub(crate) fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.details.as_ref().is_some_and(|d| {
        d.causes.iter().any(|c| c.reason == "NamespaceTerminating")
    }))
}

/// The ReplicaSet that controls `pod`, by name.
pub(crate) fn controlling_rs(pod: &CachedPod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .filter(|r| r.kind == "ReplicaSet" && r.api_version.starts_with("apps/"))
        .map(|r| r.name.as_str())
}

/// The expectations key (`namespace/name`) of the ReplicaSet controlling `pod`.
fn owner_key(pod: &CachedPod) -> Option<String> {
    let name = controlling_rs(pod)?;
    Some(format!("{}/{}", pod.namespace().unwrap_or_default(), name))
}

fn selector_of(rs: &ReplicaSet) -> Result<Selector, ParseExpressionError> {
    rs.spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default()
        .try_into()
}

/// The controller's state shared by its reconciles and informer handlers.
struct ReplicaSets {
    client: Client,
    pods: Store<CachedPod>,
    replicasets: Store<ReplicaSet>,
    expectations: Expectations,
    /// Pods whose deletion was already counted (when their deletionTimestamp appeared), so the
    /// final removal does not count it again.
    deletions_seen: Mutex<HashSet<String>>,
    events: EventWriter,
    backoff: FailureBackoff,
}

impl std::fmt::Debug for ReplicaSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSets").finish_non_exhaustive()
    }
}

/// Registers the controller's watches and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let client = ctx.client.clone();
    let informer = Arc::new(Informer::<ReplicaSet>::new(
        Api::all(client.clone()),
        watcher::Config::default(),
    ));
    let (events, event_writer) = EventWriter::new(client.clone(), COMPONENT);
    let state = Arc::new(ReplicaSets {
        client,
        pods: ctx.pods.store(),
        replicasets: informer.store(),
        expectations: Expectations::default(),
        deletions_seen: Mutex::default(),
        events,
        backoff: FailureBackoff::default(),
    });

    let observer = state.clone();
    ctx.pods.on_event(move |event| observer.observe_pod(event));
    let replicasets = informer.store();
    let pod_triggers = ctx
        .pods
        .subscribe(move |event| replicasets_for_pod_event(event, &replicasets));
    let forget = state.clone();
    informer.on_event(move |event| {
        if let InformerEvent::Deleted(rs) = event {
            let key = pod_control::key_of(*rs);
            forget.expectations.forget(&key);
            forget.backoff.reset(&key);
        }
    });
    let rs_triggers = informer.subscribe(|event| match event {
        InformerEvent::Applied { new, .. } => Some(ObjectRef::from_obj(*new)),
        InformerEvent::Deleted(_) => None,
    });

    let controller = Controller::for_stream(
        futures::stream::pending::<Result<ReplicaSet, watcher::Error>>(),
        informer.store(),
    )
    .reconcile_on(rs_triggers)
    .reconcile_on(pod_triggers)
    .with_config(Config::default().concurrency(ctx.concurrent_syncs));

    Box::pin(async move {
        let run = controller
            .run(reconcile, error_policy, state)
            .for_each(|_| futures::future::ready(()));
        tokio::join!(informer.run(), run, event_writer);
    })
}

/// The ReplicaSets to sync for a Pod change: its controller (before and after), and for an
/// orphan that appeared or changed labels, every ReplicaSet that selects it (to adopt it).
fn replicasets_for_pod_event(
    event: &InformerEvent<'_, CachedPod>,
    replicasets: &Store<ReplicaSet>,
) -> Vec<ObjectRef<ReplicaSet>> {
    let mut refs: Vec<ObjectRef<ReplicaSet>> = Vec::new();
    for pod in event.objects() {
        if let Some(name) = controlling_rs(pod) {
            let r = ObjectRef::new(name).within(&pod.namespace().unwrap_or_default());
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
    }
    if let InformerEvent::Applied { old, new } = event
        && controlling_rs(new).is_none()
        && new.metadata.deletion_timestamp.is_none()
    {
        let changed = old.is_none_or(|old| {
            old.metadata.labels != new.metadata.labels
                || old.metadata.owner_references != new.metadata.owner_references
        });
        if changed {
            let namespace = new.namespace();
            for rs in replicasets.state() {
                if rs.namespace() == namespace
                    && selector_of(&rs).is_ok_and(|s| !s.selects_all() && s.matches(new.labels()))
                {
                    refs.push(ObjectRef::from_obj(rs.as_ref()));
                }
            }
        }
    }
    refs
}

impl ReplicaSets {
    /// Counts observed creations and deletions against expectations: a deletion once per Pod,
    /// when its deletionTimestamp appears or, if that was not seen, when it is gone.
    fn observe_pod(&self, event: &InformerEvent<'_, CachedPod>) {
        match event {
            InformerEvent::Applied { old, new } => {
                let Some(owner) = owner_key(new) else { return };
                if new.metadata.deletion_timestamp.is_some() {
                    let uid = new.metadata.uid.clone().unwrap_or_default();
                    if self.deletions_seen.lock().expect("deletions").insert(uid) {
                        self.expectations.observed_deletion(&owner);
                    }
                } else if old.is_none() {
                    self.expectations.observed_creation(&owner);
                }
            }
            InformerEvent::Deleted(pod) => {
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                let counted = self.deletions_seen.lock().expect("deletions").remove(uid);
                if !counted && let Some(owner) = owner_key(pod) {
                    self.expectations.observed_deletion(&owner);
                }
            }
        }
    }

    async fn sync(&self, rs: &ReplicaSet) -> Result<Action, SyncReplicaSetError> {
        let key = pod_control::key_of(rs);
        let needs_sync = self.expectations.satisfied(&key);
        let namespace = rs.namespace().unwrap_or_default();
        let selector = selector_of(rs).map_err(|source| SyncReplicaSetError::Selector {
            rs: key.clone(),
            source,
        })?;
        let candidates: Vec<Arc<CachedPod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter(|p| pod_control::is_pod_active(p))
            .collect();
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let rs_api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
        let cached_pod_api: Api<CachedPod> = Api::namespaced(self.client.clone(), &namespace);
        let owned = claim::claim(&cached_pod_api, &rs_api, rs, candidates, |pod| {
            !selector.selects_all() && selector.matches(pod.labels())
        })
        .await
        .map_err(|source| SyncReplicaSetError::Claim {
            rs: key.clone(),
            source,
        })?;
        let owned: Vec<&CachedPod> = owned.iter().map(AsRef::as_ref).collect();

        let manage_error = if needs_sync && rs.metadata.deletion_timestamp.is_none() {
            self.manage_replicas(rs, &key, &pod_api, &owned).await.err()
        } else {
            None
        };

        let now = Timestamp::now();
        let message = manage_error
            .as_ref()
            .map(SyncReplicaSetError::condition_message);
        let new_status = status::calculate(rs, &owned, message.as_deref(), now);
        if status::changed(rs, &new_status) {
            let mut updated = rs.clone();
            updated.metadata.managed_fields = None;
            updated.status = Some(new_status);
            rs_api
                .replace_status(&rs.name_any(), &PostParams::default(), &updated)
                .await
                .map_err(|source| SyncReplicaSetError::UpdateStatus {
                    rs: key.clone(),
                    source,
                })?;
        }
        if let Some(e) = manage_error {
            return Err(e);
        }
        let min_ready = rs
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        Ok(
            match pods::next_available_in(owned.iter().copied(), min_ready, now) {
                Some(wait) => Action::requeue(wait),
                None => Action::await_change(),
            },
        )
    }

    /// Creates or deletes Pods so that `owned` (the active Pods of `rs`) number spec.replicas.
    async fn manage_replicas(
        &self,
        rs: &ReplicaSet,
        key: &str,
        api: &Api<Pod>,
        owned: &[&CachedPod],
    ) -> Result<(), SyncReplicaSetError> {
        let spec = rs.spec.clone().unwrap_or_default();
        let desired = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
        let regarding = rs.object_ref(&());
        if owned.len() < desired {
            let count = (desired - owned.len()).min(BURST_REPLICAS);
            tracing::debug!(replicaset = %key, need = count, "too few replicas");
            self.expectations.expect(key, count, 0);
            let template = spec.template.unwrap_or_default();
            let owner = pod_control::controller_ref(rs);
            let namespace = rs.namespace().unwrap_or_default();
            let prefix = format!("{}-", rs.name_any());
            let new_pods = (0..count)
                .map(|_| {
                    pod_control::pod_from_template(
                        &template,
                        owner.clone(),
                        &namespace,
                        &prefix,
                        None,
                    )
                })
                .collect();
            let (created, _, error) =
                pod_control::create_in_batches_with(api, new_pods, |outcome| match outcome {
                    Ok(pod) => self.events.emit(
                        regarding.clone(),
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", pod.name_any()),
                    ),
                    Err(e) if !namespace_terminating(e) => self.events.emit(
                        regarding.clone(),
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating: {}", api_message(e)),
                    ),
                    Err(_) => {}
                })
                .await;
            // Creations that failed or were never tried will not be observed.
            for _ in created..count {
                self.expectations.creation_failed(key);
            }
            return match error {
                Some(e) if !namespace_terminating(&e) => Err(SyncReplicaSetError::CreatePods {
                    rs: key.to_string(),
                    source: e,
                }),
                _ => Ok(()),
            };
        }
        if owned.len() > desired {
            let count = (owned.len() - desired).min(BURST_REPLICAS);
            tracing::debug!(replicaset = %key, extra = count, "too many replicas");
            let related = self.related_pods(rs);
            let related: Vec<&CachedPod> = related.iter().map(AsRef::as_ref).collect();
            let victims = ranking::pods_to_delete(owned, &related, count, Timestamp::now());
            self.expectations.expect(key, 0, victims.len());
            let params = DeleteParams::default();
            let names: Vec<String> = victims.iter().map(|pod| pod.name_any()).collect();
            let results = join_all(names.iter().map(|name| api.delete(name, &params))).await;
            let mut first_error = None;
            for (pod, result) in victims.iter().zip(results) {
                match result {
                    Ok(_) => self.events.emit(
                        regarding.clone(),
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {}", pod.name_any()),
                    ),
                    // Already gone: its deletion may have been observed before we expected it.
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        self.expectations.deletion_failed(key);
                    }
                    Err(e) => {
                        self.expectations.deletion_failed(key);
                        self.events.emit(
                            regarding.clone(),
                            EventType::Warning,
                            "FailedDelete",
                            format!("Error deleting: {}", api_message(&e)),
                        );
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(SyncReplicaSetError::DeletePods {
                    rs: key.to_string(),
                    source: e,
                });
            }
        }
        Ok(())
    }

    /// The Pods of every ReplicaSet with the same controller as `rs` (its Deployment's other
    /// ReplicaSets included), for spreading deletions; none when `rs` has no controller.
    fn related_pods(&self, rs: &ReplicaSet) -> Vec<Arc<CachedPod>> {
        let Some(controller) = pod_control::controller_uid(rs) else {
            return Vec::new();
        };
        let namespace = rs.namespace();
        let selectors: Vec<Selector> = self
            .replicasets
            .state()
            .iter()
            .filter(|other| other.namespace() == namespace)
            .filter(|other| pod_control::controller_uid(other.as_ref()) == Some(controller))
            .filter_map(|other| selector_of(other).ok())
            .filter(|s| !s.selects_all())
            .collect();
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.namespace() == namespace)
            .filter(|p| selectors.iter().any(|s| s.matches(p.labels())))
            .collect()
    }
}

async fn reconcile(
    rs: Arc<ReplicaSet>,
    ctl: Arc<ReplicaSets>,
) -> Result<Action, SyncReplicaSetError> {
    let action = ctl.sync(&rs).await?;
    ctl.backoff.reset(&pod_control::key_of(rs.as_ref()));
    Ok(action)
}

fn error_policy(rs: Arc<ReplicaSet>, error: &SyncReplicaSetError, ctl: Arc<ReplicaSets>) -> Action {
    if error.is_conflict() {
        tracing::debug!(error = %error, "replicaset changed meanwhile; retrying");
    } else {
        tracing::warn!(error = %error, cause = ?std::error::Error::source(error).map(ToString::to_string), "syncing replicaset failed");
    }
    Action::requeue(ctl.backoff.next_delay(&pod_control::key_of(rs.as_ref())))
}
