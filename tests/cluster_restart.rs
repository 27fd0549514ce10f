//! `baton cluster stop` and `baton cluster start` with the `process` provider: a 1
//! control-plane + 1 worker cluster is stopped (nothing of it runs: no process, namespace,
//! cgroup or mount), a start that fails stops it again, and it starts again with its objects,
//! its nodes and its pods; then its processes are
//! killed and its namespaces removed as a host restart would, and `start` brings it back
//! again. `cluster destroy` removes it, also when the test fails.

use std::path::Path;
use std::time::{Duration, Instant};

use baton_test_harness::{LocalCluster, wait_until_blocking};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs kubectl and returns its output; panics with its error when it fails.
fn kubectl_ok(cluster: &LocalCluster, args: &[&str]) -> String {
    let out = cluster.kubectl(args);
    assert!(out.status.success(), "kubectl {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// The pids of every process whose mounts mention the cluster's data directory (a node's
/// root, its overlays, its /var).
fn processes_with_mounts_of(home: &Path) -> Vec<String> {
    let home = home.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| {
            std::fs::read_to_string(p.path().join("mountinfo")).is_ok_and(|m| m.contains(&home))
        })
        .map(|p| p.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every process in cgroup `dir` and the cgroups below it.
fn processes_under(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|pid| pid.trim().parse().ok())
        .collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(processes_under(&entry.path()));
        }
    }
    pids
}

/// The cluster's pinned network namespaces.
fn namespaces_of(cluster: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n == &format!("baton-{cluster}") || n.starts_with(&format!("baton-{cluster}."))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until both nodes are Ready, the ConfigMap made before still holds its data, and the
/// pod made before runs again (the same pod: `uid`) and answers `kubectl exec`.
fn everything_is_back(cluster: &LocalCluster, uid: &str) {
    let nodes = kubectl_ok(cluster, &["get", "nodes", "--no-headers"]);
    for node in ["control-plane-1", "worker-1"] {
        assert!(
            nodes
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([node, "Ready"])),
            "{nodes}"
        );
    }
    let kept = kubectl_ok(
        cluster,
        &["get", "configmap", "kept", "-o", "jsonpath={.data.k}"],
    );
    assert_eq!(kept, "v");
    let same = kubectl_ok(
        cluster,
        &["get", "pod", "sleeper", "-o", "jsonpath={.metadata.uid}"],
    );
    assert_eq!(same, uid, "the pod made before the stop");
    wait_until_blocking("the pod to run again", Duration::from_secs(120), || {
        let out = cluster.kubectl(&["exec", "sleeper", "--", "echo", "back"]);
        (out.status.success() && stdout(&out) == "back\n").then_some(())
    })
    .unwrap_or_else(|err| panic!("{err}{}", cluster.console_tails(&["worker-1"], 30)));
}

