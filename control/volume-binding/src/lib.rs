//! Which PersistentVolume a claim may bind, as upstream's binder chooses (and the scheduler
//! checks, node by node, for claims that wait for their first Pod): one already bound
//! to the claim (by its claimRef) first; else the smallest unclaimed volume of the claim's
//! class and volume mode that offers every access mode asked for, at least the storage
//! requested, labels the claim's selector selects, and (once a node is chosen for the claim)
//! a node affinity that node meets.

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, PersistentVolume, PersistentVolumeClaim,
};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

/// The annotation the scheduler puts on a claim of a WaitForFirstConsumer class: the node the
/// claim's first Pod goes to.
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";

/// The storage a claim asks for, in bytes.
pub fn requested_bytes(claim: &PersistentVolumeClaim) -> i64 {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(baton_quantity::value)
        .unwrap_or(0)
}

/// The storage a volume offers, in bytes.
pub fn capacity_bytes(volume: &PersistentVolume) -> i64 {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(baton_quantity::value)
        .unwrap_or(0)
}

/// A claim's class name ("" when it names none).
pub fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// The volume a claim names (bound, or being bound), if any.
pub fn claim_volume_name(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn volume_class(volume: &PersistentVolume) -> &str {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// Whether the volume's claimRef names this claim (its uid too, when the ref has one).
pub fn is_bound_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(claim_ref) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    claim_ref.name.as_deref() == Some(claim.name_any().as_str())
        && claim_ref.namespace == claim.metadata.namespace
        && (claim_ref.uid.is_none() || claim_ref.uid == claim.metadata.uid)
}

/// Whether a node meets a volume's required node affinity (no affinity: any node).
pub fn node_fits(volume: &PersistentVolume, node: &Node) -> bool {
    let Some(required) = volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let empty = Default::default();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    required.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        !expressions.is_empty() && expressions.iter().all(|r| requirement_met(r, labels))
    })
}

fn requirement_met(
    requirement: &NodeSelectorRequirement,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let value = labels.get(&requirement.key);
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// Whether a volume satisfies the claim (on `node`, when one is chosen): class, volume
/// mode, access modes, size, selector, node affinity.
pub fn satisfies(
    volume: &PersistentVolume,
    claim: &PersistentVolumeClaim,
    node: Option<&Node>,
) -> bool {
    let (Some(spec), Some(claim_spec)) = (volume.spec.as_ref(), claim.spec.as_ref()) else {
        return false;
    };
    let mode = |m: Option<&String>| m.map_or("Filesystem", String::as_str).to_string();
    let offered = spec.access_modes.as_deref().unwrap_or_default();
    let modes_ok = claim_spec
        .access_modes
        .iter()
        .flatten()
        .all(|m| offered.contains(m));
    let selector_ok = match &claim_spec.selector {
        None => true,
        Some(selector) => {
            Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(volume.labels()))
        }
    };
    volume_class(volume) == claim_class(claim)
        && mode(spec.volume_mode.as_ref()) == mode(claim_spec.volume_mode.as_ref())
        && modes_ok
        && capacity_bytes(volume) >= requested_bytes(claim)
        && selector_ok
        && node.is_none_or(|n| node_fits(volume, n))
}

