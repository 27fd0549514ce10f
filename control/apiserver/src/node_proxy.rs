//! pods/log, pods/exec, pods/attach and pods/portforward, answered by the pod's kubelet as
//! kube-apiserver does: the request goes on to `https://<node InternalIP>:<kubelet port>/
//! containerLogs|exec|attach|portForward/...` with the API server's kubelet client certificate,
//! and nodes/NAME/proxy/PATH (for example `stats/summary`) goes on to PATH on that kubelet;
//! the answer streams back, and an upgraded connection (the WebSocket of `kubectl exec`) is
//! spliced through both ways.

use std::convert::Infallible;
use std::sync::Arc;

use rustls::pki_types::ServerName;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, BodyStream, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use baton_pki::tls::{read_certs, read_key};
use baton_store::Store;

use crate::ApiServer;
use crate::body::{Body, Query};
use crate::handlers::read::read_object;
use crate::request::RequestInfo;
use crate::resources;
use crate::status::StatusError;

/// The kubelet port when a Node does not announce one.
const DEFAULT_KUBELET_PORT: i64 = 10250;

/// Setting up the kubelet client failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeletClientError {
    #[error(transparent)]
    File(#[from] baton_pki::tls::TlsSetupError),
    #[error("kubelet client TLS settings")]
    Tls(#[source] rustls::Error),
}

/// How the API server connects to kubelets.
#[derive(Clone)]
pub struct KubeletClient {
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient").finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// A client presenting `cert`/`key` (when given) and verifying kubelets' serving
    /// certificates against `ca` (when given; without it, as kube-apiserver without
    /// --kubelet-certificate-authority, they are not verified).
    pub fn new(
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, KubeletClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(KubeletClientError::Tls)?;
        let builder = match ca {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs("--kubelet-certificate-authority", path)? {
                    roots.add(cert).map_err(KubeletClientError::Tls)?;
                }
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(
                    baton_pki::tls::AnyServerCertificate::new(provider),
                )),
        };
        let config = match (cert, key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs("--kubelet-client-certificate", cert)?;
                let key_der = read_key("--kubelet-client-key", key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(KubeletClientError::Tls)?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Self {
            tls: Arc::new(config),
        })
    }
}

/// A kubelet that could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ReachKubeletError {
    /// The node lists no address.
    #[error("the node has no address to reach its kubelet")]
    NoAddress,
    /// Connecting, the TLS handshake or the HTTP exchange failed.
    #[error("{0}")]
    Connection(String),
    /// The kubelet answered with an error.
    #[error("the kubelet answered {0}")]
    Status(StatusCode),
}

impl KubeletClient {
    /// An HTTP/1 connection to `node`'s kubelet (upgrades allowed).
    async fn connect(
        &self,
        node: &Value,
    ) -> Result<hyper::client::conn::http1::SendRequest<ForwardBody>, ReachKubeletError> {
        let address = node_address(node).ok_or(ReachKubeletError::NoAddress)?;
        let host = kubelet_host(node).ok_or(ReachKubeletError::NoAddress)?;
        let failed = |err: &dyn std::fmt::Display| ReachKubeletError::Connection(err.to_string());
        let stream = tokio::net::TcpStream::connect(&host)
            .await
            .map_err(|err| failed(&err))?;
        let server_name = ServerName::try_from(address).map_err(|err| failed(&err))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(server_name, stream)
            .await
            .map_err(|err| failed(&err))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|err| failed(&err))?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(%err, "kubelet connection ended");
            }
        });
        Ok(sender)
    }

    /// GETs `path` from `node`'s kubelet and returns the body of a 200 answer (at most
    /// `limit` bytes).
    pub async fn get(
        &self,
        node: &Value,
        path: &str,
        limit: usize,
    ) -> Result<Bytes, ReachKubeletError> {
        let mut sender = self.connect(node).await?;
        let host = kubelet_host(node).ok_or(ReachKubeletError::NoAddress)?;
        let request = Request::get(path)
            .header(header::HOST, &host)
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|err| ReachKubeletError::Connection(err.to_string()))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|err| ReachKubeletError::Connection(err.to_string()))?;
        if answer.status() != StatusCode::OK {
            return Err(ReachKubeletError::Status(answer.status()));
        }
        http_body_util::Limited::new(answer.into_body(), limit)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|err| ReachKubeletError::Connection(err.to_string()))
    }
}

/// `address:port` (IPv6 in brackets) of `node`'s kubelet.
fn kubelet_host(node: &Value) -> Option<String> {
    let address = node_address(node)?;
    let port = kubelet_port(node);
    Some(if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    })
}

