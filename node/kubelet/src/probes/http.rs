//! httpGet probes and hooks: one HTTP/1.1 GET per connection (`Connection: close`), made from
//! inside the pod's network namespace, over TLS for scheme HTTPS. As upstream: the server's
//! certificate is not verified (the kubelet has nothing to verify a pod's against), the
//! User-Agent is `kube-probe/1.33` (or `kube-lifecycle/1.33` for hooks) and Accept `*/*`
//! unless httpHeaders set them (an empty Accept removes it), a Host header replaces the
//! request's host, redirects are followed only to the same host name (at most 10, whatever
//! their scheme), and a probe succeeds on 200..399: a redirect it did not follow succeeds with
//! a warning. The messages are upstream's (Go's client errors included), since users read them
//! in events.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ProbeOutput;
use super::netns::{connect, dial_message};

/// How much of a response body is kept (for the redirect warning).
pub const MAX_BODY: usize = 10 * 1024;
/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// How many redirects are followed at most (Go's client default).
const MAX_REDIRECTS: usize = 10;

/// A GET to make: where to connect, and what to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpGet {
    /// Scheme HTTPS: the exchange goes over TLS.
    pub tls: bool,
    /// The host as the URL names it.
    pub host: String,
    /// The address `host` stands for.
    pub addr: IpAddr,
    pub port: u16,
    /// Path and query, beginning with `/`.
    pub path: String,
    /// Request headers besides the defaults, in order.
    pub headers: Vec<(String, String)>,
}

impl HttpGet {
    fn url(&self) -> Url<'_> {
        Url {
            tls: self.tls,
            host: &self.host,
            port: self.port,
            path: &self.path,
        }
    }
}

/// An `http://` or `https://` URL as Go prints it.
struct Url<'a> {
    tls: bool,
    host: &'a str,
    port: u16,
    path: &'a str,
}

impl fmt::Display for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// The response that ended the exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// The first [`MAX_BODY`] bytes of the body, read only for a redirect not followed.
    pub body: Vec<u8>,
}

/// Runs an httpGet probe: success on 200..399 (a redirect not followed is a success with a
/// warning), failure otherwise, on a connection error, or after `timeout`.
pub async fn probe(
    netns: Option<&Path>,
    request: &HttpGet,
    user_agent: &str,
    timeout: Duration,
) -> ProbeOutput {
    match get(netns, request, user_agent, Some(timeout)).await {
        Ok(response) if (200..300).contains(&response.status) => ProbeOutput::Success,
        Ok(response) if (300..400).contains(&response.status) => ProbeOutput::Warning(format!(
            "Probe terminated redirects, Response body: {}",
            String::from_utf8_lossy(&response.body)
        )),
        Ok(response) => ProbeOutput::Failure(format!(
            "HTTP probe failed with statuscode: {}",
            response.status
        )),
        Err(message) => ProbeOutput::Failure(message),
    }
}

/// Makes the GET, following redirects to the same host name; `timeout` bounds the whole
/// exchange. Errors come back worded as Go's client words them (`Get "URL": ...`).
pub async fn get(
    netns: Option<&Path>,
    request: &HttpGet,
    user_agent: &str,
    timeout: Option<Duration>,
) -> Result<HttpResponse, String> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut current = request.clone();
    for hop in 0..=MAX_REDIRECTS {
        let url = current.url().to_string();
        let exchange = exchange(netns, &current, user_agent, &url, deadline);
        let head = match deadline {
            Some(at) => match tokio::time::timeout_at(at, exchange).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
            },
            None => exchange.await,
        }?;
        let (head, mut stream, rest) = head;
        let location = (300..400)
            .contains(&head.status)
            .then(|| head.header("location"))
            .flatten();
        let next = location.and_then(|location| redirect(&current, location));
        match next {
            Some(next) if next.host.eq_ignore_ascii_case(&request.host) => {
                if hop == MAX_REDIRECTS {
                    return Err(format!(
                        "Get \"{}\": stopped after 10 redirects",
                        next.url()
                    ));
                }
                current = next;
            }
            _ => {
                let body = if (300..400).contains(&head.status) {
                    let read = read_body(&mut stream, rest, &head);
                    match deadline {
                        Some(at) => tokio::time::timeout_at(at, read).await.unwrap_or_default(),
                        None => read.await,
                    }
                } else {
                    Vec::new()
                };
                return Ok(HttpResponse {
                    status: head.status,
                    body,
                });
            }
        }
    }
    unreachable!("the loop returns by its last hop")
}

