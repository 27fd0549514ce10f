//! The filesystems init mounts before anything else, as data.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::environment::Environment;

/// One mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountSpec {
    /// Where (relative to the root init was given).
    pub target: &'static str,
    /// The filesystem type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem options.
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The early mounts for `environment`, in order (the cgroup tree is [`crate::cgroups`]'s). In a sandbox /dev is a tmpfs with the usual
/// device nodes rather than the host's devtmpfs (which would show the host's disks).
pub fn early_mounts(environment: Environment) -> Vec<MountSpec> {
    let dev = match environment {
        Environment::Machine => MountSpec {
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: "mode=0755",
        },
        Environment::Sandbox => MountSpec {
            target: "/dev",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID,
            data: "mode=0755,size=65536k",
        },
    };
    vec![
        MountSpec {
            target: "/proc",
            fstype: "proc",
            flags: NOSUID_NODEV_NOEXEC,
            data: "",
        },
        MountSpec {
            target: "/sys",
            fstype: "sysfs",
            flags: NOSUID_NODEV_NOEXEC,
            data: "",
        },
        dev,
        MountSpec {
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
            data: "newinstance,ptmxmode=0666,mode=0620",
        },
        MountSpec {
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: NOSUID_NODEV_NOEXEC,
            data: "mode=1777",
        },
        MountSpec {
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
            data: "mode=0755",
        },
        MountSpec {
            target: "/tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
            data: "mode=1777",
        },
    ]
}

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Creating the mount point failed.
    #[error("creating mount point {path}")]
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// mount(2) failed.
    #[error("mounting {fstype} on {path}")]
    Mount {
        /// The filesystem type.
        fstype: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// Making a device node or link in /dev failed.
    #[error("creating {path}")]
    DeviceNode {
        /// The node.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Mounts `mounts` under `root` (`/` on a node).
pub fn mount_all(root: &Path, mounts: &[MountSpec]) -> Result<(), MountError> {
    for spec in mounts {
        let path = root.join(spec.target.trim_start_matches('/'));
        std::fs::create_dir_all(&path).map_err(|source| MountError::MountPoint {
            path: path.clone(),
            source,
        })?;
        let data = (!spec.data.is_empty()).then_some(spec.data);
        mount(
            Some(spec.fstype),
            &path,
            Some(spec.fstype),
            spec.flags,
            data,
        )
        .map_err(|source| MountError::Mount {
            fstype: spec.fstype,
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The character devices a sandbox's /dev holds: name, major, minor.
const SANDBOX_DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Fills a sandbox's tmpfs /dev (under `root`): the usual device nodes and links.
pub fn populate_sandbox_dev(root: &Path) -> Result<(), MountError> {
    let dev = root.join("dev");
    for (name, major, minor) in SANDBOX_DEVICES {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .map_err(|errno| MountError::DeviceNode {
            path: path.clone(),
            source: errno.into(),
        })?;
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        symlink(target, &path).map_err(|source| MountError::DeviceNode { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_gets_a_tmpfs_dev_and_a_machine_the_devtmpfs() {
        let dev = |env| {
            early_mounts(env)
                .into_iter()
                .find(|m| m.target == "/dev")
                .unwrap()
                .fstype
        };
        assert_eq!(dev(Environment::Machine), "devtmpfs");
        assert_eq!(dev(Environment::Sandbox), "tmpfs");
        let targets: Vec<_> = early_mounts(Environment::Machine)
            .iter()
            .map(|m| m.target)
            .collect();
        // Mount points inside other mounts come after them.
        let at = |t| targets.iter().position(|x| *x == t).unwrap();
        assert!(at("/dev") < at("/dev/pts") && at("/dev") < at("/dev/shm"));
    }
}
