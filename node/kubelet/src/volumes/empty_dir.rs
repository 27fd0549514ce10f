//! emptyDir volumes: a directory under the pod's (mode 0777), or a tmpfs for `medium: Memory`
//! (with its sizeLimit). The same directory, on disk or in memory, is what configMap (disk),
//! secret, downwardAPI and projected (memory) volumes are written into, as upstream wraps
//! them in an emptyDir.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use k8s_openapi::api::core::v1::EmptyDirVolumeSource;
use nix::mount::{MsFlags, mount};

use baton_images::is_mount_point;

use super::ownership::set_volume_ownership;
use crate::quantity::value;

/// Where a volume directory's content lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    /// The node's disk (the pod directory's filesystem).
    Disk,
    /// A tmpfs, optionally limited to this many bytes: never written to disk.
    Memory(Option<i64>),
}

/// Preparing a volume directory failed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareDirError {
    #[error("{operation} {}", path.display())]
    Io {
        operation: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount tmpfs on {}", path.display())]
    Mount {
        path: std::path::PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Makes `path` a 0777 directory on `medium` (idempotent: an existing tmpfs is kept); returns
/// whether the directory was new.
pub fn prepare(path: &Path, medium: Medium) -> Result<bool, PrepareDirError> {
    let io_error = |operation| {
        move |source| PrepareDirError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    };
    let created = !path.exists();
    if created {
        fs::create_dir_all(path).map_err(io_error("create the directory"))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o777)).map_err(io_error("chmod"))?;
    }
    if let Medium::Memory(size) = medium
        && !is_separate_mount(path)
    {
        let size = size
            .map(|bytes| format!(",size={bytes}"))
            .unwrap_or_default();
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("mode=0777{size}").as_str()),
        )
        .map_err(|source| PrepareDirError::Mount {
            path: path.to_path_buf(),
            source,
        })?;
        return Ok(true);
    }
    Ok(created)
}

/// Whether something is mounted on `path`: cheaply, by the device numbers of the directory and
/// its parent (a tmpfs has a device of its own); from the mount table when they cannot be read.
fn is_separate_mount(path: &Path) -> bool {
    let parent = path.parent().map(fs::metadata);
    match (fs::metadata(path), parent) {
        (Ok(dir), Some(Ok(parent))) => dir.dev() != parent.dev(),
        _ => is_mount_point(path),
    }
}

/// Sets up an emptyDir at `path`; a new one gets the pod's fsGroup.
pub fn set_up(
    source: &EmptyDirVolumeSource,
    path: &Path,
    fs_group: Option<u32>,
) -> Result<(), PrepareDirError> {
    let medium = if source.medium.as_deref() == Some("Memory") {
        Medium::Memory(source.size_limit.as_ref().map(value))
    } else {
        Medium::Disk
    };
    let created = prepare(path, medium)?;
    if created && let Some(gid) = fs_group {
        set_volume_ownership(path, gid, false).map_err(|source| PrepareDirError::Io {
            operation: "set the ownership of",
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_directories_are_world_writable_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volumes/scratch");
        assert!(prepare(&path, Medium::Disk).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o777);
        fs::write(path.join("kept"), b"x").unwrap();
        assert!(!prepare(&path, Medium::Disk).unwrap());
        assert!(path.join("kept").exists());
    }

    #[test]
    fn a_new_empty_dir_gets_the_fs_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let gid = nix::unistd::getegid().as_raw();
        set_up(&EmptyDirVolumeSource::default(), &path, Some(gid)).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o2777);
        assert_eq!(meta.gid(), gid);
    }

    /// Unmounts its path when dropped, also when an assertion failed.
    struct Unmount<'a>(&'a Path);

    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn memory_directories_are_a_tmpfs_mounted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        if prepare(&path, Medium::Memory(Some(1 << 20))).is_err() {
            // Mounting needs CAP_SYS_ADMIN; the node tests cover it as root.
            return;
        }
        let mounted = Unmount(&path);
        assert!(is_separate_mount(&path));
        assert!(is_mount_point(&path));
        fs::write(path.join("kept"), b"x").unwrap();
        assert!(!prepare(&path, Medium::Memory(Some(1 << 20))).unwrap());
        assert!(path.join("kept").exists(), "the tmpfs is not mounted again");
        drop(mounted);
        assert!(!is_separate_mount(&path));
    }
}
