//! A container's root filesystem: the image's layer directories as overlayfs lower
//! directories (read-only, shared by every container of the image) under a per-container
//! upper and work directory, mounted with mount(2), no shell.
//!
//! The mount options must fit in a page; when the lower directories' paths are too long for
//! that, they are passed as `/proc/self/fd/<n>` of directories opened for the mount.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The mount options of overlayfs must fit in one page (including the NUL).
const MAX_OPTIONS: usize = 4095;

/// Errors mounting or unmounting a container's root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum MountRootfsError {
    /// The image has no layers.
    #[error("no layers to mount at {target}")]
    NoLayers {
        /// The mount point.
        target: PathBuf,
    },
    /// A path contains a character overlayfs options cannot carry (`,` or `:`).
    #[error("path {path} cannot be used in overlayfs options")]
    UnusablePath {
        /// The path.
        path: PathBuf,
    },
    /// Creating a directory or opening a layer failed.
    #[error("preparing {path}")]
    Prepare {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The options are too long even with file descriptor paths.
    #[error("overlay options for {target} are {len} bytes, more than a page")]
    OptionsTooLong {
        /// The mount point.
        target: PathBuf,
        /// The options' length.
        len: usize,
    },
    /// mount(2) failed.
    #[error("mounting overlay at {target}")]
    Mount {
        /// The mount point.
        target: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// umount2(2) failed.
    #[error("unmounting {target}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// Mounts overlayfs at `container_dir/rootfs` with `lower` (top layer first, as
/// [`crate::ImageStore::layer_dirs`] returns them) below `container_dir/upper` and
/// `container_dir/work`, creating the three directories. Returns the rootfs path. Mounting an
/// already mounted rootfs does nothing.
pub fn mount_overlay(lower: &[PathBuf], container_dir: &Path) -> Result<PathBuf, MountRootfsError> {
    let rootfs = container_dir.join("rootfs");
    if lower.is_empty() {
        return Err(MountRootfsError::NoLayers { target: rootfs });
    }
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    for dir in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(dir).map_err(|source| MountRootfsError::Prepare {
            path: dir.clone(),
            source,
        })?;
    }
    if is_mount_point(&rootfs) {
        tracing::debug!(rootfs = %rootfs.display(), "rootfs already mounted");
        return Ok(rootfs);
    }
    for path in lower.iter().chain([&upper, &work]) {
        let text = path.to_string_lossy();
        if text.contains(',') || text.contains(':') {
            return Err(MountRootfsError::UnusablePath { path: path.clone() });
        }
    }
    let tail = format!(",upperdir={},workdir={}", upper.display(), work.display());
    let joined = |dirs: &[String]| format!("lowerdir={}{tail}", dirs.join(":"));
    let mut options = joined(
        &lower
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
    );
    // Directories opened for fd paths; they must stay open until mount(2) returns.
    let mut opened: Vec<File> = Vec::new();
    if options.len() > MAX_OPTIONS {
        let mut fd_paths = Vec::new();
        for dir in lower {
            let file = File::open(dir).map_err(|source| MountRootfsError::Prepare {
                path: dir.clone(),
                source,
            })?;
            fd_paths.push(format!("/proc/self/fd/{}", file.as_raw_fd()));
            opened.push(file);
        }
        options = joined(&fd_paths);
        if options.len() > MAX_OPTIONS {
            return Err(MountRootfsError::OptionsTooLong {
                target: rootfs,
                len: options.len(),
            });
        }
    }
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| MountRootfsError::Mount {
        target: rootfs.clone(),
        source,
    })?;
    drop(opened);
    tracing::debug!(rootfs = %rootfs.display(), layers = lower.len(), "mounted rootfs");
    Ok(rootfs)
}

