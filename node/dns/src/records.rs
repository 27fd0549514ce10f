//! The cluster's DNS records, built from Services and EndpointSlices, and the answers to queries
//! about them, with the semantics of the Kubernetes DNS specification as CoreDNS's kubernetes
//! plugin implements it (the `pods insecure` mode and `fallthrough in-addr.arpa` of the Corefile
//! that Kubernetes deploys):
//!
//! - `<svc>.<ns>.svc.<zone>`: A = the cluster IPs (ClusterIP, NodePort, LoadBalancer); for a
//!   headless Service the IPs of its ready endpoints (a headless Service without any is
//!   NXDOMAIN, as the specification says); CNAME to `spec.externalName` for ExternalName;
//! - `<endpoint>.<svc>.<ns>.svc.<zone>`: A for each ready endpoint, named by its `hostname`,
//!   else by its dashed IP (`10-1-2-3`), as CoreDNS names endpoints;
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV for each named port, to the Service's name
//!   (port = the Service port) or, headless, to each ready endpoint's name (port = the endpoint
//!   port), priority 0 and weights sharing 100 equally, the targets' A records as additionals;
//! - PTR for cluster IPs and for ready endpoints with a hostname of headless Services;
//! - `<a-b-c-d>.<ns>.pod.<zone>`: A = a.b.c.d for any address (insecure mode);
//! - `dns-version.<zone>`: TXT with the schema version; SOA and NS at the apex.
//!
//! A name of the zone that has no records and no records below it is NXDOMAIN; a name that
//! exists but has no record of the asked type is NODATA; both carry the SOA in the authority
//! section. Names are compared case-insensitively. Only IPv4 is served (AAAA is NODATA).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use hickory_server::proto::rr::rdata::{A, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The record TTL by default: 30 s. CoreDNS's kubernetes plugin defaults to 5 s, but the
/// Corefile Kubernetes deploys (kubeadm, the addon manifests) sets `ttl 30`, kube-dns's value;
/// that is what clusters run, so it is Baton's default too.
pub const DEFAULT_TTL: u32 = 30;

/// The version of the DNS schema served in `dns-version.<zone>` (CoreDNS's).
pub const DNS_SCHEMA_VERSION: &str = "1.1.0";

/// The TTL of the `dns-version` TXT record (CoreDNS's).
const SCHEMA_VERSION_TTL: u32 = 28800;

/// The label EndpointSlices name their Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The DNS Service whose cluster IP `ns.dns.<zone>` (the apex NS) resolves to.
const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// The cluster domain could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid cluster domain {domain:?}")]
pub struct InvalidClusterDomainError {
    /// The domain given.
    pub domain: String,
}

/// The zone the index answers for: the cluster domain and the TTL of its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Lowercase, without the final dot (`cluster.local`).
    domain: String,
    name: Name,
    ttl: u32,
}

impl Zone {
    /// The zone of `domain` (`cluster.local`, with or without the final dot) with records of
    /// `ttl` seconds.
    pub fn new(domain: &str, ttl: u32) -> Result<Self, InvalidClusterDomainError> {
        let invalid = || InvalidClusterDomainError {
            domain: domain.to_owned(),
        };
        let trimmed = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if trimmed.is_empty() || trimmed.split('.').any(|label| !is_dns_label(label)) {
            return Err(invalid());
        }
        let name = Name::from_ascii(format!("{trimmed}.")).map_err(|_| invalid())?;
        Ok(Zone {
            domain: trimmed,
            name,
            ttl,
        })
    }

    /// The cluster domain, lowercase and without the final dot.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The TTL of the records.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The zone's SOA record (CoreDNS's: `ns.dns.<zone>`, `hostmaster.<zone>`, the TTL as the
    /// minimum, and a record TTL of at most 300 s).
    fn soa(&self, serial: u32) -> Record {
        let mname = self.child("ns.dns");
        let rname = self.child("hostmaster");
        let soa = SOA::new(mname, rname, serial, 7200, 1800, 86400, self.ttl);
        Record::from_rdata(self.name.clone(), self.ttl.min(300), RData::SOA(soa))
    }

    /// `<prefix>.<zone>.` (prefix made of valid labels).
    fn child(&self, prefix: &str) -> Name {
        Name::from_ascii(format!("{prefix}.{}.", self.domain)).unwrap_or_else(|_| self.name.clone())
    }
}

/// What the index says about a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The name is outside the zones the index answers for: forward it.
    Forward,
    /// The name is in the cluster domain but the index has not been built from the API yet.
    NotReady,
    /// Records of the name (authoritative, NOERROR).
    Found {
        /// The answer section.
        answers: Vec<Record>,
        /// The additional section (the A records of SRV targets and of the apex NS).
        additionals: Vec<Record>,
        /// The answer ends in a CNAME to this name outside the cluster domain, which the server
        /// resolves upstream and appends (CoreDNS does the same for ExternalName Services).
        resolve_externally: Option<Name>,
    },
    /// The name exists but has no record of the asked type (NOERROR, the SOA in authority).
    NoData(Record),
    /// The name does not exist (NXDOMAIN, the SOA in authority).
    NxDomain(Record),
}

