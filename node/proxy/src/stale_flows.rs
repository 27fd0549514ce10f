//! Removes the UDP flows that the current rules would not make, after each sync that changed
//! what UDP Services look like, as upstream kube-proxy's conntrack clean-up does. The kernel
//! translates a flow once, at its first packet, and a UDP flow never ends while its client
//! keeps sending: without this, a client that keeps its source port (a resolver, a metrics
//! agent) keeps reaching an endpoint that went away, or, if it sent before its Service had an
//! endpoint (or before the proxy's first sync), keeps going untranslated.
//!
//! The flows are compared with the current state, not with the last sync, so endpoints that
//! went while the proxy was down are found too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use baton_nftables::{ApplyBatchError, IPPROTO_UDP, NftSocket, TrackedFlow};

use crate::service_model::{Protocol, ProxyState};

/// Where a UDP service port is reached, and the endpoints that may answer for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpPort {
    /// The Service's addresses with the port: the cluster IP, external and load-balancer IPs.
    pub addresses: BTreeSet<(Ipv4Addr, u16)>,
    /// The node port.
    pub node_port: Option<u16>,
    /// The addresses of the endpoints that are serving (ready, or still serving while they
    /// terminate): a flow to one of them stays.
    pub serving: BTreeSet<Ipv4Addr>,
}

impl UdpPort {
    /// Whether `flow`, if it went to this port, is one the current rules would not make: it
    /// was translated to an endpoint that is not serving, or, sent to a Service address, not
    /// translated although the port has an endpoint. (A flow to another host's port that
    /// happens to be this port's node port is not translated and is left alone.)
    fn holds_stale(&self, flow: &TrackedFlow) -> bool {
        let to = (flow.original.destination, flow.original.destination_port);
        let translated = flow.reply.source != flow.original.destination;
        if translated {
            (self.addresses.contains(&to) || self.node_port == Some(to.1))
                && !self.serving.contains(&flow.reply.source)
        } else {
            self.addresses.contains(&to) && !self.serving.is_empty()
        }
    }
}

/// The UDP service ports of `state`.
pub fn udp_ports(state: &ProxyState) -> Vec<UdpPort> {
    let mut ports = Vec::new();
    for (info, endpoints) in state.services.values() {
        if info.protocol != Protocol::Udp {
            continue;
        }
        ports.push(UdpPort {
            addresses: std::iter::once(info.cluster_ip)
                .chain(info.external_ips.iter().copied())
                .chain(info.load_balancer_ips.iter().copied())
                .map(|ip| (ip, info.port))
                .collect(),
            node_port: info.node_port,
            serving: endpoints
                .iter()
                .filter(|e| e.ready || e.serving)
                .map(|e| e.ip)
                .collect(),
        });
    }
    ports
}

/// What a clean-up did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlowCleanUp {
    /// Flows removed.
    pub removed: usize,
    /// Flows whose removal the kernel refused (they are tried again at the next clean-up).
    pub failed: usize,
}

/// Decides when the UDP flows need looking at: at the first sync, and whenever the UDP
/// Services' addresses or serving endpoints changed since the last clean-up (a clean-up reads
/// the kernel's whole table, so it is not done on every sync).
#[derive(Debug, Default)]
pub struct StaleUdpFlows {
    cleaned_for: Option<BTreeMap<BTreeSet<(Ipv4Addr, u16)>, UdpPort>>,
}

impl StaleUdpFlows {
    /// The UDP ports of `state` when their flows need a clean-up (else `None`); call
    /// [`StaleUdpFlows::cleaned`] once it succeeded.
    pub fn due(&self, state: &ProxyState) -> Option<Vec<UdpPort>> {
        let ports = udp_ports(state);
        let now: BTreeMap<_, _> = ports
            .iter()
            .map(|p| (p.addresses.clone(), p.clone()))
            .collect();
        (self.cleaned_for.as_ref() != Some(&now)).then_some(ports)
    }

    /// Records that the flows of `ports` were cleaned up.
    pub fn cleaned(&mut self, ports: &[UdpPort]) {
        self.cleaned_for = Some(
            ports
                .iter()
                .map(|p| (p.addresses.clone(), p.clone()))
                .collect(),
        );
    }
}

/// Removes the tracked UDP flows to `ports` that the current rules would not make (in the
/// calling thread's network namespace). A flow the kernel refuses to remove is counted and
/// the others still go.
pub fn remove_stale_flows(ports: &[UdpPort]) -> Result<FlowCleanUp, ApplyBatchError> {
    let mut done = FlowCleanUp::default();
    if ports.is_empty() {
        return Ok(done);
    }
    let mut socket = NftSocket::open()?;
    for flow in socket.tracked_flows(IPPROTO_UDP)? {
        if !ports.iter().any(|p| p.holds_stale(&flow)) {
            continue;
        }
        match socket.remove_tracked_flow(&flow) {
            Ok(()) => done.removed += 1,
            Err(err) => {
                tracing::debug!(%err, "removing a stale UDP flow");
                done.failed += 1;
            }
        }
    }
    Ok(done)
}
