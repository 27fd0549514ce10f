//! A pod's volumes on the node. Each volume maps to the host directory its mounts bind:
//! emptyDir ([`empty_dir`]) and hostPath ([`host_path`]) as they are; persistentVolumeClaim
//! ([`persistent_volume_claim`]) as its bound volume's directory on the node; configMap
//! ([`config_map`]), secret ([`secret`]), downwardAPI ([`downward_api`]) and projected
//! ([`projected`]) volumes as files the [`atomic_writer`] lays out under `..data`, on disk for
//! configMaps and on a tmpfs for the others. [`set_up`] is idempotent and cheap when nothing
//! changed; the pod worker calls it on every sync and at least every [`REFRESH_PERIOD`] while
//! the pod has volumes fed by ConfigMaps or Secrets, so that their updates reach running
//! containers.

pub mod atomic_writer;
mod config_map;
mod downward_api;
mod empty_dir;
mod host_path;
mod objects;
mod ownership;
mod persistent_volume_claim;
mod projected;
mod secret;
mod service_account_token;

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use nix::mount::{MntFlags, umount2};

use baton_images::is_mount_point;

use crate::env::EnvError;
use crate::pod_dirs::PodDirs;
use empty_dir::Medium;
use objects::{ApiObjects, ObjectSource};
pub use service_account_token::TokenCache;

/// How often the pod worker sets up volumes fed by ConfigMaps and Secrets again (upstream
/// resyncs each pod about every minute).
pub const REFRESH_PERIOD: Duration = Duration::from_secs(60);

/// The mode of files without one of their own or from the volume's defaultMode (0644).
const DEFAULT_MODE: u32 = 0o644;

/// A volume could not be set up; the message is the FailedMount event's.
#[derive(Debug, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" : {reason}")]
pub struct MountVolumeError {
    pub volume: String,
    pub reason: String,
}

/// The content of a configMap, secret, downwardAPI or projected volume could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CollectPayloadError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("configmap references non-existent config key: {0}")]
    MissingConfigMapKey(String),
    #[error("secret references non-existent secret key: {0}")]
    MissingSecretKey(String),
    /// Reading an object failed (the API's message).
    #[error("{0}")]
    Api(String),
    #[error(transparent)]
    DownwardApi(EnvError),
    #[error("failed to fetch token: {0}")]
    FetchToken(String),
    #[error("{0} projections are not supported")]
    Unsupported(&'static str),
    /// Several failures, reported together as upstream's aggregate errors are: `[a, b]`.
    #[error("[{}]", .0.join(", "))]
    Several(Vec<String>),
}

impl CollectPayloadError {
    /// `Ok` without errors, the error itself for one (or for one distinct message), all of
    /// them otherwise.
    fn aggregate(errors: Vec<CollectPayloadError>) -> Result<(), CollectPayloadError> {
        let mut messages: Vec<String> = Vec::new();
        for err in &errors {
            let message = err.to_string();
            if !messages.contains(&message) {
                messages.push(message);
            }
        }
        match messages.len() {
            0 => Ok(()),
            1 => Err(errors.into_iter().next().expect("one error")),
            _ => Err(CollectPayloadError::Several(messages)),
        }
    }
}

/// A file's mode: its own (`mode`, permission bits only) or `default`.
fn file_mode(mode: Option<i32>, default: u32) -> u32 {
    mode.map_or(default, |mode| mode as u32 & 0o777)
}

/// Sets up every volume of the pod (idempotent: only what changed is written); returns each
/// volume's host directory. `allocatable` is the node's, what downward API limits read as
/// for containers without a limit.
pub async fn set_up(
    client: &kube::Client,
    tokens: &std::sync::Arc<TokenCache>,
    pod: &Pod,
    dirs: &PodDirs,
    allocatable: &BTreeMap<String, Quantity>,
) -> Result<HashMap<String, PathBuf>, MountVolumeError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let objects = ApiObjects::new(client, namespace, tokens.clone());
    let host = Host {
        pod,
        dirs,
        allocatable,
        fs_group: fs_group(pod),
    };
    let mut paths = HashMap::new();
    for volume in pod_volumes(pod) {
        // The name becomes a directory name: never a path (the API server validates it too).
        if !is_directory_name(&volume.name) {
            return Err(MountVolumeError {
                volume: volume.name.clone(),
                reason: "the volume name is not a DNS label".into(),
            });
        }
        let path = set_up_one(&objects, &host, volume)
            .await
            .map_err(|reason| MountVolumeError {
                volume: volume.name.clone(),
                reason,
            })?;
        paths.insert(volume.name.clone(), path);
    }
    Ok(paths)
}

