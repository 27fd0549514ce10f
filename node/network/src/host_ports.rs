//! Pod host ports (`containers[].ports[].hostPort`), as the CNI portmap plugin provides them
//! upstream: traffic to one of the node's own addresses (or the port's `hostIP`) on the host
//! port is sent to the pod's address and container port. One nftables table of its own,
//! replaced whole (atomically) whenever a pod with host ports comes or goes, with the rules in
//! the prerouting (traffic from outside) and output (traffic from the node itself) NAT hooks.
//! A pod reaching its own host port through the node's address (hairpin) is masqueraded in
//! postrouting, as portmap's hairpin rule does: otherwise its own answer would come from its
//! own address and not match the connection it made.

use std::net::Ipv4Addr;

use baton_nftables::{
    ApplyBatchError, BaseChain, Batch, CmpOp, Expr, Family, Hook, NftSocket, reg32,
};

/// The table's name.
pub const HOST_PORTS_TABLE: &str = "baton-host-ports";
/// `RTN_LOCAL`: what `fib daddr type` reads for the node's own addresses.
const RTN_LOCAL: u32 = 2;

/// One host port of a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPortMapping {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub protocol: u8,
    /// The port's `hostIP`; `None` for every local address.
    pub host_ip: Option<Ipv4Addr>,
    /// The port on the node.
    pub host_port: u16,
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// The container port it leads to.
    pub container_port: u16,
}

/// The batch that makes the table for `mappings` (or removes it when there are none).
pub fn host_ports_batch(mappings: &[HostPortMapping]) -> Batch {
    let mut batch = Batch::new();
    batch.destroy_table(Family::Ip, HOST_PORTS_TABLE);
    if mappings.is_empty() {
        return batch;
    }
    batch.add_table(Family::Ip, HOST_PORTS_TABLE);
    for (chain, hook) in [("prerouting", Hook::Prerouting), ("output", Hook::Output)] {
        let base = BaseChain {
            kind: "nat",
            hook,
            priority: -100,
        };
        batch.add_chain(Family::Ip, HOST_PORTS_TABLE, chain, Some(&base));
        for mapping in mappings {
            let mut rule = match mapping.host_ip {
                Some(ip) => vec![
                    Expr::ip_daddr(reg32(0)),
                    Expr::cmp_ip(reg32(0), CmpOp::Eq, ip),
                ],
                None => vec![
                    Expr::FibDaddrType { dreg: reg32(0) },
                    Expr::Cmp {
                        sreg: reg32(0),
                        op: CmpOp::Eq,
                        data: RTN_LOCAL.to_ne_bytes().to_vec(),
                    },
                ],
            };
            rule.extend([
                Expr::l4proto(reg32(0)),
                Expr::Cmp {
                    sreg: reg32(0),
                    op: CmpOp::Eq,
                    data: vec![mapping.protocol],
                },
                Expr::th_dport(reg32(0)),
                Expr::Cmp {
                    sreg: reg32(0),
                    op: CmpOp::Eq,
                    data: mapping.host_port.to_be_bytes().to_vec(),
                },
                Expr::load_ip(reg32(0), mapping.pod_ip),
                Expr::load_port(reg32(1), mapping.container_port),
                Expr::Dnat {
                    addr_reg: reg32(0),
                    port_reg: Some(reg32(1)),
                },
            ]);
            batch.add_rule(Family::Ip, HOST_PORTS_TABLE, chain, &rule);
        }
    }
    let base = BaseChain {
        kind: "nat",
        hook: Hook::Postrouting,
        priority: 100,
    };
    batch.add_chain(Family::Ip, HOST_PORTS_TABLE, "postrouting", Some(&base));
    let mut pods: Vec<Ipv4Addr> = mappings.iter().map(|m| m.pod_ip).collect();
    pods.sort();
    pods.dedup();
    for pod in pods {
        // From the pod to the pod once the host port's DNAT has sent it back: hairpin.
        let rule = vec![
            Expr::ip_saddr(reg32(0)),
            Expr::cmp_ip(reg32(0), CmpOp::Eq, pod),
            Expr::ip_daddr(reg32(0)),
            Expr::cmp_ip(reg32(0), CmpOp::Eq, pod),
            Expr::Masquerade,
        ];
        batch.add_rule(Family::Ip, HOST_PORTS_TABLE, "postrouting", &rule);
    }
    batch
}

/// Makes the table for `mappings` in the calling thread's network namespace.
pub fn sync_host_ports(mappings: &[HostPortMapping]) -> Result<(), ApplyBatchError> {
    NftSocket::open()?.apply(&host_ports_batch(mappings))
}
