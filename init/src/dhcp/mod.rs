//! A DHCPv4 client (RFC 2131) for the machine's interfaces that ask for one
//! (`machine.network.interfaces[].dhcp`): DISCOVER, OFFER, REQUEST, ACK sent on a UDP socket
//! bound to the interface, the answers read from a packet socket until the interface has an
//! address (the kernel's reverse-path filter drops them before any UDP socket sees them when
//! no route leads back to the server), then the lease kept by a thread of its own that renews
//! it at T1 (unicast to the server), rebinds at T2 (broadcast), and starts over when it ends.

mod keeper;
mod message;
mod packet;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};

pub use keeper::{
    KeepLeaseSettings, LeasePhase, apply_lease, keep_lease, lease_phase, remove_lease,
    write_resolvers,
};
pub use message::Lease;
use message::{Reply, Request};

/// The ports of RFC 2131.
const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;

/// The first wait for an answer; doubled on each retransmission up to [`MAX_WAIT`] (RFC 2131,
/// 4.1, with a shorter start: a node's boot is waiting).
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(16);
/// The pause after a NAK before asking again.
const NAK_PAUSE: Duration = Duration::from_secs(2);

/// A DHCP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum DhcpExchangeError {
    /// The socket could not be made or used.
    #[error("DHCP on {interface}: {action}")]
    Socket {
        /// The interface.
        interface: String,
        /// What failed.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No server answered in time.
    #[error("DHCP on {interface}: no server answered within {waited:?}")]
    NoAnswer {
        /// The interface.
        interface: String,
        /// How long the client tried.
        waited: Duration,
    },
    /// The server refused the address (DHCPNAK).
    #[error("DHCP on {interface}: the server refused the request (DHCPNAK)")]
    Refused {
        /// The interface.
        interface: String,
    },
}

/// A transaction ID: it tells this client's exchanges from others', and DHCP runs early in
/// boot, before the kernel's random pool may be initialized, so it must not wait for it
/// ([`identifier_bytes`](crate::entropy::identifier_bytes)); the hardware address is mixed in
/// for machines that boot at the same instant.
fn transaction_id(mac: &[u8; 6]) -> u32 {
    let mut bytes = [0u8; 4];
    crate::entropy::identifier_bytes(&mut bytes);
    u32::from_le_bytes(bytes) ^ u32::from_le_bytes([mac[2], mac[3], mac[4], mac[5]])
}

/// The client of one interface.
#[derive(Debug)]
pub struct DhcpClient {
    interface: String,
    index: u32,
    mac: [u8; 6],
    socket: UdpSocket,
    /// While getting a lease: where answers are read.
    packet: Option<OwnedFd>,
}

