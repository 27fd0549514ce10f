//! Health check node ports (upstream's service health server). A LoadBalancer Service with
//! `externalTrafficPolicy: Local` has a `healthCheckNodePort`; on every node the proxy answers
//! HTTP on that port, so that a load balancer sends the Service's traffic only to nodes that
//! have local endpoints: 200 when this node has ready local endpoints (and the proxy is
//! healthy), 503 otherwise, with the count in the body and in
//! `X-Load-Balancing-Endpoint-Weight`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::metrics::ProxyMetrics;
use crate::service_model::ProxyState;

/// What one health check node port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Its ready endpoints on this node (distinct addresses, over all its ports).
    pub local_endpoints: usize,
}

/// The health check node ports of `state` and what each reports for node `node_name`.
pub fn health_checks(state: &ProxyState, node_name: &str) -> BTreeMap<u16, ServiceHealth> {
    let mut local: BTreeMap<u16, (ServiceHealth, BTreeSet<Ipv4Addr>)> = BTreeMap::new();
    for (info, endpoints) in state.services.values() {
        let Some(port) = info.health_check_node_port else {
            continue;
        };
        let (_, addresses) = local.entry(port).or_insert_with(|| {
            (
                ServiceHealth {
                    namespace: info.namespace.clone(),
                    name: info.name.clone(),
                    local_endpoints: 0,
                },
                BTreeSet::new(),
            )
        });
        addresses.extend(
            endpoints
                .iter()
                .filter(|e| e.ready && e.is_local(node_name))
                .map(|e| e.ip),
        );
    }
    local
        .into_iter()
        .map(|(port, (mut health, addresses))| {
            health.local_endpoints = addresses.len();
            (port, health)
        })
        .collect()
}

/// The HTTP servers of the node's health check node ports.
#[derive(Debug)]
pub struct HealthCheckServers {
    address: IpAddr,
    reports: Arc<Mutex<BTreeMap<u16, ServiceHealth>>>,
    metrics: Arc<Mutex<ProxyMetrics>>,
    /// The listening tasks, by port (aborting one closes its listener).
    servers: HashMap<u16, tokio::task::JoinHandle<()>>,
}

impl HealthCheckServers {
    /// Servers that listen on `address` (upstream: every address of the node) and report the
    /// proxy's own health from `metrics`.
    pub fn new(address: IpAddr, metrics: Arc<Mutex<ProxyMetrics>>) -> Self {
        Self {
            address,
            reports: Arc::default(),
            metrics,
            servers: HashMap::new(),
        }
    }

    /// Serves exactly the ports of `wanted`, each with its report: new ports start listening,
    /// ports no longer wanted stop. A port that cannot be bound now (another program holds
    /// it) is tried again every second until it can.
    pub async fn update(&mut self, wanted: BTreeMap<u16, ServiceHealth>) {
        self.keep_only(&wanted.keys().copied().collect());
        for port in wanted.keys() {
            if self.servers.contains_key(port) {
                continue;
            }
            let address = SocketAddr::new(self.address, *port);
            let listener = match tokio::net::TcpListener::bind(address).await {
                Ok(listener) => Some(listener),
                Err(err) => {
                    tracing::warn!(%address, %err, "cannot serve a health check node port yet; retrying every second");
                    None
                }
            };
            let task = tokio::spawn(serve(
                address,
                listener,
                self.reports.clone(),
                self.metrics.clone(),
            ));
            self.servers.insert(*port, task);
        }
        *self.reports.lock().unwrap_or_else(|p| p.into_inner()) = wanted;
    }

    /// Stops serving the ports not in `ports` (before a sync hands such a port to another
    /// use).
    pub fn keep_only(&mut self, ports: &BTreeSet<u16>) {
        self.servers.retain(|port, task| {
            let keep = ports.contains(port);
            if !keep {
                task.abort();
            }
            keep
        });
    }

    /// The ports served (or waiting to be bound) now.
    pub fn ports(&self) -> BTreeSet<u16> {
        self.servers.keys().copied().collect()
    }
}

impl Drop for HealthCheckServers {
    fn drop(&mut self) {
        for task in self.servers.values() {
            task.abort();
        }
    }
}

