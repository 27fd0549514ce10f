//! The DNS server: a hickory-server [`RequestHandler`] that answers the cluster domain (and
//! PTR queries for cluster addresses) from the [`SharedIndex`] and forwards everything else
//! upstream, served on one UDP socket and one TCP listener.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Name, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

use crate::forward::Forwarder;
use crate::records::{Answer, SharedIndex};

/// How long an idle TCP connection is kept.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// How many ports to try when asked for any free port (UDP and TCP must share it).
const FREE_PORT_ATTEMPTS: usize = 16;

/// Answers queries from the index, forwarding what is not the cluster's.
#[derive(Debug, Clone)]
pub struct ClusterDnsHandler {
    index: SharedIndex,
    forwarder: Forwarder,
}

impl ClusterDnsHandler {
    /// A handler answering from `index` and forwarding through `forwarder`.
    pub fn new(index: SharedIndex, forwarder: Forwarder) -> Self {
        ClusterDnsHandler { index, forwarder }
    }
}

/// The parts of a response that are not the question.
#[derive(Debug, Default)]
struct Reply {
    metadata_from: Option<Metadata>,
    authoritative: bool,
    response_code: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

#[async_trait::async_trait]
impl RequestHandler for ClusterDnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        // As hickory's catalog does: EDNS answered with EDNS (version 0).
        let response_edns = request.edns.as_ref().map(|edns| {
            let mut response = Edns::new();
            response.set_max_payload(edns.max_payload().max(512));
            response.set_version(0);
            response
        });
        let reply = self.reply(request).await;
        send(request, response_edns.as_ref(), reply, response_handle).await
    }
}

impl ClusterDnsHandler {
    async fn reply(&self, request: &Request) -> Reply {
        let error = |response_code| Reply {
            response_code,
            ..Reply::default()
        };
        if request.metadata.message_type != MessageType::Query {
            return error(ResponseCode::FormErr);
        }
        if request.metadata.op_code != OpCode::Query {
            return error(ResponseCode::NotImp);
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return error(ResponseCode::BADVERS);
        }
        let Ok(info) = request.request_info() else {
            return error(ResponseCode::FormErr);
        };
        let query = info.query.original().clone();
        let answer = if query.query_class() == DNSClass::IN {
            self.index.get().lookup(query.name(), query.query_type())
        } else {
            Answer::Forward
        };
        let soa_reply = |response_code, soa| Reply {
            authoritative: true,
            response_code,
            authorities: vec![soa],
            ..Reply::default()
        };
        match answer {
            Answer::Forward => self.forward(request, &query).await,
            Answer::NotReady => {
                tracing::debug!(name = %query.name(), "cluster records not synced yet");
                error(ResponseCode::ServFail)
            }
            Answer::NoData(soa) => soa_reply(ResponseCode::NoError, soa),
            Answer::NxDomain(soa) => soa_reply(ResponseCode::NXDomain, soa),
            Answer::Found {
                mut answers,
                additionals,
                resolve_externally,
            } => {
                if let Some(target) = resolve_externally {
                    answers.extend(self.resolve_alias(request, &query, target).await);
                }
                Reply {
                    authoritative: true,
                    answers,
                    additionals,
                    ..Reply::default()
                }
            }
        }
    }

    /// The upstream's answer, passed through (with its flags and response code), or SERVFAIL.
    async fn forward(&self, request: &Request, query: &Query) -> Reply {
        let metadata = &request.metadata;
        match self
            .forwarder
            .forward(
                query,
                metadata.recursion_desired,
                metadata.checking_disabled,
            )
            .await
        {
            Ok(upstream) => Reply {
                metadata_from: Some(upstream.metadata),
                authoritative: upstream.metadata.authoritative,
                response_code: upstream.metadata.response_code,
                answers: upstream.answers,
                authorities: upstream.authorities,
                additionals: upstream.additionals,
            },
            Err(err) => {
                tracing::warn!(
                    name = %query.name(),
                    qtype = %query.query_type(),
                    err = %baton_client::error_chain(&err),
                    "forwarding failed"
                );
                Reply {
                    response_code: ResponseCode::ServFail,
                    ..Reply::default()
                }
            }
        }
    }