/// One SRV record's target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SrvTarget {
    target: String,
    port: u16,
}

/// The records of one owner name.
#[derive(Debug, Clone, Default)]
struct Node {
    a: BTreeSet<Ipv4Addr>,
    cname: Option<Name>,
    srv: BTreeSet<SrvTarget>,
    txt: Option<(String, u32)>,
}

/// The cluster's records, indexed by owner name, and the PTR records by address.
#[derive(Debug, Clone)]
pub struct Index {
    zone: Zone,
    synced: bool,
    serial: u32,
    /// Owner names, lowercase, without the final dot.
    nodes: HashMap<String, Node>,
    /// Names that exist only because names below them do (empty non-terminals).
    empty_non_terminals: HashSet<String>,
    ptr: HashMap<Ipv4Addr, BTreeSet<String>>,
}

impl Index {
    /// An index that has not been built from the API yet: it answers nothing in the zone
    /// ([`Answer::NotReady`]).
    pub fn unsynced(zone: Zone) -> Self {
        Index {
            zone,
            synced: false,
            serial: 0,
            nodes: HashMap::new(),
            empty_non_terminals: HashSet::new(),
            ptr: HashMap::new(),
        }
    }

    /// The index of `services` and `slices` (joined by the `kubernetes.io/service-name` label
    /// in the Service's namespace; IPv4 slices only), with `serial` as the SOA serial (CoreDNS
    /// uses the time of the last change, in Unix seconds).
    pub fn build<'a>(
        zone: Zone,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        serial: u32,
    ) -> Self {
        let mut slices_of: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            slices_of
                .entry((namespace, service.as_str()))
                .or_default()
                .push(slice);
        }
        let mut index = Index {
            synced: true,
            serial,
            ..Index::unsynced(zone)
        };
        for service in services {
            let (Some(namespace), Some(name)) = (
                service.metadata.namespace.as_deref(),
                service.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let slices = slices_of
                .get(&(namespace, name))
                .map(Vec::as_slice)
                .unwrap_or_default();
            index.add_service(namespace, name, service, slices);
            if (namespace, name) == DNS_SERVICE {
                let ns_owner = index.owner("ns.dns");
                index.node(&ns_owner).a.extend(cluster_ips(service));
            }
        }
        let version = index.owner("dns-version");
        index.node(&version).txt = Some((DNS_SCHEMA_VERSION.to_owned(), SCHEMA_VERSION_TTL));
        index
            .empty_non_terminals
            .insert(format!("svc.{}", index.zone.domain));
        index
            .empty_non_terminals
            .insert(format!("pod.{}", index.zone.domain));
        index.fill_empty_non_terminals();
        index
    }

    /// The zone the index answers for.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Whether the index was built from the API (else every name of the zone is
    /// [`Answer::NotReady`]).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    fn owner(&self, prefix: &str) -> String {
        format!("{prefix}.{}", self.zone.domain)
    }

    fn node(&mut self, owner: &str) -> &mut Node {
        self.nodes.entry(owner.to_owned()).or_default()
    }

    fn add_service(
        &mut self,
        namespace: &str,
        name: &str,
        service: &Service,
        slices: &[&EndpointSlice],
    ) {
        let Some(spec) = service.spec.as_ref() else {
            return;
        };
        let namespace = namespace.to_ascii_lowercase();
        let name = name.to_ascii_lowercase();
        if !is_dns_label(&namespace) || !is_dns_label(&name) {
            return;
        }
        let owner = self.owner(&format!("{name}.{namespace}.svc"));
        if spec.type_.as_deref() == Some("ExternalName") {
            let target = spec.external_name.as_deref().unwrap_or_default();
            let target = target.trim_end_matches('.').to_ascii_lowercase();
            if let Ok(target) = Name::from_ascii(format!("{target}."))
                && !target.is_root()
            {
                self.node(&owner).cname = Some(target);
            }
            return;
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let endpoints = ready_endpoints(slices);
        if headless {
            if endpoints.is_empty() {
                // No ready endpoints: the name does not exist (the specification's NXDOMAIN).
                return;
            }
        } else {
            let node = self.node(&owner);
            for ip in cluster_ips(service) {
                node.a.insert(ip);
            }
            for ip in cluster_ips(service) {
                self.ptr.entry(ip).or_default().insert(owner.clone());
            }
            for port in spec.ports.iter().flatten() {
                let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let protocol = port.protocol.as_deref().unwrap_or("TCP");
                if let Some(srv_owner) = self.srv_owner(port_name, protocol, &owner) {
                    self.node(&srv_owner).srv.insert(SrvTarget {
                        target: owner.clone(),
                        port: number,
                    });
                }
            }
            // The name exists even before a cluster IP is allocated (NODATA, not NXDOMAIN).
            self.node(&owner);
        }
        for endpoint in &endpoints {
            let endpoint_owner = format!("{}.{owner}", endpoint.label);
            self.node(&endpoint_owner).a.insert(endpoint.ip);
            if !headless {
                continue;
            }
            self.node(&owner).a.insert(endpoint.ip);
            if endpoint.has_hostname {
                self.ptr
                    .entry(endpoint.ip)
                    .or_default()
                    .insert(endpoint_owner.clone());
            }
            for port in &endpoint.ports {
                if let Some(srv_owner) = self.srv_owner(&port.name, &port.protocol, &owner) {
                    self.node(&srv_owner).srv.insert(SrvTarget {
                        target: endpoint_owner.clone(),
                        port: port.port,
                    });
                }
            }
        }
    }

    /// `_<port>._<proto>.<service owner>`, if the port name and protocol make valid labels.
    fn srv_owner(&self, port: &str, protocol: &str, service_owner: &str) -> Option<String> {
        let port = port.to_ascii_lowercase();
        let protocol = protocol.to_ascii_lowercase();
        (is_dns_label(&port) && is_dns_label(&protocol))
            .then(|| format!("_{port}._{protocol}.{service_owner}"))
    }

    /// Every name between an owner name and the zone apex exists (RFC 8020).
    fn fill_empty_non_terminals(&mut self) {
        let suffix = format!(".{}", self.zone.domain);
        let mut found = Vec::new();
        for owner in self.nodes.keys() {
            let mut rest = owner.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if !parent.ends_with(&suffix) {
                    break;
                }
                if !self.nodes.contains_key(parent) {
                    found.push(parent.to_owned());
                }
                rest = parent;
            }
        }
        self.empty_non_terminals.extend(found);
    }

    /// The answer to a query of `qtype` for `name` (any case).
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Answer {
        let query = name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let domain = self.zone.domain.as_str();
        let relative = if query == domain {
            Some("")
        } else {
            query
                .strip_suffix(domain)
                .and_then(|rest| rest.strip_suffix('.'))
        };
        let Some(relative) = relative else {
            return self.lookup_reverse(&query, qtype);
        };
        if !self.synced {
            return Answer::NotReady;
        }
        let soa = || self.zone.soa(self.serial);
        if relative.is_empty() {
            return self.lookup_apex(qtype);
        }
        if let Some(answer) = self.lookup_pod(relative, name, qtype) {
            return answer;
        }
        match self.nodes.get(&query) {
            Some(node) => self.answer_node(name, node, qtype, 0),
            None if self.empty_non_terminals.contains(&query) => Answer::NoData(soa()),
            None => Answer::NxDomain(soa()),
        }
    }

    fn lookup_apex(&self, qtype: RecordType) -> Answer {
        let soa = self.zone.soa(self.serial);
        let ns_name = self.zone.child("ns.dns");
        let ns = Record::from_rdata(
            self.zone.name.clone(),
            self.zone.ttl,
            RData::NS(NS(ns_name.clone())),
        );
        let glue = || {
            self.nodes
                .get(&self.owner("ns.dns"))
                .map(|node| a_records(&ns_name, node, self.zone.ttl))
                .unwrap_or_default()
        };
        let (answers, additionals) = match qtype {
            RecordType::SOA => (vec![soa], Vec::new()),
            RecordType::NS => (vec![ns], glue()),
            RecordType::ANY => (vec![soa, ns], glue()),
            _ => return Answer::NoData(soa),
        };
        Answer::Found {
            answers,
            additionals,
            resolve_externally: None,
        }
    }

    /// `<a-b-c-d>.<ns>.pod`, `<ns>.pod` and `pod` (relative to the zone).
    fn lookup_pod(&self, relative: &str, name: &Name, qtype: RecordType) -> Option<Answer> {
        let labels: Vec<&str> = relative.split('.').collect();
        if labels.last() != Some(&"pod") {
            return None;
        }
        let soa = self.zone.soa(self.serial);
        Some(match labels.as_slice() {
            [_] | [_, _] => Answer::NoData(soa),
            [address, _namespace, _] => match dashed_ipv4(address) {
                None => Answer::NxDomain(soa),
                Some(ip) if matches!(qtype, RecordType::A | RecordType::ANY) => Answer::Found {
                    answers: vec![Record::from_rdata(
                        name.to_lowercase(),
                        self.zone.ttl,
                        RData::A(A(ip)),
                    )],
                    additionals: Vec::new(),
                    resolve_externally: None,
                },
                Some(_) => Answer::NoData(soa),
            },
            _ => Answer::NxDomain(soa),
        })
    }

    fn answer_node(&self, name: &Name, node: &Node, qtype: RecordType, depth: usize) -> Answer {
        let ttl = self.zone.ttl;
        let owner = name.to_lowercase();
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let mut resolve_externally = None;
        if let Some(target) = &node.cname {
            answers.push(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::CNAME(CNAME(target.clone())),
            ));
            if !matches!(qtype, RecordType::CNAME | RecordType::ANY) {
                // Follow the alias: inside the zone here, outside it through the server.
                let key = target.to_ascii().trim_end_matches('.').to_owned();
                let inside = key.ends_with(&format!(".{}", self.zone.domain));
                match self.nodes.get(&key) {
                    Some(next) if inside && depth < 8 => {
                        if let Answer::Found {
                            answers: more,
                            additionals: extra,
                            resolve_externally: external,
                        } = self.answer_node(target, next, qtype, depth + 1)
                        {
                            answers.extend(more);
                            additionals.extend(extra);
                            resolve_externally = external;
                        }
                    }
                    _ if !inside => resolve_externally = Some(target.clone()),
                    _ => {}
                }
            }
            return Answer::Found {
                answers,
                additionals,
                resolve_externally,
            };
        }
        let any = qtype == RecordType::ANY;
        if qtype == RecordType::A || any {
            answers.extend(a_records(&owner, node, ttl));
        }
        if qtype == RecordType::SRV || any {
            let weight = srv_weight(node.srv.len());
            for srv in &node.srv {
                let Ok(target) = Name::from_ascii(format!("{}.", srv.target)) else {
                    continue;
                };
                if let Some(target_node) = self.nodes.get(&srv.target) {
                    for record in a_records(&target, target_node, ttl) {
                        if !additionals.contains(&record) {
                            additionals.push(record);
                        }
                    }
                }
                answers.push(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::SRV(SRV::new(0, weight, srv.port, target)),
                ));
            }
        }
        if let (Some((text, txt_ttl)), true) = (&node.txt, qtype == RecordType::TXT || any) {
            answers.push(Record::from_rdata(
                owner.clone(),
                *txt_ttl,
                RData::TXT(TXT::new(vec![text.clone()])),
            ));
        }
        if answers.is_empty() {
            return Answer::NoData(self.zone.soa(self.serial));
        }
        Answer::Found {
            answers,
            additionals,
            resolve_externally,
        }
    }

    /// PTR queries for addresses the index knows; anything else in in-addr.arpa (and every
    /// other name) is forwarded, like CoreDNS's `fallthrough in-addr.arpa`.
    fn lookup_reverse(&self, query: &str, qtype: RecordType) -> Answer {
        let Some(address) = query.strip_suffix(".in-addr.arpa") else {
            return Answer::Forward;
        };
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return Answer::Forward;
        }
        let mut octets = [0u8; 4];
        let labels: Vec<&str> = address.split('.').collect();
        if labels.len() != 4 {
            return Answer::Forward;
        }
        for (octet, label) in octets.iter_mut().rev().zip(&labels) {
            match parse_octet(label) {
                Some(value) => *octet = value,
                None => return Answer::Forward,
            }
        }
        let Some(targets) = self.ptr.get(&Ipv4Addr::from(octets)) else {
            return Answer::Forward;
        };
        let Ok(owner) = Name::from_ascii(format!("{query}.")) else {
            return Answer::Forward;
        };
        let answers = targets
            .iter()
            .filter_map(|target| Name::from_ascii(format!("{target}.")).ok())
            .map(|target| Record::from_rdata(owner.clone(), self.zone.ttl, RData::PTR(PTR(target))))
            .collect();
        Answer::Found {
            answers,
            additionals: Vec::new(),
            resolve_externally: None,
        }
    }
}

