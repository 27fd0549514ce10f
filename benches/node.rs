//! Node benchmark (issue 4), as root. Run with `cargo bench --bench node`.
//!
//! 1. The runtime: create + start + wait + delete of a container running /bin/true through
//!    the runtime trait (Baton's runtime process driving libcontainer), beside `crun run` of
//!    the same OCI bundle in the same run. Debian's crun 1.8 refuses this machine's cgroup v1
//!    hybrid hierarchy, so each `crun run` runs in a private mount namespace with
//!    /sys/fs/cgroup/unified unmounted (`unshare -m`); the cost of that wrapper alone is
//!    measured too and subtracted.
//! 2. Pod startup latency: 100 pods created on the API server for one kubelet node (image
//!    present), each timed from its create request to the watch seeing it Running (p50/p99);
//!    upstream's SLO is 5 s p99 (kubernetes/community sig-scalability slos/pod_startup_latency).
//! 3. The kubelet's and the runtime process's memory with those 100 pods running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_runtime::{ContainerConfig, ContainerRuntime, RuntimeClient, wait_for_exit};
use baton_test_harness::{Binary, NodeCluster, wait_until};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

mod support;
use support::{memory_mib, ms, pss_mib, quantile, rss_split_mib, thread_count};

const RUNTIME_ROUNDS: usize = 40;
const PODS: usize = 100;
/// Pods started one at a time before the burst.
const ALONE: usize = 10;

/// A bundle whose process runs /bin/true in a busybox root filesystem, with a cgroup of its
/// own (`cgroup_parent/<id>` is set per run).
fn bundle(dir: &Path) -> anyhow::Result<PathBuf> {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    for sub in ["proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub))?;
    }
    std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true"))?;
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(vec!["/bin/true".into()]));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    spec.save(bundle.join("config.json"))?;
    Ok(bundle)
}

fn set_cgroup(bundle: &Path, cgroup: &str) -> anyhow::Result<()> {
    let path = bundle.join("config.json");
    let mut spec = oci_spec::runtime::Spec::load(&path)?;
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some(PathBuf::from(cgroup)));
    spec.set_linux(Some(linux));
    spec.save(&path)?;
    Ok(())
}

fn summary(name: &str, mut samples: Vec<Duration>) -> (String, Duration) {
    samples.sort();
    let median = quantile(&samples, 0.5);
    (
        format!(
            "{name:<46} {:>9} {:>9} {:>9}",
            ms_fine(median),
            ms_fine(quantile(&samples, 0.9)),
            ms_fine(samples[0])
        ),
        median,
    )
}

