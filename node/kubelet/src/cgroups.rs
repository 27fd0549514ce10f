//! The pod-level cgroup on the node: where it is (under --cgroup-root, named as the cgroupfs
//! driver names it) and its removal with the pod, in every hierarchy (cgroup v1 controllers,
//! the unified v2 tree).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use crate::qos::pod_cgroup_name;

/// The pod's cgroup path (`<cgroup-root>/kubepods/<qos>/pod<uid>`).
pub fn pod_cgroup(cgroup_root: &str, pod: &Pod) -> String {
    format!(
        "{}{}",
        cgroup_root.trim_end_matches('/'),
        pod_cgroup_name(pod)
    )
}

/// The directories that hold cgroup `path`: under the v2 root, or under each v1 hierarchy
/// (and the hybrid layout's unified tree).
fn directories(path: &str) -> Vec<PathBuf> {
    let relative = path.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let mut found = vec![root.join(relative)];
    if !root.join("cgroup.controllers").exists() {
        found.extend(
            std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
                .map(|entry| entry.path().join(relative)),
        );
    }
    found
}

/// Removes the (empty, its containers' cgroups gone) cgroup `path` from every hierarchy.
pub fn remove(path: &str) {
    for dir in directories(path) {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(cgroup = %dir.display(), %err, "removing a pod's cgroup"),
        }
    }
}
