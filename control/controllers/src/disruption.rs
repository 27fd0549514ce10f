//! The disruption controller (kube-controller-manager's "disruption-controller"): keeps each
//! PodDisruptionBudget's status, which pods/eviction consults. The pods a budget covers are
//! those its selector picks in its namespace; healthy are those Ready and not being deleted
//! (nor just evicted: listed in `disruptedPods`, until they are gone or two minutes passed).
//! With a minAvailable count, expectedPods are the covered pods (not finished, not being
//! deleted) and desiredHealthy is minAvailable. With a percentage or maxUnavailable,
//! expectedPods are the replicas the pods' controllers ask for, as upstream counts them (a
//! ReplicaSet's Deployment, else the ReplicaSet; a StatefulSet), and desiredHealthy is the
//! percentage of them rounded up, or them less maxUnavailable (rounded up the same way); pods
//! without a controller count for nothing and draw an `UnmanagedPods` warning. A pod whose
//! controller has no scale (a Job, a DaemonSet) or is gone makes the budget fail safe, as
//! upstream's does: no disruptions allowed, the condition `SyncFailed` with upstream's message,
//! and a `CalculateExpectedPodCountFailed` event. disruptionsAllowed is what healthy pods
//! exceed desiredHealthy by (none while nothing is expected).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_client::{CachedPod, Informer, InformerEvent};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::PostParams;
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use crate::Context;
use crate::failure_backoff::FailureBackoff;
use crate::pod_control::{controller_of, is_pod_ready, is_pod_terminal, key_of};

/// How long an evicted pod counts as disrupted before the controller stops waiting for its
/// deletion to show (upstream's DeletionTimeout).
const DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);

/// A budget's status could not be written.
#[derive(Debug, thiserror::Error)]
#[error("updating the status of PodDisruptionBudget {budget}")]
pub struct UpdateBudgetStatusError {
    budget: String,
    #[source]
    source: kube::Error,
}

/// The replicas the controllers of a budget's pods ask for could not be counted (upstream's
/// texts).
#[derive(Debug, thiserror::Error)]
pub enum ExpectedScaleError {
    /// The pod's controller is gone, or is not the object the pod names.
    #[error("found no controllers for pod {0:?}")]
    NoControllers(String),
    /// The pod's controller is of a kind that has no scale (a DaemonSet, a Job, a Node).
    #[error("{0} does not implement the scale subresource")]
    NoScale(&'static str),
    /// The pod's controller is of a kind the API server does not serve.
    #[error("no matches for kind {kind:?} in version {version:?}")]
    UnknownKind { kind: String, version: String },
}

/// What counting the replicas asked for found: their sum, and the covered pods that no
/// controller owns (upstream leaves those out and warns).
#[derive(Debug, Default, PartialEq)]
pub struct ExpectedScale {
    pub replicas: i32,
    pub unmanaged: Vec<String>,
}

/// The controllers whose scale a budget may count, as watched (upstream's listers).
struct Scalers {
    replica_sets: Informer<ReplicaSet>,
    deployments: Informer<Deployment>,
    stateful_sets: Informer<StatefulSet>,
}

/// Caches of the controllers whose scale a budget may count.
pub struct ScalerStores {
    pub replica_sets: Store<ReplicaSet>,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
}

struct Disruption {
    client: Client,
    pods: Store<CachedPod>,
    budgets: Informer<PodDisruptionBudget>,
    scalers: Scalers,
    recorder: Recorder,
    /// The unmanaged pods last warned of, by budget key.
    unmanaged_reported: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
    errors: FailureBackoff,
}

/// The selector of a budget; `None` for one that selects nothing (no selector, or one that
/// does not parse). An empty selector selects every pod of the namespace, as policy/v1 reads it.
fn selector_of(budget: &PodDisruptionBudget) -> Option<Selector> {
    let selector = budget.spec.as_ref()?.selector.clone()?;
    selector.try_into().ok()
}

/// A workload controller whose scale a budget may count.
trait Scaled: Resource<DynamicType = ()> + Clone + 'static {
    /// spec.replicas.
    fn replicas(&self) -> Option<i32>;
    /// Drops all but what its scale needs (these caches keep no template and no status).
    fn keep_scale_only(&mut self);
}

