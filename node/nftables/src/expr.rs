//! Rule expressions: the small register machine of nf_tables. Each variant encodes as the
//! kernel's `NFTA_EXPR_*` attributes; the constructors name what a rule reads or does.

use std::net::Ipv4Addr;

use crate::netlink::Attributes;

/// A 32-bit register (`NFT_REG32_00` + n): concatenated lookup keys use consecutive ones.
pub fn reg32(n: u32) -> u32 {
    8 + n
}

/// The verdict register.
pub const REG_VERDICT: u32 = 0;

/// What a rule decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let the packet through (this hook).
    Accept,
    /// Drop it.
    Drop,
    /// Go on with the next rule of the calling chain after `chain` returns.
    Jump(String),
    /// Continue in `chain`, not returning here.
    Goto(String),
    /// Back to the calling chain.
    Return,
}

impl Verdict {
    /// About how many bytes the verdict takes encoded (its code and chain name).
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Verdict::Jump(chain) | Verdict::Goto(chain) => 16 + chain.len(),
            _ => 12,
        }
    }

    pub(crate) fn encode(&self, attributes: &mut Attributes) {
        // NFTA_VERDICT_CODE = 1, NFTA_VERDICT_CHAIN = 2.
        let (code, chain): (i32, Option<&str>) = match self {
            Verdict::Accept => (1, None),
            Verdict::Drop => (0, None),
            Verdict::Jump(chain) => (-3, Some(chain)),
            Verdict::Goto(chain) => (-4, Some(chain)),
            Verdict::Return => (-5, None),
        };
        attributes.be32(1, code as u32);
        if let Some(chain) = chain {
            attributes.string(2, chain);
        }
    }
}

/// Where a payload expression reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadBase {
    /// The network header (IPv4).
    Network = 1,
    /// The transport header (TCP, UDP, SCTP).
    Transport = 2,
}

/// Packet metadata keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaKey {
    /// The packet mark (u32, host byte order).
    Mark = 3,
    /// Input interface name (16 bytes).
    IifName = 6,
    /// Output interface name (16 bytes).
    OifName = 7,
    /// The layer 4 protocol (1 byte).
    L4Proto = 16,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// Equal.
    Eq = 0,
    /// Not equal.
    Neq = 1,
}

/// Layer 4 protocols, as `meta l4proto` reads them.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// The `ct state` bit of a packet that opens a connection (`new`).
pub const CT_STATE_NEW: u32 = 1 << 3;

/// The `ct status` bit of a connection whose destination was translated (IPS_DST_NAT).
pub const CT_STATUS_DNAT: u32 = 1 << 5;

/// `fib daddr type` result for a local address (RTN_LOCAL).
pub const RTN_LOCAL: u32 = 2;

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// Loads `len` bytes at `offset` of a header into `dreg`.
    Payload {
        dreg: u32,
        base: PayloadBase,
        offset: u32,
        len: u32,
    },
    /// Loads packet metadata into `dreg`.
    Meta { dreg: u32, key: MetaKey },
    /// Sets packet metadata from `sreg`.
    MetaSet { sreg: u32, key: MetaKey },
    /// Compares `sreg` with `data`; the rule stops here unless it holds.
    Cmp { sreg: u32, op: CmpOp, data: Vec<u8> },
    /// `dreg = (sreg & mask) ^ xor`, over `mask.len()` bytes.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Loads a value into `dreg`.
    Immediate { dreg: u32, data: Vec<u8> },
    /// Decides.
    Verdict(Verdict),
    /// Looks `sreg` up in `set`; with `dreg`, a map's value is loaded (the verdict register for
    /// a verdict map); `invert` matches when absent.
    Lookup {
        set: String,
        sreg: u32,
        dreg: Option<u32>,
        invert: bool,
    },
    /// A random number in `0..modulus` into `dreg`.
    RandomNumber { dreg: u32, modulus: u32 },
    /// Converts the 32-bit word in `sreg` from host to network byte order into `dreg` (so
    /// that a range lookup compares it as a number).
    HostToNetwork32 { sreg: u32, dreg: u32 },
    /// `fib daddr type` into `dreg`.
    FibDaddrType { dreg: u32 },
    /// Destination NAT to the address in `addr_reg` and, when given, the port in `port_reg`.
    Dnat {
        addr_reg: u32,
        port_reg: Option<u32>,
    },
    /// Source NAT to the outgoing interface's address, ports fully randomised.
    Masquerade,
    /// Rejects the packet (ICMP port unreachable; TCP reset for TCP, as nft's default does
    /// for `reject` in the ip family is ICMP).
    Reject,
    /// Counts packets and bytes.
    Counter,
    /// Adds `sreg` to `set`, or refreshes its timeout when it is there (`update @set { ... }`).
    UpdateSet { set: String, sreg: u32 },
    /// The connection tracking state bits (`ct state`, u32) into `dreg`.
    CtState { dreg: u32 },
    /// The connection tracking status bits (`ct status`, u32, e.g. [`CT_STATUS_DNAT`]) into
    /// `dreg`.
    CtStatus { dreg: u32 },
}

