//! UDP flows the current rules would not make, against the real kernel in a network namespace
//! the test makes: the kernel keeps translating a UDP client that keeps its source port to an
//! endpoint that went, or keeps it untranslated if it sent before its Service had an endpoint,
//! until the proxy removes the flow.

mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use baton_network::NetNs;
use baton_proxy::nftables_sync::NftablesProxier;
use baton_proxy::service_model::build_state;
use baton_proxy::stale_flows::{StaleUdpFlows, remove_stale_flows};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

fn udp_service(name: &str, ip: &str, port: u16) -> Service {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{ "name": "dns", "port": port, "protocol": "UDP" }],
        },
    }))
    .unwrap()
}

fn slice(service: &str, endpoint: &str) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{service}-abc"), "namespace": "default",
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": "IPv4",
        "ports": [{ "name": "dns", "port": 5353, "protocol": "UDP" }],
        "endpoints": [{ "addresses": [endpoint], "conditions": { "ready": true } }],
    }))
    .unwrap()
}

/// Sends one datagram from `client` to `to`; returns the index of the server that got it, or
/// `None` when none did within half a second.
fn reached(client: &UdpSocket, to: &str, servers: &[UdpSocket]) -> Option<usize> {
    client.send_to(b"query", to).unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut buffer = [0u8; 64];
    loop {
        if let Some(found) = servers.iter().position(|s| s.recv(&mut buffer).is_ok()) {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn udp_flows_the_rules_would_not_make_are_removed() {
    let settings = support::node_settings();
    let namespace = NetNs::create().unwrap();
    namespace
        .run(|| {
            support::loopback_backends(&["10.0.0.1", "10.0.0.2"]);
            let servers: Vec<UdpSocket> = ["10.0.0.1:5353", "10.0.0.2:5353"]
                .iter()
                .map(|a| {
                    let server = UdpSocket::bind(a).unwrap();
                    server.set_nonblocking(true).unwrap();
                    server
                })
                .collect();
            // One client per flow: each keeps its source port, as a resolver does.
            let clients: Vec<UdpSocket> = (0..3)
                .map(|_| UdpSocket::bind("0.0.0.0:0").unwrap())
                .collect();
            let (a, b, c) = (
                udp_service("a", "10.96.0.10", 53),
                udp_service("b", "10.96.0.11", 53),
                udp_service("c", "10.96.0.12", 53),
            );

            // a and b lead to 10.0.0.1; c has no endpoint yet.
            let mut proxier = NftablesProxier::new().unwrap();
            let mut state = build_state(
                &[a.clone(), b.clone()],
                &[slice("a", "10.0.0.1"), slice("b", "10.0.0.1")],
            );
            proxier.sync_state(&state, &settings).unwrap();
            state.mark_applied();
            let mut flows = StaleUdpFlows::default();
            let ports = flows.due(&state).expect("the first sync cleans up");
            assert_eq!(remove_stale_flows(&ports).unwrap().removed, 0);
            flows.cleaned(&ports);
            assert!(flows.due(&state).is_none(), "nothing changed since");
            assert_eq!(reached(&clients[0], "10.96.0.10:53", &servers), Some(0));
            assert_eq!(reached(&clients[1], "10.96.0.11:53", &servers), Some(0));
            // c's address leads nowhere yet: the flow is tracked untranslated.
            assert_eq!(reached(&clients[2], "10.96.0.12:53", &servers), None);

            // a's endpoint moves to 10.0.0.2 and c gets 10.0.0.2: the rules say so, but the
            // clients' flows stay as they were.
            state.update_service("default", "a", Some(&a), &[slice("a", "10.0.0.2")]);
            state.update_service("default", "c", Some(&c), &[slice("c", "10.0.0.2")]);
            proxier.sync_state(&state, &settings).unwrap();
            state.mark_applied();
            assert_eq!(reached(&clients[0], "10.96.0.10:53", &servers), Some(0));
            assert_eq!(reached(&clients[2], "10.96.0.12:53", &servers), None);

            // A proxy that starts now (nothing remembered) compares the flows with the rules:
            // a's and c's go, b's (its endpoint still serves) stays.
            let restarted = StaleUdpFlows::default();
            let ports = restarted.due(&state).unwrap();
            let done = remove_stale_flows(&ports).unwrap();
            assert_eq!((done.removed, done.failed), (2, 0));
            assert_eq!(reached(&clients[0], "10.96.0.10:53", &servers), Some(1));
            assert_eq!(reached(&clients[1], "10.96.0.11:53", &servers), Some(0));
            assert_eq!(reached(&clients[2], "10.96.0.12:53", &servers), Some(1));
            assert_eq!(remove_stale_flows(&ports).unwrap().removed, 0);
        })
        .unwrap();
}
