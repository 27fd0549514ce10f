//! Finding the machine configuration, in this order: one applied through the node API and
//! staged on the node's state (`/var/lib/baton/machine-config.yaml`, where /var persists when
//! init looks), the kernel command line (`baton.config=PATH`, or a metadata endpoint that
//! `config_fetch.rs` fetches from: `http://IP[:PORT]/PATH`, `vsock:PORT`), a file in the image (`/etc/baton/machine-config.yaml`, which an
//! extra cpio archive appended to the initramfs or the sandbox's creator places), and a
//! partition named `BATON-CONFIG` holding `machine-config.yaml`.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::config_fetch::{FetchConfigError, MetadataEndpoint, ParseEndpointError};

/// Where a configuration applied through the node API is kept for the next boot.
pub const STAGED_CONFIG: &str = "var/lib/baton/machine-config.yaml";
/// The configuration's path inside the image.
pub const CONFIG_IN_IMAGE: &str = "etc/baton/machine-config.yaml";
/// The GPT partition name of a configuration partition.
pub const CONFIG_PARTITION_NAME: &str = "BATON-CONFIG";
/// The file on that partition.
pub const CONFIG_ON_PARTITION: &str = "machine-config.yaml";
/// The kernel command-line key.
pub const CMDLINE_KEY: &str = "baton.config=";

/// A configuration document and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundConfig {
    /// The YAML text.
    pub yaml: String,
    /// Where it was found, for messages (`/etc/baton/machine-config.yaml`,
    /// `partition BATON-CONFIG (/dev/vdb1)` ...).
    pub source: String,
}

