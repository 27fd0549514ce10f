//! The vsock resource: a virtio socket device whose host side is a Unix socket, in
//! Firecracker's way: the host connects to UDS_PATH and writes `CONNECT PORT\n` to reach the
//! guest's port PORT; the guest connecting to the host (CID 2) on port P reaches a listener
//! at `UDS_PATH_P`.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// The file's `vsock` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockFile {
    /// The guest's context ID (3 or more).
    pub guest_cid: u32,
    /// The host side's Unix socket, made by the VMM and removed when it ends.
    pub uds_path: PathBuf,
}

/// A validated vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID.
    pub guest_cid: u32,
    /// The host side's Unix socket path: free, in an existing directory.
    pub uds_path: PathBuf,
}

/// Longest Unix socket path (`sun_path` less its NUL), with room for `_PORT` suffixes.
const MAX_UDS_PATH: usize = 107 - 11;

impl VsockConfig {
    /// Parses `CID,UDS_PATH` as `--vsock` takes it.
    pub fn parse_flag(value: &str) -> Result<VsockFile, ConfigError> {
        let bad = |reason: &str| ConfigError::Vsock {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let (cid, path) = value
            .split_once(',')
            .ok_or_else(|| bad("expected CID,UDS_PATH"))?;
        let guest_cid = cid.parse().map_err(|_| bad("the CID is not a number"))?;
        Ok(VsockFile {
            guest_cid,
            uds_path: PathBuf::from(path),
        })
    }

    /// Checks the context ID and that the socket path is free in an existing directory.
    pub fn new(vsock: VsockFile) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::Vsock {
            value: format!("{},{}", vsock.guest_cid, vsock.uds_path.display()),
            reason,
        };
        if vsock.guest_cid < 3 || vsock.guest_cid == u32::MAX {
            return Err(bad(
                "the guest CID must be at least 3 (0-2 are reserved) and below 4294967295".into(),
            ));
        }
        let path = &vsock.uds_path;
        if path.as_os_str().is_empty() || path.as_os_str().len() > MAX_UDS_PATH {
            return Err(bad(format!(
                "the socket path must have 1 to {MAX_UDS_PATH} bytes"
            )));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if !parent.is_dir() {
            return Err(bad("its directory does not exist".into()));
        }
        if path.symlink_metadata().is_ok() {
            return Err(bad("the socket path is busy: something exists there".into()));
        }
        Ok(Self {
            guest_cid: vsock.guest_cid,
            uds_path: vsock.uds_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let config =
            VsockConfig::new(VsockConfig::parse_flag(&format!("3,{}", path.display())).unwrap())
                .unwrap();
        assert_eq!(config.guest_cid, 3);
        assert_eq!(config.uds_path, path);
        let busy = dir.path().join("busy");
        std::fs::write(&busy, "").unwrap();
        let check = |value: String, expected: &str| {
            let err = VsockConfig::parse_flag(&value)
                .and_then(VsockConfig::new)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("--vsock (vsock)"), "{err}");
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        };
        check("3".into(), "expected CID,UDS_PATH");
        check(format!("x,{}", path.display()), "not a number");
        check(format!("2,{}", path.display()), "at least 3");
        check(format!("3,{}", busy.display()), "busy");
        check(
            "3,/nonexistent/dir/v.sock".into(),
            "directory does not exist",
        );
        check(format!("3,/{}", "x".repeat(120)), "1 to 96 bytes");
    }
}