/// A connection, plain or TLS.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// The TLS settings of HTTPS probes: any server certificate, as upstream's probes
/// (`InsecureSkipVerify`), HTTP/1.1.
static TLS: LazyLock<Arc<rustls::ClientConfig>> = LazyLock::new(|| {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(baton_pki::tls::AnyServerCertificate::new(
            provider,
        )))
        .with_no_client_auth();
    Arc::new(config)
});

/// One request on a new connection: returns the response head, the connection and the bytes
/// read after the head.
async fn exchange(
    netns: Option<&Path>,
    request: &HttpGet,
    user_agent: &str,
    url: &str,
    deadline: Option<tokio::time::Instant>,
) -> Result<(Head, Box<dyn Connection>, Vec<u8>), String> {
    let text = request_text(request, user_agent).map_err(|err| format!("Get \"{url}\": {err}"))?;
    let addr = SocketAddr::new(request.addr, request.port);
    // The caller bounds the whole exchange; the connect gets what is left of that bound, so
    // that a connecting thread never outlives the probe by much.
    let connect_timeout = deadline.map_or(Duration::from_secs(3600), |at| {
        at.saturating_duration_since(tokio::time::Instant::now())
    });
    let tcp = connect(netns, addr, connect_timeout)
        .await
        .map_err(|err| format!("Get \"{url}\": {}", dial_message(addr, &err)))?;
    let mut stream: Box<dyn Connection> = if request.tls {
        // The URL's host names the server (SNI), unless it is an address.
        let name = match request.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(request.host.clone())
                .map_err(|err| format!("Get \"{url}\": tls: {err}"))?,
        };
        let tls = tokio_rustls::TlsConnector::from(TLS.clone())
            .connect(name, tcp)
            .await
            .map_err(|err| format!("Get \"{url}\": tls: {}", tls_text(&err)))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    // A TLS stream holds records until it is flushed.
    let written = match stream.write_all(text.as_bytes()).await {
        Ok(()) => stream.flush().await,
        Err(err) => Err(err),
    };
    written.map_err(|err| {
        format!(
            "Get \"{url}\": write tcp {addr}: {}",
            super::netns::os_text(&err)
        )
    })?;
    let mut buffer = Vec::new();
    loop {
        let (head, used) = loop {
            if let Some(end) = find(&buffer, b"\r\n\r\n") {
                let head =
                    parse_head(&buffer[..end]).map_err(|err| format!("Get \"{url}\": {err}"))?;
                break (head, end + 4);
            }
            if buffer.len() > MAX_HEAD {
                return Err(format!(
                    "Get \"{url}\": net/http: server response headers exceeded {MAX_HEAD} bytes; aborted"
                ));
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(|err| {
                format!(
                    "Get \"{url}\": read tcp {addr}: {}",
                    super::netns::os_text(&err)
                )
            })?;
            if n == 0 {
                return Err(format!("Get \"{url}\": EOF"));
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        buffer.drain(..used);
        // Interim responses (100 Continue, 103 Early Hints) precede the real one.
        if (100..200).contains(&head.status) && head.status != 101 {
            continue;
        }
        return Ok((head, stream, buffer));
    }
}

/// A TLS failure as text: rustls's own error where there is one.
fn tls_text(err: &std::io::Error) -> String {
    err.get_ref()
        .map_or_else(|| super::netns::os_text(err), |inner| inner.to_string())
}

/// The request's bytes; refuses header fields that would break the request apart.
fn request_text(request: &HttpGet, user_agent: &str) -> Result<String, String> {
    let has = |name: &str| {
        request
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let host = request
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| {
            if request.host.contains(':') {
                format!("[{}]:{}", request.host, request.port)
            } else {
                format!("{}:{}", request.host, request.port)
            }
        });
    let mut text = format!("GET {} HTTP/1.1\r\nHost: {host}\r\n", request.path);
    if !has("user-agent") {
        text.push_str(&format!("User-Agent: {user_agent}\r\n"));
    }
    if !has("accept") {
        text.push_str("Accept: */*\r\n");
    }
    for (name, value) in &request.headers {
        let bad = |s: &str| s.contains(['\r', '\n']);
        if name.is_empty() || bad(name) || name.contains([':', ' ']) {
            return Err(format!("net/http: invalid header field name {name:?}"));
        }
        if bad(value) {
            return Err(format!("net/http: invalid header field value for {name:?}"));
        }
        // A Host header is the request's host; an empty Accept means no Accept at all.
        if name.eq_ignore_ascii_case("host")
            || (name.eq_ignore_ascii_case("accept") && value.is_empty())
        {
            continue;
        }
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Connection: close\r\n\r\n");
    Ok(text)
}

/// A response's status line and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse_head(bytes: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let malformed = || {
        format!(
            "net/http: HTTP/1.x transport connection broken: malformed HTTP response {status_line:?}"
        )
    };
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(malformed());
    }
    let status: u16 = code.parse().map_err(|_| malformed())?;
    let headers = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect();
    Ok(Head { status, headers })
}

/// Reads the body (up to [`MAX_BODY`]): by Content-Length, chunked, or to end of file.
async fn read_body(stream: &mut Box<dyn Connection>, mut raw: Vec<u8>, head: &Head) -> Vec<u8> {
    let length: Option<usize> = head.header("content-length").and_then(|v| v.parse().ok());
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let enough = |raw: &[u8]| match (chunked, length) {
        (true, _) => {
            raw.len() >= MAX_BODY * 2
                || find(raw, b"\r\n0\r\n").is_some()
                || raw.starts_with(b"0\r\n")
        }
        (false, Some(length)) => raw.len() >= length.min(MAX_BODY),
        (false, None) => raw.len() >= MAX_BODY,
    };
    while !enough(&raw) {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    }
    let mut body = if chunked { dechunk(&raw) } else { raw };
    if let Some(length) = length {
        body.truncate(length);
    }
    body.truncate(MAX_BODY);
    body
}

/// Decodes a chunked body as far as it is complete.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = find(raw, b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        let data = &raw[end + 2..];
        let take = size.min(data.len());
        body.extend_from_slice(&data[..take]);
        if take < size || data.len() < size + 2 {
            break;
        }
        raw = &data[size + 2..];
    }
    body
}

