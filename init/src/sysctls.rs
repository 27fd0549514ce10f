//! Kernel parameters through /proc/sys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::environment::Environment;

/// Baton's own sysctls: forwarding and bridged traffic through netfilter for the pod network
/// and Services, and the inotify and conntrack limits a node with many pods needs.
pub const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("fs.inotify.max_user_watches", "524288"),
    ("fs.inotify.max_user_instances", "8192"),
    ("net.netfilter.nf_conntrack_max", "262144"),
];

/// Why a sysctl could not be set.
#[derive(Debug, thiserror::Error)]
#[error("setting sysctl {name} (writing {path})")]
pub struct SetSysctlError {
    /// The sysctl.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The file of sysctl `name` under `proc_sys` (`/proc/sys`).
pub fn sysctl_path(proc_sys: &Path, name: &str) -> PathBuf {
    proc_sys.join(name.replace('.', "/"))
}

/// Whether `name` applies in `environment`: a sandbox shares the host's kernel, so only its
/// own network namespace's parameters (`net.*`) are its to set.
pub fn applies(environment: Environment, name: &str) -> bool {
    environment == Environment::Machine || name.starts_with("net.")
}

/// Sets Baton's sysctls, then `extra` (the machine configuration's), those that apply in
/// `environment`. A parameter the kernel lacks (its module not loaded, or not namespaced) is
/// logged and skipped; the others must succeed.
pub fn apply_sysctls(
    proc_sys: &Path,
    environment: Environment,
    extra: &BTreeMap<String, String>,
) -> Result<usize, SetSysctlError> {
    let wanted = NODE_SYSCTLS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut set = 0;
    for (name, value) in wanted {
        if !applies(environment, &name) {
            continue;
        }
        let path = sysctl_path(proc_sys, &name);
        match std::fs::write(&path, &value) {
            Ok(()) => set += 1,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) || err.raw_os_error() == Some(libc::EROFS) =>
            {
                tracing::warn!(sysctl = %name, %err, "sysctl not set: the kernel has no such writable parameter here");
            }
            Err(source) => return Err(SetSysctlError { name, path, source }),
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_proc_sys_files_and_a_sandbox_sets_only_net() {
        assert_eq!(
            sysctl_path(Path::new("/proc/sys"), "net.ipv4.ip_forward"),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert!(applies(Environment::Sandbox, "net.ipv4.ip_forward"));
        assert!(!applies(
            Environment::Sandbox,
            "fs.inotify.max_user_watches"
        ));
        assert!(applies(Environment::Machine, "fs.inotify.max_user_watches"));
    }

    #[test]
    fn writes_values_and_skips_missing_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let forward = sysctl_path(dir.path(), "net.ipv4.ip_forward");
        std::fs::create_dir_all(forward.parent().unwrap()).unwrap();
        std::fs::write(&forward, "0").unwrap();
        let extra = BTreeMap::from([("net.ipv4.ip_forward".to_string(), "1".to_string())]);
        // Every other parameter is missing from the fake /proc/sys: skipped, not an error.
        let set = apply_sysctls(dir.path(), Environment::Sandbox, &extra).unwrap();
        assert_eq!(set, 2);
        assert_eq!(std::fs::read_to_string(&forward).unwrap(), "1");
    }
}
