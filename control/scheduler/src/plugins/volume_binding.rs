//! VolumeBinding: a pod's PersistentVolumeClaims must exist and not be going away; a bound
//! claim's volume must be reachable from the node (its node affinity); an unbound claim is
//! either waited for (its class binds at once: the binder's job, not the scheduler's) or, for
//! a WaitForFirstConsumer class, satisfied on the node by a free volume the node can reach or
//! by the class's provisioner. Once the pod has a node, each such claim is annotated with it
//! (`volume.kubernetes.io/selected-node`) before the pod is bound, and the volume binder binds
//! or provisions for that node; the kubelet waits for the claim to be bound before it mounts.
//! (Upstream's scheduler also waits for the claims in PreBind; Baton's binds the pod at once.)

use std::collections::HashMap;
use std::sync::Arc;

use baton_volume_binding::{
    SELECTED_NODE_ANNOTATION, claim_class, claim_volume_name, find_volume, node_fits,
};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;

use crate::framework::{Code, Plugin, PreFilterRejection, Rejection};
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;

/// The reason of a node a bound volume cannot be reached from.
pub const AFFINITY_CONFLICT: &str = "node(s) had volume node affinity conflict";
/// The reason of a node where a claim waiting for its pod can get no volume.
pub const NO_VOLUME: &str = "node(s) didn't find available persistent volumes to bind";
/// Why a pod waits for the binder.
pub const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
/// The reason of every node when a claim names a volume that does not exist.
pub const VOLUME_MISSING: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
/// The provisioner name of classes that provision nothing (static volumes only).
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// The claims, volumes and classes the scheduler knows.
#[derive(Debug, Default)]
pub struct VolumeObjects {
    /// By "namespace/name".
    claims: HashMap<String, Arc<PersistentVolumeClaim>>,
    volumes: HashMap<String, Arc<PersistentVolume>>,
    classes: HashMap<String, Arc<StorageClass>>,
}

impl VolumeObjects {
    pub fn upsert_claim(&mut self, claim: Arc<PersistentVolumeClaim>) {
        let key = format!(
            "{}/{}",
            claim.namespace().unwrap_or_default(),
            claim.name_any()
        );
        self.claims.insert(key, claim);
    }

    pub fn remove_claim(&mut self, claim: &PersistentVolumeClaim) {
        let key = format!(
            "{}/{}",
            claim.namespace().unwrap_or_default(),
            claim.name_any()
        );
        self.claims.remove(&key);
    }

    pub fn upsert_volume(&mut self, volume: Arc<PersistentVolume>) {
        self.volumes.insert(volume.name_any(), volume);
    }

    pub fn remove_volume(&mut self, volume: &PersistentVolume) {
        self.volumes.remove(&volume.name_any());
    }

    pub fn upsert_class(&mut self, class: Arc<StorageClass>) {
        self.classes.insert(class.name_any(), class);
    }

    pub fn remove_class(&mut self, class: &StorageClass) {
        self.classes.remove(&class.name_any());
    }

    /// Records that the claim's pod went to `node` before the API server has the annotation
    /// (the scheduler's assumption: the claim's next pod must follow). Returns the claim's
    /// resource version, which the annotation is then written over.
    pub fn assume_selected_node(&mut self, key: &str, node: &str) -> Option<String> {
        let claim = self.claims.get(key)?;
        let resource_version = claim.metadata.resource_version.clone();
        let mut assumed = (**claim).clone();
        assumed
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(SELECTED_NODE_ANNOTATION.to_string(), node.to_string());
        self.claims.insert(key.to_string(), Arc::new(assumed));
        resource_version
    }
}

/// A claim that waits for its pod's node.
#[derive(Debug, Clone)]
struct Waiting {
    claim: Arc<PersistentVolumeClaim>,
    /// The class provisions volumes.
    provisions: bool,
}

/// What the filter checks for one pod.
#[derive(Debug, Clone)]
pub struct FilterState {
    /// The volumes of the pod's bound claims.
    bound: Vec<Arc<PersistentVolume>>,
    waiting: Vec<Waiting>,
    /// Every known volume, for the waiting claims.
    volumes: Vec<Arc<PersistentVolume>>,
    /// A claim names a volume that does not exist.
    volume_missing: bool,
}

