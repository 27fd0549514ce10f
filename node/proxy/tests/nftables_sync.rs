//! The nftables proxier against the real kernel, as root, in a network namespace the test
//! makes: a full sync, then incremental ones as Services and endpoints come and go, each
//! leaving exactly the chains the rendering asks for.

use baton_network::NetNs;
use baton_nftables::{Family, NftSocket};
use baton_proxy::nftables_rules::{RuleSettings, TABLE, render};
use baton_proxy::nftables_sync::NftablesProxier;
use baton_proxy::service_model::build_state;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

fn service(name: &str, ip: &str, node_port: Option<u16>) -> Service {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "type": if node_port.is_some() { "NodePort" } else { "ClusterIP" },
            "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "nodePort": node_port }],
        },
    }))
    .unwrap()
}

fn slice(service: &str, ready: &[(&str, bool)]) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{service}-abc"), "namespace": "default",
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": ready.iter().map(|(ip, ready)| json!({
            "addresses": [ip], "conditions": { "ready": ready }, "nodeName": "n1",
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn chains(nft: &mut NftSocket) -> Vec<String> {
    let mut chains = nft.chains(Family::Ip, TABLE).unwrap();
    chains.retain(|c| c.starts_with("svc-") || c.starts_with("ext-"));
    chains.sort();
    chains
}

#[test]
fn syncs_apply_exactly_the_rendered_chains() {
    let settings = RuleSettings {
        node_name: "n1".into(),
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
    };
    let namespace = NetNs::create().unwrap();
    namespace
        .run(|| {
            let mut proxier = NftablesProxier::new().unwrap();
            let mut nft = NftSocket::open().unwrap();
            let a = service("a", "10.96.0.10", None);
            let b = service("b", "10.96.0.11", Some(30080));

            let stats = proxier
                .sync(&render(
                    &build_state(
                        std::slice::from_ref(&a),
                        &[slice("a", &[("10.244.1.2", true)])],
                    ),
                    &settings,
                ))
                .unwrap();
            assert!(stats.full);
            assert_eq!(
                chains(&mut nft),
                [
                    "svc-default/a/tcp/http",
                    "svc-default/a/tcp/http__10.244.1.2/8080"
                ]
            );

            // A second Service, without endpoints yet: no chain, a reject element.
            let stats = proxier
                .sync(&render(
                    &build_state(
                        &[a.clone(), b.clone()],
                        &[slice("a", &[("10.244.1.2", true)])],
                    ),
                    &settings,
                ))
                .unwrap();
            assert!(!stats.full);
            assert_eq!(chains(&mut nft).len(), 2);

            // Its endpoints arrive, one unready.
            let slices = [
                slice("a", &[("10.244.1.2", true)]),
                slice("b", &[("10.244.1.3", true), ("10.244.2.4", false)]),
            ];
            let state = build_state(&[a.clone(), b.clone()], &slices);
            proxier.sync(&render(&state, &settings)).unwrap();
            assert_eq!(
                chains(&mut nft),
                [
                    "ext-default/b/tcp/http",
                    "svc-default/a/tcp/http",
                    "svc-default/a/tcp/http__10.244.1.2/8080",
                    "svc-default/b/tcp/http",
                    "svc-default/b/tcp/http__10.244.1.3/8080",
                ]
            );
            let rules = nft.rule_count(Family::Ip, TABLE).unwrap();
            assert_eq!(rules, render(&state, &settings).rule_count());

            // Session affinity on b: a set per endpoint, gone with the affinity.
            let mut sticky_b = b.clone();
            sticky_b.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
            let sticky = render(&build_state(&[a.clone(), sticky_b], &slices), &settings);
            assert_eq!(sticky.affinity_sets.len(), 1);
            proxier.sync(&sticky).unwrap();
            proxier.sync(&render(&state, &settings)).unwrap();
            assert_eq!(nft.rule_count(Family::Ip, TABLE).unwrap(), rules);

            // Service a goes.
            proxier
                .sync(&render(
                    &build_state(std::slice::from_ref(&b), &slices[1..]),
                    &settings,
                ))
                .unwrap();
            assert_eq!(
                chains(&mut nft),
                [
                    "ext-default/b/tcp/http",
                    "svc-default/b/tcp/http",
                    "svc-default/b/tcp/http__10.244.1.3/8080"
                ]
            );

            proxier.clean_up().unwrap();
            assert!(nft.tables(Family::Ip).unwrap().is_empty());
        })
        .unwrap();
}
