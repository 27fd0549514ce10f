//! The cluster's isolated network: a pinned network namespace named for the cluster holding a
//! bridge with the gateway address, and per node either a pinned namespace whose `eth0` is one
//! end of a veth pair plugged into the bridge (the `process` provider) or a tap device on the
//! bridge (a VM's NIC). The range exists only inside these namespaces.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use baton_network::{NetNs, NetNsError, NetlinkError, RouteSocket};
use ipnet::Ipv4Net;

/// Where pinned namespaces live (as `ip netns` keeps them).
pub const NETNS_DIR: &str = "/run/netns";
/// The bridge in the cluster namespace.
pub const BRIDGE: &str = "baton-br";
/// The cluster network: private, and only inside the cluster's namespaces.
pub const CLUSTER_NETWORK: &str = "10.251.0.0/24";
/// The MTU of the cluster network.
pub const MTU: u32 = 1500;

/// The cluster network's gateway (the bridge's address).
pub fn gateway() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 251, 0, 1), 24).expect("a valid prefix")
}

/// The address of node number `index` (0-based).
pub fn node_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 251, 0, 10 + index as u8)
}

/// The pinned namespace file of the cluster network.
pub fn cluster_netns_path(cluster: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(format!("baton-{cluster}"))
}

/// The pinned namespace file of a node. Cluster and node names hold no '.', so no node's pin
/// is ever another cluster's.
pub fn node_netns_path(cluster: &str, node: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(format!("baton-{cluster}.{node}"))
}

/// The bridge-side name of a node's veth (at most 15 characters, unique per node).
pub fn host_veth_name(node_index: usize) -> String {
    format!("veth-node{node_index}")
}

/// Why the cluster network could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClusterNetworkError {
    /// A namespace operation failed.
    #[error("cluster network")]
    NetNs(#[from] NetNsError),
    /// A netlink request failed.
    #[error("cluster network")]
    Netlink(#[from] NetlinkError),
    /// A tap device could not be made.
    #[error("cluster network")]
    Tap(#[from] baton_network::CreateTapError),
}

/// Makes the cluster's namespace with its bridge up at the gateway address.
pub fn create_cluster_network(cluster: &str) -> Result<NetNs, ClusterNetworkError> {
    let namespace = NetNs::create_pinned(&cluster_netns_path(cluster))?;
    namespace.run(|| -> Result<(), NetlinkError> {
        let mut socket = RouteSocket::open()?;
        socket.create_bridge(BRIDGE)?;
        let bridge = socket.link(BRIDGE)?.expect("the bridge just made");
        socket.set_link(bridge.index, None, Some(MTU))?;
        socket.add_address(bridge.index, gateway())?;
        Ok(())
    })??;
    Ok(namespace)
}

/// Makes node number `index`'s namespace, plugged into the cluster's bridge by a veth pair
/// whose node end is `eth0` (left down: the node's init configures it).
pub fn create_node_network(
    cluster_ns: &NetNs,
    cluster: &str,
    node: &str,
    index: usize,
) -> Result<PathBuf, ClusterNetworkError> {
    let path = node_netns_path(cluster, node);
    let node_ns = NetNs::create_pinned(&path)?;
    let host_side = host_veth_name(index);
    cluster_ns.run(|| -> Result<(), NetlinkError> {
        let mut socket = RouteSocket::open()?;
        socket.create_veth(&host_side, "eth0", &node_ns, MTU)?;
        let bridge = socket.link(BRIDGE)?.expect("the cluster's bridge");
        let veth = socket.link(&host_side)?.expect("the veth just made");
        socket.set_link(veth.index, Some(bridge.index), Some(MTU))?;
        Ok(())
    })??;
    Ok(path)
}

/// Makes node number `index`'s tap device in the cluster namespace, up and plugged into the
/// bridge, for its VM's NIC. Returns its name.
pub fn create_node_tap(cluster_ns: &NetNs, index: usize) -> Result<String, ClusterNetworkError> {
    let tap = crate::qemu_node::tap_name(index);
    cluster_ns.run(|| -> Result<(), ClusterNetworkError> {
        baton_network::create_tap(&tap)?;
        let mut socket = RouteSocket::open()?;
        let bridge = socket.link(BRIDGE)?.expect("the cluster's bridge");
        let link = socket.link(&tap)?.expect("the tap just made");
        socket.set_link(link.index, Some(bridge.index), Some(MTU))?;
        Ok(())
    })??;
    Ok(tap)
}

/// Removes a pinned namespace (its interfaces go with it once nothing holds it).
pub fn remove_namespace(path: &Path) -> Result<(), NetNsError> {
    NetNs::unpin(path)
}
