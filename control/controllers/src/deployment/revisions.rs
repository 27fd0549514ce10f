//! Revisions of a Deployment, kept in annotations as upstream does (what `kubectl rollout
//! history` and `kubectl rollout undo` read): each ReplicaSet's deployment.kubernetes.io/revision,
//! the new one always the highest (the largest of the old ones plus one, so a ReplicaSet brought
//! back by an undo gets a new number and remembers its former ones in revision-history); the
//! Deployment's own annotations (kubernetes.io/change-cause among them) copied to its new
//! ReplicaSet; desired-replicas and max-replicas for proportional scaling; old ReplicaSets beyond
//! revisionHistoryLimit removed once scaled to zero; and the deprecated rollback annotation.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::hash::POD_TEMPLATE_HASH;
use super::{by_creation, rs_spec};

/// The revision of a ReplicaSet, and of the Deployment (its new ReplicaSet's).
pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
/// Former revisions of a ReplicaSet that a rollback brought back.
pub(crate) const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// spec.replicas of the Deployment when the ReplicaSet was last scaled.
pub(crate) const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// spec.replicas + maxSurge of the Deployment when the ReplicaSet was last scaled.
pub(crate) const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The revision to roll back to (what apps/v1beta1's rollbackTo became).
pub(crate) const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Upstream keeps revision-history to this many characters.
const MAX_HISTORY_CHARS: usize = 2000;

/// Annotations of a Deployment that are not copied to its ReplicaSets (nor back on rollback).
pub(crate) fn skip_copy(key: &str) -> bool {
    matches!(
        key,
        LAST_APPLIED | REVISION | REVISION_HISTORY | DESIRED_REPLICAS | MAX_REPLICAS | ROLLBACK_TO
    )
}

fn annotation<'a>(annotations: Option<&'a BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    annotations.and_then(|a| a.get(key)).map(String::as_str)
}

/// A ReplicaSet's revision: 0 without the annotation, `None` when it does not parse.
pub(crate) fn revision(rs: &ReplicaSet) -> Option<i64> {
    match annotation(rs.metadata.annotations.as_ref(), REVISION) {
        None => Some(0),
        Some(v) => v.parse().ok(),
    }
}

/// The highest revision among `rses` (0 if none).
pub(crate) fn max_revision(rses: &[&ReplicaSet]) -> i64 {
    rses.iter()
        .filter_map(|rs| revision(rs))
        .max()
        .unwrap_or(0)
        .max(0)
}

/// The second highest revision (the one before the current), 0 if there is none.
pub(crate) fn last_revision(rses: &[&ReplicaSet]) -> i64 {
    let (mut max, mut second) = (0, 0);
    for v in rses.iter().filter_map(|rs| revision(rs)) {
        if v >= max {
            second = max;
            max = v;
        } else if v > second {
            second = v;
        }
    }
    second
}

fn parse_annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    annotation(rs.metadata.annotations.as_ref(), key)?
        .parse()
        .ok()
}

/// The desired-replicas annotation, if present and valid.
pub(crate) fn desired_replicas_annotation(rs: &ReplicaSet) -> Option<i32> {
    parse_annotation_i32(rs, DESIRED_REPLICAS)
}

/// The max-replicas annotation, if present and valid.
pub(crate) fn max_replicas_annotation(rs: &ReplicaSet) -> Option<i32> {
    parse_annotation_i32(rs, MAX_REPLICAS)
}

/// Whether desired-replicas and max-replicas differ from `desired` and `max`.
pub(crate) fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.as_ref();
    annotation(annotations, DESIRED_REPLICAS) != Some(desired.to_string().as_str())
        || annotation(annotations, MAX_REPLICAS) != Some(max.to_string().as_str())
}

/// Sets desired-replicas and max-replicas; whether anything changed.
pub(crate) fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    if !replicas_annotations_need_update(rs, desired, max) {
        return false;
    }
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(DESIRED_REPLICAS.into(), desired.to_string());
    annotations.insert(MAX_REPLICAS.into(), max.to_string());
    true
}

/// Brings the new ReplicaSet's annotations up to date: the Deployment's own annotations, the
/// revision `new_revision` unless it already has a higher one (remembering a replaced revision
/// in revision-history), and for a ReplicaSet about to be created (`exists` false) the replica
/// annotations. Whether anything changed.
pub(crate) fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
    max_surge: i32,
) -> bool {
    let mut changed = false;
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if skip_copy(k) || annotations.get(k) == Some(v) {
            continue;
        }
        annotations.insert(k.clone(), v.clone());
        changed = true;
    }
    let old = annotations.get(REVISION).cloned();
    let old_revision = match old.as_deref() {
        None | Some("") => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(n) => n,
            Err(_) => return changed,
        },
    };
    if old_revision < new_revision {
        annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old.filter(|o| !o.is_empty()) {
            append_history(annotations, &old);
        }
    }
    if !exists {
        let desired = super::desired(d);
        changed |= set_replicas_annotations(rs, desired, desired.saturating_add(max_surge));
    }
    changed
}