/// Whether the request is one the kubelet answers: a pod's log, exec, attach or portforward,
/// or a node's proxy.
pub fn is_node_proxied(info: &RequestInfo) -> bool {
    info.group.is_empty()
        && match (info.resource.as_str(), info.subresource.as_deref()) {
            ("pods", Some("log" | "exec" | "attach" | "portforward")) => true,
            // Nodes are not namespaced: /namespaces/x/nodes/... is no path at all.
            ("nodes", Some("proxy")) => info.namespace.is_none(),
            _ => false,
        }
}

/// Where on which kubelet a proxied request goes.
struct KubeletTarget {
    /// The Node object.
    node: Value,
    /// Path on the kubelet.
    path: String,
    /// Whether the kubelet's errors are passed on as they are (nodes/proxy) rather than as a
    /// Status (the pod subresources).
    raw_errors: bool,
}

/// Forwards the request to the kubelet that answers it.
pub async fn proxy<S: Store>(
    server: &ApiServer<S>,
    req: Request<Incoming>,
    info: &RequestInfo,
) -> Result<Response<Body>, StatusError> {
    let target = if info.resource == "nodes" {
        node_target(server, info).await?
    } else {
        pod_target(server, &req, info).await?
    };
    forward(server, req, target).await
}

/// `nodes/NAME[:PORT]/proxy/PATH`: PATH on that node's kubelet. Only the kubelet's port is
/// reached (with the API server's kubelet client certificate, which must not be presented to
/// anything else), and only at an address that is not loopback, link-local or unspecified.
async fn node_target<S: Store>(
    server: &ApiServer<S>,
    info: &RequestInfo,
) -> Result<KubeletTarget, StatusError> {
    let nodes = resources::find("", "v1", "nodes").ok_or_else(StatusError::no_such_path)?;
    let asked = info.name.as_deref().unwrap_or_default();
    let (name, port) = match asked.rsplit_once(':') {
        Some((name, port)) => (
            name,
            Some(
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| StatusError::bad_request(format!("invalid port: {port:?}")))?,
            ),
        ),
        None => (asked, None),
    };
    let node = read_object(server, nodes, &nodes.key(None, name), name).await?;
    let kubelet_port = kubelet_port(&node);
    if let Some(port) = port
        && i64::from(port) != kubelet_port
    {
        return Err(StatusError::bad_request(format!(
            "nodes/{name}:{port}/proxy: only the kubelet's port ({kubelet_port}) is proxied"
        )));
    }
    // Only an address is checked and reached: a host name could resolve anywhere.
    let address = node_address(&node).unwrap_or_default();
    match address.parse::<std::net::IpAddr>() {
        Ok(ip) if is_proxyable(ip) => {}
        Ok(ip) => {
            return Err(StatusError::bad_request(format!(
                "address not allowed: node {name} is at {ip}"
            )));
        }
        Err(_) => {
            return Err(StatusError::bad_request(format!(
                "node {name} has no IP address to proxy to (it has {address:?})"
            )));
        }
    }
    Ok(KubeletTarget {
        node,
        path: proxy_path(info.proxy_path.as_deref().unwrap_or_default())?,
        raw_errors: true,
    })
}

