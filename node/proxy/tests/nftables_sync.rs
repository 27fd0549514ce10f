//! The nftables proxier against the real kernel, as root, in a network namespace the test
//! makes: a full sync, then incremental ones as Services and endpoints come and go, each
//! leaving exactly the chains and endpoint maps the rendering asks for.

mod support;

use baton_network::NetNs;
use baton_nftables::{Family, NftSocket};
use baton_proxy::nftables_rules::{ENDPOINT_MAPS, RuleSettings, TABLE, render};
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

/// The `address:port` values of the endpoint maps, sorted.
fn endpoints(nft: &mut NftSocket) -> Vec<String> {
    let maps: Vec<String> = nft
        .sets(Family::Ip, TABLE)
        .unwrap()
        .into_iter()
        .filter(|s| s.starts_with("endpoints-"))
        .collect();
    assert_eq!(maps.len(), usize::from(ENDPOINT_MAPS));
    let mut found: Vec<String> = maps
        .iter()
        .flat_map(|m| nft.set_elements(Family::Ip, TABLE, m).unwrap())
        .map(|e| {
            let data = e.data.unwrap();
            let port = u16::from_be_bytes([data[4], data[5]]);
            format!("{}.{}.{}.{}:{port}", data[0], data[1], data[2], data[3])
        })
        .collect();
    found.sort();
    found
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
                .sync_state(
                    &build_state(
                        std::slice::from_ref(&a),
                        &[slice("a", &[("10.244.1.2", true)])],
                    ),
                    &settings,
                )
                .unwrap();
            assert!(stats.full);
            assert_eq!(chains(&mut nft), ["svc-default/a/tcp/http"]);
            assert_eq!(endpoints(&mut nft), ["10.244.1.2:8080"]);

            // A second Service, without endpoints yet: no chain, a reject element.
            let stats = proxier
                .sync_state(
                    &build_state(
                        &[a.clone(), b.clone()],
                        &[slice("a", &[("10.244.1.2", true)])],
                    ),
                    &settings,
                )
                .unwrap();
            assert!(!stats.full);
            assert_eq!(chains(&mut nft).len(), 1);

            // Its endpoints arrive, one unready.
            let slices = [
                slice("a", &[("10.244.1.2", true)]),
                slice("b", &[("10.244.1.3", true), ("10.244.2.4", false)]),
            ];
            let state = build_state(&[a.clone(), b.clone()], &slices);
            proxier.sync_state(&state, &settings).unwrap();
            assert_eq!(
                chains(&mut nft),
                [
                    "ext-default/b/tcp/http",
                    "svc-default/a/tcp/http",
                    "svc-default/b/tcp/http",
                ]
            );
            // b's endpoint twice: under its cluster IP's chain and its node port's.
            assert_eq!(
                endpoints(&mut nft),
                ["10.244.1.2:8080", "10.244.1.3:8080", "10.244.1.3:8080"]
            );
            let rules = nft.rule_count(Family::Ip, TABLE).unwrap();
            assert_eq!(rules, render(&state, &settings).rule_count());

            // Session affinity on b: upstream's layout, a chain and a set per endpoint, and no
            // map elements for b; all gone with the affinity.
            let mut sticky_b = b.clone();
            sticky_b.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
            let sticky = build_state(&[a.clone(), sticky_b], &slices);
            assert_eq!(render(&sticky, &settings).affinity_sets.len(), 1);
            proxier.sync_state(&sticky, &settings).unwrap();
            assert!(nft.rule_count(Family::Ip, TABLE).unwrap() > rules);
            assert!(chains(&mut nft).contains(&"svc-default/b/tcp/http__10.244.1.3/8080".into()));
            assert_eq!(endpoints(&mut nft), ["10.244.1.2:8080"]);
            proxier.sync_state(&state, &settings).unwrap();
            assert_eq!(nft.rule_count(Family::Ip, TABLE).unwrap(), rules);
            assert_eq!(endpoints(&mut nft).len(), 3);

            // Service a goes.
            proxier
                .sync_state(
                    &build_state(std::slice::from_ref(&b), &slices[1..]),
                    &settings,
                )
                .unwrap();
            assert_eq!(
                chains(&mut nft),
                ["ext-default/b/tcp/http", "svc-default/b/tcp/http"]
            );
            assert_eq!(endpoints(&mut nft), ["10.244.1.3:8080", "10.244.1.3:8080"]);

            proxier.clean_up().unwrap();
            assert!(nft.tables(Family::Ip).unwrap().is_empty());
        })
        .unwrap();
}