/// Appends `old` to revision-history, dropping the oldest entries to stay within
/// MAX_HISTORY_CHARS.
fn append_history(annotations: &mut BTreeMap<String, String>, old: &str) {
    let history = annotations
        .get(REVISION_HISTORY)
        .cloned()
        .unwrap_or_default();
    if history.is_empty() {
        annotations.insert(REVISION_HISTORY.into(), old.to_string());
        return;
    }
    let mut entries: Vec<&str> = history.split(',').collect();
    let mut total = history.len() + old.len() + 1;
    let mut start = 0;
    while total > MAX_HISTORY_CHARS && start < entries.len() {
        total -= entries[start].len() + 1;
        start += 1;
    }
    if total <= MAX_HISTORY_CHARS {
        entries.drain(..start);
        entries.push(old);
        annotations.insert(REVISION_HISTORY.into(), entries.join(","));
    }
}

/// The old ReplicaSets to delete beyond revisionHistoryLimit: the lowest revisions first,
/// only those fully scaled down (spec and status zero, status current) and not being deleted.
pub(crate) fn history_to_delete<'a>(olds: &[&'a ReplicaSet], limit: i32) -> Vec<&'a ReplicaSet> {
    let mut alive: Vec<&ReplicaSet> = olds
        .iter()
        .copied()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let excess = alive.len() as i64 - i64::from(limit);
    if excess <= 0 {
        return Vec::new();
    }
    alive.sort_by(|a, b| {
        revision(a)
            .unwrap_or(0)
            .cmp(&revision(b).unwrap_or(0))
            .then_with(|| by_creation(a, b))
    });
    alive
        .into_iter()
        .take(excess as usize)
        .filter(|rs| {
            let status = rs.status.as_ref();
            status.map_or(0, |s| s.replicas) == 0
                && rs_spec(rs) == 0
                && rs.metadata.generation.unwrap_or(0)
                    <= status.and_then(|s| s.observed_generation).unwrap_or(0)
        })
        .collect()
}

/// The revision the deprecated rollback annotation asks for, if it is set and valid.
pub(crate) fn rollback_to(d: &Deployment) -> Option<i64> {
    annotation(d.metadata.annotations.as_ref(), ROLLBACK_TO)
        .filter(|v| !v.is_empty())?
        .parse()
        .ok()
}