/// The kubelet path for the decoded segments after `proxy/`: each escaped again, `.` and `..`
/// refused.
fn proxy_path(segments: &[String]) -> Result<String, StatusError> {
    let mut path = String::new();
    for segment in segments {
        if segment == "." || segment == ".." {
            return Err(StatusError::bad_request(format!(
                "invalid proxy path segment {segment:?}"
            )));
        }
        path.push('/');
        path.extend(percent_encoding::utf8_percent_encode(segment, PATH_SEGMENT));
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// Characters escaped in a path segment (RFC 3986's `pchar` is what stays).
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Whether the API server may be sent to `ip` on a client's behalf (upstream's
/// `isProxyableIP`): not loopback, link-local or unspecified.
fn is_proxyable(ip: std::net::IpAddr) -> bool {
    // An IPv4 address written as IPv6 (::ffff:127.0.0.1) is that IPv4 address.
    let ip = ip.to_canonical();
    let link_local = match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    !(ip.is_loopback() || ip.is_unspecified() || link_local)
}

/// `pods/NAME/log|exec|attach|portforward`: the kubelet's endpoint for the pod's container.
async fn pod_target<S: Store>(
    server: &ApiServer<S>,
    req: &Request<Incoming>,
    info: &RequestInfo,
) -> Result<KubeletTarget, StatusError> {
    let pods = resources::find("", "v1", "pods").ok_or_else(StatusError::no_such_path)?;
    let nodes = resources::find("", "v1", "nodes").ok_or_else(StatusError::no_such_path)?;
    let name = info.name.as_deref().unwrap_or_default();
    let namespace = info.namespace.as_deref().unwrap_or("default");
    let pod = read_object(server, pods, &pods.key(Some(namespace), name), name).await?;
    let sub = info.subresource.as_deref().unwrap_or_default();
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node_name.is_empty() {
        return Err(StatusError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let query = Query::parse(req.uri().query());
    let container = match sub {
        "portforward" => String::new(),
        _ => container_name(&pod, query.get("container"), name)?,
    };
    let node = read_object(server, nodes, &nodes.key(None, node_name), node_name).await?;
    let endpoint = match sub {
        "log" => "containerLogs",
        "exec" => "exec",
        "attach" => "attach",
        _ => "portForward",
    };
    let mut path = format!("/{endpoint}/{namespace}/{name}");
    if !container.is_empty() {
        path.push('/');
        path.push_str(&container);
    }
    Ok(KubeletTarget {
        node,
        path,
        raw_errors: false,
    })
}

/// The port a Node announces for its kubelet, or the default.
fn kubelet_port(node: &Value) -> i64 {
    node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_i64()
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_KUBELET_PORT)
}

/// Headers that belong to one connection, not passed on (RFC 9110 section 7.6.1), except on
/// an upgrade, whose `Connection` and `Upgrade` the kubelet needs.
fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    ) || name.as_str().starts_with("proxy-")
}

/// Sends the request to the kubelet and streams (or splices, once upgraded) its answer back.
async fn forward<S: Store>(
    server: &ApiServer<S>,
    mut req: Request<Incoming>,
    target: KubeletTarget,
) -> Result<Response<Body>, StatusError> {
    let KubeletTarget {
        node,
        mut path,
        raw_errors,
    } = target;
    if let Some(query) = req.uri().query() {
        path.push('?');
        path.push_str(query);
    }
    let method = req.method().to_string();
    let node_name = node["metadata"]["name"].as_str().unwrap_or_default();
    let host = kubelet_host(&node).ok_or_else(|| {
        StatusError::internal(format!(
            "node {node_name} has no address to reach its kubelet"
        ))
    })?;
    let unreachable = |err: &dyn std::fmt::Display| {
        StatusError::internal(format!(
            "error trying to reach service: {} {}: {err}",
            method_text(&method),
            format_args!("https://{host}{path}")
        ))
    };
    let mut sender = server
        .kubelet_client
        .connect(&node)
        .await
        .map_err(|err| unreachable(&err))?;

    let upgrade = req.headers().contains_key(header::UPGRADE);
    let mut forward = Request::builder()
        .method(req.method().clone())
        .uri(&path)
        .header(header::HOST, &host);
    for (key, value) in req.headers() {
        let keeps_upgrade = upgrade && (key == header::CONNECTION || key == header::UPGRADE);
        if key == header::HOST
            || key == header::AUTHORIZATION
            || (is_hop_by_hop(key) && !keeps_upgrade)
        {
            continue;
        }
        forward = forward.header(key, value);
    }
    // An upgrade keeps its connection (and has no body); other requests stream their body on.
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let body: ForwardBody = if upgrade {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed()
    } else {
        req.into_body().boxed()
    };
    let forward = forward
        .body(body)
        .map_err(|err| StatusError::internal(err.to_string()))?;
    let mut answer = sender
        .send_request(forward)
        .await
        .map_err(|err| unreachable(&err))?;

    if let Some(client_side) = client_side
        && answer.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let kubelet_side = hyper::upgrade::on(&mut answer);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, kubelet_side) {
                Ok((client, kubelet)) => {
                    let mut client = TokioIo::new(client);
                    let mut kubelet = TokioIo::new(kubelet);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut kubelet).await;
                }
                Err(err) => tracing::debug!(%err, "upgrading a proxied connection"),
            }
        });
        let mut response = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (key, value) in answer.headers() {
            response = response.header(key, value);
        }
        return response
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|err| StatusError::internal(err.to_string()));
    }

    if !raw_errors && (answer.status().is_client_error() || answer.status().is_server_error()) {
        // The kubelet explains a refusal in plain text; clients expect a Status.
        let code = answer.status();
        let text = http_body_util::Limited::new(answer.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|body| String::from_utf8_lossy(&body.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        return Err(kubelet_refusal(code, text));
    }
    let (parts, body) = answer.into_parts();
    // Stream the kubelet's answer (a followed log goes on until either side stops).
    let frames = BodyStream::new(body)
        .take_while(|frame| std::future::ready(frame.is_ok()))
        .filter_map(|frame| std::future::ready(frame.ok()))
        .map(Ok::<Frame<Bytes>, Infallible>);
    Ok(Response::from_parts(
        parts,
        BodyExt::boxed(StreamBody::new(frames)),
    ))
}

/// The body of a request passed on to a kubelet.
type ForwardBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Most bytes of a kubelet's error answer passed on.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A kubelet's refusal as the Status kube-apiserver answers with.
fn kubelet_refusal(code: StatusCode, message: String) -> StatusError {
    match code {
        StatusCode::BAD_REQUEST => StatusError::bad_request(message),
        StatusCode::NOT_FOUND => {
            let mut err = StatusError::bad_request(message);
            err.code = StatusCode::NOT_FOUND;
            err.reason = "NotFound";
            err
        }
        _ => {
            let mut err = StatusError::internal(message);
            err.code = code;
            err
        }
    }
}

/// `GET` as Go's net/http names it in its errors (`Get "https://..."`).
fn method_text(method: &str) -> String {
    let mut chars = method.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_string() + &chars.as_str().to_ascii_lowercase()
    })
}

