//! The node API reached as a microVM's host reaches it: through the Unix socket of the VMM's
//! vsock device. The test plays the VMM's part of the way (the `CONNECT PORT` handshake that
//! `baton vmm`'s vsock device speaks, proved against a guest in vmm/tests/tiny_guest_vsock.rs)
//! and the guest's part with init's own relay (`node_api::vsock_relay::relay`, what init runs
//! for each vsock connection), in front of init's real node API server on loopback; the client
//! is `baton node`'s, with `NodeTarget::Vsock`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use baton_init::environment::Environment;
use baton_init::node_api::vsock_relay::relay;
use baton_init::node_api::{NodeApiServer, NodeApiTls, NodeState};
use baton_node_api::proto::VersionRequest;
use baton_node_api::{ClientCredentials, NodeTarget, connect};

/// The VMM's end of the vsock device: takes `connections` connections, answers a `CONNECT
/// 50000` with `OK` and relays it to the node API at `node_api`, and closes any other (as the
/// VMM does when nothing listens on the guest port). Returns the handshake lines it read and
/// the relays' threads.
fn vmm_socket(
    listener: UnixListener,
    node_api: SocketAddr,
    connections: usize,
) -> std::thread::JoinHandle<(Vec<String>, Vec<std::thread::JoinHandle<()>>)> {
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut relays = Vec::new();
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            let line = String::from_utf8(line).unwrap();
            if line == "CONNECT 50000" {
                stream.write_all(b"OK 1073741824\n").unwrap();
                let node = TcpStream::connect(node_api).unwrap();
                relays.push(std::thread::spawn(move || relay(stream, node).unwrap()));
            }
            lines.push(line);
        }
        (lines, relays)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_api_answers_through_a_vmm_s_vsock_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _receivers) = NodeState::new(Environment::Sandbox, dir.path().to_path_buf());
    let address = {
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap()
    };
    // A worker's node API certificate as `baton cluster create` issues it (its name, its
    // address and 127.0.0.1), and the administrator's client certificate.
    let ca = baton_pki::ClusterCa::generate("vsock-test").unwrap();
    let serving = ca
        .issue_server(
            "worker-1",
            &["worker-1".into(), "10.0.0.2".into(), "127.0.0.1".into()],
        )
        .unwrap();
    let admin = ca.issue_client("admin", Some("system:masters")).unwrap();
    let tls = NodeApiTls::with_certificate(serving, ca.cert_pem().to_owned());
    let server = NodeApiServer::start(state, &tls, address);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "the node API never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let uds = dir.path().join("vsock.sock");
    let vmm = vmm_socket(UnixListener::bind(&uds).unwrap(), address, 2);
    // The node's certificate is checked against the cluster CA, as `--ca` asks.
    let credentials = ClientCredentials {
        ca_pem: Some(ca.cert_pem().to_owned()),
        client: Some((admin.cert_pem, admin.key_pem)),
    };
    let mut client = connect(
        &NodeTarget::Vsock {
            uds: uds.clone(),
            port: 50000,
        },
        &credentials,
    )
    .await
    .unwrap();
    let version = client
        .version(VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.environment, "Sandbox");
    assert_eq!(version.role, "", "no configuration loaded");

    // A guest port nothing listens on: the VMM closes the connection, and the error names
    // the way the client went.
    let err = connect(
        &NodeTarget::Vsock {
            uds: uds.clone(),
            port: 1234,
        },
        &credentials,
    )
    .await
    .unwrap_err();
    let text = baton_client::error_chain(&err);
    assert!(
        text.starts_with(&format!(
            "connecting to the node API at vsock port 1234 through {}",
            uds.display()
        )),
        "{text}"
    );
    assert!(
        text.ends_with(
            "the VMM closed the connection after CONNECT 1234: nothing listens on that guest port"
        ),
        "{text}"
    );
    let (lines, relays) = vmm.join().unwrap();
    assert_eq!(lines, ["CONNECT 50000", "CONNECT 1234"]);
    drop(client);
    server.stop().await;
    for relay in relays {
        relay.join().unwrap();
    }
}
