//! The boot source resource: kernel, initramfs parts and command line.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// Longest kernel command line accepted, without its terminating NUL (x86's COMMAND_LINE_SIZE
/// is 2048 including the NUL).
pub const MAX_CMDLINE_LEN: usize = 2047;

/// Command line when neither `--cmdline` nor the file gives one: the serial console, reboot
/// through the i8042 reset line, and a reboot one second after a panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// The `boot-source` section of the JSON configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceFile {
    /// Kernel image (bzImage or ELF vmlinux).
    pub kernel: Option<PathBuf>,
    /// Initramfs parts, concatenated in this order.
    #[serde(default)]
    pub initrds: Vec<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
}

/// Validated boot source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSourceConfig {
    /// Kernel image (bzImage or ELF vmlinux), readable.
    pub kernel: PathBuf,
    /// Initramfs parts, each readable, concatenated in this order.
    pub initrds: Vec<PathBuf>,
    /// Kernel command line, without NUL bytes, at most [`MAX_CMDLINE_LEN`] bytes.
    pub cmdline: String,
}

impl BootSourceConfig {
    /// Checks that the files are readable and that the command line fits.
    pub fn new(
        kernel: PathBuf,
        initrds: Vec<PathBuf>,
        cmdline: String,
    ) -> Result<Self, ConfigError> {
        check_readable(&kernel, "--kernel")?;
        for initrd in &initrds {
            check_readable(initrd, "--initrd")?;
        }
        if cmdline.len() > MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong { len: cmdline.len() });
        }
        if cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        Ok(Self {
            kernel,
            initrds,
            cmdline,
        })
    }
}

fn check_readable(path: &Path, flag: &'static str) -> Result<(), ConfigError> {
    let file = File::open(path).map_err(|source| ConfigError::Unreadable {
        flag,
        path: path.to_owned(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| ConfigError::Unreadable {
        flag,
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(())
}
