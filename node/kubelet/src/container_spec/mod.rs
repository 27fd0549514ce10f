//! A Kubernetes container of a pod turned into the OCI runtime spec (`config.json`) that
//! libcontainer runs, with the semantics of the kubelet (v1.33) and containerd's CRI plugin
//! (v1.7/2.x) combined: command and environment, user, capabilities and the other security
//! settings, namespaces, mounts, cgroup resources and the seccomp profile.
//!
//! Everything here is computed from its inputs; the only I/O is reading `/etc/passwd` and
//! `/etc/group` inside the container's rootfs (to resolve named users and groups) and, for a
//! `Localhost` seccomp profile, the profile file.

pub mod mounts;
pub mod namespaces;
pub mod process;
pub mod resources;
pub mod seccomp;
pub mod security;
pub mod user;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use oci_spec::runtime::{LinuxBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder};

/// What the image's config says about how to run it (OCI image config `Entrypoint`, `Cmd`,
/// `Env`, `WorkingDir`, `User`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries (an entry without `=` unsets the variable).
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group`, `uid:gid` (and the mixed forms).
    pub user: Option<String>,
}

/// How mounts below a volume mount propagate (`volumeMounts[].mountPropagation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MountPropagation {
    /// Kubernetes `None`: private (`rprivate`).
    #[default]
    None,
    /// Host mounts appear in the container (`rslave`).
    HostToContainer,
    /// Both ways (`rshared`); only for privileged containers.
    Bidirectional,
}

impl MountPropagation {
    /// Parses `volumeMounts[].mountPropagation` (absent means `None`).
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("HostToContainer") => MountPropagation::HostToContainer,
            Some("Bidirectional") => MountPropagation::Bidirectional,
            _ => MountPropagation::None,
        }
    }
}

/// A volume mount with its host side resolved (volume directory, `subPath` applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedMount {
    pub container_path: String,
    pub host_path: PathBuf,
    pub read_only: bool,
    pub propagation: MountPropagation,
}

/// The pod sandbox's namespaces, held by the kubelet as bind-mounted namespace files, and its
/// shared `/dev/shm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNamespaces {
    pub network: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
    /// The PID namespace to join: the pod's, when `shareProcessNamespace` is set, or the
    /// target container's, for an ephemeral container that names one.
    pub pid: Option<PathBuf>,
    /// The pod's `/dev/shm` (a tmpfs shared by its containers; unused with `hostIPC`).
    pub shm: PathBuf,
}

/// Files the kubelet writes per pod and bind-mounts into each container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEtcFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
}

/// Everything [`build_spec`] needs to make one container's OCI spec.
#[derive(Debug, Clone)]
pub struct ContainerSpecInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageDefaults,
    /// The container's mounted rootfs (its `/etc/passwd` and `/etc/group` resolve names).
    pub rootfs: &'a Path,
    /// The container's environment from [`crate::env::resolve_env`].
    pub env: &'a [(String, String)],
    pub volume_mounts: &'a [ResolvedMount],
    pub sandbox: &'a SandboxNamespaces,
    pub etc_files: &'a PodEtcFiles,
    /// This container's termination message file (mounted at `terminationMessagePath`).
    pub termination_log: &'a Path,
    /// The pod's hostname (the node's for `hostNetwork` pods), see
    /// [`namespaces::pod_hostname`]; also the `HOSTNAME` variable.
    pub hostname: &'a str,
    /// The container's cgroup (see [`crate::cgroup_names::container_cgroup_path`]).
    pub cgroups_path: String,
    /// Whether the node runs the unified cgroup v2 hierarchy.
    pub cgroup_v2: bool,
    /// The machine's memory in bytes (upstream uses the capacity, not allocatable), for the
    /// `oom_score_adj` of Burstable containers.
    pub node_memory_capacity: u64,
    /// A PID limit for the container's cgroup, if the kubelet enforces one.
    pub pod_pids_limit: Option<i64>,
    /// Where `Localhost` seccomp profiles live (the kubelet's `<root-dir>/seccomp`).
    pub seccomp_profile_root: &'a Path,
}

