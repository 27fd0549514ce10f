//! Removes the UDP flows whose endpoint a service port no longer uses, after each sync, as
//! upstream kube-proxy's conntrack clean-up does. The kernel translates a flow once, at its
//! first packet, and a UDP flow never ends while its client keeps sending: without this, a
//! client that keeps its source port (a resolver, a metrics agent) keeps reaching the endpoint
//! that went away.
//!
//! Flows of a port that had no endpoint are not looked at: the dataplanes reject or drop those
//! packets before connection tracking records the flow.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use baton_nftables::{ApplyBatchError, IPPROTO_UDP, NftSocket, TrackedFlow};

use crate::service_model::{Protocol, ProxyState, ServicePortKey, categorize};

/// Where a UDP service port is reached, and the endpoints it sends to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpPort {
    /// The Service's addresses with the port: the cluster IP, external and load-balancer IPs.
    pub addresses: BTreeSet<(Ipv4Addr, u16)>,
    /// The node port.
    pub node_port: Option<u16>,
    /// The endpoints' addresses (for [`StaleUdpFlows::update`]'s answer: the ones that went).
    pub endpoints: BTreeSet<Ipv4Addr>,
}

impl UdpPort {
    /// Whether `flow` went to this port and was sent to one of its endpoints.
    pub fn holds(&self, flow: &TrackedFlow) -> bool {
        let to = (flow.original.destination, flow.original.destination_port);
        flow.protocol == IPPROTO_UDP
            && self.endpoints.contains(&flow.reply.source)
            && (self.addresses.contains(&to) || self.node_port == Some(to.1))
    }
}

/// The UDP service ports as last applied, to find the endpoints that went.
#[derive(Debug, Default)]
pub struct StaleUdpFlows {
    applied: BTreeMap<ServicePortKey, UdpPort>,
}

impl StaleUdpFlows {
    /// Records `state` as applied on node `node_name`; returns, per UDP service port that lost
    /// endpoints since the last call (or went), its addresses and the endpoints it lost.
    pub fn update(&mut self, state: &ProxyState, node_name: &str) -> Vec<UdpPort> {
        let mut now = BTreeMap::new();
        for (key, (info, endpoints)) in &state.services {
            if info.protocol != Protocol::Udp {
                continue;
            }
            let addresses = std::iter::once(info.cluster_ip)
                .chain(info.external_ips.iter().copied())
                .chain(info.load_balancer_ips.iter().copied())
                .map(|ip| (ip, info.port))
                .collect();
            let endpoints = categorize(info, endpoints, node_name)
                .all_reachable
                .iter()
                .map(|e| e.ip)
                .collect();
            now.insert(
                key.clone(),
                UdpPort {
                    addresses,
                    node_port: info.node_port,
                    endpoints,
                },
            );
        }
        let mut gone = Vec::new();
        for (key, before) in &self.applied {
            let kept = now.get(key).map(|p| &p.endpoints);
            let lost: BTreeSet<Ipv4Addr> = before
                .endpoints
                .iter()
                .filter(|ip| !kept.is_some_and(|k| k.contains(ip)))
                .copied()
                .collect();
            if !lost.is_empty() {
                gone.push(UdpPort {
                    endpoints: lost,
                    ..before.clone()
                });
            }
        }
        self.applied = now;
        gone
    }
}

/// Removes the tracked UDP flows that `gone` holds (in the calling thread's network
/// namespace); returns how many.
pub fn remove_stale_flows(gone: &[UdpPort]) -> Result<usize, ApplyBatchError> {
    if gone.is_empty() {
        return Ok(0);
    }
    let mut socket = NftSocket::open()?;
    let mut removed = 0;
    for flow in socket.tracked_flows(IPPROTO_UDP)? {
        if gone.iter().any(|port| port.holds(&flow)) {
            socket.remove_tracked_flow(&flow)?;
            removed += 1;
        }
    }
    Ok(removed)
}