/// The files of a keyed object's data (a ConfigMap's or a Secret's): every key with the
/// default mode, or only `items` (key -> path, with their modes). A missing key is `missing`
/// unless the volume is optional.
fn keyed_payload(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    default_mode: u32,
    optional: bool,
    missing: fn(String) -> CollectPayloadError,
) -> Result<atomic_writer::Payload, CollectPayloadError> {
    let mut payload = atomic_writer::Payload::new();
    match items.filter(|items| !items.is_empty()) {
        None => {
            for (key, bytes) in data {
                let file = atomic_writer::FileProjection {
                    data: bytes.clone(),
                    mode: default_mode,
                };
                payload.insert(key.clone(), file);
            }
        }
        Some(items) => {
            for item in items {
                let Some(bytes) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(missing(item.key.clone()));
                };
                let file = atomic_writer::FileProjection {
                    data: bytes.clone(),
                    mode: file_mode(item.mode, default_mode),
                };
                payload.insert(item.path.clone(), file);
            }
        }
    }
    Ok(payload)
}

/// Whether `name` is a DNS-1123 label (what volume names are), so safe as one directory name.
fn is_directory_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// What setting up a volume needs besides the volume.
struct Host<'a> {
    pod: &'a Pod,
    dirs: &'a PodDirs,
    allocatable: &'a BTreeMap<String, Quantity>,
    fs_group: Option<u32>,
}

fn pod_volumes(pod: &Pod) -> impl Iterator<Item = &Volume> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
}

/// The pod's securityContext.fsGroup.
fn fs_group(pod: &Pod) -> Option<u32> {
    let group = pod.spec.as_ref()?.security_context.as_ref()?.fs_group?;
    u32::try_from(group).ok()
}

async fn set_up_one(
    objects: &impl ObjectSource,
    host: &Host<'_>,
    volume: &Volume,
) -> Result<PathBuf, String> {
    let dir = host.dirs.volume(&volume.name);
    let reason = |err: &(dyn Error + 'static)| baton_images::error_chain(err);
    if let Some(source) = &volume.empty_dir {
        empty_dir::set_up(source, &dir, host.fs_group).map_err(|e| reason(&e))?;
        return Ok(dir);
    }
    if let Some(source) = &volume.host_path {
        return host_path::set_up(source).map_err(|e| reason(&e));
    }
    if let Some(source) = &volume.persistent_volume_claim {
        let namespace = host.pod.metadata.namespace.as_deref().unwrap_or("default");
        return persistent_volume_claim::set_up(objects, namespace, source)
            .await
            .map_err(|e| reason(&e));
    }
    let (payload, medium) = if let Some(source) = &volume.config_map {
        (config_map::payload(objects, source).await, Medium::Disk)
    } else if let Some(source) = &volume.secret {
        (secret::payload(objects, source).await, Medium::Memory(None))
    } else if let Some(source) = &volume.downward_api {
        let payload = downward_api::payload(
            source.items.as_deref().unwrap_or_default(),
            host.pod,
            host.allocatable,
            file_mode(source.default_mode, DEFAULT_MODE),
        );
        (payload, Medium::Memory(None))
    } else if let Some(source) = &volume.projected {
        let payload = projected::payload(objects, host.pod, source, host.allocatable).await;
        (payload, Medium::Memory(None))
    } else {
        return Err(
            "this volume type is not supported by Baton's kubelet (emptyDir, hostPath, \
             configMap, secret, downwardAPI, projected and persistentVolumeClaim are)"
                .into(),
        );
    };
    let payload = payload.map_err(|e| reason(&e))?;
    empty_dir::prepare(&dir, medium).map_err(|e| reason(&e))?;
    let written = atomic_writer::write(&dir, &payload, host.fs_group).map_err(|e| reason(&e))?;
    if written {
        tracing::info!(
            pod = host.pod.metadata.name.as_deref().unwrap_or_default(),
            volume = volume.name,
            files = payload.len(),
            "wrote a new version of the volume's files"
        );
    }
    Ok(dir)
}

/// The volumes every mount of which is read-only: claims the pod mounts `readOnly`.
pub fn read_only_volumes(pod: &Pod) -> std::collections::HashSet<String> {
    pod_volumes(pod)
        .filter(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.read_only == Some(true))
        })
        .map(|v| v.name.clone())
        .collect()
}

