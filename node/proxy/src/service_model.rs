//! The pure model kube-proxy works from: Services and EndpointSlices turned into the
//! per-port view the dataplane programs (upstream kube-proxy v1.33 semantics of
//! `pkg/proxy/serviceport.go`, `endpointslicecache.go` and `topology.go`).
//!
//! Baton's proxy is IPv4 single-stack: only IPv4 cluster IPs, external IPs, load-balancer
//! ingress IPs, source ranges and `addressType: IPv4` EndpointSlices are considered. Nothing
//! here talks to the API or the kernel; the proxy's watch loop feeds object snapshots in and
//! hands the resulting [`ProxyState`] to the dataplane.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::debug;

/// Label naming the Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label marking a Service as handled by another proxy; kube-proxy ignores such objects.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller sets on the slices of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The label selector upstream kube-proxy puts on its Service and EndpointSlice watches.
pub const WATCH_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
/// Session affinity timeout the API server defaults `clientIP.timeoutSeconds` to (3 hours).
pub const DEFAULT_SESSION_AFFINITY_SECONDS: u32 = 10_800;

/// Transport protocol of a service port or endpoint port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `TCP` (also the API default when unset).
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`.
    Sctp,
}

impl Protocol {
    /// Parses an API protocol string; `None` (unset) is TCP, as the API server defaults it.
    /// Unknown values give `None`.
    pub fn from_api(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }

    /// The API spelling (`TCP`, `UDP`, `SCTP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Key identifying a service port: namespace, service name, port name and protocol
/// (upstream's `ServicePortName`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortKey {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// The ServicePort's name (`""` when unnamed).
    pub port_name: String,
    /// The ServicePort's protocol.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortKey {
    /// `namespace/name:port`, with `:port` omitted for an unnamed port, as upstream prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        Ok(())
    }
}

/// One service port as the dataplane programs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// The ServicePort's name (`""` when unnamed).
    pub port_name: String,
    /// The ServicePort's protocol.
    pub protocol: Protocol,
    /// The Service's IPv4 cluster IP (the IPv4 entry of `spec.clusterIPs`, or `spec.clusterIP`
    /// when that list is empty). Validation allows at most one per family.
    pub cluster_ip: Ipv4Addr,
    /// The ServicePort's `port`.
    pub port: u16,
    /// The ServicePort's `nodePort`, only for types NodePort and LoadBalancer and when allocated.
    pub node_port: Option<u16>,
    /// `Some(timeout)` when `sessionAffinity` is `ClientIP` (timeout defaults to 10800 s).
    pub session_affinity_seconds: Option<u32>,
    /// `externalTrafficPolicy: Local` on an externally accessible Service (NodePort,
    /// LoadBalancer, or ClusterIP with external IPs), as upstream's `ExternalPolicyLocal`.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// The IPv4 entries of `spec.externalIPs`.
    pub external_ips: Vec<Ipv4Addr>,
    /// The IPv4 `status.loadBalancer.ingress[].ip` values in VIP mode (`ipMode` unset or `VIP`).
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// The IPv4 `spec.loadBalancerSourceRanges` (whitespace trimmed); empty means no restriction.
    pub load_balancer_source_ranges: Vec<Ipv4Net>,
    /// `spec.healthCheckNodePort` for a LoadBalancer Service with external policy Local.
    pub health_check_node_port: Option<u16>,
}

impl ServicePortInfo {
    /// The key this port is stored under in [`ProxyState`].
    pub fn key(&self) -> ServicePortKey {
        ServicePortKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            port_name: self.port_name.clone(),
            protocol: self.protocol,
        }
    }

    /// Reachable by something other than the cluster IP (node port, external IP or
    /// load-balancer IP).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Whether some traffic to this port uses "Cluster" policy endpoints: internal policy
    /// Cluster, or any external access (external policy Local still needs Cluster endpoints
    /// for traffic from inside the cluster to external addresses).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// Whether some traffic to this port uses "Local" policy endpoints.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }
}

/// One backend of a service port, from an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's (first) address.
    pub ip: Ipv4Addr,
    /// The port number from the slice's matching port.
    pub port: u16,
    /// `conditions.ready` (unset means true).
    pub ready: bool,
    /// `conditions.serving` (unset means true, as the v1 API documents).
    pub serving: bool,
    /// `conditions.terminating` (unset means false).
    pub terminating: bool,
    /// The node hosting the endpoint, when known.
    pub node_name: Option<String>,
}

impl Endpoint {
    /// Whether the endpoint runs on `node_name` (never true for an empty node name).
    pub fn is_local(&self, node_name: &str) -> bool {
        !node_name.is_empty() && self.node_name.as_deref() == Some(node_name)
    }

