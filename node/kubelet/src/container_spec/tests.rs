//! Whole-spec tests of [`build_spec`]: the pieces tested in each file, put together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Sysctl,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use oci_spec::runtime::{Capability, LinuxNamespaceType, Spec};

use super::*;

struct Fixture {
    pod: Pod,
    container: Container,
    image: ImageDefaults,
    rootfs: tempfile::TempDir,
    env: Vec<(String, String)>,
    volumes: Vec<ResolvedMount>,
    sandbox: SandboxNamespaces,
    files: PodEtcFiles,
    cgroup_v2: bool,
}

impl Fixture {
    fn new() -> Self {
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(rootfs.path().join("etc")).unwrap();
        std::fs::write(
            rootfs.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            rootfs.path().join("etc/group"),
            "root:x:0:\nnogroup:x:65534:\n",
        )
        .unwrap();
        let container = Container {
            name: "web".into(),
            image: Some("busybox".into()),
            args: Some(vec![
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                "$(PORT)".into(),
            ]),
            tty: Some(true),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity("100m".into())),
                    ("memory".to_string(), Quantity("64Mi".into())),
                ])),
                limits: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity("1".into())),
                    ("memory".to_string(), Quantity("128Mi".into())),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                uid: Some("7c1d".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![container.clone()],
                security_context: Some(PodSecurityContext {
                    sysctls: Some(vec![Sysctl {
                        name: "net.ipv4.ip_unprivileged_port_start".into(),
                        value: "0".into(),
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        };
        Fixture {
            pod,
            container,
            image: ImageDefaults {
                entrypoint: vec!["/bin/busybox".into()],
                cmd: vec!["sh".into()],
                env: vec!["PATH=/bin:/sbin".into()],
                working_dir: None,
                user: None,
            },
            rootfs,
            env: vec![("PORT".into(), "8080".into())],
            volumes: vec![ResolvedMount {
                container_path: "/data".into(),
                host_path: "/var/lib/kubelet/pods/7c1d/volumes/data".into(),
                read_only: false,
                propagation: MountPropagation::None,
            }],
            sandbox: SandboxNamespaces {
                network: "/run/baton/ns/7c1d/net".into(),
                ipc: "/run/baton/ns/7c1d/ipc".into(),
                uts: "/run/baton/ns/7c1d/uts".into(),
                pid: None,
                shm: "/run/baton/pods/7c1d/shm".into(),
            },
            files: PodEtcFiles {
                hosts: "/var/lib/kubelet/pods/7c1d/etc-hosts".into(),
                resolv_conf: "/var/lib/kubelet/pods/7c1d/resolv.conf".into(),
                hostname: "/var/lib/kubelet/pods/7c1d/hostname".into(),
            },
            cgroup_v2: true,
        }
    }

    fn security(mut self, sc: SecurityContext) -> Self {
        self.container.security_context = Some(sc);
        self
    }

    fn build(&self) -> Result<Spec, ContainerConfigError> {
        build_spec(&ContainerSpecInput {
            pod: &self.pod,
            container: &self.container,
            image: &self.image,
            rootfs: self.rootfs.path(),
            env: &self.env,
            volume_mounts: &self.volumes,
            sandbox: &self.sandbox,
            etc_files: &self.files,
            termination_log: Path::new("/var/lib/kubelet/pods/7c1d/containers/web/0"),
            hostname: "web-0",
            cgroups_path: "/kubepods/burstable/pod7c1d/abc".into(),
            cgroup_v2: self.cgroup_v2,
            node_memory_capacity: 4 * 1024 * 1024 * 1024,
            pod_pids_limit: Some(4096),
            seccomp_profile_root: Path::new("/var/lib/kubelet/seccomp"),
        })
    }
}

#[test]
fn a_burstable_container() {
    let spec = Fixture::new().build().unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(
        process.args().as_ref().unwrap(),
        &vec!["/bin/busybox", "httpd", "-f", "-p", "8080"]
    );
    assert_eq!(
        process.env().as_ref().unwrap(),
        &vec![
            "PATH=/bin:/sbin",
            "TERM=xterm",
            "HOSTNAME=web-0",
            "PORT=8080"
        ]
    );
    assert_eq!(process.cwd(), &PathBuf::from("/"));
    assert_eq!(process.terminal(), Some(true));
    assert_eq!(process.user().uid(), 0);
    assert_eq!(process.user().additional_gids().as_deref(), Some(&[0][..]));
    assert_eq!(process.no_new_privileges(), Some(false));
    assert_eq!(process.rlimits(), &None);
    // 1000 - 1000 * 64Mi / 4Gi, the quotient (15.6) truncated.
    assert_eq!(process.oom_score_adj(), Some(985));
    let caps = process.capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    assert!(caps.inheritable().as_ref().unwrap().is_empty());

    let root = spec.root().as_ref().unwrap();
    assert_eq!(root.readonly(), Some(false));
    assert_eq!(spec.hostname().as_deref(), Some("web-0"));

    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/kubepods/burstable/pod7c1d/abc"))
    );
    let types: Vec<LinuxNamespaceType> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert!(types.contains(&LinuxNamespaceType::Cgroup));
    assert!(types.contains(&LinuxNamespaceType::Network));
    let resources = linux.resources().as_ref().unwrap();
    assert_eq!(resources.cpu().as_ref().unwrap().shares(), Some(102));
    assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(100_000));
    assert_eq!(
        resources.memory().as_ref().unwrap().limit(),
        Some(128 * 1024 * 1024)
    );
    assert_eq!(resources.pids().as_ref().unwrap().limit(), 4096);
    assert!(
        linux.seccomp().is_none(),
        "no profile asked for: unconfined"
    );
    assert!(!linux.masked_paths().as_ref().unwrap().is_empty());
    assert_eq!(
        linux
            .sysctl()
            .as_ref()
            .unwrap()
            .get("net.ipv4.ip_unprivileged_port_start")
            .map(String::as_str),
        Some("0")
    );
    let destinations: Vec<String> = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect();
    for want in [
        "/proc",
        "/dev",
        "/sys/fs/cgroup",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/dev/shm",
        "/data",
        "/dev/termination-log",
    ] {
        assert!(destinations.iter().any(|d| d == want), "missing {want}");
    }
    let annotations = spec.annotations().as_ref().unwrap();
    assert_eq!(annotations["io.kubernetes.cri.container-name"], "web");
    assert_eq!(annotations["io.kubernetes.cri.sandbox-uid"], "7c1d");

    // It serialises as a config.json libcontainer reads.
    let json = serde_json::to_value(&spec).unwrap();
    assert!(json["ociVersion"].is_string());
    assert_eq!(json["process"]["user"]["uid"], 0);
    assert_eq!(json["linux"]["resources"]["cpu"]["shares"], 102);
    let back: Spec = serde_json::from_value(json).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn a_hardened_container() {
    let fixture = Fixture::new().security(SecurityContext {
        run_as_user: Some(65534),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: Some(vec!["NET_BIND_SERVICE".into()]),
            drop: Some(vec!["ALL".into()]),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    });
    let spec = fixture.build().unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!((process.user().uid(), process.user().gid()), (65534, 65534));
    assert_eq!(process.no_new_privileges(), Some(true));
    let caps = process.capabilities().as_ref().unwrap();
    assert_eq!(
        caps.effective()
            .as_ref()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        vec![&Capability::NetBindService]
    );
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    let seccomp = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
    assert!(
        seccomp.syscalls().as_ref().unwrap()[0]
            .names()
            .contains(&"execve".to_string())
    );
    let resolv = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/etc/resolv.conf"))
        .unwrap();
    assert!(
        resolv
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string())
    );
}

#[test]
fn a_privileged_container() {
    let mut fixture = Fixture::new().security(SecurityContext {
        privileged: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    });
    fixture.pod.spec.as_mut().unwrap().host_network = Some(true);
    let spec = fixture.build().unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(
        process
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .len(),
        41
    );
    let linux = spec.linux().as_ref().unwrap();
    assert!(linux.seccomp().is_none());
    assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
    assert_eq!(linux.readonly_paths().as_deref(), Some(&[][..]));
    let types: Vec<LinuxNamespaceType> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert!(!types.contains(&LinuxNamespaceType::Network));
    assert!(!types.contains(&LinuxNamespaceType::Uts));
    assert!(!types.contains(&LinuxNamespaceType::Cgroup));
    assert_eq!(spec.hostname(), &None, "no UTS namespace, no hostname");
    assert!(
        linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()[0]
            .allow()
    );
}

#[test]
fn refusals_carry_the_kubelet_message_and_reason() {
    let mut fixture = Fixture::new().security(SecurityContext {
        run_as_non_root: Some(true),
        ..Default::default()
    });
    let err = fixture.build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "container has runAsNonRoot and image will run as root (pod: \"web-0_shop(7c1d)\", container: web)"
    );
    assert_eq!(err.reason(), "CreateContainerConfigError");

    fixture.image.user = Some("www".into());
    let err = fixture.build().unwrap_err();
    assert!(matches!(err, ContainerConfigError::NonNumericUser { .. }));

    let mut fixture = Fixture::new();
    fixture.image.user = Some("www".into());
    let err = fixture.build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unable to find user www: no matching entries in passwd file"
    );
    assert_eq!(err.reason(), "CreateContainerError");

    let mut fixture = Fixture::new();
    fixture.pod.spec.as_mut().unwrap().host_users = Some(false);
    assert!(matches!(
        fixture.build().unwrap_err(),
        ContainerConfigError::UserNamespaces
    ));

    let mut fixture = Fixture::new();
    fixture.image = ImageDefaults::default();
    fixture.container.args = None;
    assert_eq!(
        fixture.build().unwrap_err().to_string(),
        "no command specified"
    );
}
