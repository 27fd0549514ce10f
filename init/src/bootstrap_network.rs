//! The network a node needs before it has its configuration, to fetch that configuration from
//! an HTTP metadata endpoint: a DHCPv4 lease on the first Ethernet interface that gets one,
//! in the kernel's order, as cloud images do. Ethernet interfaces are a device's (no link
//! kind) and veth ends (a node in a network namespace); software interfaces that kernel
//! modules make when they load (`dummy0`, `bond0` ...) lead nowhere and are left alone. The
//! lease's address, default route and MTU are taken off again once a valid configuration is in
//! hand, so that the configuration's own network does not meet them (the interfaces tried stay
//! up); when none came the lease stays, so the node API in maintenance mode can be reached,
//! but nothing renews it.

use std::time::{Duration, Instant};

use baton_network::{LOOPBACK_INDEX, NetlinkError, RouteSocket};

use crate::dhcp::{self, DhcpClient, DhcpExchangeError, Lease};
use crate::network_setup::{INTERFACE_POLL, INTERFACE_WAIT};

/// Why the network for fetching the configuration could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapNetworkError {
    /// A netlink request failed.
    #[error("bringing up the network to fetch the machine configuration")]
    Netlink(#[from] NetlinkError),
    /// No interface with an Ethernet address appeared.
    #[error("no Ethernet interface appeared within {INTERFACE_WAIT:?}")]
    NoInterface,
    /// No interface got a lease; the last one's failure.
    #[error("no DHCP lease on {interfaces}")]
    NoLease {
        /// The interfaces tried.
        interfaces: String,
        /// The last failure.
        #[source]
        last: DhcpExchangeError,
    },
}

/// The leased interface.
#[derive(Debug)]
pub struct BootstrapNetwork {
    /// Its name.
    pub interface: String,
    index: u32,
    /// Its MTU before the lease, put back when the lease brought another.
    mtu: Option<u32>,
    /// The lease applied to it.
    pub lease: Lease,
}

/// Brings up loopback, then each Ethernet interface in turn (in the kernel's order), asking a
/// DHCP server on each (`dhcp_wait` shared among them) until one grants a lease, which it
/// applies (address, default route, MTU).
pub fn bootstrap_network(dhcp_wait: Duration) -> Result<BootstrapNetwork, BootstrapNetworkError> {
    let mut socket = RouteSocket::open()?;
    socket.set_link(LOOPBACK_INDEX, None, None)?;
    let deadline = Instant::now() + INTERFACE_WAIT;
    let mut candidates = loop {
        let candidates: Vec<_> = socket
            .links()?
            .into_iter()
            .filter(|link| {
                link.index != LOOPBACK_INDEX
                    && link.controller.is_none()
                    && link.kind.as_deref().is_none_or(|kind| kind == "veth")
            })
            .filter_map(|link| {
                let mac = link.mac.filter(|mac| mac.iter().any(|byte| *byte != 0))?;
                Some((link.index, link.name, mac, link.mtu))
            })
            .collect();
        if !candidates.is_empty() {
            break candidates;
        }
        if Instant::now() >= deadline {
            return Err(BootstrapNetworkError::NoInterface);
        }
        std::thread::sleep(INTERFACE_POLL);
    };
    candidates.sort_by_key(|(index, ..)| *index);
    tracing::info!(interfaces = ?candidates.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(), "asking for a DHCP lease to fetch the machine configuration");
    let share = dhcp_wait / candidates.len() as u32;
    let mut last = None;
    for (index, name, mac, mtu) in &candidates {
        socket.set_link(*index, None, None)?;
        let acquired = DhcpClient::open(name, *index, *mac)
            .and_then(|mut client| client.acquire(Instant::now() + share));
        match acquired {
            Ok(lease) => {
                if let Err(err) = dhcp::apply_lease(&mut socket, *index, None, &lease, None) {
                    // Nothing half-applied stays behind.
                    let _ = dhcp::remove_lease(&mut socket, *index, &lease);
                    return Err(err.into());
                }
                tracing::info!(interface = %name, address = %lease.address, router = ?lease.router, "DHCP lease for fetching the machine configuration");
                return Ok(BootstrapNetwork {
                    interface: name.clone(),
                    index: *index,
                    mtu: *mtu,
                    lease,
                });
            }
            Err(err) => {
                tracing::warn!(interface = %name, "{}", baton_client::error_chain(&err));
                last = Some(err);
            }
        }
    }
    let interfaces = candidates
        .iter()
        .map(|(_, name, ..)| name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Err(BootstrapNetworkError::NoLease {
        interfaces,
        last: last.expect("at least one interface was tried"),
    })
}

impl BootstrapNetwork {
    /// Takes the lease's address and default route off the interface again, and puts its MTU
    /// back when the lease changed it.
    pub fn tear_down(self) -> Result<(), NetlinkError> {
        let mut socket = RouteSocket::open()?;
        let removed = dhcp::remove_lease(&mut socket, self.index, &self.lease);
        let restored = match (self.lease.mtu, self.mtu) {
            (Some(_), Some(mtu)) => socket.set_link(self.index, None, Some(mtu)),
            _ => Ok(()),
        };
        removed.and(restored)
    }
}
