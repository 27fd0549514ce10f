//! Linux namespaces of a pod's container: the pod's network, IPC and UTS namespaces joined by
//! path (the host's for `hostNetwork`/`hostIPC`), a PID namespace of its own (the pod's with
//! `shareProcessNamespace`, an ephemeral container's target's, the host's with `hostPID`), a new mount namespace, and a new cgroup
//! namespace on cgroup v2 for unprivileged containers (as containerd); and the pod's hostname.

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use super::{ContainerConfigError, SandboxNamespaces};

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path.map(Path::to_path_buf));
    ns
}

/// The container's namespaces.
pub fn namespaces(
    pod: &Pod,
    sandbox: &SandboxNamespaces,
    cgroup_v2: bool,
    privileged: bool,
) -> Result<Vec<LinuxNamespace>, ContainerConfigError> {
    let spec = pod.spec.as_ref();
    let flag = |f: Option<bool>| f == Some(true);
    let host_network = flag(spec.and_then(|s| s.host_network));
    let host_ipc = flag(spec.and_then(|s| s.host_ipc));
    let host_pid = flag(spec.and_then(|s| s.host_pid));
    let share_pid = flag(spec.and_then(|s| s.share_process_namespace));

    let mut out = Vec::new();
    if !host_pid {
        match &sandbox.pid {
            // The pod's (shareProcessNamespace), or an ephemeral container's target's.
            Some(path) => out.push(namespace(LinuxNamespaceType::Pid, Some(path))),
            None if share_pid => return Err(ContainerConfigError::NoPodPidNamespace),
            None => out.push(namespace(LinuxNamespaceType::Pid, None)),
        }
    }
    if !host_ipc {
        out.push(namespace(LinuxNamespaceType::Ipc, Some(&sandbox.ipc)));
    }
    if !host_network {
        out.push(namespace(LinuxNamespaceType::Uts, Some(&sandbox.uts)));
    }
    out.push(namespace(LinuxNamespaceType::Mount, None));
    if !host_network {
        out.push(namespace(
            LinuxNamespaceType::Network,
            Some(&sandbox.network),
        ));
    }
    if cgroup_v2 && !privileged {
        out.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    Ok(out)
}

/// The longest hostname the kernel accepts.
const MAX_HOSTNAME: usize = 63;

/// The pod's hostname, as the kubelet computes it: the node's for `hostNetwork` pods, else
/// `spec.hostname` or the pod's name cut to 63 characters (without trailing `-` or `.`), with
/// `.<subdomain>.<namespace>.svc.<cluster domain>` appended when `setHostnameAsFQDN` is set and
/// the pod has a subdomain.
/// The pod's own short hostname: `spec.hostname`, else its name cut to 63 characters without
/// a trailing `-` or `.`.
pub fn short_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.as_deref())
        .filter(|h| !h.is_empty())
        .or(pod.metadata.name.as_deref())
        .unwrap_or_default();
    if name.chars().count() > MAX_HOSTNAME {
        let cut: String = name.chars().take(MAX_HOSTNAME).collect();
        cut.trim_end_matches(['-', '.']).to_string()
    } else {
        name.to_string()
    }
}

