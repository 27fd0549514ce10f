//! The drives resource: raw disk images the guest sees as virtio block devices, in order
//! (`/dev/vda`, `/dev/vdb`, ...).

use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// Most disks, network interfaces and socket devices a VM may have together: IRQs 5 to 23
/// serve the virtio devices, one of them the entropy device.
pub const MAX_DEVICES: usize = 18;

/// One entry of the file's `drives` list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveFile {
    /// The raw image (a regular file or a block device).
    pub path: PathBuf,
    /// Whether the guest may only read it.
    #[serde(default)]
    pub read_only: bool,
}

/// A validated disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// The raw image, readable (and writable unless read-only), at least one sector long.
    pub path: PathBuf,
    /// Whether the guest may only read it.
    pub read_only: bool,
}

impl DriveConfig {
    /// Parses `PATH[,ro]` as `--disk` takes it.
    pub fn parse_flag(value: &str) -> Result<DriveFile, ConfigError> {
        let (path, read_only) = match value.rsplit_once(',') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            Some((_, option)) => {
                return Err(ConfigError::Disk {
                    value: value.to_owned(),
                    reason: format!("unknown option {option:?}; expected PATH[,ro]"),
                });
            }
            None => (value, false),
        };
        if path.is_empty() {
            return Err(ConfigError::Disk {
                value: value.to_owned(),
                reason: "expected PATH[,ro]".into(),
            });
        }
        Ok(DriveFile {
            path: PathBuf::from(path),
            read_only,
        })
    }

    /// Checks that the image can be opened as asked (the file is closed again) and holds at
    /// least one 512-byte sector.
    pub fn new(drive: DriveFile) -> Result<Self, ConfigError> {
        let DriveFile { path, read_only } = drive;
        let bad = |reason: String| ConfigError::Disk {
            value: path.display().to_string(),
            reason,
        };
        let file = File::options()
            .read(true)
            .write(!read_only)
            .open(&path)
            .map_err(|error| {
                bad(format!(
                    "cannot be opened {}: {error}",
                    if read_only { "read-only" } else { "read-write" }
                ))
            })?;
        let meta = file
            .metadata()
            .map_err(|error| bad(format!("cannot be read: {error}")))?;
        let file_type = meta.file_type();
        if !file_type.is_file() && !file_type.is_block_device() {
            return Err(bad("not a regular file or block device".into()));
        }
        if file_type.is_file() && meta.len() < 512 {
            return Err(bad(format!(
                "{} bytes, smaller than one 512-byte sector",
                meta.len()
            )));
        }
        Ok(Self { path, read_only })
    }
}
