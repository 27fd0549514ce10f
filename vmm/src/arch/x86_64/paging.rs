//! The identity page tables the 64-bit entry needs: the first 4 GiB mapped with 2 MiB pages,
//! so that boot code reaches RAM below the MMIO hole and the virtio-mmio registers in it.

use super::layout::{PD_ADDR, PDPT_ADDR, PML4_ADDR};

/// Present and writable.
const PRESENT_RW: u64 = 0x3;
/// Present, writable, and a large (2 MiB) page.
const PRESENT_RW_LARGE: u64 = 0x83;
/// Entries per table.
const ENTRIES: u64 = 512;
/// Page directories, one per GiB mapped.
const DIRECTORIES: u64 = 4;

/// The boot page tables as (guest address, 8-byte entry) pairs: PML4[0] -> PDPT, PDPT[g] ->
/// the page directory of GiB `g` (4 consecutive pages from `PD_ADDR`), whose entry `i` maps
/// `g GiB + i * 2 MiB` identically.
pub fn identity_map_entries() -> impl Iterator<Item = (u64, u64)> {
    let directory = |g: u64| PD_ADDR + g * 0x1000;
    std::iter::once((PML4_ADDR, PDPT_ADDR | PRESENT_RW))
        .chain((0..DIRECTORIES).map(move |g| (PDPT_ADDR + g * 8, directory(g) | PRESENT_RW)))
        .chain((0..DIRECTORIES * ENTRIES).map(move |n| {
            (
                directory(n / ENTRIES) + (n % ENTRIES) * 8,
                (n << 21) | PRESENT_RW_LARGE,
            )
        }))
}

/// Bytes of guest physical address space the boot identity map covers (4 GiB).
pub const IDENTITY_MAPPED: u64 = (DIRECTORIES * ENTRIES) << 21;

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables like the MMU does for a 2 MiB page.
    fn translate(entries: &[(u64, u64)], virt: u64) -> Option<u64> {
        let read = |addr: u64| {
            entries
                .iter()
                .find(|(a, _)| *a == addr)
                .map(|(_, v)| *v)
                .unwrap_or(0)
        };
        let pml4e = read(PML4_ADDR + ((virt >> 39) & 0x1ff) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = read((pml4e & !0xfff) + ((virt >> 30) & 0x1ff) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = read((pdpte & !0xfff) + ((virt >> 21) & 0x1ff) * 8);
        if pde & 1 == 0 || pde & 0x80 == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (virt & 0x1f_ffff))
    }

    #[test]
    fn first_four_gib_are_identity_mapped() {
        let entries: Vec<_> = identity_map_entries().collect();
        assert_eq!(entries.len(), 1 + 4 + 2048);
        assert_eq!(entries[0], (0x9000, 0xa003));
        assert_eq!(entries[1], (0xa000, 0xb003));
        assert_eq!(entries[4], (0xa018, 0xe003));
        assert_eq!(entries[5], (0xb000, 0x83));
        assert_eq!(entries[5 + 2047], (0xe000 + 511 * 8, (2047 << 21) | 0x83));
        for addr in [
            0,
            0x7000,
            0x10_0000,
            0x100_0000 + 0x1234,
            0x4000_0000,
            0xd000_0070,
            IDENTITY_MAPPED - 1,
        ] {
            assert_eq!(translate(&entries, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(translate(&entries, IDENTITY_MAPPED), None);
    }
}