    /// The records of an alias target outside the cluster domain (an ExternalName's), from
    /// upstream; none if upstream has none.
    async fn resolve_alias(&self, request: &Request, query: &Query, target: Name) -> Vec<Record> {
        let mut alias_query = query.clone();
        alias_query.set_name(target);
        let metadata = &request.metadata;
        match self
            .forwarder
            .forward(&alias_query, true, metadata.checking_disabled)
            .await
        {
            Ok(upstream) => upstream.answers,
            Err(err) => {
                tracing::debug!(
                    name = %alias_query.name(),
                    err = %baton_client::error_chain(&err),
                    "resolving an alias target failed"
                );
                Vec::new()
            }
        }
    }
}

/// Sends `reply` to the request (truncated to the client's UDP size by hickory).
async fn send<R: ResponseHandler>(
    request: &Request,
    edns: Option<&Edns>,
    reply: Reply,
    mut response_handle: R,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = reply.authoritative;
    metadata.response_code = reply.response_code;
    if let Some(upstream) = reply.metadata_from {
        metadata.recursion_available = upstream.recursion_available;
        metadata.authentic_data = upstream.authentic_data;
    }
    let builder = MessageResponseBuilder::new(&request.queries, edns);
    let response = builder.build(
        metadata,
        reply.answers.iter(),
        reply.authorities.iter(),
        std::iter::empty(),
        reply.additionals.iter(),
    );
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(err) => {
            tracing::warn!(src = %request.src(), %err, "sending a response failed");
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeDnsError {
    /// The UDP socket could not be bound.
    #[error("bind UDP {address}")]
    BindUdp {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TCP listener could not be bound.
    #[error("bind TCP {address}")]
    BindTcp {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A listener stopped.
    #[error("serve DNS on {address}")]
    Stopped {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: hickory_server::net::NetError,
    },
}

/// A running DNS server; dropping it stops it.
pub struct DnsServer {
    address: SocketAddr,
    server: Server<ClusterDnsHandler>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// The address served, over both UDP and TCP (the port chosen if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves until a listener fails.
    pub async fn wait(mut self) -> Result<(), ServeDnsError> {
        let address = self.address;
        self.server
            .block_until_done()
            .await
            .map_err(|source| ServeDnsError::Stopped { address, source })
    }

    /// Stops accepting queries and waits for the listeners to finish.
    pub async fn shutdown(mut self) -> Result<(), ServeDnsError> {
        let address = self.address;
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|source| ServeDnsError::Stopped { address, source })
    }
}

/// Serves DNS over UDP and TCP on `listen` (port 0: a free port, the same for both), answering
/// from `index` and forwarding through `forwarder`.
pub async fn serve(
    listen: SocketAddr,
    index: SharedIndex,
    forwarder: Forwarder,
) -> Result<DnsServer, ServeDnsError> {
    let (udp, tcp) = bind(listen).await?;
    let address = udp.local_addr().map_err(|source| ServeDnsError::BindUdp {
        address: listen,
        source,
    })?;
    let mut server = Server::new(ClusterDnsHandler::new(index, forwarder));
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    tracing::info!(%address, "serving DNS over UDP and TCP");
    Ok(DnsServer { address, server })
}

/// A UDP socket and a TCP listener on the same address.
async fn bind(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), ServeDnsError> {
    let attempts = if listen.port() == 0 {
        FREE_PORT_ATTEMPTS
    } else {
        1
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| ServeDnsError::BindUdp {
                address: listen,
                source,
            })?;
        let address = udp.local_addr().map_err(|source| ServeDnsError::BindUdp {
            address: listen,
            source,
        })?;
        match TcpListener::bind(address).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // The UDP port chosen is taken for TCP: try another one.
            Err(err) if attempt < attempts && err.kind() == std::io::ErrorKind::AddrInUse => {
                continue;
            }
            Err(source) => return Err(ServeDnsError::BindTcp { address, source }),
        }
    }
}
