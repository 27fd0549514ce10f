//! `baton cluster destroy`: stops every node (SIGTERM to its process, then every process left
//! in its cgroups killed), the forwarder, removes the namespaces, the kubeconfig context and
//! the cluster's directory. Nothing is left behind.

use std::time::{Duration, Instant};

use crate::kubeconfig::remove_context;
use crate::network::remove_namespace;
use crate::state::{ClusterState, cluster_dir, process_matches};

/// How long a node gets to shut down in order before its processes are killed.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long killing what is left may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a cluster could not be removed entirely.
#[derive(Debug, thiserror::Error)]
pub enum DestroyClusterError {
    /// A node's cgroups could not be emptied or removed.
    #[error("stopping node {node}")]
    Node {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: baton_sandbox::cgroups::NodeCgroupsError,
    },
    /// A namespace could not be removed.
    #[error("removing a network namespace")]
    Namespace(#[from] baton_network::NetNsError),
    /// The kubeconfig could not be updated.
    #[error("removing the kubeconfig context")]
    Kubeconfig(#[from] crate::kubeconfig::KubeconfigError),
    /// The cluster's directory could not be removed.
    #[error("removing {0}")]
    Directory(std::path::PathBuf, #[source] std::io::Error),
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start())
                .unwrap_or("");
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

/// Stops node processes: SIGTERM to each node's monitor (init shuts the node down in order),
/// then, after the timeout, SIGKILL to everything left in the nodes' cgroups.
pub fn stop_nodes(state: &ClusterState) -> Result<(), DestroyClusterError> {
    let monitors: Vec<u32> = state
        .nodes
        .iter()
        .filter_map(|n| n.pid)
        .filter(|pid| process_matches(*pid, "sandbox"))
        .collect();
    for pid in &monitors {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + NODE_STOP_TIMEOUT;
    while monitors.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for node in &state.nodes {
        baton_sandbox::kill_and_remove_cgroups(&node.cgroups, KILL_TIMEOUT).map_err(|source| {
            DestroyClusterError::Node {
                node: node.name.clone(),
                source,
            }
        })?;
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
    Ok(())
}

/// Removes the cluster `state` describes.
pub fn destroy_cluster(state: &ClusterState) -> Result<(), DestroyClusterError> {
    stop_nodes(state)?;
    if let Some(pid) = state.forwarder_pid
        && process_matches(pid, "forward")
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for node in &state.nodes {
        remove_namespace(&node.netns)?;
    }
    remove_namespace(&state.netns)?;
    remove_context(&state.kubeconfig, &format!("baton-{}", state.name))?;
    let dir = cluster_dir(&state.name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(DestroyClusterError::Directory(dir, err)),
    }
}
