//! Baton's own pod network on a node: one bridge holding the pod CIDR's gateway address, and
//! for each pod a veth pair whose inner end is the pod's `eth0` with an address from the
//! [`AddressAllocator`] and a default route through the bridge.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::ipam::{AddressAllocator, AllocateAddressError};
use crate::netlink::{NetlinkError, RouteSocket};
use crate::netns::{NetNs, NetNsError};
use crate::routes::Route;

/// The interface name of a pod's end of its veth pair.
pub const POD_INTERFACE: &str = "eth0";

/// Connecting or disconnecting a pod failed.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Entering the pod's namespace failed.
    #[error(transparent)]
    Namespace(#[from] NetNsError),
    /// No address could be allocated or released.
    #[error(transparent)]
    Address(#[from] AllocateAddressError),
    /// A kernel setting could not be written.
    #[error("write {path}")]
    Sysctl {
        /// The /proc/sys file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// How the node's pod network is laid out.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The bridge's name.
    pub bridge: String,
    /// The node's pod CIDR (its first address goes to the bridge).
    pub pod_cidr: Ipv4Net,
    /// MTU of the bridge and of every veth.
    pub mtu: u32,
    /// Where the address allocator keeps its state.
    pub state_dir: PathBuf,
}

/// A pod's place on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddress {
    /// The pod's IP.
    pub ip: Ipv4Addr,
    /// Its gateway (the bridge).
    pub gateway: Ipv4Addr,
}

/// The node's bridge network, set up.
#[derive(Debug)]
pub struct BridgeNetwork {
    config: BridgeConfig,
    allocator: AddressAllocator,
    bridge_index: u32,
}

impl BridgeNetwork {
    /// Creates the bridge if it is missing, gives it the gateway address, sets it up, and
    /// turns IPv4 forwarding on; in the calling thread's network namespace.
    pub fn setup(config: BridgeConfig) -> Result<Self, PodNetworkError> {
        let allocator = AddressAllocator::new(&config.state_dir, config.pod_cidr)?;
        let mut socket = RouteSocket::open()?;
        let bridge = match socket.link(&config.bridge)? {
            Some(bridge) => bridge,
            None => {
                socket.create_bridge(&config.bridge)?;
                socket.link(&config.bridge)?.ok_or_else(|| NetlinkError {
                    operation: format!("look up bridge {} after creating it", config.bridge),
                    source: std::io::Error::from_raw_os_error(nix::libc::ENODEV),
                })?
            }
        };
        socket.add_address(bridge.index, allocator.gateway())?;
        socket.set_link(bridge.index, None, Some(config.mtu))?;
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        // Bridged traffic between two pods of this node passes the IPv4 hooks, so that a reply
        // to a Service's address is translated back (where the kernel has br_netfilter).
        if std::path::Path::new(BRIDGE_NF_CALL).exists() {
            write_sysctl(BRIDGE_NF_CALL, "1")?;
        }
        Ok(Self {
            bridge_index: bridge.index,
            config,
            allocator,
        })
    }

    /// The address allocator of the pod CIDR.
    pub fn allocator(&self) -> &AddressAllocator {
        &self.allocator
    }

    /// The node's pod CIDR.
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.config.pod_cidr
    }

    /// Connects the pod sandbox `id` whose network namespace is `netns`: allocates its address
    /// (the one it holds already, after a kubelet restart) and makes its `eth0`. Idempotent.
    pub fn attach(&self, id: &str, netns: &NetNs) -> Result<PodAddress, PodNetworkError> {
        let held_before = self.allocator.held_by(id)?.is_some();
        let ip = self.allocator.allocate(id)?;
        let gateway = self.allocator.gateway();
        let address = Ipv4Net::new(ip, gateway.prefix_len()).expect("valid prefix length");
        let result = self.connect(id, netns, address, gateway.addr());
        if result.is_err() && !held_before {
            // An address this call handed out goes back (a pod that held one before, found
            // again after a restart, keeps it).
            let _ = self.allocator.release(id);
        }
        result.map(|()| PodAddress {
            ip,
            gateway: gateway.addr(),
        })
    }

    fn connect(
        &self,
        id: &str,
        netns: &NetNs,
        address: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), PodNetworkError> {
        let host_name = host_interface(id);
        let mut socket = RouteSocket::open()?;
        let existing = socket.link(&host_name)?;
        if existing.is_some() && netns.run(|| pod_side_ready(address))?? {
            socket.set_link(
                existing.map(|l| l.index).unwrap_or_default(),
                Some(self.bridge_index),
                None,
            )?;
            return Ok(());
        }
        socket.delete_link(&host_name)?;
        socket.create_veth(&host_name, POD_INTERFACE, netns, self.config.mtu)?;
        let result = self.finish_veth(&mut socket, &host_name, netns, address, gateway);
        if result.is_err() {
            // The pair this call made goes again: the next attempt starts from scratch.
            let _ = socket.delete_link(&host_name);
        }
        result
    }

    /// Puts the new pair's host end on the bridge and configures the pod's end.
    fn finish_veth(
        &self,
        socket: &mut RouteSocket,
        host_name: &str,
        netns: &NetNs,
        address: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), PodNetworkError> {
        let host = socket.link(host_name)?.ok_or_else(|| NetlinkError {
            operation: format!("look up {host_name} after creating it"),
            source: std::io::Error::from_raw_os_error(nix::libc::ENODEV),
        })?;
        socket.set_link(host.index, Some(self.bridge_index), None)?;
        socket.set_hairpin(host.index)?;
        netns.run(|| configure_pod_side(address, gateway))??;
        Ok(())
    }

    /// Disconnects the pod sandbox `id` and releases its address; what is already gone is not
    /// an error.
    pub fn detach(&self, id: &str) -> Result<(), PodNetworkError> {
        RouteSocket::open()?.delete_link(&host_interface(id))?;
        self.allocator.release(id)?;
        Ok(())
    }

    /// Releases the addresses and host interfaces of sandboxes not in `live`; returns the
    /// addresses released.
    pub fn release_orphans(
        &self,
        live: &HashSet<String>,
    ) -> Result<Vec<Ipv4Addr>, PodNetworkError> {
        let released = self.allocator.release_all_but(live)?;
        let mut socket = RouteSocket::open()?;
        let live_interfaces: HashSet<String> = live.iter().map(|id| host_interface(id)).collect();
        for link in socket.links()? {
            if link.controller == Some(self.bridge_index)
                && link.name.starts_with(HOST_INTERFACE_PREFIX)
                && !live_interfaces.contains(&link.name)
            {
                socket.delete_link(&link.name)?;
            }
        }
        Ok(released.into_iter().map(|(ip, _)| ip).collect())
    }
}