/// `None` when the pod has no claims; an error when it cannot be scheduled anywhere now.
pub fn pre_filter(
    pod: &PodInfo,
    objects: &VolumeObjects,
) -> Result<Option<FilterState>, PreFilterRejection> {
    let claim_names: Vec<&str> = pod
        .pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
        .collect();
    if claim_names.is_empty() {
        return Ok(None);
    }
    let reject = |message: String| PreFilterRejection {
        plugin: Plugin::VolumeBinding,
        message,
    };
    let mut state = FilterState {
        bound: vec![],
        waiting: vec![],
        volumes: vec![],
        volume_missing: false,
    };
    for name in claim_names {
        let key = format!("{}/{name}", pod.namespace);
        let Some(claim) = objects.claims.get(&key) else {
            return Err(reject(format!("persistentvolumeclaim {name:?} not found")));
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(reject(format!(
                "persistentvolumeclaim {name:?} is being deleted"
            )));
        }
        if let Some(volume_name) = claim_volume_name(claim) {
            match objects.volumes.get(volume_name) {
                Some(volume) => state.bound.push(volume.clone()),
                None => state.volume_missing = true,
            }
            continue;
        }
        let class = objects.classes.get(claim_class(claim));
        let waits =
            class.is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        if !waits {
            return Err(reject(UNBOUND_IMMEDIATE.to_string()));
        }
        state.waiting.push(Waiting {
            claim: claim.clone(),
            provisions: class.is_some_and(|c| c.provisioner != NO_PROVISIONER),
        });
    }
    if !state.waiting.is_empty() {
        state.volumes = objects.volumes.values().cloned().collect();
    }
    Ok(Some(state))
}

/// Rejects nodes a bound volume cannot be reached from, or where a waiting claim can get no
/// volume.
pub fn filter(state: &FilterState, node: &NodeInfo) -> Result<(), Rejection> {
    if state.volume_missing {
        return Err(Rejection::new(
            Plugin::VolumeBinding,
            Code::UnschedulableAndUnresolvable,
            VOLUME_MISSING,
        ));
    }
    let Some(node_object) = node.node.as_deref() else {
        return Ok(());
    };
    if state.bound.iter().any(|v| !node_fits(v, node_object)) {
        return Err(Rejection::new(
            Plugin::VolumeBinding,
            Code::UnschedulableAndUnresolvable,
            AFFINITY_CONFLICT,
        ));
    }
    for waiting in &state.waiting {
        // A node was chosen for this claim already: only that node will do.
        if let Some(selected) = waiting.claim.annotations().get(SELECTED_NODE_ANNOTATION) {
            if selected.as_str() != &*node.name {
                return Err(Rejection::new(
                    Plugin::VolumeBinding,
                    Code::UnschedulableAndUnresolvable,
                    NO_VOLUME,
                ));
            }
            continue;
        }
        let static_volume = find_volume(&waiting.claim, &state.volumes, Some(node_object));
        if static_volume.is_none() && !waiting.provisions {
            return Err(Rejection::new(
                Plugin::VolumeBinding,
                Code::UnschedulableAndUnresolvable,
                NO_VOLUME,
            ));
        }
    }
    Ok(())
}

/// A claim to annotate with its pod's node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToSelect {
    pub namespace: String,
    pub name: String,
    /// The version the node is written over (`None`: unconditionally).
    pub resource_version: Option<String>,
}

