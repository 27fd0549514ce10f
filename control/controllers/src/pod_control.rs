//! What the workload controllers (ReplicaSet, DaemonSet, StatefulSet, Job) share to create and
//! delete their Pods: a Pod from a template with its controller reference, creation in
//! upstream's slow-start batches, and expectations.
//!
//! Expectations (kube-controller-manager's ControllerExpectations): after a controller creates
//! or deletes Pods, its cache has not seen them yet; a reconcile in that window would count too
//! few or too many Pods and act again. So a controller records how many creations and deletions
//! it expects to observe, the Pod informer counts them down, and a reconcile does not act on
//! Pod counts until they are observed (or five minutes passed, in case a watch event was lost).

use baton_client::CachedPod;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

/// How long unobserved expectations hold back a reconcile (upstream's ExpectationsTimeout).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug)]
struct Expected {
    adds: i64,
    deletes: i64,
    since: Instant,
}

/// Creations and deletions a controller is waiting to see, per owner key (`namespace/name`).
#[derive(Debug, Default)]
pub struct Expectations {
    by_owner: Mutex<HashMap<String, Expected>>,
}

impl Expectations {
    /// Records that `adds` creations and `deletes` deletions are to be observed for `owner`.
    pub fn expect(&self, owner: &str, adds: usize, deletes: usize) {
        self.by_owner.lock().expect("expectations").insert(
            owner.to_string(),
            Expected {
                adds: adds as i64,
                deletes: deletes as i64,
                since: Instant::now(),
            },
        );
    }

    /// A creation that was expected will never be observed (the create call failed).
    pub fn creation_failed(&self, owner: &str) {
        self.observed(owner, 1, 0);
    }

    /// A deletion that was expected will never be observed (the delete call failed).
    pub fn deletion_failed(&self, owner: &str) {
        self.observed(owner, 0, 1);
    }

    /// The informer saw one of `owner`'s Pods created.
    pub fn observed_creation(&self, owner: &str) {
        self.observed(owner, 1, 0);
    }

    /// The informer saw one of `owner`'s Pods deleted (or marked for deletion).
    pub fn observed_deletion(&self, owner: &str) {
        self.observed(owner, 0, 1);
    }

    fn observed(&self, owner: &str, adds: i64, deletes: i64) {
        if let Some(e) = self.by_owner.lock().expect("expectations").get_mut(owner) {
            e.adds -= adds;
            e.deletes -= deletes;
        }
    }

    /// Whether a reconcile of `owner` may act on its Pod counts.
    pub fn satisfied(&self, owner: &str) -> bool {
        match self.by_owner.lock().expect("expectations").get(owner) {
            None => true,
            Some(e) => (e.adds <= 0 && e.deletes <= 0) || e.since.elapsed() > EXPECTATIONS_TIMEOUT,
        }
    }

    /// Drops what was expected of `owner` (it was deleted).
    pub fn forget(&self, owner: &str) {
        self.by_owner.lock().expect("expectations").remove(owner);
    }
}

/// The `namespace/name` key of an object, as expectations and logs use it.
pub fn key_of<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// The controller reference an owner puts on what it creates (controller and
/// blockOwnerDeletion true, as upstream's controllers set them).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The controller reference of an object (its owner reference with `controller: true`), if
/// any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// The uid of the object that controls `obj`, if any.
pub fn controller_uid<K: Resource>(obj: &K) -> Option<&str> {
    controller_of(obj.meta()).map(|r| r.uid.as_str())
}

/// The object of kind `K` that controls the object with `meta`, in its namespace. Like
/// upstream's resolveControllerRef, only the kind is compared here; whoever looks the owner up
/// compares uids.
pub fn controller_ref_of<K: Resource<DynamicType = ()>>(meta: &ObjectMeta) -> Option<ObjectRef<K>> {
    let owner = controller_of(meta).filter(|r| r.kind == K::kind(&()))?;
    Some(ObjectRef::new(&owner.name).within(meta.namespace.as_deref().unwrap_or_default()))
}

