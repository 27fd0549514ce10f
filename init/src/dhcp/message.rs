//! DHCPv4 messages (RFC 2131) as the client sends and reads them, encoded and decoded with the
//! `dhcproto` crate: DISCOVER, REQUEST in its three forms (after an offer, renewing, rebinding),
//! and the lease an ACK grants.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use ipnet::Ipv4Net;

/// What the client asks servers to include.
const REQUESTED: [OptionCode; 6] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::InterfaceMtu,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

/// A lease as a server granted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The address with the subnet's prefix.
    pub address: Ipv4Net,
    /// The first router the server named.
    pub router: Option<Ipv4Addr>,
    /// The resolvers the server named.
    pub dns: Vec<Ipv4Addr>,
    /// The interface MTU the server asks for.
    pub mtu: Option<u16>,
    /// The server that granted it (where renewals go).
    pub server: Ipv4Addr,
    /// How long it lasts.
    pub lease_time: Duration,
    /// When to renew (T1; half the lease unless the server says).
    pub renew_after: Duration,
    /// When to rebind with any server (T2; seven eighths of the lease unless the server says).
    pub rebind_after: Duration,
}

/// Which REQUEST to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Selecting: accepting `address` offered by `server` (broadcast).
    Selecting { address: Ipv4Addr, server: Ipv4Addr },
    /// Renewing (unicast to the server) or rebinding (broadcast) the lease on `address`.
    Extending { address: Ipv4Addr },
}

/// A message of the client's: a DHCP request of `kind` with transaction `xid` from `mac`.
fn client_message(xid: u32, mac: &[u8; 6], kind: MessageType, ciaddr: Ipv4Addr) -> Message {
    let mut message = blank_request();
    message.set_xid(xid).set_chaddr(mac).set_ciaddr(ciaddr);
    // Until it has an address the client cannot take unicast answers: ask for broadcast.
    if ciaddr.is_unspecified() {
        message.set_flags(Flags::default().set_broadcast());
    }
    let options = message.opts_mut();
    options.insert(DhcpOption::MessageType(kind));
    let mut client_id = vec![1];
    client_id.extend_from_slice(mac);
    options.insert(DhcpOption::ClientIdentifier(client_id));
    options.insert(DhcpOption::ParameterRequestList(REQUESTED.to_vec()));
    message
}

/// An empty BOOTREQUEST from an Ethernet client. Decoded from bytes rather than made by
/// dhcproto's constructors: those start from `Message::default()`, which draws a transaction
/// ID from `rand`, and that blocks until the kernel's random pool is initialized, which early
/// in a boot without RDRAND or a virtio RNG takes minutes (seen under QEMU's emulation).
fn blank_request() -> Message {
    const FIXED_LEN: usize = 236;
    let mut bytes = [0u8; FIXED_LEN + 5];
    bytes[0] = 1; // BOOTREQUEST
    bytes[1] = 1; // Ethernet
    bytes[FIXED_LEN..FIXED_LEN + 4].copy_from_slice(&[99, 130, 83, 99]); // the magic cookie
    bytes[FIXED_LEN + 4] = 255; // the end option
    Message::decode(&mut Decoder::new(&bytes)).expect("the blank request decodes")
}

/// DHCPDISCOVER.
pub fn discover(xid: u32, mac: &[u8; 6]) -> Vec<u8> {
    encode(&client_message(
        xid,
        mac,
        MessageType::Discover,
        Ipv4Addr::UNSPECIFIED,
    ))
}

/// DHCPREQUEST.
pub fn request(xid: u32, mac: &[u8; 6], request: Request) -> Vec<u8> {
    let message = match request {
        Request::Selecting { address, server } => {
            let mut message = client_message(xid, mac, MessageType::Request, Ipv4Addr::UNSPECIFIED);
            message
                .opts_mut()
                .insert(DhcpOption::RequestedIpAddress(address));
            message
                .opts_mut()
                .insert(DhcpOption::ServerIdentifier(server));
            message
        }
        Request::Extending { address } => client_message(xid, mac, MessageType::Request, address),
    };
    encode(&message)
}

fn encode(message: &Message) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(300);
    message
        .encode(&mut Encoder::new(&mut bytes))
        .expect("a DHCP message of the client's encodes");
    bytes
}

/// A server's answer to transaction `xid` for `mac`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// DHCPOFFER of an address by a server.
    Offer { address: Ipv4Addr, server: Ipv4Addr },
    /// DHCPACK granting a lease.
    Ack(Lease),
    /// DHCPNAK: the address may not be used; start over.
    Nak,
}