impl DhcpClient {
    /// A client for `interface` (index `index`), whose hardware address is `mac`: a UDP socket
    /// on port 68 bound to the interface, allowed to broadcast.
    pub fn open(interface: &str, index: u32, mac: [u8; 6]) -> Result<Self, DhcpExchangeError> {
        let fail = |action: &'static str| {
            let interface = interface.to_owned();
            move |source: std::io::Error| DhcpExchangeError::Socket {
                interface,
                action,
                source,
            }
        };
        let fd: OwnedFd = socket::socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(std::io::Error::from)
        .map_err(fail("make a UDP socket"))?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
            .map_err(std::io::Error::from)
            .map_err(fail("set SO_REUSEADDR"))?;
        socket::setsockopt(&fd, sockopt::Broadcast, &true)
            .map_err(std::io::Error::from)
            .map_err(fail("set SO_BROADCAST"))?;
        socket::setsockopt(&fd, sockopt::BindToDevice, &interface.into())
            .map_err(std::io::Error::from)
            .map_err(fail("bind the socket to the interface"))?;
        let address = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT));
        socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &address)
            .map_err(std::io::Error::from)
            .map_err(fail("bind port 68"))?;
        Ok(Self {
            interface: interface.to_owned(),
            index,
            mac,
            socket: UdpSocket::from(fd),
            packet: None,
        })
    }

    /// Gets a lease: DISCOVER until a server offers, then REQUEST that offer until it is
    /// acknowledged; gives up at `deadline`.
    pub fn acquire(&mut self, deadline: Instant) -> Result<Lease, DhcpExchangeError> {
        self.packet = match packet::open() {
            Ok(fd) => Some(fd),
            Err(err) => {
                tracing::warn!(interface = %self.interface, %err, "no packet socket for DHCP: answers are read from the UDP socket");
                None
            }
        };
        let lease = self.acquire_with_open_sockets(deadline);
        self.packet = None;
        lease
    }

    fn acquire_with_open_sockets(&mut self, deadline: Instant) -> Result<Lease, DhcpExchangeError> {
        let started = Instant::now();
        let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
        loop {
            let xid = transaction_id(&self.mac);
            let offer = self.exchange(
                &message::discover(xid, &self.mac),
                xid,
                broadcast,
                deadline,
                |reply| match reply {
                    Reply::Offer { address, server } => Some((address, server)),
                    _ => None,
                },
            );
            let (address, server) = match offer {
                Some(offer) => offer,
                None => return Err(self.no_answer(started)),
            };
            // The REQUEST keeps the OFFER's transaction (RFC 2131, 4.4.1).
            let request = message::request(xid, &self.mac, Request::Selecting { address, server });
            let answer = self.exchange(&request, xid, broadcast, deadline, |reply| match reply {
                Reply::Ack(lease) if lease.address.addr() == address => Some(Some(lease)),
                Reply::Nak => Some(None),
                _ => None,
            });
            match answer {
                Some(Some(lease)) => return Ok(lease),
                // Refused (another client took it meanwhile): start over after a pause.
                Some(None) => std::thread::sleep(NAK_PAUSE),
                None => return Err(self.no_answer(started)),
            }
        }
    }

    /// Extends `lease`: REQUEST to its server (renewing) or to every server (`rebind`); gives
    /// up at `deadline`.
    pub fn extend(
        &mut self,
        lease: &Lease,
        rebind: bool,
        deadline: Instant,
    ) -> Result<Lease, DhcpExchangeError> {
        let started = Instant::now();
        let to = if rebind {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT)
        } else {
            SocketAddrV4::new(lease.server, SERVER_PORT)
        };
        let xid = transaction_id(&self.mac);
        let request = message::request(
            xid,
            &self.mac,
            Request::Extending {
                address: lease.address.addr(),
            },
        );
        let answer = self.exchange(&request, xid, to, deadline, |reply| match reply {
            Reply::Ack(lease) => Some(Some(lease)),
            Reply::Nak => Some(None),
            Reply::Offer { .. } => None,
        });
        match answer {
            Some(Some(lease)) => Ok(lease),
            Some(None) => Err(DhcpExchangeError::Refused {
                interface: self.interface.clone(),
            }),
            None => Err(self.no_answer(started)),
        }
    }

    fn no_answer(&self, started: Instant) -> DhcpExchangeError {
        DhcpExchangeError::NoAnswer {
            interface: self.interface.clone(),
            waited: started.elapsed(),
        }
    }

    /// Sends `request` (transaction `xid`) to `to` (again after 1, 2, 4 ... 16 s without an
    /// answer) until `accept` takes a reply to its transaction, or `deadline`.
    fn exchange<T>(
        &mut self,
        request: &[u8],
        xid: u32,
        to: SocketAddrV4,
        deadline: Instant,
        accept: impl Fn(Reply) -> Option<T>,
    ) -> Option<T> {
        let mut wait = FIRST_WAIT;
        let mut buffer = [0u8; 1500];
        while Instant::now() < deadline {
            if let Err(err) = self.socket.send_to(request, to) {
                tracing::debug!(interface = %self.interface, %err, "sending a DHCP request");
            }
            let resend_at = (Instant::now() + wait).min(deadline);
            wait = (wait * 2).min(MAX_WAIT);
            loop {
                let left = resend_at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let (payload, source) = match self.receive(&mut buffer, left) {
                    Ok(Some(received)) => received,
                    Ok(None) => continue,
                    // A signal (PID 1 gets SIGCHLD often) is not a timeout.
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if let Some(taken) =
                    message::parse_reply(&buffer[payload], source, xid, &self.mac).and_then(&accept)
                {
                    return Some(taken);
                }
            }
        }
        None
    }

    /// Waits up to `wait` for a datagram to port 68: where its payload is in `buffer`, and its
    /// source; `None` for a packet that is not one.
    fn receive(
        &self,
        buffer: &mut [u8],
        wait: Duration,
    ) -> std::io::Result<Option<(std::ops::Range<usize>, Ipv4Addr)>> {
        if let Some(packet) = &self.packet {
            let Some(length) = packet::receive(packet, self.index, buffer, wait)? else {
                return Ok(None);
            };
            return Ok(packet::udp_payload(&buffer[..length], CLIENT_PORT));
        }
        self.socket.set_read_timeout(Some(wait))?;
        let (length, from) = self.socket.recv_from(buffer)?;
        Ok(match from {
            std::net::SocketAddr::V4(from) => Some((0..length, *from.ip())),
            std::net::SocketAddr::V6(_) => None,
        })
    }
}