/// Whether the pod's `eth0` exists with `address` (a kubelet restart finds it so).
fn pod_side_ready(address: Ipv4Net) -> Result<bool, PodNetworkError> {
    let mut socket = RouteSocket::open()?;
    let Some(link) = socket.link(POD_INTERFACE)? else {
        return Ok(false);
    };
    Ok(link.up && socket.ipv4_addresses()?.contains(&(link.index, address)))
}

/// Inside the pod's namespace: address `eth0`, set it up, route everything through the gateway.
fn configure_pod_side(address: Ipv4Net, gateway: Ipv4Addr) -> Result<(), PodNetworkError> {
    let mut socket = RouteSocket::open()?;
    let link = socket.link(POD_INTERFACE)?.ok_or_else(|| NetlinkError {
        operation: format!("look up {POD_INTERFACE} in the pod's namespace"),
        source: std::io::Error::from_raw_os_error(nix::libc::ENODEV),
    })?;
    socket.add_address(link.index, address)?;
    socket.set_link(link.index, None, None)?;
    socket.add_route(&Route {
        destination: Ipv4Net::default(),
        gateway: Some(gateway),
        interface: Some(link.index),
    })?;
    Ok(())
}

/// Host-side interface names start with this.
pub const HOST_INTERFACE_PREFIX: &str = "veth";

/// The host-side interface of sandbox `id`: `veth` and 11 hex digits of a hash of the id (15
/// characters, the kernel's limit).
pub fn host_interface(id: &str) -> String {
    // FNV-1a: stable across releases, unlike std's hasher.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{HOST_INTERFACE_PREFIX}{:011x}", hash & 0xfff_ffff_ffff)
}

/// br_netfilter's switch for IPv4.
const BRIDGE_NF_CALL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

fn write_sysctl(path: &str, value: &str) -> Result<(), PodNetworkError> {
    let current = std::fs::read_to_string(path).unwrap_or_default();
    if current.trim() == value {
        return Ok(());
    }
    std::fs::write(path, value).map_err(|source| PodNetworkError::Sysctl {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_fit_the_kernel_limit_and_differ_per_sandbox() {
        let a = host_interface("6c1a9b52-0b8e-4a4e-9c1e-3f9a1d2e4b5c");
        let b = host_interface("6c1a9b52-0b8e-4a4e-9c1e-3f9a1d2e4b5d");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, b);
        assert_eq!(a, host_interface("6c1a9b52-0b8e-4a4e-9c1e-3f9a1d2e4b5c"));
    }
}
