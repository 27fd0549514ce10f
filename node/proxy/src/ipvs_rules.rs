//! What the ipvs mode wants the kernel to hold, as data: each service address (cluster IP,
//! external IP, load-balancer IP, and each node address with a node port) is an IPVS virtual
//! service with round-robin scheduling (persistent for session affinity) whose destinations are
//! the endpoints, reached by NAT. The cluster IPs are put on the dummy interface `kube-ipvs0`
//! so the node takes packets for them as its own, where IPVS sees them.
//!
//! The rest is netfilter's, as in upstream's ipvs mode (which uses iptables and ipsets for it):
//! one small nftables table marks connections to a service address from outside the cluster's
//! pods (but not to the external addresses and node ports of a Service whose external traffic
//! policy is Local, which keep the client's address) and masquerades them after IPVS chose the
//! endpoint; masquerades a pod that reached itself through its Service (hairpin); drops
//! connections to a load-balancer IP from outside its Service's `loadBalancerSourceRanges`; and
//! rejects new connections to the dummy interface's addresses on ports no Service serves (so
//! host sockets listening on every address are not reachable there). Its sets hold the
//! addresses, so a change of Services changes set elements, never rules.
//!
//! Everything here is rendered per service port ([`render_port`]), so that a sync renders only
//! the ports that changed ([`crate::ipvs_sync`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use baton_network::{Destination, IpvsProtocol, ServiceAddress, VirtualService};
use baton_nftables::{
    BaseChain, Batch, CmpOp, Element, Expr, Family, Hook, SetSpec, Verdict, data_type, reg32,
};
use ipnet::Ipv4Net;

use crate::nftables_rules::{
    RuleSettings, address_key_of, ct_state_new, load_address_key, masquerade_marked, saddr_in,
    set_mark_bit,
};
use crate::service_model::{Endpoint, Protocol, ProxyState, ServicePortInfo, categorize};

/// The dummy interface holding the cluster IPs (upstream's name).
pub const IPVS_INTERFACE: &str = "kube-ipvs0";
/// The mode's nftables table.
pub const IPVS_TABLE: &str = "baton-ipvs";
/// Upstream's default node port range: a virtual service on a node address with a port in it
/// is taken to be this mode's.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;
/// The scheduler of every virtual service: round robin, upstream's default.
const SCHEDULER: &str = "rr";
/// Set of every service address (`ip . proto . port`).
const SERVICE_ADDRESSES: &str = "service-addresses";
/// Set of the service addresses whose connections from outside the pods are masqueraded.
const MASQUERADE_ADDRESSES: &str = "masquerade-addresses";
/// Set of the dummy interface's addresses.
const INTERFACE_ADDRESSES: &str = "interface-addresses";
/// Set of `endpoint . proto . port . endpoint`: a pod reaching itself.
const HAIRPIN: &str = "hairpin";
/// Set of the load-balancer addresses open only to some sources.
const FIREWALLED: &str = "firewalled-addresses";
/// Set of ranges `address . proto . port . source`: the sources a firewalled address admits.
const FIREWALL_SOURCES: &str = "firewall-sources";

/// What the kernel should hold for a state, or for one service port of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpvsState {
    /// Virtual services with their destinations.
    pub services: BTreeMap<ServiceAddress, (VirtualService, BTreeSet<Destination>)>,
    /// Addresses to put on [`IPVS_INTERFACE`].
    pub interface_addresses: BTreeSet<Ipv4Addr>,
    /// Service addresses whose connections from outside the pods are masqueraded (all but the
    /// external addresses and node ports of Services with a Local external traffic policy).
    pub masquerade: BTreeSet<ServiceAddress>,
    /// Endpoints that may reach themselves through a service: (address, protocol, port).
    pub hairpin: BTreeSet<(Ipv4Addr, IpvsProtocol, u16)>,
    /// Load-balancer addresses of Services with `loadBalancerSourceRanges`, with the sources
    /// each admits: its Service's ranges, and the address itself when a range holds a node
    /// address (a client on the node reaches an address of `kube-ipvs0` from that address), as
    /// upstream's ipvs mode does. The ranges are aggregated (none holds another, none
    /// overlaps), as the kernel's set of ranges requires.
    pub firewalls: BTreeMap<ServiceAddress, BTreeSet<Ipv4Net>>,
}

