//! The machine's network from its configuration, through netlink: loopback up, each
//! interface up with its MTU, addresses and static routes, a DHCPv4 lease for those that ask
//! (`dhcp.rs`), and /etc/resolv.conf.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_network::{LOOPBACK_INDEX, NetlinkError, Route, RouteSocket};

use crate::dhcp::{self, DhcpClient, DhcpExchangeError, KeepLeaseSettings, Lease};
use crate::machine_config::Network;

/// How long boot waits for a DHCP lease on each interface that asks for one.
pub const DHCP_WAIT: Duration = Duration::from_secs(30);

/// How long init waits for an interface to appear (a driver still probing).
pub(crate) const INTERFACE_WAIT: Duration = Duration::from_secs(10);
/// How often it looks in the meantime.
pub(crate) const INTERFACE_POLL: Duration = Duration::from_millis(50);

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureNetworkError {
    /// A netlink request failed.
    #[error("configuring the network")]
    Netlink(#[from] NetlinkError),
    /// A configured interface never appeared.
    #[error("interface {0} (machine.network.interfaces) did not appear within {INTERFACE_WAIT:?}")]
    NoInterface(String),
    /// An interface that asks for DHCP has no hardware address.
    #[error("interface {0} (machine.network.interfaces) has no Ethernet address for DHCP")]
    NoHardwareAddress(String),
    /// No lease came.
    #[error("machine.network.interfaces: no DHCP lease")]
    Dhcp(#[source] DhcpExchangeError),
    /// /etc/resolv.conf could not be written.
    #[error("writing {path}")]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A DHCP lease to keep after boot.
#[derive(Debug)]
pub struct LeaseToKeep {
    /// The interface's client.
    pub client: DhcpClient,
    /// The lease.
    pub lease: Lease,
    /// When it was granted.
    pub granted: Instant,
    /// What keeping it needs.
    pub settings: KeepLeaseSettings,
}

impl LeaseToKeep {
    /// Keeps the lease on a thread of its own, for as long as the process lives.
    pub fn keep(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        dhcp::keep_lease(self.client, self.lease, self.granted, self.settings)
    }
}

/// The network as configured.
#[derive(Debug, Default)]
pub struct ConfiguredNetwork {
    /// The first static address, else the first leased one (the node's).
    pub node_ip: Option<Ipv4Addr>,
    /// The leases, to keep.
    pub leases: Vec<LeaseToKeep>,
}

/// Configures `network` in the current network namespace (asking a DHCP server, for
/// `dhcp_wait` at most, on the interfaces that say so) and writes the resolvers to
/// `resolv_conf`.
pub fn configure_network(
    network: &Network,
    resolv_conf: &Path,
    dhcp_wait: Duration,
) -> Result<ConfiguredNetwork, ConfigureNetworkError> {
    let mut socket = RouteSocket::open()?;
    let mut leases = Vec::new();
    socket.set_link(LOOPBACK_INDEX, None, None)?;
    for interface in &network.interfaces {
        let deadline = Instant::now() + INTERFACE_WAIT;
        let link = loop {
            if let Some(link) = socket.link(&interface.name)? {
                break link;
            }
            if Instant::now() >= deadline {
                return Err(ConfigureNetworkError::NoInterface(interface.name.clone()));
            }
            std::thread::sleep(INTERFACE_POLL);
        };
        socket.set_link(link.index, None, interface.mtu)?;
        for address in &interface.addresses {
            socket.add_address(link.index, *address)?;
        }
        if interface.dhcp {
            let mac = link
                .mac
                .filter(|mac| mac.iter().any(|byte| *byte != 0))
                .ok_or_else(|| ConfigureNetworkError::NoHardwareAddress(interface.name.clone()))?;
            let mut client = DhcpClient::open(&interface.name, link.index, mac)
                .map_err(ConfigureNetworkError::Dhcp)?;
            let granted = Instant::now();
            let lease = client
                .acquire(granted + dhcp_wait)
                .map_err(ConfigureNetworkError::Dhcp)?;
            dhcp::apply_lease(&mut socket, link.index, None, &lease, interface.mtu)?;
            tracing::info!(interface = %interface.name, address = %lease.address, router = ?lease.router, lease = ?lease.lease_time, "DHCP lease granted");
            leases.push(LeaseToKeep {
                client,
                lease,
                granted,
                settings: KeepLeaseSettings {
                    index: link.index,
                    configured_mtu: interface.mtu,
                    nameservers: network.nameservers.clone(),
                    resolv_conf: resolv_conf.to_path_buf(),
                    writes_resolvers: leases.is_empty(),
                },
            });
        }
        for route in &interface.routes {
            socket.add_static_route(&Route {
                destination: route.to,
                gateway: Some(route.via),
                interface: Some(link.index),
            })?;
        }
    }
    // One lease's resolvers (the first interface's), after the configured ones.
    dhcp::write_resolvers(
        resolv_conf,
        &network.nameservers,
        leases.first().map(|kept| &kept.lease),
    )
    .map_err(|source| ConfigureNetworkError::ResolvConf {
        path: resolv_conf.to_path_buf(),
        source,
    })?;
    let node_ip = network
        .interfaces
        .iter()
        .flat_map(|i| i.addresses.first())
        .map(|a| a.addr())
        .next()
        .or_else(|| leases.first().map(|kept| kept.lease.address.addr()));
    Ok(ConfiguredNetwork { node_ip, leases })
}
