//! What `/metrics` reports (Prometheus text, upstream's metric names where they exist) and
//! what `/healthz` decides, served over plain HTTP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// How long a wanted sync may stay unapplied before /healthz fails.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// Counters of the sync loop.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    /// Syncs done.
    pub syncs: u64,
    /// Syncs that failed.
    pub sync_errors: u64,
    /// Full replacements of the table.
    pub full_syncs: u64,
    /// Total seconds spent syncing.
    pub sync_seconds_total: f64,
    /// Seconds the last sync took.
    pub last_sync_seconds: f64,
    /// When the last successful sync ended (Unix seconds).
    pub last_success_unix: f64,
    /// Rules in the table after the last sync.
    pub rules: usize,
    /// Service ports programmed.
    pub service_ports: usize,
    /// Since when changes wait to be applied (none pending: `None`).
    pub pending_since: Option<Instant>,
    /// The userspace mode's service ports and their cluster IP's endpoints.
    pub userspace_backends: Vec<(String, usize)>,
}

impl ProxyMetrics {
    fn render(&self) -> String {
        let lines = [
            (
                "kubeproxy_sync_proxy_rules_duration_seconds_sum",
                "counter",
                format!("{}", self.sync_seconds_total),
            ),
            (
                "kubeproxy_sync_proxy_rules_duration_seconds_count",
                "counter",
                format!("{}", self.syncs),
            ),
            (
                "kubeproxy_sync_proxy_rules_last_duration_seconds",
                "gauge",
                format!("{}", self.last_sync_seconds),
            ),
            (
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "gauge",
                format!("{}", self.last_success_unix),
            ),
            (
                "kubeproxy_sync_full_proxy_rules_total",
                "counter",
                format!("{}", self.full_syncs),
            ),
            (
                "kubeproxy_sync_proxy_rules_errors_total",
                "counter",
                format!("{}", self.sync_errors),
            ),
            (
                "kubeproxy_sync_proxy_rules_nftables_rules",
                "gauge",
                format!("{}", self.rules),
            ),
            (
                "kubeproxy_sync_proxy_rules_service_ports",
                "gauge",
                format!("{}", self.service_ports),
            ),
        ];
        let mut out = String::new();
        for (name, kind, value) in lines {
            out.push_str(&format!("# TYPE {name} {kind}\n{name} {value}\n"));
        }
        if !self.userspace_backends.is_empty() {
            out.push_str("# TYPE baton_proxy_userspace_service_endpoints gauge\n");
            for (service, endpoints) in &self.userspace_backends {
                out.push_str(&format!(
                    "baton_proxy_userspace_service_endpoints{{service=\"{service}\"}} {endpoints}\n"
                ));
            }
        }
        out
    }

    /// Healthy unless changes have waited too long to be applied.
    pub fn healthy(&self) -> bool {
        self.pending_since
            .is_none_or(|since| since.elapsed() < HEALTHY_WITHIN)
    }

    /// Records a finished sync.
    pub fn record(
        &mut self,
        took: Duration,
        ok: bool,
        full: bool,
        rules: usize,
        service_ports: usize,
    ) {
        self.syncs += 1;
        self.sync_seconds_total += took.as_secs_f64();
        self.last_sync_seconds = took.as_secs_f64();
        if ok {
            self.pending_since = None;
            self.full_syncs += u64::from(full);
            self.rules = rules;
            self.service_ports = service_ports;
            self.last_success_unix = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
        } else {
            self.sync_errors += 1;
        }
    }
}

/// Serves /metrics and /healthz on `address` until the process ends.
pub async fn serve(address: SocketAddr, metrics: Arc<Mutex<ProxyMetrics>>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let metrics = metrics.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(answer(
                                request.uri().path(),
                                &metrics,
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn answer(path: &str, metrics: &Mutex<ProxyMetrics>) -> Response<Full<Bytes>> {
    let metrics = metrics.lock().unwrap_or_else(|poison| poison.into_inner());
    let (status, body) = match path {
        "/metrics" => (StatusCode::OK, metrics.render()),
        "/healthz" | "/livez" => {
            let healthy = metrics.healthy();
            let body = format!(
                "{{\"lastUpdated\": {}, \"healthy\": {healthy}}}",
                metrics.last_success_unix
            );
            (
                if healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                body,
            )
        }
        _ => (StatusCode::NOT_FOUND, "404 page not found\n".into()),
    };
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
