//! The node's data disk (`machine.dataDisk`): waited for, formatted as ext4 on first boot when
//! it holds no file system, and mounted on /var, so that etcd's data, the kubelet's state and
//! the image store outlive a reboot. A disk holding anything else is refused and left as it is.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_ext4_format::{DiskContent, FormatExt4Error, FormatOptions, ProbeDiskError};
use nix::mount::{MsFlags, mount};

/// The label init gives the file systems it makes.
pub const DATA_DISK_LABEL: &str = "BATON-STATE";
/// How long init waits for the disk's device node (the virtio block driver probes the device
/// after its module loads).
pub const DEVICE_WAIT: Duration = Duration::from_secs(10);
/// Below this much free space the disk is reported as nearly full.
pub const LOW_SPACE_BYTES: u64 = 256 << 20;

/// What preparing the disk did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDiskState {
    /// It held no file system and was formatted (a first boot).
    Formatted {
        /// The file system's size in bytes (the disk's, but for a last block group too short
        /// to be worth its metadata).
        size: u64,
    },
    /// It held the file system init made on it (labelled [`DATA_DISK_LABEL`]), which was
    /// mounted.
    Mounted,
}

/// Preparing the data disk failed. A disk refused for what it holds is left as it was; a
/// format that failed part way is started again at the next boot.
#[derive(Debug, thiserror::Error)]
pub enum MountDataDiskError {
    /// Several partitions carry the name the configuration gives.
    #[error("machine.dataDisk {disk}")]
    Ambiguous {
        /// The configured disk.
        disk: PathBuf,
        /// Which partitions.
        #[source]
        source: crate::partitions::AmbiguousPartitionError,
    },
    /// The device did not appear.
    #[error("machine.dataDisk {disk}: no such device after {waited:?}")]
    Absent {
        /// The configured path.
        disk: PathBuf,
        /// How long init waited.
        waited: Duration,
    },
    /// The device could not be opened.
    #[error("machine.dataDisk {disk}: opening it")]
    Open {
        /// The configured path.
        disk: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its first blocks could not be read.
    #[error("machine.dataDisk {disk}")]
    Probe {
        /// The configured path.
        disk: PathBuf,
        /// Why.
        source: ProbeDiskError,
    },
    /// It holds something init did not make there.
    #[error(
        "machine.dataDisk {disk} holds {what}; init formats only a disk whose first MiB is \
         zeros and mounts only the file system it made (label {DATA_DISK_LABEL}); wipe the \
         disk's first MiB to let init format it"
    )]
    Foreign {
        /// The configured path.
        disk: PathBuf,
        /// What it holds.
        what: String,
    },
    /// Formatting it failed.
    #[error("machine.dataDisk {disk}: formatting it as ext4")]
    Format {
        /// The configured path.
        disk: PathBuf,
        /// Why.
        source: FormatExt4Error,
    },
    /// The mount point could not be made.
    #[error("machine.dataDisk {disk}: making its mount point {target}")]
    MountPoint {
        /// The configured path.
        disk: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Mounting it failed.
    #[error("machine.dataDisk {disk}: mounting it on {target}")]
    Mount {
        /// The configured path.
        disk: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// Why.
        source: nix::Error,
    },
}

/// Waits up to `wait` for `disk`, formats it if it holds no file system, and mounts it on
/// `target` (made if missing).
pub fn mount_data_disk(
    disk: &Path,
    target: &Path,
    wait: Duration,
) -> Result<DataDiskState, MountDataDiskError> {
    let (device, file) = open_when_present(disk, wait)?;
    let foreign = |what: String| {
        Err(MountDataDiskError::Foreign {
            disk: disk.to_path_buf(),
            what,
        })
    };
    let state = match baton_ext4_format::probe(&file).map_err(|source| {
        MountDataDiskError::Probe {
            disk: disk.to_path_buf(),
            source,
        }
    })? {
        DiskContent::Ext4 { label } if label == DATA_DISK_LABEL => DataDiskState::Mounted,
        DiskContent::Ext4 { label } => {
            return foreign(format!("an ext file system labelled {label:?}"));
        }
        DiskContent::Other(what) => return foreign(what.to_string()),
        DiskContent::Unrecognised => return foreign("data that no known signature names".into()),
        DiskContent::Blank | DiskContent::Unfinished => {
            let made = baton_ext4_format::format(&file, &new_file_system()).map_err(|source| {
                MountDataDiskError::Format {
                    disk: disk.to_path_buf(),
                    source,
                }
            })?;
            tracing::info!(disk = %disk.display(), bytes = made.bytes(), "formatted the data disk as ext4");
            DataDiskState::Formatted { size: made.bytes() }
        }
    };
    drop(file);
    let mount_error = |source| MountDataDiskError::Mount {
        disk: disk.to_path_buf(),
        target: target.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(target).map_err(|source| MountDataDiskError::MountPoint {
        disk: disk.to_path_buf(),
        target: target.to_path_buf(),
        source,
    })?;
    mount(
        Some(&device),
        target,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(mount_error)?;
    Ok(state)
}

/// Free bytes of the file system at `target`, when it has less than [`LOW_SPACE_BYTES`].
pub fn low_space(target: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(target).ok()?;
    let free = stat.blocks_available() * stat.fragment_size();
    (free < LOW_SPACE_BYTES).then_some(free)
}

/// Opens `disk` for reading and writing, waiting up to `wait` for it to appear: the device
/// node and the open file (`/dev/disk/by-partlabel/NAME` is looked up by GPT name in sysfs
/// each time, as there is no udev to make the link).
fn open_when_present(disk: &Path, wait: Duration) -> Result<(PathBuf, File), MountDataDiskError> {
    let class_block = Path::new(crate::partitions::SYS_CLASS_BLOCK);
    let opened = crate::partitions::wait_for_device(wait, || {
        let device = crate::partitions::resolve_device(disk, class_block).map_err(|source| {
            MountDataDiskError::Ambiguous {
                disk: disk.to_path_buf(),
                source,
            }
        })?;
        let Some(device) = device else {
            return Ok(None);
        };
        match OpenOptions::new().read(true).write(true).open(&device) {
            Ok(file) => Ok(Some((device, file))),
            // Not there yet, or its node is there before its driver bound it.
            Err(err)
                if err.kind() == std::io::ErrorKind::NotFound
                    || err.raw_os_error() == Some(nix::libc::ENXIO) =>
            {
                Ok(None)
            }
            Err(source) => Err(MountDataDiskError::Open {
                disk: disk.to_path_buf(),
                source,
            }),
        }
    })?;
    opened.ok_or_else(|| MountDataDiskError::Absent {
        disk: disk.to_path_buf(),
        waited: wait,
    })
}

/// A new file system's identity: random UUID, hash seed and journal sequence.
fn new_file_system() -> FormatOptions {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    // Identifiers, not secrets: a first boot formats before the random pool may be ready.
    let mut bytes = [0u8; 16 + 16 + 4];
    crate::entropy::identifier_bytes(&mut bytes);
    // A version 4 (random) UUID.
    let mut uuid: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    FormatOptions {
        label: DATA_DISK_LABEL.into(),
        uuid,
        hash_seed: bytes[16..32].try_into().expect("16 bytes"),
        journal_sequence: u32::from_le_bytes(bytes[32..].try_into().expect("4 bytes")),
        now,
    }
}