    /// Whether this endpoint can take traffic when no ready endpoint exists.
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// Preference when the same `ip:port` appears in several slices: ready, then serving.
    fn rank(&self) -> (bool, bool) {
        (self.ready, self.serving)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// Parses an IPv4 address the way upstream's `ParseIPSloppy` accepts it: leading zeros are
/// decimal, and an IPv4-mapped IPv6 address counts as IPv4.
fn parse_ipv4(value: &str) -> Option<Ipv4Addr> {
    if let Ok(ip) = value.parse::<Ipv4Addr>() {
        return Some(ip);
    }
    if let Ok(ip) = value.parse::<Ipv6Addr>() {
        return ip.to_ipv4_mapped();
    }
    let mut octets = [0u8; 4];
    let mut parts = value.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// Parses an IPv4 CIDR (sloppy address, host bits masked off as Go's `ParseCIDR` does).
fn parse_ipv4_cidr(value: &str) -> Option<Ipv4Net> {
    let (ip, prefix) = value.split_once('/')?;
    let ip = parse_ipv4(ip)?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Ipv4Net::new(ip, prefix.parse().ok()?)
        .ok()
        .map(|net| net.trunc())
}

/// A port number from the API, when it is in 1..=65535.
fn api_port(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|port| *port != 0)
}

/// The Service's IPv4 cluster IP, or `None` for headless (`None`), unset or IPv6-only.
fn ipv4_cluster_ip(service: &Service) -> Option<Ipv4Addr> {
    let spec = service.spec.as_ref()?;
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if cluster_ip.is_empty() || cluster_ip == "None" {
        return None;
    }
    match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().find_map(|ip| parse_ipv4(ip)),
        _ => parse_ipv4(cluster_ip),
    }
}

/// The service ports kube-proxy programs for `service`.
///
/// Skips headless Services (`clusterIP: None`), ExternalName Services and Services without
/// an IPv4 cluster IP, and ports with an unknown protocol or an invalid port number.
pub fn service_ports(service: &Service) -> Vec<ServicePortInfo> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if service_type == "ExternalName" {
        return Vec::new();
    }
    let Some(cluster_ip) = ipv4_cluster_ip(service) else {
        debug!(service = %format_args!("{namespace}/{name}"), "no IPv4 cluster IP; skipping");
        return Vec::new();
    };

    let has_node_ports = matches!(service_type, "NodePort" | "LoadBalancer");
    let external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| parse_ipv4(ip))
        .collect();
    let externally_reachable_type = has_node_ports
        || (service_type == "ClusterIP"
            && !spec.external_ips.as_deref().unwrap_or_default().is_empty());
    let external_policy_local =
        externally_reachable_type && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let session_affinity_seconds =
        (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|config| config.client_ip.as_ref())
                .and_then(|client_ip| client_ip.timeout_seconds)
                .and_then(|seconds| u32::try_from(seconds).ok())
                .filter(|seconds| *seconds > 0)
                .unwrap_or(DEFAULT_SESSION_AFFINITY_SECONDS)
        });
    let load_balancer_ips: Vec<Ipv4Addr> = service
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|ingress| matches!(ingress.ip_mode.as_deref(), None | Some("VIP")))
        .filter_map(|ingress| ingress.ip.as_deref().and_then(parse_ipv4))
        .collect();
    let load_balancer_source_ranges: Vec<Ipv4Net> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|range| parse_ipv4_cidr(range.trim()))
        .collect();
    let health_check_node_port = if service_type == "LoadBalancer" && external_policy_local {
        spec.health_check_node_port.and_then(api_port)
    } else {
        None
    };

    let port_info = |port: &ServicePort| -> Option<ServicePortInfo> {
        let port_name = port.name.clone().unwrap_or_default();
        let Some(protocol) = Protocol::from_api(port.protocol.as_deref()) else {
            debug!(service = %format_args!("{namespace}/{name}"), port = %port_name, protocol = ?port.protocol, "unknown protocol; skipping port");
            return None;
        };
        Some(ServicePortInfo {
            namespace: namespace.clone(),
            name: name.clone(),
            port_name,
            protocol,
            cluster_ip,
            port: api_port(port.port)?,
            node_port: if has_node_ports {
                port.node_port.and_then(api_port)
            } else {
                None
            },
            session_affinity_seconds,
            external_policy_local,
            internal_policy_local,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            health_check_node_port,
        })
    };
    spec.ports.iter().flatten().filter_map(port_info).collect()
}

