//! Control-plane benchmark (issue 3): with 1,000 simulated nodes, create 10,000 pods in bulk and
//! measure how fast the scheduler binds them (pods bound per second, p50/p99 from creation to
//! binding), then a 1,000-replica Deployment from apply to all Running, and the scheduler's and
//! controller manager's memory at that scale. Run with `cargo bench --bench control_plane`.
//!
//! The reference measured in the same run is the rate at which the same API server accepted
//! the pods (the ceiling for binding, which is one more write per pod); upstream's published
//! anchor is kube-scheduler's scheduler_perf SchedulingBasic (500 nodes, 1,000 pods: about
//! 91 pods/s on upstream's CI machines).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_test_harness::{Binary, ControlPlane, wait_until};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

const NODES: usize = 1_000;
const PODS: usize = 10_000;
const DEPLOYMENT_REPLICAS: i32 = 1_000;
const CREATE_CONCURRENCY: usize = 64;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "bench", "labels": { "app": "bench" } },
        "spec": { "containers": [{
            "name": "app", "image": "registry.local/bench/app:1.0",
            "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } },
        }] },
    }))
    .expect("valid pod")
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Resident and peak resident memory of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = Binary(env!("CARGO_BIN_EXE_baton").into());
    println!(
        "starting etcd, API server, scheduler, controller manager and {NODES} simulated nodes"
    );
    let started = Instant::now();
    let plane = ControlPlane::start(&binary, 0, &[]).await?;
    let mut plane = plane;
    plane
        .add_sim_nodes("sim-nodes", NODES, "node-", &["--concurrency=64"])
        .await?;
    println!(
        "{NODES} nodes Ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let client = plane.apiserver.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(nodes.list(&ListParams::default()).await?.items.len(), NODES);

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bench"}}))?,
        )
        .await?;

    // Watch bindings: the time each pod is first seen with a node.
    let bound_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let watch = {
        let bound_at = bound_at.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut events = watcher::watcher(pods, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event
                    && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                {
                    let name = p.metadata.name.unwrap_or_default();
                    bound_at
                        .lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };

    // Create the pods as fast as the API server takes them.
    let created_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let create_start = Instant::now();
    futures::stream::iter(0..PODS)
        .map(|i| {
            let pods = pods.clone();
            let created_at = created_at.clone();
            async move {
                let name = format!("p{i:05}");
                let before = Instant::now();
                if pods
                    .create(&PostParams::default(), &pod(&name))
                    .await
                    .is_ok()
                {
                    created_at.lock().unwrap().insert(name, before);
                }
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let create_elapsed = create_start.elapsed();
    let created = created_at.lock().unwrap().len();
    wait_until("all pods bound", Duration::from_secs(600), || async {
        (bound_at.lock().unwrap().len() >= created).then_some(())
    })
    .await?;
    let (bound_latencies, last_bound) = {
        let created_at = created_at.lock().unwrap();
        let bound_at = bound_at.lock().unwrap();
        let mut l: Vec<Duration> = created_at
            .iter()
            .filter_map(|(name, c)| bound_at.get(name).map(|b| b.saturating_duration_since(*c)))
            .collect();
        l.sort();
        (l, bound_at.values().max().copied().unwrap_or(create_start))
    };
    let bind_elapsed = last_bound.duration_since(create_start);
    let create_rate = created as f64 / create_elapsed.as_secs_f64();
    let bind_rate = created as f64 / bind_elapsed.as_secs_f64();
    watch.abort();

    let sched_pid = plane.scheduler.pid().unwrap();
    let cm_pid = plane.controller_manager.pid().unwrap();
    let (sched_rss, sched_peak) = memory_mib(sched_pid);
    let (cm_rss, cm_peak) = memory_mib(cm_pid);

    // A 1,000-replica Deployment, from apply to all Running.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "big", "namespace": "default" },
        "spec": {
            "replicas": DEPLOYMENT_REPLICAS,
            "selector": { "matchLabels": { "app": "big" } },
            "template": { "metadata": { "labels": { "app": "big" } }, "spec": { "containers": [{
                "name": "app", "image": "registry.local/bench/app:1.0",
                "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }] } },
        },
    }))?;
    let deploy_start = Instant::now();
    deployments.create(&PostParams::default(), &deploy).await?;
    wait_until(
        "1,000 replicas available",
        Duration::from_secs(600),
        || async {
            let d = deployments.get("big").await.ok()?;
            let available = d.status?.available_replicas.unwrap_or(0);
            (available >= DEPLOYMENT_REPLICAS).then_some(())
        },
    )
    .await?;
    let deploy_elapsed = deploy_start.elapsed();
    let running = Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("app=big"))
        .await?
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    let (sched_rss2, sched_peak2) = memory_mib(sched_pid);
    let (cm_rss2, cm_peak2) = memory_mib(cm_pid);

    println!();
    println!("| measure | Baton | reference (same run) | goal |");
    println!("|---|---|---|---|");
    println!(
        "| pods accepted by the API server ({PODS}, concurrency {CREATE_CONCURRENCY}) | {create_rate:.0} pods/s | - | - |"
    );
    println!(
        "| scheduling throughput, {NODES} nodes, {created} pods, first create to last bound | {bind_rate:.0} pods/s | API create rate {create_rate:.0}/s; upstream scheduler_perf ~91 pods/s | >= 1000 pods/s |"
    );
    println!(
        "| creation to binding, p50 / p99 | {} / {} | - | p99 < 2 s |",
        ms(quantile(&bound_latencies, 0.5)),
        ms(quantile(&bound_latencies, 0.99))
    );
    println!(
        "| {DEPLOYMENT_REPLICAS}-replica Deployment, apply to all available ({running} Running) | {:.1} s | - | - |",
        deploy_elapsed.as_secs_f64()
    );
    println!(
        "| RSS scheduler + controller manager after {PODS} pods (peak) | {:.0} + {:.0} = {:.0} MiB ({:.0} MiB) | - | < 150 MiB |",
        sched_rss,
        cm_rss,
        sched_rss + cm_rss,
        sched_peak + cm_peak
    );
    println!(
        "| RSS scheduler + controller manager with {} pods (peak) | {:.0} + {:.0} = {:.0} MiB ({:.0} MiB) | - | < 150 MiB |",
        PODS + DEPLOYMENT_REPLICAS as usize,
        sched_rss2,
        cm_rss2,
        sched_rss2 + cm_rss2,
        sched_peak2 + cm_peak2
    );
    Ok(())
}
