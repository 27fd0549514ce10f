//! Baton's node API: the gRPC service init serves on TCP port [`NODE_API_PORT`] (there is no
//! shell and no SSH on a node), its generated messages, and a client that connects with
//! mutual TLS, optionally from inside a network namespace (where `process`-provider nodes
//! live). The protocol is proto/node.proto.

pub mod client;

/// The generated messages, client and server of `baton.node.v1`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod proto {
    tonic::include_proto!("baton.node.v1");
}

pub use client::{ClientCredentials, ConnectNodeError, NodeTarget, connect};

/// The node API's TCP port (Talos's apid uses the same one).
pub const NODE_API_PORT: u16 = 50000;
