//! `baton cluster destroy`: stops the cluster as `stop` does (every node, the forwarder, the
//! namespaces), then removes the kubeconfig context and the cluster's directory. Every step
//! runs even when an earlier one failed; the failures are reported together. Nothing is left
//! behind.

use crate::kubeconfig::remove_context;
use crate::state::{ClusterState, cluster_dir};
use crate::stop::{chain, remove_pins, stop_forwarder, stop_nodes};

/// Why a cluster could not be removed entirely: every step that failed.
#[derive(Debug, thiserror::Error)]
#[error("destroying cluster {cluster}: {}", .failures.join("; "))]
pub struct DestroyClusterError {
    /// The cluster.
    pub cluster: String,
    /// What failed, each with its causes.
    pub failures: Vec<String>,
}

/// Removes the cluster `state` describes.
pub fn destroy_cluster(state: &ClusterState) -> Result<(), DestroyClusterError> {
    let mut failures = stop_nodes(state);
    stop_forwarder(state);
    failures.extend(remove_pins(state));
    if let Err(err) = remove_context(&state.kubeconfig, &format!("baton-{}", state.name)) {
        failures.push(format!("removing the kubeconfig context: {}", chain(&err)));
    }
    let dir = cluster_dir(&state.name);
    crate::image_cache::forget_user(&state.image_root, &dir);
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