/// When the pod worker should set the pod's volumes up again if nothing else wakes it: in
/// [`REFRESH_PERIOD`] when a volume follows ConfigMaps or Secrets or holds a service account
/// token (replaced before it expires) and the pod still runs.
/// (downwardAPI volumes follow the pod itself, whose updates wake the worker anyway.)
pub fn refresh_deadline(pod: &Pod) -> Option<Instant> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let follows_objects = pod_volumes(pod).any(|volume| {
        volume.config_map.is_some()
            || volume.secret.is_some()
            || volume.projected.as_ref().is_some_and(|projected| {
                projected.sources.iter().flatten().any(|source| {
                    source.config_map.is_some()
                        || source.secret.is_some()
                        || source.service_account_token.is_some()
                })
            })
    });
    follows_objects.then(|| Instant::now() + REFRESH_PERIOD)
}

/// Unmounts the pod's memory-backed volumes (emptyDir medium Memory, secret, downwardAPI,
/// projected) before its directory is removed.
pub fn tear_down(dirs: &PodDirs) {
    let Ok(entries) = fs::read_dir(dirs.dir.join("volumes")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if is_mount_point(&path)
            && let Err(err) = umount2(&path, MntFlags::MNT_DETACH)
        {
            tracing::warn!(%err, volume = %path.display(), "unmounting a volume");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, DownwardAPIVolumeFile, DownwardAPIVolumeSource,
        EmptyDirVolumeSource, HostPathVolumeSource, ObjectFieldSelector, PodSecurityContext,
        PodSpec, PodStatus,
    };
    use objects::fake::FakeObjects;
    use std::os::unix::fs::MetadataExt;

    fn pod(volumes: Vec<Volume>) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                volumes: Some(volumes),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn set_up_all(
        objects: &FakeObjects,
        pod: &Pod,
        dirs: &PodDirs,
    ) -> Result<HashMap<String, PathBuf>, MountVolumeError> {
        let allocatable = BTreeMap::new();
        let host = Host {
            pod,
            dirs,
            allocatable: &allocatable,
            fs_group: fs_group(pod),
        };
        let mut paths = HashMap::new();
        for volume in pod_volumes(pod) {
            let path =
                set_up_one(objects, &host, volume)
                    .await
                    .map_err(|reason| MountVolumeError {
                        volume: volume.name.clone(),
                        reason,
                    })?;
            paths.insert(volume.name.clone(), path);
        }
        Ok(paths)
    }

    fn config_map_volume(name: &str, map: &str) -> Volume {
        Volume {
            name: name.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: map.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn empty_dirs_and_host_paths_resolve_to_directories() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = PodDirs::new(dir.path(), &dir.path().join("logs"), "ns", "p", "uid");
        let host = dir.path().join("host-data");
        let volumes = vec![
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
            Volume {
                name: "data".into(),
                host_path: Some(HostPathVolumeSource {
                    path: host.display().to_string(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..Default::default()
            },
        ];
        let paths = set_up_all(&FakeObjects::default(), &pod(volumes), &dirs)
            .await
            .unwrap();
        assert!(paths["scratch"].is_dir());
        assert_eq!(paths["data"], host);
        assert!(host.is_dir());
    }

    #[tokio::test]
    async fn failures_name_the_volume_as_failed_mount_events_do() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = PodDirs::new(dir.path(), dir.path(), "ns", "p", "uid");
        let volumes = vec![Volume {
            name: "config".into(),
            host_path: Some(HostPathVolumeSource {
                path: dir.path().join("missing").display().to_string(),
                type_: Some("File".into()),
            }),
            ..Default::default()
        }];
        let err = set_up_all(&FakeObjects::default(), &pod(volumes), &dirs)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "MountVolume.SetUp failed for volume \"config\" : hostPath type check failed"
            ),
            "{err}"
        );
        let err = set_up_all(
            &FakeObjects::default(),
            &pod(vec![config_map_volume("cfg", "app-config")]),
            &dirs,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "MountVolume.SetUp failed for volume \"cfg\" : configmap \"app-config\" not found"
        );
        assert!(
            !dirs.volume("cfg").exists(),
            "nothing is made for a failed volume"
        );
    }

    #[tokio::test]
    async fn config_map_volumes_follow_their_config_map() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = PodDirs::new(dir.path(), dir.path(), "ns", "p", "uid");
        let mut volume = config_map_volume("cfg", "app");
        volume.config_map.as_mut().unwrap().default_mode = Some(0o600);
        let mut pod = pod(vec![volume]);
        pod.spec.as_mut().unwrap().security_context = Some(PodSecurityContext {
            fs_group: Some(i64::from(nix::unistd::getegid().as_raw())),
            ..Default::default()
        });
        let objects = FakeObjects::default().with_config_map("app", &[("key", "one")]);
        let paths = set_up_all(&objects, &pod, &dirs).await.unwrap();
        let volume = &paths["cfg"];
        assert_eq!(fs::read_to_string(volume.join("key")).unwrap(), "one");
        assert_eq!(
            fs::metadata(volume.join("key")).unwrap().mode() & 0o7777,
            0o640,
            "the fsGroup adds group read"
        );
        let first = fs::read_link(volume.join("..data")).unwrap();

        // Nothing changed: the same version stays.
        set_up_all(&objects, &pod, &dirs).await.unwrap();
        assert_eq!(fs::read_link(volume.join("..data")).unwrap(), first);

        let objects = FakeObjects::default().with_config_map("app", &[("other", "two")]);
        set_up_all(&objects, &pod, &dirs).await.unwrap();
        assert_ne!(fs::read_link(volume.join("..data")).unwrap(), first);
        assert_eq!(fs::read_to_string(volume.join("other")).unwrap(), "two");
        assert!(fs::symlink_metadata(volume.join("key")).is_err());
    }

    #[test]
    fn only_volumes_fed_by_objects_of_running_pods_are_refreshed() {
        let downward = Volume {
            name: "info".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "name".into(),
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: "metadata.name".into(),
                    }),
                    ..Default::default()
                }]),
                default_mode: None,
            }),
            ..Default::default()
        };
        assert!(refresh_deadline(&pod(vec![downward.clone()])).is_none());
        let mut with_config = pod(vec![downward, config_map_volume("cfg", "app")]);
        let deadline = refresh_deadline(&with_config).unwrap();
        assert!(deadline > Instant::now() + REFRESH_PERIOD - Duration::from_secs(5));
        with_config.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(refresh_deadline(&with_config).is_none());
    }

    #[test]
    fn aggregated_errors_are_deduplicated() {
        let one = CollectPayloadError::aggregate(vec![
            CollectPayloadError::SecretNotFound("s".into()),
            CollectPayloadError::SecretNotFound("s".into()),
        ]);
        assert_eq!(one.unwrap_err().to_string(), "secret \"s\" not found");
        assert!(CollectPayloadError::aggregate(Vec::new()).is_ok());
        assert_eq!(file_mode(Some(0o1755), 0o644), 0o755);
        assert_eq!(file_mode(None, 0o600), 0o600);
    }
}
