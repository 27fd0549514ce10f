//! Security settings: the effective security context (container over pod), capabilities
//! (containerd's default set, `add`/`drop` with `ALL`, everything when privileged),
//! `no_new_privs`, and the masked and read-only paths. AppArmor and SELinux settings are
//! ignored (the node has neither).

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// The security settings that apply to a container: the container's `securityContext`, with
/// the pod's for the fields both have and the container leaves unset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EffectiveSecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    pub supplemental_groups: Vec<i64>,
    pub fs_group: Option<i64>,
    pub seccomp_profile: Option<SeccompProfile>,
    pub privileged: bool,
    pub read_only_root_filesystem: bool,
    pub allow_privilege_escalation: Option<bool>,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    /// `procMount: Unmasked` (the default is `Default`).
    pub unmasked_proc: bool,
}

impl EffectiveSecurityContext {
    /// Upstream `DetermineEffectiveSecurityContext`.
    pub fn of(pod: &Pod, container: &Container) -> Self {
        let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let sc = container.security_context.as_ref();
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        EffectiveSecurityContext {
            run_as_user: sc
                .and_then(|s| s.run_as_user)
                .or_else(|| pod_sc.and_then(|s| s.run_as_user)),
            run_as_group: sc
                .and_then(|s| s.run_as_group)
                .or_else(|| pod_sc.and_then(|s| s.run_as_group)),
            run_as_non_root: sc
                .and_then(|s| s.run_as_non_root)
                .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
                .unwrap_or(false),
            supplemental_groups: pod_sc
                .and_then(|s| s.supplemental_groups.clone())
                .unwrap_or_default(),
            fs_group: pod_sc.and_then(|s| s.fs_group),
            seccomp_profile: sc
                .and_then(|s| s.seccomp_profile.clone())
                .or_else(|| pod_sc.and_then(|s| s.seccomp_profile.clone())),
            privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
            read_only_root_filesystem: sc
                .and_then(|s| s.read_only_root_filesystem)
                .unwrap_or(false),
            allow_privilege_escalation: sc.and_then(|s| s.allow_privilege_escalation),
            add_capabilities: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
            drop_capabilities: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
            unmasked_proc: sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked"),
        }
    }
}

/// Every capability, by its name without the `CAP_` prefix.
pub const ALL_CAPABILITIES: [(&str, Capability); 41] = [
    ("AUDIT_CONTROL", Capability::AuditControl),
    ("AUDIT_READ", Capability::AuditRead),
    ("AUDIT_WRITE", Capability::AuditWrite),
    ("BLOCK_SUSPEND", Capability::BlockSuspend),
    ("BPF", Capability::Bpf),
    ("CHECKPOINT_RESTORE", Capability::CheckpointRestore),
    ("CHOWN", Capability::Chown),
    ("DAC_OVERRIDE", Capability::DacOverride),
    ("DAC_READ_SEARCH", Capability::DacReadSearch),
    ("FOWNER", Capability::Fowner),
    ("FSETID", Capability::Fsetid),
    ("IPC_LOCK", Capability::IpcLock),
    ("IPC_OWNER", Capability::IpcOwner),
    ("KILL", Capability::Kill),
    ("LEASE", Capability::Lease),
    ("LINUX_IMMUTABLE", Capability::LinuxImmutable),
    ("MAC_ADMIN", Capability::MacAdmin),
    ("MAC_OVERRIDE", Capability::MacOverride),
    ("MKNOD", Capability::Mknod),
    ("NET_ADMIN", Capability::NetAdmin),
    ("NET_BIND_SERVICE", Capability::NetBindService),
    ("NET_BROADCAST", Capability::NetBroadcast),
    ("NET_RAW", Capability::NetRaw),
    ("PERFMON", Capability::Perfmon),
    ("SETFCAP", Capability::Setfcap),
    ("SETGID", Capability::Setgid),
    ("SETPCAP", Capability::Setpcap),
    ("SETUID", Capability::Setuid),
    ("SYS_ADMIN", Capability::SysAdmin),
    ("SYS_BOOT", Capability::SysBoot),
    ("SYS_CHROOT", Capability::SysChroot),
    ("SYS_MODULE", Capability::SysModule),
    ("SYS_NICE", Capability::SysNice),
    ("SYS_PACCT", Capability::SysPacct),
    ("SYS_PTRACE", Capability::SysPtrace),
    ("SYS_RAWIO", Capability::SysRawio),
    ("SYS_RESOURCE", Capability::SysResource),
    ("SYS_TIME", Capability::SysTime),
    ("SYS_TTY_CONFIG", Capability::SysTtyConfig),
    ("SYSLOG", Capability::Syslog),
    ("WAKE_ALARM", Capability::WakeAlarm),
];

