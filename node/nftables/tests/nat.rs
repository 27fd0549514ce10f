//! nf_tables against the real kernel, as root, inside a network namespace the test makes: a
//! verdict map sends a "service" address to a chain that DNATs to a backend, a refused batch
//! changes nothing, and deleting the table leaves nothing behind.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use baton_network::{NetNs, Route, RouteSocket};
use baton_nftables::{
    BaseChain, Batch, Element, Expr, Family, Hook, IPPROTO_TCP, NftSocket, SetSpec, Verdict,
    data_type, reg32,
};

const TABLE: &str = "test-proxy";

fn service_key(ip: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut key = ip.octets().to_vec();
    key.extend_from_slice(&[IPPROTO_TCP, 0, 0, 0]);
    key.extend_from_slice(&port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

fn program(backend: Ipv4Addr) -> Batch {
    let mut batch = Batch::new();
    let output = BaseChain {
        kind: "nat",
        hook: Hook::Output,
        priority: -100,
    };
    batch
        .add_table(Family::Ip, TABLE)
        .add_chain(Family::Ip, TABLE, "nat-output", Some(&output))
        .add_chain(Family::Ip, TABLE, "services", None)
        .add_chain(Family::Ip, TABLE, "svc-web", None)
        .add_set(
            Family::Ip,
            TABLE,
            &SetSpec {
                name: "service-ips".into(),
                key_type: data_type::concat(&[
                    data_type::IPV4_ADDR,
                    data_type::INET_PROTO,
                    data_type::INET_SERVICE,
                ]),
                key_len: 12,
                verdict_map: true,
                data: None,
                timeout_ms: None,
                interval_fields: None,
            },
        )
        .add_rule(
            Family::Ip,
            TABLE,
            "nat-output",
            &[Expr::Verdict(Verdict::Jump("services".into()))],
        )
        .add_rule(
            Family::Ip,
            TABLE,
            "services",
            &[
                Expr::ip_daddr(reg32(0)),
                Expr::l4proto(reg32(1)),
                Expr::th_dport(reg32(2)),
                Expr::Lookup {
                    set: "service-ips".into(),
                    sreg: reg32(0),
                    dreg: Some(0),
                    invert: false,
                },
            ],
        )
        .add_rule(
            Family::Ip,
            TABLE,
            "svc-web",
            &[
                Expr::Counter,
                Expr::load_ip(reg32(0), backend),
                Expr::load_port(reg32(1), 8080),
                Expr::Dnat {
                    addr_reg: reg32(0),
                    port_reg: Some(reg32(1)),
                },
            ],
        )
        .add_elements(
            Family::Ip,
            TABLE,
            "service-ips",
            &[Element {
                key: service_key(Ipv4Addr::new(10, 96, 0, 10), 80),
                verdict: Some(Verdict::Goto("svc-web".into())),
                ..Element::default()
            }],
        );
    batch
}

#[test]
fn a_verdict_map_dnats_a_service_address_and_batches_are_atomic() {
    let namespace = NetNs::create().unwrap();
    namespace
        .run(|| {
            let backend = Ipv4Addr::new(10, 0, 0, 1);
            let mut links = RouteSocket::open().unwrap();
            links
                .add_address(1, "10.0.0.1/32".parse().unwrap())
                .unwrap();
            links
                .add_route(&Route {
                    destination: "10.96.0.0/12".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                })
                .unwrap();
            let listener = TcpListener::bind(SocketAddr::from((backend, 8080))).unwrap();

            let mut nft = NftSocket::open().unwrap();
            nft.apply(&program(backend)).unwrap();
            assert!(nft.tables(Family::Ip).unwrap().contains(&TABLE.to_string()));
            let mut chains = nft.chains(Family::Ip, TABLE).unwrap();
            chains.sort();
            assert_eq!(chains, ["nat-output", "services", "svc-web"]);
            assert_eq!(nft.rule_count(Family::Ip, TABLE).unwrap(), 3);

            // The service address reaches the backend.
            let mut client = TcpStream::connect("10.96.0.10:80").unwrap();
            let (mut accepted, _) = listener.accept().unwrap();
            client.write_all(b"hi").unwrap();
            let mut got = [0u8; 2];
            accepted.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hi");
            // A port the map does not hold is not translated.
            let other_port = SocketAddr::from(([10, 96, 0, 10], 81));
            assert!(TcpStream::connect_timeout(&other_port, Duration::from_millis(300)).is_err());

            // A batch with one bad change is refused whole, naming the change.
            let mut bad = Batch::new();
            bad.add_chain(Family::Ip, TABLE, "half-made", None)
                .add_rule(
                    Family::Ip,
                    TABLE,
                    "no-such-chain",
                    &[Expr::Verdict(Verdict::Accept)],
                );
            let err = nft.apply(&bad).unwrap_err();
            assert_eq!(err.operation, "add rule to chain no-such-chain");
            assert!(
                !nft.chains(Family::Ip, TABLE)
                    .unwrap()
                    .contains(&"half-made".to_string())
            );

            // Deleting the table twice is fine and leaves nothing.
            let mut cleanup = Batch::new();
            cleanup.destroy_table(Family::Ip, TABLE);
            nft.apply(&cleanup).unwrap();
            nft.apply(&cleanup).unwrap();
            assert!(nft.tables(Family::Ip).unwrap().is_empty());
        })
        .unwrap();
}
