//! The machine configuration from a metadata endpoint that the kernel command line names, for
//! nodes whose provider serves each one its document:
//! - `baton.config=http://IP[:PORT]/PATH`: a DHCP lease first (`bootstrap_network.rs`), then
//!   an HTTP GET; boot gives the lease back once the document is known to be valid, before
//!   applying the configuration's network;
//! - `baton.config=vsock:PORT` (or `vsock:CID:PORT`, CID 2, the host, by default): a
//!   connection to the host over vsock, the document being everything the host writes
//!   before it closes. Under Baton's VMM (and Firecracker) the host side is a Unix socket
//!   listening at `UDS_PATH_PORT`, next to the vsock device's `UDS_PATH`.
//!
//! The endpoint may not be ready when the node boots: each failure is logged and tried again,
//! with a growing pause, until the deadline.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};

use crate::bootstrap_network::{BootstrapNetwork, BootstrapNetworkError, bootstrap_network};
use crate::config_source::{CMDLINE_KEY, FoundConfig};
use crate::vsock_host::ReadByDeadline;

/// How long boot keeps trying to fetch the configuration.
pub const FETCH_WAIT: Duration = Duration::from_secs(120);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause after a failed attempt; doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// The largest document taken (certificates and keys included, a configuration is a few
/// tens of KiB).
pub const MAX_CONFIG_BYTES: usize = 4 << 20;
/// The host's vsock CID.
const HOST_CID: u32 = 2;

/// Where the configuration is fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataEndpoint {
    /// An HTTP URL whose host is an IP address.
    Http {
        /// The URL.
        uri: http::Uri,
        /// Where to connect.
        address: SocketAddr,
    },
    /// A vsock port.
    Vsock {
        /// The peer's CID.
        cid: u32,
        /// Its port.
        port: u32,
    },
}

/// `baton.config=` names an endpoint that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ParseEndpointError {
    /// Not a URL.
    #[error("{CMDLINE_KEY}{0}: not a URL")]
    NotUrl(String),
    /// A scheme other than http.
    #[error("{CMDLINE_KEY}{0}: only http:// URLs are fetched (no TLS before the node has its CA)")]
    Scheme(String),
    /// A host name rather than an address.
    #[error(
        "{CMDLINE_KEY}{0}: the host must be an IP address (a node resolves no names before its configuration)"
    )]
    HostName(String),
    /// A vsock address that does not parse.
    #[error("{CMDLINE_KEY}{0}: expected vsock:PORT or vsock:CID:PORT")]
    Vsock(String),
    /// Neither a path, a URL nor a vsock address.
    #[error("{CMDLINE_KEY}{0}: expected an absolute path, an http:// URL or vsock:PORT")]
    Unsupported(String),
}

impl MetadataEndpoint {
    /// The endpoint `value` (what follows `baton.config=`) names, or `None` for a path.
    pub fn parse(value: &str) -> Result<Option<Self>, ParseEndpointError> {
        if value.starts_with('/') {
            return Ok(None);
        }
        if let Some(rest) = value.strip_prefix("vsock:") {
            let numbers: Option<Vec<u32>> = rest.split(':').map(|n| n.parse().ok()).collect();
            let (cid, port) = match numbers.as_deref() {
                Some([port]) => (HOST_CID, *port),
                Some([cid, port]) => (*cid, *port),
                _ => return Err(ParseEndpointError::Vsock(value.into())),
            };
            return Ok(Some(Self::Vsock { cid, port }));
        }
        if !value.contains("://") {
            return Err(ParseEndpointError::Unsupported(value.into()));
        }
        let uri: http::Uri = value
            .parse()
            .map_err(|_| ParseEndpointError::NotUrl(value.into()))?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return Err(ParseEndpointError::Scheme(value.into()));
        }
        let host = uri
            .host()
            .ok_or_else(|| ParseEndpointError::NotUrl(value.into()))?;
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| ParseEndpointError::HostName(value.into()))?;
        let address = SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
        Ok(Some(Self::Http { uri, address }))
    }
}

