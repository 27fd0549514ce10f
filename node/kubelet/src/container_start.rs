//! Starting one attempt of one container: the image (by its pull policy, with Pulling/Pulled
//! events), the environment, the OCI bundle (config.json over an overlay of the image's
//! layers), then create and start through the runtime, and its postStart hook. Every failure
//! to start comes back as the waiting reason and message the pod's status shows.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use baton_images::{Image, PullOptions};
use baton_runtime::{ContainerConfig, ContainerRuntime, ContainerState, Sandbox};
use k8s_openapi::api::core::v1::{ConfigMap, Container, LifecycleHandler, Pod, Secret};
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use crate::cgroup_names::container_cgroup_path;
use crate::container_spec::{
    ContainerSpecInput, ImageDefaults, MountPropagation, PodEtcFiles, ResolvedMount,
    SandboxNamespaces, build_spec,
};
use crate::context::KubeletContext;
use crate::env::{EnvSources, NodeFacts, resolve_env};
use crate::hooks::run_hook;
use crate::pod_dirs::PodDirs;
use crate::pod_status::Attempt;
use crate::pod_worker::{PodUpdate, deletion_requested};
use crate::probes::Target;

/// Why an attempt could not start: the container's waiting reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    pub reason: String,
    pub message: String,
    /// An image pull failed (the pull back-off applies, not the crash back-off).
    pub image_pull: bool,
}

impl StartFailure {
    fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_owned(),
            message: message.into(),
            image_pull: false,
        }
    }
}

/// A started attempt and its init process.
#[derive(Debug, Clone)]
pub struct Started {
    pub attempt: Attempt,
    pub pid: i32,
    /// Its postStart hook failed (upstream's message): the container is to be killed.
    pub post_start_failure: Option<String>,
}

/// The runtime's id of attempt `attempt` of container `name` of pod `uid`.
pub fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    format!("{uid}_{name}_{attempt}")
}

/// Splits a runtime container id into (pod uid, container name, attempt).
pub fn parse_container_id(id: &str) -> Option<(&str, &str, u32)> {
    let mut parts = id.split('_');
    let (uid, name, attempt) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((uid, name, attempt.parse().ok()?))
}

/// Everything one start needs from the worker.
#[derive(Debug)]
pub struct StartRequest<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub attempt: u32,
    pub sandbox: &'a Sandbox,
    pub dirs: &'a PodDirs,
    /// Host directory of each of the pod's volumes.
    pub volumes: &'a HashMap<String, PathBuf>,
    pub hostname: &'a str,
    pub pod_ip: Option<&'a str>,
    /// The pod's updates: a postStart hook is cut short when the pod is deleted.
    pub updates: Option<watch::Receiver<PodUpdate>>,
    /// For an ephemeral container that names one: the container whose PID namespace it joins.
    pub target: Option<TargetContainer>,
}

/// The container an ephemeral container targets: its name, and the runtime id of its running
/// attempt (none while it does not run).
#[derive(Debug, Clone)]
pub struct TargetContainer {
    pub name: String,
    pub running_id: Option<String>,
}

/// The PID namespace of the target's process; a config error while it does not run (as
/// upstream, which retries it with back-off).
async fn target_pid_namespace(
    ctx: &KubeletContext,
    target: &TargetContainer,
) -> Result<PathBuf, StartFailure> {
    let not_running = || {
        StartFailure::new(
            "CreateContainerConfigError",
            format!("target container {:?} is not running", target.name),
        )
    };
    let id = target.running_id.as_deref().ok_or_else(not_running)?;
    let status = ctx
        .runtime
        .container_status(id)
        .await
        .map_err(|_| not_running())?;
    match (status.state, status.pid) {
        (ContainerState::Running, Some(pid)) => Ok(PathBuf::from(format!("/proc/{pid}/ns/pid"))),
        _ => Err(not_running()),
    }
}

