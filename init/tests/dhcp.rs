//! Init's DHCPv4 client against a real server: Debian's dnsmasq in a network namespace of the
//! test's, joined by a veth pair to another namespace where the machine's network is
//! configured as init does at boot. Nothing leaves the two namespaces, and both go with the
//! test (dnsmasq is killed first).

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use baton_init::machine_config::{Interface, Network};
use baton_init::network_setup::configure_network;
use baton_network::RouteSocket;
use ipnet::Ipv4Net;
use support::{DNSMASQ, default_routes, start_dnsmasq, wire};

fn machine_network(nameservers: Vec<IpAddr>) -> Network {
    Network {
        interfaces: vec![Interface {
            name: "eth0".into(),
            addresses: Vec::new(),
            routes: Vec::new(),
            mtu: None,
            dhcp: true,
        }],
        nameservers,
    }
}

#[test]
fn an_interface_that_asks_gets_a_lease_applies_it_and_can_extend_it() {
    assert!(
        std::path::Path::new(DNSMASQ).exists(),
        "dnsmasq is missing: scripts/setup installs dnsmasq-base"
    );
    let dir = tempfile::tempdir().unwrap();
    let (server_ns, machine_ns) = wire();
    let leases = dir.path().join("leases");
    let server = start_dnsmasq(&server_ns, dir.path(), "10.77.0.50,10.77.0.60", "10.77.0.1");
    let resolv = dir.path().join("resolv.conf");
    let configured = machine_ns
        .run(|| {
            configure_network(
                &machine_network(vec!["10.77.0.99".parse().unwrap()]),
                &resolv,
                Duration::from_secs(30),
            )
        })
        .unwrap()
        .unwrap();
    let node_ip = configured
        .node_ip
        .expect("the leased address is the node's");
    let range = 50..=60;
    assert!(
        node_ip.octets()[..3] == [10, 77, 0] && range.contains(&node_ip.octets()[3]),
        "{node_ip}"
    );
    // The address with the server's prefix, the default route, the MTU, the resolvers.
    let (addresses, routes, mtu) = machine_ns
        .run(|| {
            let mut socket = RouteSocket::open().unwrap();
            let link = socket.link("eth0").unwrap().unwrap();
            let addresses = socket.ipv4_addresses().unwrap();
            (addresses, default_routes(), link.mtu)
        })
        .unwrap();
    let expected = Ipv4Net::new(node_ip, 24).unwrap();
    assert!(
        addresses.iter().any(|(_, address)| *address == expected),
        "{addresses:?}"
    );
    assert_eq!(routes, "default via 10.77.0.1 dev eth0 proto dhcp");
    assert_eq!(mtu, Some(1400));
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "nameserver 10.77.0.99\nnameserver 10.77.0.53\n"
    );
    assert_eq!(configured.leases.len(), 1);
    let mut kept = configured.leases.into_iter().next().unwrap();
    assert_eq!(kept.lease.lease_time, Duration::from_secs(120));
    assert_eq!(kept.lease.server, Ipv4Addr::new(10, 77, 0, 1));

    // Renewing (unicast to the server, from the leased address) and rebinding (broadcast)
    // keep the address.
    for rebind in [false, true] {
        let lease = kept.lease.clone();
        let extended = machine_ns
            .run(|| {
                kept.client
                    .extend(&lease, rebind, Instant::now() + Duration::from_secs(20))
            })
            .unwrap()
            .unwrap_or_else(|err| panic!("extending (rebind {rebind}): {err}"));
        assert_eq!(extended.address, lease.address);
    }
    let recorded = std::fs::read_to_string(&leases).unwrap();
    assert!(recorded.contains(&node_ip.to_string()), "{recorded}");

    // The server names another router: the renewed lease replaces the default route.
    drop(server);
    let server = start_dnsmasq(&server_ns, dir.path(), "10.77.0.50,10.77.0.60", "10.77.0.2");
    let before = kept.lease.clone();
    let routes = machine_ns
        .run(|| {
            let renewed = kept
                .client
                .extend(&before, false, Instant::now() + Duration::from_secs(20))
                .unwrap();
            assert_eq!(renewed.router, Some(Ipv4Addr::new(10, 77, 0, 2)));
            let mut socket = RouteSocket::open().unwrap();
            let index = socket.link("eth0").unwrap().unwrap().index;
            baton_init::dhcp::apply_lease(&mut socket, index, Some(&before), &renewed, None)
                .unwrap();
            default_routes()
        })
        .unwrap();
    assert_eq!(routes, "default via 10.77.0.2 dev eth0 proto dhcp");

    // The server no longer hands out that address: it refuses the renewal (DHCPNAK).
    drop(server);
    let _server = start_dnsmasq(
        &server_ns,
        dir.path(),
        "10.77.0.100,10.77.0.110",
        "10.77.0.1",
    );
    let refused = machine_ns
        .run(|| {
            kept.client
                .extend(&before, false, Instant::now() + Duration::from_secs(20))
        })
        .unwrap();
    assert!(
        matches!(
            refused,
            Err(baton_init::dhcp::DhcpExchangeError::Refused { .. })
        ),
        "{refused:?}"
    );
}

#[test]
fn a_strict_reverse_path_filter_does_not_keep_the_offer_away() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ns, machine_ns) = wire();
    // rp_filter 1 everywhere in the machine's namespace: with no address and no route, the
    // server's broadcast answers fail the check and no UDP socket sees them.
    machine_ns
        .run(|| {
            for name in ["all", "default", "eth0"] {
                std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"), "1").unwrap();
            }
        })
        .unwrap();
    let _server = start_dnsmasq(&server_ns, dir.path(), "10.77.0.50,10.77.0.60", "10.77.0.1");
    let configured = machine_ns
        .run(|| {
            configure_network(
                &machine_network(Vec::new()),
                &dir.path().join("resolv.conf"),
                Duration::from_secs(20),
            )
        })
        .unwrap()
        .unwrap();
    assert!(configured.node_ip.is_some());
}

#[test]
fn without_a_server_boot_says_no_lease_came() {
    let (_server_ns, machine_ns) = wire();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = machine_ns
        .run(|| {
            configure_network(
                &machine_network(Vec::new()),
                &dir.path().join("resolv.conf"),
                Duration::from_secs(3),
            )
        })
        .unwrap()
        .unwrap_err();
    let text = baton_client::error_chain(&err);
    assert!(
        text.starts_with(
            "machine.network.interfaces: no DHCP lease: DHCP on eth0: no server answered within"
        ),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