fn ms_fine(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn runtime_bench(binary: &Binary) -> anyhow::Result<Vec<String>> {
    let dir = tempfile::Builder::new()
        .prefix("baton-bench-rt")
        .tempdir()?;
    let bundle = bundle(dir.path())?;
    let cgroup_parent = format!("/baton-bench-{}", std::process::id());
    set_cgroup(&bundle, &format!("{cgroup_parent}/c"))?;
    let client = RuntimeClient::new(dir.path().join("runtime"), &binary.0);
    client.connect().await?;
    let mut ours = Vec::new();
    for round in 0..RUNTIME_ROUNDS + 3 {
        let id = format!("bench-{round}");
        let started = Instant::now();
        let pid = client
            .create_container(ContainerConfig {
                id: id.clone(),
                bundle: bundle.clone(),
                log_path: dir.path().join("logs").join(format!("{id}.log")),
                log_max_size: 0,
                log_max_files: 1,
                stdin: false,
                tty: false,
            })
            .await?;
        client.start_container(&id).await?;
        wait_for_exit(pid).await?;
        client.remove_container(&id).await?;
        if round >= 3 {
            ours.push(started.elapsed());
        }
    }
    client.shutdown().await?;

    let crun_root = dir.path().join("crun");
    let wrapper = |inner: &str| {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("umount /sys/fs/cgroup/unified && {inner}"))
            .output()
    };
    let mut crun = Vec::new();
    let mut overhead = Vec::new();
    for round in 0..RUNTIME_ROUNDS + 3 {
        let started = Instant::now();
        let out = wrapper(&format!(
            "exec crun --root {} run --bundle {} crun-{round}",
            crun_root.display(),
            bundle.display()
        ))?;
        let took = started.elapsed();
        anyhow::ensure!(
            out.status.success(),
            "crun run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let started = Instant::now();
        wrapper("exec true")?;
        let wrapper_took = started.elapsed();
        if round >= 3 {
            crun.push(took);
            overhead.push(wrapper_took);
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = std::fs::remove_dir(
            hierarchy
                .path()
                .join(cgroup_parent.trim_start_matches('/'))
                .join("c"),
        );
        let _ = std::fs::remove_dir(hierarchy.path().join(cgroup_parent.trim_start_matches('/')));
    }
    let mut sorted_overhead = overhead.clone();
    sorted_overhead.sort();
    let wrapper_median = quantile(&sorted_overhead, 0.5);
    let crun_net: Vec<Duration> = crun
        .iter()
        .map(|d| d.saturating_sub(wrapper_median))
        .collect();
    let (ours_line, ours_median) =
        summary("Baton runtime (libcontainer) create+start+delete", ours);
    let (crun_line, _) = summary("crun 1.8 run, raw (incl. unshare wrapper)", crun);
    let (overhead_line, _) = summary("  unshare wrapper alone", overhead);
    let (net_line, crun_median) = summary("crun 1.8 run, wrapper subtracted", crun_net);
    Ok(vec![
        format!(
            "{:<46} {:>9} {:>9} {:>9}",
            "/bin/true container, each of 40 runs", "median", "p90", "best"
        ),
        ours_line,
        crun_line,
        overhead_line,
        net_line,
        format!(
            "Baton / crun (medians): {:.2}x  (goal: no slower than crun)",
            ours_median.as_secs_f64() / crun_median.as_secs_f64()
        ),
    ])
}

fn pod(name: &str, image: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": { "bench": "startup" } },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }],
        },
    }))
    .expect("valid pod")
}