/// Starts the attempt.
pub async fn start_container(
    ctx: &KubeletContext,
    request: &StartRequest<'_>,
) -> Result<Started, StartFailure> {
    let pod = request.pod;
    let container = request.container;
    let uid = pod.uid().unwrap_or_default();
    let target_pid_namespace = match &request.target {
        Some(target) => Some(target_pid_namespace(ctx, target).await?),
        None => None,
    };
    let image = ensure_image(ctx, pod, container).await?;
    let env = environment(ctx, pod, container, request.pod_ip).await?;
    let read_only = crate::volumes::read_only_volumes(pod);
    let mounts = resolve_mounts(container, request.volumes, &read_only, &env)?;

    let id = container_id(&uid, &container.name, request.attempt);
    let bundle = request.dirs.bundle(&container.name, request.attempt);
    let layers = ctx.images.layer_dirs(&image);
    let rootfs = baton_images::mount_overlay(&layers, &bundle).map_err(|err| {
        StartFailure::new(
            "CreateContainerError",
            format!("mount the root filesystem: {err}"),
        )
    })?;
    let sandbox = SandboxNamespaces {
        network: request.sandbox.network.clone().unwrap_or_default(),
        ipc: request.sandbox.ipc.clone().unwrap_or_default(),
        uts: request.sandbox.uts.clone().unwrap_or_default(),
        pid: target_pid_namespace.or_else(|| request.sandbox.pid.clone()),
        shm: request.sandbox.shm.clone(),
    };
    let result = create_and_start(
        ctx, request, &sandbox, &id, &bundle, &rootfs, &image, &env, &mounts,
    )
    .await;
    if result.is_err() {
        let _ = ctx.runtime.remove_container(&id).await;
        if let Err(err) = baton_images::unmount_overlay(&bundle) {
            tracing::warn!(%err, bundle = %bundle.display(), "unmounting a failed container's root filesystem");
        }
    }
    let pid = result?;
    let _ = ctx.images.mark_used(&image.id);
    let started_at = jiff::Timestamp::now();
    let post_start_failure = match container
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
    {
        Some(handler) => post_start(ctx, request, handler, &id).await,
        None => None,
    };
    Ok(Started {
        attempt: Attempt {
            attempt: request.attempt,
            container_id: id,
            image_id: image_id(&image),
            started_at: Some(started_at),
            exit: None,
        },
        pid,
        post_start_failure,
    })
}

/// Runs the container's postStart hook right after the start, as upstream (the container
/// counts as running once it has completed); returns the failure message if it failed. A
/// deletion of the pod cuts the hook short (then the pod's termination stops the container).
async fn post_start(
    ctx: &KubeletContext,
    request: &StartRequest<'_>,
    handler: &LifecycleHandler,
    id: &str,
) -> Option<String> {
    let pod = request.pod;
    let name = request.container.name.as_str();
    let pod_ip = request.pod_ip.and_then(|ip| ip.parse().ok());
    let target = Target::new(
        pod,
        request.container,
        id,
        Some(request.sandbox),
        pod_ip,
        ctx.node_ip,
    );
    let hook = run_hook(&ctx.runtime, pod, handler, &target);
    let result = match request.updates.clone() {
        Some(updates) => tokio::select! {
            result = hook => result,
            () = deletion_requested(updates) => {
                tracing::info!(container = %id, "postStart hook cut short: the pod is being deleted");
                return None;
            }
        },
        None => hook.await,
    };
    let message = result.err()?;
    tracing::warn!(container = %id, error = %message, "postStart hook failed");
    // As upstream, the message stays out of the event (it may hold secrets).
    ctx.event(
        pod,
        Some(name),
        true,
        "FailedPostStartHook",
        "PostStartHook failed".into(),
    )
    .await;
    Some(message)
}

