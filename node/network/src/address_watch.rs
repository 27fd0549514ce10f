//! Notices changes to the node's IPv4 addresses without listing them: a netlink socket
//! subscribed to the kernel's address and link notifications (`RTNLGRP_IPV4_IFADDR`,
//! `RTNLGRP_LINK`), read without waiting. Listing every address costs as much as there are addresses (the ipvs proxy mode
//! puts one per Service on its dummy interface); this costs as much as what changed.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use crate::netlink::NetlinkError;

/// The rtnetlink multicast groups of link changes and of IPv4 address changes
/// (`RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR` in `include/uapi/linux/rtnetlink.h`).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;

/// A subscription to IPv4 address changes, in the network namespace it was opened in.
#[derive(Debug)]
pub struct AddressWatch {
    socket: Socket,
    received: Vec<u8>,
}

impl AddressWatch {
    /// Subscribes: changes made from now on are reported by [`AddressWatch::changed_except`].
    pub fn open() -> Result<Self, NetlinkError> {
        let fail = |source| NetlinkError {
            operation: "subscribe to IPv4 address changes".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(fail)?;
        socket.bind_auto().map_err(fail)?;
        for group in [RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR] {
            socket.add_membership(group).map_err(fail)?;
        }
        socket.set_non_blocking(true).map_err(fail)?;
        Ok(Self {
            socket,
            received: Vec::with_capacity(64 * 1024),
        })
    }

    /// Whether an address was added to or removed from an interface other than `except`, or
    /// interface `except` itself was removed, since the subscription or the last call.
    /// Notifications the socket could not hold (ENOBUFS: too many changes at once) count as
    /// such a change, since what they said is lost.
    pub fn changed_except(&mut self, except: u32) -> Result<bool, NetlinkError> {
        let mut changed = false;
        loop {
            self.received.clear();
            match self.socket.recv(&mut self.received, 0) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(changed),
                Err(err) if err.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    changed = true;
                    continue;
                }
                Err(source) => {
                    return Err(NetlinkError {
                        operation: "read IPv4 address changes".into(),
                        source,
                    });
                }
            }
            let mut offset = 0;
            while offset < self.received.len() {
                let Ok(message) =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.received[offset..])
                else {
                    // Undecodable: whatever it said, look again.
                    changed = true;
                    break;
                };
                let length = message.header.length as usize;
                if length == 0 {
                    changed = true;
                    break;
                }
                // Messages are aligned to 4 bytes.
                offset += length.next_multiple_of(4);
                match message.payload {
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewAddress(address)
                        | RouteNetlinkMessage::DelAddress(address),
                    ) if address.header.index != except => changed = true,
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link))
                        if link.header.index == except =>
                    {
                        changed = true;
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LOOPBACK_INDEX, NetNs, RouteSocket};

    #[test]
    fn the_excepted_interface_going_away_is_noticed() {
        let namespace = NetNs::create().expect("create a network namespace (as root)");
        namespace
            .run(|| {
                let mut route = RouteSocket::open().unwrap();
                let here = NetNs::current().unwrap();
                route
                    .create_veth("watch-a", "watch-b", &here, 1500)
                    .unwrap();
                let index = route.link("watch-a").unwrap().unwrap().index;
                let mut watch = AddressWatch::open().unwrap();
                route
                    .add_address(index, "10.9.0.1/32".parse().unwrap())
                    .unwrap();
                assert!(!watch.changed_except(index).unwrap(), "its own address");
                route.delete_link("watch-a").unwrap();
                assert!(watch.changed_except(index).unwrap(), "it was removed");
            })
            .unwrap();
    }

    #[test]
    fn changes_on_other_interfaces_are_noticed_and_the_excepted_one_is_not() {
        let namespace = NetNs::create().expect("create a network namespace (as root)");
        namespace
            .run(|| {
                let mut route = RouteSocket::open().unwrap();
                let mut watch = AddressWatch::open().unwrap();
                assert!(!watch.changed_except(0).unwrap(), "nothing changed yet");
                route
                    .add_address(LOOPBACK_INDEX, "10.9.0.1/32".parse().unwrap())
                    .unwrap();
                // Excepting loopback, its change is not one; the call took it all the same.
                assert!(!watch.changed_except(LOOPBACK_INDEX).unwrap());
                route
                    .add_address(LOOPBACK_INDEX, "10.9.0.2/32".parse().unwrap())
                    .unwrap();
                assert!(watch.changed_except(0).unwrap(), "an address was added");
                assert!(!watch.changed_except(0).unwrap(), "and was reported once");
                route
                    .delete_address(LOOPBACK_INDEX, "10.9.0.2/32".parse().unwrap())
                    .unwrap();
                assert!(watch.changed_except(0).unwrap(), "an address was removed");
            })
            .unwrap();
    }
}
