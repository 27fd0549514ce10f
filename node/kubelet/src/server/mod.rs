//! The kubelet's HTTPS server (port 10250): /healthz, /containerLogs, /exec and /attach
//! (WebSocket, v5/v4.channel.k8s.io), /portForward (SPDY/3.1, plain or inside a WebSocket),
//! /metrics, /metrics/resource, /stats/summary and /pods. The API server proxies pods/log,
//! pods/exec, pods/attach and pods/portforward here, and nodes/NAME/proxy/PATH to PATH.
//! Clients must present a certificate signed by --client-ca-file; without one the kubelet
//! serves only on a loopback address (and says so in its log). Any certificate of that CA is
//! allowed everything (no authorization by user yet). The serving certificate comes from
//! --tls-cert-file/--tls-private-key-file, or is made once under `<root-dir>/pki/` signed by a
//! CA of the node's own, as the upstream kubelet makes a self-signed one.

mod attach;
mod exec;
mod logs;
mod port_forward;
mod spdy;
mod stats;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::context::KubeletContext;

/// A response body of the kubelet server.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeKubeletError {
    #[error(transparent)]
    Tls(#[from] baton_pki::tls::TlsSetupError),
    #[error("make the kubelet's serving certificate")]
    Certificate(#[from] baton_pki::PkiError),
    #[error(
        "--client-ca-file is required to serve on {address} (without it every client could exec into every container); give it, or --address=127.0.0.1"
    )]
    NoClientCa { address: SocketAddr },
    #[error("listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where the server listens and with which certificates.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub address: SocketAddr,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
}

/// What handlers need.
pub(crate) struct ServerState {
    pub ctx: Arc<KubeletContext>,
    pub pods: Store<Pod>,
    pub stats: Arc<crate::stats::StatsCollector>,
}

impl ServerState {
    /// The pod `namespace/name` bound to this node.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .find(|pod| pod.namespace().as_deref() == Some(namespace) && pod.name_any() == name)
    }

    /// [`pod`](Self::pod), or the 404 to answer with.
    pub fn pod_or_not_found(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Pod>, Box<Response<Body>>> {
        self.pod(namespace, name).ok_or_else(|| {
            Box::new(text(
                StatusCode::NOT_FOUND,
                format!("pod \"{name}\" not found"),
            ))
        })
    }

    /// Where the CRI logs of `pod`'s container `container` are.
    pub fn container_log_dir(&self, pod: &Pod, container: &str) -> std::path::PathBuf {
        self.ctx
            .pod_logs_dir
            .join(format!(
                "{}_{}_{}",
                pod.namespace().unwrap_or_default(),
                pod.name_any(),
                pod.uid().unwrap_or_default()
            ))
            .join(container)
    }
}

/// Binds the listener (so that errors show at start) and returns the task that serves it.
pub async fn serve(
    ctx: Arc<KubeletContext>,
    pods: Store<Pod>,
    settings: ServerSettings,
) -> Result<impl Future<Output = ()>, ServeKubeletError> {
    let (cert, key) = match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => self_signed(&ctx.root_dir, &ctx.node_name, &ctx.node_ip.to_string())?,
    };
    let client_auth = baton_pki::tls::ClientAuth::Required;
    if settings.client_ca_file.is_none() {
        // Logs and exec for anyone who can connect: only where nobody else can.
        if !settings.address.ip().is_loopback() {
            return Err(ServeKubeletError::NoClientCa {
                address: settings.address,
            });
        }
        tracing::warn!(
            "no --client-ca-file: the kubelet server (on loopback) accepts every client"
        );
    }
    let tls = baton_pki::tls::server_config(
        &cert,
        &key,
        settings.client_ca_file.as_deref(),
        client_auth,
    )?;
    let mut tls = (*tls).clone();
    // The API server's proxy speaks HTTP/1.1 (upgrades for exec).
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(settings.address)
        .await
        .map_err(|source| ServeKubeletError::Listen {
            address: settings.address,
            source,
        })?;
    tracing::info!(address = %settings.address, "kubelet server listening");
    let stats = Arc::new(crate::stats::StatsCollector::new(ctx.clone()));
    let sampled = pods.clone();
    let sampler = stats.clone().run_sampler(move || sampled.state());
    let state = Arc::new(ServerState { ctx, pods, stats });
    let accept = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(&state, req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(err) = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%err, "kubelet server connection");
                }
            });
        }
    };
    // The CPU sampler lives as long as the server.
    Ok(async move {
        tokio::join!(sampler, accept);
    })
}

async fn route(state: &ServerState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
        (&Method::GET, ["metrics"]) => metrics(state).await,
        (&Method::GET, ["metrics", "resource"]) => stats::resource_metrics(state).await,
        (&Method::GET, ["stats", "summary"]) => stats::summary(state, req.uri().query()).await,
        (&Method::GET, ["pods"]) => stats::pods(state),
        (&Method::GET, ["containerLogs", namespace, pod, container]) => {
            logs::container_logs(state, namespace, pod, container, req.uri().query()).await
        }
        (&Method::GET | &Method::POST, ["exec", namespace, pod, container]) => {
            exec::exec(state, namespace, pod, container, req).await
        }
        (&Method::GET | &Method::POST, ["attach", namespace, pod, container]) => {
            attach::attach(state, namespace, pod, container, req).await
        }
        (&Method::GET | &Method::POST, ["portForward", namespace, pod]) => {
            port_forward::port_forward(state, namespace, pod, req).await
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())).boxed())
        .expect("valid response")
}

/// A few gauges in the Prometheus text format.
async fn metrics(state: &ServerState) -> Response<Body> {
    let pods = state.pods.state().len();
    let running = match baton_runtime::ContainerRuntime::list_containers(&state.ctx.runtime).await {
        Ok(list) => list
            .iter()
            .filter(|c| c.state == baton_runtime::ContainerState::Running)
            .count(),
        Err(_) => 0,
    };
    text(
        StatusCode::OK,
        format!(
            "# HELP kubelet_running_pods Number of pods bound to the node.\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods {pods}\n# HELP kubelet_running_containers Number of containers currently running.\n# TYPE kubelet_running_containers gauge\nkubelet_running_containers{{container_state=\"running\"}} {running}\n"
        ),
    )
}

/// The kubelet's own serving certificate under `<root>/pki/` (made once).
fn self_signed(
    root: &Path,
    node: &str,
    ip: &str,
) -> Result<(PathBuf, PathBuf), baton_pki::PkiError> {
    let dir = root.join("pki");
    let cert = dir.join("kubelet.crt");
    let key = dir.join("kubelet.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).map_err(|source| baton_pki::PkiError::Io {
        path: dir.clone(),
        source,
    })?;
    let ca = baton_pki::ClusterCa::generate(&format!("{node}-ca"))?;
    let serving = ca.issue_server(node, &[node.to_owned(), ip.to_owned()])?;
    baton_pki::write_file(&dir.join("kubelet-ca.crt"), ca.cert_pem(), 0o644)?;
    baton_pki::write_file(&key, &serving.key_pem, 0o600)?;
    baton_pki::write_file(&cert, &serving.cert_pem, 0o644)?;
    Ok((cert, key))
}
