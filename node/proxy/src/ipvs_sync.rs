//! The ipvs mode: each service address (cluster IP, external IP, load-balancer IP, and each
//! node address with a node port) is an IPVS virtual service with round-robin scheduling
//! (persistent for session affinity) whose destinations are the endpoints, reached by NAT. The
//! cluster IPs are put on the dummy interface `kube-ipvs0` so the node takes packets for them
//! as its own, where IPVS sees them. Masquerading is left to netfilter, as upstream's ipvs mode
//! does with iptables: a small nftables table marks connections to a service address from
//! outside the cluster's pods (but not to the external addresses and node ports of a Service
//! whose external traffic policy is Local, which keep the client's address) and masquerades
//! them after IPVS chose the endpoint, masquerades a pod that reached itself through its
//! Service (hairpin), and rejects new connections to the dummy interface's addresses on ports
//! no Service serves (so host sockets listening on every address are not reachable there).
//!
//! Each sync compares with what the kernel has (virtual services, their destinations, the
//! dummy interface's addresses) and changes only the difference; the nftables table is
//! replaced in one batch. The mode touches only virtual services that are its own: those on
//! the dummy interface's addresses, and those on a node address with a port in the node port
//! range.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Instant;

use baton_network::{
    Destination, IpvsProtocol, IpvsSocket, NetlinkError, RouteSocket, ServiceAddress,
    VirtualService,
};
use baton_nftables::{
    ApplyBatchError, BaseChain, Batch, CmpOp, Element, Expr, Family, Hook, NftSocket, SetSpec,
    data_type, reg32,
};
use ipnet::Ipv4Net;

use crate::nftables_rules::{
    RuleSettings, address_key_of, ct_state_new, load_address_key, masquerade_marked, set_mark_bit,
};
use crate::nftables_sync::SyncStats;
use crate::service_model::{Endpoint, Protocol, ProxyState, categorize};

/// The dummy interface holding the cluster IPs (upstream's name).
pub const IPVS_INTERFACE: &str = "kube-ipvs0";
/// The nftables table of the mode's masquerading.
pub const IPVS_TABLE: &str = "baton-ipvs";
/// The scheduler of every virtual service: round robin, upstream's default.
const SCHEDULER: &str = "rr";
const SERVICE_ADDRESSES: &str = "service-addresses";
const MASQUERADE_ADDRESSES: &str = "masquerade-addresses";
const INTERFACE_ADDRESSES: &str = "interface-addresses";
const HAIRPIN: &str = "hairpin";
/// Upstream's default node port range: a virtual service on a node address with a port in it
/// is taken to be this mode's.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;
/// sysctls the mode needs: conntrack entries for IPVS connections (so netfilter can
/// masquerade them), and connections to a removed destination dropped rather than kept.
const SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/vs/conntrack", "1"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
];