impl std::fmt::Display for MetadataEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http { uri, .. } => write!(f, "{uri}"),
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// The configuration could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchConfigError {
    /// No network to reach an HTTP endpoint.
    #[error("{CMDLINE_KEY}{endpoint}")]
    Network {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: BootstrapNetworkError,
    },
    /// No attempt succeeded before the deadline.
    #[error("{CMDLINE_KEY}{endpoint}: no configuration after {attempts} attempts in {waited:?}")]
    Unanswered {
        /// The endpoint.
        endpoint: String,
        /// How many attempts were made.
        attempts: u32,
        /// How long they took.
        waited: Duration,
        /// The last attempt's failure.
        #[source]
        last: FetchAttemptError,
    },
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchAttemptError {
    /// The HTTP client's runtime could not start.
    #[error("starting the HTTP client's runtime")]
    Runtime(#[source] std::io::Error),
    /// The connection failed.
    #[error("connecting")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP exchange")]
    Http(#[source] hyper::Error),
    /// The server answered with an error status.
    #[error("the server answered {0}")]
    Status(http::StatusCode),
    /// Reading the document failed.
    #[error("reading the document")]
    Read(#[source] std::io::Error),
    /// The document is larger than [`MAX_CONFIG_BYTES`].
    #[error("the document is over {MAX_CONFIG_BYTES} bytes")]
    TooLarge,
    /// The document is not text.
    #[error("the document is not UTF-8")]
    NotUtf8,
    /// The attempt took longer than its time.
    #[error("no answer within {ATTEMPT_TIMEOUT:?}")]
    TimedOut,
}

/// Fetches the configuration from `endpoint`. For HTTP, first a DHCP lease: asked for
/// `dhcp_wait` at a time until `wait` has passed (at least once), and left in `lease` whatever
/// happens next. Then attempts until `wait` has passed since the lease (at least one). The
/// caller gives the lease back once the configuration is known to be valid, just before
/// applying its network: until then (a configuration that never came or is invalid) the node
/// API of a node in maintenance mode answers on it.
pub fn fetch_config(
    endpoint: &MetadataEndpoint,
    dhcp_wait: Duration,
    wait: Duration,
    lease: &Mutex<Option<BootstrapNetwork>>,
) -> Result<FoundConfig, FetchConfigError> {
    tracing::info!(%endpoint, "fetching the machine configuration");
    if let MetadataEndpoint::Http { .. } = endpoint {
        let deadline = Instant::now() + wait;
        let network = loop {
            match bootstrap_network(dhcp_wait) {
                Ok(network) => break network,
                Err(source) if Instant::now() + FIRST_PAUSE >= deadline => {
                    return Err(FetchConfigError::Network {
                        endpoint: endpoint.to_string(),
                        source,
                    });
                }
                Err(err) => {
                    tracing::warn!(%endpoint, "no network to fetch the machine configuration: {}; trying again", baton_client::error_chain(&err));
                    std::thread::sleep(FIRST_PAUSE);
                }
            }
        };
        *lease.lock().unwrap_or_else(PoisonError::into_inner) = Some(network);
    }
    let started = Instant::now();
    let deadline = started + wait;
    let mut pause = FIRST_PAUSE;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let attempt = match endpoint {
            MetadataEndpoint::Http { uri, address } => http_get(uri, *address),
            MetadataEndpoint::Vsock { cid, port } => vsock_read(*cid, *port),
        };
        match attempt {
            Ok(yaml) => {
                return Ok(FoundConfig {
                    yaml,
                    source: endpoint.to_string(),
                });
            }
            Err(last) if Instant::now() + pause >= deadline => {
                return Err(FetchConfigError::Unanswered {
                    endpoint: endpoint.to_string(),
                    attempts,
                    waited: started.elapsed(),
                    last,
                });
            }
            Err(err) => {
                tracing::warn!(%endpoint, "fetching the machine configuration: {}; trying again in {pause:?}", baton_client::error_chain(&err));
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// One GET of `uri` from `address`, on a runtime of its own (boot calls this on a blocking
/// thread).
fn http_get(uri: &http::Uri, address: SocketAddr) -> Result<String, FetchAttemptError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(FetchAttemptError::Runtime)?;
    runtime.block_on(async {
        tokio::time::timeout(ATTEMPT_TIMEOUT, http_exchange(uri, address))
            .await
            .unwrap_or(Err(FetchAttemptError::TimedOut))
    })
}

async fn http_exchange(uri: &http::Uri, address: SocketAddr) -> Result<String, FetchAttemptError> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(FetchAttemptError::Connect)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(FetchAttemptError::Http)?;
    let connection = tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or("", |a| a.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "baton-init")
        .body(Empty::<Bytes>::new())
        .expect("a GET of a parsed URL's path is a valid request");
    let response = sender
        .send_request(request)
        .await
        .map_err(FetchAttemptError::Http)?;
    if !response.status().is_success() {
        connection.abort();
        return Err(FetchAttemptError::Status(response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_CONFIG_BYTES)
        .collect()
        .await
        .map_err(|err| match err.downcast::<hyper::Error>() {
            Ok(err) => FetchAttemptError::Http(*err),
            Err(_) => FetchAttemptError::TooLarge,
        })?
        .to_bytes();
    connection.abort();
    String::from_utf8(body.to_vec()).map_err(|_| FetchAttemptError::NotUtf8)
}

/// One connection to `cid`:`port`, read to its end within [`ATTEMPT_TIMEOUT`] in all.
fn vsock_read(cid: u32, port: u32) -> Result<String, FetchAttemptError> {
    let mut stream =
        vsock::VsockStream::connect_with_cid_port(cid, port).map_err(FetchAttemptError::Connect)?;
    read_document(ReadByDeadline::new(&mut stream, ATTEMPT_TIMEOUT))
}

/// Everything `stream` gives until it ends, as text, at most [`MAX_CONFIG_BYTES`].
fn read_document(stream: impl Read) -> Result<String, FetchAttemptError> {
    let mut bytes = Vec::new();
    stream
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                FetchAttemptError::TimedOut
            }
            _ => FetchAttemptError::Read(err),
        })?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(FetchAttemptError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| FetchAttemptError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_from_the_command_line_value() {
        assert_eq!(MetadataEndpoint::parse("/etc/other.yaml").unwrap(), None);
        let Some(MetadataEndpoint::Http { uri, address }) =
            MetadataEndpoint::parse("http://10.0.2.2:8080/nodes/w1.yaml?x=1").unwrap()
        else {
            panic!("an HTTP endpoint");
        };
        assert_eq!(address, "10.0.2.2:8080".parse().unwrap());
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/nodes/w1.yaml?x=1");
        let Some(MetadataEndpoint::Http { address, .. }) =
            MetadataEndpoint::parse("http://[fd00::1]/config").unwrap()
        else {
            panic!("an HTTP endpoint");
        };
        assert_eq!(address, "[fd00::1]:80".parse().unwrap());
        assert_eq!(
            MetadataEndpoint::parse("vsock:1025").unwrap(),
            Some(MetadataEndpoint::Vsock { cid: 2, port: 1025 })
        );
        assert_eq!(
            MetadataEndpoint::parse("vsock:3:1025").unwrap(),
            Some(MetadataEndpoint::Vsock { cid: 3, port: 1025 })
        );
    }

    #[test]
    fn unusable_endpoints_are_refused_by_name() {
        for (value, message) in [
            (
                "https://10.0.2.2/c",
                "baton.config=https://10.0.2.2/c: only http:// URLs are fetched (no TLS before the node has its CA)",
            ),
            (
                "http://metadata.local/c",
                "baton.config=http://metadata.local/c: the host must be an IP address (a node resolves no names before its configuration)",
            ),
            (
                "vsock:x",
                "baton.config=vsock:x: expected vsock:PORT or vsock:CID:PORT",
            ),
            (
                "vsock:1:2:3",
                "baton.config=vsock:1:2:3: expected vsock:PORT or vsock:CID:PORT",
            ),
            (
                "config.yaml",
                "baton.config=config.yaml: expected an absolute path, an http:// URL or vsock:PORT",
            ),
        ] {
            let err = MetadataEndpoint::parse(value).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn a_document_is_read_to_its_end_within_the_limit() {
        let (mut host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut host, b"apiVersion: baton.dev/v1alpha1\n").unwrap();
        drop(host);
        assert_eq!(
            read_document(guest).unwrap(),
            "apiVersion: baton.dev/v1alpha1\n"
        );
        let big = vec![b'a'; MAX_CONFIG_BYTES + 1];
        assert!(matches!(
            read_document(big.as_slice()),
            Err(FetchAttemptError::TooLarge)
        ));
        assert!(matches!(
            read_document([0xff, 0xfe].as_slice()),
            Err(FetchAttemptError::NotUtf8)
        ));
        // A host that neither writes nor closes: the attempt ends at the read timeout.
        let (_host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        guest
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        assert!(matches!(
            read_document(guest),
            Err(FetchAttemptError::TimedOut)
        ));
    }
}
