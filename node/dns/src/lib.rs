//! `baton dns`: Baton's cluster DNS. It answers the cluster domain from a watch of Services and
//! EndpointSlices ([`watch`] keeps the [`records`] index current) with the semantics of the
//! Kubernetes DNS specification as CoreDNS serves it, and forwards every other query to the
//! upstream resolvers ([`upstreams`], [`forward`]); [`server`] is the hickory-server handler and
//! its UDP and TCP listeners.

pub mod forward;
pub mod records;
pub mod registration;
pub mod server;
pub mod upstreams;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

pub use forward::{DEFAULT_UPSTREAM_TIMEOUT, ForwardQueryError, Forwarder};
pub use records::{Answer, DEFAULT_TTL, Index, InvalidClusterDomainError, SharedIndex, Zone};
pub use server::{ClusterDnsHandler, DnsServer, ServeDnsError, serve};

/// The resolv.conf read for upstreams when no --upstream is given.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Flags of `baton dns`.
#[derive(Debug, Clone, Args)]
pub struct DnsArgs {
    /// Kubeconfig of the server's API client (else $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster domain answered from the API.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Where to serve DNS, over UDP and TCP. Default: port 53 of --node-ip when given (UDP
    /// answers must leave from the address a query came to, which a wildcard socket on a
    /// node with a pod bridge does not do), else 0.0.0.0:53.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// A resolver for names outside the cluster (IP or IP:PORT; repeatable). Default: the
    /// nameservers of /etc/resolv.conf.
    #[arg(long = "upstream", value_parser = upstreams::parse_upstream)]
    pub upstreams: Vec<SocketAddr>,
    /// TTL of the cluster's records, in seconds.
    #[arg(long, default_value_t = DEFAULT_TTL)]
    pub ttl: u32,
    /// How long an upstream has to answer (Go-style duration).
    #[arg(long, default_value = "2s", value_parser = baton_client::parse_duration)]
    pub upstream_timeout: Duration,
    /// This node's address: with it, the server registers the `kube-system/kube-dns` Service
    /// and an EndpointSlice naming itself, so that pods reach it at --cluster-dns-ip.
    #[arg(long)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// This node's name (for its EndpointSlice); default: the machine's hostname.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The `kube-dns` Service's address: upstream's convention is the tenth address of the
    /// service range.
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns_ip: std::net::Ipv4Addr,
}

/// Why the DNS server could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunDnsError {
    /// --cluster-domain is not a domain name.
    #[error(transparent)]
    ClusterDomain(#[from] InvalidClusterDomainError),
    /// /etc/resolv.conf could not be read (and no --upstream was given).
    #[error("read {path} for upstream resolvers")]
    ReadResolvConf {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The API server could not be reached.
    #[error("connect to the API server")]
    Connect(#[from] baton_client::ConnectError),
    /// The listeners could not be opened, or stopped.
    #[error(transparent)]
    Serve(#[from] ServeDnsError),
}

/// Runs the cluster DNS server until a listener fails: it serves at once (SERVFAIL for the
/// cluster domain until the first list of Services and EndpointSlices is in), forwarding the
/// rest upstream.
pub async fn run(args: DnsArgs) -> Result<(), RunDnsError> {
    let zone = Zone::new(&args.cluster_domain, args.ttl)?;
    let configured = if args.upstreams.is_empty() {
        let text =
            std::fs::read_to_string(RESOLV_CONF).map_err(|source| RunDnsError::ReadResolvConf {
                path: RESOLV_CONF.into(),
                source,
            })?;
        upstreams::resolv_conf_nameservers(&text)
    } else {
        args.upstreams.clone()
    };
    let listen = args.listen.unwrap_or_else(|| match args.node_ip {
        Some(ip) => SocketAddr::from((ip, 53)),
        None => SocketAddr::from(([0, 0, 0, 0], 53)),
    });
    let upstreams = upstreams::without_self(configured, listen);
    if upstreams.is_empty() {
        // A cluster without a way out (`baton cluster create`'s network) still serves its own
        // names.
        tracing::warn!("no upstream resolver: names outside the cluster domain get SERVFAIL");
    }
    let index = SharedIndex::new(Index::unsynced(zone.clone()));
    let forwarder = Forwarder::new(upstreams.clone(), args.upstream_timeout);
    let server = serve(listen, index.clone(), forwarder).await?;
    tracing::info!(
        domain = zone.domain(),
        upstreams = ?upstreams,
        address = %server.local_addr(),
        "cluster DNS running"
    );
    let client = baton_client::connect(args.kubeconfig.as_deref(), "dns").await?;
    if let Some(node_ip) = args.node_ip {
        let node_name = args.hostname_override.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_lowercase())
                .unwrap_or_else(|_| "localhost".into())
        });
        tokio::spawn(registration::keep_registered(
            client.clone(),
            args.cluster_dns_ip,
            node_name,
            node_ip,
        ));
    }
    tokio::select! {
        result = server.wait() => result?,
        () = watch::watch_cluster(client, zone, index) => {}
    }
    Ok(())
}
