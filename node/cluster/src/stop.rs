//! `baton cluster stop`: everything a host restart would end, ended in order: each node shut
//! down (a VM node through its node API: init stops its services in order, unmounts its data
//! disk and powers the machine off; a process node by SIGTERM to its monitor, which init
//! handles the same way; then whatever is left is killed), the forwarder stopped, the network
//! namespaces removed. The cluster's directory (machine configurations, each node's root and
//! /var or data disk, the PKI) and its kubeconfig context stay, so that `cluster start` boots
//! it again with everything it held. `destroy` kills the nodes without asking before removing
//! the cluster.

use std::time::{Duration, Instant};

use crate::network::remove_namespace;
use crate::state::{ClusterState, forwarder_marker, node_running, process_matches};

/// How long a node gets to shut down in order before its processes are killed.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a VM node gets to power off after its node API was asked to shut it down (QEMU's
/// software emulation is slow).
const VM_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long asking one node's API may take.
const NODE_API_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause between two asks of a node that failed.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long killing what is left may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a cluster could not be stopped entirely: every step that failed.
#[derive(Debug, thiserror::Error)]
#[error("stopping cluster {cluster}: {}", .failures.join("; "))]
pub struct StopClusterError {
    /// The cluster.
    pub cluster: String,
    /// What failed, each with its causes.
    pub failures: Vec<String>,
}

pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    baton_client::error_chain(err)
}

