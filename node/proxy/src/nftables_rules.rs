//! The nftables mode's rules, rendered from the desired [`ProxyState`] as plain data (chains
//! with their rules, and the elements of the verdict maps), so that a sync can compare what it
//! wants with what it applied last and send only the difference.
//!
//! Layout of table `ip baton-proxy`:
//! - base chains `nat-prerouting` and `nat-output` (dstnat) jump to `services`, which looks
//!   `ip daddr . meta l4proto . th dport` up in the verdict map `service-ips`, then, for local
//!   destinations, `meta l4proto . th dport` in `service-nodeports`: one lookup whatever the
//!   number of Services;
//! - a chain per service port (`svc-NS/NAME/PROTO/PORT`) DNATs to an endpoint picked at random:
//!   it looks `chain id . numgen random mod 65536` (the number in network byte order) up in one
//!   of 256 endpoint maps (`endpoints-00` to `endpoints-ff`, by the id's first byte), range
//!   sets in which endpoint *i* of *n* holds the *i*-th of *n* equal ranges of the numbers
//!   under the chain's id, with the endpoint's `address . port` as value (the id is a 64-bit
//!   hash of the chain's name). A chain per externally reachable port (`ext-...`) marks for
//!   masquerading (Cluster policy) or keeps to this node's endpoints (Local policy), then picks
//!   the same way under its own id. The rule is the same whatever the endpoints, so endpoints
//!   that move, come or go are a change of map elements only: the kernel validates the jumps
//!   of the whole table when a batch adds a rule or a verdict element, which at 10,000
//!   Services costs tens of milliseconds, but not for data elements. Why 256 shared maps: the
//!   kernel finds named sets by walking a list (an interval map per port made a
//!   10,000-Service table take 22 s to load), and checks every element added against every
//!   rule that looks its map up (one map for all ports took 18 s); a rule cannot hand its key
//!   to a shared rule elsewhere (the kernel refuses rules that read registers they did not
//!   write);
//! - with session affinity (ClientIP) a port keeps upstream's layout instead: a chain per
//!   endpoint (`...__IP/PORT`) that records the client in the endpoint's affinity set and
//!   DNATs, and rules that send a recorded client back to its endpoint;
//! - `nat-postrouting` (srcnat) masquerades marked packets, and hairpin traffic (a pod reaching
//!   itself through a Service: a destination-NATed connection whose `ip saddr . ip daddr` is in
//!   the set `hairpin`, which holds `IP . IP` for every endpoint address);
//! - filter chains at input, forward and output (priority -110) reject new connections to
//!   service ports without endpoints (`no-endpoint-services`, `no-endpoint-nodeports`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use baton_nftables::{
    BaseChain, CT_STATE_NEW, CT_STATUS_DNAT, CmpOp, Element, Expr, Hook, IPPROTO_SCTP, IPPROTO_TCP,
    IPPROTO_UDP, MetaKey, RTN_LOCAL, SetSpec, Verdict, data_type, reg32,
};
use ipnet::Ipv4Net;

use crate::service_model::{Endpoint, Protocol, ProxyState, ServicePortInfo, categorize};

/// The proxy's table.
pub const TABLE: &str = "baton-proxy";
/// The packet mark bit that asks for masquerading (upstream's 0x4000).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Verdict maps of the table.
pub const SERVICE_IPS: &str = "service-ips";
/// Node ports to their chains.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// Service addresses without endpoints, to the reject chain.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// Node ports without endpoints, to the reject chain.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";

/// `IP . IP` for every endpoint address: after DNAT, a packet whose source is its destination
/// is hairpin traffic.
pub const HAIRPIN: &str = "hairpin";
/// How many endpoint maps (`chain id . range of picked numbers` to the endpoint's
/// `address . port`) the ports share.
pub const ENDPOINT_MAPS: u16 = 256;

const SERVICES: &str = "services";
const MASQUERADING: &str = "masquerading";
const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
const REJECT: &str = "reject-chain";
const ENDPOINTS_CHECK: &str = "endpoints-check";

/// Settings that shape the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSettings {
    /// This node's name (for Local traffic policies).
    pub node_name: String,
    /// The cluster's pod CIDR: traffic to a ClusterIP from outside it is masqueraded.
    pub cluster_cidr: Option<Ipv4Net>,
}