/// The index as the server reads it and the watch replaces it.
#[derive(Debug, Clone)]
pub struct SharedIndex(Arc<RwLock<Arc<Index>>>);

impl SharedIndex {
    /// Shares `index`.
    pub fn new(index: Index) -> Self {
        SharedIndex(Arc::new(RwLock::new(Arc::new(index))))
    }

    /// The current index.
    pub fn get(&self) -> Arc<Index> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the index.
    pub fn replace(&self, index: Index) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
    }
}

/// A ready endpoint address of a Service, with the ports of its slice.
#[derive(Debug)]
struct ReadyEndpoint {
    ip: Ipv4Addr,
    /// The endpoint's hostname, else its dashed IP.
    label: String,
    has_hostname: bool,
    ports: Vec<NamedPort>,
}

#[derive(Debug, Clone)]
struct NamedPort {
    name: String,
    protocol: String,
    port: u16,
}

/// The ready endpoints (`ready` unset counts as ready) of IPv4 `slices`, each address once.
fn ready_endpoints(slices: &[&EndpointSlice]) -> Vec<ReadyEndpoint> {
    let mut seen = HashSet::new();
    let mut endpoints = Vec::new();
    for slice in slices {
        let ports: Vec<NamedPort> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|port| {
                Some(NamedPort {
                    name: port.name.clone().filter(|name| !name.is_empty())?,
                    protocol: port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    port: u16::try_from(port.port?).ok()?,
                })
            })
            .collect();
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|conditions| conditions.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            let hostname = endpoint
                .hostname
                .as_deref()
                .map(str::to_ascii_lowercase)
                .filter(|hostname| is_dns_label(hostname));
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<Ipv4Addr>() else {
                    continue;
                };
                let label = hostname.clone().unwrap_or_else(|| dashed(ip));
                if !seen.insert((ip, label.clone())) {
                    continue;
                }
                endpoints.push(ReadyEndpoint {
                    ip,
                    label,
                    has_hostname: hostname.is_some(),
                    ports: ports.clone(),
                });
            }
        }
    }
    endpoints
}