/// Programming IPVS failed.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// A netlink request (IPVS, an interface, an address) was refused.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The masquerading table was refused.
    #[error(transparent)]
    Nftables(#[from] ApplyBatchError),
    /// A sysctl the mode needs could not be set.
    #[error("setting sysctl {name}")]
    Sysctl {
        /// Its path under /proc/sys.
        name: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What the kernel should hold for a state.
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
}

fn ipvs_protocol(protocol: Protocol) -> IpvsProtocol {
    match protocol {
        Protocol::Tcp => IpvsProtocol::Tcp,
        Protocol::Udp => IpvsProtocol::Udp,
        Protocol::Sctp => IpvsProtocol::Sctp,
    }
}

/// The virtual services, addresses and hairpin entries for `state` on a node with
/// `node_addresses` (where node ports are served).
pub fn render_ipvs(
    state: &ProxyState,
    settings: &RuleSettings,
    node_addresses: &[Ipv4Addr],
) -> IpvsState {
    let mut wanted = IpvsState::default();
    for (info, endpoints) in state.services.values() {
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
        let mut add = |address: Ipv4Addr, port: u16, endpoints: &[Endpoint], masquerade: bool| {
            let service_address = ServiceAddress {
                protocol,
                address,
                port,
            };
            if masquerade {
                wanted.masquerade.insert(service_address);
            }
            wanted.services.insert(
                service_address,
                (
                    VirtualService {
                        address: service_address,
                        scheduler: SCHEDULER.into(),
                        persistence_seconds: info.session_affinity_seconds,
                    },
                    destinations(endpoints),
                ),
            );
        };
        let masquerade_external = !info.external_policy_local;
        add(info.cluster_ip, info.port, internal, true);
        wanted.interface_addresses.insert(info.cluster_ip);
        for ip in info.external_ips.iter().chain(&info.load_balancer_ips) {
            add(*ip, info.port, external, masquerade_external);
            wanted.interface_addresses.insert(*ip);
        }
        if let Some(node_port) = info.node_port {
            for ip in node_addresses {
                add(*ip, node_port, external, masquerade_external);
            }
        }
        for endpoint in &categorized.all_reachable {
            wanted
                .hairpin
                .insert((endpoint.ip, protocol, endpoint.port));
        }
    }
    wanted
}

/// What the masquerading table was last built from.
type TableInputs = (
    Vec<ServiceAddress>,
    BTreeSet<ServiceAddress>,
    BTreeSet<Ipv4Addr>,
    BTreeSet<(Ipv4Addr, IpvsProtocol, u16)>,
    Option<Ipv4Net>,
);

/// The ipvs dataplane.
#[derive(Debug, Default)]
pub struct IpvsProxier {
    /// The sysctls are set (once per proxier).
    sysctls_set: bool,
    /// Virtual services and destinations programmed now.
    programmed: usize,
    /// The masquerading table's inputs as last applied: the table is sent again only when
    /// they change.
    table: Option<TableInputs>,
}

impl IpvsProxier {
    /// A proxier that has programmed nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Virtual services and destinations programmed by the last sync.
    pub fn rule_count(&self) -> usize {
        self.programmed
    }

    /// Makes the kernel hold what `state` asks for.
    pub fn sync(
        &mut self,
        state: &ProxyState,
        settings: &RuleSettings,
    ) -> Result<SyncStats, IpvsError> {
        let started = Instant::now();
        if !self.sysctls_set {
            for (name, value) in SYSCTLS {
                std::fs::write(format!("/proc/sys/{name}"), value)
                    .map_err(|source| IpvsError::Sysctl { name, source })?;
            }
            self.sysctls_set = true;
        }
        let mut route = RouteSocket::open()?;
        let interface = match route.link(IPVS_INTERFACE)? {
            Some(link) => link.index,
            None => {
                route.create_dummy(IPVS_INTERFACE)?;
                route
                    .link(IPVS_INTERFACE)?
                    .map(|link| link.index)
                    .ok_or_else(|| NetlinkError {
                        operation: format!("find {IPVS_INTERFACE} after creating it"),
                        source: std::io::ErrorKind::NotFound.into(),
                    })?
            }
        };
        let addresses = route.ipv4_addresses()?;
        let node_addresses: Vec<Ipv4Addr> = addresses
            .iter()
            .filter(|(index, net)| *index != interface && !net.addr().is_loopback())
            .map(|(_, net)| net.addr())
            .collect();
        let wanted = render_ipvs(state, settings, &node_addresses);
        let mut changes = 0;

        // Addresses first: a virtual service on a cluster IP sees packets once it is local.
        let present: BTreeSet<Ipv4Addr> = addresses
            .iter()
            .filter(|(index, _)| *index == interface)
            .map(|(_, net)| net.addr())
            .collect();
        for ip in wanted.interface_addresses.difference(&present) {
            route.add_address(interface, host_net(*ip))?;
            changes += 1;
        }

        let mut ipvs = IpvsSocket::open()?;
        let ours = |address: &ServiceAddress| {
            present.contains(&address.address)
                || wanted.interface_addresses.contains(&address.address)
                || (node_addresses.contains(&address.address)
                    && NODE_PORT_RANGE.contains(&address.port))
        };
        let programmed: BTreeMap<ServiceAddress, VirtualService> = ipvs
            .services()?
            .into_iter()
            .filter(|service| ours(&service.address))
            .map(|service| (service.address, service))
            .collect();
        for address in programmed.keys() {
            if !wanted.services.contains_key(address) {
                ipvs.delete_service(address)?;
                changes += 1;
            }
        }
        let mut count = 0;
        for (address, (service, destinations)) in &wanted.services {
            match programmed.get(address) {
                None => {
                    ipvs.add_service(service)?;
                    changes += 1;
                }
                Some(existing) if existing != service => {
                    ipvs.update_service(service)?;
                    changes += 1;
                }
                Some(_) => {}
            }
            let present: BTreeMap<(Ipv4Addr, u16), Destination> =
                if programmed.contains_key(address) {
                    ipvs.destinations(address)?
                        .into_iter()
                        .map(|d| ((d.address, d.port), d))
                        .collect()
                } else {
                    BTreeMap::new()
                };
            for (key, destination) in &present {
                if !destinations.iter().any(|d| (d.address, d.port) == *key) {
                    ipvs.delete_destination(address, destination)?;
                    changes += 1;
                }
            }
            for destination in destinations {
                match present.get(&(destination.address, destination.port)) {
                    None => {
                        ipvs.add_destination(address, destination)?;
                        changes += 1;
                    }
                    Some(existing) if existing.weight != destination.weight => {
                        ipvs.update_destination(address, destination)?;
                        changes += 1;
                    }
                    Some(_) => {}
                }
            }
            count += 1 + destinations.len();
        }
        for ip in present.difference(&wanted.interface_addresses) {
            route.delete_address(interface, host_net(*ip))?;
            changes += 1;
        }

        let inputs: TableInputs = (
            wanted.services.keys().copied().collect(),
            wanted.masquerade.clone(),
            wanted.interface_addresses.clone(),
            wanted.hairpin.clone(),
            settings.cluster_cidr,
        );
        if self.table.as_ref() != Some(&inputs) {
            let batch = masquerade_table(&wanted, settings);
            changes += batch.len();
            NftSocket::open()?.apply(&batch)?;
            self.table = Some(inputs);
        }
        self.programmed = count;
        Ok(SyncStats {
            full: false,
            changes,
            apply_time: started.elapsed(),
        })
    }

    /// Removes this mode's virtual services, the dummy interface and the masquerading table.
    pub fn clean_up(&mut self) -> Result<(), IpvsError> {
        self.table = None;
        clean_up_ipvs()
    }
}

/// Removes what the ipvs mode programs (also when another mode starts): its virtual services
/// (those on the dummy interface's addresses, and those on node addresses with a port in the
/// node port range), the dummy interface and the masquerading table.
pub fn clean_up_ipvs() -> Result<(), IpvsError> {
    let mut route = RouteSocket::open()?;
    let interface = route.link(IPVS_INTERFACE)?.map(|link| link.index);
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        let addresses = route.ipv4_addresses()?;
        let on_interface: BTreeSet<Ipv4Addr> = addresses
            .iter()
            .filter(|(index, _)| Some(*index) == interface)
            .map(|(_, net)| net.addr())
            .collect();
        let node: BTreeSet<Ipv4Addr> = addresses
            .iter()
            .filter(|(index, net)| Some(*index) != interface && !net.addr().is_loopback())
            .map(|(_, net)| net.addr())
            .collect();
        let mut ipvs = IpvsSocket::open()?;
        for service in ipvs.services()? {
            let address = service.address;
            if on_interface.contains(&address.address)
                || (node.contains(&address.address) && NODE_PORT_RANGE.contains(&address.port))
            {
                ipvs.delete_service(&address)?;
            }
        }
    }
    if interface.is_some() {
        route.delete_link(IPVS_INTERFACE)?;
    }
    let mut batch = Batch::new();
    batch.destroy_table(Family::Ip, IPVS_TABLE);
    NftSocket::open()?.apply(&batch)?;
    Ok(())
}

