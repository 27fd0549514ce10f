//! The bridge network against the real kernel, as root, inside network namespaces this test
//! makes (nothing touches the machine's own network): two pods on one node reach each other
//! with their own addresses, a restart re-attaches idempotently, detaching leaves no interface
//! or address behind, and node routes are added and removed.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use baton_network::{
    BridgeConfig, BridgeNetwork, NetNs, POD_INTERFACE, Route, RouteSocket, host_interface,
    sync_node_routes,
};

fn config(state: &std::path::Path) -> BridgeConfig {
    BridgeConfig {
        bridge: "baton0".into(),
        pod_cidr: "10.244.1.0/24".parse().unwrap(),
        mtu: 1400,
        state_dir: state.to_owned(),
    }
}

#[test]
fn pods_on_one_bridge_reach_each_other_and_leave_nothing_behind() {
    let state = tempfile::tempdir().unwrap();
    let node = NetNs::create().unwrap();
    let pod_a = NetNs::create().unwrap();
    let pod_b = NetNs::create().unwrap();

    let (a, b) = node
        .run(|| {
            let network = BridgeNetwork::setup(config(state.path())).unwrap();
            let a = network.attach("pod-a", &pod_a).unwrap();
            let b = network.attach("pod-b", &pod_b).unwrap();
            // Attaching again (a kubelet restart) keeps the address and the interface.
            assert_eq!(network.attach("pod-a", &pod_a).unwrap(), a);
            (a, b)
        })
        .unwrap();
    assert_eq!(a.gateway, Ipv4Addr::new(10, 244, 1, 1));
    assert_ne!(a.ip, b.ip);

    // Pod b connects to pod a; a sees b's own address, and the MTU is the configured one.
    let listener = pod_a
        .run(|| TcpListener::bind(SocketAddr::from((a.ip, 8080))).unwrap())
        .unwrap();
    let mut client = pod_b
        .run(|| TcpStream::connect(SocketAddr::from((a.ip, 8080))).unwrap())
        .unwrap();
    let (mut accepted, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), b.ip);
    client.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    let mtu = pod_b
        .run(|| {
            RouteSocket::open()
                .unwrap()
                .link(POD_INTERFACE)
                .unwrap()
                .unwrap()
                .mtu
        })
        .unwrap();
    assert_eq!(mtu, Some(1400));
    drop((client, accepted, listener));

    node.run(|| {
        let network = BridgeNetwork::setup(config(state.path())).unwrap();
        network.detach("pod-a").unwrap();
        network.detach("pod-a").unwrap();
        let mut socket = RouteSocket::open().unwrap();
        assert!(socket.link(&host_interface("pod-a")).unwrap().is_none());
        assert!(socket.link(&host_interface("pod-b")).unwrap().is_some());
        // pod-b's sandbox is gone while the kubelet was down: released at start.
        let released = network.release_orphans(&HashSet::new()).unwrap();
        assert_eq!(released, vec![b.ip]);
        assert!(socket.link(&host_interface("pod-b")).unwrap().is_none());
        assert!(network.allocator().allocations().unwrap().is_empty());
    })
    .unwrap();
    // pod a's eth0 went with its host end.
    let left = pod_a
        .run(|| RouteSocket::open().unwrap().link(POD_INTERFACE).unwrap())
        .unwrap();
    assert_eq!(left, None);
}

#[test]
fn node_routes_follow_the_wanted_set() {
    let state = tempfile::tempdir().unwrap();
    let node = NetNs::create().unwrap();
    node.run(|| {
        BridgeNetwork::setup(config(state.path())).unwrap();
        let to_node_2 = Route {
            destination: "10.244.2.0/24".parse().unwrap(),
            gateway: Some("10.244.1.200".parse().unwrap()),
            interface: None,
        };
        let changes = sync_node_routes(&[to_node_2]).unwrap();
        assert_eq!(changes.added, vec![to_node_2]);
        let present = RouteSocket::open().unwrap().baton_routes().unwrap();
        assert_eq!(present.len(), 1);
        assert_eq!(present[0].destination, to_node_2.destination);
        assert_eq!(present[0].gateway, to_node_2.gateway);
        // The same wanted set again changes nothing (no route is taken down and put back).
        let again = sync_node_routes(&[to_node_2]).unwrap();
        assert!(
            again.added.is_empty() && again.removed.is_empty(),
            "{again:?}"
        );

        // A gateway that is not on any local network is reported, and the others still go in.
        let unreachable = Route {
            destination: "10.244.3.0/24".parse().unwrap(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            interface: None,
        };
        let changes = sync_node_routes(&[unreachable]).unwrap();
        assert_eq!(changes.failed.len(), 1);
        assert_eq!(changes.removed.len(), 1);
        assert!(
            RouteSocket::open()
                .unwrap()
                .baton_routes()
                .unwrap()
                .is_empty()
        );
    })
    .unwrap();
}
