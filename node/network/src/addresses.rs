//! Interface addresses through rtnetlink.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{Create, NetlinkError, RouteSocket};

impl RouteSocket {
    /// Adds `address` (with its prefix length) to interface `index`; an address the interface
    /// has already is not an error.
    pub fn add_address(&mut self, index: u32, address: Ipv4Net) -> Result<(), NetlinkError> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = address.prefix_len();
        message.header.index = index;
        let ip = IpAddr::V4(address.addr());
        message.attributes.push(AddressAttribute::Local(ip));
        message.attributes.push(AddressAttribute::Address(ip));
        message
            .attributes
            .push(AddressAttribute::Broadcast(address.broadcast()));
        let result = self.change(
            || format!("add address {address} to interface {index}"),
            RouteNetlinkMessage::NewAddress(message),
            Create::Exclusive,
        );
        match result {
            Err(err) if err.is_exists() => Ok(()),
            other => other,
        }
    }

    /// The IPv4 addresses of every interface, as (interface index, address with prefix).
    pub fn ipv4_addresses(&mut self) -> Result<Vec<(u32, Ipv4Net)>, NetlinkError> {
        let mut request = AddressMessage::default();
        request.header.family = AddressFamily::Inet;
        let answers = self.dump(
            || "list addresses".into(),
            RouteNetlinkMessage::GetAddress(request),
        )?;
        Ok(answers
            .iter()
            .filter_map(|answer| {
                let RouteNetlinkMessage::NewAddress(message) = answer else {
                    return None;
                };
                let ip = message.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })?;
                let net = Ipv4Net::new(ip, message.header.prefix_len).ok()?;
                Some((message.header.index, net))
            })
            .collect())
    }

    /// The index of the interface that holds `ip`, if one does.
    pub fn interface_with_address(&mut self, ip: Ipv4Addr) -> Result<Option<u32>, NetlinkError> {
        Ok(self
            .ipv4_addresses()?
            .into_iter()
            .find(|(_, net)| net.addr() == ip)
            .map(|(index, _)| index))
    }
}