#[allow(clippy::too_many_arguments)]
async fn create_and_start(
    ctx: &KubeletContext,
    request: &StartRequest<'_>,
    sandbox: &SandboxNamespaces,
    id: &str,
    bundle: &std::path::Path,
    rootfs: &std::path::Path,
    image: &Image,
    env: &[(String, String)],
    mounts: &[ResolvedMount],
) -> Result<i32, StartFailure> {
    let pod = request.pod;
    let container = request.container;
    let termination_log = request
        .dirs
        .termination_log(&container.name, request.attempt);
    std::fs::write(&termination_log, b"").map_err(|err| {
        StartFailure::new(
            "CreateContainerError",
            format!("{}: {err}", termination_log.display()),
        )
    })?;
    let defaults = image_defaults(image);
    let etc_files = PodEtcFiles {
        hosts: request.dirs.etc_hosts(),
        resolv_conf: request.dirs.resolv_conf(),
        hostname: request.dirs.hostname(),
    };
    let pod_cgroup = crate::cgroups::pod_cgroup(&ctx.cgroup_root, pod);
    let seccomp_root = ctx.root_dir.join("seccomp");
    let input = ContainerSpecInput {
        pod,
        container,
        image: &defaults,
        rootfs,
        env,
        volume_mounts: mounts,
        sandbox,
        etc_files: &etc_files,
        termination_log: &termination_log,
        hostname: request.hostname,
        cgroups_path: container_cgroup_path(&pod_cgroup, id),
        cgroup_v2: ctx.cgroup_v2,
        node_memory_capacity: ctx.machine.memory_bytes,
        pod_pids_limit: None,
        seccomp_profile_root: &seccomp_root,
    };
    let mut spec =
        build_spec(&input).map_err(|err| StartFailure::new(err.reason(), err.to_string()))?;
    if let Some(mut root) = spec.root().clone() {
        root.set_path(rootfs.to_path_buf());
        spec.set_root(Some(root));
    }
    spec.save(bundle.join("config.json")).map_err(|err| {
        StartFailure::new(
            "CreateContainerError",
            format!("write {}: {err}", bundle.display()),
        )
    })?;
    let config = ContainerConfig {
        id: id.to_owned(),
        bundle: bundle.to_path_buf(),
        log_path: request.dirs.log_file(&container.name, request.attempt),
        log_max_size: ctx.log_max_size,
        log_max_files: ctx.log_max_files,
        stdin: container.stdin == Some(true),
        tty: container.tty == Some(true),
    };
    let pid = ctx
        .runtime
        .create_container(config)
        .await
        .map_err(|err| StartFailure::new("RunContainerError", err.to_string()))?;
    ctx.event(
        pod,
        Some(&container.name),
        false,
        "Created",
        format!("Created container: {}", container.name),
    )
    .await;
    ctx.runtime
        .start_container(id)
        .await
        .map_err(|err| StartFailure::new("RunContainerError", err.to_string()))?;
    ctx.event(
        pod,
        Some(&container.name),
        false,
        "Started",
        format!("Started container {}", container.name),
    )
    .await;
    Ok(pid)
}

/// The image the container runs, pulled when its pull policy asks.
async fn ensure_image(
    ctx: &KubeletContext,
    pod: &Pod,
    container: &Container,
) -> Result<Image, StartFailure> {
    let reference = container.image.clone().unwrap_or_default();
    if reference.is_empty() {
        return Err(StartFailure::new("InvalidImageName", "no image given"));
    }
    // Upstream's image manager: a name that does not parse is reported once per sync as
    // InspectFailed and leaves the container waiting with InvalidImageName, never pulled.
    // Image IDs are looked up as IDs below.
    if !baton_images::is_image_id(&reference)
        && let Err(err) = baton_images::ImageReference::parse(&reference)
    {
        let message = format!("Failed to apply default image tag {reference:?}: {err}");
        ctx.event(
            pod,
            Some(&container.name),
            true,
            "InspectFailed",
            message.clone(),
        )
        .await;
        return Err(StartFailure::new("InvalidImageName", message));
    }
    let policy = container.image_pull_policy.clone().unwrap_or_else(|| {
        let tag_latest = !reference.contains('@')
            && reference
                .rsplit('/')
                .next()
                .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"));
        if tag_latest { "Always" } else { "IfNotPresent" }.to_owned()
    });
    let present = ctx.images.get(&reference);
    match (policy.as_str(), present) {
        ("Never", Some(image)) | ("IfNotPresent", Some(image)) => {
            ctx.event(
                pod,
                Some(&container.name),
                false,
                "Pulled",
                format!("Container image \"{reference}\" already present on machine"),
            )
            .await;
            Ok(image)
        }
        ("Never", None) => {
            let message =
                format!("Container image \"{reference}\" is not present with pull policy of Never");
            ctx.event(
                pod,
                Some(&container.name),
                true,
                "ErrImageNeverPull",
                message.clone(),
            )
            .await;
            Err(StartFailure::new("ErrImageNeverPull", message))
        }
        _ => {
            ctx.event(
                pod,
                Some(&container.name),
                false,
                "Pulling",
                format!("Pulling image \"{reference}\""),
            )
            .await;
            let started = Instant::now();
            let credentials = pull_credentials(ctx, pod, &reference).await;
            match pull_with(ctx, &reference, credentials).await {
                Ok(image) => {
                    let took = started.elapsed().as_secs_f64();
                    ctx.event(
                        pod,
                        Some(&container.name),
                        false,
                        "Pulled",
                        format!(
                            "Successfully pulled image \"{reference}\" in {took:.3}s ({took:.3}s including waiting). Image size: {} bytes.",
                            image.size
                        ),
                    )
                    .await;
                    Ok(image)
                }
                Err(err) => {
                    let message = baton_images::error_chain(&err);
                    ctx.event(
                        pod,
                        Some(&container.name),
                        true,
                        "Failed",
                        format!("Failed to pull image \"{reference}\": {message}"),
                    )
                    .await;
                    ctx.event(
                        pod,
                        Some(&container.name),
                        true,
                        "Failed",
                        "Error: ErrImagePull".into(),
                    )
                    .await;
                    Err(StartFailure {
                        reason: "ErrImagePull".into(),
                        message,
                        image_pull: true,
                    })
                }
            }
        }
    }
}

