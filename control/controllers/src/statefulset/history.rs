//! A StatefulSet's ControllerRevisions (upstream's getStatefulSetRevisions and
//! truncateHistory): the update revision is the revision of the current template, reused when
//! one exists (renumbered when it is not the newest: a rollback), else created under a name
//! hashed from its data and the collision count; the current revision is the one
//! status.currentRevision names. Revisions neither current, nor the update, nor used by a Pod
//! are pruned down to revisionHistoryLimit.

use baton_client::CachedPod;
use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::identity::pod_revision;
use crate::controller_revision::{
    REVISION_HASH_LABEL, history_to_delete, holds, next_revision, revision_data_hash,
    revision_name, template_patch,
};
use crate::pod_control::controller_ref;

/// The revisions could not be brought in line with the StatefulSet.
#[derive(Debug, thiserror::Error)]
pub enum StatefulSetRevisionsError {
    #[error("creating revision {0}")]
    Create(String, #[source] kube::Error),
    #[error("reading revision {0}")]
    Read(String, #[source] kube::Error),
    #[error("renumbering revision {0}")]
    Renumber(String, #[source] kube::Error),
}

/// The revisions a reconcile works with.
#[derive(Debug)]
pub struct Revisions {
    pub current: Arc<ControllerRevision>,
    pub update: Arc<ControllerRevision>,
    pub collision_count: i32,
}

/// Finds or makes the update revision; `owned` are the set's revisions, oldest first.
pub async fn revisions(
    client: &kube::Client,
    set: &StatefulSet,
    owned: &[Arc<ControllerRevision>],
) -> Result<Revisions, StatefulSetRevisionsError> {
    let api: Api<ControllerRevision> =
        Api::namespaced(client.clone(), &set.namespace().unwrap_or_default());
    let mut collision_count = set
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let spec = set.spec.clone().unwrap_or_default();
    let data = template_patch(&spec.template);
    let number = next_revision(owned);
    let equal: Vec<&Arc<ControllerRevision>> = owned.iter().filter(|r| holds(r, &data)).collect();

    let update = match (equal.last(), owned.last()) {
        // The newest revision holds the template: nothing changed.
        (Some(found), Some(newest)) if found.name_any() == newest.name_any() => (*found).clone(),
        // An older revision holds it: a rollback, which makes that revision the newest.
        (Some(found), _) => {
            let name = found.name_any();
            let renumbered = api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({ "revision": number })),
                )
                .await
                .map_err(|e| StatefulSetRevisionsError::Renumber(name, e))?;
            Arc::new(renumbered)
        }
        (None, _) => Arc::new(create(&api, set, data, number, &mut collision_count).await?),
    };
    let current_name = set.status.as_ref().and_then(|s| s.current_revision.clone());
    let current = owned
        .iter()
        .find(|r| current_name.as_deref() == Some(r.name_any().as_str()))
        .cloned()
        .unwrap_or_else(|| update.clone());
    Ok(Revisions {
        current,
        update,
        collision_count,
    })
}

/// Creates a revision holding `data`; a name taken by different data raises the collision
/// count and tries the next name.
async fn create(
    api: &Api<ControllerRevision>,
    set: &StatefulSet,
    data: serde_json::Value,
    number: i64,
    collision_count: &mut i32,
) -> Result<ControllerRevision, StatefulSetRevisionsError> {
    let labels = set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    loop {
        let hash = revision_data_hash(&data, Some(*collision_count));
        let name = revision_name(&set.name_any(), &hash);
        let mut labels = labels.clone();
        labels.insert(REVISION_HASH_LABEL.into(), hash);
        let revision = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: set.namespace(),
                labels: Some(labels),
                annotations: set.metadata.annotations.clone(),
                owner_references: Some(vec![controller_ref(set)]),
                ..Default::default()
            },
            data: Some(RawExtension(data.clone())),
            revision: number,
        };
        match api.create(&PostParams::default(), &revision).await {
            Ok(created) => return Ok(created),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = api
                    .get(&name)
                    .await
                    .map_err(|e| StatefulSetRevisionsError::Read(name.clone(), e))?;
                if holds(&existing, &data) {
                    return Ok(existing);
                }
                *collision_count += 1;
            }
            Err(e) => return Err(StatefulSetRevisionsError::Create(name, e)),
        }
    }
}

/// Deletes the oldest revisions beyond revisionHistoryLimit that are neither current, nor
/// the update revision, nor used by one of `pods`.
pub async fn truncate(
    client: &kube::Client,
    set: &StatefulSet,
    owned: &[Arc<ControllerRevision>],
    pods: &[Arc<CachedPod>],
    revisions: &Revisions,
) -> Result<(), kube::Error> {
    let mut live: HashSet<String> = pods
        .iter()
        .filter_map(|p| pod_revision(p).map(str::to_string))
        .collect();
    live.insert(revisions.current.name_any());
    live.insert(revisions.update.name_any());
    let limit = set
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let api: Api<ControllerRevision> =
        Api::namespaced(client.clone(), &set.namespace().unwrap_or_default());
    for revision in history_to_delete(owned, limit, |r| live.contains(&r.name_any())) {
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