/// Why a container's spec could not be made. The message is what the kubelet shows in the
/// container's waiting state; [`ContainerConfigError::reason`] gives the waiting reason.
#[derive(Debug, thiserror::Error)]
pub enum ContainerConfigError {
    #[error(
        "volume mount {path}: Bidirectional mount propagation is available only to privileged containers"
    )]
    BidirectionalUnprivileged { path: String },
    #[error(
        "container's runAsUser breaks non-root policy (pod: \"{pod}\", container: {container})"
    )]
    RunAsUserRoot { pod: String, container: String },
    #[error(
        "container has runAsNonRoot and image will run as root (pod: \"{pod}\", container: {container})"
    )]
    RunsAsRoot { pod: String, container: String },
    #[error(
        "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: \"{pod}\", container: {container})"
    )]
    NonNumericUser {
        user: String,
        pod: String,
        container: String,
    },
    #[error("no command specified")]
    NoCommand,
    #[error("unable to find user {user}: no matching entries in passwd file")]
    UserNotFound { user: String },
    #[error("unable to find group {group}: no matching entries in group file")]
    GroupNotFound { group: String },
    #[error("failed to read {path} in the container's rootfs")]
    ReadRootfsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load seccomp profile \"{path}\"")]
    SeccompProfileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse seccomp profile \"{path}\"")]
    SeccompProfileParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid localhostProfile \"{profile}\": must be a relative path without \"..\"")]
    SeccompProfilePath { profile: String },
    #[error("seccompProfile type \"{kind}\" is not supported")]
    SeccompProfileType { kind: String },
    #[error("user namespaces (hostUsers: false) are not supported by this node")]
    UserNamespaces,
    #[error("shareProcessNamespace is set but the pod has no PID namespace")]
    NoPodPidNamespace,
    #[error("failed to assemble the OCI spec")]
    Assemble(#[source] oci_spec::OciSpecError),
}

impl ContainerConfigError {
    /// The container's waiting reason: `CreateContainerConfigError` for what the kubelet itself
    /// checks (non-root policy, spec problems), `CreateContainerError` for what upstream's
    /// runtime reports when it builds the spec (users, command, seccomp profiles).
    pub fn reason(&self) -> &'static str {
        match self {
            ContainerConfigError::RunAsUserRoot { .. }
            | ContainerConfigError::BidirectionalUnprivileged { .. }
            | ContainerConfigError::RunsAsRoot { .. }
            | ContainerConfigError::NonNumericUser { .. }
            | ContainerConfigError::SeccompProfilePath { .. }
            | ContainerConfigError::SeccompProfileType { .. }
            | ContainerConfigError::UserNamespaces
            | ContainerConfigError::NoPodPidNamespace => "CreateContainerConfigError",
            ContainerConfigError::NoCommand
            | ContainerConfigError::UserNotFound { .. }
            | ContainerConfigError::GroupNotFound { .. }
            | ContainerConfigError::ReadRootfsFile { .. }
            | ContainerConfigError::SeccompProfileRead { .. }
            | ContainerConfigError::SeccompProfileParse { .. }
            | ContainerConfigError::Assemble(_) => "CreateContainerError",
        }
    }
}

