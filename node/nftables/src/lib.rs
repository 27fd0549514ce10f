//! nf_tables over netlink from Rust, written for Baton because the nodes have no `nft` binary
//! and the crates that exist either wrap libnftnl (C) or lack verdict maps: tables, base and
//! regular chains, rules built from the expressions Baton uses ([`Expr`]), sets and verdict
//! maps, all sent as one atomic [`Batch`] through an [`NftSocket`]; and the connection
//! tracking table's flows, listed and removed over the same socket.

mod batch;
mod conntrack;
mod expr;
mod netlink;
mod socket;

pub use batch::{BaseChain, Batch, Element, Family, Hook, SetSpec, data_type};
pub use conntrack::{FlowTuple, TrackedFlow};
pub use expr::{
    CT_STATE_NEW, CT_STATUS_DNAT, CmpOp, Expr, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, MetaKey,
    PayloadBase, REG_VERDICT, RTN_LOCAL, Verdict, reg32,
};
pub use socket::{ApplyBatchError, NftSocket};