/// The request a redirect to `location` makes, if it can be followed (HTTP or HTTPS).
fn redirect(from: &HttpGet, location: &str) -> Option<HttpGet> {
    let (tls, (host, port, path)) = if let Some(rest) = location.strip_prefix("http://") {
        (false, split_authority(rest, 80)?)
    } else if let Some(rest) = location.strip_prefix("https://") {
        (true, split_authority(rest, 443)?)
    } else if location.contains("://") {
        // Another scheme: not followed.
        return None;
    } else if let Some(rest) = location.strip_prefix("//") {
        let default_port = if from.tls { 443 } else { 80 };
        (from.tls, split_authority(rest, default_port)?)
    } else if location.starts_with('/') {
        (
            from.tls,
            (from.host.clone(), from.port, location.to_owned()),
        )
    } else {
        let dir = match from.path.split('?').next().unwrap_or("/").rfind('/') {
            Some(slash) => &from.path[..=slash],
            None => "/",
        };
        (
            from.tls,
            (from.host.clone(), from.port, format!("{dir}{location}")),
        )
    };
    // Only the same host name is followed, so its address is the one already known.
    Some(HttpGet {
        tls,
        addr: from.addr,
        port,
        path,
        headers: from
            .headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("host"))
            .cloned()
            .collect(),
        host,
    })
}

