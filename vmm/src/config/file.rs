//! The JSON configuration file given with `--config`.

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use super::boot_source::BootSourceFile;
use super::drive::DriveFile;
use super::jail::JailFile;
use super::machine::MachineFile;
use super::net::NetFile;
use super::vsock::VsockFile;

/// The whole configuration file. Every section and field is optional; unknown ones are refused.
///
/// ```json
/// {
///   "boot-source": { "kernel": "bzImage", "initrds": ["a.cpio", "b.cpio.gz"], "cmdline": "console=ttyS0" },
///   "machine": { "cpus": 2, "memory_mib": 256, "hugepages": false },
///   "console": "stdout",
///   "drives": [{ "path": "disk.raw", "read_only": false }],
///   "network-interfaces": [{ "tap": "tap0", "mac": "52:54:00:12:34:56" }],
///   "vsock": { "guest_cid": 3, "uds_path": "/run/vm.vsock" },
///   "jail": { "uid": 65534, "gid": 65534, "memory_mib": 384, "cpus": 2 }
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Kernel, initramfs parts and command line.
    #[serde(rename = "boot-source", default)]
    pub boot_source: BootSourceFile,
    /// vCPUs and memory.
    #[serde(default)]
    pub machine: MachineFile,
    /// `stdout` or a file path.
    pub console: Option<String>,
    /// Disks, in order.
    #[serde(default)]
    pub drives: Vec<DriveFile>,
    /// Network interfaces, in order.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetFile>,
    /// The socket device.
    pub vsock: Option<VsockFile>,
    /// The API socket's path.
    #[serde(rename = "api-sock")]
    pub api_sock: Option<std::path::PathBuf>,
    /// The jail; present means jailed (`--jail`).
    pub jail: Option<JailFile>,
}

impl ConfigFile {
    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            flag: "--config",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}