/// The IPv4 cluster IPs of a Service (`clusterIPs`, else `clusterIP`).
fn cluster_ips(service: &Service) -> Vec<Ipv4Addr> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    let mut ips: Vec<Ipv4Addr> = listed.iter().filter_map(|ip| ip.parse().ok()).collect();
    ips.dedup();
    ips
}

fn a_records(owner: &Name, node: &Node, ttl: u32) -> Vec<Record> {
    node.a
        .iter()
        .map(|ip| Record::from_rdata(owner.clone(), ttl, RData::A(A(*ip))))
        .collect()
}

/// Each of `count` equal SRV records gets an equal share of 100 (CoreDNS's weights for
/// records of one priority), rounded down.
fn srv_weight(count: usize) -> u16 {
    u16::try_from(100 / count.max(1)).unwrap_or(100)
}

/// `10-1-2-3` for 10.1.2.3.
fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// The address a pod name like `10-1-2-3` encodes.
fn dashed_ipv4(label: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = label.split('-').collect();
    let [a, b, c, d] = parts.as_slice() else {
        return None;
    };
    Some(Ipv4Addr::new(
        parse_octet(a)?,
        parse_octet(b)?,
        parse_octet(c)?,
        parse_octet(d)?,
    ))
}

/// A decimal octet without sign or leading zeros.
fn parse_octet(text: &str) -> Option<u8> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

