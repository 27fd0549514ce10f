//! A DaemonSet's ControllerRevisions (upstream's constructHistory and cleanupHistory): the
//! revision of the current template is found or made (named `<ds>-<hash>`, labelled with the
//! hash, numbered after every older one), duplicates are folded into one, and outdated
//! revisions no Pod uses are pruned down to revisionHistoryLimit.

use baton_client::CachedPod;
use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::controller_revision::{
    POD_REVISION_LABEL, holds, next_revision, owned_revisions, revision_name, template_hash,
    template_patch,
};
use crate::pod_control::controller_ref;

/// The revisions could not be brought in line with the DaemonSet.
#[derive(Debug, thiserror::Error)]
pub enum ConstructHistoryError {
    #[error("labelling revision {0}")]
    Label(String, #[source] kube::Error),
    #[error("creating revision {0}")]
    Create(String, #[source] kube::Error),
    #[error("reading revision {0}")]
    Read(String, #[source] kube::Error),
    #[error("revision {0} exists with another template; collision count raised, will retry")]
    Collision(String),
    #[error("raising the collision count")]
    BumpCollisionCount(#[source] kube::Error),
    #[error("renumbering revision {0}")]
    Renumber(String, #[source] kube::Error),
    #[error("relabelling pod {0} to the kept revision")]
    RelabelPod(String, #[source] kube::Error),
    #[error("deleting duplicate revision {0}")]
    DeleteDuplicate(String, #[source] kube::Error),
}

/// The current revision of a DaemonSet and the outdated ones.
#[derive(Debug)]
pub struct History {
    /// The hash Pods of the current template carry in `controller-revision-hash`.
    pub hash: String,
    /// Outdated revisions, oldest first.
    pub old: Vec<Arc<ControllerRevision>>,
}

/// Finds or makes the revision of `ds`'s template.
pub async fn construct(
    client: &kube::Client,
    revisions: &Store<ControllerRevision>,
    ds: &DaemonSet,
    pods: &[Arc<CachedPod>],
) -> Result<History, ConstructHistoryError> {
    let namespace = ds.namespace().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &namespace);
    let spec = ds.spec.clone().unwrap_or_default();
    let data = template_patch(&spec.template);
    let uid = ds.uid().unwrap_or_default();

    let mut current = Vec::new();
    let mut old = Vec::new();
    for revision in owned_revisions(revisions, &namespace, &uid) {
        let revision = if has_hash_label(&revision) {
            revision
        } else {
            // Revisions from before the label: the name serves as the hash.
            let name = revision.name_any();
            let patch = json!({"metadata": {"labels": {POD_REVISION_LABEL: name}}});
            Arc::new(
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| ConstructHistoryError::Label(name.clone(), e))?,
            )
        };
        if holds(&revision, &data) {
            current.push(revision);
        } else {
            old.push(revision);
        }
    }
    let number = next_revision(&old);
    let current = match current.len() {
        0 => snapshot(client, &api, ds, number).await?,
        1 => current.pop().expect("one"),
        _ => dedup(client, &api, ds, current, pods).await?,
    };
    if current.revision < number {
        let name = current.name_any();
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "revision": number })),
        )
        .await
        .map_err(|e| ConstructHistoryError::Renumber(name, e))?;
    }
    let hash = current
        .labels()
        .get(POD_REVISION_LABEL)
        .cloned()
        .unwrap_or_else(|| current.name_any());
    Ok(History { hash, old })
}

fn has_hash_label(revision: &ControllerRevision) -> bool {
    revision.labels().contains_key(POD_REVISION_LABEL)
}

/// Creates the revision of the current template; on a name taken by another template, raises
/// the DaemonSet's collision count (so the next hash differs) and fails to retry.
async fn snapshot(
    client: &kube::Client,
    api: &Api<ControllerRevision>,
    ds: &DaemonSet,
    number: i64,
) -> Result<Arc<ControllerRevision>, ConstructHistoryError> {
    let spec = ds.spec.clone().unwrap_or_default();
    let collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collision_count);
    let name = revision_name(&ds.name_any(), &hash);
    let mut labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(POD_REVISION_LABEL.into(), hash);
    let data = template_patch(&spec.template);
    let revision = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: ds.metadata.annotations.clone(),
            owner_references: Some(vec![controller_ref(ds)]),
            ..Default::default()
        },
        data: Some(RawExtension(data.clone())),
        revision: number,
    };
    match api.create(&PostParams::default(), &revision).await {
        Ok(created) => Ok(Arc::new(created)),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api
                .get(&name)
                .await
                .map_err(|e| ConstructHistoryError::Read(name.clone(), e))?;
            if holds(&existing, &data) {
                return Ok(Arc::new(existing));
            }
            bump_collision_count(client, ds).await?;
            Err(ConstructHistoryError::Collision(name))
        }
        Err(e) => Err(ConstructHistoryError::Create(name, e)),
    }
}