async fn startup_bench(binary: &Binary) -> anyhow::Result<Vec<String>> {
    let cluster = NodeCluster::start(binary, "bench-node", &["--max-pods=200"]).await?;
    let pods = cluster.pods();
    // The image is pulled once, by a first pod.
    pods.create(
        &PostParams::default(),
        &pod("warm", &cluster.image, &cluster.node.name),
    )
    .await?;
    cluster
        .wait_for("the warm-up pod", "warm", |p| {
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await;

    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = running.clone();
    let watch_pods = pods.clone();
    let watch = tokio::spawn(async move {
        let config = watcher::Config::default().labels("bench=startup");
        let mut events = std::pin::pin!(watcher::watcher(watch_pods, config));
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event
                && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            {
                let name = pod.metadata.name.clone().unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
    });
    // Let the watch start before the first pod is created.
    wait_until("the watch to list", Duration::from_secs(10), || {
        let running = running.clone();
        async move { running.lock().unwrap().contains_key("warm").then_some(()) }
    })
    .await?;

    // One pod at a time, each created once the one before runs: the latency of a pod alone.
    let mut alone = Vec::new();
    for i in 0..ALONE {
        let name = format!("a-{i:02}");
        let at = Instant::now();
        pods.create(
            &PostParams::default(),
            &pod(&name, &cluster.image, &cluster.node.name),
        )
        .await?;
        let seen_at = wait_until("the pod to run", Duration::from_secs(60), || {
            let running = running.clone();
            let name = name.clone();
            async move { running.lock().unwrap().get(&name).copied() }
        })
        .await?;
        alone.push(seen_at.duration_since(at));
    }
    alone.sort();

    // Then a burst: all pods created one right after another.
    let mut created = HashMap::new();
    let all_started = Instant::now();
    for i in 0..PODS {
        let name = format!("p-{i:03}");
        let at = Instant::now();
        pods.create(
            &PostParams::default(),
            &pod(&name, &cluster.image, &cluster.node.name),
        )
        .await?;
        created.insert(name, at);
    }
    wait_until("every pod Running", Duration::from_secs(300), || {
        let running = running.clone();
        async move { (running.lock().unwrap().len() > PODS + ALONE).then_some(()) }
    })
    .await?;
    let all_running = all_started.elapsed();
    watch.abort();
    let seen = running.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = created
        .iter()
        .map(|(name, at)| seen[name].duration_since(*at))
        .collect();
    latencies.sort();

    let kubelet = cluster.node.kubelet_pid().unwrap_or(0);
    let (kubelet_rss, kubelet_peak) = memory_mib(kubelet);
    let (kubelet_anon, kubelet_file) = rss_split_mib(kubelet);
    let kubelet_threads = thread_count(kubelet);
    // The kubelet runs several runtime processes (one per CPU): their memory together.
    let runtime_root = cluster.node.runtime_root();
    let runtime_processes = baton_runtime::process_count_on_disk(&runtime_root);
    let (mut runtime_rss, mut runtime_peak, mut runtime_pss) = (0.0, 0.0, 0.0);
    for index in 0..runtime_processes {
        let pid_file = baton_runtime::process_root(&runtime_root, index).join("runtime.pid");
        let pid: u32 = std::fs::read_to_string(pid_file)?.trim().parse()?;
        let (rss, peak) = memory_mib(pid);
        runtime_rss += rss;
        runtime_peak += peak;
        runtime_pss += pss_mib(pid);
    }
    // A heap profile of this moment, when the kubelet is profiled (see docs/benchmarks.md).
    support::heap_profile("kubelet", kubelet).await?;

    let deleting = Instant::now();
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=startup"),
    )
    .await?;
    wait_until("every pod deleted", Duration::from_secs(300), || {
        let pods = pods.clone();
        async move {
            let left = pods
                .list(&ListParams::default().labels("bench=startup"))
                .await
                .ok()?;
            left.items.is_empty().then_some(())
        }
    })
    .await?;
    let deleted = deleting.elapsed();
    if let Ok(path) = std::env::var("BENCH_KUBELET_LOG") {
        std::fs::write(path, cluster.node.log())?;
    }

    Ok(vec![
        format!(
            "{ALONE} pods one at a time   create -> Running p50 {}   max {}",
            ms(quantile(&alone, 0.5)),
            ms(*alone.last().unwrap())
        ),
        format!("{PODS} pods on one node, image present, created one after another"),
        format!(
            "  create -> Running (watch)    p50 {}   p99 {}   max {}   (goal p99 < 500 ms; upstream SLO p99 < 5 s)",
            ms(quantile(&latencies, 0.5)),
            ms(quantile(&latencies, 0.99)),
            ms(*latencies.last().unwrap())
        ),
        format!("  all {PODS} Running after        {}", ms(all_running)),
        format!("  all {PODS} deleted after        {}", ms(deleted)),
        format!(
            "  kubelet RSS with {PODS} pods     {kubelet_rss:.1} MiB (peak {kubelet_peak:.1} MiB; goal < 40 MiB): {kubelet_anon:.1} MiB anonymous, {kubelet_file:.1} MiB of the binary; {kubelet_threads} threads"
        ),
        format!(
            "  runtime processes ({runtime_processes}) RSS    {runtime_rss:.1} MiB (peak {runtime_peak:.1} MiB; PSS {runtime_pss:.1} MiB)"
        ),
    ])
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let binary = Binary(env!("CARGO_BIN_EXE_baton").into());
    println!("runtime: {RUNTIME_ROUNDS} runs each of Baton's runtime and crun ...");
    let runtime = runtime_bench(&binary).await?;
    println!("pod startup: {PODS} pods on one kubelet node ...");
    let startup = startup_bench(&binary).await?;
    println!();
    for line in runtime
        .iter()
        .chain([String::new()].iter())
        .chain(startup.iter())
    {
        println!("{line}");
    }
    Ok(())
}