macro_rules! scaled {
    ($kind:ty, $spec:ident) => {
        impl Scaled for $kind {
            fn replicas(&self) -> Option<i32> {
                self.spec.as_ref().and_then(|s| s.replicas)
            }

            fn keep_scale_only(&mut self) {
                let meta = &mut self.metadata;
                self.metadata = ObjectMeta {
                    name: meta.name.take(),
                    namespace: meta.namespace.take(),
                    uid: meta.uid.take(),
                    resource_version: meta.resource_version.take(),
                    owner_references: meta.owner_references.take(),
                    ..ObjectMeta::default()
                };
                self.spec = Some($spec {
                    replicas: self.replicas(),
                    ..$spec::default()
                });
                self.status = None;
            }
        }
    };
}

scaled!(ReplicaSet, ReplicaSetSpec);
scaled!(Deployment, DeploymentSpec);
scaled!(StatefulSet, StatefulSetSpec);

/// (uid, replicas) of a workload controller (replicas default to 1).
fn scale_of<K: Scaled>(object: &K) -> (String, i32) {
    (
        object.meta().uid.clone().unwrap_or_default(),
        object.replicas().unwrap_or(1),
    )
}

/// What of a workload controller decides the scale a budget counts: its replicas and the uid
/// of its own controller (a ReplicaSet adopted by a Deployment counts the Deployment's).
fn scale_key<K: Scaled>(object: &K) -> (Option<i32>, Option<String>) {
    let controller = controller_of(object.meta()).map(|o| o.uid.clone());
    (object.replicas(), controller)
}

/// The object of `store` that `owner` names (same name and uid) in `namespace`.
fn owned_by<K: Scaled>(
    store: &Store<K>,
    owner: &OwnerReference,
    namespace: &str,
) -> Option<Arc<K>> {
    store
        .get(&ObjectRef::new(&owner.name).within(namespace))
        .filter(|object| object.meta().uid.as_ref() == Some(&owner.uid))
}

