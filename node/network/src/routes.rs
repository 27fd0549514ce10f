//! IPv4 routes of the main table through rtnetlink.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{Create, NetlinkError, RouteSocket};

/// The route protocol number Baton marks its routes with, so that it finds (and removes) its
/// own and no one else's. 0x62 ('b') is unassigned in the kernel's list of route protocols.
pub const BATON_ROUTE_PROTOCOL: u8 = 0x62;

/// An IPv4 unicast route of the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Where it leads.
    pub destination: Ipv4Net,
    /// The next hop; `None` for a route straight out of `interface`.
    pub gateway: Option<Ipv4Addr>,
    /// The outgoing interface, if fixed.
    pub interface: Option<u32>,
}

impl Route {
    fn message(&self) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = self.destination.prefix_len();
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Other(BATON_ROUTE_PROTOCOL);
        message.header.kind = RouteType::Unicast;
        message.header.scope = if self.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if self.destination.prefix_len() > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    self.destination.network(),
                )));
        }
        if let Some(gateway) = self.gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        }
        if let Some(interface) = self.interface {
            message.attributes.push(RouteAttribute::Oif(interface));
        }
        message
    }

    fn describe(&self) -> String {
        match self.gateway {
            Some(gateway) => format!("{} via {gateway}", self.destination),
            None => format!("{} on interface {:?}", self.destination, self.interface),
        }
    }
}

impl RouteSocket {
    /// Adds `route`, marked as Baton's; a route to the same destination that exists already is
    /// not an error.
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        self.add_route_of(route, RouteProtocol::Other(BATON_ROUTE_PROTOCOL), "route")
    }

    /// Adds `route` as a static route of the machine's configuration (protocol `static`, not
    /// Baton's pod-route mark, so the node route sync never removes it); one that exists
    /// already is not an error.
    pub fn add_static_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        self.add_route_of(route, RouteProtocol::Static, "static route")
    }

    /// Adds `route` as a DHCP lease's (protocol `dhcp`); a route to the same destination
    /// that exists already (the lease's own, or one of the configuration) is kept and not an
    /// error.
    pub fn add_dhcp_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        self.add_route_of(route, RouteProtocol::Dhcp, "DHCP route")
    }

    /// Deletes the DHCP lease's `route`; a missing one is not an error.
    pub fn delete_dhcp_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        self.delete_route_of(route, RouteProtocol::Dhcp, "DHCP route")
    }

    /// Deletes `route` (Baton's); a missing one is not an error.
    pub fn delete_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        self.delete_route_of(route, RouteProtocol::Other(BATON_ROUTE_PROTOCOL), "route")
    }

    /// Adds `route` marked with `protocol`; one that exists already is not an error.
    fn add_route_of(
        &mut self,
        route: &Route,
        protocol: RouteProtocol,
        kind: &str,
    ) -> Result<(), NetlinkError> {
        let mut message = route.message();
        message.header.protocol = protocol;
        let result = self.change(
            || format!("add {kind} {}", route.describe()),
            RouteNetlinkMessage::NewRoute(message),
            Create::Exclusive,
        );
        match result {
            Err(err) if err.is_exists() => Ok(()),
            other => other,
        }
    }

    /// Deletes `route` marked with `protocol` (the kernel matches the mark); a missing one is
    /// not an error.
    fn delete_route_of(
        &mut self,
        route: &Route,
        protocol: RouteProtocol,
        kind: &str,
    ) -> Result<(), NetlinkError> {
        let mut message = route.message();
        message.header.protocol = protocol;
        let result = self.change(
            || format!("delete {kind} {}", route.describe()),
            RouteNetlinkMessage::DelRoute(message),
            Create::No,
        );
        match result {
            Err(err) if err.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// The IPv4 routes of the main table that Baton added.
    pub fn baton_routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        let answers = self.dump(
            || "list routes".into(),
            RouteNetlinkMessage::GetRoute(request),
        )?;
        Ok(answers
            .iter()
            .filter_map(|answer| {
                let RouteNetlinkMessage::NewRoute(message) = answer else {
                    return None;
                };
                let header = &message.header;
                if header.table != RouteHeader::RT_TABLE_MAIN
                    || header.protocol != RouteProtocol::Other(BATON_ROUTE_PROTOCOL)
                {
                    return None;
                }
                let mut route = Route {
                    destination: Ipv4Net::new(
                        Ipv4Addr::UNSPECIFIED,
                        header.destination_prefix_length,
                    )
                    .ok()?,
                    gateway: None,
                    interface: None,
                };
                for attribute in &message.attributes {
                    match attribute {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                            route.destination =
                                Ipv4Net::new(*ip, header.destination_prefix_length).ok()?;
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => {
                            route.gateway = Some(*ip)
                        }
                        RouteAttribute::Oif(index) => route.interface = Some(*index),
                        _ => {}
                    }
                }
                Some(route)
            })
            .collect())
    }
}
