//! The pod network as the kubelet uses it, in one of two modes. `baton` (the default): not
//! ready until the node has a pod CIDR; then each pod sandbox is attached to the node's bridge
//! (its address from the persisted allocator) and detached when the pod goes. Netlink calls are
//! blocking, so they run on the blocking pool; one lock orders attaching against the release of
//! orphaned addresses. `cni`: the plugins of the configuration directory's network attach and
//! detach sandboxes (`cni_network.rs`).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use baton_network::cni::{CniPlugins, NetworkConfigList};

use crate::cni_network::CniNetwork;
use baton_network::{BridgeConfig, BridgeNetwork, HostPortMapping, NetNs, RouteSocket};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

/// The bridge every pod of the node is attached to.
pub const BRIDGE: &str = "baton0";

/// The MTU used when the node's own interface cannot be read.
const DEFAULT_MTU: u32 = 1500;

/// Upstream's words for a node whose pod network is not set up yet (the node's Ready message,
/// and the event of a pod waiting for it).
pub const NETWORK_NOT_READY: &str = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: no pod CIDR assigned to the node";

/// The same in CNI mode, when the configuration directory holds no valid network
/// (containerd's words).
pub const CNI_NOT_READY: &str = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized";

/// The pod network's state, as pod workers and the node's status follow it.
#[derive(Debug, Clone)]
pub enum NetworkState {
    /// Pods cannot be attached yet; the node's Ready message says why.
    NotReady(&'static str),
    /// The node's bridge is set up.
    Bridge(Arc<BridgeNetwork>),
    /// A CNI network configuration is loaded.
    Cni(Arc<NetworkConfigList>),
}

impl NetworkState {
    /// Whether pods can be attached.
    pub fn is_ready(&self) -> bool {
        !matches!(self, Self::NotReady(_))
    }

    /// Why pods cannot be attached, when they cannot.
    pub fn not_ready_message(&self) -> Option<&'static str> {
        match self {
            Self::NotReady(message) => Some(message),
            _ => None,
        }
    }
}

/// Attaching a pod failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachPodError {
    /// The network is not set up yet.
    #[error("network is not ready: {0}")]
    NotReady(&'static str),
    /// The sandbox's network namespace or the network failed.
    #[error("set up the pod network")]
    Network(#[source] baton_network::PodNetworkError),
    /// A CNI plugin failed (containerd's words).
    #[error("failed to setup network for sandbox {id:?}")]
    Cni {
        id: String,
        #[source]
        source: baton_network::cni::CniOperationError,
    },
    /// The CNI plugins attached the pod but gave it no IPv4 address.
    #[error(
        "failed to setup network for sandbox {id:?}: the CNI result gives interface {} no IPv4 address: {result}",
        baton_network::POD_INTERFACE
    )]
    NoAddress { id: String, result: String },
    /// The blocking task doing the work ended abnormally.
    #[error("set up the pod network: the task failed")]
    Task,
}

/// The host ports the table should hold.
#[derive(Debug, Default)]
struct HostPorts {
    /// Each pod's host ports.
    wanted: BTreeMap<String, Vec<HostPortMapping>>,
    /// The table may differ from `wanted`.
    stale: bool,
}

/// The node's pod network: the bridge, set up once the pod CIDR is known, or CNI plugins.
#[derive(Debug)]
pub struct PodNetwork {
    state_dir: PathBuf,
    node_ip: IpAddr,
    network: watch::Sender<NetworkState>,
    lock: Arc<Mutex<()>>,
    /// In CNI mode, the plugins' runtime.
    cni: Option<CniNetwork>,
    /// Each pod's wanted host ports, and whether the table may differ from them (an update
    /// failed or was cut short). Held across a table update, so that updates apply in order.
    host_ports: tokio::sync::Mutex<HostPorts>,
}

impl PodNetwork {
    /// The bridge network, keeping its state under `root_dir/network`, for a node at
    /// `node_ip`.
    pub fn new(root_dir: &Path, node_ip: IpAddr) -> Self {
        Self {
            state_dir: root_dir.join("network"),
            node_ip,
            network: watch::Sender::new(NetworkState::NotReady(NETWORK_NOT_READY)),
            lock: Arc::default(),
            cni: None,
            host_ports: tokio::sync::Mutex::default(),
        }
    }

    /// The CNI network of `plugins`, not ready until a configuration is loaded.
    pub fn with_cni(root_dir: &Path, node_ip: IpAddr, plugins: CniPlugins) -> Self {
        Self {
            network: watch::Sender::new(NetworkState::NotReady(CNI_NOT_READY)),
            cni: Some(CniNetwork::new(plugins)),
            ..Self::new(root_dir, node_ip)
        }
    }

    /// Whether pods can be attached.
    pub fn is_ready(&self) -> bool {
        self.network.borrow().is_ready()
    }

