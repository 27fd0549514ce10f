//! `baton cluster destroy`: stops every node (SIGTERM to its process, then every process left
//! in its cgroups killed), the forwarder, removes the namespaces, the kubeconfig context and
//! the cluster's directory. Every step runs even when an earlier one failed; the failures are
//! reported together. Nothing is left behind.

use std::time::{Duration, Instant};

use crate::kubeconfig::remove_context;
use crate::network::remove_namespace;
use crate::state::{ClusterState, cluster_dir, forwarder_marker, node_marker, process_matches};

/// How long a node gets to shut down in order before its processes are killed.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long killing what is left may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a cluster could not be removed entirely: every step that failed.
#[derive(Debug, thiserror::Error)]
#[error("destroying cluster {cluster}: {}", .failures.join("; "))]
pub struct DestroyClusterError {
    /// The cluster.
    pub cluster: String,
    /// What failed, each with its causes.
    pub failures: Vec<String>,
}

fn chain(err: &dyn std::error::Error) -> String {
    baton_client::error_chain(err)
}

/// Stops node processes: SIGTERM to each node's monitor (init shuts the node down in order),
/// then, after the timeout, SIGKILL to everything left in the nodes' cgroups. Returns what
/// failed.
pub fn stop_nodes(state: &ClusterState) -> Vec<String> {
    let monitors: Vec<u32> = state
        .nodes
        .iter()
        .filter_map(|n| {
            n.pid
                .filter(|pid| process_matches(*pid, &node_marker(&state.provider, n)))
        })
        .collect();
    for pid in &monitors {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + NODE_STOP_TIMEOUT;
    while monitors.iter().any(|pid| crate::state::process_alive(*pid)) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut failures = Vec::new();
    for node in &state.nodes {
        if let Err(err) = baton_sandbox::kill_and_remove_cgroups(&node.cgroups, KILL_TIMEOUT) {
            failures.push(format!("stopping node {}: {}", node.name, chain(&err)));
        }
    }
    // The cluster's cgroup (`baton/<cluster>`) and `baton` itself once no other cluster uses
    // it; a parent still in use stays.
    for node in &state.nodes {
        for dir in &node.cgroups {
            for parent in dir.ancestors().skip(1).take(2) {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
    failures
}

/// Removes the cluster `state` describes.
pub fn destroy_cluster(state: &ClusterState) -> Result<(), DestroyClusterError> {
    let mut failures = stop_nodes(state);
    if let Some(pid) = state.forwarder_pid
        && process_matches(pid, &forwarder_marker(state))
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let mut pins: Vec<&std::path::Path> = state.pins.iter().map(|p| p.as_path()).collect();
    pins.extend(state.nodes.iter().map(|n| n.netns.as_path()));
    pins.push(&state.netns);
    pins.sort();
    pins.dedup();
    for pin in pins {
        if let Err(err) = remove_namespace(pin) {
            failures.push(chain(&err));
        }
    }
    if let Err(err) = remove_context(&state.kubeconfig, &format!("baton-{}", state.name)) {
        failures.push(format!("removing the kubeconfig context: {}", chain(&err)));
    }
    let dir = cluster_dir(&state.name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => failures.push(format!("removing {}: {err}", dir.display())),
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(DestroyClusterError {
            cluster: state.name.clone(),
            failures,
        })
    }
}
