//! `baton cluster forward`: the API server reachable from the host. It binds its port on the
//! host's 127.0.0.1, then moves into the cluster's network namespace, so every connection it
//! accepts there is relayed to the API server inside.

use std::net::SocketAddr;
use std::path::PathBuf;

use baton_network::NetNs;
use tokio::net::{TcpListener, TcpStream};

/// `baton cluster forward` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ForwardArgs {
    /// The cluster's network namespace.
    #[arg(long)]
    pub netns: PathBuf,
    /// The host address to listen on (`127.0.0.1:PORT`).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The address inside the namespace to relay to.
    #[arg(long)]
    pub to: SocketAddr,
}

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
    let to = args.to;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).map_err(ForwardError::Runtime)?;
        loop {
            let (mut inbound, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors, say: wait for connections to close.
                    tracing::warn!(%err, "accepting a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                match TcpStream::connect(to).await {
                    Ok(mut outbound) => {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                    Err(err) => tracing::warn!(%peer, %to, %err, "cannot reach the API server"),
                }
            });
        }
    })
}
