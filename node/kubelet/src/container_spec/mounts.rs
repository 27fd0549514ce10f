//! The container's mounts: containerd's defaults (`/proc`, `/dev`, `/dev/pts`, `/dev/mqueue`,
//! `/sys`, `/sys/fs/cgroup`), then, ordered by depth, the pod's files (`/etc/hostname`,
//! `/etc/resolv.conf`, `/etc/hosts`, the pod's `/dev/shm`, the termination log) and the volume
//! mounts. A volume mounted at one of those paths replaces the default there; a volume at
//! `/dev` replaces every default below `/dev`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use oci_spec::runtime::Mount;

use super::{MountPropagation, PodEtcFiles, ResolvedMount, SandboxNamespaces};

/// Where the termination message goes when `terminationMessagePath` is unset.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// What [`mounts`] needs.
#[derive(Debug, Clone, Copy)]
pub struct MountInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub privileged: bool,
    pub read_only_rootfs: bool,
    pub volume_mounts: &'a [ResolvedMount],
    pub sandbox: &'a SandboxNamespaces,
    pub etc_files: &'a PodEtcFiles,
    pub termination_log: &'a Path,
}

/// The mounts, and the rootfs propagation that their propagation modes need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSet {
    pub mounts: Vec<Mount>,
    pub rootfs_propagation: Option<String>,
}

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// containerd's default mounts (`/run` left out, as its CRI plugin does; `/dev/shm` is always
/// replaced by the pod's).
fn default_mounts(privileged: bool) -> Vec<Mount> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ]
}

/// A bind mount as containerd makes it for CRI mounts: `rbind`, the propagation, `ro`/`rw`.
fn bind(destination: &str, source: &Path, propagation: MountPropagation, read_only: bool) -> Mount {
    let propagation = match propagation {
        MountPropagation::None => "rprivate",
        MountPropagation::HostToContainer => "rslave",
        MountPropagation::Bidirectional => "rshared",
    };
    let mode = if read_only { "ro" } else { "rw" };
    mount(destination, "bind", source, &["rbind", propagation, mode])
}

