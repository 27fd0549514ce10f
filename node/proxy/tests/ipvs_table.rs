//! The ipvs mode's netfilter table against the real kernel, as root, in a network namespace
//! the test makes. This host's kernel has no IPVS, but the table is nftables: with the
//! load-balancer IP a local address (as it is on `kube-ipvs0`) and a listener on it standing
//! in for IPVS, the firewall of `loadBalancerSourceRanges` and the rejection of ports no Service
//! serves are what a client sees.

mod support;

use baton_network::NetNs;
use baton_nftables::NftSocket;
use baton_proxy::ipvs_rules::{
    TableElements, netfilter_table, render_ipvs, table_elements, table_update,
};
use baton_proxy::nftables_rules::RuleSettings;
use baton_proxy::service_model::build_state;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use support::{Attempt, connect_from};

fn firewalled_load_balancer(ranges: &[&str]) -> Service {
    serde_json::from_value(json!({
        "metadata": { "name": "web", "namespace": "default" },
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080 }],
            "loadBalancerSourceRanges": ranges,
        },
        "status": { "loadBalancer": { "ingress": [{ "ip": "192.0.2.10" }] } },
    }))
    .unwrap()
}

/// Loads the table a node with `node_address` renders for the Service open to `ranges`.
fn load_table(ranges: &[&str], node_address: &str, settings: &RuleSettings) -> TableElements {
    let state = build_state(&[firewalled_load_balancer(ranges)], &[] as &[EndpointSlice]);
    let wanted = render_ipvs(&state, settings, &[node_address.parse().unwrap()]);
    let elements = table_elements(&wanted);
    NftSocket::open()
        .unwrap()
        .apply(&netfilter_table(&elements, settings))
        .unwrap();
    elements
}

#[test]
fn load_balancer_source_ranges_admit_only_their_clients_in_the_ipvs_mode() {
    // Clients in the pod range are not masqueraded, so the firewall sees them as they are.
    let settings = RuleSettings {
        node_name: "n1".into(),
        cluster_cidr: Some("10.0.0.0/8".parse().unwrap()),
    };
    let namespace = NetNs::create().unwrap();
    namespace
        .run(|| {
            support::loopback_backends(&["10.1.0.5", "10.2.0.5", "192.0.2.10"]);
            let _service = std::net::TcpListener::bind(("192.0.2.10", 80)).unwrap();
            let _host_socket = std::net::TcpListener::bind(("0.0.0.0", 81)).unwrap();
            let lb = "192.0.2.10:80";

            // A node outside the ranges: only clients inside them get through.
            let range = ["10.1.0.0/16"];
            let elements = load_table(&range, "192.168.1.5", &settings);
            assert_eq!(connect_from("10.1.0.5", lb), Attempt::Connected);
            assert_eq!(connect_from("10.2.0.5", lb), Attempt::Dropped);
            assert_eq!(
                connect_from("192.0.2.10", lb),
                Attempt::Dropped,
                "the node's own connection, from the load-balancer address"
            );
            // A port no Service serves on a service address is refused, not handed to the
            // host socket listening on every address.
            assert_eq!(connect_from("10.1.0.5", "192.0.2.10:81"), Attempt::Refused);

            // The range taken out of its set (as an incremental sync does): dropped too.
            let mut removed = TableElements::new();
            removed.insert("firewall-sources", elements["firewall-sources"].clone());
            NftSocket::open()
                .unwrap()
                .apply(&table_update(&removed, &TableElements::new()))
                .unwrap();
            assert_eq!(connect_from("10.1.0.5", lb), Attempt::Dropped);

            // A node inside the ranges: its own connections get through as well.
            load_table(&range, "10.1.2.3", &settings);
            assert_eq!(connect_from("192.0.2.10", lb), Attempt::Connected);
            assert_eq!(connect_from("10.1.0.5", lb), Attempt::Connected);
            assert_eq!(connect_from("10.2.0.5", lb), Attempt::Dropped);

            // Ranges that hold one another and the node's own address (which the kernel's set
            // of ranges would refuse side by side) are loaded aggregated.
            load_table(
                &["10.0.0.0/8", "10.1.0.0/16", "0.0.0.0/0"],
                "10.1.2.3",
                &settings,
            );
            assert_eq!(connect_from("10.2.0.5", lb), Attempt::Connected);
            assert_eq!(connect_from("192.0.2.10", lb), Attempt::Connected);
        })
        .unwrap();
}
