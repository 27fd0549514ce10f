//! Reading DHCP answers off the wire with a packet socket, before the interface has an
//! address: a UDP socket only gets what passes the kernel's reverse-path filter, which drops a
//! server's broadcast when `rp_filter` is set and no route leads back to the server (udhcpc
//! and systemd-networkd listen the same way while they have no address).

use std::net::Ipv4Addr;
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType, sockopt};
use nix::sys::time::TimeVal;

/// A packet socket of every protocol and interface, without link headers (the caller keeps
/// what comes from its interface).
pub fn open() -> std::io::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Packet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )
    .map_err(std::io::Error::from)
}

/// Waits up to `wait` for a packet on interface `index`: its length in `buffer`; `None` for
/// one from another interface.
pub fn receive(
    fd: &OwnedFd,
    index: u32,
    buffer: &mut [u8],
    wait: Duration,
) -> std::io::Result<Option<usize>> {
    let micros = i64::try_from(wait.as_micros()).unwrap_or(i64::MAX).max(1);
    let timeout = TimeVal::new(micros / 1_000_000, micros % 1_000_000);
    socket::setsockopt(fd, sockopt::ReceiveTimeout, &timeout).map_err(std::io::Error::from)?;
    let (length, from) =
        socket::recvfrom::<LinkAddr>(fd.as_raw_fd(), buffer).map_err(std::io::Error::from)?;
    let here = from.is_some_and(|link| link.ifindex() == index as usize);
    Ok(here.then_some(length))
}

/// In an IPv4 packet (from its header on), the payload of an unfragmented UDP datagram to
/// `port`, and the packet's source; `None` for anything else. The packet is hostile input:
/// every length is checked.
pub fn udp_payload(packet: &[u8], port: u16) -> Option<(Range<usize>, Ipv4Addr)> {
    let first = *packet.first()?;
    let header = usize::from(first & 0x0f) * 4;
    let be16 = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *packet.get(at)?,
            *packet.get(at + 1)?,
        ])))
    };
    let total = be16(2)?;
    let fragment = be16(6)? & 0x3fff;
    if first >> 4 != 4 || header < 20 || *packet.get(9)? != 17 || fragment != 0 {
        return None;
    }
    let end = total.min(packet.len());
    let source = Ipv4Addr::new(
        *packet.get(12)?,
        *packet.get(13)?,
        *packet.get(14)?,
        *packet.get(15)?,
    );
    if be16(header + 2)? != usize::from(port) {
        return None;
    }
    let datagram_end = (header + be16(header + 4)?).min(end);
    let start = header + 8;
    (start <= datagram_end).then_some((start..datagram_end, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 UDP packet from 10.0.0.1:67 to `port` carrying `payload`.
    fn packet(port: u16, payload: &[u8]) -> Vec<u8> {
        let total = (28 + payload.len()) as u16;
        let mut packet = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 255, 255, 255, 255,
        ];
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&67u16.to_be_bytes());
        packet.extend_from_slice(&port.to_be_bytes());
        packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0]);
        packet.extend_from_slice(payload);
        packet
    }

    #[test]
    fn the_payload_of_a_datagram_to_the_port_is_found() {
        let bytes = packet(68, b"offer");
        let (range, source) = udp_payload(&bytes, 68).unwrap();
        assert_eq!(&bytes[range], b"offer");
        assert_eq!(source, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(udp_payload(&packet(67, b"request"), 68), None);
        // TCP, a fragment, another IP version: not ours.
        let mut tcp = bytes.clone();
        tcp[9] = 6;
        assert_eq!(udp_payload(&tcp, 68), None);
        let mut fragment = bytes.clone();
        fragment[6] = 0x20;
        assert_eq!(udp_payload(&fragment, 68), None);
        let mut v6 = bytes.clone();
        v6[0] = 0x65;
        assert_eq!(udp_payload(&v6, 68), None);
    }

    #[test]
    fn truncated_or_lying_packets_are_not_read_past_their_end() {
        let bytes = packet(68, b"offer");
        for length in 0..bytes.len() {
            if let Some((range, _)) = udp_payload(&bytes[..length], 68) {
                assert!(range.end <= length);
            }
        }
        // A header length or a UDP length larger than the packet.
        let mut long_header = bytes.clone();
        long_header[0] = 0x4f;
        assert_eq!(udp_payload(&long_header, 68), None);
        let mut long_udp = bytes.clone();
        long_udp[24..26].copy_from_slice(&5000u16.to_be_bytes());
        let (range, _) = udp_payload(&long_udp, 68).unwrap();
        assert!(range.end <= long_udp.len());
    }
}
