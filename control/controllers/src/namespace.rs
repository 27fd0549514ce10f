//! The namespace controller (kube-controller-manager's namespace-controller): a namespace
//! being deleted (deletionTimestamp set, phase Terminating, the `kubernetes` spec finalizer
//! still there) has every namespaced object of every served resource deleted, found through
//! discovery; once nothing is left, the `kubernetes` finalizer is removed through the
//! namespaces/{name}/finalize subresource and the API server removes the namespace. Progress
//! is reported as upstream's namespace conditions. Pods stop gracefully, so the controller
//! looks again when the namespace's last Pod is gone, or after a delay that grows.

use baton_client::CachedPod;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::InformerEvent;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::core::{ApiResource, DynamicObject};
use kube::discovery::{ApiCapabilities, Discovery, Scope, verbs};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::Context;
use crate::failure_backoff::{FailureBackoff, log_failure};

/// The spec finalizer this controller is responsible for.
pub const FINALIZER: &str = "kubernetes";
/// Upstream's assumed time for finalizers of remaining content to complete.
const FINALIZER_ESTIMATE_SECONDS: i64 = 15;
/// How long discovery results are reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(30);

/// Deleting a namespace's content failed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteNamespaceError {
    #[error("discovering the namespaced resources")]
    Discovery(#[source] kube::Error),
    #[error("deleting the content of namespace {namespace}: {failures}")]
    Content { namespace: String, failures: String },
    #[error("reading namespace {0}")]
    Get(String, #[source] kube::Error),
    #[error("finalizing namespace {0}")]
    Finalize(String, #[source] kube::Error),
}

type Resources = Vec<(ApiResource, ApiCapabilities)>;

struct State {
    client: Client,
    discovery: Mutex<Option<(Instant, Arc<Resources>)>>,
    /// Consecutive waits per namespace, for the growing delay.
    waits: Mutex<HashMap<String, u32>>,
    backoff: FailureBackoff,
}

/// Registers the controller's subscriptions and returns its loop.
pub fn start(ctx: &Arc<Context>) -> BoxFuture<'static, ()> {
    // Pods per namespace, to look at a terminating namespace again when its last Pod goes.
    let counts: Mutex<HashMap<String, usize>> = Mutex::default();
    let by_pods = ctx
        .pods
        .subscribe(move |event: &InformerEvent<'_, CachedPod>| {
            let mut counts = counts.lock().expect("pod counts");
            match event {
                InformerEvent::Applied { old: None, new } => {
                    *counts
                        .entry(new.namespace().unwrap_or_default())
                        .or_default() += 1;
                    None
                }
                InformerEvent::Applied { .. } => None,
                InformerEvent::Deleted(pod) => {
                    let ns = pod.namespace().unwrap_or_default();
                    let count = counts.entry(ns.clone()).or_default();
                    *count = count.saturating_sub(1);
                    (*count == 0).then(|| {
                        counts.remove(&ns);
                        ObjectRef::<Namespace>::new(&ns)
                    })
                }
            }
        });
    let state = Arc::new(State {
        client: ctx.client.clone(),
        discovery: Mutex::default(),
        waits: Mutex::default(),
        backoff: FailureBackoff::default(),
    });
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default())
        .with_config(kube::runtime::Config::default().concurrency(ctx.concurrent_syncs))
        .reconcile_on(by_pods)
        .run(reconcile, error_policy, state)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "namespace reconcile");
            }
        })
        .boxed()
}

fn error_policy(ns: Arc<Namespace>, err: &DeleteNamespaceError, state: Arc<State>) -> Action {
    let delay = state.backoff.next_delay(&ns.name_any());
    log_failure!(
        "deleting namespace content failed",
        &ns.name_any(),
        err,
        delay,
    );
    Action::requeue(delay)
}

