//! Masquerading of pod traffic that leaves the cluster: packets from this node's pod CIDR to an
//! address outside every node's pod CIDR leave with the node's address (so that replies find
//! their way back), while pod-to-pod traffic across nodes keeps its source. One nftables table
//! of its own, replaced whole (atomically) when the set of pod CIDRs changes.

use baton_nftables::{
    ApplyBatchError, BaseChain, Batch, CmpOp, Expr, Family, Hook, NftSocket, Verdict, reg32,
};
use ipnet::Ipv4Net;

/// The table's name.
pub const MASQUERADE_TABLE: &str = "baton-pod-network";

/// `ip <field> & mask == network` as expressions, loading the field with `load`.
fn matches_cidr(load: Expr, cidr: Ipv4Net) -> Vec<Expr> {
    vec![
        load,
        Expr::Bitwise {
            sreg: reg32(0),
            dreg: reg32(0),
            mask: cidr.netmask().octets().to_vec(),
            xor: vec![0; 4],
        },
        Expr::cmp_ip(reg32(0), CmpOp::Eq, cidr.network()),
    ]
}

/// The batch that makes the table: traffic to any of `cluster_cidrs` returns unchanged,
/// traffic from `pod_cidr` to anywhere else is masqueraded.
pub fn masquerade_batch(pod_cidr: Ipv4Net, cluster_cidrs: &[Ipv4Net]) -> Batch {
    let chain = "postrouting";
    let base = BaseChain {
        kind: "nat",
        hook: Hook::Postrouting,
        priority: 100,
    };
    let mut batch = Batch::new();
    batch
        .destroy_table(Family::Ip, MASQUERADE_TABLE)
        .add_table(Family::Ip, MASQUERADE_TABLE)
        .add_chain(Family::Ip, MASQUERADE_TABLE, chain, Some(&base));
    // Each pod CIDR once (the cluster's list usually holds this node's own too).
    let destinations: std::collections::BTreeSet<Ipv4Net> = cluster_cidrs
        .iter()
        .chain(std::iter::once(&pod_cidr))
        .map(Ipv4Net::trunc)
        .collect();
    for cidr in destinations {
        let mut rule = matches_cidr(Expr::ip_daddr(reg32(0)), cidr);
        rule.push(Expr::Verdict(Verdict::Return));
        batch.add_rule(Family::Ip, MASQUERADE_TABLE, chain, &rule);
    }
    let mut rule = matches_cidr(Expr::ip_saddr(reg32(0)), pod_cidr.trunc());
    rule.push(Expr::Masquerade);
    batch.add_rule(Family::Ip, MASQUERADE_TABLE, chain, &rule);
    batch
}

/// Makes the table in the calling thread's network namespace.
pub fn sync_masquerade(
    pod_cidr: Ipv4Net,
    cluster_cidrs: &[Ipv4Net],
) -> Result<(), ApplyBatchError> {
    NftSocket::open()?.apply(&masquerade_batch(pod_cidr, cluster_cidrs))
}

/// Removes the table.
pub fn remove_masquerade() -> Result<(), ApplyBatchError> {
    let mut batch = Batch::new();
    batch.destroy_table(Family::Ip, MASQUERADE_TABLE);
    NftSocket::open()?.apply(&batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_return_per_pod_cidr_then_the_masquerade() {
        let batch = masquerade_batch(
            "10.244.1.0/24".parse().unwrap(),
            &[
                "10.244.2.0/24".parse().unwrap(),
                "10.244.3.0/24".parse().unwrap(),
            ],
        );
        // destroy (an add and a delete, which every kernel takes), table, chain, 3 returns
        // (two others and our own), the masquerade.
        assert_eq!(batch.len(), 8);
        // The node's own CIDR in the cluster's list (as the kubelet passes it) is not
        // returned twice.
        let with_own = masquerade_batch(
            "10.244.1.0/24".parse().unwrap(),
            &[
                "10.244.1.0/24".parse().unwrap(),
                "10.244.2.0/24".parse().unwrap(),
                "10.244.3.0/24".parse().unwrap(),
            ],
        );
        assert_eq!(with_own.len(), 8);
    }
}
