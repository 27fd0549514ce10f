//! ControllerRevisions (apps/v1): the snapshots of a pod template that DaemonSets and
//! StatefulSets keep so that they can tell current from outdated Pods and so that
//! `kubectl rollout history` and `kubectl rollout undo` work.
//!
//! A revision's data is, as upstream stores it, a strategic merge patch that puts the template
//! back: `{"spec":{"template":{..., "$patch":"replace"}}}`. Hashes are FNV-32 sums encoded with
//! upstream's alphabet of consonants and digits; upstream hashes Go's printed form of the
//! template, which does not exist here, so Baton hashes the template's JSON (stable: the typed
//! object serialises fields in a fixed order and maps sorted by key).

use std::sync::Arc;

use baton_client::Informer;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::runtime::reflector::Store;
use serde_json::{Value, json};

/// The Pod label naming the revision a Pod was made from (a DaemonSet writes the hash, a
/// StatefulSet the revision's name).
pub const POD_REVISION_LABEL: &str = "controller-revision-hash";
/// The label a StatefulSet's revisions carry with their hash.
pub const REVISION_HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// The alphabet of upstream's SafeEncodeString: no vowels (no words), no look-alikes.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a, 32 bits.
pub fn fnv1a_32(parts: &[&[u8]]) -> u32 {
    let mut hash = FNV_OFFSET;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// FNV-1, 32 bits.
pub fn fnv1_32(parts: &[&[u8]]) -> u32 {
    let mut hash = FNV_OFFSET;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash = hash.wrapping_mul(FNV_PRIME);
        hash ^= u32::from(*byte);
    }
    hash
}

/// A hash as upstream writes it into names and labels: its decimal digits, each mapped to a
/// letter or digit of the safe alphabet.
pub fn safe_encode(hash: u32) -> String {
    hash.to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// A Pod template's hash (upstream's ComputeHash; DaemonSet revisions and Deployments'
/// pod-template-hash both use it): FNV-1a of the template, then of the
/// collision count as eight little-endian bytes when there is one.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let hash = match collision_count {
        Some(count) => {
            let mut extra = [0u8; 8];
            extra[..4].copy_from_slice(&(count as u32).to_le_bytes());
            fnv1a_32(&[&bytes, &extra])
        }
        None => fnv1a_32(&[&bytes]),
    };
    safe_encode(hash)
}

/// A StatefulSet revision's hash (upstream's HashControllerRevision): FNV-1 of the revision's
/// data, then of the collision count in decimal when there is one.
pub fn revision_data_hash(data: &Value, collision_count: Option<i32>) -> String {
    let bytes = serde_json::to_vec(data).unwrap_or_default();
    let hash = match collision_count {
        Some(count) => fnv1_32(&[&bytes, count.to_string().as_bytes()]),
        None => fnv1_32(&[&bytes]),
    };
    safe_encode(hash)
}

/// A revision's name: the owner's name (cut to leave room) and the hash.
pub fn revision_name(owner: &str, hash: &str) -> String {
    // Upstream keeps 223 characters of the owner's name so that the whole fits 253.
    let prefix: String = owner.chars().take(223).collect();
    format!("{prefix}-{hash}")
}

/// A revision's data for `template`: the patch that restores it.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(map) = template.as_object_mut() {
        map.insert("$patch".into(), json!("replace"));
    }
    json!({ "spec": { "template": template } })
}

/// Whether `revision` holds `data`.
pub fn holds(revision: &ControllerRevision, data: &Value) -> bool {
    revision.data.as_ref().is_some_and(|d| &d.0 == data)
}

/// The template a revision holds, if its data is the patch form written here and by upstream.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision
        .data
        .as_ref()?
        .0
        .get("spec")?
        .get("template")?
        .clone();
    if let Some(map) = template.as_object_mut() {
        map.remove("$patch");
    }
    serde_json::from_value(template).ok()
}

/// The revisions in `namespace` controlled by the object with `uid`, oldest first (by
/// revision number, then name).
pub fn owned_revisions(
    revisions: &Store<ControllerRevision>,
    namespace: &str,
    uid: &str,
) -> Vec<Arc<ControllerRevision>> {
    let mut owned: Vec<_> = revisions
        .state()
        .into_iter()
        .filter(|r| {
            r.metadata.namespace.as_deref() == Some(namespace)
                && crate::pod_control::controller_uid(r.as_ref()) == Some(uid)
        })
        .collect();
    owned.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    owned
}