    /// In CNI mode, the plugins' runtime.
    pub fn cni(&self) -> Option<&CniNetwork> {
        self.cni.as_ref()
    }

    /// Whether sandbox `id` is attached already, so that it is kept while the network is not
    /// ready (CNI mode: a restarted kubelet's pods keep theirs while no configuration is
    /// loaded).
    pub fn has_attachment(&self, id: &str) -> bool {
        self.cni.as_ref().is_some_and(|cni| cni.is_attached(id))
    }

    /// Changes of readiness.
    pub fn subscribe(&self) -> watch::Receiver<NetworkState> {
        self.network.subscribe()
    }

    /// Sets the state (the CNI configuration loaded, or gone).
    pub(crate) fn set_state(&self, state: NetworkState) {
        self.network.send_replace(state);
    }

    /// The pod CIDR in use, once the bridge is set up.
    pub fn pod_cidr(&self) -> Option<Ipv4Net> {
        match &*self.network.borrow() {
            NetworkState::Bridge(network) => Some(network.pod_cidr()),
            _ => None,
        }
    }

    /// Sets the bridge up for `pod_cidr`. Once set up, a different CIDR is refused: pods hold
    /// addresses of the first (the kubelet must be restarted, as upstream's).
    pub async fn set_up(&self, pod_cidr: Ipv4Net) -> Result<(), String> {
        if let Some(current) = self.pod_cidr() {
            if current == pod_cidr {
                return Ok(());
            }
            return Err(format!(
                "the node's pod CIDR changed from {current} to {pod_cidr}; restart the kubelet to use it"
            ));
        }
        let state_dir = self.state_dir.clone();
        let node_ip = self.node_ip;
        let network = tokio::task::spawn_blocking(move || {
            let mtu = node_mtu(node_ip).unwrap_or(DEFAULT_MTU);
            BridgeNetwork::setup(BridgeConfig {
                bridge: BRIDGE.into(),
                pod_cidr,
                mtu,
                state_dir,
            })
        })
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| {
            format!(
                "set up bridge {BRIDGE} for pod CIDR {pod_cidr}: {}",
                baton_images::error_chain(&err)
            )
        })?;
        // Host ports a previous run left: the pods that still have them set them again when
        // they are attached.
        match tokio::task::spawn_blocking(|| baton_network::sync_host_ports(&[])).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(
                err = %baton_images::error_chain(&err),
                "removing host ports a previous run left"
            ),
            Err(err) => tracing::warn!(%err, "removing host ports a previous run left"),
        }
        tracing::info!(%pod_cidr, bridge = BRIDGE, "pod network ready");
        self.network
            .send_replace(NetworkState::Bridge(Arc::new(network)));
        Ok(())
    }

    /// Attaches the sandbox `id` of `pod`, whose network namespace file is `netns`, and sets
    /// its host ports up; returns its IP.
    pub async fn attach(
        &self,
        id: &str,
        netns: &Path,
        pod: &Pod,
    ) -> Result<Ipv4Addr, AttachPodError> {
        let state = self.network.borrow().clone();
        if let Some(cni) = &self.cni {
            let network = match &state {
                NetworkState::Cni(network) => Some(network.as_ref()),
                _ => None,
            };
            return cni.attach(network, id, netns, pod).await;
        }
        let network = match state {
            NetworkState::Bridge(network) => network,
            NetworkState::NotReady(message) => return Err(AttachPodError::NotReady(message)),
            NetworkState::Cni(_) => unreachable!("a CNI state without CNI plugins"),
        };
        let lock = self.lock.clone();
        let owned_id = id.to_owned();
        let netns = netns.to_owned();
        let ip = tokio::task::spawn_blocking(move || {
            let _held = lock.lock().unwrap_or_else(|poison| poison.into_inner());
            let namespace = NetNs::open(&netns).map_err(baton_network::PodNetworkError::from)?;
            network
                .attach(&owned_id, &namespace)
                .map(|address| address.ip)
        })
        .await
        .map_err(|_| AttachPodError::Task)?
        .map_err(AttachPodError::Network)?;
        self.set_host_ports(id, host_port_mappings(pod, ip)).await;
        Ok(ip)
    }

    /// Sets pod `id`'s host ports (none: removes them) and remakes the table when they
    /// changed (in bridge mode; with CNI, plugins such as portmap do this).
    async fn set_host_ports(&self, id: &str, mappings: Vec<HostPortMapping>) {
        let mut ports = self.host_ports.lock().await;
        let unchanged = ports
            .wanted
            .get(id)
            .map_or(mappings.is_empty(), |before| *before == mappings);
        if unchanged && !ports.stale {
            return;
        }
        if mappings.is_empty() {
            ports.wanted.remove(id);
        } else {
            ports.wanted.insert(id.to_owned(), mappings);
        }
        let all: Vec<HostPortMapping> = ports.wanted.values().flatten().cloned().collect();
        let count = all.len();
        // Stale until the table is programmed: a failed (or cancelled) update is made again
        // by the next call, whichever pod it is for.
        ports.stale = true;
        match tokio::task::spawn_blocking(move || baton_network::sync_host_ports(&all)).await {
            Ok(Ok(())) => {
                ports.stale = false;
                tracing::debug!(host_ports = count, "host ports programmed");
            }
            Ok(Err(err)) => tracing::warn!(
                err = %baton_images::error_chain(&err),
                "programming the pods' host ports"
            ),
            Err(err) => tracing::warn!(%err, "programming the pods' host ports"),
        }
    }

    /// Detaches the sandbox `id` and releases its address (nothing when the network was never
    /// set up or the pod had no address).
    pub async fn detach(&self, id: &str) {
        if let Some(cni) = &self.cni {
            cni.detach(id).await;
            return;
        }
        self.set_host_ports(id, Vec::new()).await;
        let NetworkState::Bridge(network) = self.network.borrow().clone() else {
            return;
        };
        let id = id.to_owned();
        let result = tokio::task::spawn_blocking(move || network.detach(&id)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(err = %baton_images::error_chain(&err), "detaching a pod from the network")
            }
            Err(err) => tracing::warn!(%err, "detaching a pod from the network"),
        }
    }

    /// Releases the addresses (and host interfaces) of sandboxes not in `live()`, which is
    /// asked while attaching is held off, so that no pod attached meanwhile is missed.
    pub async fn release_orphans(&self, live: impl FnOnce() -> HashSet<String> + Send + 'static) {
        if let Some(cni) = &self.cni {
            cni.release_orphans(live).await;
            return;
        }
        let NetworkState::Bridge(network) = self.network.borrow().clone() else {
            return;
        };
        let lock = self.lock.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _held = lock.lock().unwrap_or_else(|poison| poison.into_inner());
            network.release_orphans(&live())
        })
        .await;
        match result {
            Ok(Ok(released)) if !released.is_empty() => {
                tracing::info!(?released, "released the addresses of pods that are gone");
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::warn!(err = %baton_images::error_chain(&err), "releasing orphaned pod addresses")
            }
            Err(err) => tracing::warn!(%err, "releasing orphaned pod addresses"),
        }
    }
}

