//! A worker's local API endpoint: `https://127.0.0.1:7445` (the port of Talos's KubePrism),
//! a TCP relay to the API server of every control-plane node, so that the kubelet, the proxy
//! and DNS on a worker keep talking to the cluster when one control-plane node goes away.
//! TLS passes through untouched: each API server's certificate names 127.0.0.1. The backends
//! are the cluster endpoint first (`cluster.endpoint`, the address the configuration's author
//! chose), then every `cluster.controlPlane` member's API server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_network::{RelayBackends, relay};

use crate::machine_config::Cluster;
use crate::node_services::SECURE_PORT;

/// The local endpoint's port on 127.0.0.1.
pub const API_BALANCER_PORT: u16 = 7445;
/// How long an API server gets to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The API server URL a worker's own services use.
pub fn local_endpoint() -> String {
    format!("https://127.0.0.1:{API_BALANCER_PORT}")
}

/// How long the cluster endpoint's name may take to resolve at boot.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long binding the local endpoint is retried (a previous init's socket closing).
const BIND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the local endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartApiBalancerError {
    /// The port could not be bound.
    #[error("binding 127.0.0.1:{API_BALANCER_PORT}")]
    Bind(#[source] std::io::Error),
    /// Nothing to relay to.
    #[error(
        "no API server to relay to: cluster.endpoint {0} does not resolve and cluster.controlPlane is empty"
    )]
    NoBackend(String),
}

/// The host and port of an `https://HOST[:PORT][/...]` URL (443 when no port is given).
fn host_and_port(endpoint: &str) -> Option<(String, u16)> {
    let rest = endpoint.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.strip_prefix('[') {
        // [IPv6]:PORT
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => 443,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The API servers behind the local endpoint, in the order they are tried: the cluster
/// endpoint (resolved when it is a name; left out, with a warning, when it does not resolve
/// in time), then each control-plane member, each once.
pub async fn backends(cluster: &Cluster) -> Vec<SocketAddr> {
    let mut backends = Vec::new();
    match host_and_port(&cluster.endpoint) {
        Some((host, port)) => {
            let lookup = tokio::net::lookup_host((host.as_str(), port));
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(found)) => {
                    let found: Vec<SocketAddr> = found.collect();
                    // One address, IPv4 first: the cluster network is IPv4.
                    backends.extend(
                        found
                            .iter()
                            .find(|a| a.is_ipv4())
                            .or(found.first())
                            .copied(),
                    );
                }
                Ok(Err(err)) => tracing::warn!(
                    endpoint = %cluster.endpoint, %err,
                    "the cluster endpoint does not resolve; using the control-plane members"
                ),
                Err(_) => tracing::warn!(
                    endpoint = %cluster.endpoint,
                    "the cluster endpoint did not resolve in time; using the control-plane members"
                ),
            }
        }
        None => {
            tracing::warn!(endpoint = %cluster.endpoint, "the cluster endpoint is not an https URL")
        }
    }
    for member in &cluster.control_plane {
        let backend = SocketAddr::from((member.address, SECURE_PORT));
        if !backends.contains(&backend) {
            backends.push(backend);
        }
    }
    backends
}

/// Binds the local endpoint and relays it to `cluster`'s API servers until the returned task
/// is aborted.
pub async fn start(
    cluster: &Cluster,
) -> Result<tokio::task::JoinHandle<()>, StartApiBalancerError> {
    let backends = backends(cluster).await;
    if backends.is_empty() {
        return Err(StartApiBalancerError::NoBackend(cluster.endpoint.clone()));
    }
    let deadline = tokio::time::Instant::now() + BIND_TIMEOUT;
    let listener = loop {
        match tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, API_BALANCER_PORT))
            .await
        {
            Ok(listener) => break listener,
            Err(err) if tokio::time::Instant::now() >= deadline => {
                return Err(StartApiBalancerError::Bind(err));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    tracing::info!(?backends, port = API_BALANCER_PORT, "local API endpoint");
    let backends = Arc::new(RelayBackends::new(backends, CONNECT_TIMEOUT));
    Ok(tokio::spawn(relay(listener, backends)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine_config::ControlPlaneMember;

    #[tokio::test]
    async fn the_endpoint_comes_first_then_every_other_control_plane_member() {
        let mut cluster = crate::machine_config::tests_support::control_plane_config().cluster;
        cluster.endpoint = "https://10.251.0.11:6443".into();
        cluster.control_plane = ["10.251.0.10", "10.251.0.11", "10.251.0.12"]
            .iter()
            .enumerate()
            .map(|(i, ip)| ControlPlaneMember {
                name: format!("control-plane-{}", i + 1),
                address: ip.parse().unwrap(),
            })
            .collect();
        let found: Vec<String> = backends(&cluster)
            .await
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            ["10.251.0.11:6443", "10.251.0.10:6443", "10.251.0.12:6443"]
        );
        // An endpoint on another port (a load balancer in front) is kept as it is.
        cluster.endpoint = "https://127.0.0.1:8443/".into();
        assert_eq!(
            backends(&cluster).await[0],
            "127.0.0.1:8443".parse::<SocketAddr>().unwrap()
        );
        // A name resolves; no port means 443.
        cluster.endpoint = "https://localhost".into();
        assert_eq!(
            backends(&cluster).await[0],
            "127.0.0.1:443".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn endpoint_urls_give_their_host_and_port() {
        let parsed = |url: &str| host_and_port(url).map(|(h, p)| format!("{h} {p}"));
        assert_eq!(
            parsed("https://10.0.0.1:6443"),
            Some("10.0.0.1 6443".into())
        );
        assert_eq!(
            parsed("https://api.example/"),
            Some("api.example 443".into())
        );
        assert_eq!(
            parsed("https://api.example:8443/base"),
            Some("api.example 8443".into())
        );
        assert_eq!(
            parsed("https://[fd00::1]:6443"),
            Some("fd00::1 6443".into())
        );
        assert_eq!(parsed("https://[fd00::1]"), Some("fd00::1 443".into()));
        assert_eq!(parsed("http://10.0.0.1:6443"), None);
        assert_eq!(parsed("https://10.0.0.1:port"), None);
        assert_eq!(parsed("https://"), None);
    }

    #[tokio::test]
    async fn without_any_api_server_the_endpoint_does_not_start() {
        let mut cluster = crate::machine_config::tests_support::control_plane_config().cluster;
        cluster.endpoint = "https://no-such-name.invalid:6443".into();
        cluster.control_plane.clear();
        let err = start(&cluster).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no API server to relay to: cluster.endpoint https://no-such-name.invalid:6443 does not resolve and cluster.controlPlane is empty"
        );
    }
}