impl IpvsState {
    /// Adds `port`'s rendering. A service address both hold becomes `port`'s, virtual service
    /// and firewall (or none), as with a later service port in [`render_ipvs`].
    pub fn merge(&mut self, port: &IpvsState) {
        for (address, service) in &port.services {
            self.services.insert(*address, service.clone());
            match port.firewalls.get(address) {
                Some(ranges) => self.firewalls.insert(*address, ranges.clone()),
                None => self.firewalls.remove(address),
            };
        }
        self.interface_addresses
            .extend(port.interface_addresses.iter().copied());
        self.masquerade.extend(port.masquerade.iter().copied());
        self.hairpin.extend(port.hairpin.iter().copied());
    }

    /// Virtual services and destinations.
    pub fn rule_count(&self) -> usize {
        self.services.values().map(|(_, d)| 1 + d.len()).sum()
    }
}

fn ipvs_protocol(protocol: Protocol) -> IpvsProtocol {
    match protocol {
        Protocol::Tcp => IpvsProtocol::Tcp,
        Protocol::Udp => IpvsProtocol::Udp,
        Protocol::Sctp => IpvsProtocol::Sctp,
    }
}

/// The virtual services, addresses and set entries for one service port on a node with
/// `node_addresses` (where node ports are served).
pub fn render_port(
    info: &ServicePortInfo,
    endpoints: &[Endpoint],
    settings: &RuleSettings,
    node_addresses: &[Ipv4Addr],
) -> IpvsState {
    let mut wanted = IpvsState::default();
    let categorized = categorize(info, endpoints, &settings.node_name);
    let internal = categorized.internal(info);
    let external = categorized.external(info);
    let protocol = ipvs_protocol(info.protocol);
    let destinations = |endpoints: &[Endpoint]| -> BTreeSet<Destination> {
        endpoints
            .iter()
            .map(|endpoint| Destination {
                address: endpoint.ip,
                port: endpoint.port,
                weight: 1,
            })
            .collect()
    };
    let service_address = |address: Ipv4Addr, port: u16| ServiceAddress {
        protocol,
        address,
        port,
    };
    let mut add = |address: ServiceAddress, endpoints: &[Endpoint], masquerade: bool| {
        if masquerade {
            wanted.masquerade.insert(address);
        }
        wanted.services.insert(
            address,
            (
                VirtualService {
                    address,
                    scheduler: SCHEDULER.into(),
                    persistence_seconds: info.session_affinity_seconds,
                },
                destinations(endpoints),
            ),
        );
    };
    let masquerade_external = !info.external_policy_local;
    add(service_address(info.cluster_ip, info.port), internal, true);
    for ip in info.external_ips.iter().chain(&info.load_balancer_ips) {
        add(
            service_address(*ip, info.port),
            external,
            masquerade_external,
        );
    }
    if let Some(node_port) = info.node_port {
        for ip in node_addresses {
            add(
                service_address(*ip, node_port),
                external,
                masquerade_external,
            );
        }
    }
    wanted.interface_addresses.insert(info.cluster_ip);
    wanted.interface_addresses.extend(
        info.external_ips
            .iter()
            .chain(&info.load_balancer_ips)
            .copied(),
    );
    for endpoint in &categorized.all_reachable {
        wanted
            .hairpin
            .insert((endpoint.ip, protocol, endpoint.port));
    }
    if !info.load_balancer_source_ranges.is_empty() {
        let from_node = info
            .load_balancer_source_ranges
            .iter()
            .any(|range| node_addresses.iter().any(|ip| range.contains(ip)));
        for ip in &info.load_balancer_ips {
            let mut sources = info.load_balancer_source_ranges.clone();
            if from_node {
                sources.push(host_net(*ip));
            }
            wanted.firewalls.insert(
                service_address(*ip, info.port),
                Ipv4Net::aggregate(&sources).into_iter().collect(),
            );
        }
    }
    wanted
}

/// The whole state's virtual services, addresses and set entries.
pub fn render_ipvs(
    state: &ProxyState,
    settings: &RuleSettings,
    node_addresses: &[Ipv4Addr],
) -> IpvsState {
    let mut wanted = IpvsState::default();
    for (info, endpoints) in state.services.values() {
        wanted.merge(&render_port(info, endpoints, settings, node_addresses));
    }
    wanted
}

