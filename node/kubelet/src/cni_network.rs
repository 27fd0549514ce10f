//! The kubelet's CNI mode (`--network-plugin=cni`): the network is the first valid
//! configuration of `--cni-conf-dir`, read again every 5 s (as upstream's kubelet synced its
//! CNI configuration on each runtime status check), so that a network installed after the
//! kubelet started (a CNI DaemonSet writing its file) makes the node Ready. Pods are attached
//! with ADD, given the pod's namespace, name and uid in CNI_ARGS and its host ports as the
//! `portMappings` capability (for the portmap plugin); detached with DEL; and a pod found
//! attached by a restarted kubelet is checked with CHECK and kept (a failure is logged), also
//! while no configuration is loaded.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_network::POD_INTERFACE;
use baton_network::cni::{
    Attachment, CniOperationError, CniPlugins, NetworkConfigList, result_ipv4,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::{Map, Value};

use crate::pod_network::{AttachPodError, CNI_NOT_READY, NetworkState, PodNetwork};

/// How often the configuration directory is read.
pub const CONFIG_SYNC_PERIOD: Duration = Duration::from_secs(5);

/// The CNI runtime and a lock per sandbox, so that a sandbox's ADD, CHECK and DEL never run
/// at once (a worker's teardown and the release of orphans at start could otherwise meet).
#[derive(Debug)]
pub struct CniNetwork {
    plugins: CniPlugins,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl CniNetwork {
    /// The runtime of `plugins`.
    pub fn new(plugins: CniPlugins) -> Self {
        Self {
            plugins,
            locks: Mutex::default(),
        }
    }

    /// The lock of sandbox `id`.
    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("CNI locks")
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Whether sandbox `id` is attached (a restarted kubelet's pod keeps its network even
    /// while no configuration is loaded).
    pub fn is_attached(&self, id: &str) -> bool {
        self.plugins.is_attached(id)
    }

    /// Attaches the sandbox `id` of `pod` to `network` (none loaded: only a sandbox attached
    /// before is kept); returns its IP. A sandbox attached before in the same namespace (by an
    /// earlier kubelet) is checked with CHECK and keeps its address (a failed CHECK is
    /// logged); one whose namespace was made again is detached and attached again.
    pub async fn attach(
        &self,
        network: Option<&NetworkConfigList>,
        id: &str,
        netns: &Path,
        pod: &Pod,
    ) -> Result<Ipv4Addr, AttachPodError> {
        let lock = self.lock_of(id);
        let _held = lock.lock().await;
        let attachment = Attachment {
            container_id: id.to_owned(),
            netns: netns.to_owned(),
            ifname: POD_INTERFACE.to_owned(),
            args: cni_args(pod, id),
            capability_args: capability_args(pod),
        };
        let result =
            self.plugins
                .attach(network, &attachment)
                .await
                .map_err(|source| match source {
                    CniOperationError::NoNetwork => AttachPodError::NotReady(CNI_NOT_READY),
                    source => AttachPodError::Cni {
                        id: id.to_owned(),
                        source,
                    },
                })?;
        if let Some(ip) = result_ipv4(&result, POD_INTERFACE) {
            return Ok(ip);
        }
        if let Err(err) = self.plugins.del(id).await {
            tracing::warn!(pod = %id, err = %baton_images::error_chain(&err), "detaching a pod the CNI network gave no address");
        }
        Err(AttachPodError::NoAddress {
            id: id.to_owned(),
            result: result.to_string(),
        })
    }

    /// Detaches the sandbox `id` (nothing when it was never attached); a failure is logged and
    /// the attachment kept, so that a later detach (or the release of orphans at start) tries
    /// again.
    pub async fn detach(&self, id: &str) {
        let lock = self.lock_of(id);
        let _held = lock.lock().await;
        if let Err(err) = self.plugins.del(id).await {
            tracing::warn!(pod = %id, err = %baton_images::error_chain(&err), "detaching a pod from the CNI network");
            return;
        }
        // Forgotten only when no one else holds or waits for it (the map's copy and ours): a
        // waiter must get the same lock as whoever comes next.
        let mut locks = self.locks.lock().expect("CNI locks");
        if Arc::strong_count(&lock) == 2 {
            locks.remove(id);
        }
    }

    /// Detaches the sandboxes attached to the network whose pods are not in `live()`. The
    /// cache is listed before `live()` is asked: a sandbox cached by then belongs to a pod
    /// the kubelet knew, which `live()` still holds unless it is gone.
    pub async fn release_orphans(&self, live: impl FnOnce() -> HashSet<String>) {
        let cached = self.plugins.cached_ids();
        let live = live();
        for id in cached.into_iter().filter(|id| !live.contains(id)) {
            tracing::info!(pod = %id, "detaching a pod that is gone from the CNI network");
            self.detach(&id).await;
        }
    }

    /// Keeps `network`'s state in line with the configuration directory, forever.
    pub async fn watch_config(&self, network: &PodNetwork) {
        let mut last_problem = String::new();
        let mut tick = tokio::time::interval(CONFIG_SYNC_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let loaded = {
                let plugins = self.plugins.clone();
                tokio::task::spawn_blocking(move || plugins.load()).await
            };
            let current = network.subscribe().borrow().clone();
            match loaded {
                Ok(Ok(list)) => {
                    last_problem.clear();
                    if matches!(&current, NetworkState::Cni(loaded) if **loaded == list) {
                        continue;
                    }
                    let types: Vec<&str> = list
                        .plugins
                        .iter()
                        .map(|p| p.plugin_type.as_str())
                        .collect();
                    tracing::info!(network = %list.name, plugins = ?types, "CNI network configuration loaded");
                    network.set_state(NetworkState::Cni(Arc::new(list)));
                }
                Ok(Err(err)) => {
                    let problem = baton_images::error_chain(&err);
                    if problem != last_problem {
                        tracing::warn!(err = %problem, "no CNI network: new pods wait for one");
                        last_problem = problem;
                    }
                    if current.is_ready() {
                        network.set_state(NetworkState::NotReady(CNI_NOT_READY));
                    }
                }
                Err(err) => tracing::warn!(%err, "reading the CNI configuration"),
            }
        }
    }
}

/// CNI_ARGS as container runtimes pass them for Kubernetes pods.
fn cni_args(pod: &Pod, id: &str) -> Vec<(String, String)> {
    [
        ("IgnoreUnknown", "1".to_owned()),
        ("K8S_POD_NAMESPACE", pod.namespace().unwrap_or_default()),
        ("K8S_POD_NAME", pod.name_any()),
        ("K8S_POD_INFRA_CONTAINER_ID", id.to_owned()),
        ("K8S_POD_UID", pod.uid().unwrap_or_default()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// The pod's host ports as the `portMappings` capability (protocols in lower case, as
/// container runtimes give them).
fn capability_args(pod: &Pod) -> Map<String, Value> {
    let mappings: Vec<Value> = crate::pod_network::host_port_mappings(pod, Ipv4Addr::UNSPECIFIED)
        .into_iter()
        .map(|mapping| {
            let protocol = match mapping.protocol {
                17 => "udp",
                132 => "sctp",
                _ => "tcp",
            };
            let mut port = serde_json::json!({
                "hostPort": mapping.host_port,
                "containerPort": mapping.container_port,
                "protocol": protocol,
            });
            if let Some(host_ip) = mapping.host_ip {
                port["hostIP"] = Value::String(host_ip.to_string());
            }
            port
        })
        .collect();
    let mut args = Map::new();
    if !mappings.is_empty() {
        args.insert("portMappings".into(), Value::Array(mappings));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_learn_the_pod_and_its_host_ports() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web", "namespace": "shop", "uid": "u-1" },
            "spec": { "containers": [{ "name": "a", "ports": [
                { "containerPort": 8080, "hostPort": 80 },
                { "containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "10.0.0.5" },
                { "containerPort": 9000 },
            ] }] },
        }))
        .unwrap();
        let args: Vec<String> = cni_args(&pod, "u-1")
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            args.join(";"),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=u-1;K8S_POD_UID=u-1"
        );
        assert_eq!(
            Value::Object(capability_args(&pod)),
            serde_json::json!({ "portMappings": [
                { "hostPort": 80, "containerPort": 8080, "protocol": "tcp" },
                { "hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "10.0.0.5" },
            ] })
        );
        let bare: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "bare" }, "spec": { "containers": [{ "name": "a" }] },
        }))
        .unwrap();
        assert!(capability_args(&bare).is_empty());
    }
}