/// The endpoints of one Service's slices, grouped by (port name, protocol).
///
/// Only `addressType: IPv4` slices count, and of each endpoint its first address. Unset
/// conditions read as upstream reads them: ready true, serving true, terminating false. Slice
/// ports without a number are ignored; an unset port name is `""`. The same `ip:port` seen in
/// several slices is kept once, preferring a ready copy, then a serving one (upstream keeps
/// the local copy instead; readiness is the more useful tie-breaker and cannot flap). Each
/// list is sorted by address and port.
pub fn endpoints_by_port<E: Borrow<EndpointSlice>>(
    slices: &[E],
) -> BTreeMap<(String, Protocol), Vec<Endpoint>> {
    let mut ordered: Vec<&EndpointSlice> = slices
        .iter()
        .map(Borrow::borrow)
        .filter(|slice| slice.address_type == "IPv4")
        .collect();
    // Slice order must not change which duplicate wins among equals.
    ordered.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let mut by_port: BTreeMap<(String, Protocol), BTreeMap<(Ipv4Addr, u16), Endpoint>> =
        BTreeMap::new();
    for slice in ordered {
        for slice_port in slice.ports.iter().flatten() {
            let Some(number) = slice_port.port.and_then(api_port) else {
                continue;
            };
            let Some(protocol) = Protocol::from_api(slice_port.protocol.as_deref()) else {
                continue;
            };
            let port_name = slice_port.name.clone().unwrap_or_default();
            let set = by_port.entry((port_name, protocol)).or_default();
            for endpoint in &slice.endpoints {
                let Some(ip) = endpoint.addresses.first().and_then(|ip| parse_ipv4(ip)) else {
                    continue;
                };
                let conditions = endpoint.conditions.as_ref();
                let candidate = Endpoint {
                    ip,
                    port: number,
                    ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                    serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                    terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                    node_name: endpoint.node_name.clone().filter(|node| !node.is_empty()),
                };
                match set.get(&(ip, number)) {
                    Some(existing) if existing.rank() >= candidate.rank() => {}
                    _ => {
                        set.insert((ip, number), candidate);
                    }
                }
            }
        }
    }
    by_port
        .into_iter()
        .filter(|(_, set)| !set.is_empty())
        .map(|(key, set)| (key, set.into_values().collect()))
        .collect()
}

/// Which endpoints the cluster-traffic and local-traffic paths of one service port use on
/// one node (upstream's `CategorizeEndpoints`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CategorizedEndpoints {
    /// Endpoints for "Cluster" policy traffic; empty when the port never uses Cluster policy.
    pub cluster: Vec<Endpoint>,
    /// Endpoints on this node for "Local" policy traffic; empty when the port never uses
    /// Local policy.
    pub local: Vec<Endpoint>,
    /// Every endpoint this node may send traffic to (union of `cluster` and `local`).
    pub all_reachable: Vec<Endpoint>,
    /// Whether the port has a usable endpoint anywhere in the cluster (may be true while
    /// `all_reachable` is empty, e.g. Local policy with only remote endpoints).
    pub has_any_endpoints: bool,
}

impl CategorizedEndpoints {
    /// The endpoints traffic from inside the cluster goes to (to the cluster IP), by the
    /// port's internal traffic policy.
    pub fn internal(&self, info: &ServicePortInfo) -> &[Endpoint] {
        if info.internal_policy_local {
            &self.local
        } else {
            &self.cluster
        }
    }

    /// The endpoints traffic from outside goes to (external IPs, load-balancer IPs, node
    /// ports), by the port's external traffic policy.
    pub fn external(&self, info: &ServicePortInfo) -> &[Endpoint] {
        if info.external_policy_local {
            &self.local
        } else {
            &self.cluster
        }
    }
}

/// Splits `endpoints` into the sets the dataplane programs for `info` on `node_name`.
///
/// "Usable" means ready; when no ready endpoint exists, serving-and-terminating endpoints are
/// used instead (decided separately for the cluster and the local set). Topology hints and
/// `trafficDistribution` are ignored: Baton's proxy does not do topology-aware routing, so
/// every ready endpoint is a cluster endpoint.
pub fn categorize(
    info: &ServicePortInfo,
    endpoints: &[Endpoint],
    node_name: &str,
) -> CategorizedEndpoints {
    let mut result = CategorizedEndpoints::default();
    if endpoints.is_empty() {
        return result;
    }
    let select = |keep: &dyn Fn(&Endpoint) -> bool| -> Vec<Endpoint> {
        endpoints.iter().filter(|ep| keep(ep)).cloned().collect()
    };

    if info.uses_cluster_endpoints() {
        result.cluster = select(&|ep| ep.ready);
        if result.cluster.is_empty() {
            result.cluster = select(&Endpoint::serving_terminating);
        }
        result.has_any_endpoints = !result.cluster.is_empty();
    }

    if info.uses_local_endpoints() {
        result.has_any_endpoints |= endpoints
            .iter()
            .any(|ep| ep.ready || ep.serving_terminating());
        let local_ready = select(&|ep| ep.ready && ep.is_local(node_name));
        result.local = if local_ready.is_empty() {
            select(&|ep| ep.serving_terminating() && ep.is_local(node_name))
        } else {
            local_ready
        };
    }

    let mut all: Vec<Endpoint> = result.cluster.clone();
    for ep in &result.local {
        if !all
            .iter()
            .any(|seen| seen.ip == ep.ip && seen.port == ep.port)
        {
            all.push(ep.clone());
        }
    }
    all.sort_by_key(|ep| (ep.ip, ep.port));
    result.all_reachable = all;
    result
}