/// For an informer's subscription: the budgets in the namespace of the changed object, when
/// what its scale counts (`scale_key`) changed, or it came or went.
fn budgets_of_namespace<K: Scaled>(
    budgets: Store<PodDisruptionBudget>,
) -> impl Fn(&InformerEvent<'_, K>) -> Vec<ObjectRef<PodDisruptionBudget>> + Send + Sync + 'static {
    move |event| {
        let scale_changed = match event {
            InformerEvent::Applied {
                old: Some(old),
                new,
            } => scale_key(*old) != scale_key(*new),
            _ => true,
        };
        if !scale_changed {
            return Vec::new();
        }
        let Some(namespace) = event
            .objects()
            .next()
            .and_then(|o| o.meta().namespace.clone())
        else {
            return Vec::new();
        };
        budgets
            .state()
            .iter()
            .filter(|b| b.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .map(|b| ObjectRef::from_obj(b.as_ref()))
            .collect()
    }
}

/// Registers the pod subscription and returns the loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    let budgets = Informer::new(
        Api::<PodDisruptionBudget>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let budget_store = budgets.store();
    // A pod that appears, changes or goes wakes the budgets that cover it.
    let by_pods = ctx
        .pods
        .subscribe(move |event: &InformerEvent<'_, CachedPod>| {
            let mut wake = Vec::new();
            for pod in event.objects() {
                let namespace = pod.namespace().unwrap_or_default();
                for budget in budget_store.state() {
                    if budget.namespace().as_deref() == Some(namespace.as_str())
                        && selector_of(&budget).is_some_and(|s| s.matches(pod.labels()))
                    {
                        wake.push(ObjectRef::from_obj(budget.as_ref()));
                    }
                }
            }
            wake
        });
    let scalers = Scalers {
        replica_sets: Informer::new(Api::all(ctx.client.clone()), watcher::Config::default())
            .with_transform(ReplicaSet::keep_scale_only),
        deployments: Informer::new(Api::all(ctx.client.clone()), watcher::Config::default())
            .with_transform(Deployment::keep_scale_only),
        stateful_sets: Informer::new(Api::all(ctx.client.clone()), watcher::Config::default())
            .with_transform(StatefulSet::keep_scale_only),
    };
    // A controller whose scale changes wakes the budgets of its namespace.
    let by_replica_sets = scalers
        .replica_sets
        .subscribe(budgets_of_namespace(budgets.store()));
    let by_deployments = scalers
        .deployments
        .subscribe(budgets_of_namespace(budgets.store()));
    let by_stateful_sets = scalers
        .stateful_sets
        .subscribe(budgets_of_namespace(budgets.store()));
    let this = Arc::new(Disruption {
        client: ctx.client.clone(),
        pods: ctx.pods.store(),
        budgets,
        scalers,
        recorder: ctx.recorder("disruption-controller"),
        unmanaged_reported: Default::default(),
        errors: FailureBackoff::default(),
    });
    let concurrency = ctx.concurrent_syncs;
    async move {
        let work = async {
            this.budgets.wait_until_ready().await;
            this.scalers.replica_sets.wait_until_ready().await;
            this.scalers.deployments.wait_until_ready().await;
            this.scalers.stateful_sets.wait_until_ready().await;
            Controller::new(
                Api::<PodDisruptionBudget>::all(this.client.clone()),
                watcher::Config::default(),
            )
            .with_config(Config::default().concurrency(concurrency))
            .reconcile_on(by_pods)
            .reconcile_on(by_replica_sets)
            .reconcile_on(by_deployments)
            .reconcile_on(by_stateful_sets)
            .run(reconcile, error_policy, this.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "disruption reconcile");
                }
            })
            .await;
        };
        tokio::join!(
            this.budgets.run(),
            this.scalers.replica_sets.run(),
            this.scalers.deployments.run(),
            this.scalers.stateful_sets.run(),
            work
        );
    }
    .boxed()
}

fn error_policy(
    budget: Arc<PodDisruptionBudget>,
    error: &UpdateBudgetStatusError,
    this: Arc<Disruption>,
) -> Action {
    let key = key_of(budget.as_ref());
    let delay = this.errors.next_delay(&key);
    tracing::warn!(budget = %key, error = %error, retry_in = ?delay, "updating a disruption budget failed");
    Action::requeue(delay)
}

/// An IntOrString bound as a count of `total` pods (percentages rounded up).
fn count_of(bound: &IntOrString, total: i32) -> i32 {
    crate::deployment::scale::scaled_value(Some(bound), total, true)
}

/// Whether `budget` counts the replicas its pods' controllers ask for (maxUnavailable, or a
/// percentage minAvailable) rather than its pods.
pub fn counts_controller_scale(budget: &PodDisruptionBudget) -> bool {
    budget.spec.as_ref().is_some_and(|spec| {
        spec.max_unavailable.is_some() || matches!(spec.min_available, Some(IntOrString::String(_)))
    })
}

/// The pods of `pods` (those in its namespace) that `budget` covers.
pub fn covered_pods<'a>(
    budget: &PodDisruptionBudget,
    pods: &'a [Arc<CachedPod>],
) -> Vec<&'a CachedPod> {
    match selector_of(budget) {
        Some(selector) => pods
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| selector.matches(p.labels()))
            .collect(),
        None => Vec::new(),
    }
}

