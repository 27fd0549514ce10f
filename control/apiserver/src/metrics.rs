//! /metrics in Prometheus text format: request counts and latency histograms by verb,
//! resource and code, and the number of open watches.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Latency buckets (seconds), a subset of upstream's apiserver_request_duration_seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    total: u64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    durations: BTreeMap<(String, String), Histogram>,
    etcd: BTreeMap<(&'static str, String), (f64, u64)>,
}

/// The API server's metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
    watchers: Arc<AtomicI64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Records one request.
    pub fn observe(&self, verb: &str, resource: &str, code: u16, elapsed: Duration) {
        let mut inner = self.inner.lock().expect("metrics lock");
        *inner
            .requests
            .entry((verb.to_string(), resource.to_string(), code))
            .or_default() += 1;
        // Watches are long-running: upstream excludes them from the latency histogram.
        if verb == "WATCH" {
            return;
        }
        let h = inner
            .durations
            .entry((verb.to_string(), resource.to_string()))
            .or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        let secs = elapsed.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.total += 1;
    }

    /// Records one etcd request made for a resource (upstream's etcd_request_duration_seconds,
    /// here as sum and count).
    pub fn observe_etcd(&self, operation: &'static str, resource: &str, elapsed: Duration) {
        let mut inner = self.inner.lock().expect("metrics lock");
        let entry = inner
            .etcd
            .entry((operation, resource.to_string()))
            .or_default();
        entry.0 += elapsed.as_secs_f64();
        entry.1 += 1;
    }

    /// Adds to the number of open watches.
    pub fn watchers_add(&self, delta: i64) {
        self.watchers.fetch_add(delta, Ordering::Relaxed);
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        let inner = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, resource and HTTP response code.\n");
        out.push_str("# TYPE apiserver_request_total counter\n");
        for ((verb, resource, code), n) in &inner.requests {
            out.push_str(&format!("apiserver_request_total{{code=\"{code}\",resource=\"{resource}\",verb=\"{verb}\"}} {n}\n"));
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb and resource.\n");
        out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, resource), h) in &inner.durations {
            for (i, bound) in BUCKETS.iter().enumerate() {
                out.push_str(&format!("apiserver_request_duration_seconds_bucket{{resource=\"{resource}\",verb=\"{verb}\",le=\"{bound}\"}} {}\n", h.counts[i]));
            }
            out.push_str(&format!("apiserver_request_duration_seconds_bucket{{resource=\"{resource}\",verb=\"{verb}\",le=\"+Inf\"}} {}\n", h.total));
            out.push_str(&format!("apiserver_request_duration_seconds_sum{{resource=\"{resource}\",verb=\"{verb}\"}} {}\n", h.sum));
            out.push_str(&format!("apiserver_request_duration_seconds_count{{resource=\"{resource}\",verb=\"{verb}\"}} {}\n", h.total));
        }
        out.push_str("# HELP etcd_request_duration_seconds Etcd request latency in seconds of the API server's creates, by resource (other operations are not timed yet).\n");
        out.push_str("# TYPE etcd_request_duration_seconds summary\n");
        for ((operation, resource), (sum, count)) in &inner.etcd {
            out.push_str(&format!("etcd_request_duration_seconds_sum{{operation=\"{operation}\",type=\"{resource}\"}} {sum}\n"));
            out.push_str(&format!("etcd_request_duration_seconds_count{{operation=\"{operation}\",type=\"{resource}\"}} {count}\n"));
        }
        out.push_str("# HELP apiserver_longrunning_requests Number of open watch requests.\n");
        out.push_str("# TYPE apiserver_longrunning_requests gauge\n");
        out.push_str(&format!(
            "apiserver_longrunning_requests{{verb=\"WATCH\"}} {}\n",
            self.watchers.load(Ordering::Relaxed)
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.observe("LIST", "pods", 200, Duration::from_millis(3));
        m.observe("LIST", "pods", 200, Duration::from_millis(30));
        let text = m.render();
        assert!(
            text.contains(
                "apiserver_request_total{code=\"200\",resource=\"pods\",verb=\"LIST\"} 2"
            )
        );
        assert!(text.contains("apiserver_request_duration_seconds_bucket{resource=\"pods\",verb=\"LIST\",le=\"0.005\"} 1"));
        assert!(text.contains(
            "apiserver_request_duration_seconds_count{resource=\"pods\",verb=\"LIST\"} 2"
        ));
    }
}