pub fn pod_hostname(pod: &Pod, node_hostname: &str, cluster_domain: &str) -> String {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return node_hostname.to_string();
    }
    let mut hostname = short_hostname(pod);
    let subdomain = spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty());
    if let Some(subdomain) = subdomain
        && spec.and_then(|s| s.set_hostname_as_fqdn) == Some(true)
    {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        hostname = format!("{hostname}.{subdomain}.{namespace}.svc.{cluster_domain}");
    }
    hostname
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::path::PathBuf;

    fn sandbox(pid: bool) -> SandboxNamespaces {
        SandboxNamespaces {
            network: "/run/ns/net".into(),
            ipc: "/run/ns/ipc".into(),
            uts: "/run/ns/uts".into(),
            pid: pid.then(|| PathBuf::from("/run/ns/pid")),
            shm: "/run/shm".into(),
        }
    }

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            spec: Some(spec),
            ..Default::default()
        }
    }

    fn describe(list: &[LinuxNamespace]) -> Vec<String> {
        list.iter()
            .map(|ns| match ns.path() {
                Some(p) => format!("{}={}", ns.typ(), p.display()),
                None => ns.typ().to_string(),
            })
            .collect()
    }

    #[test]
    fn namespaces_by_pod_settings() {
        let cases: Vec<(&str, PodSpec, bool, bool, Vec<&str>)> = vec![
            (
                "default",
                PodSpec::default(),
                false,
                false,
                vec![
                    "pid",
                    "ipc=/run/ns/ipc",
                    "uts=/run/ns/uts",
                    "mnt",
                    "net=/run/ns/net",
                ],
            ),
            (
                "cgroup v2 adds a cgroup namespace",
                PodSpec::default(),
                true,
                false,
                vec![
                    "pid",
                    "ipc=/run/ns/ipc",
                    "uts=/run/ns/uts",
                    "mnt",
                    "net=/run/ns/net",
                    "cgroup",
                ],
            ),
            (
                "not for privileged containers",
                PodSpec::default(),
                true,
                true,
                vec![
                    "pid",
                    "ipc=/run/ns/ipc",
                    "uts=/run/ns/uts",
                    "mnt",
                    "net=/run/ns/net",
                ],
            ),
            (
                "shared process namespace",
                PodSpec {
                    share_process_namespace: Some(true),
                    ..Default::default()
                },
                false,
                false,
                vec![
                    "pid=/run/ns/pid",
                    "ipc=/run/ns/ipc",
                    "uts=/run/ns/uts",
                    "mnt",
                    "net=/run/ns/net",
                ],
            ),
            (
                "host namespaces",
                PodSpec {
                    host_network: Some(true),
                    host_ipc: Some(true),
                    host_pid: Some(true),
                    ..Default::default()
                },
                false,
                false,
                vec!["mnt"],
            ),
        ];
        for (what, spec, v2, privileged, want) in cases {
            // The runtime holds a PID namespace for the pod only when its processes share one.
            let shared = spec.share_process_namespace == Some(true);
            let got = namespaces(&pod(spec), &sandbox(shared), v2, privileged).unwrap();
            assert_eq!(describe(&got), want, "{what}");
        }
        // An ephemeral container joins its target's PID namespace, given as the sandbox's.
        let target = namespaces(&pod(PodSpec::default()), &sandbox(true), false, false).unwrap();
        assert_eq!(describe(&target)[0], "pid=/run/ns/pid");
        let shared = pod(PodSpec {
            share_process_namespace: Some(true),
            ..Default::default()
        });
        assert!(namespaces(&shared, &sandbox(false), false, false).is_err());
    }

    #[test]
    fn hostnames() {
        let long = "a".repeat(60) + "-.-bcd";
        let with = |name: &str, spec: PodSpec| Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        };
        assert_eq!(
            pod_hostname(&with("web-0", PodSpec::default()), "node", "cluster.local"),
            "web-0"
        );
        assert_eq!(
            pod_hostname(&with(&long, PodSpec::default()), "node", "cluster.local"),
            "a".repeat(60)
        );
        let named = PodSpec {
            hostname: Some("db".into()),
            subdomain: Some("svc-a".into()),
            ..Default::default()
        };
        assert_eq!(
            pod_hostname(&with("web-0", named.clone()), "node", "cluster.local"),
            "db"
        );
        let fqdn = PodSpec {
            set_hostname_as_fqdn: Some(true),
            ..named
        };
        assert_eq!(
            pod_hostname(&with("web-0", fqdn), "node", "cluster.local"),
            "db.svc-a.ns.svc.cluster.local"
        );
        let host = PodSpec {
            host_network: Some(true),
            hostname: Some("ignored".into()),
            ..Default::default()
        };
        assert_eq!(
            pod_hostname(&with("web-0", host), "node-1", "cluster.local"),
            "node-1"
        );
    }
}