/// The credentials the pod's `imagePullSecrets` give for `reference`'s registry. A secret
/// that cannot be read is reported (upstream's FailedToRetrieveImagePullSecret) and the
/// pull goes on without it.
async fn pull_credentials(
    ctx: &KubeletContext,
    pod: &Pod,
    reference: &str,
) -> Vec<baton_images::RegistryCredentials> {
    let names: Vec<String> = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .map(|r| r.name.clone())
        .filter(|name| !name.is_empty())
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(parsed) = baton_images::ImageReference::parse(reference) else {
        return Vec::new();
    };
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let mut secrets = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match api.get_opt(&name).await {
            Ok(Some(secret)) => secrets.push(secret),
            _ => missing.push(name),
        }
    }
    if !missing.is_empty() {
        ctx.event(
            pod,
            None,
            true,
            "FailedToRetrieveImagePullSecret",
            format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                missing.join(", ")
            ),
        )
        .await;
    }
    crate::pull_secrets::registry_credentials(parsed.registry(), &secrets)
}

/// Pulls `reference` with each of `credentials` in turn until one is accepted (anonymously
/// when there are none), as upstream tries a pod's pull secrets.
async fn pull_with(
    ctx: &KubeletContext,
    reference: &str,
    credentials: Vec<baton_images::RegistryCredentials>,
) -> Result<Image, baton_images::PullImageError> {
    let mut tries: Vec<Option<baton_images::RegistryCredentials>> =
        credentials.into_iter().map(Some).collect();
    if tries.is_empty() {
        tries.push(None);
    }
    let last = tries.len() - 1;
    for (index, auth) in tries.into_iter().enumerate() {
        let options = PullOptions {
            insecure_registries: ctx.insecure_registries.clone(),
            auth,
        };
        match ctx.images.pull(reference, &options).await {
            Err(baton_images::PullImageError::Unauthorized { .. }) if index < last => continue,
            result => return result,
        }
    }
    unreachable!("the last try returns")
}

/// How the image appears in container statuses' imageID: its repo digest if known.
fn image_id(image: &Image) -> String {
    image
        .repo_digests
        .first()
        .cloned()
        .unwrap_or_else(|| image.id.clone())
}

fn image_defaults(image: &Image) -> ImageDefaults {
    let config = &image.config;
    ImageDefaults {
        entrypoint: config.entrypoint.clone(),
        cmd: config.cmd.clone(),
        env: config.env.clone(),
        working_dir: (!config.working_dir.is_empty()).then(|| config.working_dir.clone()),
        user: (!config.user.is_empty()).then(|| config.user.clone()),
    }
}