/// `path` without trailing or repeated slashes, for comparing destinations.
fn clean(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

fn depth(path: &Path) -> usize {
    path.components().count()
}

/// The container's mounts.
pub fn mounts(input: &MountInput) -> MountSet {
    let spec = input.pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let host_ipc = spec.and_then(|s| s.host_ipc) == Some(true);
    let volume_paths: Vec<String> = input
        .volume_mounts
        .iter()
        .map(|m| clean(&m.container_path))
        .collect();
    let taken = |path: &str| volume_paths.iter().any(|p| p == path);

    // The pod's files, unless a volume is mounted at the same place.
    let mut supplied: Vec<Mount> = Vec::new();
    let files = input.etc_files;
    if !host_network && !taken("/etc/hostname") {
        supplied.push(bind(
            "/etc/hostname",
            &files.hostname,
            MountPropagation::None,
            input.read_only_rootfs,
        ));
    }
    if !taken("/etc/resolv.conf") {
        supplied.push(bind(
            "/etc/resolv.conf",
            &files.resolv_conf,
            MountPropagation::None,
            input.read_only_rootfs,
        ));
    }
    if !taken("/dev/shm") {
        let shm = if host_ipc {
            Path::new("/dev/shm")
        } else {
            input.sandbox.shm.as_path()
        };
        supplied.push(bind("/dev/shm", shm, MountPropagation::None, false));
    }
    let mut rootfs_propagation: Option<&str> = None;
    for volume in input.volume_mounts {
        match volume.propagation {
            MountPropagation::Bidirectional => rootfs_propagation = Some("rshared"),
            MountPropagation::HostToContainer => {
                if rootfs_propagation.is_none() {
                    rootfs_propagation = Some("rslave");
                }
            }
            MountPropagation::None => {}
        }
        supplied.push(bind(
            &clean(&volume.container_path),
            &volume.host_path,
            volume.propagation,
            volume.read_only,
        ));
    }
    if !taken("/etc/hosts") {
        supplied.push(bind(
            "/etc/hosts",
            &files.hosts,
            MountPropagation::None,
            false,
        ));
    }
    let termination_path = input
        .container
        .termination_message_path
        .as_deref()
        .unwrap_or(DEFAULT_TERMINATION_MESSAGE_PATH);
    if !termination_path.is_empty() && !taken(&clean(termination_path)) {
        supplied.push(bind(
            &clean(termination_path),
            input.termination_log,
            MountPropagation::None,
            false,
        ));
    }

    let supplied_paths: Vec<String> = supplied
        .iter()
        .map(|m| clean(&m.destination().to_string_lossy()))
        .collect();
    let dev_supplied = supplied_paths.iter().any(|p| p == "/dev");
    let mut out: Vec<Mount> = default_mounts(input.privileged)
        .into_iter()
        .filter(|m| {
            let dst = clean(&m.destination().to_string_lossy());
            let replaced = supplied_paths.contains(&dst);
            let under_supplied_dev = dev_supplied && dst.starts_with("/dev/");
            !(replaced || under_supplied_dev)
        })
        .collect();
    // Parents before children; equal depths keep their order.
    supplied.sort_by_key(|m| depth(m.destination()));
    out.extend(supplied);
    MountSet {
        mounts: out,
        rootfs_propagation: rootfs_propagation.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn files() -> PodEtcFiles {
        PodEtcFiles {
            hosts: "/pods/p/etc-hosts".into(),
            resolv_conf: "/pods/p/resolv.conf".into(),
            hostname: "/pods/p/hostname".into(),
        }
    }

    fn sandbox() -> SandboxNamespaces {
        SandboxNamespaces {
            network: "/ns/net".into(),
            ipc: "/ns/ipc".into(),
            uts: "/ns/uts".into(),
            pid: None,
            shm: "/pods/p/shm".into(),
        }
    }

    fn volume(
        path: &str,
        host: &str,
        read_only: bool,
        propagation: MountPropagation,
    ) -> ResolvedMount {
        ResolvedMount {
            container_path: path.into(),
            host_path: host.into(),
            read_only,
            propagation,
        }
    }

    fn run(
        spec: PodSpec,
        container: Container,
        volumes: &[ResolvedMount],
        privileged: bool,
        ro: bool,
    ) -> MountSet {
        let pod = Pod {
            spec: Some(spec),
            ..Default::default()
        };
        mounts(&MountInput {
            pod: &pod,
            container: &container,
            privileged,
            read_only_rootfs: ro,
            volume_mounts: volumes,
            sandbox: &sandbox(),
            etc_files: &files(),
            termination_log: Path::new("/pods/p/containers/c/termination-log"),
        })
    }

    fn summary(set: &MountSet) -> Vec<String> {
        set.mounts
            .iter()
            .map(|m| {
                format!(
                    "{} {} {} {}",
                    m.destination().display(),
                    m.typ().as_deref().unwrap_or_default(),
                    m.source().as_ref().unwrap().display(),
                    m.options().as_ref().unwrap().join(",")
                )
            })
            .collect()
    }

    #[test]
    fn default_pod_mounts() {
        let got = summary(&run(
            PodSpec::default(),
            Container::default(),
            &[],
            false,
            false,
        ));
        assert_eq!(
            got,
            vec![
                "/proc proc proc nosuid,noexec,nodev",
                "/dev tmpfs tmpfs nosuid,strictatime,mode=755,size=65536k",
                "/dev/pts devpts devpts nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5",
                "/dev/mqueue mqueue mqueue nosuid,noexec,nodev",
                "/sys sysfs sysfs nosuid,noexec,nodev,ro",
                "/sys/fs/cgroup cgroup cgroup nosuid,noexec,nodev,relatime,ro",
                "/etc/hostname bind /pods/p/hostname rbind,rprivate,rw",
                "/etc/resolv.conf bind /pods/p/resolv.conf rbind,rprivate,rw",
                "/dev/shm bind /pods/p/shm rbind,rprivate,rw",
                "/etc/hosts bind /pods/p/etc-hosts rbind,rprivate,rw",
                "/dev/termination-log bind /pods/p/containers/c/termination-log rbind,rprivate,rw",
            ]
        );
    }

    #[test]
    fn privileged_gets_writable_sysfs_and_cgroupfs() {
        let got = summary(&run(
            PodSpec::default(),
            Container::default(),
            &[],
            true,
            false,
        ));
        assert!(got.contains(&"/sys sysfs sysfs nosuid,noexec,nodev,rw".to_string()));
        assert!(
            got.contains(
                &"/sys/fs/cgroup cgroup cgroup nosuid,noexec,nodev,relatime,rw".to_string()
            )
        );
    }

    #[test]
    fn read_only_rootfs_makes_hostname_and_resolv_conf_read_only() {
        let got = summary(&run(
            PodSpec::default(),
            Container::default(),
            &[],
            false,
            true,
        ));
        assert!(got.contains(&"/etc/hostname bind /pods/p/hostname rbind,rprivate,ro".to_string()));
        assert!(
            got.contains(
                &"/etc/resolv.conf bind /pods/p/resolv.conf rbind,rprivate,ro".to_string()
            )
        );
        assert!(got.contains(&"/etc/hosts bind /pods/p/etc-hosts rbind,rprivate,rw".to_string()));
    }

    #[test]
    fn host_network_and_ipc() {
        let spec = PodSpec {
            host_network: Some(true),
            host_ipc: Some(true),
            ..Default::default()
        };
        let got = summary(&run(spec, Container::default(), &[], false, false));
        assert!(!got.iter().any(|m| m.starts_with("/etc/hostname")));
        assert!(got.contains(&"/dev/shm bind /dev/shm rbind,rprivate,rw".to_string()));
    }

    #[test]
    fn volumes_sorted_by_depth_with_propagation_and_overrides() {
        let volumes = [
            volume("/data/cache/", "/vol/cache", false, MountPropagation::None),
            volume(
                "/data",
                "/vol/data",
                true,
                MountPropagation::HostToContainer,
            ),
            volume("/etc/hosts", "/vol/hosts", true, MountPropagation::None),
            volume("/dev", "/vol/dev", false, MountPropagation::Bidirectional),
        ];
        let container = Container {
            termination_message_path: Some("/tmp/msg".into()),
            ..Default::default()
        };
        let set = run(PodSpec::default(), container, &volumes, false, false);
        assert_eq!(
            summary(&set),
            vec![
                "/proc proc proc nosuid,noexec,nodev",
                "/sys sysfs sysfs nosuid,noexec,nodev,ro",
                "/sys/fs/cgroup cgroup cgroup nosuid,noexec,nodev,relatime,ro",
                "/data bind /vol/data rbind,rslave,ro",
                "/dev bind /vol/dev rbind,rshared,rw",
                "/etc/hostname bind /pods/p/hostname rbind,rprivate,rw",
                "/etc/resolv.conf bind /pods/p/resolv.conf rbind,rprivate,rw",
                "/dev/shm bind /pods/p/shm rbind,rprivate,rw",
                "/data/cache bind /vol/cache rbind,rprivate,rw",
                "/etc/hosts bind /vol/hosts rbind,rprivate,ro",
                "/tmp/msg bind /pods/p/containers/c/termination-log rbind,rprivate,rw",
            ]
        );
        assert_eq!(set.rootfs_propagation.as_deref(), Some("rshared"));
        let only_slave = [volume(
            "/data",
            "/vol/data",
            true,
            MountPropagation::HostToContainer,
        )];
        let set = run(
            PodSpec::default(),
            Container::default(),
            &only_slave,
            false,
            false,
        );
        assert_eq!(set.rootfs_propagation.as_deref(), Some("rslave"));
        let set = run(PodSpec::default(), Container::default(), &[], false, false);
        assert_eq!(set.rootfs_propagation, None);
    }
}