async fn reconcile(ns: Arc<Namespace>, state: Arc<State>) -> Result<Action, DeleteNamespaceError> {
    let name = ns.name_any();
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
        state.waits.lock().expect("waits").remove(&name);
        return Ok(Action::await_change());
    }
    let (resources, discovery_error) = match discover(&state).await {
        Ok(r) => (r, None),
        Err(e) => {
            let cached = state.discovery.lock().expect("discovery").clone();
            match cached {
                Some((_, r)) => (r, Some(e.to_string())),
                None => return Err(DeleteNamespaceError::Discovery(e)),
            }
        }
    };
    let content = delete_content(&state.client, &name, &resources).await;
    let mut status = ns.status.clone().unwrap_or_default();
    let wanted = content_conditions(&content, discovery_error.as_deref());
    if update_conditions(&mut status.conditions, wanted, Timestamp::now()) {
        let mut next = ns.as_ref().clone();
        next.status = Some(status);
        next.metadata.managed_fields = None;
        let api: Api<Namespace> = Api::all(state.client.clone());
        if let Err(e) = api
            .replace_status(&name, &PostParams::default(), &next)
            .await
        {
            tracing::debug!(namespace = %name, error = %e, "updating namespace conditions");
        }
    }
    if !content.failures.is_empty() {
        return Err(DeleteNamespaceError::Content {
            namespace: name,
            failures: content.failures.join(", "),
        });
    }
    if content.estimate > 0 {
        let attempt = {
            let mut waits = state.waits.lock().expect("waits");
            let n = waits.entry(name.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n - 1
        };
        let delay = wait_delay(attempt, content.estimate);
        tracing::debug!(namespace = %name, estimate = content.estimate, ?delay, "content remains");
        return Ok(Action::requeue(delay));
    }
    if finalize(&state.client, &name).await? {
        tracing::info!(namespace = %name, "namespace content removed; finalized");
    }
    state.waits.lock().expect("waits").remove(&name);
    state.backoff.reset(&name);
    Ok(Action::await_change())
}

/// How long to wait for remaining content before looking again: one second, doubling, up to
/// upstream's delay for its estimate (half of it, plus one second).
pub fn wait_delay(attempt: u32, estimate_seconds: i64) -> Duration {
    let cap = Duration::from_secs((estimate_seconds.max(0) / 2 + 1) as u64);
    let grown = Duration::from_secs(1u64.checked_shl(attempt.min(20)).unwrap_or(u64::MAX));
    grown.min(cap)
}

/// The namespaced resources that can be deleted, in their preferred versions (cached).
async fn discover(state: &State) -> Result<Arc<Resources>, kube::Error> {
    if let Some((at, resources)) = state.discovery.lock().expect("discovery").as_ref()
        && at.elapsed() < DISCOVERY_TTL
    {
        return Ok(resources.clone());
    }
    let discovery = Discovery::new(state.client.clone()).run().await?;
    let resources: Resources = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .filter(|(_, caps)| {
            caps.scope == Scope::Namespaced && caps.supports_operation(verbs::DELETE)
        })
        .collect();
    let resources = Arc::new(resources);
    *state.discovery.lock().expect("discovery") = Some((Instant::now(), resources.clone()));
    Ok(resources)
}

/// What deleting a namespace's content found.
#[derive(Debug, Default, PartialEq)]
pub struct Content {
    /// Seconds until the remaining content is expected gone (0: nothing remains).
    pub estimate: i64,
    /// Remaining objects per `resource.group`.
    pub remaining: BTreeMap<String, usize>,
    /// Remaining objects per finalizer they carry.
    pub finalizers: BTreeMap<String, usize>,
    /// Resources whose content could not be deleted, with why.
    pub failures: Vec<String>,
}

async fn delete_content(client: &Client, ns: &str, resources: &Resources) -> Content {
    let mut content = Content::default();
    for (resource, caps) in resources {
        let label = format!("{}.{}", resource.plural, resource.group);
        match delete_resource(client, ns, resource, caps).await {
            Ok(left) => {
                content.estimate = content.estimate.max(left.estimate);
                if left.count > 0 {
                    content.remaining.insert(label, left.count);
                    for (f, n) in left.finalizers {
                        *content.finalizers.entry(f).or_default() += n;
                    }
                }
            }
            Err(e) => content.failures.push(e),
        }
    }
    content.failures.sort();
    content
}

struct Left {
    estimate: i64,
    count: usize,
    finalizers: BTreeMap<String, usize>,
}