/// A label of letters, digits, `-` and `_`, 1 to 63 characters.
fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn zone() -> Zone {
        Zone::new("cluster.local", DEFAULT_TTL).unwrap()
    }

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn service(ns: &str, svc: &str, spec: ServiceSpec) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(svc.into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    fn cluster_ip(ns: &str, svc: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Service {
        service(
            ns,
            svc,
            ServiceSpec {
                type_: Some("ClusterIP".into()),
                cluster_ip: Some(ip.into()),
                cluster_ips: Some(vec![ip.into()]),
                ports: Some(
                    ports
                        .iter()
                        .map(|(name, port, protocol)| ServicePort {
                            name: (!name.is_empty()).then(|| name.to_string()),
                            port: *port,
                            protocol: Some(protocol.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            },
        )
    }

    fn headless(ns: &str, svc: &str) -> Service {
        service(
            ns,
            svc,
            ServiceSpec {
                cluster_ip: Some("None".into()),
                cluster_ips: Some(vec!["None".into()]),
                ..Default::default()
            },
        )
    }

    /// (address, hostname, ready)
    fn slice(
        ns: &str,
        svc: &str,
        name: &str,
        endpoints: &[(&str, Option<&str>, Option<bool>)],
        ports: &[(&str, i32, &str)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: Some([(SERVICE_NAME_LABEL.to_owned(), svc.to_owned())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: endpoints
                .iter()
                .map(|(ip, hostname, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    hostname: hostname.map(str::to_owned),
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name: Some(name.to_string()),
                        port: Some(*port),
                        protocol: Some(protocol.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    fn build(services: &[Service], slices: &[EndpointSlice]) -> Index {
        Index::build(zone(), services, slices, 7)
    }

    fn answers(index: &Index, qname: &str, qtype: RecordType) -> Vec<RData> {
        match index.lookup(&name(qname), qtype) {
            Answer::Found { answers, .. } => answers.into_iter().map(|r| r.data).collect(),
            other => panic!("{qname} {qtype}: expected records, got {other:?}"),
        }
    }

    fn a(ip: &str) -> RData {
        RData::A(A(ip.parse().unwrap()))
    }

    fn assert_nxdomain(index: &Index, qname: &str, qtype: RecordType) {
        match index.lookup(&name(qname), qtype) {
            Answer::NxDomain(soa) => {
                assert_eq!(soa.name, name("cluster.local."));
                assert_eq!(soa.record_type(), RecordType::SOA);
            }
            other => panic!("{qname} {qtype}: expected NXDOMAIN, got {other:?}"),
        }
    }

    fn assert_nodata(index: &Index, qname: &str, qtype: RecordType) {
        match index.lookup(&name(qname), qtype) {
            Answer::NoData(soa) => assert_eq!(soa.record_type(), RecordType::SOA),
            other => panic!("{qname} {qtype}: expected NODATA, got {other:?}"),
        }
    }

    #[test]
    fn cluster_ip_services_answer_their_cluster_ip_for_every_service_type() {
        let mut node_port = cluster_ip("default", "np", "10.96.0.20", &[]);
        node_port.spec.as_mut().unwrap().type_ = Some("NodePort".into());
        let mut balancer = cluster_ip("default", "lb", "10.96.0.21", &[]);
        balancer.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
        let index = build(
            &[
                cluster_ip("default", "web", "10.96.0.10", &[]),
                node_port,
                balancer,
            ],
            &[],
        );
        assert_eq!(
            answers(&index, "web.default.svc.cluster.local.", RecordType::A),
            vec![a("10.96.0.10")]
        );
        assert_eq!(
            answers(&index, "np.default.svc.cluster.local.", RecordType::A),
            vec![a("10.96.0.20")]
        );
        assert_eq!(
            answers(&index, "lb.default.svc.cluster.local.", RecordType::A),
            vec![a("10.96.0.21")]
        );
    }

    #[test]
    fn names_are_case_insensitive_and_answers_use_the_lowercase_owner() {
        let index = build(&[cluster_ip("default", "web", "10.96.0.10", &[])], &[]);
        match index.lookup(&name("WeB.DeFault.SVC.Cluster.Local."), RecordType::A) {
            Answer::Found { answers, .. } => {
                assert_eq!(answers.len(), 1);
                assert_eq!(answers[0].name, name("web.default.svc.cluster.local."));
                assert_eq!(answers[0].ttl, DEFAULT_TTL);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn headless_services_answer_ready_endpoints_only() {
        let index = build(
            &[headless("db", "pg")],
            &[
                slice(
                    "db",
                    "pg",
                    "pg-1",
                    &[
                        ("10.244.1.5", None, Some(true)),
                        ("10.244.1.6", None, None),
                        ("10.244.1.7", None, Some(false)),
                    ],
                    &[],
                ),
                slice("db", "pg", "pg-2", &[("10.244.2.5", None, Some(true))], &[]),
                // Another namespace's Service of the same name does not count.
                slice("other", "pg", "pg-3", &[("10.244.3.5", None, None)], &[]),
            ],
        );
        let mut got = answers(&index, "pg.db.svc.cluster.local.", RecordType::A);
        got.sort_by_key(|r| r.to_string());
        assert_eq!(got, vec![a("10.244.1.5"), a("10.244.1.6"), a("10.244.2.5")]);
    }

    #[test]
    fn headless_services_without_ready_endpoints_do_not_exist() {
        let index = build(
            &[headless("db", "pg")],
            &[slice(
                "db",
                "pg",
                "pg-1",
                &[("10.244.1.7", Some("pg-0"), Some(false))],
                &[("postgres", 5432, "TCP")],
            )],
        );
        assert_nxdomain(&index, "pg.db.svc.cluster.local.", RecordType::A);
        assert_nxdomain(&index, "pg-0.pg.db.svc.cluster.local.", RecordType::A);
        assert_nxdomain(
            &index,
            "_postgres._tcp.pg.db.svc.cluster.local.",
            RecordType::SRV,
        );
    }

    #[test]
    fn endpoints_are_named_by_hostname_else_by_dashed_ip() {
        let index = build(
            &[headless("db", "pg")],
            &[slice(
                "db",
                "pg",
                "pg-1",
                &[
                    ("10.244.1.5", Some("pg-0"), None),
                    ("10.244.1.6", None, None),
                ],
                &[],
            )],
        );
        assert_eq!(
            answers(&index, "pg-0.pg.db.svc.cluster.local.", RecordType::A),
            vec![a("10.244.1.5")]
        );
        assert_eq!(
            answers(&index, "10-244-1-6.pg.db.svc.cluster.local.", RecordType::A),
            vec![a("10.244.1.6")]
        );
        assert_nxdomain(&index, "pg-9.pg.db.svc.cluster.local.", RecordType::A);
    }

    #[test]
    fn external_name_services_are_cnames() {
        let external = service(
            "default",
            "search",
            ServiceSpec {
                type_: Some("ExternalName".into()),
                external_name: Some("www.Example.com".into()),
                ..Default::default()
            },
        );
        let index = build(&[external], &[]);
        match index.lookup(&name("search.default.svc.cluster.local."), RecordType::A) {
            Answer::Found {
                answers,
                resolve_externally,
                ..
            } => {
                assert_eq!(
                    answers.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
                    vec![RData::CNAME(CNAME(name("www.example.com.")))]
                );
                assert_eq!(resolve_externally, Some(name("www.example.com.")));
            }
            other => panic!("{other:?}"),
        }
        match index.lookup(
            &name("search.default.svc.cluster.local."),
            RecordType::CNAME,
        ) {
            Answer::Found {
                resolve_externally, ..
            } => assert_eq!(resolve_externally, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cnames_inside_the_zone_are_followed() {
        let alias = service(
            "default",
            "alias",
            ServiceSpec {
                type_: Some("ExternalName".into()),
                external_name: Some("web.default.svc.cluster.local".into()),
                ..Default::default()
            },
        );
        let index = build(
            &[alias, cluster_ip("default", "web", "10.96.0.10", &[])],
            &[],
        );
        assert_eq!(
            answers(&index, "alias.default.svc.cluster.local.", RecordType::A),
            vec![
                RData::CNAME(CNAME(name("web.default.svc.cluster.local."))),
                a("10.96.0.10")
            ]
        );
    }

    #[test]
    fn srv_for_named_ports_of_cluster_ip_services() {
        let index = build(
            &[cluster_ip(
                "default",
                "web",
                "10.96.0.10",
                &[("http", 80, "TCP"), ("dns", 53, "UDP"), ("", 8080, "TCP")],
            )],
            &[],
        );
        match index.lookup(
            &name("_http._tcp.web.default.svc.cluster.local."),
            RecordType::SRV,
        ) {
            Answer::Found {
                answers,
                additionals,
                ..
            } => {
                assert_eq!(
                    answers.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
                    vec![RData::SRV(SRV::new(
                        0,
                        100,
                        80,
                        name("web.default.svc.cluster.local.")
                    ))]
                );
                assert_eq!(
                    additionals
                        .iter()
                        .map(|r| r.data.clone())
                        .collect::<Vec<_>>(),
                    vec![a("10.96.0.10")]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            answers(
                &index,
                "_dns._udp.web.default.svc.cluster.local.",
                RecordType::SRV
            ),
            vec![RData::SRV(SRV::new(
                0,
                100,
                53,
                name("web.default.svc.cluster.local.")
            ))]
        );
        // The protocol must match, and unnamed ports have no SRV record.
        assert_nxdomain(
            &index,
            "_http._udp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        // The `_tcp.<svc>` level exists below the Service name.
        assert_nodata(
            &index,
            "_tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
    }

    #[test]
    fn srv_for_headless_services_targets_each_ready_endpoint_with_equal_weights() {
        let index = build(
            &[headless("db", "pg")],
            &[slice(
                "db",
                "pg",
                "pg-1",
                &[
                    ("10.244.1.5", Some("pg-0"), None),
                    ("10.244.1.6", None, Some(true)),
                    ("10.244.1.7", Some("pg-2"), None),
                    ("10.244.1.8", Some("pg-3"), Some(false)),
                ],
                &[("postgres", 5432, "TCP")],
            )],
        );
        match index.lookup(
            &name("_postgres._tcp.pg.db.svc.cluster.local."),
            RecordType::SRV,
        ) {
            Answer::Found {
                answers,
                additionals,
                ..
            } => {
                let mut got: Vec<RData> = answers.into_iter().map(|r| r.data).collect();
                got.sort_by_key(|r| r.to_string());
                let srv = |target: &str| RData::SRV(SRV::new(0, 33, 5432, name(target)));
                assert_eq!(
                    got,
                    vec![
                        srv("10-244-1-6.pg.db.svc.cluster.local."),
                        srv("pg-0.pg.db.svc.cluster.local."),
                        srv("pg-2.pg.db.svc.cluster.local."),
                    ]
                );
                assert_eq!(additionals.len(), 3, "{additionals:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn srv_weights_share_100() {
        assert_eq!(srv_weight(1), 100);
        assert_eq!(srv_weight(2), 50);
        assert_eq!(srv_weight(3), 33);
        assert_eq!(srv_weight(200), 0);
    }

    #[test]
    fn ptr_for_cluster_ips_and_headless_endpoints_with_hostnames() {
        let index = build(
            &[
                cluster_ip("default", "web", "10.96.0.10", &[]),
                headless("db", "pg"),
            ],
            &[slice(
                "db",
                "pg",
                "pg-1",
                &[
                    ("10.244.1.5", Some("pg-0"), None),
                    ("10.244.1.6", None, None),
                ],
                &[],
            )],
        );
        assert_eq!(
            answers(&index, "10.0.96.10.in-addr.arpa.", RecordType::PTR),
            vec![RData::PTR(PTR(name("web.default.svc.cluster.local.")))]
        );
        assert_eq!(
            answers(&index, "5.1.244.10.IN-ADDR.ARPA.", RecordType::PTR),
            vec![RData::PTR(PTR(name("pg-0.pg.db.svc.cluster.local.")))]
        );
        // Endpoints without a hostname, unknown addresses and other types fall through.
        for (qname, qtype) in [
            ("6.1.244.10.in-addr.arpa.", RecordType::PTR),
            ("1.1.168.192.in-addr.arpa.", RecordType::PTR),
            ("10.0.96.10.in-addr.arpa.", RecordType::A),
            ("96.10.in-addr.arpa.", RecordType::PTR),
        ] {
            assert_eq!(
                index.lookup(&name(qname), qtype),
                Answer::Forward,
                "{qname}"
            );
        }
    }

    #[test]
    fn pod_names_answer_the_address_they_encode() {
        let index = build(&[], &[]);
        assert_eq!(
            answers(
                &index,
                "10-244-1-5.default.pod.cluster.local.",
                RecordType::A
            ),
            vec![a("10.244.1.5")]
        );
        assert_nodata(
            &index,
            "10-244-1-5.default.pod.cluster.local.",
            RecordType::AAAA,
        );
        assert_nxdomain(
            &index,
            "10-244-1-500.default.pod.cluster.local.",
            RecordType::A,
        );
        assert_nxdomain(&index, "web.default.pod.cluster.local.", RecordType::A);
        assert_nxdomain(
            &index,
            "x.10-244-1-5.default.pod.cluster.local.",
            RecordType::A,
        );
        assert_nodata(&index, "default.pod.cluster.local.", RecordType::A);
    }

    #[test]
    fn missing_names_are_nxdomain_and_existing_names_without_the_type_are_nodata() {
        let index = build(&[cluster_ip("default", "web", "10.96.0.10", &[])], &[]);
        assert_nxdomain(&index, "nope.default.svc.cluster.local.", RecordType::A);
        assert_nxdomain(&index, "web.other.svc.cluster.local.", RecordType::A);
        assert_nxdomain(&index, "foo.cluster.local.", RecordType::A);
        assert_nodata(&index, "web.default.svc.cluster.local.", RecordType::AAAA);
        assert_nodata(&index, "web.default.svc.cluster.local.", RecordType::MX);
        // Names above existing ones exist.
        assert_nodata(&index, "default.svc.cluster.local.", RecordType::A);
        assert_nodata(&index, "svc.cluster.local.", RecordType::A);
        assert_nodata(&index, "cluster.local.", RecordType::A);
        match index.lookup(&name("nope.default.svc.cluster.local."), RecordType::A) {
            Answer::NxDomain(soa) => {
                assert_eq!(soa.ttl, DEFAULT_TTL);
                let RData::SOA(soa) = soa.data else {
                    panic!("not an SOA")
                };
                assert_eq!(soa.mname, name("ns.dns.cluster.local."));
                assert_eq!(soa.rname, name("hostmaster.cluster.local."));
                assert_eq!(soa.serial, 7);
                assert_eq!(soa.minimum, DEFAULT_TTL);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn apex_soa_ns_and_schema_version() {
        let index = build(
            &[cluster_ip("kube-system", "kube-dns", "10.96.0.10", &[])],
            &[],
        );
        assert_eq!(answers(&index, "cluster.local.", RecordType::SOA).len(), 1);
        match index.lookup(&name("cluster.local."), RecordType::NS) {
            Answer::Found {
                answers,
                additionals,
                ..
            } => {
                assert_eq!(
                    answers.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
                    vec![RData::NS(NS(name("ns.dns.cluster.local.")))]
                );
                assert_eq!(additionals[0].name, name("ns.dns.cluster.local."));
                assert_eq!(additionals[0].data, a("10.96.0.10"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            answers(&index, "ns.dns.cluster.local.", RecordType::A),
            vec![a("10.96.0.10")]
        );
        assert_eq!(
            answers(&index, "dns-version.cluster.local.", RecordType::TXT),
            vec![RData::TXT(TXT::new(vec!["1.1.0".into()]))]
        );
    }

    #[test]
    fn names_outside_the_zone_are_forwarded_and_an_unsynced_index_is_not_ready() {
        let index = build(&[], &[]);
        assert_eq!(
            index.lookup(&name("example.org."), RecordType::A),
            Answer::Forward
        );
        assert_eq!(
            index.lookup(&name("notcluster.local."), RecordType::A),
            Answer::Forward
        );
        let unsynced = Index::unsynced(zone());
        assert_eq!(
            unsynced.lookup(&name("web.default.svc.cluster.local."), RecordType::A),
            Answer::NotReady
        );
        assert_eq!(
            unsynced.lookup(&name("example.org."), RecordType::A),
            Answer::Forward
        );
    }

    #[test]
    fn the_cluster_domain_is_configurable_and_validated() {
        let zone = Zone::new("Corp.Example.", 5).unwrap();
        assert_eq!(zone.domain(), "corp.example");
        let index = Index::build(
            zone,
            &[cluster_ip("default", "web", "10.96.0.10", &[])],
            &[],
            1,
        );
        match index.lookup(&name("web.default.svc.corp.example."), RecordType::A) {
            Answer::Found { answers, .. } => assert_eq!(answers[0].ttl, 5),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            index.lookup(&name("web.default.svc.cluster.local."), RecordType::A),
            Answer::Forward
        );
        assert!(Zone::new("", 5).is_err());
        assert!(Zone::new("bad domain", 5).is_err());
    }

    #[test]
    fn slices_of_other_address_types_and_unlabelled_slices_are_ignored() {
        let mut v6 = slice("db", "pg", "pg-6", &[("10.244.9.9", None, None)], &[]);
        v6.address_type = "IPv6".into();
        let mut unlabelled = slice("db", "pg", "pg-x", &[("10.244.8.8", None, None)], &[]);
        unlabelled.metadata.labels = None;
        let ready = slice("db", "pg", "pg-1", &[("10.244.1.5", None, None)], &[]);
        let index = build(&[headless("db", "pg")], &[v6, unlabelled, ready]);
        assert_eq!(
            answers(&index, "pg.db.svc.cluster.local.", RecordType::A),
            vec![a("10.244.1.5")]
        );
    }
}