/// The replicas the controllers of `pods` ask for, each controller counted once (upstream's
/// getExpectedScale and its finders): a ReplicaSet's owning Deployment, else the ReplicaSet
/// (also when that Deployment is gone, as upstream's generic scale finder does); a
/// StatefulSet. Pods without a controller are listed as unmanaged.
pub fn expected_scale(
    stores: &ScalerStores,
    pods: &[&CachedPod],
) -> Result<ExpectedScale, ExpectedScaleError> {
    let mut scales: BTreeMap<String, i32> = BTreeMap::new();
    let mut unmanaged = Vec::new();
    for pod in pods {
        let name = pod.name_any();
        let namespace = pod.namespace().unwrap_or_default();
        let Some(owner) = controller_of(&pod.metadata) else {
            unmanaged.push(name);
            continue;
        };
        if scales.contains_key(&owner.uid) {
            continue;
        }

        let found = match (owner.api_version.as_str(), owner.kind.as_str()) {
            ("apps/v1", "ReplicaSet") => owned_by(&stores.replica_sets, owner, &namespace)
                .map(|set| replica_set_scale(stores, &namespace, &set)),
            ("apps/v1", "StatefulSet") => {
                owned_by(&stores.stateful_sets, owner, &namespace).map(|set| scale_of(&*set))
            }
            // A pod a Deployment owns itself: upstream's generic scale finder reads the
            // Deployment's scale.
            ("apps/v1", "Deployment") => {
                owned_by(&stores.deployments, owner, &namespace).map(|d| scale_of(&*d))
            }
            ("apps/v1", "DaemonSet") => return Err(ExpectedScaleError::NoScale("daemonsets.apps")),
            ("batch/v1", "Job") => return Err(ExpectedScaleError::NoScale("jobs.batch")),
            ("v1", "Node") => return Err(ExpectedScaleError::NoScale("nodes")),
            (version, kind) => {
                return Err(ExpectedScaleError::UnknownKind {
                    kind: kind.to_string(),
                    version: version.to_string(),
                });
            }
        };
        let Some((uid, replicas)) = found else {
            return Err(ExpectedScaleError::NoControllers(name));
        };
        scales.insert(owner.uid.clone(), 0);
        scales.insert(uid, replicas);
    }
    let replicas = scales.values().fold(0i32, |sum, r| sum.saturating_add(*r));
    Ok(ExpectedScale {
        replicas,
        unmanaged,
    })
}

/// (uid, replicas) of the controller that scales `set`: its Deployment when one controls it,
/// else (also when that Deployment is gone) the ReplicaSet itself.
fn replica_set_scale(stores: &ScalerStores, namespace: &str, set: &ReplicaSet) -> (String, i32) {
    controller_of(&set.metadata)
        .filter(|o| o.api_version == "apps/v1" && o.kind == "Deployment")
        .and_then(|owner| owned_by(&stores.deployments, owner, namespace))
        .map_or_else(|| scale_of(set), |deployment| scale_of(&*deployment))
}