/// Deletes every object of one resource in the namespace and reports what is left, as
/// upstream's deleteAllContentForGroupVersionResource.
async fn delete_resource(
    client: &Client,
    ns: &str,
    resource: &ApiResource,
    caps: &ApiCapabilities,
) -> Result<Left, String> {
    let what = |e: kube::Error| format!("{}.{}: {e}", resource.plural, resource.group);
    let is_pods = resource.group.is_empty() && resource.plural == "pods";
    let mut estimate = 0;
    if is_pods {
        estimate = pod_estimate(client, ns).await.map_err(what)?;
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    if caps.supports_operation(verbs::DELETE_COLLECTION) {
        match api
            .delete_collection(&background, &ListParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => {}
            Err(e) => return Err(what(e)),
        }
    } else if caps.supports_operation(verbs::LIST) {
        let items = api
            .list_metadata(&ListParams::default())
            .await
            .map_err(what)?;
        for item in items {
            match api.delete(&item.name_any(), &background).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(what(e)),
            }
        }
    }
    if !caps.supports_operation(verbs::LIST) {
        return Ok(Left {
            estimate,
            count: 0,
            finalizers: BTreeMap::new(),
        });
    }
    let left = api
        .list_metadata(&ListParams::default())
        .await
        .map_err(what)?;
    let mut finalizers = BTreeMap::new();
    for item in &left.items {
        for f in item.finalizers() {
            *finalizers.entry(f.clone()).or_default() += 1;
        }
    }
    let count = left.items.len();
    if count == 0 {
        return Ok(Left {
            estimate,
            count,
            finalizers,
        });
    }
    if estimate == 0 && finalizers.is_empty() {
        return Err(format!(
            "unexpected items still remain in namespace: {ns} for gvr: {}/{}, Resource={}",
            resource.group, resource.version, resource.plural
        ));
    }
    if estimate == 0 {
        estimate = FINALIZER_ESTIMATE_SECONDS;
    }
    Ok(Left {
        estimate,
        count,
        finalizers,
    })
}

/// The longest grace period of the namespace's Pods that have not finished.
async fn pod_estimate(client: &Client, ns: &str) -> Result<i64, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .filter_map(|p| p.spec.as_ref()?.termination_grace_period_seconds)
        .max()
        .unwrap_or(0)
        .max(0))
}

/// Removes the `kubernetes` spec finalizer through the finalize subresource; returns whether
/// there was one to remove.
async fn finalize(client: &Client, name: &str) -> Result<bool, DeleteNamespaceError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut ns = match api.get(name).await {
        Ok(ns) => ns,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
        Err(e) => return Err(DeleteNamespaceError::Get(name.to_string(), e)),
    };
    let listed = ns.spec.as_ref().and_then(|s| s.finalizers.as_ref());
    if !listed.is_some_and(|f| f.iter().any(|f| f == FINALIZER)) {
        return Ok(false);
    }
    ns.metadata.managed_fields = None;
    let spec = ns.spec.get_or_insert_with(Default::default);
    let mut finalizers: Vec<String> = spec
        .finalizers
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != FINALIZER)
        .collect();
    finalizers.sort();
    finalizers.dedup();
    spec.finalizers = Some(finalizers);
    match api
        .replace_subresource("finalize", name, &PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(DeleteNamespaceError::Finalize(name.to_string(), e)),
    }
}

/// The condition types this controller maintains, with their "all is well" reason and message.
const CONDITIONS: [(&str, &str, &str); 5] = [
    (
        "NamespaceDeletionDiscoveryFailure",
        "ResourcesDiscovered",
        "All resources successfully discovered",
    ),
    (
        "NamespaceDeletionGroupVersionParsingFailure",
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    (
        "NamespaceDeletionContentFailure",
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    (
        "NamespaceContentRemaining",
        "ContentRemoved",
        "All content successfully removed",
    ),
    (
        "NamespaceFinalizersRemaining",
        "ContentHasNoFinalizers",
        "All content-preserving finalizers finished",
    ),
];

/// The failing conditions (type, reason, message) a deletion pass reports.
pub fn content_conditions(
    content: &Content,
    discovery_error: Option<&str>,
) -> Vec<(String, String, String)> {
    let mut out = vec![];
    if let Some(e) = discovery_error {
        out.push((
            "NamespaceDeletionDiscoveryFailure".into(),
            "DiscoveryFailed".into(),
            e.to_string(),
        ));
    }
    if !content.failures.is_empty() {
        out.push((
            "NamespaceDeletionContentFailure".into(),
            "ContentDeletionFailed".into(),
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                content.failures.len(),
                content.failures.join(", ")
            ),
        ));
    }
    if !content.remaining.is_empty() {
        let list: Vec<String> = content
            .remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        out.push((
            "NamespaceContentRemaining".into(),
            "SomeResourcesRemain".into(),
            format!("Some resources are remaining: {}", list.join(", ")),
        ));
    }
    if !content.finalizers.is_empty() {
        let list: Vec<String> = content
            .finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        out.push((
            "NamespaceFinalizersRemaining".into(),
            "SomeFinalizersRemain".into(),
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                list.join(", ")
            ),
        ));
    }
    out
}

