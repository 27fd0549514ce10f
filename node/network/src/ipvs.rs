//! IPVS, the kernel's layer 4 load balancer, through generic netlink (the `IPVS` family of
//! include/uapi/linux/ip_vs.h): list, add, change and delete virtual services and their
//! destinations (real servers). Only what the proxy's ipvs mode uses: IPv4, TCP/UDP/SCTP
//! services by address and port, masquerading (NAT) destinations.

use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
    NetlinkDeserializable, NetlinkHeader, NetlinkSerializable, Nla, NlaBuffer, NlasIterator,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use crate::netlink::{NetlinkError, exchange};

/// The generic netlink controller's fixed family id, and what is asked of it.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// The IPVS family, its version and commands.
const IPVS_FAMILY: &str = "IPVS";
const IPVS_GENL_VERSION: u8 = 1;
const IPVS_CMD_NEW_SERVICE: u8 = 1;
const IPVS_CMD_SET_SERVICE: u8 = 2;
const IPVS_CMD_DEL_SERVICE: u8 = 3;
const IPVS_CMD_GET_SERVICE: u8 = 4;
const IPVS_CMD_NEW_DEST: u8 = 5;
const IPVS_CMD_SET_DEST: u8 = 6;
const IPVS_CMD_DEL_DEST: u8 = 7;
const IPVS_CMD_GET_DEST: u8 = 8;

/// Attributes of a command, of a service, of a destination.
const IPVS_CMD_ATTR_SERVICE: u16 = 1;
const IPVS_CMD_ATTR_DEST: u16 = 2;
const IPVS_SVC_ATTR_AF: u16 = 1;
const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
const IPVS_SVC_ATTR_ADDR: u16 = 3;
const IPVS_SVC_ATTR_PORT: u16 = 4;
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_SVC_ATTR_FLAGS: u16 = 7;
const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
const IPVS_SVC_ATTR_NETMASK: u16 = 9;
const IPVS_DEST_ATTR_ADDR: u16 = 1;
const IPVS_DEST_ATTR_PORT: u16 = 2;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;

/// A service whose clients stick to one destination for its timeout.
const IP_VS_SVC_F_PERSISTENT: u32 = 0x0001;
/// Destinations are reached by rewriting the destination address (NAT).
const IP_VS_CONN_F_MASQ: u32 = 0;
const AF_INET: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

/// A layer 4 protocol, by its IP protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpvsProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl IpvsProtocol {
    /// Its IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            IpvsProtocol::Tcp => 6,
            IpvsProtocol::Udp => 17,
            IpvsProtocol::Sctp => 132,
        }
    }

    fn from_number(number: u16) -> Option<Self> {
        match number {
            6 => Some(IpvsProtocol::Tcp),
            17 => Some(IpvsProtocol::Udp),
            132 => Some(IpvsProtocol::Sctp),
            _ => None,
        }
    }
}

/// What names a virtual service: protocol, address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAddress {
    /// Its protocol.
    pub protocol: IpvsProtocol,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its port.
    pub port: u16,
}

impl std::fmt::Display for ServiceAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}:{}", self.protocol, self.address, self.port)
    }
}

/// A virtual service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualService {
    /// What names it.
    pub address: ServiceAddress,
    /// The scheduler (`rr`, `wrr`, `sh` ...).
    pub scheduler: String,
    /// With client persistence, for how many seconds.
    pub persistence_seconds: Option<u32>,
}

/// A destination (real server) of a virtual service, reached by NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    /// Its address.
    pub address: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// Its weight (0 takes no new connections).
    pub weight: u32,
}

/// A netlink attribute: bytes, or attributes nested in it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attr {
    Bytes(u16, Vec<u8>),
    Nested(u16, Vec<Attr>),
}

impl Attr {
    fn u16(kind: u16, value: u16) -> Attr {
        Attr::Bytes(kind, value.to_ne_bytes().to_vec())
    }