/// The volume the claim should bind, if any. `node` is the claim's selected node, when the
/// scheduler chose one.
pub fn find_volume<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &'a [std::sync::Arc<PersistentVolume>],
    node: Option<&Node>,
) -> Option<&'a PersistentVolume> {
    let usable = volumes
        .iter()
        .map(AsRef::as_ref)
        .filter(|v| v.metadata.deletion_timestamp.is_none());
    let mut best: Option<&PersistentVolume> = None;
    for volume in usable {
        // A volume that names the claim is the claim's, or nothing is (upstream's binder
        // neither falls back to another one).
        if is_bound_to(volume, claim) {
            return node.is_none_or(|n| node_fits(volume, n)).then_some(volume);
        }
        let unclaimed = volume.spec.as_ref().is_some_and(|s| s.claim_ref.is_none());
        if !unclaimed || !satisfies(volume, claim, node) {
            continue;
        }
        let smaller = best.is_none_or(|b| {
            (capacity_bytes(volume), volume.name_any()) < (capacity_bytes(b), b.name_any())
        });
        if smaller {
            best = Some(volume);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        NodeSelector, NodeSelectorTerm, ObjectReference, PersistentVolumeClaimSpec,
        PersistentVolumeSpec, VolumeNodeAffinity, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::sync::Arc;

    fn claim(size: &str, class: Option<&str>) -> PersistentVolumeClaim {
        let mut claim = PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: class.map(str::to_string),
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_string(), Quantity(size.into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        claim.metadata.name = Some("data".into());
        claim.metadata.namespace = Some("team".into());
        claim.metadata.uid = Some("c-1".into());
        claim
    }

    fn volume(name: &str, size: &str, class: &str, modes: &[&str]) -> Arc<PersistentVolume> {
        let mut volume = PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                capacity: Some([("storage".to_string(), Quantity(size.into()))].into()),
                access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
                storage_class_name: Some(class.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        volume.metadata.name = Some(name.into());
        Arc::new(volume)
    }

    fn names(found: Option<&PersistentVolume>) -> Option<String> {
        found.map(|v| v.name_any())
    }

    #[test]
    fn the_smallest_fitting_volume_of_the_class_wins() {
        let volumes = vec![
            volume("big", "10Gi", "", &["ReadWriteOnce"]),
            volume("small", "1Gi", "", &["ReadWriteOnce", "ReadOnlyMany"]),
            volume("tiny", "100Mi", "", &["ReadWriteOnce"]),
            volume("other-class", "1Gi", "fast", &["ReadWriteOnce"]),
            volume("read-only", "1Gi", "", &["ReadOnlyMany"]),
        ];
        let c = claim("500Mi", None);
        assert_eq!(
            names(find_volume(&c, &volumes, None)).as_deref(),
            Some("small")
        );
        let fast = claim("500Mi", Some("fast"));
        assert_eq!(
            names(find_volume(&fast, &volumes, None)).as_deref(),
            Some("other-class")
        );
        let huge = claim("100Gi", None);
        assert_eq!(names(find_volume(&huge, &volumes, None)), None);
    }

    #[test]
    fn a_volume_bound_to_the_claim_wins_and_others_claims_are_skipped() {
        let mut taken = (*volume("taken", "1Gi", "", &["ReadWriteOnce"])).clone();
        taken.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            name: Some("other".into()),
            namespace: Some("team".into()),
            ..Default::default()
        });
        let mut ours = (*volume("ours", "5Gi", "x", &["ReadOnlyMany"])).clone();
        ours.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            name: Some("data".into()),
            namespace: Some("team".into()),
            uid: Some("c-1".into()),
            ..Default::default()
        });
        let c = claim("1Gi", None);
        let volumes = vec![Arc::new(taken.clone())];
        assert_eq!(names(find_volume(&c, &volumes, None)), None);
        let volumes = vec![Arc::new(taken), Arc::new(ours)];
        assert_eq!(
            names(find_volume(&c, &volumes, None)).as_deref(),
            Some("ours")
        );
    }

    #[test]
    fn a_chosen_node_must_meet_the_volume_affinity() {
        let mut pinned = (*volume("pinned", "1Gi", "", &["ReadWriteOnce"])).clone();
        pinned.spec.as_mut().unwrap().node_affinity = Some(VolumeNodeAffinity {
            required: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: "kubernetes.io/hostname".into(),
                        operator: "In".into(),
                        values: Some(vec!["node-a".into()]),
                    }]),
                    match_fields: None,
                }],
            }),
        });
        let node = |name: &str| {
            let mut n = Node::default();
            n.metadata.labels =
                Some([("kubernetes.io/hostname".to_string(), name.to_string())].into());
            n
        };
        let volumes = vec![Arc::new(pinned)];
        let c = claim("1Gi", None);
        assert!(find_volume(&c, &volumes, Some(&node("node-a"))).is_some());
        assert!(find_volume(&c, &volumes, Some(&node("node-b"))).is_none());
        assert!(find_volume(&c, &volumes, None).is_some());
    }
}