/// The revision number after the highest of `revisions`.
pub fn next_revision(revisions: &[Arc<ControllerRevision>]) -> i64 {
    revisions.iter().map(|r| r.revision).max().unwrap_or(0) + 1
}

/// Which of the outdated `history` (oldest first) to delete so that at most `limit` remain,
/// never one still `live` (in use by a Pod or current).
pub fn history_to_delete(
    history: &[Arc<ControllerRevision>],
    limit: usize,
    live: impl Fn(&ControllerRevision) -> bool,
) -> Vec<&ControllerRevision> {
    let dead: Vec<&ControllerRevision> = history
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| !live(r))
        .collect();
    let excess = dead.len().saturating_sub(limit);
    dead.into_iter().take(excess).collect()
}

/// An informer of every ControllerRevision, for a controller that keeps revisions.
pub fn informer(client: &kube::Client) -> Informer<ControllerRevision> {
    Informer::new(
        kube::Api::all(client.clone()),
        kube::runtime::watcher::Config::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::runtime::RawExtension;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        // Reference values of the FNV specification.
        assert_eq!(fnv1a_32(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv1a_32(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv1a_32(&[b"foobar"]), 0xbf9c_f968);
        assert_eq!(fnv1_32(&[b"a"]), 0x050c_5d7e);
        assert_eq!(fnv1_32(&[b"foobar"]), 0x31f0_b262);
        assert_eq!(fnv1a_32(&[b"foo", b"bar"]), fnv1a_32(&[b"foobar"]));
    }

    #[test]
    fn safe_encoding_maps_digits_like_upstream() {
        // '0' is byte 48, 48 % 27 = 21 -> '4'; '1' -> '5'; '9' is 57, 57 % 27 = 3 -> 'f'.
        assert_eq!(safe_encode(0), "4");
        assert_eq!(safe_encode(19), "5f");
        assert!(
            safe_encode(u32::MAX)
                .chars()
                .all(|c| SAFE_ALPHABET.contains(&(c as u8)))
        );
    }

    #[test]
    fn template_hash_is_stable_and_tracks_changes() {
        let a = template_hash(&template("nginx:1"), None);
        assert_eq!(a, template_hash(&template("nginx:1"), None));
        // The same template read back from JSON hashes the same.
        let round: PodTemplateSpec =
            serde_json::from_str(&serde_json::to_string(&template("nginx:1")).unwrap()).unwrap();
        assert_eq!(a, template_hash(&round, None));
        assert_ne!(a, template_hash(&template("nginx:2"), None));
        assert_ne!(a, template_hash(&template("nginx:1"), Some(1)));
        assert_ne!(
            template_hash(&template("nginx:1"), Some(1)),
            template_hash(&template("nginx:1"), Some(2))
        );
    }

    #[test]
    fn revision_data_round_trips_the_template() {
        let data = template_patch(&template("nginx:1"));
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let revision = ControllerRevision {
            data: Some(RawExtension(data.clone())),
            ..Default::default()
        };
        assert!(holds(&revision, &data));
        assert!(!holds(&revision, &template_patch(&template("nginx:2"))));
        assert_eq!(template_of(&revision), Some(template("nginx:1")));
        let h = revision_data_hash(&data, Some(0));
        assert_eq!(h, revision_data_hash(&data, Some(0)));
        assert_ne!(h, revision_data_hash(&data, Some(1)));
    }

    #[test]
    fn names_are_cut_to_fit() {
        assert_eq!(revision_name("web", "abc"), "web-abc");
        let long = "x".repeat(300);
        assert_eq!(revision_name(&long, "abc").len(), 223 + 4);
    }

    #[test]
    fn history_keeps_the_limit_and_live_revisions() {
        let rev = |name: &str, n: i64| {
            Arc::new(ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                revision: n,
                ..Default::default()
            })
        };
        let history = vec![rev("a", 1), rev("b", 2), rev("c", 3), rev("d", 4)];
        let names = |v: Vec<&ControllerRevision>| {
            v.iter()
                .map(|r| r.metadata.name.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(history_to_delete(&history, 2, |_| false)), ["a", "b"]);
        let live = |r: &ControllerRevision| r.metadata.name.as_deref() == Some("a");
        assert_eq!(names(history_to_delete(&history, 2, live)), ["b"]);
        assert!(history_to_delete(&history, 10, |_| false).is_empty());
    }
}
