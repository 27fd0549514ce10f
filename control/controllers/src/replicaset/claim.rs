//! Claiming what a controller selects, as upstream's ControllerRefManager: objects it already
//! controls and still selects are its own; objects it controls but no longer selects are
//! released (its ownerReference removed); orphans it selects are adopted (its controller
//! reference added), after a fresh read of the owner confirms it is not being deleted.
//! Used by the ReplicaSet controller for Pods and the Deployment controller for ReplicaSets.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Adopting or releasing an object failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("reading {kind} {name} again before adopting")]
    Recheck {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {name} is gone or being deleted; not adopting")]
    OwnerGone { kind: &'static str, name: String },
    #[error("adopting {name}")]
    Adopt {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("releasing {name}")]
    Release {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What a controller does with one candidate object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Controlled and selected: it is the controller's.
    Owned,
    /// An orphan it selects: adopt it.
    Adopt,
    /// Controlled but no longer selected: release it.
    Release,
    /// Someone else's, or not to be touched now.
    Ignore,
}

/// How `owner` (uid `owner_uid`, being deleted or not) treats `obj`, given whether its selector
/// matches `obj`.
pub(crate) fn classify<K: Resource>(
    owner_uid: &str,
    owner_deleting: bool,
    obj: &K,
    selected: bool,
) -> Claim {
    let controller = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    match controller {
        Some(r) if r.uid != owner_uid => Claim::Ignore,
        Some(_) if selected => Claim::Owned,
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting || !selected || obj.meta().deletion_timestamp.is_some() => {
            Claim::Ignore
        }
        None => Claim::Adopt,
    }
}

/// Claims `candidates` (objects in `owner`'s namespace) for `owner`: returns those it owns
/// after adopting and releasing. `selected` tells whether the owner's selector matches one.
pub(crate) async fn claim<K, O>(
    api: &Api<K>,
    owner_api: &Api<O>,
    owner: &O,
    candidates: Vec<Arc<K>>,
    selected: impl Fn(&K) -> bool,
) -> Result<Vec<Arc<K>>, ClaimError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    O: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let owner_uid = owner.meta().uid.clone().unwrap_or_default();
    let deleting = owner.meta().deletion_timestamp.is_some();
    let owner_ref = crate::pod_control::controller_ref(owner);
    let mut rechecked = false;
    let mut owned = Vec::with_capacity(candidates.len());
    let mut first_error = None;
    for obj in candidates {
        match classify(&owner_uid, deleting, obj.as_ref(), selected(&obj)) {
            Claim::Owned => owned.push(obj),
            Claim::Ignore => {}
            Claim::Release => {
                if let Err(e) = release(api, obj.as_ref(), &owner_uid).await {
                    first_error.get_or_insert(e);
                }
            }
            Claim::Adopt => {
                if !rechecked {
                    // Upstream's RecheckDeletionTimestamp: the cached owner may be stale.
                    recheck(owner_api, owner, &owner_uid).await?;
                    rechecked = true;
                }
                match adopt(api, obj.as_ref(), &owner_ref).await {
                    Ok(Some(adopted)) => owned.push(Arc::new(adopted)),
                    Ok(None) => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(owned),
    }
}

async fn recheck<O>(owner_api: &Api<O>, owner: &O, owner_uid: &str) -> Result<(), ClaimError>
where
    O: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let kind = kind_of::<O>();
    let name = owner.name_any();
    match owner_api.get_opt(&name).await {
        Ok(Some(fresh))
            if fresh.meta().uid.as_deref() == Some(owner_uid)
                && fresh.meta().deletion_timestamp.is_none() =>
        {
            Ok(())
        }
        Ok(_) => Err(ClaimError::OwnerGone { kind, name }),
        Err(source) => Err(ClaimError::Recheck { kind, name, source }),
    }
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(_) => "object",
    }
}

/// Adds `owner_ref` to `obj`'s ownerReferences (a strategic merge patch keyed by uid, with the
/// object's uid as a precondition). `None` when the object is gone.
async fn adopt<K>(
    api: &Api<K>,
    obj: &K,
    owner_ref: &OwnerReference,
) -> Result<Option<K>, ClaimError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = json!({
        "metadata": {
            "ownerReferences": [owner_ref],
            "uid": obj.meta().uid,
        }
    });
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
    {
        Ok(adopted) => {
            tracing::info!(kind = kind_of::<K>(), object = %obj.name_any(), owner = %owner_ref.name, "adopted");
            Ok(Some(adopted))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(source) => Err(ClaimError::Adopt {
            name: obj.name_any(),
            source,
        }),
    }
}

/// Removes the ownerReference with `owner_uid` from `obj`.
async fn release<K>(api: &Api<K>, obj: &K, owner_uid: &str) -> Result<(), ClaimError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = json!({
        "metadata": {
            "ownerReferences": [{"$patch": "delete", "uid": owner_uid}],
            "uid": obj.meta().uid,
        }
    });
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(kind = kind_of::<K>(), object = %obj.name_any(), "released");
            Ok(())
        }
        // Gone, or changed under us (no such reference any more, or a new object of that name):
        // nothing left to release, as upstream treats NotFound and Invalid.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => Ok(()),
        Err(source) => Err(ClaimError::Release {
            name: obj.name_any(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(controller: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                owner_references: controller.map(|uid| {
                    vec![OwnerReference {
                        uid: uid.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn owned_released_adopted_or_ignored() {
        assert_eq!(classify("me", false, &pod(Some("me")), true), Claim::Owned);
        assert_eq!(classify("me", true, &pod(Some("me")), true), Claim::Owned);
        assert_eq!(
            classify("me", false, &pod(Some("me")), false),
            Claim::Release
        );
        assert_eq!(classify("me", true, &pod(Some("me")), false), Claim::Ignore);
        assert_eq!(
            classify("me", false, &pod(Some("other")), true),
            Claim::Ignore
        );
        assert_eq!(classify("me", false, &pod(None), true), Claim::Adopt);
        assert_eq!(classify("me", false, &pod(None), false), Claim::Ignore);
        assert_eq!(classify("me", true, &pod(None), true), Claim::Ignore);
        let mut deleting = pod(None);
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(classify("me", false, &deleting, true), Claim::Ignore);
    }
}
