//! Connection tracking entries over netlink (ctnetlink): listing the kernel's IPv4 flows and
//! removing them. The proxy removes the UDP flows whose endpoint went away: UDP has no
//! connection to end, so without that a client that keeps sending from one port keeps being
//! translated to the gone endpoint (upstream kube-proxy removes them for the same reason).

use std::net::Ipv4Addr;

use crate::netlink::{Attributes, parse_attributes};
use crate::socket::{ApplyBatchError, NftSocket};

/// nfnetlink's conntrack subsystem and its messages.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// `AF_INET`.
const FAMILY_IPV4: u8 = 2;

/// One direction of a tracked flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTuple {
    /// The source address.
    pub source: Ipv4Addr,
    /// The destination address.
    pub destination: Ipv4Addr,
    /// The source port (0 for protocols without ports).
    pub source_port: u16,
    /// The destination port (0 for protocols without ports).
    pub destination_port: u16,
}

/// A flow the kernel tracks: its protocol and both directions (the reply's source is where
/// destination NAT sent it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackedFlow {
    /// The IP protocol number.
    pub protocol: u8,
    /// As the first packet went.
    pub original: FlowTuple,
    /// As replies come.
    pub reply: FlowTuple,
    /// Its connection tracking zone (0 unless a rule set one).
    pub zone: u16,
}

/// Reads a tuple (`CTA_TUPLE_IP` = 1 holding `CTA_IP_V4_SRC` = 1 and `_DST` = 2;
/// `CTA_TUPLE_PROTO` = 2 holding `CTA_PROTO_NUM` = 1, `_SRC_PORT` = 2, `_DST_PORT` = 3).
fn parse_tuple(attributes: &[u8]) -> Option<(u8, FlowTuple)> {
    let mut tuple = FlowTuple {
        source: Ipv4Addr::UNSPECIFIED,
        destination: Ipv4Addr::UNSPECIFIED,
        source_port: 0,
        destination_port: 0,
    };
    let mut protocol = None;
    let address = |value: &[u8]| -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))
    };
    let port = |value: &[u8]| -> Option<u16> { Some(u16::from_be_bytes(value.try_into().ok()?)) };
    for (kind, value) in parse_attributes(attributes) {
        match kind {
            1 => {
                for (kind, value) in parse_attributes(value) {
                    match kind {
                        1 => tuple.source = address(value)?,
                        2 => tuple.destination = address(value)?,
                        _ => {}
                    }
                }
            }
            2 => {
                for (kind, value) in parse_attributes(value) {
                    match kind {
                        1 => protocol = value.first().copied(),
                        2 => tuple.source_port = port(value)?,
                        3 => tuple.destination_port = port(value)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((protocol?, tuple))
}

/// Writes `tuple` of `protocol` as attribute `kind`.
fn encode_tuple(attributes: &mut Attributes, kind: u16, protocol: u8, tuple: &FlowTuple) {
    attributes.nested(kind, |t| {
        t.nested(1, |ip| {
            ip.raw(1, &tuple.source.octets())
                .raw(2, &tuple.destination.octets());
        });
        t.nested(2, |proto| {
            proto
                .raw(1, &[protocol])
                .raw(2, &tuple.source_port.to_be_bytes())
                .raw(3, &tuple.destination_port.to_be_bytes());
        });
    });
}

impl NftSocket {
    /// The IPv4 flows of `protocol` the kernel tracks (in this socket's network namespace).
    pub fn tracked_flows(&mut self, protocol: u8) -> Result<Vec<TrackedFlow>, ApplyBatchError> {
        let objects = self.dump_subsystem(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            FAMILY_IPV4,
            &[],
        )?;
        let mut flows = Vec::new();
        for object in &objects {
            let mut original = None;
            let mut reply = None;
            let mut zone = 0;
            // CTA_TUPLE_ORIG = 1, CTA_TUPLE_REPLY = 2, CTA_ZONE = 18.
            for (kind, value) in parse_attributes(object) {
                match kind {
                    1 => original = parse_tuple(value),
                    2 => reply = parse_tuple(value),
                    18 => zone = value.try_into().map_or(0, u16::from_be_bytes),
                    _ => {}
                }
            }
            if let (Some((found, original)), Some((_, reply))) = (original, reply)
                && found == protocol
            {
                flows.push(TrackedFlow {
                    protocol,
                    original,
                    reply,
                    zone,
                });
            }
        }
        Ok(flows)
    }

    /// Removes `flow` from the connection tracking table; a flow already gone is no error.
    pub fn remove_tracked_flow(&mut self, flow: &TrackedFlow) -> Result<(), ApplyBatchError> {
        let mut attributes = Attributes::new();
        encode_tuple(&mut attributes, 1, flow.protocol, &flow.original);
        if flow.zone != 0 {
            attributes.raw(18, &flow.zone.to_be_bytes());
        }
        match self.request(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
            FAMILY_IPV4,
            attributes.bytes(),
        ) {
            Ok(()) => Ok(()),
            Err(err) if err.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => Ok(()),
            Err(source) => Err(ApplyBatchError {
                operation: format!(
                    "remove the tracked flow {}:{} -> {}:{}",
                    flow.original.source,
                    flow.original.source_port,
                    flow.original.destination,
                    flow.original.destination_port
                ),
                source,
            }),
        }
    }
}
