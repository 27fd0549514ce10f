//! `baton cluster forward`: the API server reachable from the host. It binds its port on the
//! host's 127.0.0.1, then moves into the cluster's network namespace, so every connection it
//! accepts there is relayed to an API server inside: the one that took the last connection, or
//! the next control-plane node's when that one does not answer.

use std::net::SocketAddr;
use std::path::PathBuf;

use baton_network::{NetNs, RelayBackends, relay};
use tokio::net::TcpListener;

/// `baton cluster forward` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ForwardArgs {
    /// The cluster's network namespace.
    #[arg(long)]
    pub netns: PathBuf,
    /// The host address to listen on (`127.0.0.1:PORT`).
    #[arg(long)]
    pub listen: SocketAddr,
    /// An address inside the namespace to relay to (repeated: tried in turn).
    #[arg(long, required = true)]
    pub to: Vec<SocketAddr>,
}

/// How long a control-plane node gets to accept a connection before the next is tried.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the forwarder stopped.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The listening socket could not be made.
    #[error("listening on --listen {0}")]
    Listen(SocketAddr, #[source] std::io::Error),
    /// The namespace could not be entered.
    #[error("entering --netns {0}")]
    NetNs(PathBuf, #[source] baton_network::NetNsError),
    /// The runtime could not start.
    #[error("starting the forwarder")]
    Runtime(#[source] std::io::Error),
}

/// Runs the forwarder until killed.
pub fn run_forwarder(args: &ForwardArgs) -> Result<(), ForwardError> {
    let listener = std::net::TcpListener::bind(args.listen)
        .map_err(|err| ForwardError::Listen(args.listen, err))?;
    listener
        .set_nonblocking(true)
        .map_err(|err| ForwardError::Listen(args.listen, err))?;
    // Single-threaded from here on: the whole process moves into the namespace.
    let namespace =
        NetNs::open(&args.netns).map_err(|err| ForwardError::NetNs(args.netns.clone(), err))?;
    namespace
        .enter()
        .map_err(|err| ForwardError::NetNs(args.netns.clone(), err))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ForwardError::Runtime)?;
    let backends = std::sync::Arc::new(RelayBackends::new(args.to.clone(), CONNECT_TIMEOUT));
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).map_err(ForwardError::Runtime)?;
        relay(listener, backends).await;
        Ok(())
    })
}
