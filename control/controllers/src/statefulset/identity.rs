//! A StatefulSet Pod's identity: its name `<set>-<ordinal>`, the labels naming it and its
//! index, its hostname and subdomain (the governing Service), and the PersistentVolumeClaims
//! `<claim>-<set>-<ordinal>` its volumes refer to.

use baton_client::CachedPod;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;

use crate::controller_revision::POD_REVISION_LABEL;
use crate::pod_control::{controller_ref, pod_from_template};

/// The label with a StatefulSet Pod's name (for per-Pod Services).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a StatefulSet Pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The parent name and ordinal of a Pod named `<parent>-<ordinal>`.
pub fn parent_and_ordinal(name: &str) -> Option<(&str, i32)> {
    let (parent, ordinal) = name.rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parent, ordinal.parse().ok()?))
}

/// The ordinal of `pod` when it is a member of `set` (named after it).
pub fn member_ordinal(set: &StatefulSet, pod: &CachedPod) -> Option<i32> {
    member_name_ordinal(set, pod.metadata.name.as_deref()?)
}

/// The ordinal in the Pod name `name` when it names a member of `set`.
pub fn member_name_ordinal(set: &StatefulSet, name: &str) -> Option<i32> {
    let (parent, ordinal) = parent_and_ordinal(name)?;
    (parent == set.name_any()).then_some(ordinal)
}

/// The first ordinal (spec.ordinals.start, 0 by default).
pub fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
}

/// spec.replicas (1 by default).
pub fn replicas(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0)
}

/// The name of the Pod with `ordinal`.
pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.name_any())
}

/// The name of `template`'s claim for the Pod with `ordinal`.
pub fn claim_name(set: &StatefulSet, template: &PersistentVolumeClaim, ordinal: i32) -> String {
    format!("{}-{}-{ordinal}", template.name_any(), set.name_any())
}

/// The claims of the Pod with `ordinal`, with the volume name each backs: the claim
/// templates, named for the Pod, labelled with the set's selector labels.
pub fn claims(set: &StatefulSet, ordinal: i32) -> Vec<(String, PersistentVolumeClaim)> {
    let spec = set.spec.clone().unwrap_or_default();
    let selector_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|template| {
            let volume = template.name_any();
            let mut claim = template.clone();
            claim.metadata.name = Some(claim_name(set, &template, ordinal));
            claim.metadata.namespace = set.namespace();
            let labels = claim.metadata.labels.get_or_insert_with(Default::default);
            labels.extend(selector_labels.clone());
            claim.status = None;
            (volume, claim)
        })
        .collect()
}

/// The owner reference a claim gets so that it goes with its owner (not as controller).
pub fn claim_owner_ref(
    owner_api_version: &str,
    owner_kind: &str,
    name: &str,
    uid: &str,
) -> OwnerReference {
    OwnerReference {
        api_version: owner_api_version.into(),
        kind: owner_kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// The Pod with `ordinal`, made from `template` (the template of revision `revision`).
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let name = pod_name(set, ordinal);
    let mut pod = pod_from_template(
        template,
        controller_ref(set),
        set.namespace().as_deref().unwrap_or_default(),
        &format!("{}-", set.name_any()),
        Some(name.clone()),
    );
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(POD_REVISION_LABEL.into(), revision.into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(name);
    spec.subdomain = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty());
    let claims = claims(set, ordinal);
    let mut volumes: Vec<Volume> = claims
        .iter()
        .map(|(volume, claim)| Volume {
            name: volume.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.name_any(),
                read_only: None,
            }),
            ..Default::default()
        })
        .collect();
    volumes.extend(
        spec.volumes
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !claims.iter().any(|(name, _)| *name == v.name)),
    );
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
    pod
}

