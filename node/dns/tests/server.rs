//! The DNS server end to end on loopback: a built index served over UDP and TCP, queried with
//! hickory's client, forwarding to a second hickory server standing in for the upstream
//! resolver. All traffic stays on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baton_dns::{DnsServer, Forwarder, Index, SharedIndex, Zone, serve};
use hickory_server::Server;
use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::net::{TcpListener, UdpSocket};

const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const BIG_ANSWER: u8 = 100;

/// The stand-in upstream: `example.org A 192.0.2.10`, `big.example.org` with 100 A records
/// (too many for a UDP answer), NXDOMAIN for anything else; it counts queries per transport.
#[derive(Debug, Default)]
struct Upstream {
    udp: AtomicUsize,
    tcp: AtomicUsize,
}

#[derive(Debug)]
struct UpstreamHandler(Arc<Upstream>);

#[async_trait::async_trait]
impl RequestHandler for UpstreamHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        match request.protocol() {
            Protocol::Tcp => self.0.tcp.fetch_add(1, Ordering::SeqCst),
            _ => self.0.udp.fetch_add(1, Ordering::SeqCst),
        };
        let query = request.request_info().unwrap().query.original().clone();
        let owner = query.name().clone();
        let name = owner.to_lowercase().to_ascii();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let answers: Vec<Record> = match (name.as_str(), query.query_type()) {
            ("example.org.", RecordType::A) => vec![a_record(&owner, UPSTREAM_IP)],
            ("big.example.org.", RecordType::A) => (1..=BIG_ANSWER)
                .map(|i| a_record(&owner, Ipv4Addr::new(198, 51, 100, i)))
                .collect(),
            ("example.org." | "big.example.org.", _) => Vec::new(),
            _ => {
                metadata.response_code = ResponseCode::NXDomain;
                Vec::new()
            }
        };
        let edns = request.edns.clone();
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answers.iter(),
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
        );
        response_handle
            .send_response(response)
            .await
            .unwrap_or_else(|_| {
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            })
    }
}

fn a_record(owner: &Name, ip: Ipv4Addr) -> Record {
    Record::from_rdata(owner.clone(), 300, RData::A(A(ip)))
}

/// Serves the stand-in upstream on a free loopback port (UDP and TCP).
async fn start_upstream() -> (Arc<Upstream>, SocketAddr, Server<UpstreamHandler>) {
    let upstream = Arc::new(Upstream::default());
    // The UDP port's number may be taken for TCP by another test running meanwhile: another
    // pair is tried then, as the server itself does.
    let mut tries = 0;
    let (udp, address, tcp) = loop {
        tries += 1;
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = udp.local_addr().unwrap();
        match TcpListener::bind(address).await {
            Ok(tcp) => break (udp, address, tcp),
            Err(err) if tries < 20 && err.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(err) => panic!("binding the upstream's TCP port {address}: {err}"),
        }
    };
    let mut server = Server::new(UpstreamHandler(upstream.clone()));
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    (upstream, address, server)
}

