//! What the proxy's kernel tests share.

// Each test file uses a part of it.
#![allow(dead_code)]

use baton_network::{LOOPBACK_INDEX, Route, RouteSocket};
use baton_proxy::nftables_rules::RuleSettings;

/// In the calling thread's (test-made) network namespace: `backends` as addresses on the
/// loopback interface and the service range 10.96.0.0/12 routed to it, so that traffic to a
/// cluster IP meets the proxy's rules and lands on a local backend.
pub fn loopback_backends(backends: &[&str]) {
    let mut routes = RouteSocket::open().unwrap();
    for backend in backends {
        routes
            .add_address(LOOPBACK_INDEX, format!("{backend}/32").parse().unwrap())
            .unwrap();
    }
    routes
        .add_route(&Route {
            destination: "10.96.0.0/12".parse().unwrap(),
            gateway: None,
            interface: Some(LOOPBACK_INDEX),
        })
        .unwrap();
}

/// The rule settings of the tests' node `n1`, without a cluster CIDR.
pub fn node_settings() -> RuleSettings {
    RuleSettings {
        node_name: "n1".into(),
        cluster_cidr: None,
    }
}

/// What became of a TCP connection attempt.
#[derive(Debug, PartialEq)]
pub enum Attempt {
    Connected,
    Refused,
    /// Nothing came back within 300 ms: the packet was dropped.
    Dropped,
}

/// Tries a TCP connection from `source` to `destination`.
pub fn connect_from(source: &str, destination: &str) -> Attempt {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let attempt = socket.connect(destination.parse().unwrap());
        match tokio::time::timeout(std::time::Duration::from_millis(300), attempt).await {
            Ok(Ok(_)) => Attempt::Connected,
            Ok(Err(_)) => Attempt::Refused,
            Err(_) => Attempt::Dropped,
        }
    })
}
