//! The block device's queue handling, from libFuzzer's inputs, over a 32 KiB in-memory disk.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use baton_vmm::devices::virtio::fuzz_cases::{FuzzInput, block_case};

/// The disk's size: 64 sectors.
const DISK_BYTES: u64 = 64 * 512;

/// A memfd as the disk (nothing is left on the file system when the fuzzer exits), zeroed
/// before each input so that an input found to fail fails again alone.
fn fresh_disk() -> &'static PathBuf {
    static DISK: OnceLock<(std::os::fd::OwnedFd, PathBuf)> = OnceLock::new();
    let (fd, path) = DISK.get_or_init(|| {
        let fd = rustix::fs::memfd_create("baton-fuzz-disk", rustix::fs::MemfdFlags::empty())
            .expect("memfd_create");
        let path = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        (fd, path)
    });
    rustix::fs::ftruncate(fd, 0).expect("emptying the disk");
    rustix::fs::ftruncate(fd, DISK_BYTES).expect("sizing the disk");
    path
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    block_case(&mut FuzzInput::new(data), fresh_disk());
});
