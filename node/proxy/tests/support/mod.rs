//! What the proxy's kernel tests share.

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