/// `ip/32`.
pub fn host_net(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32 is a valid prefix")
}

/// One change to IPVS or to the dummy interface's addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsChange {
    /// Put an address on [`IPVS_INTERFACE`].
    AddAddress(Ipv4Addr),
    /// Take an address off it.
    DeleteAddress(Ipv4Addr),
    /// Create a virtual service (without destinations).
    AddService(VirtualService),
    /// Change a virtual service's scheduler or persistence.
    UpdateService(VirtualService),
    /// Delete a virtual service and its destinations.
    DeleteService(ServiceAddress),
    /// Add a destination to a virtual service.
    AddDestination(ServiceAddress, Destination),
    /// Change a destination's weight.
    UpdateDestination(ServiceAddress, Destination),
    /// Remove a destination from a virtual service.
    DeleteDestination(ServiceAddress, Destination),
}

/// The changes that turn `before`'s virtual services and interface addresses into `after`'s,
/// in an order the kernel takes: addresses first (a virtual service on a cluster IP sees
/// packets once the address is local), then services with their destinations, and addresses
/// no longer used last.
pub fn ipvs_changes(before: &IpvsState, after: &IpvsState) -> Vec<IpvsChange> {
    let mut changes: Vec<IpvsChange> = after
        .interface_addresses
        .difference(&before.interface_addresses)
        .map(|ip| IpvsChange::AddAddress(*ip))
        .collect();
    for address in before.services.keys() {
        if !after.services.contains_key(address) {
            changes.push(IpvsChange::DeleteService(*address));
        }
    }
    let no_destinations = BTreeSet::new();
    for (address, (service, destinations)) in &after.services {
        let old = before.services.get(address);
        match old {
            None => changes.push(IpvsChange::AddService(service.clone())),
            Some((existing, _)) if existing != service => {
                changes.push(IpvsChange::UpdateService(service.clone()));
            }
            Some(_) => {}
        }
        let by_endpoint = |set: &BTreeSet<Destination>| -> BTreeMap<(Ipv4Addr, u16), Destination> {
            set.iter().map(|d| ((d.address, d.port), *d)).collect()
        };
        let present = by_endpoint(old.map_or(&no_destinations, |(_, d)| d));
        let wanted = by_endpoint(destinations);
        for (endpoint, destination) in &present {
            if !wanted.contains_key(endpoint) {
                changes.push(IpvsChange::DeleteDestination(*address, *destination));
            }
        }
        for (endpoint, destination) in &wanted {
            match present.get(endpoint) {
                None => changes.push(IpvsChange::AddDestination(*address, *destination)),
                Some(existing) if existing.weight != destination.weight => {
                    changes.push(IpvsChange::UpdateDestination(*address, *destination));
                }
                Some(_) => {}
            }
        }
    }
    changes.extend(
        before
            .interface_addresses
            .difference(&after.interface_addresses)
            .map(|ip| IpvsChange::DeleteAddress(*ip)),
    );
    changes
}

/// An element of one of the table's sets: its key, and in a set of ranges its last key.
pub type SetElement = (Vec<u8>, Option<Vec<u8>>);

/// The elements of the table's sets, by set name.
pub type TableElements = BTreeMap<&'static str, BTreeSet<SetElement>>;

/// `ip . proto . port` as the lookup's registers hold it (each field padded to 4 bytes).
fn address_key(address: &ServiceAddress) -> Vec<u8> {
    address_key_of(address.address, address.protocol.number(), address.port)
}

/// The elements `state` puts in the table's sets.
pub fn table_elements(state: &IpvsState) -> TableElements {
    let mut elements = counted_elements(state);
    elements.extend(firewall_elements(state));
    elements
}

fn plain(key: Vec<u8>) -> SetElement {
    (key, None)
}

