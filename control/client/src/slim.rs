//! Slimmer still: what each component drops from its cached Pods on arrival
//! ([`CachedPod`](crate::cached_pod::CachedPod) already leaves out every field no component
//! reads).

use crate::cached_pod::{CachedContainerStatus, CachedPod, CachedPodStatus};

/// The annotation `kubectl apply` keeps its last applied configuration in: a second copy of
/// the object that no controller reads.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops kubectl's last-applied annotation from `pod` and gives back the spare capacity of
/// its lists. For the scheduler's Pod cache.
pub fn pod(pod: &mut CachedPod) {
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    if let Some(owners) = pod.metadata.owner_references.as_mut() {
        owners.shrink_to_fit();
    }
    if let Some(spec) = pod.spec.as_mut() {
        if let Some(volumes) = spec.volumes.as_mut() {
            volumes.retain(|v| v.persistent_volume_claim.is_some());
            volumes.shrink_to_fit();
        }
        spec.containers.shrink_to_fit();
        if let Some(containers) = spec.init_containers.as_mut() {
            containers.shrink_to_fit();
        }
        if let Some(tolerations) = spec.tolerations.as_mut() {
            tolerations.shrink_to_fit();
        }
    }
    if let Some(status) = pod.status.as_mut() {
        for list in container_statuses(status) {
            list.shrink_to_fit();
        }
        if let Some(conditions) = status.conditions.as_mut() {
            conditions.shrink_to_fit();
        }
    }
}

/// The status lists of a pod's containers and init containers.
fn container_statuses(
    status: &mut CachedPodStatus,
) -> impl Iterator<Item = &mut Vec<CachedContainerStatus>> {
    [
        status.container_statuses.as_mut(),
        status.init_container_statuses.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The pod conditions the controller manager reads: readiness (availability, endpoints, the
/// ranking of pods to delete) and the disruption mark (taint eviction).
const CONTROLLER_CONDITIONS: [&str; 2] = ["Ready", "DisruptionTarget"];

/// [`pod`], then also what the scheduler reads but no controller does: containers' images
/// and resources (in the spec and the statuses), and every condition but Ready and
/// DisruptionTarget. For the controller manager's Pod cache.
pub fn pod_for_controllers(slimmed: &mut CachedPod) {
    pod(slimmed);
    if let Some(spec) = slimmed.spec.as_mut() {
        for container in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            container.image = None;
            container.resources = None;
        }
    }
    if let Some(status) = slimmed.status.as_mut() {
        if let Some(conditions) = status.conditions.as_mut() {
            conditions.retain(|c| CONTROLLER_CONDITIONS.contains(&c.type_.as_str()));
            conditions.shrink_to_fit();
        }
        for statuses in container_statuses(status) {
            for container in statuses.iter_mut() {
                container.allocated_resources = None;
                container.resources = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodCondition;

    use super::*;

    fn full_pod() -> CachedPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-0", "namespace": "default", "labels": {"app": "web"},
                "annotations": {
                    LAST_APPLIED: "{\"kind\":\"Pod\"}",
                    "controller.kubernetes.io/pod-deletion-cost": "10"
                },
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "name": "web", "uid": "u1", "controller": true}]
            },
            "spec": {
                "nodeName": "n1",
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-0"}},
                    {"name": "kube-api-access-x", "projected": {"sources": []}}
                ],
                "initContainers": [{"name": "log", "image": "busybox", "restartPolicy": "Always",
                    "command": ["tail"], "resources": {"requests": {"cpu": "10m"}}}],
                "containers": [{
                    "name": "app", "image": "nginx:1.25",
                    "command": ["nginx"], "args": ["-g", "daemon off;"],
                    "env": [{"name": "A", "value": "1"}],
                    "ports": [{"name": "http", "containerPort": 80, "hostPort": 8080}],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "livenessProbe": {"tcpSocket": {"port": 80}},
                    "terminationMessagePath": "/dev/termination-log"
                }],
                "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
                "tolerations": [{"key": "k", "operator": "Exists"}]
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "image": "nginx:1.25", "imageID": "",
                    "ready": true, "restartCount": 2}]
            }
        }))
        .expect("valid pod")
    }

    #[test]
    fn controllers_keep_ports_readiness_and_restarts() {
        let mut slimmed = full_pod();
        {
            let status = slimmed.status.as_mut().unwrap();
            let conditions = status.conditions.as_mut().unwrap();
            for type_ in ["PodScheduled", "DisruptionTarget", "Initialized"] {
                conditions.push(PodCondition {
                    type_: type_.to_string(),
                    status: "True".to_string(),
                    ..Default::default()
                });
            }
        }
        pod_for_controllers(&mut slimmed);

        let spec = slimmed.spec.as_ref().unwrap();
        let app = &spec.containers[0];
        assert_eq!(app.name, "app");
        assert_eq!(app.ports, full_pod().spec.unwrap().containers[0].ports);
        assert!(app.image.is_none() && app.resources.is_none());
        let sidecar = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert!(sidecar.resources.is_none());

        let status = slimmed.status.as_ref().unwrap();
        let kept: Vec<&str> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(kept, ["Ready", "DisruptionTarget"]);
        let app_status = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(app_status.name, "app");
        assert_eq!(app_status.restart_count, 2);
        assert!(app_status.ready);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(slimmed.metadata.labels, full_pod().metadata.labels);
    }

    #[test]
    fn keeps_what_the_control_plane_reads_and_drops_the_rest() {
        let mut slimmed = full_pod();
        pod(&mut slimmed);

        let annotations = slimmed.metadata.annotations.as_ref().unwrap();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(
            annotations["controller.kubernetes.io/pod-deletion-cost"],
            "10"
        );
        assert_eq!(slimmed.metadata.labels, full_pod().metadata.labels);
        assert_eq!(
            slimmed.metadata.owner_references,
            full_pod().metadata.owner_references
        );

        let spec = slimmed.spec.as_ref().unwrap();
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["data"]);
        let app = &spec.containers[0];
        assert_eq!(app.image.as_deref(), Some("nginx:1.25"));
        assert_eq!(app.ports, full_pod().spec.unwrap().containers[0].ports);
        assert_eq!(
            app.resources,
            full_pod().spec.unwrap().containers[0].resources
        );
        let sidecar = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.tolerations, full_pod().spec.unwrap().tolerations);

        assert_eq!(slimmed.status, full_pod().status);
    }
}
