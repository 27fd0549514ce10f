//! Pods left holding the tracking finalizer with no Job to count them (upstream's orphan
//! queue): their Job was deleted, or released them, or already finished. Such a Pod could
//! never be deleted, so its finalizer is removed. Candidates come from Pod events; each is
//! checked again against the Job cache and, before the patch, against the API server.

use baton_client::CachedPod;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::conditions::is_finished;
use super::pods::has_tracking_finalizer;

/// How long a failed finalizer removal waits before it is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// What a Pod's controller reference says about who counts it.
#[derive(Debug, PartialEq, Eq)]
pub enum Counter {
    /// No Job: the Pod is an orphan.
    Nobody,
    /// Controlled by something other than a Job: not ours to touch.
    NotAJob,
    /// The Job named (namespace, name, uid).
    Job(String, String, String),
}

/// Who counts `pod`.
pub fn counter(pod: &CachedPod) -> Counter {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    match owner {
        None => Counter::Nobody,
        Some(r) if r.kind != "Job" || r.api_version != "batch/v1" => Counter::NotAJob,
        Some(r) => Counter::Job(
            pod.metadata.namespace.clone().unwrap_or_default(),
            r.name.clone(),
            r.uid.clone(),
        ),
    }
}

/// Whether `pod` may be an orphan judging from the cache: it holds the finalizer and no
/// unfinished Job with its owner's uid is cached.
pub fn maybe_orphan(pod: &CachedPod, jobs: &Store<Job>) -> bool {
    if !has_tracking_finalizer(pod) {
        return false;
    }
    match counter(pod) {
        Counter::Nobody => true,
        Counter::NotAJob => false,
        Counter::Job(namespace, name, uid) => jobs
            .get(&ObjectRef::new(&name).within(&namespace))
            .is_none_or(|job| {
                job.metadata.uid.as_deref() != Some(uid.as_str()) || is_finished(&job)
            }),
    }
}

/// Removes the finalizer of the Pods sent on `queue` (as `(namespace, name)`) that still are
/// orphans; runs forever.
pub async fn run(
    client: Client,
    pods: Store<CachedPod>,
    jobs: Store<Job>,
    queue: UnboundedSender<(String, String)>,
    mut incoming: UnboundedReceiver<(String, String)>,
) {
    let _ = jobs.wait_until_ready().await;
    while let Some((namespace, name)) = incoming.recv().await {
        let Some(pod) = pods.get(&ObjectRef::new(&name).within(&namespace)) else {
            continue;
        };
        if !maybe_orphan(&pod, &jobs) {
            continue;
        }
        match confirm_and_release(&client, &pod).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "removing the job-tracking finalizer of an orphan pod failed; retrying");
                let queue = queue.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY).await;
                    let _ = queue.send((namespace, name));
                });
            }
        }
    }
}

/// Checks with the API server that the Pod's Job is gone (or another, or finished) and
/// removes the finalizer.
async fn confirm_and_release(client: &Client, pod: &CachedPod) -> Result<(), kube::Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    if let Counter::Job(_, name, uid) = counter(pod) {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
        if let Some(job) = jobs.get_opt(&name).await?
            && job.metadata.uid.as_deref() == Some(uid.as_str())
            && !is_finished(&job)
        {
            return Ok(());
        }
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let patch = super::remove_finalizer_patch();
    match api
        .patch(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    #[test]
    fn counters_come_from_the_controller_reference() {
        let mut pod = Pod {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(counter(&CachedPod::from(&pod)), Counter::Nobody);
        pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "rs".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        assert_eq!(counter(&CachedPod::from(&pod)), Counter::NotAJob);
        pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: "pi".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        assert_eq!(
            counter(&CachedPod::from(&pod)),
            Counter::Job("ns".into(), "pi".into(), "u".into())
        );
    }
}