/// The whole desired state for one node: every service port with its endpoints, ordered by
/// key so the dataplane renders the same rules for the same input.
#[derive(Clone, Debug, Default)]
pub struct ProxyState {
    /// Service ports with their endpoints (empty when the Service has none).
    pub services: BTreeMap<ServicePortKey, (ServicePortInfo, Vec<Endpoint>)>,
    /// The service ports [`ProxyState::update_service`] touched since
    /// [`ProxyState::mark_applied`]; `None` (a state built whole, or never applied) means
    /// unknown, and a dataplane compares every port. Changes made to `services` directly are
    /// not tracked.
    touched: Option<BTreeSet<ServicePortKey>>,
}

impl PartialEq for ProxyState {
    fn eq(&self, other: &Self) -> bool {
        self.services == other.services
    }
}

impl Eq for ProxyState {}

/// Whether `labels` carry `key` (objects kube-proxy's watch selector excludes).
fn has_label(labels: Option<&BTreeMap<String, String>>, key: &str) -> bool {
    labels.is_some_and(|labels| labels.contains_key(key))
}

/// Joins Services and EndpointSlices into the desired [`ProxyState`].
///
/// A slice belongs to the Service named by its `kubernetes.io/service-name` label in the same
/// namespace; its ports match service ports by port name and protocol. Objects excluded by
/// [`WATCH_LABEL_SELECTOR`] are skipped here too, so the result does not depend on the watch
/// having used it.
pub fn build_state<S: Borrow<Service>, E: Borrow<EndpointSlice>>(
    services: &[S],
    slices: &[E],
) -> ProxyState {
    let mut slices_by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices.iter().map(Borrow::borrow) {
        let labels = slice.metadata.labels.as_ref();
        if has_label(labels, LABEL_SERVICE_PROXY_NAME) || has_label(labels, LABEL_HEADLESS) {
            continue;
        }
        let Some(service_name) = labels.and_then(|labels| labels.get(LABEL_SERVICE_NAME)) else {
            continue;
        };
        if service_name.is_empty() {
            continue;
        }
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("");
        slices_by_service
            .entry((namespace, service_name.as_str()))
            .or_default()
            .push(slice);
    }

    let mut state = ProxyState::default();
    for service in services.iter().map(Borrow::borrow) {
        if has_label(service.metadata.labels.as_ref(), LABEL_SERVICE_PROXY_NAME) {
            continue;
        }
        let ports = service_ports(service);
        if ports.is_empty() {
            continue;
        }
        let namespace = service.metadata.namespace.as_deref().unwrap_or("");
        let name = service.metadata.name.as_deref().unwrap_or("");
        let mut endpoints = slices_by_service
            .get(&(namespace, name))
            .map(|slices| endpoints_by_port(slices.as_slice()))
            .unwrap_or_default();
        for info in ports {
            let backends = endpoints
                .remove(&(info.port_name.clone(), info.protocol))
                .unwrap_or_default();
            state.services.insert(info.key(), (info, backends));
        }
    }
    state
}