/// Stops node processes: SIGTERM to each node's monitor (init shuts the node down in order),
/// then, after the timeout, SIGKILL to everything left in the nodes' cgroups, which are
/// removed. Returns what failed.
pub fn stop_nodes(state: &ClusterState) -> Vec<String> {
    let monitors: Vec<u32> = state
        .nodes
        .iter()
        .filter(|node| node_running(state, node))
        .filter_map(|node| node.pid)
        .collect();
    for pid in &monitors {
        // A microVM node's monitor and its VMM share a process group (the monitor's): both go.
        // A process node's monitor forwards the signal to init itself.
        let target = if state.provider == "microvm" {
            -(*pid as i32)
        } else {
            *pid as i32
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(target),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    wait_for_exit(&monitors, NODE_STOP_TIMEOUT);
    let mut failures = Vec::new();
    if state.provider == "microvm" {
        // The VMMs (no cgroups of their own) may outlive their monitors while they free guest
        // memory: the namespaces and files go only once every process of each group has.
        failures.extend(end_process_groups(&monitors));
    }
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

/// Asks each running VM node to shut down through its node API, all at once, and waits up to
/// [`VM_SHUTDOWN_TIMEOUT`] for the process (QEMU, or the VMM's monitor) of each node that
/// accepted to end when its guest powers off. A node that cannot be asked, or does not end in
/// time, is left to [`stop_nodes`], which kills it as a power cut would (its data disk's
/// journal recovers it).
pub fn shut_down_vm_nodes(state: &ClusterState) {
    if state.provider == "process" {
        return;
    }
    let running: Vec<&crate::state::NodeState> = state
        .nodes
        .iter()
        .filter(|node| node_running(state, node))
        .collect();
    if running.is_empty() {
        return;
    }
    let credentials = match crate::node_access::NodeApiCredentialFiles::under(
        &crate::state::cluster_dir(&state.name),
    )
    .read()
    {
        Ok(credentials) => credentials,
        Err(err) => {
            tracing::warn!(error = %chain(&err), "the node API's credentials; killing the nodes");
            return;
        }
    };
    let targets: Vec<(String, baton_node_api::NodeTarget)> = running
        .iter()
        .map(|node| {
            (
                node.name.clone(),
                baton_node_api::NodeTarget::Tcp {
                    address: std::net::SocketAddr::from((node.ip, baton_node_api::NODE_API_PORT)),
                    netns: Some(state.netns.clone()),
                },
            )
        })
        .collect();
    // A runtime of its own on a thread of its own: callers may be inside another runtime.
    let accepted = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        Some(
            runtime.block_on(futures::future::join_all(
                targets
                    .iter()
                    .map(|(name, target)| ask_to_shut_down(name, target, &credentials)),
            )),
        )
    })
    .join();
    let Ok(Some(accepted)) = accepted else {
        tracing::warn!("could not ask the nodes to shut down; killing them");
        return;
    };
    let pids: Vec<u32> = running
        .iter()
        .zip(accepted)
        .filter(|(_, accepted)| *accepted)
        .filter_map(|(node, _)| node.pid)
        .collect();
    wait_for_exit(&pids, VM_SHUTDOWN_TIMEOUT);
}

/// Waits until none of `pids` is alive, or `timeout` has passed (polling every 50 ms).
fn wait_for_exit(pids: &[u32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|pid| crate::state::process_alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asks node `name` at `target` to shut down; asks again after a failure that may pass (a
/// refused connection while its API restarts) until [`NODE_API_TIMEOUT`]. Returns whether the
/// node accepted (also when it was shutting down already).
async fn ask_to_shut_down(
    name: &str,
    target: &baton_node_api::NodeTarget,
    credentials: &baton_node_api::ClientCredentials,
) -> bool {
    let ask = || async {
        let mut client = baton_node_api::connect(target, credentials)
            .await
            .map_err(|err| (tonic::Code::Unavailable, chain(&err)))?;
        client
            .shutdown(baton_node_api::proto::PowerRequest::default())
            .await
            .map_err(|status| (status.code(), status.message().to_string()))
    };
    let deadline = tokio::time::Instant::now() + NODE_API_TIMEOUT;
    let error = loop {
        match tokio::time::timeout_at(deadline, ask()).await {
            Ok(Ok(_)) => return true,
            Ok(Err((code, message))) if message.contains("already shutting down") => {
                tracing::debug!(node = name, ?code, "the node was shutting down already");
                return true;
            }
            Ok(Err((tonic::Code::PermissionDenied | tonic::Code::Unauthenticated, message))) => {
                break message;
            }
            Ok(Err((_, message))) if tokio::time::Instant::now() + RETRY_PAUSE < deadline => {
                tracing::debug!(node = name, error = %message, "asking the node to shut down again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Ok(Err((_, message))) => break message,
            Err(_) => break "timed out".to_string(),
        }
    };
    tracing::warn!(node = name, %error, "asking the node to shut down");
    false
}

/// Kills what is left in the process groups `leaders` led (they had SIGTERM already) and
/// waits, up to [`KILL_TIMEOUT`], until no process of them remains. Returns what failed.
fn end_process_groups(leaders: &[u32]) -> Vec<String> {
    use nix::sys::signal::{Signal, kill};
    let group = |leader: u32| nix::unistd::Pid::from_raw(-(leader as i32));
    let alive = |leader: u32| kill(group(leader), None).is_ok();
    let deadline = Instant::now() + KILL_TIMEOUT;
    let mut killed = false;
    loop {
        let left: Vec<u32> = leaders.iter().copied().filter(|l| alive(*l)).collect();
        if left.is_empty() {
            return Vec::new();
        }
        if !killed {
            for leader in &left {
                let _ = kill(group(*leader), Signal::SIGKILL);
            }
            killed = true;
        } else if Instant::now() >= deadline {
            return left
                .iter()
                .map(|l| format!("the processes of group {l} did not end"))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the forwarder, when it is still the process the state names.
pub fn stop_forwarder(state: &ClusterState) {
    if let Some(pid) = state.forwarder_pid
        && process_matches(pid, &forwarder_marker(state))
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Removes every namespace pin of the cluster (the interfaces in them go too). Returns what
/// failed.
pub fn remove_pins(state: &ClusterState) -> Vec<String> {
    let mut pins: Vec<&std::path::Path> = state.pins.iter().map(|p| p.as_path()).collect();
    pins.extend(state.nodes.iter().map(|n| n.netns.as_path()));
    pins.push(&state.netns);
    pins.sort();
    pins.dedup();
    pins.into_iter()
        .filter_map(|pin| remove_namespace(pin).err())
        .map(|err| chain(&err))
        .collect()
}

/// Stops the cluster `state` describes and records that it is stopped (no processes, no
/// cgroups) in its state file. Stopping a stopped cluster changes nothing.
pub fn stop_cluster(state: &mut ClusterState) -> Result<(), StopClusterError> {
    shut_down_vm_nodes(state);
    let mut failures = stop_nodes(state);
    stop_forwarder(state);
    failures.extend(remove_pins(state));
    if failures.is_empty() {
        for node in &mut state.nodes {
            node.pid = None;
            node.cgroups.clear();
            node.ready_after_ms = None;
        }
        state.forwarder_pid = None;
        if let Err(err) = state.save(&crate::state::cluster_dir(&state.name)) {
            failures.push(chain(&err));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(StopClusterError {
            cluster: state.name.clone(),
            failures,
        })
    }
}