/// How long a client may take to send its request's head.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds `address` (unless `listener` is bound already), retrying every second, then answers
/// each connection. Aborting the task closes the listener and every connection it accepted.
async fn serve(
    address: SocketAddr,
    listener: Option<tokio::net::TcpListener>,
    reports: Arc<Mutex<BTreeMap<u16, ServiceHealth>>>,
    metrics: Arc<Mutex<ProxyMetrics>>,
) {
    let listener = match listener {
        Some(listener) => listener,
        None => loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if let Ok(listener) = tokio::net::TcpListener::bind(address).await {
                tracing::info!(%address, "serving a health check node port");
                break listener;
            }
        },
    };
    let port = address.port();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors or similar: wait a little rather than spin.
                    tracing::warn!(port, %err, "accepting on a health check node port");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Finished connections are collected as they end.
            Some(_) = connections.join_next() => continue,
        };
        let reports = reports.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |_request| {
                let report = reports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&port)
                    .cloned();
                let healthy = metrics.lock().unwrap_or_else(|p| p.into_inner()).healthy();
                async move { Ok::<_, std::convert::Infallible>(answer(report, healthy)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Upstream's answer, whatever the path: 200 when the node has local endpoints and the proxy
/// is healthy, else 503.
fn answer(report: Option<ServiceHealth>, healthy: bool) -> Response<Full<Bytes>> {
    let report = report.unwrap_or(ServiceHealth {
        namespace: String::new(),
        name: String::new(),
        local_endpoints: 0,
    });
    let body = serde_json::json!({
        "service": { "namespace": report.namespace, "name": report.name },
        "localEndpoints": report.local_endpoints,
        "serviceProxyHealthy": healthy,
    });
    let status = if report.local_endpoints > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("X-Content-Type-Options", "nosniff")
        .header(
            "X-Load-Balancing-Endpoint-Weight",
            report.local_endpoints.to_string(),
        )
        .body(Full::new(Bytes::from(
            serde_json::to_string_pretty(&body).unwrap_or_default(),
        )))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_model::build_state;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn service(health_check_port: u16) -> Service {
        serde_json::from_value(json!({
            "metadata": { "namespace": "shop", "name": "web" },
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.96.0.10",
                "externalTrafficPolicy": "Local", "healthCheckNodePort": health_check_port,
                "ports": [
                    { "name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP" },
                    { "name": "https", "port": 443, "nodePort": 30443, "protocol": "TCP" },
                ],
            },
        }))
        .unwrap()
    }

    /// Two ready endpoints on node-a (one listed for both ports), one on node-b, and a
    /// not-ready one on node-a.
    fn slice() -> EndpointSlice {
        let endpoint = |ip: &str, node: &str, ready: bool| json!({ "addresses": [ip], "nodeName": node, "conditions": { "ready": ready } });
        serde_json::from_value(json!({
            "metadata": {
                "namespace": "shop", "name": "web-abc",
                "labels": { "kubernetes.io/service-name": "web" },
            },
            "addressType": "IPv4",
            "endpoints": [
                endpoint("10.244.1.2", "node-a", true),
                endpoint("10.244.1.3", "node-a", true),
                endpoint("10.244.2.2", "node-b", true),
                endpoint("10.244.1.9", "node-a", false),
            ],
            "ports": [
                { "name": "http", "port": 8080, "protocol": "TCP" },
                { "name": "https", "port": 8443, "protocol": "TCP" },
            ],
        }))
        .unwrap()
    }

    /// GET / on 127.0.0.1:`port`: the status line, the weight header and the JSON body.
    async fn get(port: u16) -> std::io::Result<(String, String, serde_json::Value)> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        let status = head.lines().next().unwrap_or_default().to_owned();
        let weight = head
            .lines()
            .find_map(|l| {
                l.to_lowercase()
                    .strip_prefix("x-load-balancing-endpoint-weight: ")
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        Ok((
            status,
            weight,
            serde_json::from_str(body).unwrap_or_default(),
        ))
    }

    #[tokio::test]
    async fn the_port_answers_whether_this_node_has_local_endpoints() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let state = build_state(&[service(port)], &[slice()]);
        let metrics = Arc::new(Mutex::new(ProxyMetrics::default()));
        let mut servers = HealthCheckServers::new(Ipv4Addr::LOCALHOST.into(), metrics.clone());

        servers.update(health_checks(&state, "node-a")).await;
        assert_eq!(servers.ports(), [port].into());
        let (status, weight, body) = get(port).await.unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(weight, "2");
        assert_eq!(
            body,
            json!({
                "service": { "namespace": "shop", "name": "web" },
                "localEndpoints": 2,
                "serviceProxyHealthy": true,
            })
        );

        // A node without ready local endpoints turns the load balancer away.
        servers.update(health_checks(&state, "node-c")).await;
        let (status, weight, body) = get(port).await.unwrap();
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(weight, "0");
        assert_eq!(body["localEndpoints"], 0);

        // So does a proxy whose changes have waited too long to be applied.
        servers.update(health_checks(&state, "node-a")).await;
        metrics.lock().unwrap().pending_since =
            Some(std::time::Instant::now() - std::time::Duration::from_secs(120));
        let (status, _, body) = get(port).await.unwrap();
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(body["serviceProxyHealthy"], false);

        // A Service that no longer needs the port gives it up.
        servers.update(BTreeMap::new()).await;
        assert!(servers.ports().is_empty());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while get(port).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "port {port} still answers"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