#[test]
fn a_stopped_cluster_starts_again_with_its_objects_nodes_and_pods() {
    let name = format!("rs-{}", std::process::id());
    let mut cluster = LocalCluster::new(Path::new(env!("CARGO_BIN_EXE_baton")), &name);
    let t = Instant::now();
    let out = cluster.create("process", &["--workers", "1", "--wait", "180s"]);
    assert!(out.status.success(), "cluster create: {}", stderr(&out));
    eprintln!(
        "[{:>6.1}s] cluster create (1 + 1)",
        t.elapsed().as_secs_f64()
    );

    kubectl_ok(
        &cluster,
        &["create", "configmap", "kept", "--from-literal=k=v"],
    );
    kubectl_ok(
        &cluster,
        &[
            "run",
            "sleeper",
            "--image=busybox:1.35",
            "--restart=Always",
            "--",
            "sleep",
            "3600",
        ],
    );
    kubectl_ok(
        &cluster,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/sleeper",
            "--timeout=120s",
        ],
    );
    let uid = kubectl_ok(
        &cluster,
        &["get", "pod", "sleeper", "-o", "jsonpath={.metadata.uid}"],
    );

    // A running cluster is not started twice.
    let twice = cluster.baton(&["cluster", "start", &name]);
    assert!(!twice.status.success());
    assert!(
        stderr(&twice).contains(&format!("cluster {name} is running")),
        "{}",
        stderr(&twice)
    );

    // Stop: nothing of the cluster runs, its data stays.
    let cgroups: Vec<String> = cluster.state()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["cgroups"].as_array().unwrap().clone())
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert!(!cgroups.is_empty());
    let t = Instant::now();
    let stopped = cluster.baton(&["cluster", "stop", &name]);
    assert!(
        stopped.status.success(),
        "cluster stop: {}",
        stderr(&stopped)
    );
    assert_eq!(stdout(&stopped), format!("cluster {name} stopped\n"));
    eprintln!("[{:>6.1}s] cluster stop", t.elapsed().as_secs_f64());
    let status = stdout(&cluster.baton(&["cluster", "status", &name]));
    for node in ["control-plane-1", "worker-1"] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(node) && l.contains("stopped")),
            "{status}"
        );
    }
    let list = stdout(&cluster.baton(&["cluster", "list"]));
    assert!(
        list.lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq([name.as_str(), "process", "0/2"])),
        "{list}"
    );
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
    assert_eq!(
        processes_with_mounts_of(cluster.home.path()),
        Vec::<String>::new()
    );
    assert!(
        !cluster
            .kubectl(&["get", "nodes", "--request-timeout=5s"])
            .status
            .success(),
        "the API server still answers"
    );
    for cgroup in &cgroups {
        assert!(!Path::new(cgroup).exists(), "cgroup left: {cgroup}");
    }
    assert!(cluster.node_dir("control-plane-1").join("var").is_dir());
    // Stopping a stopped cluster changes nothing.
    let again = cluster.baton(&["cluster", "stop", &name]);
    assert!(again.status.success(), "{}", stderr(&again));

    // A start that fails (a worker whose configuration its init refuses stays in maintenance
    // and never turns Ready) stops the cluster again, its data kept.
    let config = cluster.node_dir("worker-1").join("machine-config.yaml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace("hostname: worker-1", "hostname: Not_A_Name"),
    )
    .unwrap();
    let failed = cluster.baton(&["cluster", "start", &name, "--wait", "20s"]);
    assert!(!failed.status.success());
    assert!(
        stderr(&failed).contains("nodes not Ready in time: worker-1")
            && stderr(&failed).contains("stopping the cluster again (its data is kept)"),
        "{}",
        stderr(&failed)
    );
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
    assert_eq!(
        processes_with_mounts_of(cluster.home.path()),
        Vec::<String>::new()
    );
    let after_failure = cluster.state();
    assert!(
        after_failure["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["pid"].is_null() && n["cgroups"].as_array().unwrap().is_empty()),
        "{after_failure}"
    );
    std::fs::write(&config, good).unwrap();

    let t = Instant::now();
    let started = cluster.baton(&["cluster", "start", &name, "--wait", "180s"]);
    assert!(
        started.status.success(),
        "cluster start: {}",
        stderr(&started)
    );
    assert!(
        stderr(&started).contains(&format!("Cluster {name} is running again")),
        "{}",
        stderr(&started)
    );
    eprintln!("[{:>6.1}s] cluster start", t.elapsed().as_secs_f64());
    everything_is_back(&cluster, &uid);
    let list = stdout(&cluster.baton(&["cluster", "list"]));
    assert!(
        list.lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq([name.as_str(), "process", "2/2"])),
        "{list}"
    );

    // As a host restart would: every process of the cluster killed at once and its namespace
    // pins gone, with no `stop`.
    let t = Instant::now();
    let state = cluster.state();
    let mut pids: Vec<i32> = vec![state["forwarderPid"].as_i64().unwrap() as i32];
    for node in state["nodes"].as_array().unwrap() {
        for cgroup in node["cgroups"].as_array().unwrap() {
            pids.extend(processes_under(Path::new(cgroup.as_str().unwrap())));
        }
    }
    assert!(pids.len() > 3, "the nodes' processes: {pids:?}");
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_until_blocking("every node process to end", Duration::from_secs(30), || {
        processes_with_mounts_of(cluster.home.path())
            .is_empty()
            .then_some(())
    })
    .unwrap();
    for pin in namespaces_of(&name) {
        baton_network::NetNs::unpin(&Path::new("/run/netns").join(pin)).unwrap();
    }
    let t_start = Instant::now();
    let started = cluster.baton(&["cluster", "start", &name, "--wait", "180s"]);
    assert!(
        started.status.success(),
        "cluster start after a crash: {}",
        stderr(&started)
    );
    eprintln!(
        "[{:>6.1}s] cluster start after its processes were killed ({:.1}s in all)",
        t_start.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    everything_is_back(&cluster, &uid);

    cluster.destroy();
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
    assert!(!cluster.home.path().join("clusters").join(&name).exists());
}
