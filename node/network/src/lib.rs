//! Baton's pod network, all through netlink from Rust (no `ip`, no `brctl`, no shell): a small
//! synchronous rtnetlink client ([`RouteSocket`]) for links, addresses and routes; network
//! namespaces ([`NetNs`]); the persisted pod address allocator ([`AddressAllocator`]); the
//! node's bridge with a veth pair per pod ([`BridgeNetwork`]); and routes to the other nodes'
//! pod CIDRs ([`sync_node_routes`]); tap devices for VMs ([`create_tap`]); IPVS virtual
//! services through generic netlink ([`IpvsSocket`]); and a CNI runtime that runs the plugins a
//! user brings instead of the bridge ([`cni`]).

mod address_watch;
mod addresses;
mod bridge;
pub mod cni;
mod host_ports;
mod ipam;
mod ipvs;
mod links;
mod masquerade;
mod netlink;
mod netns;
mod node_routes;
mod routes;
mod tap;
mod tcp_relay;

pub use address_watch::AddressWatch;
pub use bridge::{
    BridgeConfig, BridgeNetwork, HOST_INTERFACE_PREFIX, POD_INTERFACE, PodAddress, PodNetworkError,
    host_interface,
};
pub use host_ports::{HOST_PORTS_TABLE, HostPortMapping, host_ports_batch, sync_host_ports};
pub use ipam::{AddressAllocator, AllocateAddressError};
pub use ipvs::{Destination, IpvsProtocol, IpvsSocket, ServiceAddress, VirtualService};
pub use links::Link;
pub use masquerade::{MASQUERADE_TABLE, masquerade_batch, remove_masquerade, sync_masquerade};
pub use netlink::{Create, NetlinkError, RouteSocket};
pub use netns::{LOOPBACK_INDEX, NetNs, NetNsError};
pub use node_routes::{RouteChanges, sync_node_routes};
pub use routes::{BATON_ROUTE_PROTOCOL, Route};
pub use tap::{CreateTapError, create_tap, open_tap};
pub use tcp_relay::{RelayBackends, relay};
