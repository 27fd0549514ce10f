//! The jail's file system: a small tmpfs that holds, each bind-mounted at the same absolute
//! path as on the host, only what the VMM opens (the kernel, the initramfs parts and the
//! disks, read-only unless a disk is writable; the console file; /dev/kvm and /dev/net/tun;
//! the network namespace files of the taps) and the directories of its sockets (the vsock
//! device's, where guest connections to the host also go, and the API's). The VMM pivots
//! into it in a mount namespace of its own, so the host sees none of these mounts, and they
//! go with the namespace when the VMM ends.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::config::{ConsoleConfig, VmConfig};

/// What a jail entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A file (or device, or namespace file).
    File,
    /// A directory.
    Dir,
}

/// One host path shown in the jail at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailEntry {
    /// The absolute host path.
    pub path: PathBuf,
    /// File or directory.
    pub kind: EntryKind,
    /// Whether the jail sees it read-only.
    pub read_only: bool,
}

/// A path of the configuration cannot be shown in the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailRootError {
    /// A path cannot be resolved to an absolute one.
    #[error("--jail: {flag} {}: cannot be resolved", path.display())]
    Resolve {
        /// The flag that named it.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A mount or directory step failed.
    #[error("--jail: cannot {action} {}", path.display())]
    Mount {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn mount_error(action: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> JailRootError {
    let path = path.to_owned();
    move |errno| JailRootError::Mount {
        action,
        path,
        source: errno.into(),
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JailRootError {
    let path = path.to_owned();
    move |source| JailRootError::Mount {
        action,
        path,
        source,
    }
}

/// `path` made absolute without following a final symbolic or magic link (a
/// `/proc/PID/ns/net` stays what it is); its directory is resolved.
fn absolute(flag: &'static str, path: &Path) -> Result<PathBuf, JailRootError> {
    let resolve = |source| JailRootError::Resolve {
        flag,
        path: path.to_owned(),
        source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| resolve(std::io::Error::other("no file name")))?;
    Ok(std::fs::canonicalize(parent).map_err(resolve)?.join(name))
}

/// The configuration with every path absolute (the jailed VMM's working directory is the
/// jail's root), and what the jail shows.
pub fn jail_entries(config: &VmConfig) -> Result<(VmConfig, Vec<JailEntry>), JailRootError> {
    let mut config = config.clone();
    let mut entries = Vec::new();
    let file = |path: &PathBuf, read_only: bool| JailEntry {
        path: path.clone(),
        kind: EntryKind::File,
        read_only,
    };
    let boot = &mut config.boot_source;
    boot.kernel = absolute("--kernel", &boot.kernel)?;
    entries.push(file(&boot.kernel, true));
    for initrd in &mut boot.initrds {
        *initrd = absolute("--initrd", initrd)?;
        entries.push(file(initrd, true));
    }
    for drive in &mut config.drives {
        drive.path = absolute("--disk", &drive.path)?;
        entries.push(file(&drive.path, drive.read_only));
    }
    if let ConsoleConfig::File(path) = &mut config.console {
        *path = absolute("--console", path)?;
        entries.push(file(path, false));
    }
    entries.push(file(&PathBuf::from("/dev/kvm"), false));
    if !config.nets.is_empty() {
        entries.push(file(&PathBuf::from("/dev/net/tun"), false));
    }
    for net in &mut config.nets {
        if let Some(netns) = &mut net.netns {
            *netns = absolute("--net netns", netns)?;
            entries.push(file(netns, true));
        }
    }
    let mut socket_dir = |flag: &'static str, path: &mut PathBuf| -> Result<(), JailRootError> {
        *path = absolute(flag, path)?;
        let dir = path.parent().expect("an absolute path has a parent");
        entries.push(JailEntry {
            path: dir.to_owned(),
            kind: EntryKind::Dir,
            read_only: false,
        });
        Ok(())
    };
    if let Some(vsock) = &mut config.vsock {
        socket_dir("--vsock", &mut vsock.uds_path)?;
    }
    if let Some(api) = &mut config.api_sock {
        socket_dir("--api-sock", api)?;
    }
    // Directories first, so that a file inside one is mounted over what the directory
    // shows (a read-only kernel next to a socket stays read-only).
    entries.sort_by_key(|entry| entry.kind != EntryKind::Dir);
    entries.dedup_by(|a, b| a.path == b.path && a.kind == b.kind);
    Ok((config, entries))
}

/// In a new mount namespace: mounts a tmpfs at `root`, binds `entries` into it, pivots into
/// it and makes it read-only (the bind mounts keep their own modes).
pub fn enter_jail_root(root: &Path, entries: &[JailEntry]) -> Result<(), JailRootError> {
    let none: Option<&str> = None;
    nix::mount::mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(mount_error("make private the mounts of", Path::new("/")))?;
    let tmpfs = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        tmpfs,
        Some("mode=0755,size=1m"),
    )
    .map_err(mount_error("mount a tmpfs on", root))?;
    for entry in entries {
        let target = root.join(entry.path.strip_prefix("/").unwrap_or(&entry.path));
        // Inside a directory already bound the mount point is the host's own file: it is
        // never made (or truncated) then, only used.
        if target.symlink_metadata().is_err() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io_error("make", parent))?;
            }
            match entry.kind {
                EntryKind::Dir => std::fs::create_dir(&target),
                EntryKind::File => std::fs::File::create(&target).map(drop),
            }
            .map_err(io_error("make the mount point", &target))?;
        }
        nix::mount::mount(Some(&entry.path), &target, none, MsFlags::MS_BIND, none)
            .map_err(mount_error("bind-mount into the jail", &entry.path))?;
        if entry.read_only {
            nix::mount::mount(
                none,
                &target,
                none,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                none,
            )
            .map_err(mount_error("make read-only in the jail", &entry.path))?;
        }
    }
    let old_root = root.join(".old-root");
    std::fs::create_dir(&old_root).map_err(io_error("make", &old_root))?;
    nix::unistd::pivot_root(root, &old_root).map_err(mount_error("pivot into", root))?;
    std::env::set_current_dir("/").map_err(io_error("enter", Path::new("/")))?;
    nix::mount::umount2("/.old-root", MntFlags::MNT_DETACH)
        .map_err(mount_error("unmount", Path::new("/.old-root")))?;
    std::fs::remove_dir("/.old-root").map_err(io_error("remove", Path::new("/.old-root")))?;
    nix::mount::mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | tmpfs,
        none,
    )
    .map_err(mount_error("make read-only", Path::new("/")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigFile, VmmArgs};

    #[test]
    fn entries_cover_what_the_vm_opens_with_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        let disk = dir.path().join("disk.raw");
        let data = dir.path().join("data.raw");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&disk, [0u8; 512]).unwrap();
        std::fs::write(&data, [0u8; 512]).unwrap();
        let sockets = dir.path().join("sockets");
        std::fs::create_dir(&sockets).unwrap();
        let args = VmmArgs {
            kernel: Some(kernel.clone()),
            disk: vec![format!("{},ro", disk.display()), data.display().to_string()],
            vsock: Some(format!("3,{}", sockets.join("v.sock").display())),
            api_sock: Some(sockets.join("api.sock")),
            console: Some(dir.path().join("console.log").display().to_string()),
            jail: true,
            ..Default::default()
        };
        let config = VmConfig::merge(&args, ConfigFile::default()).unwrap();
        let (jailed, entries) = jail_entries(&config).unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(jailed.boot_source.kernel, real.join("vmlinux"));
        let shown: Vec<(PathBuf, EntryKind, bool)> = entries
            .iter()
            .map(|e| (e.path.clone(), e.kind, e.read_only))
            .collect();
        assert_eq!(
            shown,
            vec![
                (real.join("sockets"), EntryKind::Dir, false),
                (real.join("vmlinux"), EntryKind::File, true),
                (real.join("disk.raw"), EntryKind::File, true),
                (real.join("data.raw"), EntryKind::File, false),
                (real.join("console.log"), EntryKind::File, false),
                (PathBuf::from("/dev/kvm"), EntryKind::File, false),
            ]
        );
    }
}