async fn bump_collision_count(
    client: &kube::Client,
    ds: &DaemonSet,
) -> Result<(), ConstructHistoryError> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), &ds.namespace().unwrap_or_default());
    let mut fresh = api
        .get_status(&ds.name_any())
        .await
        .map_err(ConstructHistoryError::BumpCollisionCount)?;
    let seen = ds.status.as_ref().and_then(|s| s.collision_count);
    let status = fresh.status.get_or_insert_with(Default::default);
    if status.collision_count != seen {
        // Our copy was stale: the next try uses the newer count.
        return Ok(());
    }
    status.collision_count = Some(seen.unwrap_or(0) + 1);
    tracing::info!(daemonset = %crate::pod_control::key_of(ds), count = ?status.collision_count, "hash collision; raising collisionCount");
    api.replace_status(&ds.name_any(), &PostParams::default(), &fresh)
        .await
        .map_err(ConstructHistoryError::BumpCollisionCount)?;
    Ok(())
}

/// Several revisions hold the current template: keep the newest, move Pods labelled with the
/// others to its hash, delete the others.
async fn dedup(
    client: &kube::Client,
    api: &Api<ControllerRevision>,
    ds: &DaemonSet,
    mut current: Vec<Arc<ControllerRevision>>,
    pods: &[Arc<CachedPod>],
) -> Result<Arc<ControllerRevision>, ConstructHistoryError> {
    current.sort_by_key(|r| r.revision);
    let keep = current.pop().expect("several");
    let keep_hash = keep
        .labels()
        .get(POD_REVISION_LABEL)
        .cloned()
        .unwrap_or_default();
    let dropped: HashSet<String> = current
        .iter()
        .filter_map(|r| r.labels().get(POD_REVISION_LABEL).cloned())
        .collect();
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ds.namespace().unwrap_or_default());
    for pod in pods {
        if pod
            .labels()
            .get(POD_REVISION_LABEL)
            .is_some_and(|h| dropped.contains(h))
        {
            let patch = json!({"metadata": {"labels": {POD_REVISION_LABEL: keep_hash}}});
            pod_api
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(|e| ConstructHistoryError::RelabelPod(pod.name_any(), e))?;
        }
    }
    for duplicate in current {
        let name = duplicate.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(ConstructHistoryError::DeleteDuplicate(name, e)),
        }
    }
    Ok(keep)
}

/// Deletes outdated revisions beyond revisionHistoryLimit that no Pod (`pods`, terminal ones
/// included) still carries.
pub async fn cleanup(
    client: &kube::Client,
    ds: &DaemonSet,
    old: &[Arc<ControllerRevision>],
    pods: &[Arc<CachedPod>],
) -> Result<(), kube::Error> {
    let limit = ds
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let live: HashSet<&str> = pods
        .iter()
        .filter_map(|p| p.labels().get(POD_REVISION_LABEL).map(String::as_str))
        .collect();
    let api: Api<ControllerRevision> =
        Api::namespaced(client.clone(), &ds.namespace().unwrap_or_default());
    // Upstream counts live revisions against the limit but never deletes them.
    let to_kill = old.len().saturating_sub(limit);
    let doomed = old
        .iter()
        .filter(|r| {
            !r.labels()
                .get(POD_REVISION_LABEL)
                .is_some_and(|h| live.contains(h.as_str()))
        })
        .take(to_kill);
    for revision in doomed {
        match api
            .delete(&revision.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