/// The Service a slice belongs to: (namespace, name), unless the watch selector excludes it.
pub fn slice_service(slice: &EndpointSlice) -> Option<(String, String)> {
    let labels = slice.metadata.labels.as_ref();
    if has_label(labels, LABEL_SERVICE_PROXY_NAME) || has_label(labels, LABEL_HEADLESS) {
        return None;
    }
    let name = labels?.get(LABEL_SERVICE_NAME).filter(|n| !n.is_empty())?;
    Some((
        slice.metadata.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

impl ProxyState {
    /// Replaces the ports of Service `namespace/name` with those `service` (`None`: it is
    /// gone) and its `slices` give: the proxy updates only the Services that changed.
    pub fn update_service<E: Borrow<EndpointSlice>>(
        &mut self,
        namespace: &str,
        name: &str,
        service: Option<&Service>,
        slices: &[E],
    ) {
        let first = ServicePortKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
        };
        let stale: Vec<ServicePortKey> = self
            .services
            .range(first..)
            .map(|(key, _)| key)
            .take_while(|k| k.namespace == namespace && k.name == name)
            .cloned()
            .collect();
        for key in stale {
            self.services.remove(&key);
            if let Some(touched) = &mut self.touched {
                touched.insert(key);
            }
        }
        if let Some(service) = service {
            let fresh = build_state(std::slice::from_ref(service), slices);
            if let Some(touched) = &mut self.touched {
                touched.extend(fresh.services.keys().cloned());
            }
            self.services.extend(fresh.services);
        }
    }

    /// Records that a dataplane applied this state: from now on, [`ProxyState::touched`] names
    /// the service ports changed since.
    pub fn mark_applied(&mut self) {
        self.touched = Some(BTreeSet::new());
    }

    /// The service ports changed since [`ProxyState::mark_applied`], when known.
    pub fn touched(&self) -> Option<&BTreeSet<ServicePortKey>> {
        self.touched.as_ref()
    }
}

/// For the renderers' tests: LoadBalancer Service default/web (cluster IP 10.96.0.10, port
/// http 80, node port 30080, load-balancer IP 192.0.2.10) open to 10.1.0.0/16 only.
#[cfg(test)]
pub(crate) fn firewalled_load_balancer() -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web", "namespace": "default" },
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.10",
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080 }],
            "loadBalancerSourceRanges": ["10.1.0.0/16"],
        },
        "status": { "loadBalancer": { "ingress": [{ "ip": "192.0.2.10" }] } },
    }))
    .expect("a valid Service")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
        SessionAffinityConfig,
    };
    use k8s_openapi::api::discovery::v1::{
        Endpoint as ApiEndpoint, EndpointConditions, EndpointPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ip(value: &str) -> Ipv4Addr {
        value.parse().unwrap()
    }

    fn port(name: &str, number: i32, node_port: Option<i32>) -> ServicePort {
        ServicePort {
            name: (!name.is_empty()).then(|| name.to_string()),
            port: number,
            node_port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    fn service(name: &str, type_: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                cluster_ip: Some(cluster_ip.into()),
                cluster_ips: Some(vec![cluster_ip.into()]),
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn conditions(
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Option<EndpointConditions> {
        Some(EndpointConditions {
            ready,
            serving,
            terminating,
        })
    }

    fn api_endpoint(
        address: &str,
        node: &str,
        conditions: Option<EndpointConditions>,
    ) -> ApiEndpoint {
        ApiEndpoint {
            addresses: vec![address.into()],
            node_name: Some(node.into()),
            conditions,
            ..Default::default()
        }
    }

    fn slice(
        name: &str,
        service: &str,
        ports: &[(&str, i32)],
        endpoints: Vec<ApiEndpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    LABEL_SERVICE_NAME.to_string(),
                    service.to_string(),
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, number)| EndpointPort {
                        name: Some(name.to_string()),
                        port: Some(*number),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            endpoints,
        }
    }

    fn endpoint(
        address: &str,
        node: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
    ) -> Endpoint {
        Endpoint {
            ip: ip(address),
            port: 8080,
            ready,
            serving,
            terminating,
            node_name: Some(node.into()),
        }
    }

    fn info(internal_local: bool, external_local: bool, node_port: Option<u16>) -> ServicePortInfo {
        ServicePortInfo {
            namespace: "default".into(),
            name: "web".into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            cluster_ip: ip("10.96.0.10"),
            port: 80,
            node_port,
            session_affinity_seconds: None,
            external_policy_local: external_local,
            internal_policy_local: internal_local,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            health_check_node_port: None,
        }
    }

    fn ips(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(|ep| ep.ip.to_string()).collect()
    }

    #[test]
    fn updating_one_service_gives_what_a_full_build_gives() {
        let web = service(
            "web",
            "ClusterIP",
            "10.96.0.10",
            vec![port("http", 80, None)],
        );
        let db = service(
            "db",
            "ClusterIP",
            "10.96.0.11",
            vec![port("pg", 5432, None)],
        );
        let web_slice = |address: &str| {
            slice(
                "web-1",
                "web",
                &[("http", 8080)],
                vec![api_endpoint(address, "n1", None)],
            )
        };
        let db_slice = slice(
            "db-1",
            "db",
            &[("pg", 5432)],
            vec![api_endpoint("10.244.0.9", "n1", None)],
        );
        let mut state = build_state(
            &[web.clone(), db.clone()],
            &[web_slice("10.244.0.2"), db_slice.clone()],
        );

        // web's endpoint moves.
        state.update_service("default", "web", Some(&web), &[web_slice("10.244.0.3")]);
        assert_eq!(
            state,
            build_state(
                &[web.clone(), db.clone()],
                &[web_slice("10.244.0.3"), db_slice.clone()]
            )
        );
        // db goes.
        state.update_service::<EndpointSlice>("default", "db", None, &[]);
        assert_eq!(state, build_state(&[web], &[web_slice("10.244.0.3")]));
    }

    #[test]
    fn headless_external_name_and_ipv6_only_services_are_skipped() {
        assert!(
            service_ports(&service("h", "ClusterIP", "None", vec![port("", 80, None)])).is_empty()
        );
        let mut external = service("e", "ExternalName", "", vec![port("", 80, None)]);
        external.spec.as_mut().unwrap().external_name = Some("example.com".into());
        assert!(service_ports(&external).is_empty());
        assert!(
            service_ports(&service(
                "v6",
                "ClusterIP",
                "fd00::1",
                vec![port("", 80, None)]
            ))
            .is_empty()
        );
        let normal = service_ports(&service(
            "web",
            "ClusterIP",
            "10.96.0.10",
            vec![port("", 80, None)],
        ));
        assert_eq!(normal.len(), 1);
        assert_eq!(normal[0].cluster_ip, ip("10.96.0.10"));
    }

    #[test]
    fn dual_stack_picks_the_ipv4_cluster_ip_and_unknown_protocols_are_dropped() {
        let mut svc = service(
            "web",
            "ClusterIP",
            "fd00::a",
            vec![port("a", 80, None), port("b", 81, None)],
        );
        let spec = svc.spec.as_mut().unwrap();
        spec.cluster_ips = Some(vec!["fd00::a".into(), "10.96.0.7".into()]);
        spec.ports.as_mut().unwrap()[1].protocol = Some("ICMP".into());
        let ports = service_ports(&svc);
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].cluster_ip, ip("10.96.0.7"));
        assert_eq!(ports[0].port_name, "a");
    }

    #[test]
    fn node_ports_only_for_node_port_and_load_balancer_types() {
        let cluster_ip = service_ports(&service(
            "a",
            "ClusterIP",
            "10.96.0.1",
            vec![port("", 80, Some(30080))],
        ));
        assert_eq!(cluster_ip[0].node_port, None);
        let node_port = service_ports(&service(
            "b",
            "NodePort",
            "10.96.0.2",
            vec![port("", 80, Some(30080))],
        ));
        assert_eq!(node_port[0].node_port, Some(30080));
        let lb = service_ports(&service(
            "c",
            "LoadBalancer",
            "10.96.0.3",
            vec![port("", 80, Some(30081))],
        ));
        assert_eq!(lb[0].node_port, Some(30081));
        let lb_without = service_ports(&service(
            "d",
            "LoadBalancer",
            "10.96.0.4",
            vec![port("", 80, None)],
        ));
        assert_eq!(lb_without[0].node_port, None);
    }

    #[test]
    fn session_affinity_defaults_to_three_hours() {
        let mut svc = service("web", "ClusterIP", "10.96.0.1", vec![port("", 80, None)]);
        assert_eq!(service_ports(&svc)[0].session_affinity_seconds, None);
        svc.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        assert_eq!(
            service_ports(&svc)[0].session_affinity_seconds,
            Some(10_800)
        );
        svc.spec.as_mut().unwrap().session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(60),
            }),
        });
        assert_eq!(service_ports(&svc)[0].session_affinity_seconds, Some(60));
        svc.spec.as_mut().unwrap().session_affinity = Some("None".into());
        assert_eq!(service_ports(&svc)[0].session_affinity_seconds, None);
    }

    #[test]
    fn traffic_policies_addresses_and_health_check_port() {
        let mut svc = service(
            "web",
            "LoadBalancer",
            "10.96.0.1",
            vec![port("", 80, Some(30080))],
        );
        let spec = svc.spec.as_mut().unwrap();
        spec.external_traffic_policy = Some("Local".into());
        spec.internal_traffic_policy = Some("Local".into());
        spec.health_check_node_port = Some(31000);
        spec.external_ips = Some(vec!["192.0.2.1".into(), "2001:db8::1".into()]);
        spec.load_balancer_source_ranges =
            Some(vec![" 10.0.0.1/8 ".into(), "2001:db8::/32".into()]);
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![
                    LoadBalancerIngress {
                        ip: Some("198.51.100.1".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        ip: Some("198.51.100.2".into()),
                        ip_mode: Some("Proxy".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        hostname: Some("lb.example".into()),
                        ..Default::default()
                    },
                ]),
            }),
            conditions: None,
        });
        let info = &service_ports(&svc)[0];
        assert!(info.external_policy_local && info.internal_policy_local);
        assert_eq!(info.health_check_node_port, Some(31000));
        assert_eq!(info.external_ips, vec![ip("192.0.2.1")]);
        assert_eq!(info.load_balancer_ips, vec![ip("198.51.100.1")]);
        assert_eq!(
            info.load_balancer_source_ranges,
            vec!["10.0.0.0/8".parse::<Ipv4Net>().unwrap()]
        );

        // External policy only counts on externally accessible Services.
        let mut plain = service("web", "ClusterIP", "10.96.0.1", vec![port("", 80, None)]);
        plain.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        assert!(!service_ports(&plain)[0].external_policy_local);
        plain.spec.as_mut().unwrap().external_ips = Some(vec!["192.0.2.9".into()]);
        assert!(service_ports(&plain)[0].external_policy_local);
        assert_eq!(service_ports(&plain)[0].health_check_node_port, None);
    }

    #[test]
    fn sloppy_addresses_parse_like_upstream() {
        assert_eq!(parse_ipv4("010.001.000.009"), Some(ip("10.1.0.9")));
        assert_eq!(parse_ipv4("::ffff:10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(parse_ipv4("10.0.0"), None);
        assert_eq!(parse_ipv4("10.0.0.256"), None);
        assert_eq!(parse_ipv4("fd00::1"), None);
        assert_eq!(
            parse_ipv4_cidr("10.1.2.3/16"),
            Some("10.1.0.0/16".parse().unwrap())
        );
        assert_eq!(parse_ipv4_cidr("10.1.2.3/33"), None);
    }

    #[test]
    fn condition_defaults_follow_the_v1_api() {
        let slices = [slice(
            "web-1",
            "web",
            &[("", 8080)],
            vec![
                api_endpoint("10.0.0.1", "n1", None),
                api_endpoint("10.0.0.2", "n1", conditions(Some(false), None, None)),
                api_endpoint("10.0.0.3", "n1", conditions(None, Some(false), Some(true))),
            ],
        )];
        let map = endpoints_by_port(&slices);
        let eps = &map[&(String::new(), Protocol::Tcp)];
        assert_eq!(eps.len(), 3);
        assert_eq!(
            (eps[0].ready, eps[0].serving, eps[0].terminating),
            (true, true, false)
        );
        assert_eq!(
            (eps[1].ready, eps[1].serving, eps[1].terminating),
            (false, true, false)
        );
        assert_eq!(
            (eps[2].ready, eps[2].serving, eps[2].terminating),
            (true, false, true)
        );
        assert_eq!(eps[0].port, 8080);
        assert_eq!(eps[0].node_name.as_deref(), Some("n1"));
    }

    #[test]
    fn non_ipv4_slices_and_portless_entries_are_ignored() {
        let mut v6 = slice(
            "web-v6",
            "web",
            &[("", 8080)],
            vec![api_endpoint("fd00::5", "n1", None)],
        );
        v6.address_type = "IPv6".into();
        let mut no_number = slice(
            "web-x",
            "web",
            &[("", 8080)],
            vec![api_endpoint("10.0.0.9", "n1", None)],
        );
        no_number.ports.as_mut().unwrap()[0].port = None;
        let mut empty = slice(
            "web-e",
            "web",
            &[("", 8080)],
            vec![api_endpoint("10.0.0.8", "n1", None)],
        );
        empty.endpoints[0].addresses.clear();
        assert!(endpoints_by_port(&[&v6, &no_number, &empty]).is_empty());
    }

    #[test]
    fn duplicates_across_slices_keep_the_ready_copy() {
        let not_ready = conditions(Some(false), Some(false), Some(true));
        for order in [["a", "b"], ["b", "a"]] {
            let stale = slice(
                order[0],
                "web",
                &[("http", 8080)],
                vec![api_endpoint("10.0.0.1", "n1", not_ready.clone())],
            );
            let fresh = slice(
                order[1],
                "web",
                &[("http", 8080)],
                vec![api_endpoint("10.0.0.1", "n1", None)],
            );
            let map = endpoints_by_port(&[&stale, &fresh]);
            let eps = &map[&("http".to_string(), Protocol::Tcp)];
            assert_eq!(eps.len(), 1);
            assert!(eps[0].ready, "order {order:?}");
        }
    }

    #[test]
    fn named_ports_join_service_and_slices() {
        let mut svc = service(
            "web",
            "ClusterIP",
            "10.96.0.1",
            vec![port("http", 80, None), port("metrics", 9090, None)],
        );
        svc.spec
            .as_mut()
            .unwrap()
            .ports
            .as_mut()
            .unwrap()
            .push(ServicePort {
                name: Some("dns".into()),
                port: 53,
                protocol: Some("UDP".into()),
                ..Default::default()
            });
        let slices = vec![
            slice(
                "web-1",
                "web",
                &[("http", 8080), ("metrics", 9100)],
                vec![api_endpoint("10.0.0.1", "n1", None)],
            ),
            slice(
                "web-2",
                "web",
                &[("http", 8080)],
                vec![api_endpoint("10.0.0.2", "n2", None)],
            ),
            slice(
                "other-1",
                "other",
                &[("http", 8080)],
                vec![api_endpoint("10.0.0.3", "n1", None)],
            ),
        ];
        let state = build_state(&[svc], &slices);
        assert_eq!(state.services.len(), 3);
        let key = |port_name: &str, protocol| ServicePortKey {
            namespace: "default".into(),
            name: "web".into(),
            port_name: port_name.into(),
            protocol,
        };
        let (info, http) = &state.services[&key("http", Protocol::Tcp)];
        assert_eq!(info.port, 80);
        assert_eq!(ips(http), ["10.0.0.1", "10.0.0.2"]);
        assert!(http.iter().all(|ep| ep.port == 8080));
        let (_, metrics) = &state.services[&key("metrics", Protocol::Tcp)];
        assert_eq!(ips(metrics), ["10.0.0.1"]);
        assert_eq!(metrics[0].port, 9100);
        // A UDP port gets nothing from TCP slice ports of another name.
        assert!(state.services[&key("dns", Protocol::Udp)].1.is_empty());
        assert_eq!(key("http", Protocol::Tcp).to_string(), "default/web:http");
        assert_eq!(key("", Protocol::Tcp).to_string(), "default/web");
    }

    #[test]
    fn build_state_honours_the_watch_selector_labels_and_namespaces() {
        let mut proxied_elsewhere =
            service("skip", "ClusterIP", "10.96.0.2", vec![port("", 80, None)]);
        proxied_elsewhere.metadata.labels = Some(BTreeMap::from([(
            LABEL_SERVICE_PROXY_NAME.to_string(),
            "other".to_string(),
        )]));
        let web = service("web", "ClusterIP", "10.96.0.1", vec![port("", 80, None)]);
        let mut foreign = slice(
            "web-x",
            "web",
            &[("", 8080)],
            vec![api_endpoint("10.0.0.9", "n1", None)],
        );
        foreign.metadata.namespace = Some("other".into());
        let own = slice(
            "web-1",
            "web",
            &[("", 8080)],
            vec![api_endpoint("10.0.0.1", "n1", None)],
        );
        let state = build_state(&[&proxied_elsewhere, &web], &[&foreign, &own]);
        assert_eq!(state.services.len(), 1);
        let (_, eps) = state.services.values().next().unwrap();
        assert_eq!(ips(eps), ["10.0.0.1"]);
    }

    #[test]
    fn cluster_traffic_falls_back_to_serving_terminating_endpoints() {
        let eps = [
            endpoint("10.0.0.1", "n1", false, true, true),
            endpoint("10.0.0.2", "n2", false, false, true),
            endpoint("10.0.0.3", "n2", false, false, false),
        ];
        let got = categorize(&info(false, false, None), &eps, "n1");
        assert_eq!(ips(&got.cluster), ["10.0.0.1"]);
        assert!(got.local.is_empty());
        assert_eq!(ips(&got.all_reachable), ["10.0.0.1"]);
        assert!(got.has_any_endpoints);

        // Once any endpoint is ready, terminating ones are not used.
        let mut with_ready = eps.to_vec();
        with_ready.push(endpoint("10.0.0.4", "n2", true, true, false));
        let got = categorize(&info(false, false, None), &with_ready, "n1");
        assert_eq!(ips(&got.cluster), ["10.0.0.4"]);

        let none_usable = [endpoint("10.0.0.3", "n2", false, false, false)];
        let got = categorize(&info(false, false, None), &none_usable, "n1");
        assert!(got.cluster.is_empty() && !got.has_any_endpoints);
    }

    #[test]
    fn internal_traffic_policy_local_selects_this_nodes_endpoints() {
        let eps = [
            endpoint("10.0.0.1", "n1", true, true, false),
            endpoint("10.0.0.2", "n2", true, true, false),
            endpoint("10.0.0.3", "n1", false, true, true),
        ];
        let got = categorize(&info(true, false, None), &eps, "n1");
        assert!(
            got.cluster.is_empty(),
            "internal Local with no external access uses no cluster set"
        );
        assert_eq!(ips(&got.local), ["10.0.0.1"]);
        assert_eq!(ips(&got.all_reachable), ["10.0.0.1"]);

        // No local endpoint here: nothing reachable, but the service has endpoints elsewhere.
        let got = categorize(&info(true, false, None), &eps, "n3");
        assert!(got.local.is_empty() && got.all_reachable.is_empty());
        assert!(got.has_any_endpoints);

        // Local falls back to this node's serving-terminating endpoints independently.
        let only_terminating_here = [eps[1].clone(), eps[2].clone()];
        let got = categorize(&info(true, false, None), &only_terminating_here, "n1");
        assert_eq!(ips(&got.local), ["10.0.0.3"]);
    }

    #[test]
    fn external_policy_local_keeps_cluster_endpoints_and_merges_reachable() {
        let eps = [
            endpoint("10.0.0.1", "n1", false, true, true),
            endpoint("10.0.0.2", "n2", true, true, false),
        ];
        let got = categorize(&info(false, true, Some(30080)), &eps, "n1");
        assert_eq!(ips(&got.cluster), ["10.0.0.2"]);
        assert_eq!(ips(&got.local), ["10.0.0.1"]);
        assert_eq!(ips(&got.all_reachable), ["10.0.0.1", "10.0.0.2"]);
        // Without any external access, external policy Local has no effect.
        let got = categorize(&info(false, true, None), &eps, "n1");
        assert!(got.local.is_empty());
        assert_eq!(ips(&got.all_reachable), ["10.0.0.2"]);
    }
}