/// ConfigMaps and Secrets the container's environment names, fetched before it is resolved.
#[derive(Debug, Default)]
struct FetchedSources {
    config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl EnvSources for FetchedSources {
    fn config_map(&self, _namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.config_maps.get(name).cloned().flatten()
    }

    fn secret(&self, _namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secrets.get(name).cloned().flatten()
    }
}

async fn environment(
    ctx: &KubeletContext,
    pod: &Pod,
    container: &Container,
    pod_ip: Option<&str>,
) -> Result<Vec<(String, String)>, StartFailure> {
    let namespace = pod.namespace().unwrap_or_else(|| "default".into());
    let mut config_maps = Vec::new();
    let mut secrets = Vec::new();
    for var in container.env.iter().flatten() {
        if let Some(from) = &var.value_from {
            if let Some(key) = &from.config_map_key_ref {
                config_maps.push(key.name.clone());
            }
            if let Some(key) = &from.secret_key_ref {
                secrets.push(key.name.clone());
            }
        }
    }
    for from in container.env_from.iter().flatten() {
        if let Some(source) = &from.config_map_ref {
            config_maps.push(source.name.clone());
        }
        if let Some(source) = &from.secret_ref {
            secrets.push(source.name.clone());
        }
    }
    let mut sources = FetchedSources::default();
    let api_error =
        |err: kube::Error| StartFailure::new("CreateContainerConfigError", err.to_string());
    let config_map_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    for name in config_maps {
        if sources.config_maps.contains_key(&name) {
            continue;
        }
        let data = config_map_api
            .get_opt(&name)
            .await
            .map_err(api_error)?
            .map(|cm| cm.data.unwrap_or_default());
        sources.config_maps.insert(name, data);
    }
    let secret_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    for name in secrets {
        if sources.secrets.contains_key(&name) {
            continue;
        }
        let data = secret_api
            .get_opt(&name)
            .await
            .map_err(api_error)?
            .map(|secret| {
                secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(key, value)| (key, value.0))
                    .collect()
            });
        sources.secrets.insert(name, data);
    }
    let node = NodeFacts {
        node_name: ctx.node_name.clone(),
        host_ips: vec![ctx.node_ip.to_string()],
        allocatable: ctx.allocatable.clone(),
    };
    resolve_env(pod, container, &sources, &node, pod_ip)
        .map_err(|err| StartFailure::new("CreateContainerConfigError", err.to_string()))
}

/// The container's volume mounts with their host directories. A `subPathExpr` is expanded
/// with the container's environment (`$(VAR)`, as upstream) and then taken as the subPath.
fn resolve_mounts(
    container: &Container,
    volumes: &HashMap<String, PathBuf>,
    read_only_volumes: &std::collections::HashSet<String>,
    env: &[(String, String)],
) -> Result<Vec<ResolvedMount>, StartFailure> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|mount| {
            let source = volumes.get(&mount.name).ok_or_else(|| {
                StartFailure::new(
                    "CreateContainerConfigError",
                    format!(
                        "cannot find volume \"{}\" to mount into container \"{}\"",
                        mount.name, container.name
                    ),
                )
            })?;
            let mut host_path = source.clone();
            let expanded = match mount.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
                Some(expr) => Some(expand_sub_path(expr, env).map_err(|missing| {
                    StartFailure::new(
                        "CreateContainerConfigError",
                        format!(
                            "failed to prepare subPath for volumeMount \"{}\" of container \"{}\": missing value for {missing}",
                            mount.name, container.name
                        ),
                    )
                })?),
                None => None,
            };
            if let Some(sub_path) = expanded
                .as_deref()
                .or(mount.sub_path.as_deref())
                .filter(|p| !p.is_empty())
            {
                if sub_path.starts_with('/') || sub_path.split('/').any(|part| part == "..") {
                    return Err(StartFailure::new(
                        "CreateContainerConfigError",
                        format!(
                            "failed to prepare subPath for volumeMount \"{}\" of container \"{}\"",
                            mount.name, container.name
                        ),
                    ));
                }
                host_path = safe_sub_path(source, sub_path).map_err(|reason| {
                    StartFailure::new(
                        "CreateContainerConfigError",
                        format!(
                            "failed to prepare subPath for volumeMount \"{}\" of container \"{}\": {reason}",
                            mount.name, container.name
                        ),
                    )
                })?;
            }
            Ok(ResolvedMount {
                container_path: mount.mount_path.clone(),
                host_path,
                read_only: mount.read_only.unwrap_or(false)
                    || read_only_volumes.contains(&mount.name),
                propagation: MountPropagation::parse(mount.mount_propagation.as_deref()),
            })
        })
        .collect()
}