#[test]
fn state_syncs_render_only_what_changed_and_match_a_full_render() {
    let settings = support::node_settings();
    let namespace = NetNs::create().unwrap();
    namespace
        .run(|| {
            let mut proxier = NftablesProxier::new().unwrap();
            let mut nft = NftSocket::open().unwrap();
            let services: Vec<Service> = (0..50)
                .map(|i| service(&format!("s{i}"), &format!("10.96.1.{}", i + 1), None))
                .collect();
            let slices = |shift: u8| -> Vec<EndpointSlice> {
                (0..50u8)
                    .map(|i| {
                        let ip = format!("10.244.1.{}", i.wrapping_add(shift) % 250 + 2);
                        slice(&format!("s{i}"), &[(ip.as_str(), true)])
                    })
                    .collect()
            };
            let first = build_state(&services, &slices(0));
            assert!(proxier.sync_state(&first, &settings).unwrap().full);
            let full_rules = nft.rule_count(Family::Ip, TABLE).unwrap();
            assert_eq!(proxier.rule_count(), full_rules);

            // Service s0's endpoint moves: only its element of the endpoints map (and the
            // hairpin set) changes, no rule.
            let mut moved = slices(0);
            moved[0] = slice("s0", &[("10.244.9.9", true)]);
            let next = build_state(&services, &moved);
            let stats = proxier.sync_state(&next, &settings).unwrap();
            assert!(!stats.full);
            assert_eq!(
                stats.changes, 4,
                "element out and in, hairpin out and in: {stats:?}"
            );
            assert_eq!(nft.rule_count(Family::Ip, TABLE).unwrap(), full_rules);
            // The kernel holds what a full render of the new state holds.
            let mut wanted: Vec<String> = render(&next, &settings).chains.into_keys().collect();
            wanted.sort();
            let mut present = nft.chains(Family::Ip, TABLE).unwrap();
            present.retain(|c| !c.starts_with("nat-") && !c.starts_with("filter-"));
            present.sort();
            assert_eq!(present, wanted);
            assert_eq!(
                nft.rule_count(Family::Ip, TABLE).unwrap(),
                proxier.rule_count()
            );

            // One Service goes and another takes its node port, and two swap theirs, in one
            // sync: the kernel accepts it (deletions go before additions).
            let with_ports = |a: u16, b: u16| -> Vec<Service> {
                let mut all = services.clone();
                all.push(service("np-a", "10.96.2.1", Some(a)));
                all.push(service("np-b", "10.96.2.2", Some(b)));
                all
            };
            let np_slices: Vec<EndpointSlice> = moved
                .iter()
                .cloned()
                .chain([
                    slice("np-a", &[("10.244.3.1", true)]),
                    slice("np-b", &[("10.244.3.2", true)]),
                    slice("np-c", &[("10.244.3.3", true)]),
                ])
                .collect();
            proxier
                .sync_state(
                    &build_state(&with_ports(30001, 30002), &np_slices),
                    &settings,
                )
                .unwrap();
            let swapped = build_state(&with_ports(30002, 30001), &np_slices);
            assert!(!proxier.sync_state(&swapped, &settings).unwrap().full);
            let mut taken_over = services.clone();
            taken_over.push(service("np-b", "10.96.2.2", Some(30002)));
            taken_over.push(service("np-c", "10.96.2.3", Some(30001)));
            let taken_over = build_state(&taken_over, &np_slices);
            assert!(!proxier.sync_state(&taken_over, &settings).unwrap().full);
            assert_eq!(
                nft.rule_count(Family::Ip, TABLE).unwrap(),
                proxier.rule_count()
            );

            // A Service goes.
            let fewer = build_state(&services[1..], &moved[1..]);
            proxier.sync_state(&fewer, &settings).unwrap();
            assert!(
                !nft.chains(Family::Ip, TABLE)
                    .unwrap()
                    .iter()
                    .any(|c| c.contains("/s0/"))
            );
            assert_eq!(
                nft.rule_count(Family::Ip, TABLE).unwrap(),
                proxier.rule_count()
            );
        })
        .unwrap();
}