/// The elements of the sets whose elements several service ports may each put in (so a sync
/// counts them): service, masquerade and interface addresses, and hairpin entries.
pub fn counted_elements(state: &IpvsState) -> TableElements {
    let mut elements = TableElements::new();
    elements.insert(
        SERVICE_ADDRESSES,
        state
            .services
            .keys()
            .map(|a| plain(address_key(a)))
            .collect(),
    );
    elements.insert(
        MASQUERADE_ADDRESSES,
        state
            .masquerade
            .iter()
            .map(|a| plain(address_key(a)))
            .collect(),
    );
    elements.insert(
        INTERFACE_ADDRESSES,
        state
            .interface_addresses
            .iter()
            .map(|ip| plain(ip.octets().to_vec()))
            .collect(),
    );
    elements.insert(
        HAIRPIN,
        state
            .hairpin
            .iter()
            .map(|(ip, protocol, port)| {
                let mut key = address_key_of(*ip, protocol.number(), *port);
                key.extend_from_slice(&ip.octets());
                plain(key)
            })
            .collect(),
    );
    elements
}

/// The elements of the firewall's sets, which follow the service port whose virtual service
/// an address has (as the virtual service does).
pub fn firewall_elements(state: &IpvsState) -> TableElements {
    let mut elements = TableElements::new();
    elements.insert(
        FIREWALLED,
        state
            .firewalls
            .keys()
            .map(|a| plain(address_key(a)))
            .collect(),
    );
    elements.insert(
        FIREWALL_SOURCES,
        state
            .firewalls
            .iter()
            .flat_map(|(address, ranges)| {
                ranges.iter().map(move |range| {
                    let mut first = address_key(address);
                    let mut last = first.clone();
                    first.extend_from_slice(&range.network().octets());
                    last.extend_from_slice(&range.broadcast().octets());
                    (first, Some(last))
                })
            })
            .collect(),
    );
    elements
}

/// The table's sets.
fn set_specs() -> Vec<SetSpec> {
    let address = data_type::concat(&[
        data_type::IPV4_ADDR,
        data_type::INET_PROTO,
        data_type::INET_SERVICE,
    ]);
    let address_and_ip = data_type::concat(&[
        data_type::IPV4_ADDR,
        data_type::INET_PROTO,
        data_type::INET_SERVICE,
        data_type::IPV4_ADDR,
    ]);
    let set = |name: &str, key_type, key_len, interval_fields| SetSpec {
        name: name.into(),
        key_type,
        key_len,
        verdict_map: false,
        data: None,
        timeout_ms: None,
        interval_fields,
    };
    vec![
        set(SERVICE_ADDRESSES, address, 12, None),
        set(MASQUERADE_ADDRESSES, address, 12, None),
        set(INTERFACE_ADDRESSES, data_type::IPV4_ADDR, 4, None),
        set(HAIRPIN, address_and_ip, 16, None),
        set(FIREWALLED, address, 12, None),
        set(FIREWALL_SOURCES, address_and_ip, 16, Some(vec![4, 4, 4, 4])),
    ]
}

fn batch_elements(elements: &BTreeSet<SetElement>) -> Vec<Element> {
    elements
        .iter()
        .map(|(key, key_end)| Element {
            key: key.clone(),
            key_end: key_end.clone(),
            ..Element::default()
        })
        .collect()
}

