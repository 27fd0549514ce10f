//! The pod-template-hash: the label that tells a Deployment's ReplicaSets (and their Pods)
//! apart, computed from the Pod template and the Deployment's collisionCount. As upstream, an
//! FNV-32a hash rendered as the decimal digits of the number mapped onto an alphabet without
//! vowels (no accidental words) and without look-alike characters; upstream hashes a deep
//! printing of the Go struct, this hashes the template's canonical JSON, so the values differ
//! from upstream's but are as stable: same template and collisionCount, same hash.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// The label (and selector key) carrying the hash.
pub(crate) const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Upstream's SafeEncodeString alphabet.
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// FNV-1a, 32 bits.
fn fnv32a(data: &[u8], mut hash: u32) -> u32 {
    for byte in data {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

const FNV32_OFFSET: u32 = 0x811c_9dc5;

/// The pod-template-hash of `template` with `collision_count`.
pub(crate) fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let printed = serde_json::to_vec(template).unwrap_or_default();
    let mut hash = fnv32a(&printed, FNV32_OFFSET);
    if let Some(count) = collision_count {
        // Eight bytes, the count little-endian in the first four, as upstream writes it.
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(count as u32).to_le_bytes());
        hash = fnv32a(&bytes, hash);
    }
    safe_encode(&hash.to_string())
}

/// Maps each byte onto ALPHABET (upstream's rand.SafeEncodeString).
fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
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
    fn fnv32a_matches_the_reference_vectors() {
        assert_eq!(fnv32a(b"", FNV32_OFFSET), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a", FNV32_OFFSET), 0xe40c_292c);
        assert_eq!(fnv32a(b"foobar", FNV32_OFFSET), 0xbf9c_f968);
    }

    #[test]
    fn hash_is_stable_and_depends_on_template_and_collisions() {
        let a = compute_hash(&template("nginx:1.27"), None);
        assert_eq!(a, compute_hash(&template("nginx:1.27"), None));
        assert!((1..=10).contains(&a.len()), "{a}");
        assert!(a.bytes().all(|b| ALPHABET.contains(&b)), "{a}");
        assert_ne!(a, compute_hash(&template("nginx:1.28"), None));
        let collided = compute_hash(&template("nginx:1.27"), Some(1));
        assert_ne!(a, collided);
        assert_eq!(collided, compute_hash(&template("nginx:1.27"), Some(1)));
        assert_ne!(collided, compute_hash(&template("nginx:1.27"), Some(2)));
    }

    #[test]
    fn safe_encoding_maps_digits() {
        // '0' is byte 48: 48 % 27 = 21 -> '4'; '1' -> '5'; '9' (57) -> 57 % 27 = 3 -> 'f'.
        assert_eq!(safe_encode("019"), "45f");
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