#[test]
fn a_state_that_tracks_its_changes_is_synced_by_them_alone() {
    let settings = support::node_settings();
    let namespace = NetNs::create().unwrap();
    namespace
        .run(|| {
            let mut proxier = NftablesProxier::new().unwrap();
            let mut nft = NftSocket::open().unwrap();
            let services: Vec<Service> = (0..20)
                .map(|i| service(&format!("s{i}"), &format!("10.96.1.{}", i + 1), None))
                .collect();
            let slices: Vec<EndpointSlice> = (0..20)
                .map(|i| slice(&format!("s{i}"), &[(&format!("10.244.1.{}", i + 2), true)]))
                .collect();
            let mut state = build_state(&services, &slices);
            assert!(state.touched().is_none());
            proxier.sync_state(&state, &settings).unwrap();
            state.mark_applied();
            let rules = nft.rule_count(Family::Ip, TABLE).unwrap();

            // s3's endpoint moves and s4 goes: the sync looks at those two alone, and the
            // kernel ends up holding what a full render of the new state holds.
            state.update_service(
                "default",
                "s3",
                Some(&services[3]),
                &[slice("s3", &[("10.244.9.9", true)])],
            );
            state.update_service::<EndpointSlice>("default", "s4", None, &[]);
            assert_eq!(state.touched().unwrap().len(), 2);
            let stats = proxier.sync_state(&state, &settings).unwrap();
            assert!(!stats.full);
            state.mark_applied();
            assert!(state.touched().unwrap().is_empty());
            let held = endpoints(&mut nft);
            assert!(held.contains(&"10.244.9.9:8080".to_string()), "{held:?}");
            assert!(
                !held.contains(&"10.244.1.5:8080".to_string())
                    && !held.contains(&"10.244.1.6:8080".to_string()),
                "{held:?}"
            );
            assert_eq!(held.len(), 19);
            assert!(!chains(&mut nft).contains(&"svc-default/s4/tcp/http".to_string()));
            assert_eq!(nft.rule_count(Family::Ip, TABLE).unwrap(), rules - 1);
            assert_eq!(
                nft.rule_count(Family::Ip, TABLE).unwrap(),
                render(&state, &settings).rule_count()
            );

            // Only what the state says it touched is looked at: s5's endpoint changed behind
            // its back stays as applied, until a state that does not know what changed (built
            // whole) makes the proxier compare every port.
            let s5 = state
                .services
                .values_mut()
                .find(|(info, _)| info.name == "s5")
                .unwrap();
            s5.1[0].ip = "10.244.8.8".parse().unwrap();
            assert!(!proxier.sync_state(&state, &settings).unwrap().full);
            let held = endpoints(&mut nft);
            assert!(
                held.contains(&"10.244.1.7:8080".to_string())
                    && !held.contains(&"10.244.8.8:8080".to_string()),
                "{held:?}"
            );
            let mut untracked = build_state(&services, &slices);
            assert!(untracked.touched().is_none());
            untracked.services = state.services.clone();
            assert!(!proxier.sync_state(&untracked, &settings).unwrap().full);
            let held = endpoints(&mut nft);
            assert!(held.contains(&"10.244.8.8:8080".to_string()), "{held:?}");
            assert!(!held.contains(&"10.244.1.7:8080".to_string()), "{held:?}");
        })
        .unwrap();
}

/// Connects `count` times to `address`; returns how many connections each listener took.
fn spread(listeners: &[std::net::TcpListener], address: &str, count: usize) -> Vec<usize> {
    let mut taken = vec![0; listeners.len()];
    for _ in 0..count {
        let _stream = std::net::TcpStream::connect(address).unwrap();
        // The connection is in exactly one listener's queue (once the handshake's last step
        // arrived): find it. (Its source port is not the client's: an endpoint reached from
        // its own address is hairpin traffic, masqueraded.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let found = listeners
                .iter()
                .position(|listener| listener.accept().is_ok());
            if found.is_some() || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        taken[found.expect("no listener took the connection")] += 1;
    }
    taken
}

#[test]
fn connections_spread_over_every_endpoint_as_their_number_changes() {
    let settings = support::node_settings();
    let namespace = NetNs::create().unwrap();
    namespace
        .run(|| {
            // Three endpoints on this namespace's loopback, the cluster IPs routed to it.
            let backends = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
            support::loopback_backends(&backends);
            let listeners: Vec<std::net::TcpListener> = backends
                .iter()
                .map(|b| {
                    let listener = std::net::TcpListener::bind((*b, 8080)).unwrap();
                    listener.set_nonblocking(true).unwrap();
                    listener
                })
                .collect();
            let web = service("web", "10.96.0.10", None);
            let ready = |n: usize| -> Vec<(&str, bool)> {
                backends[..n].iter().map(|b| (*b, true)).collect()
            };
            let mut proxier = NftablesProxier::new().unwrap();
            let mut state = build_state(std::slice::from_ref(&web), &[slice("web", &ready(3))]);
            proxier.sync_state(&state, &settings).unwrap();
            state.mark_applied();
            let rules = NftSocket::open()
                .unwrap()
                .rule_count(Family::Ip, TABLE)
                .unwrap();
            let taken = spread(&listeners, "10.96.0.10:80", 300);
            assert!(taken.iter().all(|n| *n > 40), "{taken:?}");

            // Scaled down to two, then up to three again: the rules stay as they are, only
            // the endpoint map's ranges change, and every endpoint there takes connections.
            for n in [2, 3] {
                state.update_service("default", "web", Some(&web), &[slice("web", &ready(n))]);
                let stats = proxier.sync_state(&state, &settings).unwrap();
                assert!(!stats.full);
                state.mark_applied();
                let taken = spread(&listeners, "10.96.0.10:80", 300);
                assert!(taken[..n].iter().all(|t| *t > 40), "{n}: {taken:?}");
                assert!(taken[n..].iter().all(|t| *t == 0), "{n}: {taken:?}");
                assert_eq!(
                    NftSocket::open()
                        .unwrap()
                        .rule_count(Family::Ip, TABLE)
                        .unwrap(),
                    rules
                );
            }
        })
        .unwrap();
}

