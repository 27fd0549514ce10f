//! Forwarding a query to the upstream resolvers: over UDP, again over TCP when the UDP answer
//! is truncated, one upstream after another until one answers (CoreDNS's `forward` plugin with
//! a fixed order instead of a random one).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::ProtoError;
use hickory_server::proto::op::{Edns, Message, MessageType, Query};
use hickory_server::proto::serialize::binary::DecodeError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream has to answer one exchange (CoreDNS's `forward` read timeout).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The UDP payload size offered to upstreams (the DNS Flag Day 2020 value).
const UPSTREAM_EDNS_PAYLOAD: u16 = 1232;

/// The transports a query travels over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (after a truncated UDP answer).
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        })
    }
}

/// Forwarding a query failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardQueryError {
    /// There is no upstream to ask.
    #[error("no upstream resolver is configured")]
    NoUpstream,
    /// The query could not be encoded.
    #[error("encode the query for {name}")]
    Encode {
        /// The name asked for.
        name: String,
        /// Why.
        #[source]
        source: ProtoError,
    },
    /// Talking to an upstream failed.
    #[error("ask {upstream} over {transport}")]
    Exchange {
        /// The upstream.
        upstream: SocketAddr,
        /// The transport.
        transport: Transport,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An upstream answered with something that is not a DNS message.
    #[error("decode the answer of {upstream} over {transport}")]
    Decode {
        /// The upstream.
        upstream: SocketAddr,
        /// The transport.
        transport: Transport,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// An upstream did not answer in time.
    #[error("{upstream} did not answer over {transport} within {timeout:?}")]
    Timeout {
        /// The upstream.
        upstream: SocketAddr,
        /// The transport.
        transport: Transport,
        /// The time it had.
        timeout: Duration,
    },
}

/// Forwards queries to a list of upstream resolvers.
#[derive(Debug, Clone)]
pub struct Forwarder {
    upstreams: Arc<[SocketAddr]>,
    timeout: Duration,
}

impl Forwarder {
    /// A forwarder to `upstreams` (asked in this order), each given `timeout` per exchange.
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Forwarder {
            upstreams: upstreams.into(),
            timeout,
        }
    }

    /// The upstreams, in the order they are asked.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The first answer an upstream gives to `query` (whatever its response code), asking
    /// each upstream in turn until one answers; the last failure if none does.
    pub async fn forward(
        &self,
        query: &Query,
        recursion_desired: bool,
        checking_disabled: bool,
    ) -> Result<Message, ForwardQueryError> {
        let mut request = Message::query();
        request.metadata.recursion_desired = recursion_desired;
        request.metadata.checking_disabled = checking_disabled;
        request.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(UPSTREAM_EDNS_PAYLOAD);
        request.set_edns(edns);
        let bytes = request
            .to_vec()
            .map_err(|source| ForwardQueryError::Encode {
                name: query.name().to_string(),
                source,
            })?;
        let mut last = ForwardQueryError::NoUpstream;
        for upstream in self.upstreams.iter() {
            match self.exchange(*upstream, &request, &bytes).await {
                Ok(response) => return Ok(response),
                Err(err) => {
                    tracing::debug!(%upstream, err = %baton_client::error_chain(&err), "upstream failed");
                    last = err;
                }
            }
        }
        Err(last)
    }

    /// One upstream's answer: over UDP, and over TCP if that was truncated.
    async fn exchange(
        &self,
        upstream: SocketAddr,
        request: &Message,
        bytes: &[u8],
    ) -> Result<Message, ForwardQueryError> {
        let response = self
            .timed(
                upstream,
                Transport::Udp,
                udp_exchange(upstream, request, bytes),
            )
            .await?;
        if !response.metadata.truncation {
            return Ok(response);
        }
        tracing::debug!(%upstream, "truncated UDP answer; asking again over TCP");
        self.timed(
            upstream,
            Transport::Tcp,
            tcp_exchange(upstream, request, bytes),
        )
        .await
    }

    async fn timed(
        &self,
        upstream: SocketAddr,
        transport: Transport,
        exchange: impl Future<Output = Result<Message, Failure>>,
    ) -> Result<Message, ForwardQueryError> {
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(ForwardQueryError::Timeout {
                upstream,
                transport,
                timeout: self.timeout,
            }),
            Ok(Ok(message)) => Ok(message),
            Ok(Err(Failure::Io(source))) => Err(ForwardQueryError::Exchange {
                upstream,
                transport,
                source,
            }),
            Ok(Err(Failure::Decode(source))) => Err(ForwardQueryError::Decode {
                upstream,
                transport,
                source,
            }),
        }
    }
}

/// Why one exchange failed (the caller adds the upstream and transport).
#[derive(Debug)]
enum Failure {
    Io(io::Error),
    Decode(DecodeError),
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Self {
        Failure::Io(err)
    }
}

/// Whether `response` answers `request` (same id, a response, the same question).
fn answers(request: &Message, response: &Message) -> bool {
    response.metadata.id == request.metadata.id
        && response.metadata.message_type == MessageType::Response
        && response.queries.len() == request.queries.len()
        && response.queries.iter().zip(&request.queries).all(|(a, b)| {
            a.query_type() == b.query_type()
                && a.query_class() == b.query_class()
                && a.name().eq_ignore_root(b.name())
        })
}

/// Sends the query from a fresh socket connected to the upstream (so that only its datagrams
/// are received) and waits for the matching answer, ignoring stray datagrams.
async fn udp_exchange(
    upstream: SocketAddr,
    request: &Message,
    bytes: &[u8],
) -> Result<Message, Failure> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buffer = vec![0u8; 65535];
    loop {
        let len = socket.recv(&mut buffer).await?;
        match Message::from_vec(&buffer[..len]) {
            Ok(response) if answers(request, &response) => return Ok(response),
            Ok(_) => tracing::debug!(%upstream, "ignoring a UDP answer to another query"),
            Err(err) => tracing::debug!(%upstream, %err, "ignoring an undecodable UDP datagram"),
        }
    }
}

/// Sends the query over a new TCP connection (two-byte length prefix, RFC 1035 4.2.2).
async fn tcp_exchange(
    upstream: SocketAddr,
    request: &Message,
    bytes: &[u8],
) -> Result<Message, Failure> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long for TCP"))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    loop {
        let len = stream.read_u16().await?;
        let mut buffer = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buffer).await?;
        let response = Message::from_vec(&buffer).map_err(Failure::Decode)?;
        if answers(request, &response) {
            return Ok(response);
        }
        tracing::debug!(%upstream, "ignoring a TCP answer to another query");
    }
}
