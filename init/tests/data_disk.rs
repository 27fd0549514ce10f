//! The data disk as init prepares it, on a loop device with the host's kernel: formatted once,
//! mounted, holding what was written across a remount, clean to e2fsck; a disk holding
//! something else, or none at all, is refused by name and left as it was.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baton_init::data_disk::{DataDiskState, MountDataDiskError, low_space, mount_data_disk};

/// A loop device over an image file, detached on drop.
struct LoopDevice(PathBuf);

impl LoopDevice {
    fn attach(image: &Path) -> LoopDevice {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()
            .expect("losetup runs (scripts/setup installs util-linux)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice(String::from_utf8_lossy(&out.stdout).trim().into())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A mount point, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn image(dir: &Path, size: u64) -> PathBuf {
    let path = dir.join("disk.img");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    path
}

/// An image full of old data but for its first MiB (as after wiping it to hand the disk to
/// init): the file system is made over what the disk held.
fn used_image(dir: &Path, size: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("disk.img");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 13) as u8).collect();
    file.write_all(&vec![0u8; 1 << 20]).unwrap();
    for _ in 1..size >> 20 {
        file.write_all(&chunk).unwrap();
    }
    path
}

#[test]
fn a_wiped_disk_is_formatted_once_and_keeps_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let image = used_image(dir.path(), 600 << 20);
    let var = dir.path().join("var");
    {
        let device = LoopDevice::attach(&image);
        let state = mount_data_disk(&device.0, &var, Duration::from_secs(1));
        let _mounted = Mounted(var.clone());
        assert_eq!(state.unwrap(), DataDiskState::Formatted { size: 600 << 20 });
        assert!(var.join("lost+found").is_dir());
        // What a node keeps there: many small files in nested directories, a large one
        // spanning block groups, and the xattrs overlayfs sets on its upper directories.
        for index in 0..200 {
            let sub = var.join(format!("lib/kubelet/pods/{}", index % 20));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join(format!("f{index}")), index.to_string()).unwrap();
        }
        assert_eq!(low_space(&var), None, "a new disk has room");
        std::fs::write(var.join("lib/big"), vec![0x5au8; 300 << 20]).unwrap();
        std::fs::write(var.join("lib/more"), vec![0x5au8; 100 << 20]).unwrap();
        let free = low_space(&var).expect("under 256 MiB free is reported");
        assert!(free > 100 << 20 && free < 256 << 20, "{free}");
        let out = Command::new("setfattr")
            .args(["-n", "trusted.overlay.opaque", "-v", "y"])
            .arg(var.join("lib/kubelet"))
            .output()
            .expect("setfattr runs (scripts/setup installs attr)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&image)
        .output()
        .expect("e2fsck runs (scripts/setup installs e2fsprogs)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    assert!(
        fsck.status.success() && !report.contains("? no"),
        "{report}"
    );
    // The next boot mounts what is there rather than formatting again.
    let device = LoopDevice::attach(&image);
    let state = mount_data_disk(&device.0, &var, Duration::from_secs(1));
    let _mounted = Mounted(var.clone());
    assert_eq!(state.unwrap(), DataDiskState::Mounted);
    assert_eq!(
        std::fs::read_to_string(var.join("lib/kubelet/pods/7/f187")).unwrap(),
        "187"
    );
    assert_eq!(
        std::fs::metadata(var.join("lib/big")).unwrap().len(),
        300 << 20
    );
}

/// Writes what a disk holds into its first bytes.
type WriteHead = dyn Fn(&mut Vec<u8>);

#[test]
fn a_disk_holding_something_else_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let var = dir.path().join("var");
    // What a disk from elsewhere holds: a GPT partition table; an ext4 file system init did
    // not make; data with no signature at all.
    let gpt = |head: &mut Vec<u8>| {
        head[510..512].copy_from_slice(b"\x55\xaa");
        head[512..520].copy_from_slice(b"EFI PART");
    };
    let other_ext4 = |head: &mut Vec<u8>| {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(head.len() as u64).unwrap();
        let options = baton_ext4_format::FormatOptions {
            label: "someone-else".into(),
            uuid: [7; 16],
            hash_seed: [9; 16],
            journal_sequence: 1,
            now: 0,
        };
        baton_ext4_format::format(file.as_file(), &options).unwrap();
        *head = std::fs::read(file.path()).unwrap();
    };
    let data = |head: &mut Vec<u8>| head[700_000] = 1;
    let cases: [(&WriteHead, &str); 3] = [
        (&gpt, "a GPT partition table"),
        (&other_ext4, "an ext file system labelled \"someone-else\""),
        (&data, "data that no known signature names"),
    ];
    for (make, named) in cases {
        let image = image(dir.path(), 64 << 20);
        let mut head = std::fs::read(&image).unwrap();
        make(&mut head);
        std::fs::write(&image, &head).unwrap();
        let device = LoopDevice::attach(&image);
        let result = mount_data_disk(&device.0, &var, Duration::from_secs(1));
        let _mounted = result.is_ok().then(|| Mounted(var.clone()));
        let err = result.unwrap_err();
        assert!(matches!(err, MountDataDiskError::Foreign { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("machine.dataDisk /dev/loop") && text.contains(named),
            "{text}"
        );
        drop(device);
        assert!(
            std::fs::read(&image).unwrap() == head,
            "{named}: the disk was changed"
        );
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(&format!(" {} ", var.display())),
            "{named}: something is mounted on {}",
            var.display()
        );
        std::fs::remove_file(&image).unwrap();
    }
}

#[test]
fn an_absent_disk_is_named_after_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("vdz");
    let started = std::time::Instant::now();
    let err = mount_data_disk(
        &missing,
        &dir.path().join("var"),
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "machine.dataDisk {}: no such device",
            missing.display()
        )),
        "{text}"
    );
}