/// The status `budget` should have for `pods` (those in its namespace) at `now`, given the
/// replicas its pods' controllers ask for when it counts those (`counts_controller_scale`);
/// also when the oldest disruption it still waits for times out.
pub fn compute_status(
    budget: &PodDisruptionBudget,
    pods: &[Arc<CachedPod>],
    controller_scale: Option<i32>,
    now: jiff::Timestamp,
) -> (PodDisruptionBudgetStatus, Option<Duration>) {
    let covered = covered_pods(budget, pods);
    let previous = budget.status.clone().unwrap_or_default();
    // Evicted pods stay disrupted until their deletion shows, or the timeout passes.
    let mut disrupted = BTreeMap::new();
    let mut next_timeout: Option<Duration> = None;
    for (name, at) in previous.disrupted_pods.unwrap_or_default() {
        let Some(pod) = covered.iter().find(|p| p.name_any() == name) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let expires = at.0 + jiff::SignedDuration::try_from(DISRUPTION_TIMEOUT).unwrap_or_default();
        if expires <= now {
            continue;
        }
        let left = Duration::try_from(expires.duration_since(now)).unwrap_or_default();
        next_timeout = Some(next_timeout.map_or(left, |t| t.min(left)));
        disrupted.insert(name, at);
    }
    // Finished pods and pods on their way out stand for no replica.
    let expected = controller_scale.unwrap_or_else(|| {
        covered
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && !is_pod_terminal(p))
            .count() as i32
    });
    let healthy = covered
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && is_pod_ready(p)
                && !disrupted.contains_key(&p.name_any())
        })
        .count() as i32;
    let spec = budget.spec.clone().unwrap_or_default();
    let desired = match (&spec.min_available, &spec.max_unavailable) {
        (_, Some(max)) => (expected - count_of(max, expected)).max(0),
        (Some(min), None) => count_of(min, expected),
        (None, None) => expected,
    };
    // Nothing is allowed while nothing is expected: the first pods of a budget may show
    // before its status counts them (upstream's rule).
    let allowed = if expected > 0 {
        (healthy - desired).max(0)
    } else {
        0
    };
    let (status, reason, message) = if allowed > 0 {
        ("True", "SufficientPods", "")
    } else {
        ("False", "InsufficientPods", "")
    };
    let previous_condition = previous
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "DisruptionAllowed");
    let transition = match &previous_condition {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: "DisruptionAllowed".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: transition,
        observed_generation: budget.metadata.generation,
    };
    (
        PodDisruptionBudgetStatus {
            observed_generation: budget.metadata.generation,
            disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
            disruptions_allowed: allowed,
            current_healthy: healthy,
            desired_healthy: desired,
            expected_pods: expected,
            conditions: Some(vec![condition]),
        },
        next_timeout,
    )
}

async fn reconcile(
    budget: Arc<PodDisruptionBudget>,
    this: Arc<Disruption>,
) -> Result<Action, UpdateBudgetStatusError> {
    let key = key_of(budget.as_ref());
    if budget.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = budget.namespace().unwrap_or_default();
    let pods: Vec<Arc<CachedPod>> = this
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .collect();
    let scale = if counts_controller_scale(&budget) {
        // By name, so that an error names the same pod every time.
        let mut covered = covered_pods(&budget, &pods);
        covered.sort_by_key(|p| p.metadata.name.clone());
        let stores = ScalerStores {
            replica_sets: this.scalers.replica_sets.store(),
            deployments: this.scalers.deployments.store(),
            stateful_sets: this.scalers.stateful_sets.store(),
        };
        match expected_scale(&stores, &covered) {
            Ok(scale) => {
                warn_of_unmanaged_pods(&this, &budget, scale.unmanaged).await;
                Some(scale.replicas)
            }
            Err(error) => return fail_safe(&this, &budget, error).await,
        }
    } else {
        None
    };
    let (status, next_timeout) = compute_status(&budget, &pods, scale, jiff::Timestamp::now());
    write_status(&this, &budget, status).await?;
    this.errors.reset(&key);
    Ok(match next_timeout {
        Some(left) => Action::requeue(left),
        None => Action::await_change(),
    })
}

/// The DisruptionAllowed condition of a status: (status, reason, message).
fn condition_of(status: &PodDisruptionBudgetStatus) -> Option<(&str, &str, &str)> {
    let condition = status.conditions.as_ref()?.first()?;
    Some((&condition.status, &condition.reason, &condition.message))
}

/// Writes `status` unless the budget has it already (the condition's time aside).
async fn write_status(
    this: &Disruption,
    budget: &PodDisruptionBudget,
    status: PodDisruptionBudgetStatus,
) -> Result<(), UpdateBudgetStatusError> {
    let unchanged = budget.status.as_ref().is_some_and(|current| {
        let mut current_counts = current.clone();
        let mut wanted_counts = status.clone();
        current_counts.conditions = None;
        wanted_counts.conditions = None;
        current_counts == wanted_counts && condition_of(current) == condition_of(&status)
    });
    if unchanged {
        return Ok(());
    }
    let api: Api<PodDisruptionBudget> =
        Api::namespaced(this.client.clone(), &budget.namespace().unwrap_or_default());
    let mut next = budget.clone();
    next.metadata.managed_fields = None;
    next.status = Some(status);
    match api
        .replace_status(&budget.name_any(), &PostParams::default(), &next)
        .await
    {
        Ok(_) => Ok(()),
        // A newer state of the budget is on its way through the watch.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
        Err(source) => Err(UpdateBudgetStatusError {
            budget: key_of(budget),
            source,
        }),
    }
}