/// containerd's default capabilities for unprivileged containers.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// A capability named as Kubernetes names them (`NET_ADMIN`; a `CAP_` prefix and any case are
/// accepted too).
pub fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    ALL_CAPABILITIES
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, c)| *c)
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The container's capabilities (bounding = effective = permitted): all of them when
/// privileged; otherwise containerd's defaults, then `add: [ALL]`, then `drop: [ALL]`, then
/// each named addition, then each named drop. Unknown names are ignored, as runc does.
pub fn capability_set(sc: &EffectiveSecurityContext) -> HashSet<Capability> {
    let all = || {
        ALL_CAPABILITIES
            .iter()
            .map(|(_, c)| *c)
            .collect::<HashSet<_>>()
    };
    if sc.privileged {
        return all();
    }
    let mut set: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    if sc.add_capabilities.iter().any(|c| is_all(c)) {
        set = all();
    }
    if sc.drop_capabilities.iter().any(|c| is_all(c)) {
        set.clear();
    }
    for name in sc.add_capabilities.iter().filter(|c| !is_all(c)) {
        match parse_capability(name) {
            Some(cap) => {
                set.insert(cap);
            }
            None => tracing::warn!(capability = name, "ignoring unknown capability to add"),
        }
    }
    for name in sc.drop_capabilities.iter().filter(|c| !is_all(c)) {
        match parse_capability(name) {
            Some(cap) => {
                set.remove(&cap);
            }
            None => tracing::warn!(capability = name, "ignoring unknown capability to drop"),
        }
    }
    set
}

/// The OCI capability sets: bounding, effective and permitted as given; inheritable and
/// ambient empty (as containerd since CVE-2022-24769).
pub fn linux_capabilities(set: &HashSet<Capability>) -> LinuxCapabilities {
    let caps: Capabilities = set.iter().copied().collect();
    let mut linux = LinuxCapabilities::default();
    linux.set_bounding(Some(caps.clone()));
    linux.set_effective(Some(caps.clone()));
    linux.set_permitted(Some(caps));
    linux.set_inheritable(Some(Capabilities::new()));
    linux.set_ambient(Some(Capabilities::new()));
    linux
}

/// `no_new_privs`: set exactly when `allowPrivilegeEscalation` is false (upstream
/// `AddNoNewPrivileges`), never for privileged containers or ones holding `CAP_SYS_ADMIN`
/// (the API refuses those combinations; this guards against objects that skipped validation).
pub fn no_new_privileges(sc: &EffectiveSecurityContext, caps: &HashSet<Capability>) -> bool {
    sc.allow_privilege_escalation == Some(false)
        && !sc.privileged
        && !caps.contains(&Capability::SysAdmin)
}

