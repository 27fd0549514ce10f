//! The transport of every in-tree API client: HTTP/2 over one TLS connection per client, as
//! client-go uses, rather than kube-rs's HTTP/1.1 pool. Over HTTP/1.1 each watch holds a
//! connection of its own and each request in flight one more, every one with its TLS state and
//! read buffer: the controller manager, with a watch per resource, held dozens. Over HTTP/2 the
//! watches and requests of a client are streams of one connection, kept alive with pings so that
//! a dead peer is noticed (client-go's 30 s read-idle and 15 s ping timeouts), and with Go's
//! flow-control windows, so that a few watch readers that fall behind cannot stall the rest. An
//! API server that does not offer h2 by ALPN is spoken to in HTTP/1.1 on the same connector,
//! without pings (and without kube's read timeout, which would also end connections idle in
//! the pool). Requests started together before the first connection is up may each open one
//! (HTTP/2 is known only once ALPN has answered), so the `connect` functions make one request
//! first. Proxies are not supported: a configured one (the kubeconfig's proxy-url, else
//! $HTTPS_PROXY, as kube reads them) is refused, as kube-rs's client without its proxy features
//! refused it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{ClientBuilder, ConfigExt, DynBody};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::util::BoxService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// The client's stack, as kube's own builder types it.
pub type GenericService =
    BoxService<http::Request<kube::client::Body>, http::Response<Box<DynBody>>, BoxError>;

/// How often an idle connection is pinged (client-go's ReadIdleTimeout).
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is given up (client-go's
/// PingTimeout).
const PING_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a connection attempt may take when the configuration names no limit.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The connection's flow-control window: what the client may have received and not yet read,
/// over all streams (Go's HTTP/2 transport: 1 GiB).
const CONNECTION_WINDOW: u32 = 1 << 30;
/// A stream's flow-control window (Go's HTTP/2 transport: 4 MiB).
const STREAM_WINDOW: u32 = 4 << 20;

/// Building the HTTP/2 client failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildClientError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(
        "proxy {0} is configured (the kubeconfig's proxy-url or $HTTPS_PROXY), but Baton's components connect to the API server directly"
    )]
    Proxy(http::Uri),
    #[error("tls-server-name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
}

/// A builder of a kube client for `config` over HTTP/2 (see the module's doc), with kube's own
/// layers: the cluster URL, authentication, extra headers (user agent, impersonation) and the
/// retry of 429/503/504 answers when the configuration asks for it.
pub fn client_builder(
    config: &kube::Config,
) -> Result<ClientBuilder<GenericService>, BuildClientError> {
    if let Some(proxy) = &config.proxy_url {
        return Err(BuildClientError::Proxy(proxy.clone()));
    }
    if let Some(name) = &config.tls_server_name
        && ServerName::try_from(name.as_str()).is_err()
    {
        return Err(BuildClientError::ServerName(name.clone()));
    }
    let mut tls = config.rustls_client_config()?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = Connector {
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        server_name: config.tls_server_name.clone(),
        timeout: config.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
    };
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_INTERVAL)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .build(connector);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .service(http.map_err(BoxError::from))
        .map_response(|response: http::Response<Incoming>| {
            response.map(|body| Box::new(body.map_err(BoxError::from)) as Box<DynBody>)
        })
        .boxed();
    Ok(ClientBuilder::new(
        service,
        config.default_namespace.clone(),
    ))
}

/// Opens TCP connections to the API server, with TLS for `https` URLs (offering h2 first).
#[derive(Clone)]
struct Connector {
    tls: tokio_rustls::TlsConnector,
    /// The name to verify the server's certificate against instead of the URL's host.
    server_name: Option<String>,
    timeout: Duration,
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            tokio::time::timeout(connector.timeout, connector.connect(&uri))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {uri} took over {:?}", connector.timeout),
                    )
                })?
                .map(TokioIo::new)
        })
    }
}

impl Connector {
    async fn connect(&self, uri: &http::Uri) -> io::Result<Stream> {
        let invalid =
            |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} in {uri}"));
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        // An IPv6 literal keeps its brackets in the URI.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid("an unknown scheme")),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        if !https {
            return Ok(Stream::Plain(tcp));
        }
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_string())
            .map_err(|_| invalid("an invalid server name"))?;
        let tls = self.tls.connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// A connection to the API server.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(_) => Connected::new(),
            Stream::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            Stream::Tls(_) => Connected::new(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