/// Records upstream's UnmanagedPods warning when the budget's pods without a controller
/// change to a non-empty set (upstream warns on every sync; its recorder folds repeats).
async fn warn_of_unmanaged_pods(
    this: &Disruption,
    budget: &PodDisruptionBudget,
    pods: Vec<String>,
) {
    let key = key_of(budget);
    {
        let mut reported = this.unmanaged_reported.lock().expect("unmanaged pods");
        if reported.get(&key) == Some(&pods) {
            return;
        }
        if pods.is_empty() {
            reported.remove(&key);
            return;
        }
        reported.insert(key.clone(), pods.clone());
    }
    tracing::info!(budget = %key, pods = ?pods, "found unmanaged pods associated with this PodDisruptionBudget");
    let selector = selector_of(budget)
        .map(|s| s.to_string())
        .unwrap_or_default();
    let note = format!(
        "Pods selected by this PodDisruptionBudget (selector: {selector}) were found to be \
         unmanaged. As a result, the status of the PDB cannot be calculated correctly, which \
         may result in undefined behavior. To account for these pods please set \
         \".spec.minAvailable\" field of the PDB to an integer value."
    );
    publish(this, budget, "UnmanagedPods", note).await;
}

/// Records a Warning event about `budget`.
async fn publish(this: &Disruption, budget: &PodDisruptionBudget, reason: &str, note: String) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Sync".into(),
        secondary: None,
    };
    if let Err(e) = this.recorder.publish(&event, &budget.object_ref(&())).await {
        tracing::debug!(budget = %key_of(budget), error = %e, "recording a disruption budget event");
    }
}