impl Expr {
    /// `ip saddr` (4 bytes) into `dreg`.
    pub fn ip_saddr(dreg: u32) -> Self {
        Expr::Payload {
            dreg,
            base: PayloadBase::Network,
            offset: 12,
            len: 4,
        }
    }

    /// `ip daddr` into `dreg`.
    pub fn ip_daddr(dreg: u32) -> Self {
        Expr::Payload {
            dreg,
            base: PayloadBase::Network,
            offset: 16,
            len: 4,
        }
    }

    /// `th dport` (2 bytes, network order) into `dreg`.
    pub fn th_dport(dreg: u32) -> Self {
        Expr::Payload {
            dreg,
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
        }
    }

    /// `meta l4proto` into `dreg`.
    pub fn l4proto(dreg: u32) -> Self {
        Expr::Meta {
            dreg,
            key: MetaKey::L4Proto,
        }
    }

    /// Compares `sreg` with an address.
    pub fn cmp_ip(sreg: u32, op: CmpOp, ip: Ipv4Addr) -> Self {
        Expr::Cmp {
            sreg,
            op,
            data: ip.octets().to_vec(),
        }
    }

    /// Loads an address into `dreg`.
    pub fn load_ip(dreg: u32, ip: Ipv4Addr) -> Self {
        Expr::Immediate {
            dreg,
            data: ip.octets().to_vec(),
        }
    }

    /// Loads a port (network order) into `dreg`.
    pub fn load_port(dreg: u32, port: u16) -> Self {
        Expr::Immediate {
            dreg,
            data: port.to_be_bytes().to_vec(),
        }
    }

