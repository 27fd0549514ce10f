//! A Job's Pods: the Pod made from the template (with the tracking finalizer, and for Indexed
//! Jobs the completion index), how a Pod's outcome is judged, and which active Pods go first
//! when there are too many.

use baton_client::CachedPod;
use std::cmp::Ordering;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};

use super::indexes::{COMPLETION_INDEX, completion_index};
use crate::pod_control::{controller_ref, is_pod_ready, pod_from_template};

/// The finalizer that keeps a finished Pod until the Job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The environment variable an Indexed Job's containers find their index in.
const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// generateName leaves room for its five random characters in a 63-character name.
const MAX_GENERATE_NAME: usize = 58;

/// Whether the Job's Pods are numbered.
pub fn is_indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

/// Whether `pod` still waits to be counted.
pub fn has_tracking_finalizer(pod: &CachedPod) -> bool {
    pod.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == TRACKING_FINALIZER))
}

fn phase(pod: &CachedPod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Whether `pod` is being deleted while it has not finished.
pub fn is_terminating(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_some() && !matches!(phase(pod), Some("Succeeded" | "Failed"))
}

/// Whether a Pod counts as a failure (upstream's isPodFailed): Failed, or, unless only
/// Failed Pods are replaced, being deleted without having succeeded (so that Pods that never
/// get to finish, such as orphans, still count).
pub fn is_failed(pod: &CachedPod, job: &Job) -> bool {
    if phase(pod) == Some("Failed") {
        return true;
    }
    let only_failed = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_replacement_policy.as_deref())
        == Some("Failed");
    !only_failed && pod.metadata.deletion_timestamp.is_some() && phase(pod) != Some("Succeeded")
}

/// The Pod to create for `job` (for `index` when the Job is Indexed).
pub fn job_pod(job: &Job, index: Option<i32>) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let mut template = spec.template;
    let name = job.metadata.name.clone().unwrap_or_default();
    let meta = template.metadata.get_or_insert_with(Default::default);
    let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.into());
    }
    let mut generate_name = format!("{name}-");
    if let Some(index) = index {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), index.to_string());
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), index.to_string());
        let pod_spec = template.spec.get_or_insert_with(Default::default);
        pod_spec.hostname = Some(format!("{name}-{index}"));
        add_index_env(pod_spec);
        generate_name = indexed_generate_name(&name, index);
    }
    pod_from_template(
        &template,
        controller_ref(job),
        job.metadata.namespace.as_deref().unwrap_or_default(),
        &generate_name,
        None,
    )
}

/// `<job>-<index>-`, with the Job's name cut so that the whole fits generateName's limit.
fn indexed_generate_name(job: &str, index: i32) -> String {
    let suffix = format!("-{index}-");
    let room = MAX_GENERATE_NAME.saturating_sub(suffix.len());
    let prefix: String = job.chars().take(room).collect();
    format!("{prefix}{suffix}")
}

/// JOB_COMPLETION_INDEX in every container, from the index annotation through the downward
/// API (as upstream's controller sets it; the kubelet resolves it).
fn add_index_env(spec: &mut k8s_openapi::api::core::v1::PodSpec) {
    let env = EnvVar {
        name: INDEX_ENV.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
            }),
            ..Default::default()
        }),
    };
    let inits = spec.init_containers.iter_mut().flatten();
    for container in spec.containers.iter_mut().chain(inits) {
        let vars = container.env.get_or_insert_with(Vec::new);
        if !vars.iter().any(|v| v.name == INDEX_ENV) {
            vars.push(env.clone());
        }
    }
}

/// Which `rm_at_least` active Pods to delete: for Indexed Jobs first those with an index out
/// of range or a duplicate index, then the least advanced (upstream's ActivePods order).
pub fn active_pods_for_removal(
    job: &Job,
    active: &[Arc<CachedPod>],
    rm_at_least: usize,
) -> Vec<Arc<CachedPod>> {
    let mut remove = Vec::new();
    let mut left: Vec<Arc<CachedPod>> = Vec::new();
    if is_indexed(job) {
        let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(0);
        let mut sorted = active.to_vec();
        sorted.sort_by(|a, b| {
            completion_index(a)
                .cmp(&completion_index(b))
                .then_with(|| less_active(a, b))
        });
        let mut last_index = None;
        for pod in sorted {
            let index = completion_index(&pod);
            match index {
                Some(i) if i < completions => {
                    if last_index == Some(i) {
                        // Keep the most advanced Pod of an index (the last in this order).
                        let previous = left.pop().expect("a pod of this index");
                        remove.push(previous);
                    }
                    left.push(pod);
                    last_index = Some(i);
                }
                _ => remove.push(pod),
            }
        }
    } else {
        left = active.to_vec();
    }
    if remove.len() < rm_at_least {
        left.sort_by(|a, b| less_active(a, b));
        let more = rm_at_least - remove.len();
        remove.extend(left.into_iter().take(more));
    }
    remove
}