/// Rules and map elements, as data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Regular chains (not the fixed base chains) and their rules.
    pub chains: BTreeMap<String, Vec<Vec<Expr>>>,
    /// Elements of each verdict map: key bytes to verdict.
    pub maps: BTreeMap<&'static str, BTreeMap<Vec<u8>, Verdict>>,
    /// Session affinity sets (client addresses that recently used an endpoint), by name.
    pub affinity_sets: BTreeMap<String, SetSpec>,
    /// Elements of the endpoint maps: from their first key, `chain id . first number`, their
    /// last and the endpoint's `address . port` (each in the map [`endpoint_map_name`] gives
    /// for the key's first byte).
    pub endpoints: BTreeMap<Vec<u8>, EndpointRange>,
    /// Endpoint addresses, whose `IP . IP` goes into the [`HAIRPIN`] set.
    pub hairpin: BTreeSet<Ipv4Addr>,
}

impl Ruleset {
    /// Number of rules (base chains included).
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(Vec::len).sum::<usize>()
            + base_chains().iter().map(|c| c.2.len()).sum::<usize>()
    }
}

/// The base chains with their fixed rules.
pub fn base_chains() -> Vec<(&'static str, BaseChain, Vec<Vec<Expr>>)> {
    let nat = |hook, priority| BaseChain {
        kind: "nat",
        hook,
        priority,
    };
    let filter = |hook| BaseChain {
        kind: "filter",
        hook,
        priority: -110,
    };
    let jump = |chain: &str| vec![Expr::Verdict(Verdict::Jump(chain.into()))];
    // Only connections being opened are checked for endpoints (upstream's `ct state new`): a
    // Service that loses its endpoints for a moment does not cut established ones.
    let check_new = || {
        let mut rule = ct_state_new();
        rule.push(Expr::Verdict(Verdict::Jump(ENDPOINTS_CHECK.into())));
        rule
    };
    vec![
        (
            "nat-prerouting",
            nat(Hook::Prerouting, -100),
            vec![jump(SERVICES)],
        ),
        ("nat-output", nat(Hook::Output, -100), vec![jump(SERVICES)]),
        (
            "nat-postrouting",
            nat(Hook::Postrouting, 100),
            vec![jump(MASQUERADING)],
        ),
        ("filter-input", filter(Hook::Input), vec![check_new()]),
        ("filter-forward", filter(Hook::Forward), vec![check_new()]),
        ("filter-output", filter(Hook::Output), vec![check_new()]),
    ]
}

/// The verdict maps of the table.
pub fn maps() -> Vec<SetSpec> {
    let address_key = data_type::concat(&[
        data_type::IPV4_ADDR,
        data_type::INET_PROTO,
        data_type::INET_SERVICE,
    ]);
    let port_key = data_type::concat(&[data_type::INET_PROTO, data_type::INET_SERVICE]);
    [
        (SERVICE_IPS, address_key, 12),
        (SERVICE_NODEPORTS, port_key, 8),
        (NO_ENDPOINT_SERVICES, address_key, 12),
        (NO_ENDPOINT_NODEPORTS, port_key, 8),
    ]
    .into_iter()
    .map(|(name, key_type, key_len)| SetSpec {
        name: name.into(),
        key_type,
        key_len,
        verdict_map: true,
        data: None,
        timeout_ms: None,
        interval_fields: None,
    })
    .collect()
}

/// The [`HAIRPIN`] set.
pub fn hairpin_set() -> SetSpec {
    SetSpec {
        name: HAIRPIN.into(),
        key_type: data_type::concat(&[data_type::IPV4_ADDR, data_type::IPV4_ADDR]),
        key_len: 8,
        verdict_map: false,
        data: None,
        timeout_ms: None,
        interval_fields: None,
    }
}

/// The element of the [`HAIRPIN`] set for an endpoint address.
pub fn hairpin_element(ip: Ipv4Addr) -> Element {
    let mut key = ip.octets().to_vec();
    key.extend_from_slice(&ip.octets());
    Element::key(key)
}

/// The endpoint map that holds the elements of the chain whose id starts with `id_byte`.
pub fn endpoint_map_name(id_byte: u8) -> String {
    format!("endpoints-{:02x}", u16::from(id_byte) % ENDPOINT_MAPS)
}

/// The endpoint maps.
pub fn endpoint_maps() -> Vec<SetSpec> {
    (0..ENDPOINT_MAPS)
        .map(|i| endpoint_map(&format!("endpoints-{i:02x}")))
        .collect()
}