    fn u32(kind: u16, value: u32) -> Attr {
        Attr::Bytes(kind, value.to_ne_bytes().to_vec())
    }

    fn address(kind: u16, address: Ipv4Addr) -> Attr {
        // union nf_inet_addr: 16 bytes, the IPv4 address first.
        let mut bytes = address.octets().to_vec();
        bytes.resize(16, 0);
        Attr::Bytes(kind, bytes)
    }

    fn port(kind: u16, port: u16) -> Attr {
        Attr::Bytes(kind, port.to_be_bytes().to_vec())
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Bytes(_, bytes) => bytes.len(),
            Attr::Nested(_, attrs) => attrs.iter().map(Emitable::buffer_len).sum(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Bytes(kind, _) => *kind,
            Attr::Nested(kind, _) => kind | NLA_F_NESTED,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Bytes(_, bytes) => buffer[..bytes.len()].copy_from_slice(bytes),
            Attr::Nested(_, attrs) => {
                let mut offset = 0;
                for attr in attrs {
                    let len = attr.buffer_len();
                    attr.emit(&mut buffer[offset..offset + len]);
                    offset += len;
                }
            }
        }
    }
}

/// The attributes in `bytes`, by kind (the nested flag cleared), values raw.
fn parse_attrs(bytes: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, DecodeError> {
    NlasIterator::new(bytes)
        .map(|nla| {
            let nla: NlaBuffer<&[u8]> = nla?;
            Ok((nla.kind() & !NLA_F_NESTED, nla.value().to_vec()))
        })
        .collect()
}

/// A generic netlink message: family id, command, version, attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GenlMessage {
    family: u16,
    command: u8,
    version: u8,
    attrs: Vec<Attr>,
}

impl NetlinkSerializable for GenlMessage {
    fn message_type(&self) -> u16 {
        self.family
    }

    fn buffer_len(&self) -> usize {
        4 + self.attrs.iter().map(Emitable::buffer_len).sum::<usize>()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer[0] = self.command;
        buffer[1] = self.version;
        buffer[2..4].fill(0);
        let mut offset = 4;
        for attr in &self.attrs {
            let len = attr.buffer_len();
            attr.emit(&mut buffer[offset..offset + len]);
            offset += len;
        }
    }
}

impl NetlinkDeserializable for GenlMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        if payload.len() < 4 {
            return Err(DecodeError::from(
                "generic netlink message without its header",
            ));
        }
        let attrs = parse_attrs(&payload[4..])?
            .into_iter()
            .map(|(kind, value)| Attr::Bytes(kind, value))
            .collect();
        Ok(GenlMessage {
            family: header.message_type,
            command: payload[0],
            version: payload[1],
            attrs,
        })
    }
}

impl GenlMessage {
    /// The value of the attribute `kind`.
    fn attr(&self, kind: u16) -> Option<&[u8]> {
        self.attrs.iter().find_map(|attr| match attr {
            Attr::Bytes(k, value) if *k == kind => Some(value.as_slice()),
            _ => None,
        })
    }
}

fn value(attrs: &[(u16, Vec<u8>)], kind: u16) -> Option<&[u8]> {
    attrs
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.as_slice())
}

fn read_u16(bytes: Option<&[u8]>) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes?.get(..2)?.try_into().ok()?))
}

fn read_u32(bytes: Option<&[u8]>) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes?.get(..4)?.try_into().ok()?))
}

fn read_port(bytes: Option<&[u8]>) -> Option<u16> {
    Some(u16::from_be_bytes(bytes?.get(..2)?.try_into().ok()?))
}

fn read_address(bytes: Option<&[u8]>) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = bytes?.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

/// The attributes naming a service.
fn service_key(address: &ServiceAddress) -> Vec<Attr> {
    vec![
        Attr::u16(IPVS_SVC_ATTR_AF, AF_INET),
        Attr::u16(IPVS_SVC_ATTR_PROTOCOL, address.protocol.number().into()),
        Attr::address(IPVS_SVC_ATTR_ADDR, address.address),
        Attr::port(IPVS_SVC_ATTR_PORT, address.port),
    ]
}

