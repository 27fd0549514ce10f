//! Network interfaces through rtnetlink: find, create (bridge, veth pair), change and delete.

use std::os::fd::{AsFd, AsRawFd};

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};

use crate::netlink::{Create, NetlinkError, RouteSocket};

/// What this crate reads of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// The bridge (or other controller) it is attached to.
    pub controller: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// MTU in bytes.
    pub mtu: Option<u32>,
    /// The hardware (MAC) address, for interfaces that have one of six bytes.
    pub mac: Option<[u8; 6]>,
    /// The kind of a software interface (`veth`, `bridge`, `dummy` ...); none for a device's.
    pub kind: Option<String>,
}

impl Link {
    fn from_message(message: &LinkMessage) -> Self {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            controller: None,
            up: message.header.flags.contains(LinkFlags::Up),
            mtu: None,
            mac: None,
            kind: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Controller(index) => link.controller = Some(*index),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Address(bytes) => link.mac = bytes.as_slice().try_into().ok(),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind.to_string()),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }
}

fn named(name: &str) -> LinkMessage {
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    message
}

impl RouteSocket {
    /// The interface called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let answer = self.get(
            || format!("look up interface {name}"),
            RouteNetlinkMessage::GetLink(named(name)),
        )?;
        Ok(match answer {
            Some(RouteNetlinkMessage::NewLink(message)) => Some(Link::from_message(&message)),
            _ => None,
        })
    }

    /// Every interface of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let answers = self.dump(
            || "list interfaces".into(),
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(message) => Some(Link::from_message(message)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge called `name` (down; see [`RouteSocket::set_link`]).
    pub fn create_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut message = named(name);
        message
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.change(
            || format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(message),
            Create::Exclusive,
        )
    }

    /// Creates a dummy interface called `name` (down): a place for addresses the node answers
    /// to without a device behind them (the proxy's ipvs mode puts cluster IPs there).
    pub fn create_dummy(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut message = named(name);
        message
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        self.change(
            || format!("create dummy interface {name}"),
            RouteNetlinkMessage::NewLink(message),
            Create::Exclusive,
        )
    }

    /// Creates a veth pair: `name` here, `peer_name` in the network namespace `peer_netns`,
    /// both with `mtu`.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_netns: impl AsFd,
        mtu: u32,
    ) -> Result<(), NetlinkError> {
        let mut peer = named(peer_name);
        peer.attributes.push(LinkAttribute::Mtu(mtu));
        peer.attributes
            .push(LinkAttribute::NetNsFd(peer_netns.as_fd().as_raw_fd()));
        let mut message = named(name);
        message.attributes.push(LinkAttribute::Mtu(mtu));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.change(
            || format!("create veth pair {name} / {peer_name}"),
            RouteNetlinkMessage::NewLink(message),
            Create::Exclusive,
        )
    }

    /// Sets interface `index` up and, when given, attaches it to the bridge `controller` and
    /// sets its MTU.
    pub fn set_link(
        &mut self,
        index: u32,
        controller: Option<u32>,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        if let Some(controller) = controller {
            message
                .attributes
                .push(LinkAttribute::Controller(controller));
        }
        if let Some(mtu) = mtu {
            message.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.change(
            || format!("set interface {index} up"),
            RouteNetlinkMessage::SetLink(message),
            Create::No,
        )
    }

    /// Turns hairpin mode on for bridge port `index`: a frame may leave through the port it
    /// came in by, which a pod reaching itself through a Service's address needs.
    pub fn set_hairpin(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        self.change(
            || format!("turn hairpin mode on for interface {index}"),
            RouteNetlinkMessage::NewLink(message),
            Create::No,
        )
    }

    /// Deletes the interface called `name`; a missing one is not an error. Deleting one end of
    /// a veth pair deletes the other.
    pub fn delete_link(&mut self, name: &str) -> Result<(), NetlinkError> {
        let result = self.change(
            || format!("delete interface {name}"),
            RouteNetlinkMessage::DelLink(named(name)),
            Create::No,
        );
        match result {
            Err(err) if err.is_not_found() => Ok(()),
            other => other,
        }
    }
}
