//! The pod-template-hash: the label that tells a Deployment's ReplicaSets (and their Pods)
//! apart, computed from the Pod template and the Deployment's collisionCount. As upstream, an
//! FNV-32a hash rendered as the decimal digits of the number mapped onto an alphabet without
//! vowels (no accidental words) and without look-alike characters; upstream hashes a deep
//! printing of the Go struct, this hashes the template's canonical JSON, so the values differ
//! from upstream's but are as stable: same template and collisionCount, same hash.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

use crate::controller_revision::template_hash;

/// The label (and selector key) carrying the hash.
pub(crate) const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The pod-template-hash of `template` with `collision_count`: the same FNV-1a template hash
/// (collision count bytes and safe encoding included) that DaemonSets label their revisions
/// with, as upstream computes both with one ComputeHash.
pub(crate) fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    template_hash(template, collision_count)
}

/// Whether two Pod templates are the same apart from their pod-template-hash label (how a
/// Deployment recognises the ReplicaSet of its current template), treating absent and empty
/// lists and maps alike, as upstream's semantic equality does.
pub(crate) fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    comparable(a) == comparable(b)
}

fn comparable(template: &PodTemplateSpec) -> Value {
    let mut value = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    normalize(&mut value);
    value
}

/// Drops nulls, empty lists, and empty label and annotation maps, at every depth.
fn normalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.values_mut().for_each(normalize);
            map.retain(|key, v| match v {
                Value::Null => false,
                Value::Array(items) => !items.is_empty(),
                Value::Object(m) if m.is_empty() => {
                    !matches!(key.as_str(), "labels" | "annotations")
                }
                _ => true,
            });
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn hash_is_stable_and_depends_on_template_and_collisions() {
        let a = compute_hash(&template("nginx:1.27"), None);
        assert_eq!(a, compute_hash(&template("nginx:1.27"), None));
        assert!((1..=10).contains(&a.len()), "{a}");
        // Pinned: the encoding of the FNV-1a sum of the template's JSON must not change, or
        // every Deployment would roll out again after an upgrade.
        assert_eq!(a, "6c8d7489d5");
        assert_ne!(a, compute_hash(&template("nginx:1.28"), None));
        let collided = compute_hash(&template("nginx:1.27"), Some(1));
        assert_ne!(a, collided);
        assert_eq!(collided, "d898ff9b");
        assert_eq!(collided, compute_hash(&template("nginx:1.27"), Some(1)));
        assert_ne!(collided, compute_hash(&template("nginx:1.27"), Some(2)));
    }

    #[test]
    fn templates_compare_without_the_hash_label() {
        let deployment = template("nginx:1.27");
        let mut replicaset = deployment.clone();
        replicaset
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), "abc".into());
        assert!(equal_ignore_hash(&deployment, &replicaset));
        replicaset.spec.as_mut().unwrap().volumes = Some(vec![]);
        assert!(
            equal_ignore_hash(&deployment, &replicaset),
            "empty list = absent"
        );
        assert!(!equal_ignore_hash(&deployment, &template("nginx:1.28")));
    }
}