/// A loopback port with nothing listening (the socket is bound, its port read, then closed).
async fn dead_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap()
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// default/web (ClusterIP 10.96.0.10, port http 80/TCP), db/pg (headless, three ready
/// endpoints, pg-0 and pg-1 with hostnames, one not ready, port postgres 5432/TCP) and
/// default/search (ExternalName example.org).
fn cluster_index() -> Index {
    let web = Service {
        metadata: meta("default", "web"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: Some(vec!["10.96.0.10".into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    let pg = Service {
        metadata: meta("db", "pg"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            ..Default::default()
        }),
        status: None,
    };
    let search = Service {
        metadata: meta("default", "search"),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some("example.org".into()),
            ..Default::default()
        }),
        status: None,
    };
    let endpoint = |ip: &str, hostname: Option<&str>, ready: Option<bool>| Endpoint {
        addresses: vec![ip.into()],
        hostname: hostname.map(str::to_owned),
        conditions: Some(k8s_openapi::api::discovery::v1::EndpointConditions {
            ready,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut slice_meta = meta("db", "pg-abcde");
    slice_meta.labels = Some([("kubernetes.io/service-name".to_owned(), "pg".to_owned())].into());
    let slice = EndpointSlice {
        metadata: slice_meta,
        address_type: "IPv4".into(),
        endpoints: vec![
            endpoint("10.244.1.5", Some("pg-0"), Some(true)),
            endpoint("10.244.1.6", Some("pg-1"), None),
            endpoint("10.244.2.7", None, Some(true)),
            endpoint("10.244.2.8", None, Some(false)),
        ],
        ports: Some(vec![EndpointPort {
            name: Some("postgres".into()),
            port: Some(5432),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    };
    Index::build(
        Zone::new("cluster.local", 30).unwrap(),
        &[web, pg, search],
        &[slice],
        1,
    )
}

async fn start_dns(index: Index, upstreams: Vec<SocketAddr>) -> DnsServer {
    let forwarder = Forwarder::new(upstreams, Duration::from_secs(2));
    serve(
        "127.0.0.1:0".parse().unwrap(),
        SharedIndex::new(index),
        forwarder,
    )
    .await
    .unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

async fn client(address: SocketAddr, transport: Transport) -> Client<TokioRuntimeProvider> {
    let provider = TokioRuntimeProvider::default();
    match transport {
        Transport::Udp => {
            let stream = UdpClientStream::builder(address, provider)
                .with_timeout(Some(Duration::from_secs(5)))
                .build();
            let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
            tokio::spawn(background);
            client
        }
        Transport::Tcp => {
            let (stream, sender) =
                TcpClientStream::new(address, None, Some(Duration::from_secs(5)), provider);
            let (client, background) =
                Client::<TokioRuntimeProvider>::new(stream.await.unwrap(), sender);
            tokio::spawn(background);
            client
        }
    }
}

struct Reply {
    code: ResponseCode,
    authoritative: bool,
    truncated: bool,
    answers: Vec<RData>,
    authorities: Vec<Record>,
    additionals: Vec<RData>,
}

async fn ask(client: &mut Client<TokioRuntimeProvider>, name: &str, qtype: RecordType) -> Reply {
    let response = client
        .query(Name::from_ascii(name).unwrap(), DNSClass::IN, qtype)
        .await
        .unwrap_or_else(|err| panic!("{name} {qtype}: {err}"));
    Reply {
        code: response.metadata.response_code,
        authoritative: response.metadata.authoritative,
        truncated: response.metadata.truncation,
        answers: response.answers.iter().map(|r| r.data.clone()).collect(),
        authorities: response.authorities.clone(),
        additionals: response
            .additionals
            .iter()
            .map(|r| r.data.clone())
            .collect(),
    }
}

fn a(ip: &str) -> RData {
    RData::A(A(ip.parse().unwrap()))
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn sorted(mut records: Vec<RData>) -> Vec<RData> {
    records.sort_by_key(|r| r.to_string());
    records
}

#[tokio::test]
async fn cluster_names_are_answered_over_udp_and_tcp() {
    let (_upstream, upstream_address, _upstream_server) = start_upstream().await;
    let dns = start_dns(cluster_index(), vec![upstream_address]).await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut client = client(dns.local_addr(), transport).await;
        let context = format!("over {transport:?}");

        let reply = ask(&mut client, "web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(reply.code, ResponseCode::NoError, "{context}");
        assert!(reply.authoritative, "{context}");
        assert_eq!(reply.answers, vec![a("10.96.0.10")], "{context}");

        let reply = ask(&mut client, "PG.db.svc.cluster.local.", RecordType::A).await;
        assert_eq!(
            sorted(reply.answers),
            vec![a("10.244.1.5"), a("10.244.1.6"), a("10.244.2.7")],
            "headless A {context}"
        );

        let reply = ask(&mut client, "pg-1.pg.db.svc.cluster.local.", RecordType::A).await;
        assert_eq!(reply.answers, vec![a("10.244.1.6")], "{context}");

        let reply = ask(
            &mut client,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(
            reply.answers,
            vec![RData::SRV(SRV::new(
                0,
                100,
                80,
                name("web.default.svc.cluster.local.")
            ))],
            "{context}"
        );
        assert_eq!(reply.additionals, vec![a("10.96.0.10")], "{context}");

        let reply = ask(
            &mut client,
            "_postgres._tcp.pg.db.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        let srv = |target: &str| RData::SRV(SRV::new(0, 33, 5432, name(target)));
        assert_eq!(
            sorted(reply.answers),
            vec![
                srv("10-244-2-7.pg.db.svc.cluster.local."),
                srv("pg-0.pg.db.svc.cluster.local."),
                srv("pg-1.pg.db.svc.cluster.local."),
            ],
            "headless SRV {context}"
        );
        assert_eq!(reply.additionals.len(), 3, "{context}");

        let reply = ask(&mut client, "10.0.96.10.in-addr.arpa.", RecordType::PTR).await;
        assert_eq!(
            reply.answers,
            vec![RData::PTR(PTR(name("web.default.svc.cluster.local.")))],
            "{context}"
        );
        let reply = ask(&mut client, "5.1.244.10.in-addr.arpa.", RecordType::PTR).await;
        assert_eq!(
            reply.answers,
            vec![RData::PTR(PTR(name("pg-0.pg.db.svc.cluster.local.")))],
            "{context}"
        );

        let reply = ask(
            &mut client,
            "10-1-2-3.default.pod.cluster.local.",
            RecordType::A,
        )
        .await;
        assert_eq!(reply.answers, vec![a("10.1.2.3")], "{context}");

        let reply = ask(
            &mut client,
            "nope.default.svc.cluster.local.",
            RecordType::A,
        )
        .await;
        assert_eq!(reply.code, ResponseCode::NXDomain, "{context}");
        assert!(reply.authoritative, "{context}");
        assert!(reply.answers.is_empty(), "{context}");
        assert_eq!(reply.authorities.len(), 1, "{context}");
        assert_eq!(reply.authorities[0].name, name("cluster.local."));
        let RData::SOA(soa) = &reply.authorities[0].data else {
            panic!("authority is not an SOA {context}");
        };
        assert_eq!(
            *soa,
            SOA::new(
                name("ns.dns.cluster.local."),
                name("hostmaster.cluster.local."),
                1,
                7200,
                1800,
                86400,
                30
            )
        );

        let reply = ask(
            &mut client,
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
        )
        .await;
        assert_eq!(reply.code, ResponseCode::NoError, "NODATA {context}");
        assert!(reply.answers.is_empty(), "{context}");
        assert_eq!(reply.authorities.len(), 1, "{context}");
    }
    dns.shutdown().await.unwrap();
}

#[tokio::test]
async fn other_names_are_forwarded_upstream() {
    let (upstream, upstream_address, _upstream_server) = start_upstream().await;
    let dns = start_dns(cluster_index(), vec![upstream_address]).await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut client = client(dns.local_addr(), transport).await;
        let context = format!("over {transport:?}");
        let reply = ask(&mut client, "example.org.", RecordType::A).await;
        assert_eq!(reply.code, ResponseCode::NoError, "{context}");
        assert!(!reply.authoritative, "{context}");
        assert_eq!(reply.answers, vec![RData::A(A(UPSTREAM_IP))], "{context}");

        let reply = ask(&mut client, "missing.example.org.", RecordType::A).await;
        assert_eq!(
            reply.code,
            ResponseCode::NXDomain,
            "upstream's NXDOMAIN {context}"
        );

        // An ExternalName Service: the CNAME, then the target's records from upstream.
        let reply = ask(
            &mut client,
            "search.default.svc.cluster.local.",
            RecordType::A,
        )
        .await;
        assert_eq!(reply.code, ResponseCode::NoError, "{context}");
        assert_eq!(
            reply.answers,
            vec![
                RData::CNAME(CNAME(name("example.org."))),
                RData::A(A(UPSTREAM_IP))
            ],
            "{context}"
        );

        // Reverse names the cluster does not know fall through to upstream.
        let reply = ask(&mut client, "9.9.244.10.in-addr.arpa.", RecordType::PTR).await;
        assert_eq!(reply.code, ResponseCode::NXDomain, "{context}");
    }
    assert!(upstream.udp.load(Ordering::SeqCst) >= 8);
    assert_eq!(
        upstream.tcp.load(Ordering::SeqCst),
        0,
        "the forwarder asks over UDP first"
    );
    dns.shutdown().await.unwrap();
}

#[tokio::test]
async fn truncated_upstream_answers_are_asked_again_over_tcp() {
    let (upstream, upstream_address, _upstream_server) = start_upstream().await;
    let dns = start_dns(cluster_index(), vec![upstream_address]).await;

    let mut tcp = client(dns.local_addr(), Transport::Tcp).await;
    let reply = ask(&mut tcp, "big.example.org.", RecordType::A).await;
    assert_eq!(reply.code, ResponseCode::NoError);
    assert!(!reply.truncated);
    assert_eq!(reply.answers.len(), usize::from(BIG_ANSWER));
    assert_eq!(upstream.udp.load(Ordering::SeqCst), 1);
    assert_eq!(
        upstream.tcp.load(Ordering::SeqCst),
        1,
        "TCP after truncation"
    );

    // Over UDP the client gets a truncated answer of its own size, and would retry over TCP.
    let mut udp = client(dns.local_addr(), Transport::Udp).await;
    let reply = ask(&mut udp, "big.example.org.", RecordType::A).await;
    assert!(reply.truncated);
    assert!(reply.answers.len() < usize::from(BIG_ANSWER));
    dns.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_upstream_gives_servfail() {
    let dns = start_dns(cluster_index(), vec![dead_port().await]).await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut client = client(dns.local_addr(), transport).await;
        let reply = ask(&mut client, "example.org.", RecordType::A).await;
        assert_eq!(reply.code, ResponseCode::ServFail, "over {transport:?}");
        // The cluster's own names do not need the upstream.
        let reply = ask(&mut client, "web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(reply.answers, vec![a("10.96.0.10")], "over {transport:?}");
    }
    dns.shutdown().await.unwrap();
}

#[tokio::test]
async fn cluster_names_are_servfail_until_the_index_is_synced() {
    let (_upstream, upstream_address, _upstream_server) = start_upstream().await;
    let index = SharedIndex::new(Index::unsynced(Zone::new("cluster.local", 30).unwrap()));
    let dns = serve(
        "127.0.0.1:0".parse().unwrap(),
        index.clone(),
        Forwarder::new(vec![upstream_address], Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let mut client = client(dns.local_addr(), Transport::Udp).await;
    let reply = ask(&mut client, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(reply.code, ResponseCode::ServFail);
    let reply = ask(&mut client, "example.org.", RecordType::A).await;
    assert_eq!(reply.answers, vec![RData::A(A(UPSTREAM_IP))]);

    index.replace(cluster_index());
    let reply = ask(&mut client, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(reply.answers, vec![a("10.96.0.10")]);
    dns.shutdown().await.unwrap();
}
