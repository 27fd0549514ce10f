//! Placing the initramfs: its parts concatenated (each padded to 4 bytes, as the kernel's
//! unpacker expects between archives) at the highest page-aligned address that fits.

use std::fs::File;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Alignment of each part inside the concatenation.
const PART_ALIGN: u64 = 4;
/// Alignment of the whole initramfs.
const PAGE_SIZE: u64 = 4096;

/// The initramfs cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadInitrdError {
    /// A part cannot be opened or read.
    #[error("--initrd {}: cannot be read", path.display())]
    Read {
        /// The part.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The parts do not fit between the kernel and the highest address allowed.
    #[error(
        "--initrd: {} KiB of initramfs do not fit in guest memory beside the kernel; raise --memory",
        size.div_ceil(1024)
    )]
    TooLittleMemory {
        /// Bytes of initramfs.
        size: u64,
    },
    /// Guest memory refused the write.
    #[error("--initrd {}: cannot be copied into guest memory", path.display())]
    Copy {
        /// The part.
        path: PathBuf,
        /// vm-memory's error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Padded length of one part.
pub fn padded_len(len: u64) -> u64 {
    len.div_ceil(PART_ALIGN) * PART_ALIGN
}

/// Highest page-aligned address at which `size` bytes end at or below `limit` and start at
/// or above `lowest`.
pub fn initrd_address(size: u64, lowest: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= lowest).then_some(start)
}

/// Loads the parts at `paths` into `mem` above `lowest` and ending at or below `limit`;
/// returns the address and length, or `None` when there are no parts.
pub fn load_initrds(
    mem: &GuestMemoryMmap,
    paths: &[PathBuf],
    lowest: u64,
    limit: u64,
) -> Result<Option<(u64, u64)>, LoadInitrdError> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut parts = Vec::with_capacity(paths.len());
    for path in paths {
        let file = File::open(path).map_err(|source| read_err(path, source))?;
        let len = file
            .metadata()
            .map_err(|source| read_err(path, source))?
            .len();
        parts.push((path, file, len));
    }
    let size: u64 = parts.iter().map(|(_, _, len)| padded_len(*len)).sum();
    let start =
        initrd_address(size, lowest, limit).ok_or(LoadInitrdError::TooLittleMemory { size })?;
    let mut at = start;
    for (path, mut file, len) in parts {
        mem.read_exact_volatile_from(GuestAddress(at), &mut file, len as usize)
            .map_err(|source| LoadInitrdError::Copy {
                path: path.clone(),
                source,
            })?;
        at += padded_len(len);
    }
    tracing::debug!(start, size, parts = paths.len(), "initramfs loaded");
    Ok(Some((start, size)))
}

fn read_err(path: &Path, source: std::io::Error) -> LoadInitrdError {
    LoadInitrdError::Read {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_highest_page_aligned_fit() {
        assert_eq!(
            initrd_address(0x1000, 0x10_0000, 0x800_0000),
            Some(0x7ff_f000)
        );
        assert_eq!(
            initrd_address(0x1001, 0x10_0000, 0x800_0000),
            Some(0x7ff_e000)
        );
        assert_eq!(initrd_address(0x10, 0, 0x1008), Some(0));
        assert_eq!(initrd_address(0x10, 0, 0x2010), Some(0x2000));
        assert_eq!(
            initrd_address(0x7f0_0000, 0x10_0000, 0x800_0000),
            Some(0x10_0000)
        );
        assert_eq!(initrd_address(0x7f0_0001, 0x10_0000, 0x800_0000), None);
        assert_eq!(initrd_address(u64::MAX, 0, 0x800_0000), None);
    }

    #[test]
    fn parts_are_concatenated_with_padding() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"07070").unwrap();
        std::fs::write(&b, b"xyz").unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (start, size) = load_initrds(&mem, &[a, b], 0x1000, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(size, 8 + 4);
        assert_eq!(start, (1 << 20) - 0x1000);
        let mut got = [0u8; 12];
        mem.read_slice(&mut got, GuestAddress(start)).unwrap();
        assert_eq!(&got, b"07070\0\0\0xyz\0");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![1u8; 0x3000]).unwrap();
        let err = load_initrds(&mem, &[big], (1 << 20) - 0x2000, 1 << 20).unwrap_err();
        assert!(err.to_string().starts_with("--initrd: 12 KiB"), "{err}");
        assert_eq!(load_initrds(&mem, &[], 0, 1 << 20).unwrap(), None);
    }
}