/// The container a log/exec/attach request means: the named one, or the pod's only one.
fn container_name(pod: &Value, asked: Option<&str>, pod_name: &str) -> Result<String, StatusError> {
    let names: Vec<&str> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|field| pod["spec"][field].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    match asked {
        Some(name) if names.contains(&name) => Ok(name.to_owned()),
        Some(name) => Err(StatusError::bad_request(format!(
            "container {name} is not valid for pod {pod_name}"
        ))),
        None => {
            let regular: Vec<&str> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            match regular.as_slice() {
                [only] => Ok((*only).to_owned()),
                _ => Err(StatusError::bad_request(format!(
                    "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                    regular.join(" ")
                ))),
            }
        }
    }
}

/// The address to reach a node's kubelet at: InternalIP, else ExternalIP, else Hostname.
fn node_address(node: &Value) -> Option<String> {
    let addresses = node["status"]["addresses"].as_array()?;
    ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|kind| {
            addresses
                .iter()
                .find(|a| a["type"] == *kind)
                .and_then(|a| a["address"].as_str())
                .map(str::to_owned)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_the_named_or_the_only_one() {
        let one = json!({ "spec": { "containers": [{ "name": "app" }] } });
        assert_eq!(container_name(&one, None, "p").unwrap(), "app");
        let two = json!({ "spec": {
            "initContainers": [{ "name": "setup" }],
            "containers": [{ "name": "app" }, { "name": "sidecar" }],
        } });
        let err = container_name(&two, None, "p").unwrap_err();
        assert!(err.to_status()["message"].as_str().unwrap().contains(
            "a container name must be specified for pod p, choose one of: [app sidecar]"
        ));
        assert_eq!(container_name(&two, Some("setup"), "p").unwrap(), "setup");
        assert!(container_name(&two, Some("nope"), "p").is_err());
    }

    #[test]
    fn proxy_paths_are_escaped_again_and_cannot_climb() {
        let segments = |parts: &[&str]| parts.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            proxy_path(&segments(&["stats", "summary"])).unwrap(),
            "/stats/summary"
        );
        assert_eq!(proxy_path(&[]).unwrap(), "/");
        // A decoded '/', '?' or space stays inside its segment.
        assert_eq!(
            proxy_path(&segments(&["a/b", "c?d e"])).unwrap(),
            "/a%2Fb/c%3Fd%20e"
        );
        assert!(proxy_path(&segments(&["logs", ".."])).is_err());
        assert!(proxy_path(&segments(&["."])).is_err());
    }

    #[test]
    fn only_routable_node_addresses_are_proxied_to() {
        for refused in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "169.254.169.254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_proxyable(refused.parse().unwrap()), "{refused}");
        }
        for allowed in ["10.250.0.2", "192.168.1.5", "fd00::2"] {
            assert!(is_proxyable(allowed.parse().unwrap()), "{allowed}");
        }
    }

    #[test]
    fn connection_headers_stay_behind() {
        for name in [
            "connection",
            "keep-alive",
            "te",
            "transfer-encoding",
            "proxy-authorization",
        ] {
            assert!(
                is_hop_by_hop(&header::HeaderName::from_static(name)),
                "{name}"
            );
        }
        assert!(!is_hop_by_hop(&header::ACCEPT));
    }

    #[test]
    fn kubelets_are_reached_at_the_internal_ip_first() {
        let node = json!({ "status": { "addresses": [
            { "type": "Hostname", "address": "n1" },
            { "type": "InternalIP", "address": "10.0.0.7" },
        ] } });
        assert_eq!(node_address(&node).as_deref(), Some("10.0.0.7"));
        assert_eq!(node_address(&json!({})), None);
    }
}