/// The table, whole, holding `elements`: replaces the one there in one batch.
pub fn netfilter_table(elements: &TableElements, settings: &RuleSettings) -> Batch {
    let mut batch = Batch::new();
    batch
        .destroy_table(Family::Ip, IPVS_TABLE)
        .add_table(Family::Ip, IPVS_TABLE);
    for spec in set_specs() {
        batch.add_set(Family::Ip, IPVS_TABLE, &spec);
    }
    for (name, set) in elements {
        if !set.is_empty() {
            batch.add_elements(Family::Ip, IPVS_TABLE, name, &batch_elements(set));
        }
    }
    let lookup = |set: &str, invert: bool| Expr::Lookup {
        set: set.into(),
        sreg: reg32(0),
        dreg: None,
        invert,
    };
    // To a service address from outside the cluster's pods (all sources when the cluster's
    // pod range is not known): mark for masquerading.
    let mut mark = load_address_key();
    mark.push(lookup(MASQUERADE_ADDRESSES, false));
    if let Some(cidr) = settings.cluster_cidr {
        mark.extend(saddr_in(cidr, CmpOp::Neq));
    }
    mark.extend(set_mark_bit());
    // After IPVS chose the endpoint: a packet from the endpoint to itself is masqueraded.
    let mut hairpin_rule = load_address_key();
    hairpin_rule.extend([
        Expr::ip_saddr(reg32(3)),
        lookup(HAIRPIN, false),
        Expr::Masquerade,
    ]);
    // A new connection to a dummy interface address on a port no Service serves: rejected,
    // not handed to a host socket listening on every address.
    let mut filter = ct_state_new();
    filter.extend([Expr::ip_daddr(reg32(0)), lookup(INTERFACE_ADDRESSES, false)]);
    filter.extend(load_address_key());
    filter.extend([lookup(SERVICE_ADDRESSES, true), Expr::Reject]);
    // To a firewalled load-balancer address from a source its ranges do not hold: dropped,
    // before IPVS (on input, and on output for the node's own clients) sees it.
    let mut firewall = load_address_key();
    firewall.extend([
        lookup(FIREWALLED, false),
        Expr::ip_saddr(reg32(3)),
        lookup(FIREWALL_SOURCES, true),
        Expr::Verdict(Verdict::Drop),
    ]);
    let nat = |hook, priority| BaseChain {
        kind: "nat",
        hook,
        priority,
    };
    let filter_chain = |hook, priority| BaseChain {
        kind: "filter",
        hook,
        priority,
    };
    for (name, base, rules) in [
        (
            "nat-prerouting",
            nat(Hook::Prerouting, -100),
            vec![mark.clone()],
        ),
        ("nat-output", nat(Hook::Output, -100), vec![mark]),
        (
            "nat-postrouting",
            nat(Hook::Postrouting, 100),
            std::iter::once(hairpin_rule)
                .chain(masquerade_marked())
                .collect(),
        ),
        ("filter-input", filter_chain(Hook::Input, 0), vec![filter]),
        // IPVS takes the node's own connections on output at priority -98.
        (
            "firewall-prerouting",
            filter_chain(Hook::Prerouting, -110),
            vec![firewall.clone()],
        ),
        (
            "firewall-output",
            filter_chain(Hook::Output, -110),
            vec![firewall],
        ),
    ] {
        batch.add_chain(Family::Ip, IPVS_TABLE, name, Some(&base));
        for rule in rules {
            batch.add_rule(Family::Ip, IPVS_TABLE, name, &rule);
        }
    }
    batch
}