/// Rolls `d` back to `template` (a ReplicaSet's, without its hash label) and to that
/// ReplicaSet's annotations, keeping the Deployment's own bookkeeping annotations.
pub(crate) fn roll_back_to(d: &mut Deployment, template: &PodTemplateSpec, rs: &ReplicaSet) {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    if let Some(spec) = d.spec.as_mut() {
        spec.template = template;
    }
    let mut annotations: BTreeMap<String, String> = d
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| skip_copy(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in rs.metadata.annotations.iter().flatten() {
        if !skip_copy(k) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    d.metadata.annotations = Some(annotations);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::scale::tests::{deployment, replicaset};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn with_revision(mut rs: ReplicaSet, revision: &str) -> ReplicaSet {
        rs.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(REVISION.into(), revision.into());
        rs
    }

    #[test]
    fn max_and_last_revisions() {
        let a = with_revision(replicaset("a", 0, 0, 0, None), "1");
        let b = with_revision(replicaset("b", 1, 0, 0, None), "3");
        let c = with_revision(replicaset("c", 2, 0, 0, None), "2");
        let bad = with_revision(replicaset("x", 3, 0, 0, None), "x");
        assert_eq!(max_revision(&[&a, &b, &c, &bad]), 3);
        assert_eq!(last_revision(&[&a, &b, &c, &bad]), 2);
        assert_eq!(max_revision(&[]), 0);
        assert_eq!(last_revision(&[&a]), 0);
    }

    #[test]
    fn new_replicaset_takes_the_next_revision_and_the_deployment_annotations() {
        let mut d = deployment(4, IntOrString::Int(1), IntOrString::Int(0));
        d.metadata.annotations = Some(
            [
                (
                    "kubernetes.io/change-cause".to_string(),
                    "image 1.28".to_string(),
                ),
                (REVISION.to_string(), "2".to_string()),
                (LAST_APPLIED.to_string(), "{}".to_string()),
            ]
            .into(),
        );
        let mut rs = replicaset("new", 0, 0, 0, None);
        rs.metadata.annotations = None;
        assert!(set_new_rs_annotations(&d, &mut rs, 3, false, 1));
        let a = rs.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[REVISION], "3");
        assert_eq!(a["kubernetes.io/change-cause"], "image 1.28");
        assert_eq!(a[DESIRED_REPLICAS], "4");
        assert_eq!(a[MAX_REPLICAS], "5");
        assert!(!a.contains_key(LAST_APPLIED));
        assert!(!a.contains_key(REVISION_HISTORY));
        // Nothing new: no change.
        assert!(!set_new_rs_annotations(&d, &mut rs, 3, true, 1));
        // A lower revision never replaces a higher one.
        assert!(!set_new_rs_annotations(&d, &mut rs, 2, true, 1));
    }

    #[test]
    fn undo_gives_the_old_replicaset_a_new_revision_and_keeps_its_history() {
        let d = deployment(1, IntOrString::Int(1), IntOrString::Int(0));
        let mut rs = with_revision(replicaset("old", 0, 0, 0, None), "1");
        assert!(set_new_rs_annotations(&d, &mut rs, 3, true, 1));
        assert_eq!(rs.metadata.annotations.as_ref().unwrap()[REVISION], "3");
        assert_eq!(
            rs.metadata.annotations.as_ref().unwrap()[REVISION_HISTORY],
            "1"
        );
        assert!(set_new_rs_annotations(&d, &mut rs, 5, true, 1));
        assert_eq!(
            rs.metadata.annotations.as_ref().unwrap()[REVISION_HISTORY],
            "1,3"
        );
    }

    #[test]
    fn history_stays_within_its_length() {
        let mut annotations = BTreeMap::new();
        let long: Vec<String> = (0..500).map(|i| format!("{i:03}")).collect();
        annotations.insert(REVISION_HISTORY.to_string(), long.join(","));
        append_history(&mut annotations, "999");
        let history = &annotations[REVISION_HISTORY];
        assert!(history.len() <= MAX_HISTORY_CHARS);
        assert!(history.ends_with(",999"));
        assert!(!history.starts_with("000,"));
    }

    #[test]
    fn cleanup_removes_the_oldest_scaled_down_beyond_the_limit() {
        let r1 = with_revision(replicaset("r1", 0, 0, 0, None), "1");
        let r2 = with_revision(replicaset("r2", 1, 0, 0, None), "2");
        let busy = with_revision(replicaset("r3", 2, 2, 2, None), "3");
        let r4 = with_revision(replicaset("r4", 3, 0, 0, None), "4");
        let olds = [&r4, &busy, &r2, &r1];
        let names = |v: Vec<&ReplicaSet>| -> Vec<String> {
            v.iter()
                .map(|rs| rs.metadata.name.clone().unwrap())
                .collect()
        };
        assert_eq!(names(history_to_delete(&olds, 2)), ["r1", "r2"]);
        assert_eq!(
            names(history_to_delete(&olds, 1)),
            ["r1", "r2"],
            "r3 still has pods"
        );
        assert!(history_to_delete(&olds, 4).is_empty());
        assert_eq!(names(history_to_delete(&olds, 0)), ["r1", "r2", "r4"]);
    }

    #[test]
    fn rollback_annotation_and_template() {
        let mut d = deployment(1, IntOrString::Int(1), IntOrString::Int(0));
        assert_eq!(rollback_to(&d), None);
        d.metadata.annotations = Some(
            [
                (ROLLBACK_TO.to_string(), "2".to_string()),
                (REVISION.to_string(), "3".to_string()),
                ("kubernetes.io/change-cause".to_string(), "edit".to_string()),
            ]
            .into(),
        );
        assert_eq!(rollback_to(&d), Some(2));
        let mut rs = replicaset("old", 0, 0, 0, None);
        rs.metadata.annotations = Some(
            [
                (
                    "kubernetes.io/change-cause".to_string(),
                    "create".to_string(),
                ),
                (REVISION.to_string(), "2".to_string()),
            ]
            .into(),
        );
        let template = PodTemplateSpec {
            metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                labels: Some(
                    [
                        ("app".to_string(), "web".to_string()),
                        (POD_TEMPLATE_HASH.to_string(), "abc".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            spec: None,
        };
        roll_back_to(&mut d, &template, &rs);
        let labels = d
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert!(!labels.contains_key(POD_TEMPLATE_HASH));
        let a = d.metadata.annotations.as_ref().unwrap();
        assert_eq!(a["kubernetes.io/change-cause"], "create");
        assert_eq!(a[REVISION], "3", "the Deployment keeps its own revision");
    }
}