fn endpoint_map(name: &str) -> SetSpec {
    // Listed by nft as `mark . mark . mark`: the id's two halves and the range of picked
    // numbers (in network byte order, unlike a mark's).
    let word = 19;
    SetSpec {
        name: name.into(),
        key_type: data_type::concat(&[word, word, word]),
        key_len: 12,
        verdict_map: false,
        data: Some((
            data_type::concat(&[data_type::IPV4_ADDR, data_type::INET_SERVICE]),
            8,
        )),
        timeout_ms: None,
        interval_fields: Some(vec![4, 4, 4]),
    }
}

/// A chain's id in the endpoint maps: the FNV-1a hash of its name (64 bits, so that ids of
/// different chains do not meet in practice).
pub fn chain_id(chain: &str) -> [u8; 8] {
    chain
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
        .to_be_bytes()
}

/// The numbers the endpoint pick draws from (`numgen random mod PICK_RANGE`): endpoint `i` of
/// `n` takes the `i`-th of `n` equal ranges of them, so a change in the number of endpoints is
/// a change of map elements only, never of the rule (the shares differ by at most one number
/// in 65,536).
pub const PICK_RANGE: u32 = 1 << 16;

/// One endpoint-map element: its last key (the key is the first) and its `address . port`.
pub type EndpointRange = (Vec<u8>, Vec<u8>);

/// The endpoint-map elements of `chain`: endpoint `i` of `n` under `id . first..=last` (the
/// `i`-th of `n` ranges of the pick's numbers, in network byte order as the lookup's register
/// holds them).
pub fn endpoint_elements(chain: &str, endpoints: &[&Endpoint]) -> BTreeMap<Vec<u8>, EndpointRange> {
    let id = chain_id(chain);
    // Each endpoint needs one number at least: beyond 65,536 endpoints, the first 65,536.
    let endpoints = &endpoints[..endpoints.len().min(PICK_RANGE as usize)];
    let n = endpoints.len() as u64;
    let bound = |i: u64| (u64::from(PICK_RANGE) * i / n) as u32;
    (0u64..)
        .zip(endpoints)
        .map(|(i, endpoint)| {
            let key = |value: u32| {
                let mut key = id.to_vec();
                key.extend_from_slice(&value.to_be_bytes());
                key
            };
            let mut data = endpoint.ip.octets().to_vec();
            data.extend_from_slice(&endpoint.port.to_be_bytes());
            data.extend_from_slice(&[0, 0]);
            (key(bound(i)), (key(bound(i + 1) - 1), data))
        })
        .collect()
}

