//! Finding partitions by their GPT names without udev: the kernel reports each partition's
//! name as `PARTNAME=` in its sysfs uevent (`/sys/class/block/vda2/uevent`).

use std::path::{Path, PathBuf};

/// The udev-style path prefix a machine configuration may name a partition by
/// (`/dev/disk/by-partlabel/BATON-STATE`); init resolves it itself.
pub const BY_PARTLABEL: &str = "/dev/disk/by-partlabel/";

/// The sysfs directory of block devices on a machine.
pub const SYS_CLASS_BLOCK: &str = "/sys/class/block";

/// More than one partition carries the name asked for (two disks written from one image):
/// init will not guess which is this machine's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("more than one partition is named {name} ({}): detach the disks that are not this machine's", devices.join(", "))]
pub struct AmbiguousPartitionError {
    /// The GPT name.
    pub name: String,
    /// The devices carrying it (`vda2`, `sda2`).
    pub devices: Vec<String>,
}

/// The name of the block device (`vda2`) whose GPT partition name is `name`, looking under
/// `class_block` (`/sys/class/block`); an error when several carry it.
pub fn partition_named(
    class_block: &Path,
    name: &str,
) -> Result<Option<String>, AmbiguousPartitionError> {
    let wanted = format!("PARTNAME={name}");
    let Ok(entries) = std::fs::read_dir(class_block) else {
        return Ok(None);
    };
    let mut found: Vec<String> = entries
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("uevent"))
                .is_ok_and(|uevent| uevent.lines().any(|line| line == wanted))
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(AmbiguousPartitionError {
            name: name.to_string(),
            devices: found,
        }),
    }
}

/// Calls `attempt` until it finds what it looks for or fails, every 50 ms for up to `wait`:
/// how init waits for a block device whose driver may still be probing it (there is no udev
/// to say when it appears). `Ok(None)` once `wait` has passed.
pub fn wait_for_device<T, E>(
    wait: std::time::Duration,
    mut attempt: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    const INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(found) = attempt()? {
            return Ok(Some(found));
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        // The poll interval, never past the deadline.
        std::thread::sleep(INTERVAL.min(deadline - now));
    }
}

/// The device node a `/dev/...` path names: itself, or for `/dev/disk/by-partlabel/NAME` the
/// partition of that GPT name found under `class_block` (`None` while there is none).
pub fn resolve_device(
    path: &Path,
    class_block: &Path,
) -> Result<Option<PathBuf>, AmbiguousPartitionError> {
    match path.to_str().and_then(|p| p.strip_prefix(BY_PARTLABEL)) {
        Some(name) => {
            Ok(partition_named(class_block, name)?.map(|device| Path::new("/dev").join(device)))
        }
        None => Ok(Some(path.to_path_buf())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_a_device_stops_when_found_failed_or_out_of_time() {
        use std::time::{Duration, Instant};
        let mut calls = 0;
        let found: Result<Option<u32>, ()> = wait_for_device(Duration::from_secs(5), || {
            calls += 1;
            Ok((calls == 3).then_some(calls))
        });
        assert_eq!(found, Ok(Some(3)));
        let failed: Result<Option<u32>, &str> =
            wait_for_device(Duration::from_secs(5), || Err("ambiguous"));
        assert_eq!(failed, Err("ambiguous"));
        let started = Instant::now();
        let absent: Result<Option<u32>, ()> =
            wait_for_device(Duration::from_millis(200), || Ok(None));
        assert_eq!(absent, Ok(None));
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

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
            partition_named(root.path(), "BATON-CONFIG")
                .unwrap()
                .as_deref(),
            Some("vdb2")
        );
        assert_eq!(partition_named(root.path(), "BATON").unwrap(), None);
        assert_eq!(
            resolve_device(Path::new("/dev/disk/by-partlabel/BATON-STATE"), root.path()).unwrap(),
            Some(PathBuf::from("/dev/vda2"))
        );
        assert_eq!(
            resolve_device(Path::new("/dev/disk/by-partlabel/OTHER"), root.path()).unwrap(),
            None
        );
        assert_eq!(
            resolve_device(Path::new("/dev/vdc"), root.path()).unwrap(),
            Some(PathBuf::from("/dev/vdc"))
        );
        // A second disk written from the same image: refused, naming both.
        let dir = root.path().join("sda2");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("uevent"),
            "DEVNAME=sda2\nDEVTYPE=partition\nPARTNAME=BATON-STATE\n",
        )
        .unwrap();
        let err = resolve_device(Path::new("/dev/disk/by-partlabel/BATON-STATE"), root.path())
            .unwrap_err();
        assert_eq!(err.devices, ["sda2", "vda2"]);
        assert!(
            err.to_string().contains("BATON-STATE (sda2, vda2)"),
            "{err}"
        );
    }
}
