//! The client side: a tonic channel to one node over TLS that rustls sets up here, so that the
//! connection may be made from inside a network namespace or through a VMM's vsock device and,
//! for a node in maintenance mode without a usable CA, without checking the node's certificate
//! (`--insecure`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_network::NetNs;
use baton_pki::tls::AnyServerCertificate;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::node_client::NodeClient;

/// How long connecting (TCP and the TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client proves and trusts.
#[derive(Clone)]
pub struct ClientCredentials {
    /// The cluster CA the node's certificate must chain to; `None` accepts any certificate
    /// (only for a node in maintenance mode that has no usable CA).
    pub ca_pem: Option<String>,
    /// The client certificate (the cluster CA's, in group `system:masters`) and its key, PEM.
    pub client: Option<(String, String)>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("verifies_server", &self.ca_pem.is_some())
            .field("presents_certificate", &self.client.is_some())
            .finish()
    }
}

/// Where the node is, and how to reach it.
#[derive(Clone, Debug)]
pub enum NodeTarget {
    /// Over TCP.
    Tcp {
        /// Its node API address.
        address: SocketAddr,
        /// A network namespace to connect from (a pinned namespace's path), when the node is
        /// not reachable from the caller's own.
        netns: Option<PathBuf>,
    },
    /// Through the vsock device of the microVM the node runs in: the host end of the device
    /// is the Unix socket `uds`, where a connection writes `CONNECT PORT\n` and reads
    /// `OK ...\n` before it carries the guest port's bytes (Baton's VMM and Firecracker both
    /// work so). The node relays its vsock port to its node API.
    Vsock {
        /// The vsock device's Unix socket.
        uds: PathBuf,
        /// The guest's port ([`NODE_API_PORT`](crate::NODE_API_PORT)).
        port: u32,
    },
}

impl std::fmt::Display for NodeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { address, .. } => write!(f, "{address}"),
            Self::Vsock { uds, port } => write!(f, "vsock port {port} through {}", uds.display()),
        }
    }
}

/// The address the node's certificate is checked for over vsock, which has none: every node
/// API certificate Baton issues names 127.0.0.1 (the node's loopback, where init relays a
/// vsock connection to).
const VSOCK_SERVER_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;
/// The longest answer line to `CONNECT` read.
const MAX_CONNECT_ANSWER: usize = 64;

/// Why a connection to a node could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectNodeError {
    /// The CA or the client certificate or key is not usable PEM.
    #[error("{what}: {detail}")]
    Credentials {
        /// Which part (`the CA certificate`, `the client key` ...).
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    /// The channel could not be made.
    #[error("connecting to the node API at {target}")]
    Connect {
        /// Where the node is.
        target: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Connects to the node API of `target` with `credentials`.
pub async fn connect(
    target: &NodeTarget,
    credentials: &ClientCredentials,
) -> Result<NodeClient<Channel>, ConnectNodeError> {
    let tls = Arc::new(client_config(credentials)?);
    let route = target.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tls.clone();
        let route = route.clone();
        async move {
            let timed_out =
                |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_owned());
            let (stream, name): (Box<dyn Transport>, ServerName<'static>) = match route {
                NodeTarget::Tcp { address, netns } => {
                    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, open_tcp(address, netns))
                        .await
                        .map_err(|_| timed_out("timed out"))??;
                    (Box::new(tcp), ServerName::IpAddress(address.ip().into()))
                }
                NodeTarget::Vsock { uds, port } => {
                    let stream = tokio::time::timeout(CONNECT_TIMEOUT, open_vsock(&uds, port))
                        .await
                        .map_err(|_| timed_out("timed out"))??;
                    let name =
                        ServerName::IpAddress(std::net::IpAddr::from(VSOCK_SERVER_ADDRESS).into());
                    (Box::new(stream), name)
                }
            };
            let stream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                TlsConnector::from(tls).connect(name, stream),
            )
            .await
            .map_err(|_| timed_out("TLS handshake timed out"))??;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let connect_error = |source| ConnectNodeError::Connect {
        target: target.to_string(),
        source,
    };
    // The URI only names the authority for HTTP/2; the connector makes the connection.
    let authority = match target {
        NodeTarget::Tcp { address, .. } => address.to_string(),
        NodeTarget::Vsock { .. } => VSOCK_SERVER_ADDRESS.to_string(),
    };
    let channel = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(connect_error)?
        .connect_with_connector(connector)
        .await
        .map_err(connect_error)?;
    Ok(NodeClient::new(channel))
}

/// A byte stream TLS runs over: TCP or a Unix socket.
trait Transport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Transport for T {}

/// A connection to guest port `port` through the vsock device whose host end is `uds`.
async fn open_vsock(uds: &Path, port: u32) -> std::io::Result<tokio::net::UnixStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(uds).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    // The answer, a byte at a time: what follows its newline is the guest's. The VMM closes
    // the connection without one when nothing listens on the guest port.
    let mut answer = Vec::new();
    loop {
        let byte = stream.read_u8().await.map_err(|err| {
            if err.kind() == std::io::ErrorKind::UnexpectedEof {
                std::io::Error::other(format!(
                    "the VMM closed the connection after CONNECT {port}: nothing listens on that guest port"
                ))
            } else {
                err
            }
        })?;
        if byte == b'\n' {
            break;
        }
        if answer.len() == MAX_CONNECT_ANSWER {
            return Err(std::io::Error::other(
                "the VMM's answer to CONNECT has no end",
            ));
        }
        answer.push(byte);
    }
    if !answer.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "the VMM answered CONNECT {port} with {:?}, not OK",
            String::from_utf8_lossy(&answer)
        )));
    }
    Ok(stream)
}

/// A TCP connection to `address`, opened inside `netns` when one is given.
async fn open_tcp(
    address: SocketAddr,
    netns: Option<PathBuf>,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(netns) = netns else {
        return tokio::net::TcpStream::connect(address).await;
    };
    let stream = tokio::task::spawn_blocking(move || {
        let namespace = NetNs::open(&netns).map_err(std::io::Error::other)?;
        namespace
            .run(|| std::net::TcpStream::connect_timeout(&address, CONNECT_TIMEOUT))
            .map_err(std::io::Error::other)?
    })
    .await
    .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

fn credentials_error(
    what: &'static str,
) -> impl Fn(rustls::pki_types::pem::Error) -> ConnectNodeError {
    move |err| ConnectNodeError::Credentials {
        what,
        detail: err.to_string(),
    }
}

fn client_config(
    credentials: &ClientCredentials,
) -> Result<rustls::ClientConfig, ConnectNodeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &credentials.ca_pem {
        Some(ca_pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                roots
                    .add(cert.map_err(credentials_error("the CA certificate"))?)
                    .map_err(|err| ConnectNodeError::Credentials {
                        what: "the CA certificate",
                        detail: err.to_string(),
                    })?;
            }
            if roots.is_empty() {
                return Err(ConnectNodeError::Credentials {
                    what: "the CA certificate",
                    detail: "no PEM certificate".into(),
                });
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate::new(provider))),
    };
    let mut config = match &credentials.client {
        Some((cert_pem, key_pem)) => {
            let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(credentials_error("the client certificate"))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(credentials_error("the client key"))?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
