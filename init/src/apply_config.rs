//! Applying a machine configuration through the node API: which fields differ from the one in
//! use, whether the difference can take effect on the running node or waits for the next
//! boot, and keeping it on the node's state for that boot.

use std::path::{Path, PathBuf};

use crate::config_source::STAGED_CONFIG;
use crate::machine_config::{Cluster, Machine, MachineConfig};

/// Fields a running node takes without a reboot.
pub const LIVE_FIELDS: &[&str] = &["machine.sysctls"];

/// What applying a configuration does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyPlan {
    /// It is the configuration in use.
    Unchanged,
    /// Every change takes effect now.
    Live,
    /// It waits for the next boot.
    Staged,
}

impl ApplyPlan {
    /// The outcome's name in the node API (`applied`, `staged`, `unchanged`).
    pub fn outcome(self) -> &'static str {
        match self {
            ApplyPlan::Unchanged => "unchanged",
            ApplyPlan::Live => "applied",
            ApplyPlan::Staged => "staged",
        }
    }
}

/// The fields (by their path in the document) whose value differs between `old` and `new`.
pub fn changed_fields(old: &MachineConfig, new: &MachineConfig) -> Vec<&'static str> {
    let (a, b) = (&old.machine, &new.machine);
    let (c, d) = (&old.cluster, &new.cluster);
    // Every field is bound here and compared below: a field added to the document fails to
    // compile here, and its binding is unused (a warning, an error under clippy) until it is
    // compared.
    let Machine {
        role,
        hostname,
        network,
        identity,
        api_certificate,
        data_disk,
        sysctls,
        kernel_args,
        kubelet,
        proxy,
        time,
    } = a;
    let Cluster {
        name,
        endpoint,
        ca,
        service_account_key,
        control_plane,
        pod_cidr,
        service_cidr,
        dns,
    } = c;
    let checks = [
        ("machine.role", *role == b.role),
        ("machine.hostname", *hostname == b.hostname),
        ("machine.network", *network == b.network),
        ("machine.identity", *identity == b.identity),
        (
            "machine.apiCertificate",
            *api_certificate == b.api_certificate,
        ),
        ("machine.dataDisk", *data_disk == b.data_disk),
        ("machine.sysctls", *sysctls == b.sysctls),
        ("machine.kernelArgs", *kernel_args == b.kernel_args),
        ("machine.kubelet", *kubelet == b.kubelet),
        ("machine.proxy", *proxy == b.proxy),
        ("machine.time", *time == b.time),
        ("cluster.name", *name == d.name),
        ("cluster.endpoint", *endpoint == d.endpoint),
        ("cluster.ca", *ca == d.ca),
        (
            "cluster.serviceAccountKey",
            *service_account_key == d.service_account_key,
        ),
        ("cluster.controlPlane", *control_plane == d.control_plane),
        ("cluster.podCIDR", *pod_cidr == d.pod_cidr),
        ("cluster.serviceCIDR", *service_cidr == d.service_cidr),
        ("cluster.dns", *dns == d.dns),
    ];
    checks
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(field, _)| field)
        .collect()
}

/// What applying a configuration that changes `changed` does; `staged_only` when the caller
/// asked for the next boot.
pub fn plan(changed: &[&str], staged_only: bool) -> ApplyPlan {
    if changed.is_empty() {
        ApplyPlan::Unchanged
    } else if staged_only || changed.iter().any(|field| !LIVE_FIELDS.contains(field)) {
        ApplyPlan::Staged
    } else {
        ApplyPlan::Live
    }
}

/// Why a configuration could not be kept for the next boot.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}")]
pub struct StageConfigError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Keeps `yaml` under `root` (`/` on a node) as the configuration the next boot reads first,
/// through a temporary file and a rename: a failure leaves the previous one in place.
pub fn stage(root: &Path, yaml: &str) -> Result<PathBuf, StageConfigError> {
    let path = root.join(STAGED_CONFIG);
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StageConfigError { path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail(dir))?;
    }
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, yaml).map_err(fail(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(fail(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine_config::tests_support::control_plane_config;

    #[test]
    fn only_sysctls_take_effect_on_a_running_node() {
        let old = control_plane_config();
        assert_eq!(
            plan(&changed_fields(&old, &old), false),
            ApplyPlan::Unchanged
        );

        let mut sysctl = old.clone();
        sysctl
            .machine
            .sysctls
            .insert("vm.max_map_count".into(), "262144".into());
        let changed = changed_fields(&old, &sysctl);
        assert_eq!(changed, ["machine.sysctls"]);
        assert_eq!(plan(&changed, false), ApplyPlan::Live);
        assert_eq!(plan(&changed, true), ApplyPlan::Staged);

        let mut renamed = sysctl.clone();
        renamed.machine.hostname = "cp-2".into();
        renamed
            .machine
            .kubelet
            .extra_args
            .push("--max-pods=50".into());
        let changed = changed_fields(&old, &renamed);
        assert_eq!(
            changed,
            ["machine.hostname", "machine.sysctls", "machine.kubelet"]
        );
        assert_eq!(plan(&changed, false), ApplyPlan::Staged);

        // New time servers take effect at the next boot.
        let mut timed = old.clone();
        timed
            .machine
            .time
            .servers
            .push("192.0.2.123".parse().unwrap());
        let changed = changed_fields(&old, &timed);
        assert_eq!(changed, ["machine.time"]);
        assert_eq!(plan(&changed, false), ApplyPlan::Staged);
    }

    #[test]
    fn a_staged_configuration_replaces_the_previous_one_whole() {
        let root = tempfile::tempdir().unwrap();
        let path = stage(root.path(), "first").unwrap();
        assert_eq!(path, root.path().join(STAGED_CONFIG));
        stage(root.path(), "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("machine-config.yaml")]);
    }
}
