//! Guest memory: anonymous private mappings (vm-memory), split around the 32-bit MMIO hole.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::{HIGH_RAM_START, MMIO32_START};

/// Guest memory cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateMemoryError {
    /// The host refused the mapping.
    #[error("cannot map {mib} MiB of guest memory (--memory)")]
    Map {
        /// The size asked for.
        mib: u64,
        /// vm-memory's error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The guest RAM ranges (start, length) for `size` bytes: below the MMIO hole first, the rest
/// from 4 GiB on.
pub fn layout_ranges(size: u64) -> Vec<(u64, u64)> {
    let low = size.min(MMIO32_START);
    let mut ranges = vec![(0, low)];
    if size > low {
        ranges.push((HIGH_RAM_START, size - low));
    }
    ranges
}

/// Maps `size` bytes of anonymous guest memory.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, CreateMemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = layout_ranges(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| CreateMemoryError::Map {
        mib: size >> 20,
        source,
    })
}

/// The RAM ranges (start, length) of `mem`.
pub fn ram_ranges(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    mem.iter().map(|r| (r.start_addr().0, r.len())).collect()
}

/// Bytes of RAM from address 0 on, without a gap.
pub fn low_ram_len(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .find(|r| r.start_addr().0 == 0)
        .map_or(0, |r| r.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_skip_the_mmio_hole() {
        assert_eq!(layout_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(layout_ranges(MMIO32_START), vec![(0, MMIO32_START)]);
        assert_eq!(
            layout_ranges(4 << 30),
            vec![
                (0, MMIO32_START),
                (HIGH_RAM_START, (4 << 30) - MMIO32_START)
            ]
        );
    }

    #[test]
    fn memory_is_mapped_as_laid_out() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(ram_ranges(&mem), vec![(0, 64 << 20)]);
        assert_eq!(low_ram_len(&mem), 64 << 20);
    }
}