fn host_net(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32 is a valid prefix")
}

/// `ip . proto . port` as the lookup's registers hold it (each field padded to 4 bytes).
fn address_key(ip: Ipv4Addr, protocol: IpvsProtocol, port: u16) -> Vec<u8> {
    address_key_of(ip, protocol.number(), port)
}

/// The masquerading table, whole: replaces the one there in one batch.
fn masquerade_table(wanted: &IpvsState, settings: &RuleSettings) -> Batch {
    let mut batch = Batch::new();
    batch
        .destroy_table(Family::Ip, IPVS_TABLE)
        .add_table(Family::Ip, IPVS_TABLE);
    let address = data_type::concat(&[
        data_type::IPV4_ADDR,
        data_type::INET_PROTO,
        data_type::INET_SERVICE,
    ]);
    for name in [SERVICE_ADDRESSES, MASQUERADE_ADDRESSES] {
        batch.add_set(
            Family::Ip,
            IPVS_TABLE,
            &SetSpec {
                name: name.into(),
                key_type: address,
                key_len: 12,
                verdict_map: false,
                data: None,
                timeout_ms: None,
                interval_fields: None,
            },
        );
    }
    batch.add_set(
        Family::Ip,
        IPVS_TABLE,
        &SetSpec {
            name: INTERFACE_ADDRESSES.into(),
            key_type: data_type::IPV4_ADDR,
            key_len: 4,
            verdict_map: false,
            data: None,
            timeout_ms: None,
            interval_fields: None,
        },
    );
    batch.add_set(
        Family::Ip,
        IPVS_TABLE,
        &SetSpec {
            name: HAIRPIN.into(),
            key_type: data_type::concat(&[
                data_type::IPV4_ADDR,
                data_type::INET_PROTO,
                data_type::INET_SERVICE,
                data_type::IPV4_ADDR,
            ]),
            key_len: 16,
            verdict_map: false,
            data: None,
            timeout_ms: None,
            interval_fields: None,
        },
    );
    let keys = |addresses: &mut dyn Iterator<Item = &ServiceAddress>| -> Vec<Element> {
        addresses
            .map(|a| Element::key(address_key(a.address, a.protocol, a.port)))
            .collect()
    };
    for (name, elements) in [
        (SERVICE_ADDRESSES, keys(&mut wanted.services.keys())),
        (MASQUERADE_ADDRESSES, keys(&mut wanted.masquerade.iter())),
        (
            INTERFACE_ADDRESSES,
            wanted
                .interface_addresses
                .iter()
                .map(|ip| Element::key(ip.octets().to_vec()))
                .collect(),
        ),
    ] {
        if !elements.is_empty() {
            batch.add_elements(Family::Ip, IPVS_TABLE, name, &elements);
        }
    }
    let hairpin: Vec<Element> = wanted
        .hairpin
        .iter()
        .map(|(ip, protocol, port)| {
            let mut key = address_key(*ip, *protocol, *port);
            key.extend_from_slice(&ip.octets());
            Element::key(key)
        })
        .collect();
    if !hairpin.is_empty() {
        batch.add_elements(Family::Ip, IPVS_TABLE, HAIRPIN, &hairpin);
    }
    // To a service address from outside the cluster's pods (all sources when the cluster's
    // pod range is not known): mark for masquerading.
    let lookup = |set: &str, invert: bool| Expr::Lookup {
        set: set.into(),
        sreg: reg32(0),
        dreg: None,
        invert,
    };
    let mut mark = load_address_key();
    mark.push(lookup(MASQUERADE_ADDRESSES, false));
    if let Some(cidr) = settings.cluster_cidr {
        mark.extend([
            Expr::ip_saddr(reg32(0)),
            Expr::Bitwise {
                sreg: reg32(0),
                dreg: reg32(0),
                mask: cidr.netmask().octets().to_vec(),
                xor: vec![0; 4],
            },
            Expr::cmp_ip(reg32(0), CmpOp::Neq, cidr.network()),
        ]);
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
    let nat = |hook, priority| BaseChain {
        kind: "nat",
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
        (
            "filter-input",
            BaseChain {
                kind: "filter",
                hook: Hook::Input,
                priority: 0,
            },
            vec![filter],
        ),
    ] {
        batch.add_chain(Family::Ip, IPVS_TABLE, name, Some(&base));
        for rule in rules {
            batch.add_rule(Family::Ip, IPVS_TABLE, name, &rule);
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_model::{ServicePortInfo, ServicePortKey};

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

    fn state(info: ServicePortInfo, endpoints: Vec<Endpoint>) -> ProxyState {
        let mut state = ProxyState::default();
        let key: ServicePortKey = info.key();
        state.services.insert(key, (info, endpoints));
        state
    }

    #[test]
    fn each_service_address_is_a_virtual_service_of_the_ready_endpoints() {
        let settings = RuleSettings {
            node_name: "node-1".into(),
            cluster_cidr: None,
        };
        let node = Ipv4Addr::new(192, 168, 1, 5);
        let wanted = render_ipvs(
            &state(
                info(Some(30080), Some(600)),
                vec![endpoint(7, true), endpoint(8, false)],
            ),
            &settings,
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
    }

    #[test]
    fn a_local_traffic_policy_keeps_only_this_nodes_endpoints() {
        let mut local = info(Some(30080), None);
        local.external_policy_local = true;
        let mut elsewhere = endpoint(9, true);
        elsewhere.node_name = Some("node-2".into());
        let wanted = render_ipvs(
            &state(local, vec![endpoint(7, true), elsewhere]),
            &RuleSettings {
                node_name: "node-1".into(),
                cluster_cidr: None,
            },
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
    fn set_keys_are_laid_out_as_the_rules_load_them() {
        // ip . proto . port, each field padded to 4 bytes: what `ip daddr . meta l4proto .
        // th dport` leaves in registers 0 to 2.
        assert_eq!(
            address_key(Ipv4Addr::new(10, 96, 0, 20), IpvsProtocol::Tcp, 80),
            [10, 96, 0, 20, 6, 0, 0, 0, 0, 80, 0, 0]
        );
        assert_eq!(
            address_key(Ipv4Addr::new(10, 96, 0, 10), IpvsProtocol::Udp, 53),
            [10, 96, 0, 10, 17, 0, 0, 0, 0, 53, 0, 0]
        );
    }
}