/// The claims to annotate with the chosen node before the pod is bound: each waiting claim
/// that has no node yet. They are assumed to have it in `objects` at once, so that another
/// pod of the same claim follows before the annotation comes back through the watch.
pub fn select_node(
    state: &FilterState,
    objects: &mut VolumeObjects,
    node: &str,
) -> Vec<ClaimToSelect> {
    state
        .waiting
        .iter()
        .filter(|w| !w.claim.annotations().contains_key(SELECTED_NODE_ANNOTATION))
        .map(|w| {
            let namespace = w.claim.namespace().unwrap_or_default();
            let name = w.claim.name_any();
            let resource_version =
                objects.assume_selected_node(&format!("{namespace}/{name}"), node);
            ClaimToSelect {
                namespace,
                name,
                resource_version,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_info::testing::{node, pod};
    use k8s_openapi::api::core::v1::{
        NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimSpec,
        PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, Volume, VolumeNodeAffinity,
    };

    fn pod_with_claim(claim: &str) -> Arc<PodInfo> {
        let mut builder = pod("web");
        builder.0.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.into(),
                read_only: None,
            }),
            ..Default::default()
        }]);
        builder.info()
    }

    fn claim(name: &str, class: &str, volume: Option<&str>) -> Arc<PersistentVolumeClaim> {
        let mut claim = PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: Some(class.into()),
                volume_name: volume.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        };
        claim.metadata.name = Some(name.into());
        claim.metadata.namespace = Some("default".into());
        Arc::new(claim)
    }

    fn class(name: &str, provisioner: &str, mode: &str) -> Arc<StorageClass> {
        let mut class = StorageClass {
            provisioner: provisioner.into(),
            volume_binding_mode: Some(mode.into()),
            ..Default::default()
        };
        class.metadata.name = Some(name.into());
        Arc::new(class)
    }

    fn pinned_volume(name: &str, to: &str) -> Arc<PersistentVolume> {
        let mut volume = PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "kubernetes.io/hostname".into(),
                                operator: "In".into(),
                                values: Some(vec![to.into()]),
                            }]),
                            match_fields: None,
                        }],
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        volume.metadata.name = Some(name.into());
        Arc::new(volume)
    }

    fn node_info(name: &str) -> NodeInfo {
        let mut info = NodeInfo::new(name.into());
        info.set_node(node(name).build());
        info
    }

    #[test]
    fn missing_deleting_and_unbound_immediate_claims_stop_the_pod() {
        let mut objects = VolumeObjects::default();
        let web = pod_with_claim("data");
        let err = pre_filter(&web, &objects).unwrap_err();
        assert_eq!(err.message, "persistentvolumeclaim \"data\" not found");
        objects.upsert_class(class("fast", "example.com/csi", "Immediate"));
        objects.upsert_claim(claim("data", "fast", None));
        let err = pre_filter(&web, &objects).unwrap_err();
        assert_eq!(err.message, UNBOUND_IMMEDIATE);
        let mut deleting = (*claim("data", "fast", None)).clone();
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        objects.upsert_claim(Arc::new(deleting));
        let err = pre_filter(&web, &objects).unwrap_err();
        assert_eq!(
            err.message,
            "persistentvolumeclaim \"data\" is being deleted"
        );
        assert!(
            pre_filter(&pod("plain").info(), &objects)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_bound_volume_keeps_the_pod_on_its_node() {
        let mut objects = VolumeObjects::default();
        objects.upsert_claim(claim("data", "standard", Some("pv-a")));
        objects.upsert_volume(pinned_volume("pv-a", "node-a"));
        let state = pre_filter(&pod_with_claim("data"), &objects)
            .unwrap()
            .unwrap();
        assert!(filter(&state, &node_info("node-a")).is_ok());
        let rejection = filter(&state, &node_info("node-b")).unwrap_err();
        assert_eq!(rejection.reasons, [AFFINITY_CONFLICT]);
        assert!(select_node(&state, &mut VolumeObjects::default(), "node-a").is_empty());
    }

    #[test]
    fn a_waiting_claim_goes_where_a_volume_can_be_had() {
        let mut objects = VolumeObjects::default();
        objects.upsert_class(class(
            "standard",
            "baton.dev/local-path",
            "WaitForFirstConsumer",
        ));
        objects.upsert_class(class("static", NO_PROVISIONER, "WaitForFirstConsumer"));
        objects.upsert_claim(claim("data", "standard", None));
        let state = pre_filter(&pod_with_claim("data"), &objects)
            .unwrap()
            .unwrap();
        // A provisioner makes the volume wherever the pod goes.
        assert!(filter(&state, &node_info("node-b")).is_ok());
        let selected = select_node(&state, &mut objects, "node-b");
        assert_eq!(
            (selected[0].namespace.as_str(), selected[0].name.as_str()),
            ("default", "data")
        );
        // Assumed at once: the claim's next pod may only go to node-b.
        let next = pre_filter(&pod_with_claim("data"), &objects)
            .unwrap()
            .unwrap();
        assert!(filter(&next, &node_info("node-b")).is_ok());
        assert!(filter(&next, &node_info("node-a")).is_err());
        // Static volumes only: the node needs one it can reach.
        objects.upsert_claim(claim("data", "static", None));
        let mut free = (*pinned_volume("pv-a", "node-a")).clone();
        free.spec.as_mut().unwrap().storage_class_name = Some("static".into());
        objects.upsert_volume(Arc::new(free));
        let state = pre_filter(&pod_with_claim("data"), &objects)
            .unwrap()
            .unwrap();
        assert!(filter(&state, &node_info("node-a")).is_ok());
        let rejection = filter(&state, &node_info("node-b")).unwrap_err();
        assert_eq!(rejection.reasons, [NO_VOLUME]);
        // Once a node is chosen for the claim, only that node will do.
        let mut chosen = (*claim("data", "standard", None)).clone();
        chosen.metadata.annotations =
            Some([(SELECTED_NODE_ANNOTATION.to_string(), "node-b".to_string())].into());
        objects.upsert_claim(Arc::new(chosen));
        let state = pre_filter(&pod_with_claim("data"), &objects)
            .unwrap()
            .unwrap();
        assert!(filter(&state, &node_info("node-b")).is_ok());
        assert!(filter(&state, &node_info("node-a")).is_err());
        assert!(select_node(&state, &mut objects, "node-b").is_empty());
    }
}
