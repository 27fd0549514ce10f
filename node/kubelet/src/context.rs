//! What every pod worker shares: the API client, the runtime, the image store, the node's
//! facts and settings, and the event sink.

use std::net::IpAddr;
use std::path::PathBuf;

use baton_images::ImageStore;
use baton_runtime::RuntimeClient;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{Client, Resource};

use crate::machine::Machine;
use crate::pod_dirs::DnsSettings;

/// The kubelet's shared state.
pub struct KubeletContext {
    pub client: Client,
    pub runtime: RuntimeClient,
    pub images: ImageStore,
    pub node_name: String,
    pub node_ip: IpAddr,
    pub machine: Machine,
    pub allocatable:
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub insecure_registries: Vec<String>,
    pub log_max_size: u64,
    pub log_max_files: u32,
    pub dns: DnsSettings,
    pub cgroup_root: String,
    pub cgroup_v2: bool,
    pub events: crate::events::EventSink,
    /// The node's pod network.
    pub network: std::sync::Arc<crate::pod_network::PodNetwork>,
    /// The service account tokens of projected volumes.
    pub tokens: std::sync::Arc<crate::volumes::TokenCache>,
}

impl std::fmt::Debug for KubeletContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletContext")
            .field("node_name", &self.node_name)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl KubeletContext {
    /// Records an event about `pod` (or one of its containers, `spec.containers{name}`).
    pub async fn event(
        &self,
        pod: &Pod,
        container: Option<&str>,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let mut regarding: ObjectReference = pod.object_ref(&());
        if let Some(name) = container {
            regarding.field_path = Some(container_field_path(pod, name));
        }
        self.events
            .publish(&regarding, warning, reason, &note)
            .await;
    }
}

/// `spec.containers{name}`, `spec.initContainers{name}` or `spec.ephemeralContainers{name}`, as
/// upstream's event field paths.
fn container_field_path(pod: &Pod, name: &str) -> String {
    let is_init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|inits| inits.iter().any(|c| c.name == name));
    if is_init {
        format!("spec.initContainers{{{name}}}")
    } else if crate::ephemeral_containers::is_ephemeral(pod, name) {
        format!("spec.ephemeralContainers{{{name}}}")
    } else {
        format!("spec.containers{{{name}}}")
    }
}
