//! Slimmer still: what each component drops from its cached Pods and Nodes on arrival
//! ([`CachedPod`](crate::cached_pod::CachedPod) already leaves out every field no component
//! reads).

use k8s_openapi::api::core::v1::Node;

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
/// and resources (in the spec and the statuses), every condition but Ready and
/// DisruptionTarget, and containers' states but a termination. For the controller manager's
/// Pod cache.
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
                // Of a container's state the controllers read only a termination (a Job's
                // backoff counts from its finish time); the last state nobody reads.
                container.last_state = None;
                if let Some(state) = container.state.as_mut() {
                    if state.terminated.is_some() {
                        state.running = None;
                        state.waiting = None;
                    } else {
                        container.state = None;
                    }
                }
            }
        }
    }
}

/// Drops from `node` what neither the scheduler nor any controller reads: its system info
/// (versions, ids), addresses and kubelet endpoint. Conditions stay whole, as the node
/// lifecycle controller writes them back. For the scheduler's Node cache (it scores images).
pub fn node(node: &mut Node) {
    if let Some(status) = node.status.as_mut() {
        status.node_info = None;
        status.addresses = None;
        status.daemon_endpoints = None;
    }
}

/// [`node`], and the node's image list, which only the scheduler reads. For the controller
/// manager's Node cache.
pub fn node_for_controllers(slimmed: &mut Node) {
    node(slimmed);
    if let Some(status) = slimmed.status.as_mut() {
        status.images = None;
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
                "containerStatuses": [
                    {"name": "app", "image": "nginx:1.25", "imageID": "", "ready": true,
                        "restartCount": 2,
                        "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}},
                        "lastState": {"terminated": {"exitCode": 1,
                            "finishedAt": "2026-01-01T00:00:00Z"}}},
                    {"name": "done", "image": "busybox", "imageID": "", "ready": false,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": 0,
                            "finishedAt": "2026-01-01T00:00:02Z"}}}
                ]
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
        assert!(app_status.state.is_none() && app_status.last_state.is_none());
        let done = &status.container_statuses.as_ref().unwrap()[1];
        let terminated = done.state.as_ref().and_then(|s| s.terminated.as_ref());
        assert_eq!(terminated.map(|t| t.exit_code), Some(0));
        assert!(terminated.and_then(|t| t.finished_at.as_ref()).is_some());
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

    #[test]
    fn nodes_keep_what_scheduling_and_node_health_read() {
        let full: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "a"}},
            "spec": {"podCIDR": "10.244.1.0/24", "unschedulable": true,
                "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "4"}, "capacity": {"cpu": "4"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status"}],
                "images": [{"names": ["nginx:1.25"], "sizeBytes": 1000}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                    "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "v1.33.0",
                    "machineID": "", "operatingSystem": "linux", "osImage": "", "systemUUID": ""}
            }
        }))
        .unwrap();
        let mut for_scheduler = full.clone();
        node(&mut for_scheduler);
        let status = for_scheduler.status.as_ref().unwrap();
        assert!(status.node_info.is_none() && status.addresses.is_none());
        assert!(status.daemon_endpoints.is_none());
        // What the scheduler and the controllers read stays.
        assert_eq!(for_scheduler.metadata, full.metadata);
        assert_eq!(for_scheduler.spec, full.spec);
        assert_eq!(status.conditions, full.status.as_ref().unwrap().conditions);
        assert_eq!(
            status.allocatable,
            full.status.as_ref().unwrap().allocatable
        );
        assert_eq!(status.images.as_ref().map(Vec::len), Some(1));

        let mut for_controllers = full.clone();
        node_for_controllers(&mut for_controllers);
        let status = for_controllers.status.as_ref().unwrap();
        assert!(status.images.is_none() && status.node_info.is_none());
        assert_eq!(status.conditions, full.status.as_ref().unwrap().conditions);
    }
}
