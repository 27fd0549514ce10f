//! Guest memory: anonymous private mappings (vm-memory), split around the 32-bit MMIO hole,
//! on normal pages (reserved lazily) or on 2 MiB huge pages (hugetlb, reserved up front so
//! that a pool too small fails the start rather than the guest).

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

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
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The host's huge page pool cannot hold the guest.
    #[error(
        "--hugepages: cannot map {mib} MiB of guest memory on 2 MiB huge pages; the host's pool ({HUGEPAGES_2MB}/nr_hugepages) has {} free",
        free.map_or("an unknown number of pages".to_owned(), |n| n.to_string())
    )]
    Hugepages {
        /// The size asked for.
        mib: u64,
        /// Free 2 MiB pages the host reports, if it can be read (a jail shows no /sys).
        free: Option<u64>,
        /// The OS error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
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

/// Maps `size` bytes of anonymous guest memory, on 2 MiB huge pages when `hugepages`.
pub fn create_guest_memory(
    size: u64,
    hugepages: bool,
) -> Result<GuestMemoryMmap, CreateMemoryError> {
    let mib = size >> 20;
    let map_error =
        |source: Box<dyn std::error::Error + Send + Sync>| CreateMemoryError::Map { mib, source };
    let mut regions = Vec::new();
    for (start, len) in layout_ranges(size) {
        let flags = if hugepages {
            // The size said: the host's default huge page size may be 1 GiB.
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB
        } else {
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE
        };
        let mapping = MmapRegionBuilder::new(len as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_hugetlbfs(hugepages)
            .build()
            .map_err(|source| {
                if hugepages {
                    CreateMemoryError::Hugepages {
                        mib,
                        free: free_hugepages(),
                        source,
                    }
                } else {
                    map_error(Box::new(source))
                }
            })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| map_error("the region overflows the guest address space".into()))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_error(Box::new(e)))
}

/// Where the host describes its pool of 2 MiB huge pages.
pub const HUGEPAGES_2MB: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/// 2 MiB huge pages the host could still hand out (free less reserved), if it says.
pub fn free_hugepages() -> Option<u64> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("{HUGEPAGES_2MB}/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(read("free_hugepages")?.saturating_sub(read("resv_hugepages")?))
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
        let mem = create_guest_memory(64 << 20, false).unwrap();
        assert_eq!(ram_ranges(&mem), vec![(0, 64 << 20)]);
        assert_eq!(low_ram_len(&mem), 64 << 20);
    }
}
