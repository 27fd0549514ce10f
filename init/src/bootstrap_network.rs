//! The network a node needs before it has its configuration, to fetch that configuration from
//! an HTTP metadata endpoint: a DHCPv4 lease on the first Ethernet interface that gets one
//! (in name order), as cloud images do. Ethernet interfaces are a device's (no link kind) and
//! veth ends (a node in a network namespace); software interfaces that kernel modules make
//! when they load (`dummy0`, `bond0` ...) lead nowhere and are left alone. It is taken down again once the configuration is in
//! hand, so that the configuration's own network starts from a clean interface; when no
//! configuration came it stays, so the node API in maintenance mode can be reached.

use std::time::{Duration, Instant};

use baton_network::{LOOPBACK_INDEX, NetlinkError, RouteSocket};

use crate::dhcp::{self, DhcpClient, DhcpExchangeError, Lease};

/// How long it waits for a first Ethernet interface to appear (a driver still probing).
const INTERFACE_WAIT: Duration = Duration::from_secs(10);
/// How often it looks in the meantime.
const INTERFACE_POLL: Duration = Duration::from_millis(50);

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
    /// The lease applied to it.
    pub lease: Lease,
}

/// Brings up loopback and every Ethernet interface, and asks a DHCP server on each in name
/// order (`dhcp_wait` shared among them) until one grants a lease, which it applies (address
/// and default route).
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
                Some((link.name, link.index, mac))
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
    candidates.sort();
    tracing::info!(interfaces = ?candidates.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), "asking for a DHCP lease to fetch the machine configuration");
    let share = dhcp_wait / candidates.len() as u32;
    let mut last = None;
    for (name, index, mac) in &candidates {
        socket.set_link(*index, None, None)?;
        let acquired = DhcpClient::open(name, *index, *mac)
            .and_then(|mut client| client.acquire(Instant::now() + share));
        match acquired {
            Ok(lease) => {
                dhcp::apply_lease(&mut socket, *index, None, &lease, None)?;
                tracing::info!(interface = %name, address = %lease.address, router = ?lease.router, "DHCP lease for fetching the machine configuration");
                return Ok(BootstrapNetwork {
                    interface: name.clone(),
                    index: *index,
                    lease,
                });
            }
            Err(err) => {
                tracing::warn!(interface = %name, "{err}");
                last = Some(err);
            }
        }
    }
    let interfaces = candidates
        .iter()
        .map(|(name, ..)| name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Err(BootstrapNetworkError::NoLease {
        interfaces,
        last: last.expect("at least one interface was tried"),
    })
}

impl BootstrapNetwork {
    /// Takes the lease's address and default route off the interface again.
    pub fn tear_down(self) -> Result<(), NetlinkError> {
        let mut socket = RouteSocket::open()?;
        dhcp::remove_lease(&mut socket, self.index, &self.lease)
    }
}