/// The MTU of the (non-loopback) interface holding the node's IP.
fn node_mtu(node_ip: IpAddr) -> Option<u32> {
    let IpAddr::V4(ip) = node_ip else { return None };
    let mut socket = RouteSocket::open().ok()?;
    let index = socket.interface_with_address(ip).ok()??;
    if index == baton_network::LOOPBACK_INDEX {
        return None;
    }
    socket
        .links()
        .ok()?
        .into_iter()
        .find(|link| link.index == index)?
        .mtu
}

/// The host ports `pod` asks for, led to `pod_ip` (`hostPort` set and above 0; TCP unless
/// the port says UDP or SCTP; `hostIP` when it is an IPv4 address other than 0.0.0.0).
pub fn host_port_mappings(pod: &Pod, pod_ip: Ipv4Addr) -> Vec<HostPortMapping> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let mut mappings: Vec<HostPortMapping> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            let host_port = u16::try_from(port.host_port?).ok().filter(|p| *p > 0)?;
            let container_port = u16::try_from(port.container_port).ok()?;
            let protocol = match port.protocol.as_deref() {
                Some("UDP") => 17,
                Some("SCTP") => 132,
                _ => 6,
            };
            let host_ip = port
                .host_ip
                .as_deref()
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                .filter(|ip| !ip.is_unspecified());
            Some(HostPortMapping {
                protocol,
                host_ip,
                host_port,
                pod_ip,
                container_port,
            })
        })
        .collect();
    mappings.sort();
    mappings.dedup();
    mappings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_come_from_every_container_port_that_asks() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web" },
            "spec": { "containers": [
                { "name": "a", "ports": [
                    { "containerPort": 8080, "hostPort": 80 },
                    { "containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "10.0.0.5" },
                    { "containerPort": 9000 },
                ] },
                { "name": "b", "ports": [
                    { "containerPort": 8443, "hostPort": 443, "hostIP": "0.0.0.0" },
                ] },
            ] },
        }))
        .unwrap();
        let ip = Ipv4Addr::new(10, 244, 0, 7);
        let mappings = host_port_mappings(&pod, ip);
        let view: Vec<_> = mappings
            .iter()
            .map(|m| (m.protocol, m.host_ip, m.host_port, m.container_port))
            .collect();
        assert_eq!(
            view,
            [
                (6, None, 80, 8080),
                (6, None, 443, 8443),
                (17, Some(Ipv4Addr::new(10, 0, 0, 5)), 5353, 53),
            ]
        );
        assert!(mappings.iter().all(|m| m.pod_ip == ip));
    }
}
