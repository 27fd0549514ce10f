//! Upstream's validation of storage objects (`ValidateStorageClass`,
//! `ValidatePersistentVolume`, `ValidatePersistentVolumeClaim` and their updates): what each
//! must name, the values each field takes, and what may not change once written.

use serde_json::Value;

use crate::status::FieldCause;

const ACCESS_MODES: [&str; 4] = [
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// The volume sources of a PersistentVolume, by field name.
const PERSISTENT_VOLUME_SOURCES: [&str; 23] = [
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "csi",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "hostPath",
    "iscsi",
    "local",
    "nfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
    "ephemeral",
];

fn access_modes(modes: &Value, path: &str, required: &str, causes: &mut Vec<FieldCause>) {
    let listed = modes.as_array().map(Vec::as_slice).unwrap_or_default();
    if listed.is_empty() {
        causes.push(FieldCause::required(path, required));
    }
    for mode in listed {
        let mode = mode.as_str().unwrap_or_default();
        if !ACCESS_MODES.contains(&mode) {
            causes.push(FieldCause::not_supported(path, mode, &ACCESS_MODES));
        }
    }
}

/// A StorageClass.
pub fn storage_class(obj: &Value, causes: &mut Vec<FieldCause>) {
    if obj["provisioner"].as_str().is_none_or(str::is_empty) {
        causes.push(FieldCause::required("provisioner", ""));
    }
    if let Some(policy) = obj["reclaimPolicy"].as_str()
        && !["Delete", "Retain"].contains(&policy)
    {
        causes.push(FieldCause::not_supported(
            "reclaimPolicy",
            policy,
            &["Delete", "Retain"],
        ));
    }
    if let Some(mode) = obj["volumeBindingMode"].as_str()
        && !["Immediate", "WaitForFirstConsumer"].contains(&mode)
    {
        causes.push(FieldCause::not_supported(
            "volumeBindingMode",
            mode,
            &["Immediate", "WaitForFirstConsumer"],
        ));
    }
}

/// A StorageClass update: parameters, provisioner, reclaim policy and binding mode stay.
pub fn storage_class_update(old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    for field in ["parameters", "provisioner", "reclaimPolicy"] {
        if old.get(field) != new.get(field) {
            causes.push(FieldCause::forbidden(
                field,
                &format!("updates to {field} are forbidden."),
            ));
        }
    }
    if old.get("volumeBindingMode") != new.get("volumeBindingMode") {
        causes.push(FieldCause::invalid(
            "volumeBindingMode",
            &new["volumeBindingMode"],
            "field is immutable",
        ));
    }
}

/// A PersistentVolume.
pub fn persistent_volume(obj: &Value, causes: &mut Vec<FieldCause>) {
    let spec = &obj["spec"];
    access_modes(&spec["accessModes"], "spec.accessModes", "", causes);
    if spec["capacity"]["storage"].is_null() {
        causes.push(FieldCause::required("spec.capacity", ""));
    }
    if let Some(policy) = spec["persistentVolumeReclaimPolicy"].as_str()
        && !["Delete", "Recycle", "Retain"].contains(&policy)
    {
        causes.push(FieldCause::not_supported(
            "spec.persistentVolumeReclaimPolicy",
            policy,
            &["Delete", "Recycle", "Retain"],
        ));
    }
    let sources: Vec<&str> = PERSISTENT_VOLUME_SOURCES
        .iter()
        .copied()
        .filter(|s| spec.get(*s).is_some_and(|v| !v.is_null()))
        .collect();
    match sources.as_slice() {
        [] => causes.push(FieldCause::required("spec", "must specify a volume type")),
        [_] => {}
        [_, more @ ..] => {
            for source in more {
                causes.push(FieldCause::forbidden(
                    format!("spec.{source}"),
                    "may not specify more than 1 volume type",
                ));
            }
        }
    }
    for source in ["hostPath", "local"] {
        let at = &spec[source];
        if at.is_object() && at["path"].as_str().is_none_or(str::is_empty) {
            causes.push(FieldCause::required(format!("spec.{source}.path"), ""));
        }
    }
    if spec["local"].is_object() && spec["nodeAffinity"].is_null() {
        causes.push(FieldCause::required(
            "spec.nodeAffinity",
            "Local volume requires node affinity",
        ));
    }
}

/// A PersistentVolume update: its source stays, and so does a node affinity once set.
pub fn persistent_volume_update(old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    let source_changed = PERSISTENT_VOLUME_SOURCES
        .iter()
        .any(|s| old["spec"].get(*s) != new["spec"].get(*s));
    if source_changed {
        causes.push(FieldCause::forbidden(
            "spec.persistentvolumesource",
            "spec.persistentvolumesource is immutable after creation",
        ));
    }
    let old_affinity = &old["spec"]["nodeAffinity"];
    if !old_affinity.is_null() && *old_affinity != new["spec"]["nodeAffinity"] {
        causes.push(FieldCause::invalid(
            "spec.nodeAffinity",
            &new["spec"]["nodeAffinity"],
            "field is immutable",
        ));
    }
}

/// A PersistentVolumeClaim.
pub fn persistent_volume_claim(obj: &Value, causes: &mut Vec<FieldCause>) {
    let spec = &obj["spec"];
    access_modes(
        &spec["accessModes"],
        "spec.accessModes",
        "at least 1 access mode is required",
        causes,
    );
    if spec["resources"]["requests"]["storage"].is_null() {
        causes.push(FieldCause::required("spec.resources[storage]", ""));
    }
}

/// A PersistentVolumeClaim update: the spec stays, except the storage requested (expansion),
/// the volume attributes class, the volume name while it is still empty (the binder sets it
/// once), and a class where none was named (the binder gives the default class).
pub fn persistent_volume_claim_update(old: &Value, new: &Value, causes: &mut Vec<FieldCause>) {
    // A claim that named no class may be given one (the retroactive default class).
    let old_class = match &old["spec"]["storageClassName"] {
        Value::Null => &new["spec"]["storageClassName"],
        named => named,
    };
    let comparable = |spec: &Value, volume_name: &Value, class: &Value| {
        let mut spec = spec.clone();
        if let Some(map) = spec.as_object_mut() {
            map.remove("volumeAttributesClassName");
            map.insert("volumeName".into(), volume_name.clone());
            map.insert("storageClassName".into(), class.clone());
            if let Some(resources) = map.get_mut("resources").and_then(Value::as_object_mut) {
                resources.remove("requests");
            }
        }
        spec
    };
    let old_name = &old["spec"]["volumeName"];
    let name_set_once = if old_name.as_str().is_none_or(str::is_empty) {
        &new["spec"]["volumeName"]
    } else {
        old_name
    };
    let new_spec = &new["spec"];
    if comparable(&old["spec"], name_set_once, old_class)
        != comparable(
            new_spec,
            &new_spec["volumeName"],
            &new_spec["storageClassName"],
        )
    {
        causes.push(FieldCause::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(check: impl Fn(&mut Vec<FieldCause>)) -> Vec<String> {
        let mut causes = vec![];
        check(&mut causes);
        causes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn volumes_need_capacity_modes_and_one_source() {
        let good = json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/data"}}});
        assert!(messages(|c| persistent_volume(&good, c)).is_empty());
        let bad = json!({"spec": {"accessModes": ["ReadWriteSometimes"], "hostPath": {"path": "/a"},
            "nfs": {"server": "s", "path": "/b"}}});
        assert_eq!(
            messages(|c| persistent_volume(&bad, c)),
            [
                "spec.accessModes: Unsupported value: \"ReadWriteSometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
                "spec.capacity: Required value",
                "spec.nfs: Forbidden: may not specify more than 1 volume type",
            ]
        );
        let local = json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "local": {"path": "/mnt"}}});
        assert_eq!(
            messages(|c| persistent_volume(&local, c)),
            ["spec.nodeAffinity: Required value: Local volume requires node affinity"]
        );
        let none =
            json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}});
        assert_eq!(
            messages(|c| persistent_volume(&none, c)),
            ["spec: Required value: must specify a volume type"]
        );
    }

    #[test]
    fn a_claim_keeps_its_spec_but_gets_its_volume_once() {
        let old = json!({"spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
            "resources": {"requests": {"storage": "1Gi"}}}});
        let mut bound = old.clone();
        bound["spec"]["volumeName"] = json!("pv-1");
        bound["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(messages(|c| persistent_volume_claim_update(&old, &bound, c)).is_empty());
        let mut moved = bound.clone();
        moved["spec"]["volumeName"] = json!("pv-2");
        assert_eq!(
            messages(|c| persistent_volume_claim_update(&bound, &moved, c)),
            [
                "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"
            ]
        );
        let mut unclassed = old.clone();
        unclassed["spec"]
            .as_object_mut()
            .unwrap()
            .remove("storageClassName");
        assert!(messages(|c| persistent_volume_claim_update(&unclassed, &old, c)).is_empty());
        let mut reclassed = old.clone();
        reclassed["spec"]["storageClassName"] = json!("fast");
        assert_eq!(
            messages(|c| persistent_volume_claim_update(&old, &reclassed, c)).len(),
            1
        );
        let no_size = json!({"spec": {"accessModes": []}});
        assert_eq!(
            messages(|c| persistent_volume_claim(&no_size, c)),
            [
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Required value",
            ]
        );
    }

    #[test]
    fn a_class_keeps_what_it_was_created_with() {
        let old = json!({"provisioner": "baton.dev/local-path", "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer"});
        assert!(messages(|c| storage_class(&old, c)).is_empty());
        let mut new = old.clone();
        new["reclaimPolicy"] = json!("Retain");
        assert_eq!(
            messages(|c| storage_class_update(&old, &new, c)),
            ["reclaimPolicy: Forbidden: updates to reclaimPolicy are forbidden."]
        );
        let bad = json!({"provisioner": "", "volumeBindingMode": "Later"});
        assert_eq!(messages(|c| storage_class(&bad, c)).len(), 2);
    }
}
