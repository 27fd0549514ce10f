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
        let mut message = address_message(index, address);
        message
            .attributes
            .push(AddressAttribute::Broadcast(address.broadcast()));
        self.new_address(message, || {
            format!("add address {address} to interface {index}")
        })
    }

    /// Sends RTM_NEWADDR; an address the interface has already is not an error.
    fn new_address(
        &mut self,
        message: AddressMessage,
        operation: impl FnOnce() -> String,
    ) -> Result<(), NetlinkError> {
        match self.change(
            operation,
            RouteNetlinkMessage::NewAddress(message),
            Create::Exclusive,
        ) {
            Err(err) if err.is_exists() => Ok(()),
            other => other,
        }
    }

    /// The IPv4 addresses of every interface, as (interface index, address with prefix).
    pub fn ipv4_addresses(&mut self) -> Result<Vec<(u32, Ipv4Net)>, NetlinkError> {
        Ok(self
            .dump_addresses()?
            .into_iter()
            .map(|(index, net, _)| (index, net))
            .collect())
    }

    /// Every IPv4 address: (interface index, address with prefix, label).
    fn dump_addresses(&mut self) -> Result<Vec<(u32, Ipv4Net, Option<String>)>, NetlinkError> {
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
                let label = message.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Label(label) => Some(label.clone()),
                    _ => None,
                });
                let net = Ipv4Net::new(ip, message.header.prefix_len).ok()?;
                Some((message.header.index, net, label))
            })
            .collect())
    }

    /// Adds `address` to interface `index` under `label` (which must start with the
    /// interface's name, as `lo:kube-proxy`), so that whoever added it finds it again; an
    /// address the interface has already is not an error.
    pub fn add_labeled_address(
        &mut self,
        index: u32,
        address: Ipv4Net,
        label: &str,
    ) -> Result<(), NetlinkError> {
        let mut message = address_message(index, address);
        message
            .attributes
            .push(AddressAttribute::Label(label.to_owned()));
        self.new_address(message, || {
            format!("add address {address} labeled {label} to interface {index}")
        })
    }

    /// The IPv4 addresses labeled `label`, as (interface index, address with prefix).
    pub fn labeled_addresses(&mut self, label: &str) -> Result<Vec<(u32, Ipv4Net)>, NetlinkError> {
        Ok(self
            .dump_addresses()?
            .into_iter()
            .filter(|(_, _, l)| l.as_deref() == Some(label))
            .map(|(index, net, _)| (index, net))
            .collect())
    }

    /// Removes `address` from interface `index`; an address that is not there is not an
    /// error.
    pub fn delete_address(&mut self, index: u32, address: Ipv4Net) -> Result<(), NetlinkError> {
        let message = address_message(index, address);
        match self.change(
            || format!("delete address {address} from interface {index}"),
            RouteNetlinkMessage::DelAddress(message),
            Create::No,
        ) {
            Err(err) if err.errno() == Some(libc::EADDRNOTAVAIL) || err.is_not_found() => Ok(()),
            other => other,
        }
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

/// The message that names `address` on interface `index`.
fn address_message(index: u32, address: Ipv4Net) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.prefix_len = address.prefix_len();
    message.header.index = index;
    let ip = IpAddr::V4(address.addr());
    message.attributes.push(AddressAttribute::Local(ip));
    message.attributes.push(AddressAttribute::Address(ip));
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetNs;

    #[test]
    fn labeled_addresses_are_found_and_removed() {
        let namespace = NetNs::create().unwrap();
        let found = namespace
            .run(|| {
                let mut socket = RouteSocket::open().unwrap();
                let lo = socket.link("lo").unwrap().unwrap().index;
                let ip: Ipv4Net = "10.96.0.10/32".parse().unwrap();
                socket.add_labeled_address(lo, ip, "lo:kube-proxy").unwrap();
                socket.add_labeled_address(lo, ip, "lo:kube-proxy").unwrap();
                let labeled = socket.labeled_addresses("lo:kube-proxy").unwrap();
                let others = socket.labeled_addresses("lo:other").unwrap();
                socket.delete_address(lo, ip).unwrap();
                socket.delete_address(lo, ip).unwrap();
                let after = socket.labeled_addresses("lo:kube-proxy").unwrap();
                (labeled, others, after, lo)
            })
            .unwrap();
        let (labeled, others, after, lo) = found;
        assert_eq!(labeled, vec![(lo, "10.96.0.10/32".parse().unwrap())]);
        assert!(others.is_empty());
        assert!(after.is_empty(), "deleted, and deleting again is no error");
    }
}
