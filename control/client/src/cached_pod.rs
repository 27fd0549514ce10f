//! A Pod as the scheduler and the controller manager cache it: the fields they read, decoded
//! straight from the API server's Pod JSON (serde skips every other field). A k8s-openapi
//! `Pod` holds every optional field inline (the Pod itself is 2.2 KiB, each `Container`
//! 2.1 KiB and each `Volume` 3 KiB before anything is filled in); these structs keep only what
//! the control plane reads, with the same field names and shapes, so code reads them as it
//! reads a `Pod`. A cached Pod is read, never written back: changes go out as patches.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ContainerPort, ContainerState, PersistentVolumeClaimVolumeSource, PodCondition,
    PodIP, PodSchedulingGate, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer};

/// A Pod, decoded with only the fields the control plane's caches read.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct CachedPod {
    #[serde(deserialize_with = "null_as_default")]
    pub metadata: ObjectMeta,
    pub spec: Option<CachedPodSpec>,
    pub status: Option<CachedPodStatus>,
}

impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The fields of a PodSpec the control plane reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CachedPodSpec {
    pub active_deadline_seconds: Option<i64>,
    /// Boxed, as the large fields that most pods leave unset are: a cache holds many Pods.
    pub affinity: Option<Box<Affinity>>,
    #[serde(deserialize_with = "null_as_default")]
    pub containers: Vec<CachedContainer>,
    pub host_network: Option<bool>,
    pub hostname: Option<String>,
    pub init_containers: Option<Vec<CachedContainer>>,
    pub node_name: Option<String>,
    pub node_selector: Option<BTreeMap<String, String>>,
    pub overhead: Option<BTreeMap<String, Quantity>>,
    pub preemption_policy: Option<String>,
    pub priority: Option<i32>,
    /// Pod-level resources.
    pub resources: Option<Box<ResourceRequirements>>,
    pub restart_policy: Option<String>,
    pub scheduler_name: Option<String>,
    pub scheduling_gates: Option<Vec<PodSchedulingGate>>,
    pub subdomain: Option<String>,
    pub termination_grace_period_seconds: Option<i64>,
    pub tolerations: Option<Vec<Toleration>>,
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    pub volumes: Option<Vec<CachedVolume>>,
}

/// The fields of a Container the control plane reads: its name, image (image locality),
/// ports (named target ports, host ports), resources (requests) and restart policy
/// (sidecars).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CachedContainer {
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
    pub image: Option<String>,
    pub ports: Option<Vec<ContainerPort>>,
    pub resources: Option<ResourceRequirements>,
    pub restart_policy: Option<String>,
}

/// A volume as the control plane reads it: its name and, for a PersistentVolumeClaim
/// volume, the claim (every other source is left out).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CachedVolume {
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
}

/// The fields of a PodStatus the control plane reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CachedPodStatus {
    pub conditions: Option<Vec<PodCondition>>,
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
    #[serde(rename = "hostIP")]
    pub host_ip: Option<String>,
    pub init_container_statuses: Option<Vec<CachedContainerStatus>>,
    pub message: Option<String>,
    pub nominated_node_name: Option<String>,
    pub phase: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIP>>,
    pub reason: Option<String>,
    /// An in-place resize's state ("Infeasible" makes the scheduler count the spec's requests
    /// out).
    pub resize: Option<String>,
    pub start_time: Option<Time>,
}

/// The fields of a ContainerStatus the control plane reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CachedContainerStatus {
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
    /// What the kubelet allocated (the scheduler counts the larger of this and the spec).
    pub allocated_resources: Option<BTreeMap<String, Quantity>>,
    /// Boxed (208 bytes inline), as `state` is.
    pub last_state: Option<Box<ContainerState>>,
    #[serde(deserialize_with = "null_as_default")]
    pub ready: bool,
    /// The resources the kubelet applied (the scheduler counts these too).
    pub resources: Option<Box<ResourceRequirements>>,
    #[serde(deserialize_with = "null_as_default")]
    pub restart_count: i32,
    pub started: Option<bool>,
    pub state: Option<Box<ContainerState>>,
}

/// A JSON `null` read as the field's default, as k8s-openapi's decoders read it (a status
/// written with `"ready": null` must not make every list and watch of Pods fail to decode).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl From<k8s_openapi::api::core::v1::Pod> for CachedPod {
    /// The cached view of a whole Pod (the fields a cache keeps; the rest is dropped).
    fn from(pod: k8s_openapi::api::core::v1::Pod) -> Self {
        CachedPod::from(&pod)
    }
}