/// Unmounts `container_dir/rootfs` (detaching it lazily if it is busy). Unmounting what is
/// not mounted does nothing.
pub fn unmount_overlay(container_dir: &Path) -> Result<(), MountRootfsError> {
    let rootfs = container_dir.join("rootfs");
    if !is_mount_point(&rootfs) {
        return Ok(());
    }
    match umount2(&rootfs, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::Error::EBUSY) => {
            tracing::debug!(rootfs = %rootfs.display(), "rootfs busy, detaching it");
            umount2(&rootfs, MntFlags::MNT_DETACH).map_err(|source| MountRootfsError::Unmount {
                target: rootfs.clone(),
                source,
            })
        }
        Err(nix::Error::EINVAL) if !is_mount_point(&rootfs) => Ok(()),
        Err(source) => Err(MountRootfsError::Unmount {
            target: rootfs,
            source,
        }),
    }
}

/// Whether `path` is a mount point of this process's mount namespace: from statx's
/// mount-root attribute (one system call, whatever the number of mounts), or on kernels
/// older than 5.8 from /proc/self/mountinfo, whose mount point field escapes space, tab,
/// newline and `\` in octal.
pub fn is_mount_point(path: &Path) -> bool {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
    match statx(CWD, path, AtFlags::NO_AUTOMOUNT, StatxFlags::empty()) {
        Ok(found)
            if found
                .stx_attributes_mask
                .contains(StatxAttributes::MOUNT_ROOT) =>
        {
            found.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        // Kernels before 5.8 (no mount-root attribute), or statx refused (a seccomp filter).
        Ok(_) | Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            listed_in_mountinfo(path)
        }
        Err(_) => false,
    }
}

/// Whether `path` is a mount point listed in /proc/self/mountinfo (reading it costs time in
/// proportion to the number of mounts).
fn listed_in_mountinfo(path: &Path) -> bool {
    let Ok(path) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| unescape(mount_point) == wanted)
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unmounts on drop, so a failing test leaves no mount behind.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = unmount_overlay(&self.0);
        }
    }

    fn layer(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = root.join(name);
        for (path, content) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
    }

    #[test]
    fn mounts_layers_with_whiteouts_and_unmounts_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let base = layer(
            dir.path(),
            "base",
            &[("etc/os-release", "x"), ("bin/sh", "sh")],
        );
        let top = layer(dir.path(), "top", &[("etc/motd", "hi")]);
        nix::sys::stat::mknod(
            &top.join("etc/os-release"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            nix::sys::stat::makedev(0, 0),
        )
        .unwrap();
        let container = dir.path().join("c1");
        let _guard = Unmount(container.clone());
        let rootfs = mount_overlay(&[top.clone(), base.clone()], &container).unwrap();
        assert!(is_mount_point(&rootfs));
        assert!(listed_in_mountinfo(&rootfs));
        assert!(!is_mount_point(&container) && !listed_in_mountinfo(&container));
        assert_eq!(
            mount_overlay(&[top, base.clone()], &container).unwrap(),
            rootfs
        );
        assert_eq!(std::fs::read(rootfs.join("etc/motd")).unwrap(), b"hi");
        assert_eq!(std::fs::read(rootfs.join("bin/sh")).unwrap(), b"sh");
        assert!(!rootfs.join("etc/os-release").exists());
        std::fs::write(rootfs.join("new"), "w").unwrap();
        assert!(container.join("upper/new").exists());
        assert!(!base.join("new").exists());

        // Busy: a file held open inside; the unmount detaches it.
        let held = File::open(rootfs.join("bin/sh")).unwrap();
        unmount_overlay(&container).unwrap();
        drop(held);
        assert!(!is_mount_point(&rootfs) && !listed_in_mountinfo(&rootfs));
        unmount_overlay(&container).unwrap();
    }

    #[test]
    fn long_lower_paths_go_through_file_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("l".repeat(200));
        let mut lower = Vec::new();
        for n in 0..30 {
            lower.push(layer(
                &long,
                &format!("{n:0>60}"),
                &[(&format!("f{n}"), "x")],
            ));
        }
        lower.reverse();
        let container = dir.path().join("c");
        let _guard = Unmount(container.clone());
        let rootfs = mount_overlay(&lower, &container).unwrap();
        for n in 0..30 {
            assert!(rootfs.join(format!("f{n}")).exists(), "f{n}");
        }
    }

    #[test]
    fn no_layers_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            mount_overlay(&[], dir.path()),
            Err(MountRootfsError::NoLayers { .. })
        ));
    }
}