/// Upstream's failSafe: a budget whose expected pods cannot be counted allows no disruption
/// and says why in its condition (reason SyncFailed) and an event, and waits for a change (of
/// the budget, its pods or their controllers).
async fn fail_safe(
    this: &Disruption,
    budget: &PodDisruptionBudget,
    error: ExpectedScaleError,
) -> Result<Action, UpdateBudgetStatusError> {
    let key = key_of(budget);
    let message = error.to_string();
    let mut status = budget.status.clone().unwrap_or_default();
    let newly_failing = condition_of(&status) != Some(("False", "SyncFailed", &message));
    if newly_failing {
        let note = format!("Failed to calculate the number of expected pods: {message}");
        publish(this, budget, "CalculateExpectedPodCountFailed", note).await;
        tracing::info!(budget = %key, error = %message, "disruption budget fails safe");
    }
    status.disruptions_allowed = 0;
    let transition = match budget.status.as_ref().and_then(|s| s.conditions.as_ref()) {
        Some(c) if c.first().is_some_and(|c| c.status == "False") => {
            c[0].last_transition_time.clone()
        }
        _ => Time(jiff::Timestamp::now()),
    };
    status.conditions = Some(vec![Condition {
        type_: "DisruptionAllowed".into(),
        status: "False".into(),
        reason: "SyncFailed".into(),
        message,
        last_transition_time: transition,
        observed_generation: budget.metadata.generation,
    }]);
    write_status(this, budget, status).await?;
    this.errors.reset(&key);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::api::ObjectMeta;

    fn pod(name: &str, ready: bool) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    fn budget(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                    match_expressions: None,
                }),
                unhealthy_pod_eviction_policy: None,
            }),
            status: None,
        }
    }

    #[test]
    fn allowed_disruptions_are_healthy_pods_beyond_the_budget() {
        let pods = vec![pod("a", true), pod("b", true), pod("c", false)];
        let now = jiff::Timestamp::now();
        let (status, _) =
            compute_status(&budget(Some(IntOrString::Int(1)), None), &pods, None, now);
        assert_eq!(
            (
                status.expected_pods,
                status.current_healthy,
                status.desired_healthy
            ),
            (3, 2, 1)
        );
        assert_eq!(status.disruptions_allowed, 1);
        assert_eq!(status.observed_generation, Some(2));
        let (status, _) = compute_status(
            &budget(Some(IntOrString::String("50%".into())), None),
            &pods,
            Some(3),
            now,
        );
        assert_eq!((status.desired_healthy, status.disruptions_allowed), (2, 0));
        let condition = &status.conditions.unwrap()[0];
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "InsufficientPods")
        );
        let (status, _) = compute_status(
            &budget(None, Some(IntOrString::Int(1))),
            &pods,
            Some(3),
            now,
        );
        assert_eq!((status.desired_healthy, status.disruptions_allowed), (2, 0));
    }

    #[test]
    fn percentages_and_max_unavailable_count_the_replicas_asked_for() {
        let pods = vec![pod("a", true), pod("b", true), pod("c", true)];
        let now = jiff::Timestamp::now();
        let max_one = budget(None, Some(IntOrString::Int(1)));
        assert!(counts_controller_scale(&max_one));
        assert!(!counts_controller_scale(&budget(
            Some(IntOrString::Int(1)),
            None
        )));
        // Scaled up to 4 with 3 pods so far: 3 must stay healthy, so none may go.
        let (status, _) = compute_status(&max_one, &pods, Some(4), now);
        assert_eq!(
            (
                status.expected_pods,
                status.desired_healthy,
                status.disruptions_allowed
            ),
            (4, 3, 0)
        );
        // A rollout's surge pod: 3 asked for, 4 healthy pods, so two may go.
        let mut surge = pods.clone();
        surge.push(pod("d", true));
        let (status, _) = compute_status(&max_one, &surge, Some(3), now);
        assert_eq!((status.desired_healthy, status.disruptions_allowed), (2, 2));
        // 34% of 3 rounds up to 2.
        let percent = budget(Some(IntOrString::String("34%".into())), None);
        let (status, _) = compute_status(&percent, &pods, Some(3), now);
        assert_eq!((status.desired_healthy, status.disruptions_allowed), (2, 1));
        // Scaled to zero: nothing is expected, so nothing may go.
        let (status, _) = compute_status(&max_one, &pods, Some(0), now);
        assert_eq!((status.expected_pods, status.disruptions_allowed), (0, 0));
    }

    /// A store holding `objects`.
    fn store_of<K>(objects: Vec<K>) -> Store<K>
    where
        K: Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let (store, mut writer) = kube::runtime::reflector::store();
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::Apply(object));
        }
        store
    }

    fn owned<K: serde::de::DeserializeOwned>(
        name: &str,
        uid: &str,
        owner: Option<(&str, &str, &str, &str)>,
        replicas: i32,
    ) -> K {
        let owners: Vec<serde_json::Value> = owner
            .into_iter()
            .map(|(api_version, kind, name, uid)| {
                serde_json::json!({"apiVersion": api_version, "kind": kind, "name": name,
                    "uid": uid, "controller": true})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "uid": uid, "ownerReferences": owners},
            "spec": {"replicas": replicas, "selector": {}, "template": {}}
        }))
        .expect("valid object")
    }

    fn pod_of(name: &str, owner: Option<(&str, &str, &str, &str)>) -> CachedPod {
        CachedPod::from(owned::<Pod>(name, &format!("uid-{name}"), owner, 0))
    }

    #[test]
    fn the_expected_scale_counts_each_controller_once() {
        let stores = ScalerStores {
            deployments: store_of(vec![owned::<Deployment>("web", "d1", None, 5)]),
            replica_sets: store_of(vec![
                owned(
                    "web-a",
                    "r1",
                    Some(("apps/v1", "Deployment", "web", "d1")),
                    3,
                ),
                owned(
                    "web-b",
                    "r2",
                    Some(("apps/v1", "Deployment", "web", "d1")),
                    1,
                ),
                owned(
                    "left",
                    "r3",
                    Some(("apps/v1", "Deployment", "gone", "d9")),
                    4,
                ),
                // Owned by an earlier Deployment of the same name.
                owned(
                    "web-old",
                    "r4",
                    Some(("apps/v1", "Deployment", "web", "d0")),
                    6,
                ),
            ]),
            stateful_sets: store_of(vec![owned::<StatefulSet>("db", "s1", None, 2)]),
        };
        let rs = |name: &'static str, uid: &'static str| Some(("apps/v1", "ReplicaSet", name, uid));
        let pods = [
            pod_of("web-a-1", rs("web-a", "r1")),
            pod_of("web-a-2", rs("web-a", "r1")),
            pod_of("web-b-1", rs("web-b", "r2")),
            pod_of("db-0", Some(("apps/v1", "StatefulSet", "db", "s1"))),
            pod_of("left-1", rs("left", "r3")),
            pod_of("web-old-1", rs("web-old", "r4")),
            pod_of("bare", None),
        ];
        let refs: Vec<&CachedPod> = pods.iter().collect();
        // The Deployment's 5 (once, for both of its ReplicaSets), the StatefulSet's 2, and the
        // ReplicaSets' own 4 and 6 where their Deployment is gone or another one.
        let direct = pod_of("web-x", Some(("apps/v1", "Deployment", "web", "d1")));
        assert_eq!(expected_scale(&stores, &[&direct]).unwrap().replicas, 5);
        assert_eq!(
            expected_scale(&stores, &refs).unwrap(),
            ExpectedScale {
                replicas: 17,
                unmanaged: vec!["bare".to_string()]
            }
        );

        let job_pod = pod_of("job-1", Some(("batch/v1", "Job", "warmup", "j1")));
        let error = expected_scale(&stores, &[&pods[0], &job_pod]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "jobs.batch does not implement the scale subresource"
        );
        let stale = pod_of("web-z-1", rs("web-a", "another-uid"));
        let error = expected_scale(&stores, &[&stale]).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"found no controllers for pod "web-z-1""#
        );
        let custom = pod_of("c-1", Some(("example.com/v1", "Widget", "w", "w1")));
        let error = expected_scale(&stores, &[&custom]).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"no matches for kind "Widget" in version "example.com/v1""#
        );
    }

    #[test]
    fn an_evicted_pod_stays_disrupted_until_it_goes_or_times_out() {
        let pods = vec![pod("a", true), pod("b", true)];
        let now = jiff::Timestamp::now();
        let mut evicted = budget(Some(IntOrString::Int(1)), None);
        evicted.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some(BTreeMap::from([("a".into(), Time(now))])),
            ..Default::default()
        });
        let (status, timeout) = compute_status(&evicted, &pods, None, now);
        assert_eq!((status.current_healthy, status.disruptions_allowed), (1, 0));
        assert_eq!(timeout, Some(DISRUPTION_TIMEOUT));
        let later = now + jiff::SignedDuration::from_secs(121);
        let (status, timeout) = compute_status(&evicted, &pods, None, later);
        assert_eq!((status.current_healthy, status.disruptions_allowed), (2, 1));
        assert!(status.disrupted_pods.is_none() && timeout.is_none());
    }

    #[test]
    fn no_selector_covers_nothing_and_an_empty_one_everything() {
        let mut open = budget(Some(IntOrString::Int(0)), None);
        open.spec.as_mut().unwrap().selector = None;
        let (status, _) = compute_status(&open, &[pod("a", true)], None, jiff::Timestamp::now());
        assert_eq!((status.expected_pods, status.disruptions_allowed), (0, 0));
        open.spec.as_mut().unwrap().selector = Some(LabelSelector::default());
        let (status, _) = compute_status(&open, &[pod("a", true)], None, jiff::Timestamp::now());
        assert_eq!((status.expected_pods, status.disruptions_allowed), (1, 1));
    }
}
