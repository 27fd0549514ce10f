//! The machine configuration fetched from an HTTP metadata endpoint as init does at boot
//! (`baton.config=http://...`): a machine namespace with nothing configured gets a lease from
//! Debian's dnsmasq in a server namespace, fetches the document from an HTTP server there, and
//! hands the lease over for boot to give back. Nothing leaves the two namespaces.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_init::bootstrap_network::BootstrapNetwork;
use baton_init::config_fetch::{FetchConfigError, MetadataEndpoint, fetch_config};
use baton_init::config_source::FoundConfig;
use baton_network::{NetNs, RouteSocket};
use support::{default_routes, start_dnsmasq, wire};

const DOCUMENT: &str = "apiVersion: baton.dev/v1alpha1\nkind: MachineConfig\n";

/// An HTTP server in the server namespace answering each request with the next of its
/// answers (the last one again once they run out), recording each request's head.
struct MetadataServer {
    port: u16,
    listener: Arc<TcpListener>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetadataServer {
    fn start(namespace: &NetNs, answers: Vec<(&'static str, &'static str)>) -> Self {
        let listener = Arc::new(
            namespace
                .run(|| TcpListener::bind("10.77.0.1:0"))
                .unwrap()
                .unwrap(),
        );
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let listener = listener.clone();
            let requests = requests.clone();
            std::thread::spawn(move || {
                let mut answers = answers.into_iter().peekable();
                let mut answer = answers.next().unwrap();
                // Ends when the listener is shut down (accept fails).
                while let Ok((stream, _)) = listener.accept() {
                    let mut reader = BufReader::new(&stream);
                    let mut head = String::new();
                    while reader.read_line(&mut head).unwrap_or(0) > 2 {}
                    requests.lock().unwrap().push(head);
                    let (status, body) = answer;
                    let _ = write!(
                        &stream,
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    if answers.peek().is_some() {
                        answer = answers.next().unwrap();
                    }
                }
            })
        };
        Self {
            port,
            listener,
            requests,
            thread: Some(thread),
        }
    }

    fn endpoint(&self, path: &str) -> MetadataEndpoint {
        MetadataEndpoint::parse(&format!("http://10.77.0.1:{}{path}", self.port))
            .unwrap()
            .unwrap()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        // Shutting a listening socket down wakes its accept with an error.
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.listener.as_fd()),
            nix::sys::socket::Shutdown::Both,
        );
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `fetch_config` in `machine` as boot calls it (with `dhcp` and `wait` seconds): its result
/// and the lease it handed over.
fn fetch_in(
    machine: &NetNs,
    endpoint: &MetadataEndpoint,
    dhcp: u64,
    wait: u64,
) -> (
    Result<FoundConfig, FetchConfigError>,
    Option<BootstrapNetwork>,
) {
    let lease = Mutex::new(None);
    let found = machine
        .run(|| {
            fetch_config(
                endpoint,
                Duration::from_secs(dhcp),
                Duration::from_secs(wait),
                &lease,
            )
        })
        .unwrap();
    (found, lease.into_inner().unwrap())
}

/// The machine namespace's IPv4 addresses on eth0 and its default routes.
fn machine_network(machine: &NetNs) -> (Vec<String>, String) {
    machine
        .run(|| {
            let mut socket = RouteSocket::open().unwrap();
            let eth0 = socket.link("eth0").unwrap().unwrap().index;
            let addresses = socket
                .ipv4_addresses()
                .unwrap()
                .into_iter()
                .filter(|(index, _)| *index == eth0)
                .map(|(_, address)| address.to_string())
                .collect();
            (addresses, default_routes())
        })
        .unwrap()
}

#[test]
fn a_configuration_is_fetched_after_a_lease_which_is_then_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ns, machine_ns) = wire();
    let _dhcp = start_dnsmasq(&server_ns, dir.path(), "10.77.0.50,10.77.0.60", "10.77.0.1");
    // Not ready at first: the node tries again.
    let server = MetadataServer::start(
        &server_ns,
        vec![
            ("503 Service Unavailable", "starting"),
            ("200 OK", DOCUMENT),
        ],
    );
    let endpoint = server.endpoint("/nodes/worker-1.yaml");
    let (found, lease) = fetch_in(&machine_ns, &endpoint, 20, 30);
    let found = found.unwrap();
    assert_eq!(found.yaml, DOCUMENT);
    assert_eq!(
        found.source,
        format!("http://10.77.0.1:{}/nodes/worker-1.yaml", server.port)
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for request in &requests {
        assert!(
            request.starts_with("GET /nodes/worker-1.yaml HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains(&format!("host: 10.77.0.1:{}\r\n", server.port)),
            "{request}"
        );
    }
    // The lease is on eth0 until boot gives it back, before the configuration's network.
    let (addresses, _) = machine_network(&machine_ns);
    let lease = lease.expect("the lease is handed over");
    assert_eq!(lease.interface, "eth0");
    assert_eq!(addresses, [lease.lease.address.to_string()]);
    assert_eq!(eth0_mtu(&machine_ns), Some(1400), "the server's MTU");
    machine_ns.run(|| lease.tear_down()).unwrap().unwrap();
    assert_eq!(machine_network(&machine_ns), (Vec::new(), String::new()));
    assert_eq!(
        eth0_mtu(&machine_ns),
        Some(1500),
        "the MTU from before the lease"
    );
}

fn eth0_mtu(machine: &NetNs) -> Option<u32> {
    machine
        .run(|| {
            RouteSocket::open()
                .unwrap()
                .link("eth0")
                .unwrap()
                .unwrap()
                .mtu
        })
        .unwrap()
}

#[test]
fn an_endpoint_that_never_gives_a_configuration_is_named_and_the_lease_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ns, machine_ns) = wire();
    let _dhcp = start_dnsmasq(&server_ns, dir.path(), "10.77.0.50,10.77.0.60", "10.77.0.1");
    let server = MetadataServer::start(&server_ns, vec![("404 Not Found", "no such node")]);
    let endpoint = server.endpoint("/nodes/unknown.yaml");
    let (found, lease) = fetch_in(&machine_ns, &endpoint, 20, 2);
    let err = found.unwrap_err();
    let text = baton_client::error_chain(&err);
    let prefix = format!(
        "baton.config=http://10.77.0.1:{}/nodes/unknown.yaml: no configuration after ",
        server.port
    );
    assert!(text.starts_with(&prefix), "{text}");
    assert!(
        text.ends_with(": the server answered 404 Not Found"),
        "{text}"
    );
    assert!(server.requests().len() >= 2, "it tried again");
    // The lease stays, so the node API in maintenance mode can be reached.
    assert!(lease.is_some());
    let (addresses, routes) = machine_network(&machine_ns);
    assert_eq!(addresses.len(), 1, "{addresses:?}");
    assert!(addresses[0].starts_with("10.77.0."), "{addresses:?}");
    assert_eq!(routes, "default via 10.77.0.1 dev eth0 proto dhcp");
}

#[test]
fn without_a_dhcp_server_the_fetch_says_so() {
    let (server_ns, machine_ns) = wire();
    let server = MetadataServer::start(&server_ns, vec![("200 OK", DOCUMENT)]);
    let endpoint = server.endpoint("/c");
    let (found, _) = fetch_in(&machine_ns, &endpoint, 2, 2);
    let err = found.unwrap_err();
    let text = baton_client::error_chain(&err);
    let expected = format!(
        "baton.config=http://10.77.0.1:{}/c: no DHCP lease on eth0: DHCP on eth0: no server answered within",
        server.port
    );
    assert!(text.starts_with(&expected), "{text}");
    assert!(server.requests().is_empty());
}