/// DNATs to one of `chain`'s endpoints, picked at random: a number in `0..PICK_RANGE` looked
/// up with the chain's id in its endpoint map, whose ranges share the numbers out.
fn pick_from_map(chain: &str) -> Vec<Expr> {
    let id = chain_id(chain);
    vec![
        // No protocol match before the DNAT to a port (nft would write one): the chain is
        // reached only through map keys that hold the protocol.
        Expr::Immediate {
            dreg: reg32(0),
            data: id.to_vec(),
        },
        Expr::RandomNumber {
            dreg: reg32(2),
            modulus: PICK_RANGE,
        },
        Expr::HostToNetwork32 {
            sreg: reg32(2),
            dreg: reg32(2),
        },
        Expr::Lookup {
            set: endpoint_map_name(id[0]),
            sreg: reg32(0),
            dreg: Some(reg32(0)),
            invert: false,
        },
        Expr::Dnat {
            addr_reg: reg32(0),
            port_reg: Some(reg32(1)),
        },
    ]
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// `ip . proto . port` as the lookup's registers hold it (each field padded to 4 bytes).
fn address_key(ip: Ipv4Addr, protocol: Protocol, port: u16) -> Vec<u8> {
    address_key_of(ip, protocol_number(protocol), port)
}

/// [`address_key`] from a protocol number.
pub(crate) fn address_key_of(ip: Ipv4Addr, protocol: u8, port: u16) -> Vec<u8> {
    let mut key = ip.octets().to_vec();
    key.extend_from_slice(&port_key_of(protocol, port));
    key
}

/// `proto . port`.
fn port_key(protocol: Protocol, port: u16) -> Vec<u8> {
    port_key_of(protocol_number(protocol), port)
}

fn port_key_of(protocol: u8, port: u16) -> Vec<u8> {
    let [high, low] = port.to_be_bytes();
    vec![protocol, 0, 0, 0, high, low, 0, 0]
}

/// `ip saddr & mask` compared with `range`'s network: with [`CmpOp::Eq`] the source is
/// inside `range`, with [`CmpOp::Neq`] outside it (register 0).
pub(crate) fn saddr_in(range: Ipv4Net, op: CmpOp) -> [Expr; 3] {
    [
        Expr::ip_saddr(reg32(0)),
        Expr::Bitwise {
            sreg: reg32(0),
            dreg: reg32(0),
            mask: range.netmask().octets().to_vec(),
            xor: vec![0; 4],
        },
        Expr::cmp_ip(reg32(0), op, range.network()),
    ]
}

/// `ct state new`: the rule goes on only for a connection's first packet.
pub(crate) fn ct_state_new() -> Vec<Expr> {
    vec![
        Expr::CtState { dreg: reg32(0) },
        Expr::Bitwise {
            sreg: reg32(0),
            dreg: reg32(0),
            mask: CT_STATE_NEW.to_ne_bytes().to_vec(),
            xor: 0u32.to_ne_bytes().to_vec(),
        },
        Expr::Cmp {
            sreg: reg32(0),
            op: CmpOp::Neq,
            data: 0u32.to_ne_bytes().to_vec(),
        },
    ]
}

/// `ip daddr . meta l4proto . th dport` into registers 0 to 2, the key of an address set.
pub(crate) fn load_address_key() -> Vec<Expr> {
    vec![
        Expr::ip_daddr(reg32(0)),
        Expr::l4proto(reg32(1)),
        Expr::th_dport(reg32(2)),
    ]
}

/// The mark register dance: `meta mark set mark | bit`.
pub(crate) fn set_mark_bit() -> Vec<Expr> {
    vec![
        Expr::Meta {
            dreg: reg32(0),
            key: MetaKey::Mark,
        },
        Expr::Bitwise {
            sreg: reg32(0),
            dreg: reg32(0),
            mask: (!MASQUERADE_MARK).to_ne_bytes().to_vec(),
            xor: MASQUERADE_MARK.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            sreg: reg32(0),
            key: MetaKey::Mark,
        },
    ]
}

/// The fixed regular chains.
fn fixed_chains() -> BTreeMap<String, Vec<Vec<Expr>>> {
    let mut chains = BTreeMap::new();
    let lookup_address = |set: &str| {
        let mut rule = load_address_key();
        rule.push(Expr::Lookup {
            set: set.into(),
            sreg: reg32(0),
            dreg: Some(0),
            invert: false,
        });
        rule
    };
    // Node ports on local addresses, but not on 127.0.0.0/8 (upstream's rule: loopback
    // cannot be DNATed to a pod; the connection is refused instead of hanging).
    let lookup_local_port = |set: &str| {
        vec![
            Expr::ip_daddr(reg32(0)),
            Expr::Bitwise {
                sreg: reg32(0),
                dreg: reg32(0),
                mask: vec![255, 0, 0, 0],
                xor: vec![0; 4],
            },
            Expr::cmp_ip(reg32(0), CmpOp::Neq, Ipv4Addr::new(127, 0, 0, 0)),
            Expr::FibDaddrType { dreg: reg32(0) },
            Expr::Cmp {
                sreg: reg32(0),
                op: CmpOp::Eq,
                data: RTN_LOCAL.to_ne_bytes().to_vec(),
            },
            Expr::l4proto(reg32(0)),
            Expr::th_dport(reg32(1)),
            Expr::Lookup {
                set: set.into(),
                sreg: reg32(0),
                dreg: Some(0),
                invert: false,
            },
        ]
    };
    chains.insert(
        SERVICES.into(),
        vec![
            lookup_address(SERVICE_IPS),
            lookup_local_port(SERVICE_NODEPORTS),
        ],
    );
    chains.insert(
        ENDPOINTS_CHECK.into(),
        vec![
            lookup_address(NO_ENDPOINT_SERVICES),
            lookup_local_port(NO_ENDPOINT_NODEPORTS),
        ],
    );
    chains.insert(REJECT.into(), vec![vec![Expr::Reject]]);

    chains.insert(MARK_FOR_MASQUERADE.into(), vec![set_mark_bit()]);
    // Hairpin traffic (a Service's DNAT sent it back to its source) is marked, then
    // masqueraded with the rest.
    let mut hairpin = vec![
        Expr::CtStatus { dreg: reg32(0) },
        Expr::Bitwise {
            sreg: reg32(0),
            dreg: reg32(0),
            mask: CT_STATUS_DNAT.to_ne_bytes().to_vec(),
            xor: 0u32.to_ne_bytes().to_vec(),
        },
        Expr::Cmp {
            sreg: reg32(0),
            op: CmpOp::Neq,
            data: 0u32.to_ne_bytes().to_vec(),
        },
        Expr::ip_saddr(reg32(0)),
        Expr::ip_daddr(reg32(1)),
        Expr::Lookup {
            set: HAIRPIN.into(),
            sreg: reg32(0),
            dreg: None,
            invert: false,
        },
    ];
    hairpin.extend(set_mark_bit());
    let mut masquerading = vec![hairpin];
    masquerading.extend(masquerade_marked());
    chains.insert(MASQUERADING.into(), masquerading);
    chains
}

/// Masquerades packets marked for it, clearing the mark (a packet re-entering the stack is not
/// masqueraded twice); leaves the others alone.
pub(crate) fn masquerade_marked() -> Vec<Vec<Expr>> {
    vec![
        // Not marked: nothing to do.
        vec![
            Expr::Meta {
                dreg: reg32(0),
                key: MetaKey::Mark,
            },
            Expr::Bitwise {
                sreg: reg32(0),
                dreg: reg32(0),
                mask: MASQUERADE_MARK.to_ne_bytes().to_vec(),
                xor: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::Cmp {
                sreg: reg32(0),
                op: CmpOp::Eq,
                data: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::Verdict(Verdict::Return),
        ],
        // Clear the bit (a packet re-entering the stack is not masqueraded twice).
        vec![
            Expr::Meta {
                dreg: reg32(0),
                key: MetaKey::Mark,
            },
            Expr::Bitwise {
                sreg: reg32(0),
                dreg: reg32(0),
                mask: (!MASQUERADE_MARK).to_ne_bytes().to_vec(),
                xor: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::MetaSet {
                sreg: reg32(0),
                key: MetaKey::Mark,
            },
            Expr::Masquerade,
        ],
    ]
}

/// Chain names of a service port.
fn port_chain_name(prefix: &str, info: &ServicePortInfo) -> String {
    let port = if info.port_name.is_empty() {
        info.port.to_string()
    } else {
        info.port_name.clone()
    };
    format!(
        "{prefix}-{}/{}/{}/{port}",
        info.namespace,
        info.name,
        info.protocol.as_str().to_lowercase()
    )
}

fn endpoint_chain_name(service_chain: &str, endpoint: &Endpoint) -> String {
    format!("{service_chain}__{}/{}", endpoint.ip, endpoint.port)
}

/// The affinity set of an endpoint chain; the timeout is part of the name, so that a changed
/// timeout makes a new set (the old one goes once no rule uses it).
fn affinity_set_name(endpoint_chain: &str, seconds: u32) -> String {
    format!("affinity-{seconds}s-{endpoint_chain}")
}

/// With session affinity: a client that used an endpoint within the timeout goes to it again.
fn sticky(endpoints: &[(String, &Endpoint)], seconds: Option<u32>) -> Vec<Vec<Expr>> {
    let Some(seconds) = seconds else {
        return Vec::new();
    };
    endpoints
        .iter()
        .map(|(chain, _)| {
            vec![
                Expr::ip_saddr(reg32(0)),
                Expr::Lookup {
                    set: affinity_set_name(chain, seconds),
                    sreg: reg32(0),
                    dreg: None,
                    invert: false,
                },
                Expr::Verdict(Verdict::Goto(chain.clone())),
            ]
        })
        .collect()
}

/// The rules of `chain` that send a packet to one of `endpoints` (with their affinity chains'
/// names): with session affinity, through the endpoint chains; without, through the chain's
/// endpoint map, whose elements go into `ruleset`.
fn pick_endpoint(
    ruleset: &mut Ruleset,
    chain: &str,
    endpoints: &[(String, Endpoint)],
    info: &ServicePortInfo,
) -> Vec<Vec<Expr>> {
    if info.session_affinity_seconds.is_some() {
        let refs: Vec<(String, &Endpoint)> =
            endpoints.iter().map(|(c, e)| (c.clone(), e)).collect();
        let mut rules = sticky(&refs, info.session_affinity_seconds);
        rules.extend(spread(&refs));
        return rules;
    }
    let targets: Vec<&Endpoint> = endpoints.iter().map(|(_, e)| e).collect();
    ruleset.endpoints.extend(endpoint_elements(chain, &targets));
    vec![pick_from_map(chain)]
}

/// Rules that send a packet to one of `endpoints` at random, each equally likely (rule `i`
/// takes it with probability 1/(n-i)).
fn spread(endpoints: &[(String, &Endpoint)]) -> Vec<Vec<Expr>> {
    let n = endpoints.len();
    endpoints
        .iter()
        .enumerate()
        .map(|(i, (chain, _))| {
            let goto = Expr::Verdict(Verdict::Goto(chain.clone()));
            if i + 1 == n {
                vec![goto]
            } else {
                vec![
                    Expr::RandomNumber {
                        dreg: reg32(0),
                        modulus: u32::try_from(n - i).unwrap_or(u32::MAX),
                    },
                    Expr::Cmp {
                        sreg: reg32(0),
                        op: CmpOp::Eq,
                        data: 0u32.to_ne_bytes().to_vec(),
                    },
                    goto,
                ]
            }
        })
        .collect()
}

/// A ruleset with the fixed chains and the (empty) verdict maps only.
pub fn base_ruleset() -> Ruleset {
    let mut ruleset = empty_ruleset();
    ruleset.chains = fixed_chains();
    ruleset
}

/// A ruleset with nothing but the (empty) verdict maps: what one service port's rules are
/// rendered into, and what a removed port's rules are compared with.
pub fn empty_ruleset() -> Ruleset {
    let mut ruleset = Ruleset::default();
    for name in [
        SERVICE_IPS,
        SERVICE_NODEPORTS,
        NO_ENDPOINT_SERVICES,
        NO_ENDPOINT_NODEPORTS,
    ] {
        ruleset.maps.insert(name, BTreeMap::new());
    }
    ruleset
}

/// Renders the rules for `state` on this node.
pub fn render(state: &ProxyState, settings: &RuleSettings) -> Ruleset {
    let mut ruleset = base_ruleset();
    for (info, endpoints) in state.services.values() {
        render_port(&mut ruleset, info, endpoints, settings);
    }
    ruleset
}

/// The chains, map elements and sets of one service port alone (no fixed chains).
pub fn render_port_rules(
    info: &ServicePortInfo,
    endpoints: &[Endpoint],
    settings: &RuleSettings,
) -> Ruleset {
    let mut ruleset = empty_ruleset();
    render_port(&mut ruleset, info, endpoints, settings);
    ruleset
}

impl Ruleset {
    /// Rules in the regular chains (without the base chains).
    pub fn chain_rule_count(&self) -> usize {
        self.chains.values().map(Vec::len).sum()
    }
}

fn render_port(
    ruleset: &mut Ruleset,
    info: &ServicePortInfo,
    endpoints: &[Endpoint],
    settings: &RuleSettings,
) {
    let categorized = categorize(info, endpoints, &settings.node_name);
    let svc_chain = port_chain_name("svc", info);
    let reject = Verdict::Goto(REJECT.into());

    ruleset
        .hairpin
        .extend(categorized.all_reachable.iter().map(|e| e.ip));
    // With session affinity, one chain per endpoint this node may use.
    let affinity_endpoints = if info.session_affinity_seconds.is_some() {
        categorized.all_reachable.as_slice()
    } else {
        &[]
    };
    for endpoint in affinity_endpoints {
        let chain = endpoint_chain_name(&svc_chain, endpoint);
        let dnat = vec![
            Expr::l4proto(reg32(0)),
            Expr::Cmp {
                sreg: reg32(0),
                op: CmpOp::Eq,
                data: vec![protocol_number(info.protocol)],
            },
            Expr::load_ip(reg32(0), endpoint.ip),
            Expr::load_port(reg32(1), endpoint.port),
            Expr::Dnat {
                addr_reg: reg32(0),
                port_reg: Some(reg32(1)),
            },
        ];
        let mut rules = vec![];
        if let Some(seconds) = info.session_affinity_seconds {
            let set = affinity_set_name(&chain, seconds);
            rules.push(vec![
                Expr::ip_saddr(reg32(0)),
                Expr::UpdateSet {
                    set: set.clone(),
                    sreg: reg32(0),
                },
            ]);
            ruleset.affinity_sets.insert(
                set.clone(),
                SetSpec {
                    name: set,
                    key_type: data_type::IPV4_ADDR,
                    key_len: 4,
                    verdict_map: false,
                    data: None,
                    timeout_ms: Some(u64::from(seconds) * 1000),
                    interval_fields: None,
                },
            );
        }
        rules.push(dnat);
        ruleset.chains.insert(chain, rules);
    }
    let chains_of = |list: &[Endpoint]| -> Vec<(String, Endpoint)> {
        list.iter()
            .map(|e| (endpoint_chain_name(&svc_chain, e), e.clone()))
            .collect()
    };

    // Traffic from inside the cluster (the cluster IP).
    let internal = if info.internal_policy_local {
        &categorized.local
    } else {
        &categorized.cluster
    };
    let internal = chains_of(internal);
    let address = address_key(info.cluster_ip, info.protocol, info.port);
    if internal.is_empty() {
        // No endpoint anywhere: refused. Endpoints only on other nodes while the policy is
        // Local: dropped, as upstream.
        let verdict = if info.internal_policy_local && categorized.has_any_endpoints {
            Verdict::Drop
        } else {
            reject.clone()
        };
        ruleset
            .maps
            .get_mut(NO_ENDPOINT_SERVICES)
            .expect("map")
            .insert(address, verdict);
    } else {
        let mut rules = Vec::new();
        if let Some(cidr) = settings.cluster_cidr {
            // From outside the cluster's pods to the cluster IP: masquerade, so replies come
            // back through this node.
            let mut rule = saddr_in(cidr, CmpOp::Neq).to_vec();
            rule.push(Expr::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into())));
            rules.push(rule);
        }
        rules.extend(pick_endpoint(ruleset, &svc_chain, &internal, info));
        ruleset.chains.insert(svc_chain.clone(), rules);
        ruleset
            .maps
            .get_mut(SERVICE_IPS)
            .expect("map")
            .insert(address, Verdict::Goto(svc_chain.clone()));
    }

    // Traffic from outside (node ports, external and load-balancer IPs).
    if !info.externally_accessible() {
        return;
    }
    let external = if info.external_policy_local {
        &categorized.local
    } else {
        &categorized.cluster
    };
    let external = chains_of(external);
    let ext_chain = port_chain_name("ext", info);
    let target = if external.is_empty() {
        if info.external_policy_local && categorized.has_any_endpoints {
            // Upstream drops (no local endpoint) rather than rejecting.
            ruleset
                .chains
                .insert(ext_chain.clone(), vec![vec![Expr::Verdict(Verdict::Drop)]]);
            Some(Verdict::Goto(ext_chain))
        } else {
            None
        }
    } else {
        let mut rules = Vec::new();
        if !info.external_policy_local {
            rules.push(vec![Expr::Verdict(Verdict::Jump(
                MARK_FOR_MASQUERADE.into(),
            ))]);
        }
        rules.extend(pick_endpoint(ruleset, &ext_chain, &external, info));
        ruleset.chains.insert(ext_chain.clone(), rules);
        Some(Verdict::Goto(ext_chain))
    };
    // With somewhere to go, the service maps; with nowhere, the no-endpoint maps (refused).
    let (address_map, port_map, verdict) = match target {
        Some(verdict) => (SERVICE_IPS, SERVICE_NODEPORTS, verdict),
        None => (NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS, reject),
    };
    // Load-balancer IPs of a Service with loadBalancerSourceRanges go through its firewall.
    let load_balancer_verdict =
        if !info.load_balancer_source_ranges.is_empty() && !info.load_balancer_ips.is_empty() {
            let fw_chain = port_chain_name("fw", info);
            ruleset
                .chains
                .insert(fw_chain.clone(), firewall_rules(info, &verdict));
            Verdict::Goto(fw_chain)
        } else {
            verdict.clone()
        };
    let addresses = info.external_ips.iter().map(|ip| (ip, &verdict)).chain(
        info.load_balancer_ips
            .iter()
            .map(|ip| (ip, &load_balancer_verdict)),
    );
    for (ip, verdict) in addresses {
        ruleset
            .maps
            .get_mut(address_map)
            .expect("map")
            .insert(address_key(*ip, info.protocol, info.port), verdict.clone());
    }
    if let Some(node_port) = info.node_port {
        ruleset
            .maps
            .get_mut(port_map)
            .expect("map")
            .insert(port_key(info.protocol, node_port), verdict);
    }
}

/// A Service's firewall (upstream's `firewall-...` chains): connections to its load-balancer
/// IPs from inside `loadBalancerSourceRanges` go on to `allowed` (the endpoints, or the
/// rejection of a Service without any); others are dropped.
fn firewall_rules(info: &ServicePortInfo, allowed: &Verdict) -> Vec<Vec<Expr>> {
    info.load_balancer_source_ranges
        .iter()
        .map(|range| {
            let mut rule = saddr_in(*range, CmpOp::Eq).to_vec();
            rule.push(Expr::Verdict(allowed.clone()));
            rule
        })
        .chain([vec![Expr::Verdict(Verdict::Drop)]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(last: u8) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 244, 1, last),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
        }
    }

    #[test]
    fn endpoints_share_the_picked_numbers_under_their_chain_id() {
        let three = [endpoint(1), endpoint(2), endpoint(3)];
        let refs: Vec<&Endpoint> = three.iter().collect();
        let a = endpoint_elements("svc-default/a/tcp/80", &refs);
        let b = endpoint_elements("svc-default/b/tcp/80", &refs);
        assert_eq!(a.len(), 3);
        assert!(a.keys().all(|k| k.len() == 12 && !b.contains_key(k)));
        let number = |key: &[u8]| u32::from_be_bytes(key[8..].try_into().unwrap());
        // Ranges follow each other from 0 to the last number, 21,845 or 21,846 numbers each.
        let mut next = 0;
        for (key, (last, _)) in &a {
            assert_eq!(key[..8], chain_id("svc-default/a/tcp/80"));
            assert_eq!(last[..8], key[..8]);
            assert_eq!(number(key), next);
            let size = number(last) + 1 - number(key);
            assert!((21_845..=21_846).contains(&size), "{size}");
            next = number(last) + 1;
        }
        assert_eq!(next, PICK_RANGE);
        let (_, (_, data)) = a.iter().nth(1).unwrap();
        assert_eq!(data, &[10, 244, 1, 2, 0x1f, 0x90, 0, 0]);
    }

    #[test]
    fn a_firewalled_load_balancer_without_endpoints_rejects_its_ranges_and_drops_the_rest() {
        let service = crate::service_model::firewalled_load_balancer();
        let state = crate::service_model::build_state(
            &[service],
            &[] as &[k8s_openapi::api::discovery::v1::EndpointSlice],
        );
        let settings = RuleSettings {
            node_name: "n1".into(),
            cluster_cidr: None,
        };
        let ruleset = render(&state, &settings);
        let key = address_key(Ipv4Addr::new(192, 0, 2, 10), Protocol::Tcp, 80);
        let fw = "fw-default/web/tcp/http";
        assert_eq!(
            ruleset.maps[NO_ENDPOINT_SERVICES].get(&key),
            Some(&Verdict::Goto(fw.into()))
        );
        assert!(!ruleset.maps[SERVICE_IPS].contains_key(&key));
        let rules = &ruleset.chains[fw];
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0].last(),
            Some(&Expr::Verdict(Verdict::Goto(REJECT.into())))
        );
        assert_eq!(rules[1], vec![Expr::Verdict(Verdict::Drop)]);
    }

    #[test]
    fn hairpin_marking_is_for_destination_nated_connections_only() {
        let chains = fixed_chains();
        let hairpin = &chains[MASQUERADING][0];
        assert_eq!(hairpin[0], Expr::CtStatus { dreg: reg32(0) });
        assert!(
            matches!(&hairpin[1], Expr::Bitwise { mask, .. } if *mask == CT_STATUS_DNAT.to_ne_bytes())
        );
        assert!(matches!(&hairpin[2], Expr::Cmp { op: CmpOp::Neq, data, .. } if *data == [0; 4]));
        assert!(
            matches!(&hairpin[5], Expr::Lookup { set, .. } if set == HAIRPIN),
            "{hairpin:?}"
        );
        assert_eq!(hairpin.len(), 6 + set_mark_bit().len());
        // Then the marked packets (hairpin ones among them) are masqueraded.
        assert_eq!(chains[MASQUERADING][1..], masquerade_marked());
    }

    #[test]
    fn only_affinity_ports_get_endpoint_chains() {
        let info = ServicePortInfo {
            namespace: "default".into(),
            name: "web".into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            node_port: None,
            session_affinity_seconds: None,
            external_policy_local: false,
            internal_policy_local: false,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            health_check_node_port: None,
        };
        let endpoints = [endpoint(1), endpoint(2)];
        let settings = RuleSettings {
            node_name: "n1".into(),
            cluster_cidr: None,
        };
        let plain = render_port_rules(&info, &endpoints, &settings);
        assert_eq!(plain.chains.len(), 1, "{:?}", plain.chains.keys());
        assert_eq!(plain.endpoints.len(), 2);
        assert_eq!(plain.hairpin.len(), 2);
        let sticky = ServicePortInfo {
            session_affinity_seconds: Some(10800),
            ..info
        };
        let sticky = render_port_rules(&sticky, &endpoints, &settings);
        assert_eq!(sticky.chains.len(), 3);
        assert!(sticky.endpoints.is_empty());
        assert_eq!(sticky.affinity_sets.len(), 2);
        assert_eq!(sticky.hairpin.len(), 2);
    }
}
