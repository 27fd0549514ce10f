//! /stats/summary (the Summary API's JSON), /metrics/resource (upstream's resource metrics in
//! the Prometheus text format, the ones metrics-server reads) and /pods (the pods bound to
//! this node).

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::Pod;

use crate::server::{Body, ServerState, text};
use crate::stats::Detail;
use crate::stats::summary::{CpuStats, MemoryStats, Summary};

/// `GET /stats/summary[?only_cpu_and_memory=true]`.
pub(crate) async fn summary(state: &ServerState, query: Option<&str>) -> Response<Body> {
    let only_cpu_and_memory = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .any(|(key, value)| key == "only_cpu_and_memory" && value == "true");
    let detail = if only_cpu_and_memory {
        Detail::CpuAndMemory
    } else {
        Detail::Full
    };
    match state.stats.collect(&state.pods.state(), detail).await {
        Ok(summary) => json(&summary),
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// `GET /pods`: a PodList of the pods bound to this node, as the kubelet sees them.
pub(crate) fn pods(state: &ServerState) -> Response<Body> {
    let items: Vec<Pod> = state.pods.state().iter().map(|p| (**p).clone()).collect();
    json(&serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    }))
}

/// `GET /metrics/resource`.
pub(crate) async fn resource_metrics(state: &ServerState) -> Response<Body> {
    let summary = match state
        .stats
        .collect(&state.pods.state(), Detail::CpuAndMemory)
        .await
    {
        Ok(summary) => summary,
        Err(err) => return text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(resource_text(&summary))).boxed())
        .expect("valid response")
}

fn json(value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("statistics serialize");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response")
}

/// The resource metrics of upstream's /metrics/resource, each sample stamped with the time
/// the collection began (milliseconds since the epoch).
fn resource_text(summary: &Summary) -> String {
    let mut metrics = ResourceMetrics {
        at: summary.at,
        samples: Default::default(),
    };
    metrics.cpu_memory(
        Kind::Node,
        "",
        summary.node.cpu.as_ref(),
        summary.node.memory.as_ref(),
    );
    for pod in &summary.pods {
        let labels = format!(
            "namespace=\"{}\",pod=\"{}\"",
            escape(&pod.pod_ref.namespace),
            escape(&pod.pod_ref.name)
        );
        metrics.cpu_memory(Kind::Pod, &labels, pod.cpu.as_ref(), pod.memory.as_ref());
        for container in &pod.containers {
            let labels = format!("container=\"{}\",{labels}", escape(&container.name));
            metrics.cpu_memory(
                Kind::Container,
                &labels,
                container.cpu.as_ref(),
                container.memory.as_ref(),
            );
            if let Some(start) = container
                .start_time
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            {
                // Stamped with the start itself, as upstream.
                let value = start.as_second().to_string();
                metrics.add_stamped(CONTAINER_START_TIME, &labels, value, Some(start));
            }
        }
    }
    metrics.add_stamped(
        SCRAPE_ERROR,
        "",
        u8::from(summary.scrape_error).to_string(),
        None,
    );
    metrics.render()
}

/// Samples by metric, rendered in a fixed order with their HELP and TYPE lines.
struct ResourceMetrics {
    at: jiff::Timestamp,
    samples: std::collections::BTreeMap<&'static str, Vec<String>>,
}

/// Whose CPU and memory a sample is.
#[derive(Clone, Copy)]
enum Kind {
    Node,
    Pod,
    Container,
}

const CONTAINER_CPU: &str = "container_cpu_usage_seconds_total";
const CONTAINER_MEMORY: &str = "container_memory_working_set_bytes";
const CONTAINER_START_TIME: &str = "container_start_time_seconds";
const NODE_CPU: &str = "node_cpu_usage_seconds_total";
const NODE_MEMORY: &str = "node_memory_working_set_bytes";
const POD_CPU: &str = "pod_cpu_usage_seconds_total";
const POD_MEMORY: &str = "pod_memory_working_set_bytes";
const SCRAPE_ERROR: &str = "resource_scrape_error";

/// (name, type, help) of each metric, in upstream's order.
const RESOURCE_METRICS: &[(&str, &str, &str)] = &[
    (
        CONTAINER_CPU,
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    ),
    (
        CONTAINER_MEMORY,
        "gauge",
        "[STABLE] Current working set of the container in bytes",
    ),
    (
        CONTAINER_START_TIME,
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
    ),
    (
        NODE_CPU,
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    ),
    (
        NODE_MEMORY,
        "gauge",
        "[STABLE] Current working set of the node in bytes",
    ),
    (
        POD_CPU,
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    ),
    (
        POD_MEMORY,
        "gauge",
        "[STABLE] Current working set of the pod in bytes",
    ),
    (
        SCRAPE_ERROR,
        "gauge",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    ),
];

