//! Control-plane benchmark (issue 3), with 1,000 simulated nodes: 10,000 pods created in bulk
//! while the scheduler is down, then bound by it (pods bound per second) while the simulated
//! nodes report each bound pod Running; a 1,000-replica Deployment from apply to all Running,
//! with each pod's time from creation to binding (p50/p99); the scheduler's and controller
//! manager's memory at that scale; a backlog of 5,000 more pods that the nodes leave Pending
//! once bound, as upstream's scheduler_perf does (its fake nodes write no status); and last,
//! 10,000 more pods created in bulk while the scheduler runs, each timed from creation to
//! binding. Run with `cargo bench --bench control_plane`.
//!
//! The reference measured in the same run is the rate at which the same API server accepted
//! the pods (binding is one more write per pod); upstream's published anchor is
//! kube-scheduler's scheduler_perf SchedulingBasic (500 nodes, 1,000 pods: about 91 pods/s on
//! upstream's CI machines).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_test_harness::{Binary, ControlPlane, wait_until};

mod support;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use support::{memory_mib, ms, process_cpu_time, quantile, rss_split_mib};

const NODES: usize = 1_000;
const PODS: usize = 10_000;
/// The backlog bound the way scheduler_perf measures: pods that never start.
const PENDING_PODS: usize = 5_000;
const DEPLOYMENT_REPLICAS: i32 = 1_000;
const CREATE_CONCURRENCY: usize = 64;

/// A bench pod; one that `never_starts` stays Pending on its simulated node once bound.
fn pod(namespace: &str, name: &str, never_starts: bool) -> Pod {
    let mut metadata =
        json!({ "name": name, "namespace": namespace, "labels": { "app": "bench" } });
    if never_starts {
        metadata["annotations"] = json!({ baton_sim_nodes::NEVER_START_ANNOTATION: "true" });
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": metadata,
        "spec": { "containers": [{
            "name": "app", "image": "registry.local/bench/app:1.0",
            "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } },
        }] },
    }))
    .expect("valid pod")
}

/// Per pod (`namespace/name`): when the watch first saw it, and first saw it bound.
type SeenAt = HashMap<String, (Instant, Option<Instant>)>;

/// (creation time, binding time) of each pod of `namespace` the watch has seen bound.
fn bound_times(seen_at: &Mutex<SeenAt>, namespace: &str) -> Vec<(Instant, Instant)> {
    let prefix = format!("{namespace}/");
    seen_at
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(_, (seen, bound))| bound.map(|b| (*seen, b)))
        .collect()
}

