//! The machine's network from its configuration, through netlink: loopback up, each
//! interface up with its MTU, addresses and static routes, and /etc/resolv.conf.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_network::{LOOPBACK_INDEX, NetlinkError, Route, RouteSocket};

use crate::machine_config::Network;

/// How long init waits for an interface to appear (a driver still probing).
const INTERFACE_WAIT: Duration = Duration::from_secs(10);
/// How often it looks in the meantime.
const INTERFACE_POLL: Duration = Duration::from_millis(50);

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureNetworkError {
    /// A netlink request failed.
    #[error("configuring the network")]
    Netlink(#[from] NetlinkError),
    /// A configured interface never appeared.
    #[error("interface {0} (machine.network.interfaces) did not appear within {INTERFACE_WAIT:?}")]
    NoInterface(String),
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

/// Configures `network` in the current network namespace and writes the resolvers to
/// `resolv_conf`. Returns the first configured address (the node's).
pub fn configure_network(
    network: &Network,
    resolv_conf: &Path,
) -> Result<Option<Ipv4Addr>, ConfigureNetworkError> {
    let mut socket = RouteSocket::open()?;
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
        for route in &interface.routes {
            socket.add_static_route(&Route {
                destination: route.to,
                gateway: Some(route.via),
                interface: Some(link.index),
            })?;
        }
    }
    let mut resolv = String::new();
    for nameserver in &network.nameservers {
        resolv.push_str(&format!("nameserver {nameserver}\n"));
    }
    if let Some(parent) = resolv_conf.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ConfigureNetworkError::ResolvConf {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(resolv_conf, resolv).map_err(|source| ConfigureNetworkError::ResolvConf {
        path: resolv_conf.to_path_buf(),
        source,
    })?;
    Ok(network
        .interfaces
        .iter()
        .flat_map(|i| i.addresses.first())
        .map(|a| a.addr())
        .next())
}