/// `host[:port]/path` (or `[v6]:port/path`) into its parts; the port defaults to
/// `default_port`.
fn split_authority(rest: &str, default_port: u16) -> Option<(String, u16, String)> {
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_owned()),
        Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default_port,
    };
    Some((host.to_owned(), port, path))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers every connection with `response` and hands each request's text
    /// to the test.
    async fn serve(
        responses: Vec<String>,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for response in responses {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                while find(&request, b"\r\n\r\n").is_none() {
                    let mut chunk = [0u8; 1024];
                    let n = stream.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&chunk[..n]);
                }
                let _ = sender.send(String::from_utf8_lossy(&request).into_owned());
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        (addr, receiver)
    }

    fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpGet {
        HttpGet {
            tls: false,
            host: addr.ip().to_string(),
            addr: addr.ip(),
            port: addr.port(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    const SECOND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn success_failure_and_the_request_upstream_sends() {
        let (addr, mut requests) = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".into(),
            "HTTP/1.0 500 Internal Server Error\r\n\r\n".into(),
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n".into(),
        ])
        .await;
        let get = request(addr, "/healthz?x=1", &[("X-Custom", "yes"), ("Accept", "")]);
        assert_eq!(
            probe(None, &get, "kube-probe/1.33", SECOND).await,
            ProbeOutput::Success
        );
        let sent = requests.recv().await.unwrap();
        assert!(sent.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains(&format!("\r\nHost: {addr}\r\n")), "{sent}");
        assert!(
            sent.contains("\r\nUser-Agent: kube-probe/1.33\r\n"),
            "{sent}"
        );
        assert!(sent.contains("\r\nX-Custom: yes\r\n"), "{sent}");
        assert!(
            !sent.contains("Accept"),
            "an empty Accept removes it: {sent}"
        );
        assert!(sent.contains("\r\nConnection: close\r\n"), "{sent}");

        let get = request(
            addr,
            "/",
            &[("Host", "example.test"), ("User-Agent", "mine")],
        );
        assert_eq!(
            probe(None, &get, "kube-probe/1.33", SECOND).await,
            ProbeOutput::Failure("HTTP probe failed with statuscode: 500".into())
        );
        let sent = requests.recv().await.unwrap();
        assert!(sent.contains("\r\nHost: example.test\r\n"), "{sent}");
        assert!(sent.contains("\r\nUser-Agent: mine\r\n"), "{sent}");
        assert!(!sent.contains("kube-probe"), "{sent}");
        assert!(sent.contains("\r\nAccept: */*\r\n"), "{sent}");

        // Interim responses are skipped.
        let get = request(addr, "/", &[]);
        assert_eq!(
            probe(None, &get, "kube-probe/1.33", SECOND).await,
            ProbeOutput::Success
        );
    }

    #[tokio::test]
    async fn redirects_are_followed_only_to_the_same_host() {
        let (addr, mut requests) = serve(vec![
            "HTTP/1.1 302 Found\r\nLocation: /ready\r\nContent-Length: 0\r\n\r\n".into(),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".into(),
            "HTTP/1.1 301 Moved\r\nLocation: http://elsewhere.test/\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nmoved\r\n6\r\n away!\r\n0\r\n\r\n".into(),
        ])
        .await;
        let get = request(addr, "/start", &[]);
        assert_eq!(
            probe(None, &get, "kube-probe/1.33", SECOND).await,
            ProbeOutput::Failure("HTTP probe failed with statuscode: 503".into())
        );
        requests.recv().await.unwrap();
        let followed = requests.recv().await.unwrap();
        assert!(
            followed.starts_with("GET /ready HTTP/1.1\r\n"),
            "{followed}"
        );
        assert_eq!(
            probe(None, &get, "kube-probe/1.33", SECOND).await,
            ProbeOutput::Warning("Probe terminated redirects, Response body: moved away!".into())
        );
    }

    #[tokio::test]
    async fn errors_read_as_go_client_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepted (by the kernel) but never answered: the timeout.
        let get = request(addr, "/slow", &[]);
        assert_eq!(
            probe(None, &get, "kube-probe/1.33", Duration::from_millis(300)).await,
            ProbeOutput::Failure(format!(
                "Get \"http://{addr}/slow\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            ))
        );
        drop(listener);
        assert_eq!(
            probe(None, &get, "kube-probe/1.33", SECOND).await,
            ProbeOutput::Failure(format!(
                "Get \"http://{addr}/slow\": dial tcp {addr}: connect: connection refused"
            ))
        );
        let (addr, _requests) = serve(vec!["garbage\r\n\r\n".into()]).await;
        let get = request(addr, "/", &[]);
        assert_eq!(
            probe(None, &get, "kube-probe/1.33", SECOND).await,
            ProbeOutput::Failure(format!(
                "Get \"http://{addr}/\": net/http: HTTP/1.x transport connection broken: malformed HTTP response \"garbage\""
            ))
        );
        let get = request(addr, "/", &[("X-Bad", "a\r\nb")]);
        assert_eq!(
            get_text_error(&get).await,
            format!("Get \"http://{addr}/\": net/http: invalid header field value for \"X-Bad\"")
        );
    }

    async fn get_text_error(get: &HttpGet) -> String {
        super::get(None, get, "kube-probe/1.33", Some(SECOND))
            .await
            .unwrap_err()
    }

    #[test]
    fn redirect_targets_resolve_like_urls() {
        let from = HttpGet {
            tls: false,
            host: "10.0.0.1".into(),
            addr: "10.0.0.1".parse().unwrap(),
            port: 8080,
            path: "/a/b?q".into(),
            headers: vec![("Host".into(), "x".into()), ("X".into(), "y".into())],
        };
        let to = redirect(&from, "c").unwrap();
        assert_eq!(
            (to.host.as_str(), to.port, to.path.as_str()),
            ("10.0.0.1", 8080, "/a/c")
        );
        assert_eq!(to.headers, [("X".to_string(), "y".to_string())]);
        let to = redirect(&from, "http://10.0.0.1/x").unwrap();
        assert_eq!((to.port, to.path.as_str()), (80, "/x"));
        let to = redirect(&from, "//[fd00::1]:81?y").unwrap();
        assert_eq!(
            (to.host.as_str(), to.port, to.path.as_str()),
            ("fd00::1", 81, "/?y")
        );
        // Another scheme of the same host is followed, with its default port.
        let to = redirect(&from, "https://10.0.0.1/secure").unwrap();
        assert_eq!((to.tls, to.port, to.path.as_str()), (true, 443, "/secure"));
        assert_eq!(redirect(&from, "ftp://10.0.0.1/"), None);
        // A relative redirect keeps the scheme.
        let from_tls = HttpGet { tls: true, ..from };
        assert!(redirect(&from_tls, "/next").unwrap().tls);
    }

    /// An HTTPS server with a certificate nobody could verify (a fresh CA's), as pods have.
    async fn serve_tls(response: &'static str) -> SocketAddr {
        let dir = tempfile::tempdir().unwrap();
        let ca = baton_pki::ClusterCa::generate("probe-test-ca").unwrap();
        let issued = ca.issue_server("pod", &["pod.test".to_owned()]).unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        let config =
            baton_pki::tls::server_config(&cert, &key, None, baton_pki::tls::ClientAuth::Optional)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut request = Vec::new();
                while find(&request, b"\r\n\r\n").is_none() {
                    let mut chunk = [0u8; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_probes_talk_tls_without_verifying_the_pod() {
        let addr = serve_tls("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let get = HttpGet {
            tls: true,
            ..request(addr, "/healthz", &[])
        };
        assert_eq!(
            probe(None, &get, "kube-probe/1.33", SECOND).await,
            ProbeOutput::Success
        );
        // A plain HTTP server on an HTTPS probe's port fails the handshake, and says so (it
        // answers the handshake's bytes with a 400, as HTTP servers do).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await;
        });
        let get = HttpGet {
            tls: true,
            ..request(plain, "/", &[])
        };
        let ProbeOutput::Failure(message) = probe(None, &get, "kube-probe/1.33", SECOND).await
        else {
            panic!("a handshake with a plain HTTP server fails");
        };
        assert!(
            message.starts_with(&format!("Get \"https://{plain}/\": tls: ")),
            "{message}"
        );
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(dechunk(b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(dechunk(b"5\r\nab"), b"ab");
    }
}