/// What a backlog measured.
struct Backlog {
    /// Pods created.
    created: usize,
    /// Their creation rate, pods/s.
    create_rate: f64,
    /// The binding rate, pods/s.
    bind_rate: f64,
    /// CPU each process used from the first binding seen to the last, per 1,000 pods.
    cpu_per_thousand: Vec<(&'static str, Duration)>,
}

impl Backlog {
    /// The CPU split as a table cell.
    fn cpu_cell(&self) -> String {
        self.cpu_per_thousand
            .iter()
            .map(|(name, cpu)| format!("{name} {:.2}", cpu.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The processes whose CPU time a backlog reads: every component and this client.
fn processes(plane: &ControlPlane) -> Vec<(&'static str, u32)> {
    let mut pids = vec![
        ("etcd", plane.etcd.pid()),
        ("apiserver", plane.apiserver.pid()),
        ("scheduler", plane.scheduler.pid()),
        ("controller-manager", plane.controller_manager.pid()),
    ];
    pids.extend(plane.sim_nodes.iter().map(|s| ("sim-nodes", s.pid())));
    pids.push(("benchmark client", Some(std::process::id())));
    pids.into_iter()
        .map(|(name, pid)| (name, pid.unwrap_or_default()))
        .collect()
}

/// Creates `count` pods in `namespace`, `CREATE_CONCURRENCY` at a time; returns how many were
/// created and at what rate.
async fn create_pods(
    client: &kube::Client,
    namespace: &str,
    count: usize,
    never_start: bool,
) -> anyhow::Result<(usize, f64)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let create_start = Instant::now();
    let created = futures::stream::iter(0..count)
        .map(|i| {
            let pods = pods.clone();
            async move {
                pods.create(
                    &PostParams::default(),
                    &pod(namespace, &format!("p{i:05}"), never_start),
                )
                .await
                .is_ok()
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    anyhow::ensure!(
        created >= 2,
        "only {created} of {count} pods could be created"
    );
    Ok((
        created,
        created as f64 / create_start.elapsed().as_secs_f64(),
    ))
}

/// A backlog: `count` pods created in `namespace` while the scheduler is down, then bound as
/// fast as it can once it is back (timed from its first binding to its last, so that leader
/// election and cache sync are left out).
async fn backlog(
    plane: &mut ControlPlane,
    client: &kube::Client,
    seen_at: &Mutex<SeenAt>,
    namespace: &str,
    count: usize,
    never_start: bool,
) -> anyhow::Result<Backlog> {
    plane.scheduler.stop();
    let (created, create_rate) = create_pods(client, namespace, count, never_start).await?;
    plane.scheduler.restart()?;
    let pids = processes(plane);
    wait_until("the first binding", Duration::from_secs(120), || async {
        (!bound_times(seen_at, namespace).is_empty()).then_some(())
    })
    .await?;
    let cpu_before: Vec<Duration> = pids.iter().map(|(_, p)| process_cpu_time(*p)).collect();
    wait_until("the backlog bound", Duration::from_secs(600), || async {
        (bound_times(seen_at, namespace).len() >= created).then_some(())
    })
    .await?;
    let binds: Vec<Instant> = bound_times(seen_at, namespace)
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let first = *binds.iter().min().expect("bound pods");
    let last = *binds.iter().max().expect("bound pods");
    let bind_rate = (created - 1) as f64 / last.duration_since(first).as_secs_f64();
    let cpu_per_thousand = pids
        .iter()
        .zip(cpu_before)
        .map(|((name, pid), before)| {
            let used = process_cpu_time(*pid).saturating_sub(before);
            (*name, used.mul_f64(1000.0 / created as f64))
        })
        .collect();
    Ok(Backlog {
        created,
        create_rate,
        bind_rate,
        cpu_per_thousand,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = Binary(env!("CARGO_BIN_EXE_baton").into());
    println!(
        "starting etcd, API server, scheduler, controller manager and {NODES} simulated nodes"
    );
    let started = Instant::now();
    // A heap-profiling build serializes every allocation behind one lock: the controller
    // manager would miss its lease renewals and exit, so it runs without leader election.
    let cm_args: &[&str] = if cfg!(feature = "dhat-heap") {
        &["--leader-elect=false"]
    } else {
        &[]
    };
    let plane = ControlPlane::start(&binary, 0, cm_args).await?;
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

    // Watch all pods: when each is first seen, and first seen bound to a node.
    let seen_at: Arc<Mutex<SeenAt>> = Arc::default();
    let watch = {
        let seen_at = seen_at.clone();
        let all: Api<Pod> = Api::all(client.clone());
        tokio::spawn(async move {
            let mut events = watcher::watcher(all, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event {
                    let now = Instant::now();
                    let key = format!(
                        "{}/{}",
                        p.metadata.namespace.unwrap_or_default(),
                        p.metadata.name.unwrap_or_default()
                    );
                    let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                    let mut seen = seen_at.lock().unwrap();
                    let entry = seen.entry(key).or_insert((now, None));
                    if bound && entry.1.is_none() {
                        entry.1 = Some(now);
                    }
                }
            }
        })
    };
    // Phase 1, a backlog: 10,000 pods created while the scheduler is down, then bound as fast
    // as it can once it is back, while the simulated nodes report each bound pod Running.
    let bound = backlog(&mut plane, &client, &seen_at, "bench", PODS, false).await?;

    let sched_pid = plane.scheduler.pid().unwrap();
    let cm_pid = plane.controller_manager.pid().unwrap();
    let (sched_rss, sched_peak) = memory_mib(sched_pid);
    let (cm_rss, cm_peak) = memory_mib(cm_pid);
    let split = [rss_split_mib(sched_pid), rss_split_mib(cm_pid)];
    // Heap profiles of this moment, when the components are profiled (see docs/benchmarks.md).
    support::heap_profile("scheduler", sched_pid).await?;
    support::heap_profile("controller-manager", cm_pid).await?;

    // Phase 2, the steady flow: a 1,000-replica Deployment, from apply to all Running, with
    // each pod's time from creation to binding.
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
    let mut bound_latencies: Vec<Duration> = bound_times(&seen_at, "default")
        .into_iter()
        .map(|(seen, bound)| bound.saturating_duration_since(seen))
        .collect();
    bound_latencies.sort();
    let (sched_rss2, sched_peak2) = memory_mib(sched_pid);
    let (cm_rss2, cm_peak2) = memory_mib(cm_pid);
    let split2 = [rss_split_mib(sched_pid), rss_split_mib(cm_pid)];

    // Phase 3, scheduler_perf's setup: a backlog of pods that stay Pending once bound, so the
    // API server's only write per pod while the scheduler works is its binding.
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bench-pending"}}))?,
        )
        .await?;
    let pending = backlog(
        &mut plane,
        &client,
        &seen_at,
        "bench-pending",
        PENDING_PODS,
        true,
    )
    .await?;

    // Phase 4, 10,000 pods created in bulk while the scheduler runs (and the simulated nodes
    // report them Running): each pod's time from creation to binding, and the binding rate
    // from the first pod seen to the last bound.
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bench-bulk"}}))?,
        )
        .await?;
    let (bulk_created, bulk_create_rate) = create_pods(&client, "bench-bulk", PODS, false).await?;
    wait_until("the bulk bound", Duration::from_secs(600), || async {
        (bound_times(&seen_at, "bench-bulk").len() >= bulk_created).then_some(())
    })
    .await?;
    let bulk = bound_times(&seen_at, "bench-bulk");
    let mut bulk_latencies: Vec<Duration> = bulk
        .iter()
        .map(|(seen, bound)| bound.saturating_duration_since(*seen))
        .collect();
    bulk_latencies.sort();
    let bulk_first = bulk.iter().map(|(seen, _)| *seen).min().expect("bulk pods");
    let bulk_last = bulk
        .iter()
        .map(|(_, bound)| *bound)
        .max()
        .expect("bulk pods");
    let bulk_rate = bulk_created as f64 / bulk_last.duration_since(bulk_first).as_secs_f64();
    watch.abort();

    println!();
    println!("| measure | Baton | reference (same run) | goal |");
    println!("|---|---|---|---|");
    println!(
        "| backlog of {} pods on {NODES} nodes: scheduling throughput, first to last binding | {:.0} pods/s | API server accepted the same pods at {:.0}/s (concurrency {CREATE_CONCURRENCY}); upstream scheduler_perf SchedulingBasic ~91 pods/s | >= 1000 pods/s |",
        bound.created, bound.bind_rate, bound.create_rate
    );
    println!(
        "| backlog of {} pods that stay Pending once bound (scheduler_perf's setup), with {} pods bound already: scheduling throughput | {:.0} pods/s | API server accepted the same pods at {:.0}/s | >= 1000 pods/s |",
        pending.created,
        bound.created + DEPLOYMENT_REPLICAS as usize,
        pending.bind_rate,
        pending.create_rate
    );
    println!(
        "| {bulk_created} pods created in bulk while the scheduler runs, with {} pods bound already: each pod from creation to binding, p50 / p99 | {} / {} | - | p99 < 2 s |",
        pending.created + bound.created + DEPLOYMENT_REPLICAS as usize,
        ms(quantile(&bulk_latencies, 0.5)),
        ms(quantile(&bulk_latencies, 0.99))
    );
    println!(
        "| the same bulk: pods bound per second, first pod seen to last bound | {bulk_rate:.0} pods/s | API server accepted the pods at {bulk_create_rate:.0}/s while binding them | >= 1000 pods/s |"
    );
    println!(
        "| {DEPLOYMENT_REPLICAS}-replica Deployment: each pod from creation to binding, p50 / p99 | {} / {} | - | p99 < 2 s |",
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
    for (what, backlog) in [("backlog", &bound), ("Pending backlog", &pending)] {
        println!(
            "| CPU seconds per 1,000 pods of the {what}, from the first binding to the last | {} | - | - |",
            backlog.cpu_cell()
        );
    }
    for (pods, [(sched_anon, sched_file), (cm_anon, cm_file)]) in
        [(PODS, split), (PODS + DEPLOYMENT_REPLICAS as usize, split2)]
    {
        println!(
            "| of which anonymous (heap) / file-backed (the binary's pages), {pods} pods | scheduler {sched_anon:.0} / {sched_file:.0}, controller manager {cm_anon:.0} / {cm_file:.0} MiB | - | - |"
        );
    }
    Ok(())
}
