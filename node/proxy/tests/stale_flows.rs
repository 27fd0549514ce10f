//! UDP flows to an endpoint that went away, against the real kernel in a network namespace the
//! test makes: the kernel keeps translating a UDP client that keeps its source port to the old
//! endpoint until the proxy removes the flow.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use baton_network::{NetNs, Route, RouteSocket};
use baton_proxy::nftables_rules::RuleSettings;
use baton_proxy::nftables_sync::NftablesProxier;
use baton_proxy::service_model::build_state;
use baton_proxy::stale_flows::{StaleUdpFlows, remove_stale_flows};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

fn dns_service() -> Service {
    serde_json::from_value(json!({
        "metadata": { "name": "dns", "namespace": "default" },
        "spec": {
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{ "name": "dns", "port": 53, "protocol": "UDP" }],
        },
    }))
    .unwrap()
}

fn slice(endpoint: &str) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {
            "name": "dns-abc", "namespace": "default",
            "labels": { "kubernetes.io/service-name": "dns" },
        },
        "addressType": "IPv4",
        "ports": [{ "name": "dns", "port": 5353, "protocol": "UDP" }],
        "endpoints": [{ "addresses": [endpoint], "conditions": { "ready": true } }],
    }))
    .unwrap()
}

/// Sends one datagram from `client` to the Service; returns the index of the server that got
/// it.
fn reached(client: &UdpSocket, servers: &[UdpSocket]) -> usize {
    client.send_to(b"query", "10.96.0.10:53").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buffer = [0u8; 64];
    loop {
        if let Some(found) = servers.iter().position(|s| s.recv(&mut buffer).is_ok()) {
            return found;
        }
        assert!(Instant::now() < deadline, "no server got the datagram");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn udp_flows_of_a_gone_endpoint_are_removed() {
    let settings = RuleSettings {
        node_name: "n1".into(),
        cluster_cidr: None,
    };
    let namespace = NetNs::create().unwrap();
    namespace
        .run(|| {
            let mut routes = RouteSocket::open().unwrap();
            for address in ["10.0.0.1/32", "10.0.0.2/32"] {
                routes.add_address(1, address.parse().unwrap()).unwrap();
            }
            routes
                .add_route(&Route {
                    destination: "10.96.0.0/12".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                })
                .unwrap();
            let servers: Vec<UdpSocket> = ["10.0.0.1:5353", "10.0.0.2:5353"]
                .iter()
                .map(|a| {
                    let server = UdpSocket::bind(a).unwrap();
                    server.set_nonblocking(true).unwrap();
                    server
                })
                .collect();
            let client = UdpSocket::bind("0.0.0.0:0").unwrap();
            let service = dns_service();

            let mut proxier = NftablesProxier::new().unwrap();
            let mut flows = StaleUdpFlows::default();
            let mut state = build_state(std::slice::from_ref(&service), &[slice("10.0.0.1")]);
            proxier.sync_state(&state, &settings).unwrap();
            state.mark_applied();
            assert!(flows.update(&state, "n1").is_empty());
            assert_eq!(reached(&client, &servers), 0);

            // The endpoint moves to 10.0.0.2: the rules say so, but the client's flow still
            // goes to 10.0.0.1, which is still listening.
            state.update_service("default", "dns", Some(&service), &[slice("10.0.0.2")]);
            proxier.sync_state(&state, &settings).unwrap();
            state.mark_applied();
            assert_eq!(reached(&client, &servers), 0);

            // The proxy's clean-up removes that flow (and only names what went).
            let gone = flows.update(&state, "n1");
            assert_eq!(gone.len(), 1);
            assert_eq!(
                gone[0]
                    .endpoints
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect::<Vec<_>>(),
                ["10.0.0.1"]
            );
            assert_eq!(remove_stale_flows(&gone).unwrap(), 1);
            assert_eq!(reached(&client, &servers), 1);
            assert_eq!(reached(&client, &servers), 1);
            // Nothing went since: nothing to remove.
            assert!(flows.update(&state, "n1").is_empty());
        })
        .unwrap();
}