/// Every attribute of a service, as creating or changing it needs.
fn service_attrs(service: &VirtualService) -> Vec<Attr> {
    let mut attrs = service_key(&service.address);
    let mut name = service.scheduler.as_bytes().to_vec();
    name.push(0);
    attrs.push(Attr::Bytes(IPVS_SVC_ATTR_SCHED_NAME, name));
    let flags = if service.persistence_seconds.is_some() {
        IP_VS_SVC_F_PERSISTENT
    } else {
        0
    };
    // struct ip_vs_flags { flags, mask }: the persistence bit is the one this sets.
    let mut flag_bytes = flags.to_ne_bytes().to_vec();
    flag_bytes.extend_from_slice(&IP_VS_SVC_F_PERSISTENT.to_ne_bytes());
    attrs.push(Attr::Bytes(IPVS_SVC_ATTR_FLAGS, flag_bytes));
    attrs.push(Attr::u32(
        IPVS_SVC_ATTR_TIMEOUT,
        service.persistence_seconds.unwrap_or(0),
    ));
    attrs.push(Attr::Bytes(
        IPVS_SVC_ATTR_NETMASK,
        u32::MAX.to_be_bytes().to_vec(),
    ));
    attrs
}

fn destination_attrs(destination: &Destination) -> Vec<Attr> {
    vec![
        Attr::address(IPVS_DEST_ATTR_ADDR, destination.address),
        Attr::port(IPVS_DEST_ATTR_PORT, destination.port),
        Attr::u32(IPVS_DEST_ATTR_FWD_METHOD, IP_VS_CONN_F_MASQ),
        Attr::u32(IPVS_DEST_ATTR_WEIGHT, destination.weight),
        Attr::u32(IPVS_DEST_ATTR_U_THRESH, 0),
        Attr::u32(IPVS_DEST_ATTR_L_THRESH, 0),
        Attr::u16(IPVS_DEST_ATTR_ADDR_FAMILY, AF_INET),
    ]
}

fn parse_service(nested: &[u8]) -> Option<VirtualService> {
    let attrs = parse_attrs(nested).ok()?;
    if read_u16(value(&attrs, IPVS_SVC_ATTR_AF))? != AF_INET {
        return None;
    }
    let flags = read_u32(value(&attrs, IPVS_SVC_ATTR_FLAGS)).unwrap_or(0);
    let scheduler = value(&attrs, IPVS_SVC_ATTR_SCHED_NAME)
        .map(|name| {
            String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_string()
        })
        .unwrap_or_default();
    Some(VirtualService {
        address: ServiceAddress {
            protocol: IpvsProtocol::from_number(read_u16(value(&attrs, IPVS_SVC_ATTR_PROTOCOL))?)?,
            address: read_address(value(&attrs, IPVS_SVC_ATTR_ADDR))?,
            port: read_port(value(&attrs, IPVS_SVC_ATTR_PORT))?,
        },
        scheduler,
        persistence_seconds: (flags & IP_VS_SVC_F_PERSISTENT != 0)
            .then(|| read_u32(value(&attrs, IPVS_SVC_ATTR_TIMEOUT)).unwrap_or(0)),
    })
}

fn parse_destination(nested: &[u8]) -> Option<Destination> {
    let attrs = parse_attrs(nested).ok()?;
    Some(Destination {
        address: read_address(value(&attrs, IPVS_DEST_ATTR_ADDR))?,
        port: read_port(value(&attrs, IPVS_DEST_ATTR_PORT))?,
        weight: read_u32(value(&attrs, IPVS_DEST_ATTR_WEIGHT)).unwrap_or(0),
    })
}

/// A generic netlink socket speaking to the kernel's IPVS family.
#[derive(Debug)]
pub struct IpvsSocket {
    socket: Socket,
    sequence: u32,
    family: u16,
}

