//! The block device's queue handling, from libFuzzer's inputs, over a 32 KiB in-memory disk.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use baton_vmm::devices::virtio::fuzz_cases::{FuzzInput, block_case};

/// A memfd as the disk: nothing is left on the file system when the fuzzer exits.
fn disk() -> &'static PathBuf {
    static DISK: OnceLock<(std::os::fd::OwnedFd, PathBuf)> = OnceLock::new();
    let (_, path) = DISK.get_or_init(|| {
        let fd = rustix::fs::memfd_create("baton-fuzz-disk", rustix::fs::MemfdFlags::empty())
            .expect("memfd_create");
        rustix::fs::ftruncate(&fd, 64 * 512).expect("sizing the disk");
        let path = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        (fd, path)
    });
    path
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    block_case(&mut FuzzInput::new(data), disk());
});
