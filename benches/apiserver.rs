//! API server benchmark (issue 2): pod create throughput and latency through `baton apiserver`
//! beside raw etcd puts of the same bytes, list of 10,000 pods, delivery of one change to 1,000
//! watchers, and the server's RSS holding 10,000 pods. Run with `cargo bench --bench apiserver`.
//!
//! Everything runs on loopback against a real etcd started for the run, and is stopped after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_test_harness::{ApiServer, Binary, Etcd};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use serde_json::json;

mod support;
use support::process_cpu_time;

const TOTAL_PODS: usize = 10_000;
const WATCHERS: usize = 1_000;

fn pod(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "bench", "labels": { "app": "bench", "tier": "load" } },
        "spec": { "containers": [{
            "name": "app", "image": "registry.local/bench/app:1.0",
            "command": ["/bin/app", "--serve"], "ports": [{ "containerPort": 8080, "name": "http" }],
            "env": [{ "name": "MODE", "value": "bench" }],
            "resources": { "requests": { "cpu": "10m", "memory": "16Mi" }, "limits": { "memory": "64Mi" } },
            "readinessProbe": { "httpGet": { "path": "/healthz", "port": 8080 } },
        }] },
    })
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    throughput: f64,
    p50: Duration,
    p99: Duration,
}

fn stats(mut latencies: Vec<Duration>, elapsed: Duration) -> Stats {
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(latencies.len() - 1)]
    };
    Stats {
        throughput: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Runs `n` operations at `concurrency`, each timed.
async fn timed<F, Fut>(n: usize, concurrency: usize, op: F) -> Stats
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(0..n)
        .map(|i| {
            let fut = op(i);
            async move {
                let t = Instant::now();
                fut.await;
                t.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    stats(latencies, started.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// CPU used by etcd, the API server and this client over a phase.
#[derive(Debug)]
struct CpuSplit(Vec<(String, Duration)>);

impl CpuSplit {
    fn now(pids: &[(&str, u32)]) -> Self {
        Self(
            pids.iter()
                .map(|(n, p)| (n.to_string(), process_cpu_time(*p)))
                .collect(),
        )
    }

    fn per_op_since(&self, pids: &[(&str, u32)], ops: usize) -> String {
        let later = Self::now(pids);
        later
            .0
            .iter()
            .zip(&self.0)
            .map(|((n, after), (_, before))| {
                format!(
                    "{n} {:.0} µs",
                    (*after - *before).as_secs_f64() * 1e6 / ops as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The API server's own mean create latency since the last call, and the part of it spent
/// waiting for etcd (from its /metrics), to tell server, etcd and client time apart.
async fn server_mean_create(client: &kube::Client) -> String {
    static PREVIOUS: std::sync::Mutex<[f64; 4]> = std::sync::Mutex::new([0.0; 4]);
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client.request_text(req).await.unwrap_or_default();
    let value = |name: &str, labels: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(labels))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let api = "resource=\"pods\",verb=\"CREATE\"";
    let etcd = "operation=\"create\",type=\"pods\"";
    let now = [
        value("apiserver_request_duration_seconds_sum", api),
        value("apiserver_request_duration_seconds_count", api),
        value("etcd_request_duration_seconds_sum", etcd),
        value("etcd_request_duration_seconds_count", etcd),
    ];
    let mut prev = PREVIOUS.lock().expect("lock");
    let d: Vec<f64> = now.iter().zip(prev.iter()).map(|(a, b)| a - b).collect();
    *prev = now;
    if d[1] == 0.0 || d[3] == 0.0 {
        return "n/a".into();
    }
    format!(
        "{:.2} ms, of which etcd {:.2} ms",
        d[0] / d[1] * 1000.0,
        d[2] / d[3] * 1000.0
    )
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let server = ApiServer::start(
        &Binary(env!("CARGO_BIN_EXE_baton").into()),
        &etcd.url(),
        &[],
    )
    .await?;
    let client = server.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some("bench".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    // Every namespace of a cluster has its `default` service account (the controller manager
    // makes it), which ServiceAccount admission reads on every pod create.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "bench");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({ "metadata": { "name": "default" } }))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let etcd_client = etcd_client::Client::connect([etcd.url()], None).await?;
    let bytes = Arc::new(serde_json::to_vec(&pod("raw"))?);
    // What the API server stores for such a pod (defaults, the token volume, managedFields):
    // the bytes of the reference transactions, so that they cost etcd what a create does.
    let sample: Pod = serde_json::from_value(pod("sample"))?;
    pods.create(&PostParams::default(), &sample).await?;
    let stored = {
        let mut kv = etcd_client.kv_client();
        let key = "/registry/pods/bench/sample";
        let got = kv.get(key, None).await?;
        let value = got
            .kvs()
            .first()
            .context("the sample pod in etcd")?
            .value()
            .to_vec();
        kv.delete(key, None).await?;
        Arc::new(value)
    };

    println!(
        "baton apiserver benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| concurrency | raw etcd put/s | raw p50 | raw p99 | API create/s | API p50 | API p99 | API/raw |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let pids = [
        ("etcd", etcd.pid().unwrap_or_default()),
        ("apiserver", server.pid().unwrap_or_default()),
        ("client", std::process::id()),
    ];
    let mut cpu_notes = vec![];
    let mut created = 0usize;
    let mut p99_at_16 = Duration::ZERO;
    let mut ratios = vec![];
    for (concurrency, n) in [(1usize, 1000usize), (16, 3000), (64, 3000)] {
        let cpu_before = CpuSplit::now(&pids);
        let raw = timed(n, concurrency, |i| {
            let mut kv = etcd_client.kv_client();
            let bytes = bytes.clone();
            async move {
                kv.put(
                    format!("/bench/raw/{concurrency}/{i}"),
                    bytes.as_slice(),
                    None,
                )
                .await
                .expect("etcd put");
            }
        })
        .await;
        let raw_cpu = cpu_before.per_op_since(&pids, n);
        // A create-if-absent transaction of what the API server stores for such a pod, under
        // the prefix it watches: what a create costs etcd.
        let cpu_before = CpuSplit::now(&pids);
        let txn = timed(n, concurrency, |i| {
            let mut kv = etcd_client.kv_client();
            let bytes = stored.clone();
            async move {
                let key = format!("/registry/pods/rawbench/txn-{concurrency}-{i}");
                let txn = etcd_client::Txn::new()
                    .when([etcd_client::Compare::create_revision(
                        key.clone(),
                        etcd_client::CompareOp::Equal,
                        0,
                    )])
                    .and_then([etcd_client::TxnOp::put(key, bytes.as_slice(), None)]);
                kv.txn(txn).await.expect("etcd txn");
            }
        })
        .await;
        let txn_cpu = cpu_before.per_op_since(&pids, n);
        cpu_notes.push(format!(
            "c={concurrency}: raw create-if-absent txn of the stored bytes: {:.0}/s, p50 {}, p99 {}; {}",
            txn.throughput,
            ms(txn.p50),
            ms(txn.p99),
            txn_cpu
        ));
        let base = created;
        let cpu_before = CpuSplit::now(&pids);
        let api = timed(n, concurrency, |i| {
            let pods = pods.clone();
            async move {
                let p: Pod =
                    serde_json::from_value(pod(&format!("pod-{:05}", base + i))).expect("pod");
                pods.create(&PostParams::default(), &p)
                    .await
                    .expect("create pod");
            }
        })
        .await;
        cpu_notes.push(format!(
            "c={concurrency}: raw put: {raw_cpu}; API create: {}",
            cpu_before.per_op_since(&pids, n)
        ));
        created += n;
        cpu_notes.push(format!(
            "c={concurrency}: server-side mean create latency {}",
            server_mean_create(&client).await
        ));
        if concurrency == 16 {
            p99_at_16 = api.p99;
        }
        let ratio = api.throughput / raw.throughput;
        ratios.push((concurrency, ratio, api.throughput / txn.throughput));
        println!(
            "| {concurrency} | {:.0} | {} | {} | {:.0} | {} | {} | {:.0}% |",
            raw.throughput,
            ms(raw.p50),
            ms(raw.p99),
            api.throughput,
            ms(api.p50),
            ms(api.p99),
            ratio * 100.0
        );
    }
    println!();
    println!("CPU per operation:");
    for note in &cpu_notes {
        println!("- {note}");
    }
    // Top up to 10,000 pods.
    let base = created;
    timed(TOTAL_PODS - created, 64, |i| {
        let pods = pods.clone();
        async move {
            let p: Pod = serde_json::from_value(pod(&format!("pod-{:05}", base + i))).expect("pod");
            pods.create(&PostParams::default(), &p)
                .await
                .expect("create pod");
        }
    })
    .await;

    // List of 10,000 pods (full objects, JSON), best and median of 5.
    let mut list_times = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        let list = pods.list(&ListParams::default()).await?;
        list_times.push(t.elapsed());
        assert_eq!(list.items.len(), TOTAL_PODS);
    }
    list_times.sort();
    let list_median = list_times[2];
    // The same list as bytes only (no client-side decoding), to separate server and client time.
    let mut raw_times = vec![];
    for _ in 0..5 {
        let req = http::Request::get("/api/v1/namespaces/bench/pods")
            .body(Vec::new())
            .expect("request");
        let t = Instant::now();
        let text = client.request_text(req).await?;
        raw_times.push(t.elapsed());
        assert!(text.len() > 1_000_000);
    }
    raw_times.sort();
    let raw_list_median = raw_times[2];
    let rss = server.pid().map_or(0.0, rss_mib);

    // 1,000 watchers receive one change: delivery latency from just before the write.
    // Watchers start from a list's resourceVersion, as informers do.
    let rv = pods
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut streams = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let api: Api<Pod> = Api::namespaced(client.clone(), "bench");
        let wp = WatchParams::default()
            .fields("metadata.name=pod-00000")
            .timeout(120);
        streams.push(api.watch(&wp, &rv).await?.boxed());
    }
    // Each watch is subscribed before its response headers come back: no wait is needed.
    let sent = Instant::now();
    let mut target = pods.get("pod-00000").await?;
    target
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("changed".into(), "yes".into());
    let sent_at = Instant::now();
    pods.replace("pod-00000", &PostParams::default(), &target)
        .await?;
    let _ = sent;
    let deliveries: Vec<Duration> =
        futures::future::join_all(streams.into_iter().map(|mut s| async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(30), s.next()).await {
                    Ok(Some(Ok(WatchEvent::Modified(_)))) => return Some(sent_at.elapsed()),
                    Ok(Some(Ok(_))) => continue,
                    _ => return None,
                }
            }
        }))
        .await
        .into_iter()
        .flatten()
        .collect();
    let received = deliveries.len();
    let watch = stats(deliveries, Duration::from_secs(1));

    println!();
    println!("| measure | result | goal |");
    println!("|---|---|---|");
    for (c, r, _) in &ratios {
        println!(
            "| API create throughput / raw etcd, concurrency {c} | {:.0}% | >= 60% |",
            r * 100.0
        );
    }
    for (c, _, t) in &ratios {
        println!(
            "| reference: API create throughput / raw create-if-absent txn of the stored bytes, concurrency {c} | {:.0}% | |",
            t * 100.0
        );
    }
    println!(
        "| create p99 at concurrency 16 | {} | < 25 ms |",
        ms(p99_at_16)
    );
    println!(
        "| list of {TOTAL_PODS} pods (median of 5) | {} | < 300 ms |",
        ms(list_median)
    );
    println!(
        "| list of {TOTAL_PODS} pods as bytes, no client decoding (median of 5) | {} | < 300 ms |",
        ms(raw_list_median)
    );
    println!(
        "| watch delivery to {WATCHERS} watchers, p50 / p99 ({received} received) | {} / {} | p99 < 50 ms |",
        ms(watch.p50),
        ms(watch.p99)
    );
    println!("| API server RSS holding {TOTAL_PODS} pods | {rss:.0} MiB | < 200 MiB |");
    Ok(())
}