impl From<&k8s_openapi::api::core::v1::Pod> for CachedPod {
    /// The cached view of a whole Pod (the fields a cache keeps; the rest is dropped).
    fn from(pod: &k8s_openapi::api::core::v1::Pod) -> Self {
        let json = serde_json::to_value(pod).expect("a Pod serializes to JSON");
        serde_json::from_value(json).expect("a Pod's JSON decodes as a CachedPod")
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    /// A Pod as the API server sends it, with fields the cache drops and fields whose JSON
    /// names are not plain camelCase.
    fn api_pod() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "default", "uid": "u1",
                "resourceVersion": "7", "labels": {"app": "web"}},
            "spec": {
                "nodeName": "n1", "hostname": "web-0", "subdomain": "web",
                "containers": [{
                    "name": "app", "image": "nginx:1.25", "command": ["nginx"],
                    "env": [{"name": "A", "value": "1"}],
                    "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "100m"}},
                    "livenessProbe": {"tcpSocket": {"port": 80}}
                }],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-0"}},
                    {"name": "cfg", "configMap": {"name": "cfg"}}
                ],
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute",
                    "tolerationSeconds": 300}],
                "dnsPolicy": "ClusterFirst", "serviceAccountName": "default"
            },
            "status": {
                "phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.244.1.5",
                "podIPs": [{"ip": "10.244.1.5"}], "qosClass": "Burstable",
                "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "image": "nginx:1.25",
                    "imageID": "sha256:1", "containerID": "baton://1", "ready": true,
                    "restartCount": 2, "started": true,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}},
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]
            }
        })
    }

    #[test]
    fn decodes_what_the_control_plane_reads_from_the_api_json() {
        let pod: CachedPod = serde_json::from_value(api_pod()).expect("a Pod decodes");
        assert_eq!(pod.metadata.name.as_deref(), Some("web-0"));
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("7"));
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(
            (spec.hostname.as_deref(), spec.subdomain.as_deref()),
            (Some("web-0"), Some("web"))
        );
        let app = &spec.containers[0];
        assert_eq!(app.image.as_deref(), Some("nginx:1.25"));
        assert_eq!(app.ports.as_ref().unwrap()[0].container_port, 80);
        assert!(app.resources.as_ref().unwrap().requests.is_some());
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "data-web-0"
        );
        assert_eq!(volumes[1].name, "cfg");
        assert_eq!(
            spec.tolerations.as_ref().unwrap()[0].toleration_seconds,
            Some(300)
        );

        let status = pod.status.as_ref().expect("status");
        assert_eq!(status.host_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.5"));
        assert_eq!(status.pod_ips.as_ref().unwrap()[0].ip, "10.244.1.5");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.start_time.is_some());
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert!(app.ready && app.started == Some(true));
        assert_eq!(app.restart_count, 2);
        assert!(app.state.as_ref().unwrap().running.is_some());
        let last = app
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!(
            (last.exit_code, last.reason.as_deref()),
            (137, Some("OOMKilled"))
        );
    }

    #[test]
    fn a_whole_pod_converts_to_the_same_cached_pod_as_its_json_decodes_to() {
        let whole: Pod = serde_json::from_value(api_pod()).expect("a Pod decodes");
        let decoded: CachedPod = serde_json::from_value(api_pod()).expect("a Pod decodes");
        assert_eq!(CachedPod::from(&whole), decoded);
    }

    #[test]
    fn null_values_decode_as_their_defaults_as_k8s_openapi_reads_them() {
        let mut json = api_pod();
        json["metadata"]["labels"] = serde_json::Value::Null;
        json["spec"]["volumes"][0]["name"] = serde_json::Value::Null;
        let status = &mut json["status"]["containerStatuses"][0];
        for field in ["name", "ready", "restartCount", "state"] {
            status[field] = serde_json::Value::Null;
        }
        let whole: Pod = serde_json::from_value(json.clone()).expect("k8s-openapi decodes it");
        let cached: CachedPod = serde_json::from_value(json).expect("so does CachedPod");
        assert_eq!(CachedPod::from(&whole), cached);
        let app = &cached.status.unwrap().container_statuses.unwrap()[0];
        assert!(app.name.is_empty() && !app.ready && app.restart_count == 0);
        assert!(app.state.is_none());

        let mut json = api_pod();
        json["metadata"] = serde_json::Value::Null;
        json["spec"]["containers"] = serde_json::Value::Null;
        let cached: CachedPod = serde_json::from_value(json).expect("a null metadata decodes");
        assert!(cached.metadata.name.is_none() && cached.spec.unwrap().containers.is_empty());
    }

    #[test]
    fn the_cached_pod_is_a_pod_to_kube() {
        use kube::Resource;
        assert_eq!(CachedPod::kind(&()), "Pod");
        assert_eq!(CachedPod::plural(&()), "pods");
        assert_eq!(CachedPod::api_version(&()), "v1");
        assert_eq!(
            CachedPod::url_path(&(), Some("default")),
            "/api/v1/namespaces/default/pods"
        );
    }
}
