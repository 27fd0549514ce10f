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
    /// A path cannot be shown in the jail the way the VM needs it.
    #[error("--jail: {flag} {}: {reason}", path.display())]
    Unusable {
        /// The flag that named it.
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
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

fn resolve_error(flag: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JailRootError {
    let path = path.to_owned();
    move |source| JailRootError::Resolve { flag, path, source }
}

/// `path` resolved: absolute, with no symbolic link anywhere (what the VMM opens is what is
/// mounted).
fn resolved(flag: &'static str, path: &Path) -> Result<PathBuf, JailRootError> {
    std::fs::canonicalize(path).map_err(resolve_error(flag, path))
}

/// A path that may not exist yet (a socket) or is a magic link (`/proc/PID/ns/net`): its
/// directory resolved, its name kept.
fn resolved_directory(flag: &'static str, path: &Path) -> Result<PathBuf, JailRootError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| resolve_error(flag, path)(std::io::Error::other("no file name")))?;
    Ok(resolved(flag, parent)?.join(name))
}

/// Named by which flag, for errors about entries.
#[derive(Debug, Clone)]
struct Named {
    flag: &'static str,
    entry: JailEntry,
}

/// The configuration with every path absolute and free of symbolic links (the jailed VMM's
/// working directory is the jail's root), and what the jail shows. The console file must
/// exist. Refused: a socket directly in `/`, a socket path too long once resolved, and a
/// read-only file inside a socket's directory (the jail shows that directory writable).
/// Writable files and directories inside a socket's directory are shown through it.
pub fn jail_entries(config: &VmConfig) -> Result<(VmConfig, Vec<JailEntry>), JailRootError> {
    let mut config = config.clone();
    let mut named = Vec::new();
    let mut file = |flag: &'static str, path: &PathBuf, read_only: bool| {
        named.push(Named {
            flag,
            entry: JailEntry {
                path: path.clone(),
                kind: EntryKind::File,
                read_only,
            },
        })
    };
    let boot = &mut config.boot_source;
    boot.kernel = resolved("--kernel", &boot.kernel)?;
    file("--kernel", &boot.kernel, true);
    for initrd in &mut boot.initrds {
        *initrd = resolved("--initrd", initrd)?;
        file("--initrd", initrd, true);
    }
    for drive in &mut config.drives {
        drive.path = resolved("--disk", &drive.path)?;
        file("--disk", &drive.path, drive.read_only);
    }
    if let ConsoleConfig::File(path) = &mut config.console {
        *path = resolved("--console", path)?;
        file("--console", path, false);
    }
    file("/dev/kvm", &PathBuf::from("/dev/kvm"), false);
    if !config.nets.is_empty() {
        file("--net", &PathBuf::from("/dev/net/tun"), false);
    }
    for net in &mut config.nets {
        if let Some(netns) = &mut net.netns {
            // /run/netns/NAME resolves; /proc/PID/ns/net is a magic link and stays.
            *netns = resolved("--net netns", netns)
                .or_else(|_| resolved_directory("--net netns", netns))?;
            file("--net netns", netns, true);
        }
    }
    let mut socket_dir = |flag: &'static str, path: &mut PathBuf| -> Result<(), JailRootError> {
        *path = resolved_directory(flag, path)?;
        if path.as_os_str().len() > 107 {
            return Err(JailRootError::Unusable {
                flag,
                path: path.clone(),
                reason: "longer than a socket path may be (107 bytes) once resolved",
            });
        }
        let dir = path.parent().expect("an absolute path has a parent");
        if dir == Path::new("/") {
            return Err(JailRootError::Unusable {
                flag,
                path: path.clone(),
                reason: "the jail shows a socket's directory, and this one is /: put the socket in a directory of its own",
            });
        }
        named.push(Named {
            flag,
            entry: JailEntry {
                path: dir.to_owned(),
                kind: EntryKind::Dir,
                read_only: false,
            },
        });
        Ok(())
    };
    if let Some(vsock) = &mut config.vsock {
        socket_dir("--vsock", &mut vsock.uds_path)?;
    }
    if let Some(api) = &mut config.api_sock {
        socket_dir("--api-sock", api)?;
    }
    if let ConsoleConfig::Socket(path) = &mut config.console {
        socket_dir("--console", path)?;
    }
    let dirs: Vec<PathBuf> = named
        .iter()
        .filter(|n| n.entry.kind == EntryKind::Dir)
        .map(|n| n.entry.path.clone())
        .collect();
    let mut entries: Vec<JailEntry> = Vec::new();
    for Named { flag, entry } in named {
        let inside = dirs
            .iter()
            .any(|dir| entry.path != *dir && entry.path.starts_with(dir));
        match (inside, entry.read_only) {
            // Shown through the directory, writable as it is.
            (true, false) => continue,
            (true, true) => {
                return Err(JailRootError::Unusable {
                    flag,
                    path: entry.path,
                    reason: "read-only, but in the directory of a socket, which the jail shows writable: keep sockets in a directory of their own",
                });
            }
            (false, _) => {}
        }
        if !entries.contains(&entry) {
            entries.push(entry);
        }
    }
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
        // Every mount point is new, in the tmpfs: no entry lies inside a bound directory
        // (`jail_entries`), so nothing here is made (or followed) on the host.
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_error("make", parent))?;
        }
        match entry.kind {
            EntryKind::Dir => std::fs::create_dir(&target),
            EntryKind::File => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
                .map(drop),
        }
        .map_err(io_error("make the mount point", &target))?;
        nix::mount::mount(Some(&entry.path), &target, none, MsFlags::MS_BIND, none)
            .map_err(mount_error("bind-mount into the jail", &entry.path))?;
        if entry.read_only {
            nix::mount::mount(
                none,
                &target,
                none,
                // Not nodev: a read-only disk may be a block device.
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
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
        // A bind remount changes this mount alone, never the file system under it.
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | tmpfs,
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
        // The jail makes the console file before it resolves the paths.
        std::fs::write(dir.path().join("console.log"), b"").unwrap();
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
                (real.join("vmlinux"), EntryKind::File, true),
                (real.join("disk.raw"), EntryKind::File, true),
                (real.join("data.raw"), EntryKind::File, false),
                (real.join("console.log"), EntryKind::File, false),
                (PathBuf::from("/dev/kvm"), EntryKind::File, false),
                (real.join("sockets"), EntryKind::Dir, false),
            ]
        );

        // A writable file in a socket's directory is shown through it; a read-only one
        // would be writable there, and is refused; so is a socket in /.
        let beside = VmmArgs {
            console: Some(sockets.join("console.log").display().to_string()),
            ..args.clone()
        };
        std::fs::write(sockets.join("console.log"), b"").unwrap();
        let config = VmConfig::merge(&beside, ConfigFile::default()).unwrap();
        let (_, entries) = jail_entries(&config).unwrap();
        assert!(entries.iter().all(|e| !e.path.ends_with("console.log")));
        let kernel_beside = sockets.join("vmlinux");
        std::fs::write(&kernel_beside, b"k").unwrap();
        let config = VmConfig::merge(
            &VmmArgs {
                kernel: Some(kernel_beside),
                ..args.clone()
            },
            ConfigFile::default(),
        )
        .unwrap();
        let err = jail_entries(&config).unwrap_err().to_string();
        assert!(
            err.starts_with("--jail: --kernel ")
                && err.contains("read-only, but in the directory of a socket"),
            "{err}"
        );
        let mut in_root = config.clone();
        in_root.boot_source.kernel = kernel.clone();
        in_root.api_sock = Some(PathBuf::from("/baton-test-api.sock"));
        let err = jail_entries(&in_root).unwrap_err().to_string();
        assert!(err.contains("this one is /"), "{err}");
    }
}