/// One batch that takes `removed` out of the table's sets and puts `added` in.
pub fn table_update(removed: &TableElements, added: &TableElements) -> Batch {
    let mut batch = Batch::new();
    for (name, set) in removed {
        if !set.is_empty() {
            batch.delete_elements(Family::Ip, IPVS_TABLE, name, &batch_elements(set));
        }
    }
    for (name, set) in added {
        if !set.is_empty() {
            batch.add_elements(Family::Ip, IPVS_TABLE, name, &batch_elements(set));
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_model::ServicePortKey;

    fn info(node_port: Option<u16>, affinity: Option<u32>) -> ServicePortInfo {
        ServicePortInfo {
            namespace: "default".into(),
            name: "web".into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 20),
            port: 80,
            node_port,
            session_affinity_seconds: affinity,
            external_policy_local: false,
            internal_policy_local: false,
            external_ips: vec![Ipv4Addr::new(192, 0, 2, 10)],
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            health_check_node_port: None,
        }
    }

    fn endpoint(last: u8, ready: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 244, 0, last),
            port: 8080,
            ready,
            serving: ready,
            terminating: false,
            node_name: Some("node-1".into()),
        }
    }

    fn state_of(info: ServicePortInfo) -> ProxyState {
        state(info, vec![endpoint(7, true)])
    }

    fn state(info: ServicePortInfo, endpoints: Vec<Endpoint>) -> ProxyState {
        let mut state = ProxyState::default();
        let key: ServicePortKey = info.key();
        state.services.insert(key, (info, endpoints));
        state
    }

    fn settings() -> RuleSettings {
        RuleSettings {
            node_name: "node-1".into(),
            cluster_cidr: None,
        }
    }

    #[test]
    fn each_service_address_is_a_virtual_service_of_the_ready_endpoints() {
        let node = Ipv4Addr::new(192, 168, 1, 5);
        let wanted = render_ipvs(
            &state(
                info(Some(30080), Some(600)),
                vec![endpoint(7, true), endpoint(8, false)],
            ),
            &settings(),
            &[node],
        );
        let addresses: Vec<String> = wanted.services.keys().map(|a| a.to_string()).collect();
        assert_eq!(
            addresses,
            [
                "Tcp 10.96.0.20:80",
                "Tcp 192.0.2.10:80",
                "Tcp 192.168.1.5:30080"
            ]
        );
        for (service, destinations) in wanted.services.values() {
            assert_eq!(service.scheduler, "rr");
            assert_eq!(service.persistence_seconds, Some(600));
            // Only the ready endpoint.
            let listed: Vec<(Ipv4Addr, u16)> =
                destinations.iter().map(|d| (d.address, d.port)).collect();
            assert_eq!(listed, [(Ipv4Addr::new(10, 244, 0, 7), 8080)]);
        }
        assert_eq!(
            wanted.interface_addresses.into_iter().collect::<Vec<_>>(),
            [Ipv4Addr::new(10, 96, 0, 20), Ipv4Addr::new(192, 0, 2, 10)]
        );
        assert_eq!(
            wanted.hairpin.into_iter().collect::<Vec<_>>(),
            [(Ipv4Addr::new(10, 244, 0, 7), IpvsProtocol::Tcp, 8080)]
        );
        assert_eq!(
            wanted.masquerade.len(),
            3,
            "a Cluster policy masquerades everywhere"
        );
        assert!(wanted.firewalls.is_empty(), "no source ranges");
    }

    #[test]
    fn a_local_traffic_policy_keeps_only_this_nodes_endpoints() {
        let mut local = info(Some(30080), None);
        local.external_policy_local = true;
        let mut elsewhere = endpoint(9, true);
        elsewhere.node_name = Some("node-2".into());
        let wanted = render_ipvs(
            &state(local, vec![endpoint(7, true), elsewhere]),
            &settings(),
            &[Ipv4Addr::new(192, 168, 1, 5)],
        );
        let count = |ip: Ipv4Addr| {
            wanted
                .services
                .iter()
                .find(|(a, _)| a.address == ip)
                .map(|(_, (_, d))| d.len())
        };
        assert_eq!(count(Ipv4Addr::new(10, 96, 0, 20)), Some(2));
        assert_eq!(count(Ipv4Addr::new(192, 168, 1, 5)), Some(1));
        // The external addresses and node ports keep the client's address; the cluster IP
        // is still masqueraded from outside the pods.
        let masqueraded: Vec<Ipv4Addr> = wanted.masquerade.iter().map(|a| a.address).collect();
        assert_eq!(masqueraded, [Ipv4Addr::new(10, 96, 0, 20)]);
    }

    #[test]
    fn load_balancer_source_ranges_firewall_the_load_balancer_addresses_only() {
        let service = crate::service_model::firewalled_load_balancer();
        let state = crate::service_model::build_state(
            &[service],
            &[] as &[k8s_openapi::api::discovery::v1::EndpointSlice],
        );
        let lb = ServiceAddress {
            protocol: IpvsProtocol::Tcp,
            address: Ipv4Addr::new(192, 0, 2, 10),
            port: 80,
        };
        let ranges = |state: &IpvsState| -> Vec<(ServiceAddress, String)> {
            state
                .firewalls
                .iter()
                .flat_map(|(a, r)| r.iter().map(|r| (*a, r.to_string())))
                .collect()
        };
        // A node outside the ranges: only the ranges are admitted.
        let outside = render_ipvs(&state, &settings(), &[Ipv4Addr::new(192, 168, 1, 5)]);
        assert_eq!(ranges(&outside), [(lb, "10.1.0.0/16".to_string())]);
        // A node inside them: the load-balancer address itself too, the source of the node's
        // own connections to it.
        let inside = render_ipvs(&state, &settings(), &[Ipv4Addr::new(10, 1, 2, 3)]);
        assert_eq!(
            ranges(&inside),
            [
                (lb, "10.1.0.0/16".to_string()),
                (lb, "192.0.2.10/32".to_string())
            ]
        );
        // Ranges that hold one another, or the address itself, are aggregated: the kernel's
        // set of ranges refuses an element inside another.
        let mut open = info(None, None);
        open.load_balancer_ips = vec![Ipv4Addr::new(10, 1, 0, 9)];
        open.load_balancer_source_ranges = ["10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/24"]
            .map(|r| r.parse().unwrap())
            .to_vec();
        let nested = render_ipvs(
            &state_of(open.clone()),
            &settings(),
            &[Ipv4Addr::new(10, 1, 2, 3)],
        );
        assert_eq!(
            ranges(&nested)
                .into_iter()
                .map(|(_, r)| r)
                .collect::<Vec<_>>(),
            ["10.0.0.0/8"]
        );
        open.load_balancer_source_ranges = vec!["0.0.0.0/0".parse().unwrap()];
        let everyone = render_ipvs(&state_of(open), &settings(), &[Ipv4Addr::new(10, 1, 2, 3)]);
        assert_eq!(
            ranges(&everyone)
                .into_iter()
                .map(|(_, r)| r)
                .collect::<Vec<_>>(),
            ["0.0.0.0/0"]
        );
        // As ranges of the concatenation: address . proto . port . first and last source.
        let elements = table_elements(&outside);
        let ranges: Vec<&SetElement> = elements[FIREWALL_SOURCES].iter().collect();
        assert_eq!(
            ranges,
            [&(
                vec![192, 0, 2, 10, 6, 0, 0, 0, 0, 80, 0, 0, 10, 1, 0, 0],
                Some(vec![
                    192, 0, 2, 10, 6, 0, 0, 0, 0, 80, 0, 0, 10, 1, 255, 255
                ])
            )]
        );
    }

    #[test]
    fn changes_add_addresses_first_and_remove_them_last() {
        let node = [Ipv4Addr::new(192, 168, 1, 5)];
        let before = render_ipvs(
            &state(info(None, None), vec![endpoint(7, true), endpoint(8, true)]),
            &settings(),
            &node,
        );
        let mut moved = info(None, Some(60));
        moved.external_ips = vec![Ipv4Addr::new(192, 0, 2, 11)];
        let after = render_ipvs(
            &state(moved, vec![endpoint(8, true), endpoint(9, true)]),
            &settings(),
            &node,
        );
        let cluster = ServiceAddress {
            protocol: IpvsProtocol::Tcp,
            address: Ipv4Addr::new(10, 96, 0, 20),
            port: 80,
        };
        let old_external = ServiceAddress {
            address: Ipv4Addr::new(192, 0, 2, 10),
            ..cluster
        };
        let new_external = ServiceAddress {
            address: Ipv4Addr::new(192, 0, 2, 11),
            ..cluster
        };
        let destination = |last| Destination {
            address: Ipv4Addr::new(10, 244, 0, last),
            port: 8080,
            weight: 1,
        };
        let service = |address| VirtualService {
            address,
            scheduler: "rr".into(),
            persistence_seconds: Some(60),
        };
        assert_eq!(
            ipvs_changes(&before, &after),
            [
                IpvsChange::AddAddress(new_external.address),
                IpvsChange::DeleteService(old_external),
                IpvsChange::UpdateService(service(cluster)),
                IpvsChange::DeleteDestination(cluster, destination(7)),
                IpvsChange::AddDestination(cluster, destination(9)),
                IpvsChange::AddService(service(new_external)),
                IpvsChange::AddDestination(new_external, destination(8)),
                IpvsChange::AddDestination(new_external, destination(9)),
                IpvsChange::DeleteAddress(old_external.address),
            ]
        );
        assert!(ipvs_changes(&after, &after).is_empty());
    }

    #[test]
    fn set_keys_are_laid_out_as_the_rules_load_them() {
        // ip . proto . port, each field padded to 4 bytes: what `ip daddr . meta l4proto .
        // th dport` leaves in registers 0 to 2.
        let address = |ip, protocol, port| ServiceAddress {
            protocol,
            address: ip,
            port,
        };
        assert_eq!(
            address_key(&address(
                Ipv4Addr::new(10, 96, 0, 20),
                IpvsProtocol::Tcp,
                80
            )),
            [10, 96, 0, 20, 6, 0, 0, 0, 0, 80, 0, 0]
        );
        assert_eq!(
            address_key(&address(
                Ipv4Addr::new(10, 96, 0, 10),
                IpvsProtocol::Udp,
                53
            )),
            [10, 96, 0, 10, 17, 0, 0, 0, 0, 53, 0, 0]
        );
    }
}