/// Orders Pods from the least to the most advanced: unscheduled before scheduled, Pending
/// before Unknown before Running, not ready before ready, ready for less time first, more
/// restarts first, newer first.
pub fn less_active(a: &CachedPod, b: &CachedPod) -> Ordering {
    let scheduled = |p: &CachedPod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let phase_rank = |p: &CachedPod| match phase(p) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    };
    let ready_since = |p: &CachedPod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0)
    };
    let restarts = |p: &CachedPod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c.iter().map(|c| c.restart_count).max().unwrap_or(0))
            .unwrap_or(0)
    };
    let created = |p: &CachedPod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    scheduled(a)
        .cmp(&scheduled(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_pod_ready(a).cmp(&is_pod_ready(b)))
        .then_with(|| {
            if is_pod_ready(a) && is_pod_ready(b) {
                // Ready more recently is less advanced.
                ready_since(b).cmp(&ready_since(a))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| created(b).cmp(&created(a)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{
        Container, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn job(indexed: bool) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("ns".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                completions: Some(3),
                completion_mode: Some(if indexed { "Indexed" } else { "NonIndexed" }.into()),
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, index: Option<i32>, phase: &str, ready: bool, node: bool) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: index.map(|i| [(COMPLETION_INDEX.to_string(), i.to_string())].into()),
                creation_timestamp: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.then(|| "n".to_string()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }))
    }

    fn names(pods: &[Arc<CachedPod>]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn pods_carry_the_finalizer_and_index() {
        let p = job_pod(&job(false), None);
        assert!(has_tracking_finalizer(&CachedPod::from(&p)));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-"));
        let p = job_pod(&job(true), Some(2));
        assert_eq!(completion_index(&CachedPod::from(&p)), Some(2));
        assert_eq!(p.metadata.labels.as_ref().unwrap()[COMPLETION_INDEX], "2");
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-2-"));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("pi-2"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, INDEX_ENV);
        assert_eq!(
            env.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
        let long = "x".repeat(70);
        assert_eq!(indexed_generate_name(&long, 12).len(), MAX_GENERATE_NAME);
    }

    #[test]
    fn failure_judgement() {
        let j = job(false);
        assert!(is_failed(&pod("a", None, "Failed", false, true), &j));
        assert!(!is_failed(&pod("a", None, "Running", true, true), &j));
        let mut deleting = (*pod("a", None, "Running", true, true)).clone();
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert!(is_failed(&deleting, &j));
        assert!(is_terminating(&deleting));
        let mut only_failed = job(false);
        only_failed.spec.as_mut().unwrap().pod_replacement_policy = Some("Failed".into());
        assert!(!is_failed(&deleting, &only_failed));
    }

    #[test]
    fn least_advanced_pods_are_removed_first() {
        let active = [
            pod("ready", None, "Running", true, true),
            pod("pending", None, "Pending", false, true),
            pod("unscheduled", None, "Pending", false, false),
            pod("running", None, "Running", false, true),
        ];
        assert_eq!(
            names(&active_pods_for_removal(&job(false), &active, 2)),
            ["unscheduled", "pending"]
        );
        assert!(active_pods_for_removal(&job(false), &active, 0).is_empty());
    }

    #[test]
    fn indexed_duplicates_and_strays_go_first() {
        let active = [
            pod("a0", Some(0), "Running", true, true),
            pod("b0", Some(0), "Pending", false, true),
            pod("c7", Some(7), "Running", true, true),
            pod("d1", Some(1), "Running", true, true),
        ];
        let removed = names(&active_pods_for_removal(&job(true), &active, 0));
        assert_eq!(removed, ["b0", "c7"]);
    }
}