impl ResourceMetrics {
    /// A sample stamped with the collection's time.
    fn add(&mut self, name: &'static str, labels: &str, value: String) {
        self.add_stamped(name, labels, value, Some(self.at));
    }

    /// A sample stamped with `at` (none: no timestamp).
    fn add_stamped(
        &mut self,
        name: &'static str,
        labels: &str,
        value: String,
        at: Option<jiff::Timestamp>,
    ) {
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let stamp = at.map_or_else(String::new, |at| format!(" {}", at.as_millisecond()));
        self.samples
            .entry(name)
            .or_default()
            .push(format!("{name}{labels} {value}{stamp}"));
    }

    /// `<kind>_cpu_usage_seconds_total` and `<kind>_memory_working_set_bytes`.
    fn cpu_memory(
        &mut self,
        kind: Kind,
        labels: &str,
        cpu: Option<&CpuStats>,
        memory: Option<&MemoryStats>,
    ) {
        let (cpu_name, memory_name) = match kind {
            Kind::Node => (NODE_CPU, NODE_MEMORY),
            Kind::Pod => (POD_CPU, POD_MEMORY),
            Kind::Container => (CONTAINER_CPU, CONTAINER_MEMORY),
        };
        if let Some(cpu) = cpu {
            let seconds = cpu.usage_core_nano_seconds as f64 / 1e9;
            self.add(cpu_name, labels, format!("{seconds}"));
        }
        if let Some(memory) = memory {
            self.add(memory_name, labels, memory.working_set_bytes.to_string());
        }
    }

    fn render(self) -> String {
        let mut out = String::new();
        for (name, kind, help) in RESOURCE_METRICS {
            let Some(samples) = self.samples.get(name) else {
                continue;
            };
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for sample in samples {
                out.push_str(sample);
                out.push('\n');
            }
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format wants.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summary::{ContainerStats, NodeStats, PodReference, PodStats};

    fn cpu(ns: u64) -> Option<CpuStats> {
        Some(CpuStats {
            time: "2026-11-29T03:00:00Z".into(),
            usage_nano_cores: None,
            usage_core_nano_seconds: ns,
        })
    }

    fn memory(bytes: u64) -> Option<MemoryStats> {
        Some(MemoryStats {
            time: "2026-11-29T03:00:00Z".into(),
            available_bytes: None,
            usage_bytes: bytes,
            working_set_bytes: bytes,
            rss_bytes: 0,
            page_faults: 0,
            major_page_faults: 0,
        })
    }

    #[test]
    fn resource_metrics_carry_upstream_names_and_labels() {
        let summary = Summary {
            node: NodeStats {
                node_name: "n1".into(),
                start_time: "2026-11-29T00:00:00Z".into(),
                cpu: cpu(2_500_000_000),
                memory: memory(1024),
                network: None,
                fs: None,
                runtime: None,
                rlimit: None,
            },
            pods: vec![PodStats {
                pod_ref: PodReference {
                    name: "web".into(),
                    namespace: "default".into(),
                    uid: "u".into(),
                },
                start_time: None,
                containers: vec![ContainerStats {
                    name: "app".into(),
                    start_time: Some("2026-11-29T02:00:00Z".into()),
                    cpu: cpu(500_000_000),
                    memory: memory(512),
                    rootfs: None,
                    logs: None,
                }],
                cpu: cpu(500_000_000),
                memory: memory(600),
                network: None,
                volume: vec![],
                ephemeral_storage: None,
                process_stats: None,
            }],
            // Samples carry the collection's time to the millisecond.
            at: "2026-11-29T03:00:00.250Z".parse().unwrap(),
            scrape_error: false,
        };
        let text = resource_text(&summary);
        let at = "1795921200250";
        for line in [
            format!("node_cpu_usage_seconds_total 2.5 {at}"),
            format!("node_memory_working_set_bytes 1024 {at}"),
            format!("pod_memory_working_set_bytes{{namespace=\"default\",pod=\"web\"}} 600 {at}"),
            format!(
                "container_cpu_usage_seconds_total{{container=\"app\",namespace=\"default\",pod=\"web\"}} 0.5 {at}"
            ),
            "container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 1795917600 1795917600000".to_owned(),
            "resource_scrape_error 0".to_owned(),
            "# TYPE container_cpu_usage_seconds_total counter".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
        // A runtime that could not list its containers is a scrape error.
        let failed = Summary {
            scrape_error: true,
            pods: vec![],
            ..summary
        };
        assert!(
            resource_text(&failed)
                .lines()
                .any(|l| l == "resource_scrape_error 1")
        );
    }
}