/// Paths the container cannot read (the kubelet's defaults).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the container can only read (the kubelet's defaults).
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Masked and read-only paths: the defaults with `procMount: Default`, none with `Unmasked` or
/// for privileged containers.
pub fn masked_and_readonly_paths(sc: &EffectiveSecurityContext) -> (Vec<String>, Vec<String>) {
    if sc.privileged || sc.unmasked_proc {
        return (Vec::new(), Vec::new());
    }
    (
        DEFAULT_MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
        DEFAULT_READONLY_PATHS
            .iter()
            .map(|p| p.to_string())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Capabilities as K8sCaps, PodSecurityContext, PodSpec, SecurityContext,
    };

    fn sc(add: &[&str], drop: &[&str]) -> EffectiveSecurityContext {
        EffectiveSecurityContext {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn names(set: &HashSet<Capability>) -> Vec<&'static str> {
        let mut names: Vec<_> = ALL_CAPABILITIES
            .iter()
            .filter(|(_, c)| set.contains(c))
            .map(|(n, _)| *n)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn capability_add_and_drop_follow_containerd() {
        let defaults = names(&DEFAULT_CAPABILITIES.into_iter().collect());
        let cases: Vec<(&[&str], &[&str], Vec<&str>)> = vec![
            (&[], &[], defaults.clone()),
            (&[], &["ALL"], vec![]),
            (&["NET_BIND_SERVICE"], &["ALL"], vec!["NET_BIND_SERVICE"]),
            (&["ALL"], &["ALL"], vec![]),
            (&["ALL", "CHOWN"], &["ALL"], vec!["CHOWN"]),
            (&["SYS_TIME"], &["SYS_TIME"], defaults.clone()),
            (&["cap_net_admin"], &["KILL", "CAP_MKNOD"], {
                let mut v: Vec<&str> = defaults
                    .iter()
                    .copied()
                    .filter(|n| *n != "KILL" && *n != "MKNOD")
                    .collect();
                v.push("NET_ADMIN");
                v.sort();
                v
            }),
            (&["NOT_A_CAP"], &[], defaults.clone()),
        ];
        for (add, drop, want) in cases {
            assert_eq!(
                names(&capability_set(&sc(add, drop))),
                want,
                "add {add:?} drop {drop:?}"
            );
        }
        let mut all = sc(&[], &["ALL"]);
        all.privileged = true;
        assert_eq!(
            capability_set(&all).len(),
            41,
            "privileged gets every capability"
        );
        let mut everything = sc(&["ALL"], &["CHOWN"]);
        everything.privileged = false;
        assert_eq!(capability_set(&everything).len(), 40);
    }

    #[test]
    fn oci_capability_sets() {
        let set: HashSet<_> = [Capability::Kill].into_iter().collect();
        let linux = linux_capabilities(&set);
        assert_eq!(linux.bounding().as_ref().unwrap().len(), 1);
        assert_eq!(linux.effective(), linux.bounding());
        assert_eq!(linux.permitted(), linux.bounding());
        assert!(linux.inheritable().as_ref().unwrap().is_empty());
        assert!(linux.ambient().as_ref().unwrap().is_empty());
    }

    #[test]
    fn no_new_privileges_only_when_escalation_is_disallowed() {
        let defaults: HashSet<_> = DEFAULT_CAPABILITIES.into_iter().collect();
        let mut s = sc(&[], &[]);
        assert!(!no_new_privileges(&s, &defaults), "unset allows escalation");
        s.allow_privilege_escalation = Some(true);
        assert!(!no_new_privileges(&s, &defaults));
        s.allow_privilege_escalation = Some(false);
        assert!(no_new_privileges(&s, &defaults));
        let mut with_admin = defaults.clone();
        with_admin.insert(Capability::SysAdmin);
        assert!(!no_new_privileges(&s, &with_admin));
        s.privileged = true;
        assert!(!no_new_privileges(&s, &defaults));
    }

    #[test]
    fn masked_paths_by_proc_mount_and_privilege() {
        let (masked, readonly) = masked_and_readonly_paths(&sc(&[], &[]));
        assert!(masked.contains(&"/proc/kcore".to_string()));
        assert!(masked.contains(&"/sys/firmware".to_string()));
        assert!(readonly.contains(&"/proc/sys".to_string()));
        let mut unmasked = sc(&[], &[]);
        unmasked.unmasked_proc = true;
        assert_eq!(masked_and_readonly_paths(&unmasked), (vec![], vec![]));
        let mut privileged = sc(&[], &[]);
        privileged.privileged = true;
        assert_eq!(masked_and_readonly_paths(&privileged), (vec![], vec![]));
    }

    #[test]
    fn container_settings_override_the_pods() {
        let pod = Pod {
            spec: Some(PodSpec {
                security_context: Some(PodSecurityContext {
                    run_as_user: Some(1000),
                    run_as_group: Some(2000),
                    run_as_non_root: Some(true),
                    fs_group: Some(3000),
                    supplemental_groups: Some(vec![4000]),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        localhost_profile: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let container = Container {
            security_context: Some(SecurityContext {
                run_as_user: Some(0),
                run_as_non_root: Some(false),
                seccomp_profile: Some(SeccompProfile {
                    type_: "Unconfined".into(),
                    localhost_profile: None,
                }),
                capabilities: Some(K8sCaps {
                    add: Some(vec!["NET_ADMIN".into()]),
                    drop: None,
                }),
                read_only_root_filesystem: Some(true),
                proc_mount: Some("Unmasked".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sc = EffectiveSecurityContext::of(&pod, &container);
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.run_as_group, Some(2000));
        assert!(!sc.run_as_non_root);
        assert_eq!(sc.fs_group, Some(3000));
        assert_eq!(sc.supplemental_groups, vec![4000]);
        assert_eq!(sc.seccomp_profile.unwrap().type_, "Unconfined");
        assert_eq!(sc.add_capabilities, vec!["NET_ADMIN"]);
        assert!(sc.read_only_root_filesystem);
        assert!(sc.unmasked_proc);
        let bare = EffectiveSecurityContext::of(&pod, &Container::default());
        assert_eq!(bare.run_as_user, Some(1000));
        assert!(bare.run_as_non_root);
        assert_eq!(bare.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert!(!bare.read_only_root_filesystem);
    }
}