/// Why looking for the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum FindConfigError {
    /// The command line names a file that cannot be read.
    #[error("reading {path}, named by {CMDLINE_KEY} on the kernel command line")]
    CommandLineFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The command line names a source that cannot be used.
    #[error(transparent)]
    Endpoint(#[from] ParseEndpointError),
    /// The command line names a metadata endpoint that gave no configuration.
    #[error(transparent)]
    Fetch(#[from] FetchConfigError),
    /// A file exists but cannot be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Several partitions are named `BATON-CONFIG`.
    #[error(transparent)]
    AmbiguousPartition(#[from] crate::partitions::AmbiguousPartitionError),
    /// The configuration partition cannot be mounted.
    #[error("mounting partition {CONFIG_PARTITION_NAME} ({device})")]
    MountPartition {
        /// Its device.
        device: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// What the kernel says of a failed initramfs unpacking among its log `messages`, if it says
/// anything: the kernel then drops the rest of the archive, so a configuration archive
/// appended to the image's is lost (seen with too little memory for the whole archive).
pub fn initramfs_unpacking_failure(messages: impl IntoIterator<Item = String>) -> Option<String> {
    messages.into_iter().find_map(|message| {
        let at = message.find("Initramfs unpacking failed")?;
        Some(message[at..].trim_end().to_string())
    })
}

/// The value of `baton.config=` on `cmdline`, if any.
pub fn cmdline_config(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix(CMDLINE_KEY))
}

/// Looks for the configuration under `root` (`/` on a node) given the kernel command line,
/// fetching it with `fetch` when the command line names a metadata endpoint; when nothing
/// before it gives one, waits up to `partition_wait` for a `BATON-CONFIG` partition (a
/// disk's driver may still be probing it).
pub fn find_config(
    root: &Path,
    cmdline: &str,
    partition_wait: std::time::Duration,
    fetch: impl FnOnce(&MetadataEndpoint) -> Result<FoundConfig, FetchConfigError>,
) -> Result<Option<FoundConfig>, FindConfigError> {
    let staged = root.join(STAGED_CONFIG);
    match std::fs::read_to_string(&staged) {
        Ok(yaml) => {
            return Ok(Some(FoundConfig {
                yaml,
                source: format!("/{STAGED_CONFIG} (applied through the node API)"),
            }));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(FindConfigError::Read {
                path: staged,
                source,
            });
        }
    }
    if let Some(value) = cmdline_config(cmdline) {
        if let Some(endpoint) = MetadataEndpoint::parse(value)? {
            return Ok(Some(fetch(&endpoint)?));
        }
        let path = root.join(value.trim_start_matches('/'));
        let yaml = std::fs::read_to_string(&path)
            .map_err(|source| FindConfigError::CommandLineFile { path, source })?;
        return Ok(Some(FoundConfig {
            yaml,
            source: value.to_string(),
        }));
    }
    let in_image = root.join(CONFIG_IN_IMAGE);
    match std::fs::read_to_string(&in_image) {
        Ok(yaml) => {
            return Ok(Some(FoundConfig {
                yaml,
                source: format!("/{CONFIG_IN_IMAGE}"),
            }));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(FindConfigError::Read {
                path: in_image,
                source,
            });
        }
    }
    let class_block = root.join("sys/class/block");
    let found = crate::partitions::wait_for_device(partition_wait, || {
        crate::partitions::partition_named(&class_block, CONFIG_PARTITION_NAME)
    })?;
    match found {
        Some(name) => read_partition(root, &name).map(Some),
        None => Ok(None),
    }
}

fn read_partition(root: &Path, name: &str) -> Result<FoundConfig, FindConfigError> {
    let device = root.join("dev").join(name);
    let mount_point = root.join("run/baton/config-partition");
    std::fs::create_dir_all(&mount_point).map_err(|source| FindConfigError::Read {
        path: mount_point.clone(),
        source,
    })?;
    let mut last = nix::Error::ENODEV;
    let mounted = ["vfat", "ext4"].iter().any(|fstype| {
        match mount(
            Some(&device),
            &mount_point,
            Some(*fstype),
            MsFlags::MS_RDONLY,
            None::<&str>,
        ) {
            Ok(()) => true,
            Err(err) => {
                last = err;
                false
            }
        }
    });
    if !mounted {
        return Err(FindConfigError::MountPartition {
            device,
            source: last,
        });
    }
    let path = mount_point.join(CONFIG_ON_PARTITION);
    let result = std::fs::read_to_string(&path);
    if let Err(err) = umount2(&mount_point, MntFlags::MNT_DETACH) {
        tracing::warn!(%err, "unmounting the configuration partition");
    }
    let yaml = result.map_err(|source| FindConfigError::Read { path, source })?;
    Ok(FoundConfig {
        yaml,
        source: format!("partition {CONFIG_PARTITION_NAME} ({})", device.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_failed_initramfs_unpacking_is_found_in_the_kernel_log() {
        let log = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        assert_eq!(
            initramfs_unpacking_failure(log(&[
                "6,100,1200,-;Trying to unpack rootfs image as initramfs...",
                "0,101,2400,-;Initramfs unpacking failed: write error\n",
            ])),
            Some("Initramfs unpacking failed: write error".into())
        );
        assert_eq!(
            initramfs_unpacking_failure(log(&["6,1,1,-;Freeing initrd memory: 52748K"])),
            None
        );
    }

    fn no_fetch(endpoint: &MetadataEndpoint) -> Result<FoundConfig, FetchConfigError> {
        panic!("nothing is fetched here, yet {endpoint} was")
    }

    #[test]
    fn a_metadata_endpoint_on_the_command_line_is_fetched_before_the_image_file() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/baton")).unwrap();
        std::fs::write(root.path().join(CONFIG_IN_IMAGE), "image").unwrap();
        let found = find_config(
            root.path(),
            "console=ttyS0 baton.config=vsock:1025",
            Duration::ZERO,
            |endpoint| {
                Ok(FoundConfig {
                    yaml: "fetched".into(),
                    source: endpoint.to_string(),
                })
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (found.yaml.as_str(), found.source.as_str()),
            ("fetched", "vsock:2:1025")
        );
    }

    #[test]
    fn the_command_line_comes_before_the_image_file() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/baton")).unwrap();
        std::fs::write(root.path().join(CONFIG_IN_IMAGE), "image").unwrap();
        std::fs::write(root.path().join("other.yaml"), "cmdline").unwrap();
        let found = find_config(
            root.path(),
            "console=ttyS0 baton.config=/other.yaml",
            Duration::ZERO,
            no_fetch,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (found.yaml.as_str(), found.source.as_str()),
            ("cmdline", "/other.yaml")
        );
        let found = find_config(root.path(), "console=ttyS0", Duration::ZERO, no_fetch)
            .unwrap()
            .unwrap();
        assert_eq!(found.source, "/etc/baton/machine-config.yaml");
        let err = find_config(
            root.path(),
            "baton.config=other.yaml",
            Duration::ZERO,
            no_fetch,
        )
        .unwrap_err();
        assert!(err.to_string().contains("other.yaml"), "{err}");
        let err = find_config(
            root.path(),
            "baton.config=/missing.yaml",
            Duration::ZERO,
            no_fetch,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/missing.yaml"), "{err}");
    }

    #[test]
    fn a_configuration_applied_through_the_api_comes_first() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/baton")).unwrap();
        std::fs::create_dir_all(root.path().join("var/lib/baton")).unwrap();
        std::fs::write(root.path().join(CONFIG_IN_IMAGE), "image").unwrap();
        std::fs::write(root.path().join(STAGED_CONFIG), "staged").unwrap();
        let found = find_config(
            root.path(),
            "baton.config=/etc/baton/machine-config.yaml",
            Duration::ZERO,
            no_fetch,
        )
        .unwrap()
        .unwrap();
        assert_eq!(found.yaml, "staged");
        assert!(found.source.contains("node API"), "{}", found.source);
    }
}