/// Decodes `bytes`, received from `source`, as a server's reply to transaction `xid` for
/// `mac`; `None` for anything else (another client's, another transaction's, not DHCP,
/// malformed, or missing what it must hold). Bytes from the network are hostile: nothing
/// here may panic.
pub fn parse_reply(bytes: &[u8], source: Ipv4Addr, xid: u32, mac: &[u8; 6]) -> Option<Reply> {
    let message = Message::decode(&mut Decoder::new(bytes)).ok()?;
    // `chaddr()` slices by the packet's own hardware address length: check it first.
    if message.opcode() != Opcode::BootReply
        || message.xid() != xid
        || usize::from(message.hlen()) != mac.len()
        || message.chaddr() != mac.as_slice()
    {
        return None;
    }
    let options = message.opts();
    let server = match options.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(server)) => Some(*server),
        _ => None,
    };
    match options.msg_type()? {
        // An offer must say which server it is from: the REQUEST names it.
        MessageType::Offer => Some(Reply::Offer {
            address: message.yiaddr(),
            server: server?,
        }),
        MessageType::Nak => Some(Reply::Nak),
        MessageType::Ack => {
            // A lease of no time cannot be kept.
            let lease_time = match options.get(OptionCode::AddressLeaseTime) {
                Some(DhcpOption::AddressLeaseTime(seconds)) if *seconds > 0 => u64::from(*seconds),
                _ => return None,
            };
            let given = |code| match options.get(code) {
                Some(DhcpOption::Renewal(value) | DhcpOption::Rebinding(value)) => {
                    Some(u64::from(*value))
                }
                _ => None,
            };
            // T1 < T2 < the lease, else the RFC's defaults (half, seven eighths).
            let mut rebind = given(OptionCode::Rebinding)
                .filter(|t2| *t2 < lease_time)
                .unwrap_or(lease_time * 7 / 8);
            let renew = given(OptionCode::Renewal)
                .filter(|t1| *t1 < rebind)
                .unwrap_or((lease_time / 2).min(rebind));
            if renew >= rebind {
                rebind = lease_time * 7 / 8;
            }
            let prefix = match options.get(OptionCode::SubnetMask) {
                Some(DhcpOption::SubnetMask(mask)) => ipnet::ipv4_mask_to_prefix(*mask).ok()?,
                // RFC 2131 leaves it out only for a classful default; take a host route.
                _ => 32,
            };
            let router = match options.get(OptionCode::Router) {
                Some(DhcpOption::Router(routers)) => routers.first().copied(),
                _ => None,
            };
            let dns = match options.get(OptionCode::DomainNameServer) {
                Some(DhcpOption::DomainNameServer(servers)) => servers.clone(),
                _ => Vec::new(),
            };
            let mtu = match options.get(OptionCode::InterfaceMtu) {
                Some(DhcpOption::InterfaceMtu(mtu)) => Some(*mtu),
                _ => None,
            };
            Some(Reply::Ack(Lease {
                address: Ipv4Net::new(message.yiaddr(), prefix).ok()?,
                router,
                dns,
                mtu,
                server: server.unwrap_or(source),
                lease_time: Duration::from_secs(lease_time),
                renew_after: Duration::from_secs(renew),
                rebind_after: Duration::from_secs(rebind),
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
    const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

    /// A server's reply of `kind` to `xid`, built the way a server would.
    fn server_reply(xid: u32, kind: MessageType, options: Vec<DhcpOption>) -> Vec<u8> {
        let mut message = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 9, 0, 50),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        message.set_opcode(Opcode::BootReply);
        message.opts_mut().insert(DhcpOption::MessageType(kind));
        for option in options {
            message.opts_mut().insert(option);
        }
        encode(&message)
    }

    #[test]
    fn requests_carry_what_each_state_needs() {
        let bytes = discover(7, &MAC);
        let message = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(message.opcode(), Opcode::BootRequest);
        assert_eq!(message.xid(), 7);
        assert_eq!(message.hlen(), 6);
        assert_eq!(&bytes[236..240], &[99, 130, 83, 99], "the magic cookie");
        assert_eq!(message.opts().msg_type(), Some(MessageType::Discover));
        assert!(message.flags().broadcast());
        assert_eq!(&message.chaddr()[..6], &MAC);

        let server = Ipv4Addr::new(10, 9, 0, 1);
        let address = Ipv4Addr::new(10, 9, 0, 50);
        let bytes = request(8, &MAC, Request::Selecting { address, server });
        let message = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(
            message.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(address))
        );
        assert_eq!(
            message.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(server))
        );
        assert!(message.ciaddr().is_unspecified());

        // Renewing names the address in ciaddr, and neither option (RFC 2131, 4.3.2).
        let bytes = request(9, &MAC, Request::Extending { address });
        let message = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(message.ciaddr(), address);
        assert!(!message.flags().broadcast());
        assert!(message.opts().get(OptionCode::RequestedIpAddress).is_none());
        assert!(message.opts().get(OptionCode::ServerIdentifier).is_none());
    }

    #[test]
    fn an_ack_becomes_a_lease_with_the_rfc_s_default_timers() {
        let server = Ipv4Addr::new(10, 9, 0, 1);
        let bytes = server_reply(
            5,
            MessageType::Ack,
            vec![
                DhcpOption::ServerIdentifier(server),
                DhcpOption::AddressLeaseTime(3600),
                DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
                DhcpOption::Router(vec![server, Ipv4Addr::new(10, 9, 0, 2)]),
                DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 9, 0, 53)]),
                DhcpOption::InterfaceMtu(1400),
            ],
        );
        let Some(Reply::Ack(lease)) = parse_reply(&bytes, SOURCE, 5, &MAC) else {
            panic!("not an ack");
        };
        assert_eq!(lease.address, "10.9.0.50/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(lease.router, Some(server));
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 9, 0, 53)]);
        assert_eq!(lease.mtu, Some(1400));
        assert_eq!(lease.server, server);
        assert_eq!(
            (lease.lease_time, lease.renew_after, lease.rebind_after),
            (
                Duration::from_secs(3600),
                Duration::from_secs(1800),
                Duration::from_secs(3150)
            )
        );
        // Another transaction's, another client's, or an ack without a lease time: ignored.
        assert_eq!(parse_reply(&bytes, SOURCE, 6, &MAC), None);
        assert_eq!(parse_reply(&bytes, SOURCE, 5, &[9; 6]), None);
        let no_time = server_reply(5, MessageType::Ack, vec![]);
        assert_eq!(parse_reply(&no_time, SOURCE, 5, &MAC), None);
        assert_eq!(parse_reply(b"not dhcp", SOURCE, 5, &MAC), None);
        let nak = server_reply(5, MessageType::Nak, vec![]);
        assert_eq!(parse_reply(&nak, SOURCE, 5, &MAC), Some(Reply::Nak));
        // An offer that does not name its server is no offer.
        let anonymous = server_reply(5, MessageType::Offer, vec![]);
        assert_eq!(parse_reply(&anonymous, SOURCE, 5, &MAC), None);
    }

    #[test]
    fn hostile_replies_are_ignored_without_a_panic() {
        let mut bytes = server_reply(
            5,
            MessageType::Offer,
            vec![DhcpOption::ServerIdentifier(SOURCE)],
        );
        assert!(parse_reply(&bytes, SOURCE, 5, &MAC).is_some());
        // The hardware address length (byte 2) says 255: it must not be trusted.
        bytes[2] = 255;
        assert_eq!(parse_reply(&bytes, SOURCE, 5, &MAC), None);
        for length in 0..bytes.len() {
            assert_eq!(parse_reply(&bytes[..length], SOURCE, 5, &MAC), None);
        }
    }

    #[test]
    fn options_of_lying_lengths_are_errors_not_panics() {
        let good = server_reply(
            5,
            MessageType::Offer,
            vec![DhcpOption::ServerIdentifier(SOURCE)],
        );
        // Options whose decoders assert a length the packet gives: rapid commit (80), client
        // FQDN (81), client network interface (94), bulk lease query times (91 to 93); then
        // every byte of a good reply changed in turn.
        let end = good.len() - 1;
        for (code, length) in [
            (80u8, 3u8),
            (81, 0),
            (81, 2),
            (94, 1),
            (91, 2),
            (92, 0),
            (93, 7),
        ] {
            let mut bytes = good[..end].to_vec();
            bytes.extend_from_slice(&[code, length, 1, 2, 3, 4, 5, 6, 7, 255]);
            let _ = parse_reply(&bytes, SOURCE, 5, &MAC);
        }
        for at in 0..good.len() {
            for value in [0u8, 1, 3, 127, 255] {
                let mut bytes = good.clone();
                bytes[at] = value;
                let _ = parse_reply(&bytes, SOURCE, 5, &MAC);
            }
        }
    }

    #[test]
    fn timers_out_of_order_fall_back_to_the_rfc_s() {
        let bytes = server_reply(
            5,
            MessageType::Ack,
            vec![
                DhcpOption::AddressLeaseTime(800),
                DhcpOption::Renewal(900),
                DhcpOption::Rebinding(1000),
                DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            ],
        );
        let Some(Reply::Ack(lease)) = parse_reply(&bytes, SOURCE, 5, &MAC) else {
            panic!("not an ack");
        };
        assert_eq!(
            (lease.renew_after, lease.rebind_after),
            (Duration::from_secs(400), Duration::from_secs(700))
        );
        // Without a server identifier, the server is where the ack came from.
        assert_eq!(lease.server, SOURCE);
        let zero = server_reply(5, MessageType::Ack, vec![DhcpOption::AddressLeaseTime(0)]);
        assert_eq!(parse_reply(&zero, SOURCE, 5, &MAC), None);
    }
}
