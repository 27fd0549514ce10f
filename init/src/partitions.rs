//! Finding partitions by their GPT names without udev: the kernel reports each partition's
//! name as `PARTNAME=` in its sysfs uevent (`/sys/class/block/vda2/uevent`).

use std::path::{Path, PathBuf};

/// The udev-style path prefix a machine configuration may name a partition by
/// (`/dev/disk/by-partlabel/BATON-STATE`); init resolves it itself.
pub const BY_PARTLABEL: &str = "/dev/disk/by-partlabel/";

/// The sysfs directory of block devices on a machine.
pub const SYS_CLASS_BLOCK: &str = "/sys/class/block";

/// The name of the block device (`vda2`) whose GPT partition name is `name`, looking under
/// `class_block` (`/sys/class/block`).
pub fn partition_named(class_block: &Path, name: &str) -> Option<String> {
    let wanted = format!("PARTNAME={name}");
    let mut found: Vec<String> = std::fs::read_dir(class_block)
        .ok()?
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("uevent"))
                .is_ok_and(|uevent| uevent.lines().any(|line| line == wanted))
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    // The first by name when more than one disk carries the name: the same choice each boot.
    found.sort();
    found.into_iter().next()
}

/// The device node a `/dev/...` path names: itself, or for `/dev/disk/by-partlabel/NAME` the
/// partition of that GPT name found under `class_block` (`None` while there is none).
pub fn resolve_device(path: &Path, class_block: &Path) -> Option<PathBuf> {
    match path.to_str().and_then(|p| p.strip_prefix(BY_PARTLABEL)) {
        Some(name) => {
            partition_named(class_block, name).map(|device| Path::new("/dev").join(device))
        }
        None => Some(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_found_by_its_gpt_name() {
        let root = tempfile::tempdir().unwrap();
        for (dev, uevent) in [
            ("vda", "MAJOR=254\nDEVNAME=vda\nDEVTYPE=disk\n"),
            (
                "vdb2",
                "MAJOR=254\nDEVNAME=vdb2\nDEVTYPE=partition\nPARTNAME=BATON-CONFIG\n",
            ),
            (
                "vda2",
                "MAJOR=254\nDEVNAME=vda2\nDEVTYPE=partition\nPARTNAME=BATON-STATE\n",
            ),
        ] {
            let dir = root.path().join(dev);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("uevent"), uevent).unwrap();
        }
        assert_eq!(
            partition_named(root.path(), "BATON-CONFIG").as_deref(),
            Some("vdb2")
        );
        assert_eq!(partition_named(root.path(), "BATON"), None);
        assert_eq!(
            resolve_device(Path::new("/dev/disk/by-partlabel/BATON-STATE"), root.path()),
            Some(PathBuf::from("/dev/vda2"))
        );
        assert_eq!(
            resolve_device(Path::new("/dev/disk/by-partlabel/OTHER"), root.path()),
            None
        );
        assert_eq!(
            resolve_device(Path::new("/dev/vdc"), root.path()),
            Some(PathBuf::from("/dev/vdc"))
        );
    }
}
