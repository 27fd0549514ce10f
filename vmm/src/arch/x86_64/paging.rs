//! The identity page tables the 64-bit entry needs: the first 1 GiB mapped with 2 MiB pages.

use super::layout::{PD_ADDR, PDPT_ADDR, PML4_ADDR};

/// Present and writable.
const PRESENT_RW: u64 = 0x3;
/// Present, writable, and a large (2 MiB) page.
const PRESENT_RW_LARGE: u64 = 0x83;
/// Entries per table.
const ENTRIES: u64 = 512;

/// The boot page tables as (guest address, 8-byte entry) pairs: PML4[0] -> PDPT, PDPT[0] ->
/// PD, and PD[i] maps `i * 2 MiB` identically, for 1 GiB.
pub fn identity_map_entries() -> impl Iterator<Item = (u64, u64)> {
    [
        (PML4_ADDR, PDPT_ADDR | PRESENT_RW),
        (PDPT_ADDR, PD_ADDR | PRESENT_RW),
    ]
    .into_iter()
    .chain((0..ENTRIES).map(|i| (PD_ADDR + i * 8, (i << 21) | PRESENT_RW_LARGE)))
}

/// Bytes of guest memory the boot identity map is mapped to (1 GiB).
pub const IDENTITY_MAPPED: u64 = ENTRIES << 21;

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
    fn first_gib_is_identity_mapped() {
        let entries: Vec<_> = identity_map_entries().collect();
        assert_eq!(entries.len(), 514);
        assert_eq!(entries[0], (0x9000, 0xa003));
        assert_eq!(entries[1], (0xa000, 0xb003));
        assert_eq!(entries[2], (0xb000, 0x83));
        assert_eq!(entries[513], (0xb000 + 511 * 8, (511 << 21) | 0x83));
        for addr in [
            0,
            0x7000,
            0x10_0000,
            0x100_0000 + 0x1234,
            IDENTITY_MAPPED - 1,
        ] {
            assert_eq!(translate(&entries, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(translate(&entries, IDENTITY_MAPPED), None);
    }
}