#[test]
fn a_full_sync_takes_services_that_claim_one_address_and_long_names() {
    let settings = support::node_settings();
    let namespace = NetNs::create().unwrap();
    namespace
        .run(|| {
            // Service b's external IP is service a's cluster IP, on the same port: nothing
            // checks external IPs for uniqueness, so both claim one key of `service-ips`.
            let a = service("a", "10.96.0.10", None);
            let mut b = service("b", "10.96.0.11", None);
            b.spec.as_mut().unwrap().external_ips = Some(vec!["10.96.0.10".into()]);
            // And 600 Services whose names are as long as names go (63 characters, in a
            // namespace of 63): their verdict elements do not fit 512 to a message.
            let long = |i: usize| format!("{}-{i:03}", "s".repeat(59));
            let mut services = vec![a, b];
            let mut slices = vec![
                slice("a", &[("10.244.1.2", true)]),
                slice("b", &[("10.244.1.3", true)]),
            ];
            let namespace_name = "n".repeat(63);
            for i in 0..600 {
                let mut s = service(
                    &long(i),
                    &format!("10.97.{}.{}", i / 250, i % 250 + 1),
                    None,
                );
                s.metadata.namespace = Some(namespace_name.clone());
                let mut e = slice(&long(i), &[("10.244.2.2", true)]);
                e.metadata.namespace = Some(namespace_name.clone());
                services.push(s);
                slices.push(e);
            }
            let mut proxier = NftablesProxier::new().unwrap();
            let stats = proxier
                .sync_state(&build_state(&services, &slices), &settings)
                .unwrap();
            assert!(stats.full);
            let mut nft = NftSocket::open().unwrap();
            assert_eq!(chains(&mut nft).len(), 602 + 1);
        })
        .unwrap();
}

#[test]
fn load_balancer_source_ranges_admit_only_their_clients() {
    let settings = support::node_settings();
    let namespace = NetNs::create().unwrap();
    namespace
        .run(|| {
            // The endpoint and two clients on loopback, the load-balancer IP routed there too.
            support::loopback_backends(&["10.0.0.1", "10.1.0.5", "10.2.0.5"]);
            baton_network::RouteSocket::open()
                .unwrap()
                .add_route(&baton_network::Route {
                    destination: "192.0.2.10/32".parse().unwrap(),
                    gateway: None,
                    interface: Some(baton_network::LOOPBACK_INDEX),
                })
                .unwrap();
            let _listener = std::net::TcpListener::bind(("10.0.0.1", 8080)).unwrap();
            let web: Service = serde_json::from_value(json!({
                "metadata": { "name": "web", "namespace": "default" },
                "spec": {
                    "type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                    "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080 }],
                    "loadBalancerSourceRanges": ["10.1.0.0/16"],
                },
                "status": { "loadBalancer": { "ingress": [{ "ip": "192.0.2.10" }] } },
            }))
            .unwrap();
            let state = build_state(&[web], &[slice("web", &[("10.0.0.1", true)])]);
            let mut proxier = NftablesProxier::new().unwrap();
            proxier.sync_state(&state, &settings).unwrap();

            // Through the load balancer's IP only from inside the range; the cluster IP
            // from anywhere.
            let (lb, cluster) = ("192.0.2.10:80", "10.96.0.10:80");
            assert_eq!(
                support::connect_from("10.1.0.5", lb),
                support::Attempt::Connected
            );
            assert_eq!(
                support::connect_from("10.2.0.5", lb),
                support::Attempt::Dropped
            );
            assert_eq!(
                support::connect_from("10.2.0.5", cluster),
                support::Attempt::Connected
            );
            let all = NftSocket::open()
                .unwrap()
                .chains(Family::Ip, TABLE)
                .unwrap();
            assert!(
                all.iter().any(|chain| chain == "fw-default/web/tcp/http"),
                "{all:?}"
            );
        })
        .unwrap();
}
