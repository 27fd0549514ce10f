//! A pod's volumes on the node: emptyDir (a directory under the pod's, or a tmpfs for
//! `medium: Memory` with its sizeLimit) and hostPath (with its type checks). Each volume maps
//! to the host directory its mounts bind.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{HostPathVolumeSource, Pod, Volume};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use baton_images::is_mount_point;

use crate::pod_dirs::PodDirs;
use crate::quantity::value;

/// A volume could not be set up; the message is the FailedMount event's.
#[derive(Debug, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" : {reason}")]
pub struct MountVolumeError {
    pub volume: String,
    pub reason: String,
}

/// Sets up every volume of the pod (idempotent); returns each volume's host directory.
pub fn set_up(pod: &Pod, dirs: &PodDirs) -> Result<HashMap<String, PathBuf>, MountVolumeError> {
    let mut paths = HashMap::new();
    for volume in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let fail = |reason: String| MountVolumeError {
            volume: volume.name.clone(),
            reason,
        };
        let path = set_up_one(volume, dirs).map_err(fail)?;
        paths.insert(volume.name.clone(), path);
    }
    Ok(paths)
}

fn set_up_one(volume: &Volume, dirs: &PodDirs) -> Result<PathBuf, String> {
    if let Some(empty_dir) = &volume.empty_dir {
        let path = dirs.volume(&volume.name);
        fs::create_dir_all(&path).map_err(|err| format!("{}: {err}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777))
            .map_err(|err| format!("{}: {err}", path.display()))?;
        if empty_dir.medium.as_deref() == Some("Memory") && !is_mount_point(&path) {
            let size = empty_dir
                .size_limit
                .as_ref()
                .map(|limit| format!(",size={}", value(limit)))
                .unwrap_or_default();
            mount(
                Some("tmpfs"),
                &path,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(format!("mode=0777{size}").as_str()),
            )
            .map_err(|err| format!("mount tmpfs on {}: {err}", path.display()))?;
        }
        return Ok(path);
    }
    if let Some(host_path) = &volume.host_path {
        return host_path_volume(host_path);
    }
    Err(
        "this volume type is not supported by Baton's kubelet yet (emptyDir and hostPath are)"
            .into(),
    )
}

fn host_path_volume(source: &HostPathVolumeSource) -> Result<PathBuf, String> {
    let path = PathBuf::from(&source.path);
    let kind = source.type_.as_deref().unwrap_or("");
    let metadata = fs::metadata(&path).ok();
    let wrong = |what: &str| {
        Err(format!(
            "hostPath type check failed: {} is not a {what}",
            source.path
        ))
    };
    match kind {
        "" => {}
        "DirectoryOrCreate" => {
            if metadata.is_none() {
                fs::create_dir_all(&path).map_err(|err| format!("{}: {err}", path.display()))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(|err| format!("{}: {err}", path.display()))?;
            } else if !metadata.as_ref().is_some_and(|m| m.is_dir()) {
                return wrong("directory");
            }
        }
        "Directory" if !metadata.as_ref().is_some_and(|m| m.is_dir()) => return wrong("directory"),
        "FileOrCreate" => {
            if metadata.is_none() {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|err| format!("{}: {err}", parent.display()))?;
                }
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|err| format!("{}: {err}", path.display()))?;
            } else if !metadata.as_ref().is_some_and(|m| m.is_file()) {
                return wrong("file");
            }
        }
        "File" if !metadata.as_ref().is_some_and(|m| m.is_file()) => return wrong("file"),
        "Socket" if !metadata.as_ref().is_some_and(|m| m.file_type().is_socket()) => {
            return wrong("socket");
        }
        "CharDevice"
            if !metadata
                .as_ref()
                .is_some_and(|m| m.file_type().is_char_device()) =>
        {
            return wrong("character device");
        }
        "BlockDevice"
            if !metadata
                .as_ref()
                .is_some_and(|m| m.file_type().is_block_device()) =>
        {
            return wrong("block device");
        }
        "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice" => {}
        other => return Err(format!("invalid hostPath type {other:?}")),
    }
    Ok(path)
}

/// Unmounts the pod's memory-backed emptyDirs (before its directory is removed).
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
    use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, PodSpec};

    fn pod(volumes: Vec<Volume>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                volumes: Some(volumes),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn empty_dirs_and_host_paths_resolve_to_directories() {
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
        let paths = set_up(&pod(volumes), &dirs).unwrap();
        assert!(paths["scratch"].is_dir());
        assert_eq!(paths["data"], host);
        assert!(host.is_dir());
    }

    #[test]
    fn host_path_type_checks_name_the_volume() {
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
        let err = set_up(&pod(volumes), &dirs).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "MountVolume.SetUp failed for volume \"config\" : hostPath type check failed"
            ),
            "{err}"
        );
    }
}