/// Whether `pod` carries the identity of its ordinal (name and labels).
pub fn identity_matches(set: &StatefulSet, pod: &CachedPod) -> bool {
    let Some(ordinal) = member_ordinal(set, pod) else {
        return false;
    };
    let labels = pod.labels();
    pod.metadata.namespace == set.namespace()
        && labels.get(POD_NAME_LABEL) == pod.metadata.name.as_ref()
        && labels.get(POD_INDEX_LABEL) == Some(&ordinal.to_string())
}

/// Whether every claim template has a volume in `pod` using the ordinal's claim.
pub fn storage_matches(set: &StatefulSet, pod: &CachedPod) -> bool {
    let Some(ordinal) = member_ordinal(set, pod) else {
        return false;
    };
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    claims(set, ordinal).iter().all(|(volume, claim)| {
        volumes.iter().any(|v| {
            v.name == *volume
                && v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == claim.name_any())
        })
    })
}

/// The revision a Pod was made from.
pub fn pod_revision(pod: &CachedPod) -> Option<&str> {
    pod.labels().get(POD_REVISION_LABEL).map(String::as_str)
}

/// Pods sorted by ordinal.
pub fn by_ordinal(set: &StatefulSet, pods: &mut [Arc<CachedPod>]) {
    pods.sort_by_key(|p| member_ordinal(set, p).unwrap_or(-1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSetOrdinals, StatefulSetSpec};
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    pub(crate) fn set() -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(3),
                service_name: Some("nginx".into()),
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "web".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        volumes: Some(vec![
                            Volume {
                                name: "www".into(),
                                ..Default::default()
                            },
                            Volume {
                                name: "config".into(),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }),
                },
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("www".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn ordinals_come_from_names() {
        assert_eq!(parent_and_ordinal("web-0"), Some(("web", 0)));
        assert_eq!(parent_and_ordinal("my-web-12"), Some(("my-web", 12)));
        assert_eq!(parent_and_ordinal("web-"), None);
        assert_eq!(parent_and_ordinal("web-x1"), None);
        assert_eq!(parent_and_ordinal("web"), None);
        assert_eq!(parent_and_ordinal("web-99999999999"), None);
    }

    #[test]
    fn new_pods_carry_their_identity_and_claims() {
        let s = set();
        let template = s.spec.as_ref().unwrap().template.clone();
        let pod = new_pod(&s, &template, 2, "web-abc");
        assert_eq!(pod.metadata.name.as_deref(), Some("web-2"));
        let labels = pod.labels();
        assert_eq!(labels[POD_NAME_LABEL], "web-2");
        assert_eq!(labels[POD_INDEX_LABEL], "2");
        assert_eq!(labels[POD_REVISION_LABEL], "web-abc");
        assert_eq!(labels["app"], "web");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 2);
        assert_eq!(volumes[0].name, "www");
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "www-web-2"
        );
        assert_eq!(volumes[1].name, "config");
        assert!(identity_matches(&s, &CachedPod::from(&pod)));
        assert!(storage_matches(&s, &CachedPod::from(&pod)));
        let claims = claims(&s, 2);
        assert_eq!(claims[0].1.name_any(), "www-web-2");
        assert_eq!(claims[0].1.labels()["app"], "web");
    }

    #[test]
    fn identity_mismatches_are_seen() {
        let s = set();
        let template = s.spec.as_ref().unwrap().template.clone();
        let mut pod = new_pod(&s, &template, 1, "r");
        pod.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(POD_INDEX_LABEL);
        assert!(!identity_matches(&s, &CachedPod::from(&pod)));
        pod.spec.as_mut().unwrap().volumes = None;
        assert!(!storage_matches(&s, &CachedPod::from(&pod)));
    }

    #[test]
    fn start_ordinal_and_replicas_default() {
        let mut s = set();
        assert_eq!(start_ordinal(&s), 0);
        s.spec.as_mut().unwrap().ordinals = Some(StatefulSetOrdinals { start: Some(5) });
        assert_eq!(start_ordinal(&s), 5);
        s.spec.as_mut().unwrap().replicas = None;
        assert_eq!(replicas(&s), 1);
    }
}
