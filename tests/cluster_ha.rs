//! `baton cluster create --control-planes 3` with the `process` provider: three control-plane
//! nodes whose etcd members form one cluster. It checks that every control-plane node runs
//! etcd and the API server and backs the `kubernetes` Service, that the cluster stays writable
//! and schedules pods when the first control-plane node powers off (etcd keeps its quorum with
//! two of three; the host's forwarder and the worker's local API endpoint turn to the other
//! API servers, and the `kubernetes` Service drops the lost one), and that writes
//! stop when a second one goes (no quorum), and that `cluster stop` and `cluster start` bring
//! all three members back with the cluster's data. `cluster destroy` removes it, also when the
//! test fails.

use baton_test_harness::{LocalCluster, services_running_and_ready};
use std::time::Duration;

/// Powers `node` off through its node API and waits until its process has ended.
fn power_off(cluster: &LocalCluster, node: &str) {
    let (ok, said, err) = cluster.node_api(node, &["shutdown"]);
    assert!(ok, "{err}");
    assert_eq!(said, "the node is powering off\n");
    baton_test_harness::wait_until_blocking(
        &format!("{node} to stop"),
        Duration::from_secs(60),
        || {
            let status = cluster.baton(&["cluster", "status", &cluster.name]);
            String::from_utf8_lossy(&status.stdout)
                .lines()
                .any(|l| l.starts_with(node) && l.contains("stopped"))
                .then_some(())
        },
    )
    .unwrap();
}

/// Waits until the `kubernetes` Endpoints list exactly `addresses` (at most 45 s: a stopped
/// API server's record expires 15 s after its last renewal, every 10 s).
fn kubernetes_endpoints_become(cluster: &LocalCluster, addresses: &[&str]) {
    let want = addresses.join(" ");
    baton_test_harness::wait_until_blocking(
        &format!("the kubernetes endpoints to be {want}"),
        Duration::from_secs(45),
        || {
            let out = cluster.kubectl(&[
                "get",
                "endpoints",
                "kubernetes",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
                "--request-timeout=10s",
            ]);
            (String::from_utf8_lossy(&out.stdout) == want).then_some(())
        },
    )
    .unwrap();
}

#[test]
fn three_control_planes_keep_the_cluster_writable_when_one_powers_off() {
    let name = format!("ha-{}", std::process::id());
    let mut cluster = LocalCluster::new(std::path::Path::new(env!("CARGO_BIN_EXE_baton")), &name);
    let out = cluster.create(
        "process",
        &["--control-planes", "3", "--workers", "1", "--wait", "180s"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes = cluster.kubectl(&["get", "nodes", "--no-headers"]);
    let nodes = String::from_utf8_lossy(&nodes.stdout).into_owned();
    for node in ["control-plane-1", "control-plane-2", "control-plane-3"] {
        assert!(
            nodes.lines().any(|l| l.split_whitespace().take(3).eq([
                node,
                "Ready",
                "control-plane"
            ])),
            "{nodes}"
        );
        let (ok, services, err) = cluster.node_api(node, &["services"]);
        assert!(ok, "{err}");
        services_running_and_ready(&services, &["etcd", "apiserver"])
            .unwrap_or_else(|err| panic!("{node}: {err}"));
    }

    // Every API server backs the `kubernetes` Service.
    kubernetes_endpoints_become(&cluster, &["10.251.0.10", "10.251.0.11", "10.251.0.12"]);

    // One of three gone, the first (the cluster endpoint in every machine configuration):
    // etcd keeps its quorum, the API servers of the others take writes (through the host's
    // forwarder), the worker's kubelet reaches them through its local endpoint, and pods run.
    power_off(&cluster, "control-plane-1");
    let created = cluster.kubectl(&[
        "create",
        "configmap",
        "after-one",
        "--from-literal=k=v",
        "--request-timeout=20s",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let ran = cluster.kubectl(&[
        "run",
        "still-scheduling",
        "--image=busybox:1.35",
        "--restart=Never",
        "--",
        "true",
    ]);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    baton_test_harness::wait_until_blocking(
        "the pod to run to completion",
        Duration::from_secs(120),
        || {
            let phase = cluster.kubectl(&[
                "get",
                "pod",
                "still-scheduling",
                "-o",
                "jsonpath={.status.phase}",
            ]);
            (String::from_utf8_lossy(&phase.stdout) == "Succeeded").then_some(())
        },
    )
    .unwrap();

    kubernetes_endpoints_become(&cluster, &["10.251.0.11", "10.251.0.12"]);
    // The worker's kubelet still renews its Lease (every 10 s), through its local endpoint.
    let renewed = || {
        let out = cluster.kubectl(&[
            "get",
            "lease",
            "worker-1",
            "-n",
            "kube-node-lease",
            "-o",
            "jsonpath={.spec.renewTime}",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = renewed();
    baton_test_harness::wait_until_blocking(
        "worker-1's Lease to be renewed without control-plane-1",
        Duration::from_secs(30),
        || {
            let now = renewed();
            (!now.is_empty() && now != before).then_some(())
        },
    )
    .unwrap();

    // Two of three gone: no quorum, so the write does not commit.
    power_off(&cluster, "control-plane-2");
    let refused = cluster.kubectl(&[
        "create",
        "configmap",
        "after-two",
        "--from-literal=k=v",
        "--request-timeout=10s",
    ]);
    assert!(
        !refused.status.success(),
        "a write without etcd quorum succeeded"
    );

    // The whole cluster stopped and started again: the three etcd members find each other
    // from their data and the writes made with quorum are there.
    let stopped = cluster.baton(&["cluster", "stop", &name]);
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let started = cluster.baton(&["cluster", "start", &name, "--wait", "180s"]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    for node in ["control-plane-1", "control-plane-2", "control-plane-3"] {
        let (ok, services, err) = cluster.node_api(node, &["services"]);
        assert!(ok, "{err}");
        services_running_and_ready(&services, &["etcd", "apiserver"])
            .unwrap_or_else(|err| panic!("{node} after the restart: {err}"));
    }
    let kept = cluster.kubectl(&["get", "configmap", "after-one", "-o", "jsonpath={.data.k}"]);
    assert_eq!(
        String::from_utf8_lossy(&kept.stdout),
        "v",
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );

    cluster.destroy();
}