/// A Pod made from `template`, owned by `owner`: labels, annotations and finalizers of the
/// template, `generateName` (`name` when given, as StatefulSets name their Pods).
pub fn pod_from_template(
    template: &PodTemplateSpec,
    owner: OwnerReference,
    namespace: &str,
    generate_name: &str,
    name: Option<String>,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name,
            generate_name: Some(generate_name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Creates `pods` in upstream's slow-start batches (1, 2, 4, ...), stopping after the first
/// batch with a failure so that a quota or admission refusal does not cost one call per Pod.
/// Returns (created, not attempted, first error): a caller lowers its expectations by the
/// failed and the not attempted creations.
pub async fn create_in_batches(
    api: &Api<Pod>,
    pods: Vec<Pod>,
) -> (usize, usize, Option<kube::Error>) {
    create_in_batches_with(api, pods, |_| {}).await
}

/// `create_in_batches`, also handing each creation's outcome (the created Pod, or the error)
/// to `outcome`, e.g. for upstream's SuccessfulCreate and FailedCreate events.
pub async fn create_in_batches_with(
    api: &Api<Pod>,
    pods: Vec<Pod>,
    mut outcome: impl FnMut(Result<&Pod, &kube::Error>),
) -> (usize, usize, Option<kube::Error>) {
    let total = pods.len();
    let mut pods = pods.into_iter();
    let mut created = 0;
    let mut attempted = 0;
    let mut batch = 1;
    let params = PostParams::default();
    while attempted < total {
        let chunk: Vec<Pod> = pods.by_ref().take(batch).collect();
        attempted += chunk.len();
        let results = join_all(chunk.iter().map(|pod| api.create(&params, pod))).await;
        let mut first_error = None;
        for result in results {
            outcome(result.as_ref());
            match result {
                Ok(_) => created += 1,
                Err(e) if first_error.is_none() => first_error = Some(e),
                Err(_) => {}
            }
        }
        if let Some(e) = first_error {
            return (created, total - attempted, Some(e));
        }
        batch *= 2;
    }
    (created, 0, None)
}

/// Deletes the named Pods at once; returns how many deletions failed and the first error
/// (a Pod already gone counts as deleted).
pub async fn delete_pods(api: &Api<Pod>, pods: &[&CachedPod]) -> (usize, Option<kube::Error>) {
    let params = DeleteParams::default();
    let names: Vec<String> = pods.iter().map(|pod| pod.name_any()).collect();
    let results = join_all(names.iter().map(|name| api.delete(name, &params))).await;
    let mut failed = 0;
    let mut first = None;
    for result in results {
        match result {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
            }
        }
    }
    (failed, first)
}

/// Whether `pod` is Ready (its Ready condition is True).
pub fn is_pod_ready(pod: &CachedPod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// Whether `pod` has been Ready for at least `min_ready_seconds` at `now` (upstream's
/// IsPodAvailable).
pub fn is_pod_available(pod: &CachedPod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    let Some(ready) = ready_condition(pod).filter(|c| c.status == "True") else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    ready
        .last_transition_time
        .as_ref()
        .and_then(|t| {
            t.0.checked_add(jiff::SignedDuration::from_secs(i64::from(
                min_ready_seconds,
            )))
            .ok()
        })
        .is_some_and(|available_at| available_at < now)
}

fn ready_condition(pod: &CachedPod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Whether `pod` still counts as one of its controller's replicas: not Succeeded, not Failed,
/// not marked for deletion (upstream's FilterActivePods).
pub fn is_pod_active(pod: &CachedPod) -> bool {
    !is_pod_terminal(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// Whether `pod` has finished for good: phase Succeeded or Failed.
pub fn is_pod_terminal(pod: &CachedPod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The text to show for a failed API call: the API server's status message for an error it
/// answered, else the error itself.
pub fn api_error_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// The `namespace/name` key of `pod`'s controller when that controller is of kind `kind`.
pub fn controller_key_of(pod: &CachedPod, kind: &str) -> Option<String> {
    let owner = controller_of(&pod.metadata)?;
    (owner.kind == kind).then(|| {
        format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            owner.name
        )
    })
}

/// Counts a Pod informer event against the expectations of the Pod's controller of kind
/// `kind`: a Pod seen for the first time is an observed creation; a Pod deleted, or marked for
/// deletion, an observed deletion.
pub fn observe_pod_event(
    expectations: &Expectations,
    kind: &str,
    event: &baton_client::InformerEvent<'_, CachedPod>,
) {
    use baton_client::InformerEvent;
    match event {
        InformerEvent::Applied { old: None, new } => {
            if let Some(owner) = controller_key_of(new, kind) {
                if new.metadata.deletion_timestamp.is_some() {
                    expectations.observed_deletion(&owner);
                } else {
                    expectations.observed_creation(&owner);
                }
            }
        }
        InformerEvent::Applied {
            old: Some(old),
            new,
        } => {
            if old.metadata.deletion_timestamp.is_none()
                && new.metadata.deletion_timestamp.is_some()
                && let Some(owner) = controller_key_of(new, kind)
            {
                expectations.observed_deletion(&owner);
            }
        }
        // A pod whose last known state carries the deletion mark was counted when the mark
        // was seen; one removed without a mark we saw (a forced deletion, or one that
        // happened while the watch was re-listing) is counted now. Counting twice would let a
        // reconcile act before its other deletions were seen.
        InformerEvent::Deleted(pod) => {
            if pod.metadata.deletion_timestamp.is_none()
                && let Some(owner) = controller_key_of(pod, kind)
            {
                expectations.observed_deletion(&owner);
            }
        }
    }
}

/// Creates a workload's `pods` in slow-start batches and records what upstream's controllers
/// record: a `SuccessfulCreate` event ("Created pod: NAME") per Pod made and a `FailedCreate`
/// ("Error creating: ...") per failure. Creations that failed or were never tried are taken
/// off `owner_key`'s expectations. Returns how many were created and the first error.
pub async fn create_pods_recorded(
    api: &Api<Pod>,
    pods: Vec<Pod>,
    recorder: &kube::runtime::events::Recorder,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    expectations: &Expectations,
    owner_key: &str,
) -> (usize, Option<kube::Error>) {
    let namespace = regarding.namespace.clone();
    let mut outcomes = Vec::new();
    let (created, skipped, error) = create_in_batches_with(api, pods, |outcome| {
        outcomes.push(outcome.map(|p| p.name_any()).map_err(api_error_message));
    })
    .await;
    for outcome in outcomes {
        match outcome {
            Ok(name) => {
                let pod = k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    namespace: namespace.clone(),
                    name: Some(name.clone()),
                    ..Default::default()
                };
                let note = format!("Created pod: {name}");
                publish_event(
                    recorder,
                    regarding,
                    false,
                    "SuccessfulCreate",
                    note,
                    Some(pod),
                )
                .await;
            }
            Err(message) => {
                expectations.creation_failed(owner_key);
                let note = format!("Error creating: {message}");
                publish_event(recorder, regarding, true, "FailedCreate", note, None).await;
            }
        }
    }
    for _ in 0..skipped {
        expectations.creation_failed(owner_key);
    }
    (created, error)
}

/// A stream that wakes the controller (of kind `K`) of every object of `informer` that
/// changes: how a workload controller hears about its Pods and ControllerRevisions.
pub fn controller_changes<K, C>(
    informer: &baton_client::Informer<C>,
) -> tokio_stream::wrappers::UnboundedReceiverStream<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + 'static,
    C: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    C::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    informer.subscribe(|event| {
        event
            .objects()
            .filter_map(|obj| controller_ref_of::<K>(obj.meta()))
            .collect::<Vec<_>>()
    })
}

/// Records an event about the object `regarding` refers to, as upstream's controllers do
/// through their event recorder; a failure to record is logged, never fatal. `related` names
/// a second object (the Pod created or deleted): it also keeps events that differ only in
/// their note apart in the recorder's series.
pub async fn publish_event(
    recorder: &kube::runtime::events::Recorder,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
    related: Option<k8s_openapi::api::core::v1::ObjectReference>,
) {
    use kube::runtime::events::{Event, EventType};
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note),
        action: reason.to_string(),
        secondary: related,
    };
    if let Err(e) = recorder.publish(&event, regarding).await {
        tracing::warn!(reason, object = ?regarding.name, error = %e, "recording an event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_hold_until_observed() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"));
        e.expect("ns/rs", 2, 0);
        assert!(!e.satisfied("ns/rs"));
        e.observed_creation("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_failed("ns/rs");
        assert!(e.satisfied("ns/rs"));
        e.expect("ns/rs", 0, 1);
        assert!(!e.satisfied("ns/rs"));
        e.forget("ns/rs");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn pods_from_templates_carry_the_controller_reference() {
        let template = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            spec: Some(Default::default()),
        };
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web-abc".into(),
            uid: "u1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let pod = pod_from_template(&template, owner, "ns", "web-abc-", None);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(controller_uid(&pod), Some("u1"));
        assert_eq!(pod.labels()["app"], "web");
    }
}