impl IpvsSocket {
    /// Opens a socket and looks the IPVS family up (it is there once the ip_vs module is).
    pub fn open() -> Result<Self, NetlinkError> {
        let fail = |operation: &str| {
            let operation = operation.to_string();
            move |source| NetlinkError { operation, source }
        };
        let mut socket =
            Socket::new(NETLINK_GENERIC).map_err(fail("open a generic netlink socket"))?;
        socket
            .bind_auto()
            .map_err(fail("open a generic netlink socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(fail("open a generic netlink socket"))?;
        let mut sequence = 0;
        let mut name = IPVS_FAMILY.as_bytes().to_vec();
        name.push(0);
        let answers = exchange(
            &socket,
            &mut sequence,
            GenlMessage {
                family: GENL_ID_CTRL,
                command: CTRL_CMD_GETFAMILY,
                version: 1,
                attrs: vec![Attr::Bytes(CTRL_ATTR_FAMILY_NAME, name)],
            },
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map_err(fail(
            "look up the IPVS generic netlink family (is ip_vs loaded?)",
        ))?;
        let family = answers
            .iter()
            .find_map(|answer| read_u16(answer.attr(CTRL_ATTR_FAMILY_ID)))
            .ok_or_else(|| NetlinkError {
                operation: "look up the IPVS generic netlink family".into(),
                source: io::Error::other("the answer names no family id"),
            })?;
        Ok(Self {
            socket,
            sequence,
            family,
        })
    }

    fn request(
        &mut self,
        operation: impl FnOnce() -> String,
        command: u8,
        attrs: Vec<Attr>,
        flags: u16,
    ) -> Result<Vec<GenlMessage>, NetlinkError> {
        let message = GenlMessage {
            family: self.family,
            command,
            version: IPVS_GENL_VERSION,
            attrs,
        };
        exchange(&self.socket, &mut self.sequence, message, flags).map_err(|source| NetlinkError {
            operation: operation(),
            source,
        })
    }

    /// Every IPv4 virtual service.
    pub fn services(&mut self) -> Result<Vec<VirtualService>, NetlinkError> {
        let answers = self.request(
            || "list IPVS services".into(),
            IPVS_CMD_GET_SERVICE,
            Vec::new(),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(answers
            .iter()
            .filter_map(|answer| parse_service(answer.attr(IPVS_CMD_ATTR_SERVICE)?))
            .collect())
    }

    /// Adds a virtual service.
    pub fn add_service(&mut self, service: &VirtualService) -> Result<(), NetlinkError> {
        self.request(
            || format!("add IPVS service {}", service.address),
            IPVS_CMD_NEW_SERVICE,
            vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, service_attrs(service))],
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Changes a virtual service's scheduler and persistence.
    pub fn update_service(&mut self, service: &VirtualService) -> Result<(), NetlinkError> {
        self.request(
            || format!("change IPVS service {}", service.address),
            IPVS_CMD_SET_SERVICE,
            vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, service_attrs(service))],
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(drop)
    }

    /// Deletes a virtual service and its destinations.
    pub fn delete_service(&mut self, address: &ServiceAddress) -> Result<(), NetlinkError> {
        self.request(
            || format!("delete IPVS service {address}"),
            IPVS_CMD_DEL_SERVICE,
            vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, service_key(address))],
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(drop)
    }

    /// The destinations of a virtual service.
    pub fn destinations(
        &mut self,
        address: &ServiceAddress,
    ) -> Result<Vec<Destination>, NetlinkError> {
        let answers = self.request(
            || format!("list the destinations of IPVS service {address}"),
            IPVS_CMD_GET_DEST,
            vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, service_key(address))],
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(answers
            .iter()
            .filter_map(|answer| parse_destination(answer.attr(IPVS_CMD_ATTR_DEST)?))
            .collect())
    }

    /// Adds a destination to a virtual service.
    pub fn add_destination(
        &mut self,
        address: &ServiceAddress,
        destination: &Destination,
    ) -> Result<(), NetlinkError> {
        self.destination_command(
            "add",
            IPVS_CMD_NEW_DEST,
            address,
            destination,
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Changes a destination's weight.
    pub fn update_destination(
        &mut self,
        address: &ServiceAddress,
        destination: &Destination,
    ) -> Result<(), NetlinkError> {
        self.destination_command("change", IPVS_CMD_SET_DEST, address, destination, 0)
    }

    /// Removes a destination from a virtual service.
    pub fn delete_destination(
        &mut self,
        address: &ServiceAddress,
        destination: &Destination,
    ) -> Result<(), NetlinkError> {
        self.destination_command("delete", IPVS_CMD_DEL_DEST, address, destination, 0)
    }

    fn destination_command(
        &mut self,
        verb: &str,
        command: u8,
        address: &ServiceAddress,
        destination: &Destination,
        extra_flags: u16,
    ) -> Result<(), NetlinkError> {
        self.request(
            || {
                format!(
                    "{verb} destination {}:{} of IPVS service {address}",
                    destination.address, destination.port
                )
            },
            command,
            vec![
                Attr::Nested(IPVS_CMD_ATTR_SERVICE, service_key(address)),
                Attr::Nested(IPVS_CMD_ATTR_DEST, destination_attrs(destination)),
            ],
            NLM_F_REQUEST | NLM_F_ACK | extra_flags,
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_encodes_as_the_kernel_reads_it_and_parses_back() {
        let service = VirtualService {
            address: ServiceAddress {
                protocol: IpvsProtocol::Tcp,
                address: Ipv4Addr::new(10, 96, 0, 10),
                port: 53,
            },
            scheduler: "rr".into(),
            persistence_seconds: Some(10800),
        };
        let nested = Attr::Nested(IPVS_CMD_ATTR_SERVICE, service_attrs(&service));
        let mut bytes = vec![0u8; nested.buffer_len()];
        nested.emit(&mut bytes);
        // The nested flag is set on the outer attribute; the address is 16 bytes, the port
        // in network order, the scheduler name NUL-terminated.
        assert_eq!(
            u16::from_ne_bytes([bytes[2], bytes[3]]),
            IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED
        );
        let outer = parse_attrs(&bytes).unwrap();
        let inner = parse_attrs(&outer[0].1).unwrap();
        assert_eq!(value(&inner, IPVS_SVC_ATTR_ADDR).unwrap().len(), 16);
        assert_eq!(value(&inner, IPVS_SVC_ATTR_PORT).unwrap(), &[0, 53]);
        assert_eq!(value(&inner, IPVS_SVC_ATTR_SCHED_NAME).unwrap(), b"rr\0");
        assert_eq!(parse_service(&outer[0].1), Some(service));

        let destination = Destination {
            address: Ipv4Addr::new(10, 244, 1, 7),
            port: 8080,
            weight: 1,
        };
        let nested = Attr::Nested(IPVS_CMD_ATTR_DEST, destination_attrs(&destination));
        let mut bytes = vec![0u8; nested.buffer_len()];
        nested.emit(&mut bytes);
        let outer = parse_attrs(&bytes).unwrap();
        assert_eq!(parse_destination(&outer[0].1), Some(destination));
    }

    #[test]
    fn a_message_round_trips_through_its_netlink_form() {
        let message = GenlMessage {
            family: 0x1c,
            command: IPVS_CMD_GET_DEST,
            version: IPVS_GENL_VERSION,
            attrs: vec![Attr::u32(IPVS_DEST_ATTR_WEIGHT, 3)],
        };
        let mut bytes = vec![0u8; message.buffer_len()];
        message.serialize(&mut bytes);
        let mut header = NetlinkHeader::default();
        header.message_type = 0x1c;
        assert_eq!(GenlMessage::deserialize(&header, &bytes).unwrap(), message);
    }
}
