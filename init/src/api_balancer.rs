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

/// The API servers behind the local endpoint, in the order they are tried: the cluster
/// endpoint (resolved when it is a name; left out when it does not resolve), then each
/// control-plane member, each once.
pub async fn backends(cluster: &Cluster) -> Vec<SocketAddr> {
    let mut backends = Vec::new();
    if let Some(authority) = cluster
        .endpoint
        .strip_prefix("https://")
        .map(|rest| rest.trim_end_matches('/'))
    {
        match tokio::net::lookup_host(authority).await {
            Ok(found) => backends.extend(found.filter(SocketAddr::is_ipv4).take(1)),
            Err(err) => tracing::warn!(
                endpoint = %cluster.endpoint,
                %err,
                "the cluster endpoint does not resolve; using the control-plane members"
            ),
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
pub async fn start(cluster: &Cluster) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener =
        tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, API_BALANCER_PORT)).await?;
    let backends = backends(cluster).await;
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
    }
}