/// `name_namespace(uid)`, how the kubelet names a pod in messages.
pub fn pod_description(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// Builds the OCI runtime spec of one container of a pod.
pub fn build_spec(input: &ContainerSpecInput) -> Result<Spec, ContainerConfigError> {
    let pod = input.pod;
    let container = input.container;
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_users) == Some(false) {
        return Err(ContainerConfigError::UserNamespaces);
    }
    let sc = security::EffectiveSecurityContext::of(pod, container);

    process::verify_run_as_non_root(pod, container, &sc, input.image)?;
    let user = process::resolve_user(pod, &sc, input.image, input.rootfs)?;
    let args = process::args(container, input.image, input.env)?;
    let tty = container.tty == Some(true);
    let env = process::environment(input.image, input.env, input.hostname, tty);
    let cwd = process::working_dir(container, input.image);

    let caps = security::capability_set(&sc);
    let no_new_privileges = security::no_new_privileges(&sc, &caps);
    let oom_score_adj = resources::oom_score_adj(pod, container, input.node_memory_capacity);

    // The builders start from oci-spec's sample defaults; what they set that containerd does
    // not (rlimits, a hostname) is cleared below.
    let mut process = ProcessBuilder::default()
        .terminal(tty)
        .user(user)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(security::linux_capabilities(&caps))
        .no_new_privileges(no_new_privileges)
        .oom_score_adj(oom_score_adj)
        .build()
        .map_err(ContainerConfigError::Assemble)?;
    process.set_rlimits(None);
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);

    let namespaces = namespaces::namespaces(pod, input.sandbox, input.cgroup_v2, sc.privileged)?;
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    // Mounts propagating back to the node are for privileged containers only (as upstream's
    // validation says).
    if !sc.privileged
        && let Some(mount) = input
            .volume_mounts
            .iter()
            .find(|m| m.propagation == MountPropagation::Bidirectional)
    {
        return Err(ContainerConfigError::BidirectionalUnprivileged {
            path: mount.container_path.clone(),
        });
    }
    let mount_set = mounts::mounts(&mounts::MountInput {
        pod,
        container,
        privileged: sc.privileged,
        read_only_rootfs: sc.read_only_root_filesystem,
        volume_mounts: input.volume_mounts,
        sandbox: input.sandbox,
        etc_files: input.etc_files,
        termination_log: input.termination_log,
    });
    let resources = resources::container_resources(
        container,
        input.pod_pids_limit,
        input.cgroup_v2,
        sc.privileged,
    );
    let seccomp = seccomp::seccomp(&sc, &caps, input.seccomp_profile_root)?;
    let (masked, readonly) = security::masked_and_readonly_paths(&sc);
    let sysctls: HashMap<String, String> = spec
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.sysctls.as_ref())
        .map(|list| {
            list.iter()
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect()
        })
        .unwrap_or_default();

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .masked_paths(masked)
        .readonly_paths(readonly)
        .sysctl(sysctls);
    if let Some(propagation) = mount_set.rootfs_propagation {
        linux = linux.rootfs_propagation(propagation);
    }
    if let Some(seccomp) = seccomp {
        linux = linux.seccomp(seccomp);
    }
    let linux = linux.build().map_err(ContainerConfigError::Assemble)?;

    let root = RootBuilder::default()
        .path(input.rootfs)
        .readonly(sc.read_only_root_filesystem)
        .build()
        .map_err(ContainerConfigError::Assemble)?;

    let annotations = HashMap::from([
        (
            "io.kubernetes.cri.container-type".to_string(),
            "container".to_string(),
        ),
        (
            "io.kubernetes.cri.container-name".to_string(),
            container.name.clone(),
        ),
        (
            "io.kubernetes.cri.sandbox-name".to_string(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (
            "io.kubernetes.cri.sandbox-namespace".to_string(),
            pod.metadata.namespace.clone().unwrap_or_default(),
        ),
        (
            "io.kubernetes.cri.sandbox-uid".to_string(),
            pod.metadata.uid.clone().unwrap_or_default(),
        ),
    ]);

    let mut builder = SpecBuilder::default()
        .version(Spec::default().version().clone())
        .root(root)
        .mounts(mount_set.mounts)
        .process(process)
        .linux(linux)
        .annotations(annotations);
    if !host_network {
        // The pod's UTS namespace is joined, not created, so the runtime does not set it; the
        // name is recorded for whoever reads the spec.
        builder = builder.hostname(input.hostname);
    }
    let mut built = builder.build().map_err(ContainerConfigError::Assemble)?;
    if host_network {
        built.set_hostname(None);
    }
    built.set_domainname(None);
    built.set_hooks(None);
    tracing::debug!(
        pod = %pod_description(pod),
        container = container.name,
        "built container spec"
    );
    Ok(built)
}

#[cfg(test)]
pub(crate) mod tests;