    /// The kernel's name of the expression.
    fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Lookup { .. } => "lookup",
            Expr::RandomNumber { .. } => "numgen",
            Expr::HostToNetwork32 { .. } => "byteorder",
            Expr::FibDaddrType { .. } => "fib",
            Expr::Dnat { .. } => "nat",
            Expr::Masquerade => "masq",
            Expr::Reject => "reject",
            Expr::Counter => "counter",
            Expr::UpdateSet { .. } => "dynset",
            Expr::CtState { .. } | Expr::CtStatus { .. } => "ct",
        }
    }

    pub(crate) fn encode(&self, out: &mut Attributes) {
        // NFTA_EXPR_NAME = 1, NFTA_EXPR_DATA = 2.
        out.string(1, self.name())
            .nested(2, |a| self.encode_data(a));
    }

    fn encode_data(&self, a: &mut Attributes) {
        match self {
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => {
                a.be32(1, *dreg)
                    .be32(2, *base as u32)
                    .be32(3, *offset)
                    .be32(4, *len);
            }
            Expr::Meta { dreg, key } => {
                a.be32(2, *key as u32).be32(1, *dreg);
            }
            Expr::MetaSet { sreg, key } => {
                a.be32(2, *key as u32).be32(3, *sreg);
            }
            Expr::Cmp { sreg, op, data } => {
                a.be32(1, *sreg).be32(2, *op as u32).nested(3, |d| {
                    d.raw(1, data);
                });
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                a.be32(1, *sreg)
                    .be32(2, *dreg)
                    .be32(3, u32::try_from(mask.len()).expect("short mask"))
                    .nested(4, |d| {
                        d.raw(1, mask);
                    })
                    .nested(5, |d| {
                        d.raw(1, xor);
                    });
            }
            Expr::Immediate { dreg, data } => {
                a.be32(1, *dreg).nested(2, |d| {
                    d.raw(1, data);
                });
            }
            Expr::Verdict(verdict) => {
                a.be32(1, REG_VERDICT).nested(2, |d| {
                    d.nested(2, |v| verdict.encode(v));
                });
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                a.string(1, set).be32(2, *sreg);
                if let Some(dreg) = dreg {
                    a.be32(3, *dreg);
                }
                if *invert {
                    a.be32(5, 1);
                }
            }
            Expr::RandomNumber { dreg, modulus } => {
                // NFT_NG_RANDOM = 1.
                a.be32(1, *dreg).be32(2, *modulus).be32(3, 1).be32(4, 0);
            }
            Expr::HostToNetwork32 { sreg, dreg } => {
                // NFTA_BYTEORDER_SREG = 1, _DREG = 2, _OP = 3 (NFT_BYTEORDER_HTON = 1),
                // _LEN = 4, _SIZE = 5.
                a.be32(1, *sreg)
                    .be32(2, *dreg)
                    .be32(3, 1)
                    .be32(4, 4)
                    .be32(5, 4);
            }
            Expr::FibDaddrType { dreg } => {
                // NFT_FIB_RESULT_ADDRTYPE = 3, NFTA_FIB_F_DADDR = 2.
                a.be32(1, *dreg).be32(2, 3).be32(3, 2);
            }
            Expr::Dnat { addr_reg, port_reg } => {
                // NFT_NAT_DNAT = 1, NFPROTO_IPV4 = 2; NF_NAT_RANGE_MAP_IPS = 1,
                // NF_NAT_RANGE_PROTO_SPECIFIED = 2.
                a.be32(1, 1).be32(2, 2).be32(3, *addr_reg);
                let mut flags = 1;
                if let Some(port) = port_reg {
                    a.be32(5, *port);
                    flags |= 2;
                }
                a.be32(7, flags);
            }
            Expr::Masquerade => {
                // NF_NAT_RANGE_PROTO_RANDOM_FULLY = 16.
                a.be32(1, 16);
            }
            Expr::Reject => {
                // NFT_REJECT_ICMP_UNREACH = 0, code 3: port unreachable.
                a.be32(1, 0).raw(2, &[3]);
            }
            Expr::Counter => {
                a.be64(1, 0).be64(2, 0);
            }
            Expr::CtState { dreg } => {
                // NFTA_CT_DREG = 1, NFTA_CT_KEY = 2 (NFT_CT_STATE = 0).
                a.be32(1, *dreg).be32(2, 0);
            }
            Expr::CtStatus { dreg } => {
                // NFTA_CT_DREG = 1, NFTA_CT_KEY = 2 (NFT_CT_STATUS = 2).
                a.be32(1, *dreg).be32(2, 2);
            }
            Expr::UpdateSet { set, sreg } => {
                // NFTA_DYNSET_SET_NAME = 1, OP = 3 (NFT_DYNSET_OP_UPDATE = 1), SREG_KEY = 4.
                a.string(1, set).be32(3, 1).be32(4, *sreg);
            }
        }
    }
}
