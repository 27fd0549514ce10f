//! /stats/summary (the Summary API's JSON), /metrics/resource (the Prometheus metrics that
//! metrics-server scrapes for `kubectl top`) and /pods (the pods bound to this node).

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::Pod;

use crate::server::{Body, ServerState};
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
    let summary = state.stats.collect(&state.pods.state(), detail).await;
    json(&summary)
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
    let summary = state
        .stats
        .collect(&state.pods.state(), Detail::CpuAndMemory)
        .await;
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
/// it was read (milliseconds since the epoch).
fn resource_text(summary: &Summary) -> String {
    let mut metrics = ResourceMetrics::default();
    metrics.node(summary.node.cpu.as_ref(), summary.node.memory.as_ref());
    for pod in &summary.pods {
        let labels = format!(
            "namespace=\"{}\",pod=\"{}\"",
            escape(&pod.pod_ref.namespace),
            escape(&pod.pod_ref.name)
        );
        metrics.cpu_memory("pod", &labels, pod.cpu.as_ref(), pod.memory.as_ref());
        for container in &pod.containers {
            let labels = format!("container=\"{}\",{labels}", escape(&container.name));
            metrics.cpu_memory(
                "container",
                &labels,
                container.cpu.as_ref(),
                container.memory.as_ref(),
            );
            if let Some(start) = container
                .start_time
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            {
                metrics.add(
                    "container_start_time_seconds",
                    &labels,
                    start.as_second().to_string(),
                    start,
                );
            }
        }
    }
    metrics.render()
}

/// Samples by metric, rendered in a fixed order with their HELP and TYPE lines.
#[derive(Default)]
struct ResourceMetrics {
    samples: std::collections::BTreeMap<&'static str, Vec<String>>,
}

/// (name, type, help) of each metric, in upstream's order.
const RESOURCE_METRICS: &[(&str, &str, &str)] = &[
    (
        "container_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    ),
    (
        "container_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the container in bytes",
    ),
    (
        "container_start_time_seconds",
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
    ),
    (
        "node_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    ),
    (
        "node_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the node in bytes",
    ),
    (
        "pod_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    ),
    (
        "pod_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the pod in bytes",
    ),
    (
        "resource_scrape_error",
        "gauge",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    ),
];

impl ResourceMetrics {
    fn add(&mut self, name: &'static str, labels: &str, value: String, at: jiff::Timestamp) {
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        self.samples
            .entry(name)
            .or_default()
            .push(format!("{name}{labels} {value} {}", at.as_millisecond()));
    }

    fn node(&mut self, cpu: Option<&CpuStats>, memory: Option<&MemoryStats>) {
        self.cpu_memory("node", "", cpu, memory);
    }

    /// `<kind>_cpu_usage_seconds_total` and `<kind>_memory_working_set_bytes`.
    fn cpu_memory(
        &mut self,
        kind: &str,
        labels: &str,
        cpu: Option<&CpuStats>,
        memory: Option<&MemoryStats>,
    ) {
        let (cpu_name, memory_name) = match kind {
            "node" => (RESOURCE_METRICS[3].0, RESOURCE_METRICS[4].0),
            "pod" => (RESOURCE_METRICS[5].0, RESOURCE_METRICS[6].0),
            _ => (RESOURCE_METRICS[0].0, RESOURCE_METRICS[1].0),
        };
        if let Some(cpu) = cpu {
            let seconds = cpu.usage_core_nano_seconds as f64 / 1e9;
            self.add(cpu_name, labels, format!("{seconds}"), time_of(&cpu.time));
        }
        if let Some(memory) = memory {
            self.add(
                memory_name,
                labels,
                memory.working_set_bytes.to_string(),
                time_of(&memory.time),
            );
        }
    }

    fn render(mut self) -> String {
        self.samples
            .entry("resource_scrape_error")
            .or_default()
            .push("resource_scrape_error 0".to_owned());
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

fn time_of(text: &str) -> jiff::Timestamp {
    text.parse().unwrap_or_else(|_| jiff::Timestamp::now())
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
        };
        let text = resource_text(&summary);
        let at = "1795921200000";
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
    }
}
