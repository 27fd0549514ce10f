//! The DefaultStorageClass admission plugin: a new PersistentVolumeClaim that names no
//! storage class (spec.storageClassName absent, not `""`) gets the default class, the one
//! annotated `storageclass.kubernetes.io/is-default-class: "true"` (the newest, should
//! several be). Classes are few and claims rarely created, so the classes are read from
//! etcd on each such create rather than kept in a cache.

use baton_store::Store;
use serde_json::Value;

use crate::objects::{decode, store_error};
use crate::resources;
use crate::status::StatusError;

/// The annotation that marks the default class (and its beta spelling, still honoured).
const DEFAULT_CLASS_ANNOTATIONS: [&str; 2] = [
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];

/// Whether a StorageClass object is marked as the default.
pub fn is_default_class(class: &Value) -> bool {
    DEFAULT_CLASS_ANNOTATIONS
        .iter()
        .any(|a| class["metadata"]["annotations"][a].as_str() == Some("true"))
}

/// The default class among `classes`: the newest marked one, ties by name.
pub fn default_among(classes: &[Value]) -> Option<String> {
    classes
        .iter()
        .filter(|c| is_default_class(c))
        .max_by(|a, b| {
            let created = |c: &Value| {
                c["metadata"]["creationTimestamp"]
                    .as_str()
                    .map(str::to_string)
            };
            let name = |c: &Value| c["metadata"]["name"].as_str().map(str::to_string);
            created(a).cmp(&created(b)).then(name(b).cmp(&name(a)))
        })
        .and_then(|c| c["metadata"]["name"].as_str().map(str::to_string))
}

/// Gives a new claim without a class the default class, if there is one.
pub async fn admit_new_claim<S: Store>(store: &S, claim: &mut Value) -> Result<(), StatusError> {
    if !claim["spec"]["storageClassName"].is_null() {
        return Ok(());
    }
    let resource = resources::find("storage.k8s.io", "v1", "storageclasses")
        .expect("storageclasses are served");
    let page = store
        .list(resource.storage_prefix, Default::default())
        .await
        .map_err(|e| store_error(resource, "", e))?;
    let classes = page
        .items
        .iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(name) = default_among(&classes) {
        claim["spec"]["storageClassName"] = Value::String(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(name: &str, created: &str, default: Option<&str>) -> Value {
        let mut c =
            json!({"metadata": {"name": name, "creationTimestamp": created}, "provisioner": "p"});
        if let Some(value) = default {
            c["metadata"]["annotations"] =
                json!({"storageclass.kubernetes.io/is-default-class": value});
        }
        c
    }

    #[test]
    fn the_newest_marked_class_is_the_default() {
        let classes = [
            class("slow", "2026-11-01T00:00:00Z", Some("true")),
            class("fast", "2026-11-02T00:00:00Z", Some("true")),
            class("newest", "2026-11-03T00:00:00Z", Some("false")),
            class("plain", "2026-11-04T00:00:00Z", None),
        ];
        assert_eq!(default_among(&classes).as_deref(), Some("fast"));
        assert_eq!(default_among(&classes[2..]), None);
    }
}