/// Sets each maintained condition to its failing state from `failing`, or its "all is well"
/// state (status False) otherwise; the transition time moves only when the status does.
/// Returns whether anything changed.
pub fn update_conditions(
    conditions: &mut Option<Vec<NamespaceCondition>>,
    failing: Vec<(String, String, String)>,
    now: Timestamp,
) -> bool {
    let list = conditions.get_or_insert_with(Vec::new);
    let mut changed = false;
    for (type_, ok_reason, ok_message) in CONDITIONS {
        let (status, reason, message) = match failing.iter().find(|(t, _, _)| t == type_) {
            Some((_, reason, message)) => ("True", reason.clone(), message.clone()),
            None => ("False", ok_reason.to_string(), ok_message.to_string()),
        };
        match list.iter_mut().find(|c| c.type_ == type_) {
            None => {
                list.push(NamespaceCondition {
                    type_: type_.into(),
                    status: status.into(),
                    reason: Some(reason),
                    message: Some(message),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
            Some(c) => {
                if c.status != status
                    || c.reason.as_deref() != Some(reason.as_str())
                    || c.message.as_deref() != Some(message.as_str())
                {
                    if c.status != status {
                        c.last_transition_time = Some(Time(now));
                    }
                    c.status = status.into();
                    c.reason = Some(reason);
                    c.message = Some(message);
                    changed = true;
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_content_is_reported_as_upstream() {
        let content = Content {
            estimate: 30,
            remaining: [
                ("pods.".to_string(), 2),
                ("widgets.example.com".to_string(), 1),
            ]
            .into(),
            finalizers: [("example.com/keep".to_string(), 1)].into(),
            failures: vec![],
        };
        let failing = content_conditions(&content, None);
        let mut conditions = None;
        let t0: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        assert!(update_conditions(&mut conditions, failing.clone(), t0));
        let list = conditions.clone().unwrap();
        assert_eq!(list.len(), 5);
        let remaining = list
            .iter()
            .find(|c| c.type_ == "NamespaceContentRemaining")
            .unwrap();
        assert_eq!(remaining.status, "True");
        assert_eq!(
            remaining.message.as_deref(),
            Some(
                "Some resources are remaining: pods. has 2 resource instances, widgets.example.com has 1 resource instances"
            )
        );
        let finalizers = list
            .iter()
            .find(|c| c.type_ == "NamespaceFinalizersRemaining")
            .unwrap();
        assert_eq!(finalizers.reason.as_deref(), Some("SomeFinalizersRemain"));
        assert_eq!(
            finalizers.message.as_deref(),
            Some(
                "Some content in the namespace has finalizers remaining: example.com/keep in 1 resource instances"
            )
        );
        let discovered = list
            .iter()
            .find(|c| c.type_ == "NamespaceDeletionDiscoveryFailure")
            .unwrap();
        assert_eq!(
            (discovered.status.as_str(), discovered.reason.as_deref()),
            ("False", Some("ResourcesDiscovered"))
        );
        // The same again changes nothing.
        assert!(!update_conditions(&mut conditions, failing, t0));
        // All gone: conditions turn False with a new transition time.
        let t1: Timestamp = "2025-01-01T00:01:00Z".parse().unwrap();
        assert!(update_conditions(&mut conditions, vec![], t1));
        let list = conditions.unwrap();
        let remaining = list
            .iter()
            .find(|c| c.type_ == "NamespaceContentRemaining")
            .unwrap();
        assert_eq!(remaining.status, "False");
        assert_eq!(
            remaining.message.as_deref(),
            Some("All content successfully removed")
        );
        assert_eq!(remaining.last_transition_time, Some(Time(t1)));
        let discovered = list
            .iter()
            .find(|c| c.type_ == "NamespaceDeletionDiscoveryFailure")
            .unwrap();
        assert_eq!(discovered.last_transition_time, Some(Time(t0)));
    }

    #[test]
    fn waits_grow_up_to_the_estimate() {
        assert_eq!(wait_delay(0, 30), Duration::from_secs(1));
        assert_eq!(wait_delay(1, 30), Duration::from_secs(2));
        assert_eq!(wait_delay(3, 30), Duration::from_secs(8));
        assert_eq!(wait_delay(4, 30), Duration::from_secs(16));
        assert_eq!(wait_delay(9, 30), Duration::from_secs(16));
        assert_eq!(wait_delay(9, 15), Duration::from_secs(8));
        assert_eq!(wait_delay(50, 0), Duration::from_secs(1));
    }
}