/// `expr` with each `$(VAR)` replaced by the container's `VAR`; a variable the environment
/// lacks or has empty is an error naming it (upstream's "missing value for VAR").
fn expand_sub_path(expr: &str, env: &[(String, String)]) -> Result<String, String> {
    let value = |name: &str| {
        env.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .filter(|value| !value.is_empty())
    };
    let missing = std::cell::RefCell::new(None);
    let expanded = crate::env::expand(expr, |name| {
        let found = value(name);
        if found.is_none() {
            missing.borrow_mut().get_or_insert_with(|| name.to_owned());
        }
        found
    });
    match missing.into_inner() {
        Some(name) => Err(name),
        None => Ok(expanded),
    }
}

/// `root/sub_path`, made as directories where missing, refusing symlinks on the way: a
/// container that controls the volume's content must not make a later mount reach outside it
/// (CVE-2017-1002101). Upstream resolves symlinks that stay inside the volume; this refuses
/// every symlink. (A container swapping a directory for a symlink between this check and the
/// mount is not guarded against yet.)
fn safe_sub_path(root: &std::path::Path, sub_path: &str) -> Result<PathBuf, String> {
    let mut path = root.to_path_buf();
    for part in sub_path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err("'..' is not allowed".into());
        }
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!("{} is a symbolic link", path.display()));
            }
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&path).map_err(|err| format!("{}: {err}", path.display()))?;
            }
            Err(err) => return Err(format!("{}: {err}", path.display())),
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("volume");
        std::fs::create_dir(&root).unwrap();
        let made = safe_sub_path(&root, "a/b").unwrap();
        assert_eq!(made, root.join("a/b"));
        assert!(made.is_dir());
        std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
        let err = safe_sub_path(&root, "escape/etc").unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(safe_sub_path(&root, "a/../..").is_err());
    }

    #[test]
    fn sub_path_expressions_expand_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("work");
        std::fs::create_dir(&volume).unwrap();
        let volumes = HashMap::from([("work".to_string(), volume.clone())]);
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "main",
            "volumeMounts": [
                { "name": "work", "mountPath": "/logs", "subPathExpr": "$(POD_NAME)/logs" },
                { "name": "work", "mountPath": "/all" },
            ],
        }))
        .unwrap();
        let env = vec![("POD_NAME".to_string(), "web-0".to_string())];
        let mounts = resolve_mounts(&container, &volumes, &Default::default(), &env).unwrap();
        assert_eq!(mounts[0].host_path, volume.join("web-0/logs"));
        assert!(mounts[0].host_path.is_dir());
        assert_eq!(mounts[1].host_path, volume);

        let escaping: Container = serde_json::from_value(serde_json::json!({
            "name": "main",
            "volumeMounts": [{ "name": "work", "mountPath": "/x", "subPathExpr": "$(UP)/etc" }],
        }))
        .unwrap();
        let up = vec![("UP".to_string(), "..".to_string())];
        let err = resolve_mounts(&escaping, &volumes, &Default::default(), &up).unwrap_err();
        assert!(
            err.message.contains("failed to prepare subPath"),
            "{}",
            err.message
        );

        // A variable the environment lacks, or has empty, is refused by name.
        let empty = vec![("UP".to_string(), String::new())];
        for env in [Vec::new(), empty] {
            let err = resolve_mounts(&escaping, &volumes, &Default::default(), &env).unwrap_err();
            assert_eq!(err.reason, "CreateContainerConfigError");
            assert!(
                err.message.ends_with("missing value for UP"),
                "{}",
                err.message
            );
        }

        // An empty expression leaves subPath alone.
        let both: Container = serde_json::from_value(serde_json::json!({
            "name": "main",
            "volumeMounts": [{ "name": "work", "mountPath": "/x", "subPath": "a", "subPathExpr": "" }],
        }))
        .unwrap();
        let mounts = resolve_mounts(&both, &volumes, &Default::default(), &env).unwrap();
        assert_eq!(mounts[0].host_path, volume.join("a"));
    }

    #[test]
    fn container_ids_round_trip() {
        let uid = "0f6a2c1e-58c4-4b8e-9d1a-3c3b1f1e2a77";
        let id = container_id(uid, "web-app", 3);
        assert_eq!(parse_container_id(&id), Some((uid, "web-app", 3)));
        assert_eq!(parse_container_id("x_y"), None);
        assert_eq!(parse_container_id("x_y_z"), None);
        assert_eq!(parse_container_id("a_b_1_2"), None);
    }
}
