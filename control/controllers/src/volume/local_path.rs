//! Baton's built-in provisioner, `baton.dev/local-path` (the counterpart of the
//! local-path-provisioner kind and k3s ship): a claim of a class it serves gets a
//! PersistentVolume that is a directory on the node its first Pod was scheduled to
//! (`ROOT/pvc-UID_NAMESPACE_NAME`, a hostPath volume the kubelet creates when it first mounts
//! it), pinned to that node by node affinity, and already bound to the claim.

use std::path::Path;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;

/// The provisioner name classes give to have Baton provision their volumes.
pub const PROVISIONER: &str = "baton.dev/local-path";

/// The annotation that says which provisioner made a volume.
pub const PROVISIONED_BY_ANNOTATION: &str = "pv.kubernetes.io/provisioned-by";

/// The label that names a node, which the volume's node affinity selects.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The default StorageClass `name` of this provisioner (kind's and k3s's classes, as Baton's).
pub fn default_class(name: &str) -> StorageClass {
    let mut class = StorageClass {
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..Default::default()
    };
    class.metadata.name = Some(name.into());
    class.metadata.annotations = Some(
        [(
            "storageclass.kubernetes.io/is-default-class".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    class
}

/// The name of the volume provisioned for a claim (upstream's `pvc-<claim uid>`).
pub fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.metadata.uid.as_deref().unwrap_or_default())
}

/// The PersistentVolume for `claim` of `class` on `node`, its directory under `root`.
pub fn volume_for(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &Node,
    root: &Path,
) -> PersistentVolume {
    let name = volume_name(claim);
    let namespace = claim.namespace().unwrap_or_default();
    let directory = root.join(format!("{name}_{namespace}_{}", claim.name_any()));
    let claim_spec = claim.spec.clone().unwrap_or_default();
    let storage = claim_spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .unwrap_or_default();
    let node_name = node.name_any();
    let hostname = node
        .labels()
        .get(HOSTNAME_LABEL)
        .cloned()
        .unwrap_or(node_name);
    let mut volume = PersistentVolume {
        spec: Some(PersistentVolumeSpec {
            capacity: Some([("storage".to_string(), storage)].into()),
            access_modes: claim_spec.access_modes.clone(),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: class.metadata.name.clone(),
            volume_mode: Some(
                claim_spec
                    .volume_mode
                    .clone()
                    .unwrap_or_else(|| "Filesystem".into()),
            ),
            mount_options: class.mount_options.clone(),
            host_path: Some(HostPathVolumeSource {
                path: directory.display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.into(),
                            operator: "In".into(),
                            values: Some(vec![hostname]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                name: claim.metadata.name.clone(),
                namespace: claim.metadata.namespace.clone(),
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
                field_path: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    volume.metadata.name = Some(name);
    volume.metadata.annotations = Some(
        [(
            PROVISIONED_BY_ANNOTATION.to_string(),
            PROVISIONER.to_string(),
        )]
        .into(),
    );
    volume
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_volume_binding::{is_bound_to, node_fits};
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn a_volume_on_the_node_bound_to_the_claim() {
        let mut claim = PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_string(), Quantity("1Gi".into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        claim.metadata.name = Some("data".into());
        claim.metadata.namespace = Some("team".into());
        claim.metadata.uid = Some("1234".into());
        let mut class = StorageClass {
            provisioner: PROVISIONER.into(),
            ..Default::default()
        };
        class.metadata.name = Some("standard".into());
        let mut node = Node::default();
        node.metadata.name = Some("node-a".into());
        node.metadata.labels = Some([(HOSTNAME_LABEL.to_string(), "node-a".to_string())].into());

        let volume = volume_for(
            &claim,
            &class,
            &node,
            Path::new("/var/lib/baton/local-path"),
        );
        assert_eq!(volume.name_any(), "pvc-1234");
        let spec = volume.spec.as_ref().unwrap();
        assert_eq!(
            spec.host_path.as_ref().unwrap().path,
            "/var/lib/baton/local-path/pvc-1234_team_data"
        );
        assert_eq!(spec.capacity.as_ref().unwrap()["storage"].0, "1Gi");
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("standard"));
        assert!(is_bound_to(&volume, &claim));
        assert!(node_fits(&volume, &node));
        let mut other = node.clone();
        other.metadata.labels = Some([(HOSTNAME_LABEL.to_string(), "node-b".to_string())].into());
        assert!(!node_fits(&volume, &other));
    }
}
