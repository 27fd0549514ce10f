//! The PVH boot structures (Xen's `hvm_start_info`, version 1), for kernels whose ELF notes
//! offer a 32-bit PVH entry (`XEN_ELFNOTE_PHYS32_ENTRY`): the start info, the module list
//! holding the initramfs, and the memory map. The vCPU enters at that entry in 32-bit
//! protected mode without paging, with `ebx` holding the start info's address.

use super::e820::E820Entry;
use super::layout::{PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR, PVH_START_INFO_ADDR, ZERO_PAGE_ADDR};

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// The start info version written (version 1 has the memory map).
pub const START_INFO_VERSION: u32 = 1;
/// Bytes of `struct hvm_start_info`.
pub const START_INFO_LEN: usize = 56;
/// Bytes of `struct hvm_modlist_entry`.
pub const MODLIST_ENTRY_LEN: usize = 32;
/// Bytes of `struct hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_LEN: usize = 24;
/// Memory map entries Linux takes (`init_pvh_bootparams` stops at the zero page's 128 E820
/// entries).
pub const MAX_MEMMAP_ENTRIES: usize = 128;

// The three structures do not overlap, and the memory map ends before the zero page.
const _: () =
    assert!(PVH_MEMMAP_ADDR + (MAX_MEMMAP_ENTRIES * MEMMAP_ENTRY_LEN) as u64 <= ZERO_PAGE_ADDR);
const _: () = assert!(PVH_START_INFO_ADDR + START_INFO_LEN as u64 <= PVH_MODLIST_ADDR);
const _: () = assert!(PVH_MODLIST_ADDR + MODLIST_ENTRY_LEN as u64 <= PVH_MEMMAP_ADDR);

/// What the start info tells the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartInfoInput<'a> {
    /// The NUL-terminated command line's address.
    pub cmdline_addr: u64,
    /// The initramfs's address and length, if any (module 0).
    pub initrd: Option<(u64, u64)>,
    /// The ACPI RSDP's address, if any.
    pub acpi_rsdp: Option<u64>,
    /// The memory map.
    pub memmap: &'a [E820Entry],
}

/// The memory map does not fit in the room the layout gives it.
#[derive(Debug, thiserror::Error)]
#[error("the PVH memory map has {entries} entries, at most {MAX_MEMMAP_ENTRIES} fit")]
pub struct MemmapTooLarge {
    /// Entries asked for.
    pub entries: usize,
}

/// The three structures as bytes, each with the guest address it goes to.
pub fn start_info_blobs(input: &StartInfoInput) -> Result<Vec<(u64, Vec<u8>)>, MemmapTooLarge> {
    if input.memmap.len() > MAX_MEMMAP_ENTRIES {
        return Err(MemmapTooLarge {
            entries: input.memmap.len(),
        });
    }
    let mut start_info = Vec::with_capacity(START_INFO_LEN);
    start_info.extend_from_slice(&START_INFO_MAGIC.to_le_bytes());
    start_info.extend_from_slice(&START_INFO_VERSION.to_le_bytes());
    start_info.extend_from_slice(&0u32.to_le_bytes()); // flags
    let modules = u32::from(input.initrd.is_some());
    start_info.extend_from_slice(&modules.to_le_bytes()); // nr_modules
    let modlist = if modules > 0 { PVH_MODLIST_ADDR } else { 0 };
    start_info.extend_from_slice(&modlist.to_le_bytes()); // modlist_paddr
    start_info.extend_from_slice(&input.cmdline_addr.to_le_bytes()); // cmdline_paddr
    start_info.extend_from_slice(&input.acpi_rsdp.unwrap_or(0).to_le_bytes()); // rsdp_paddr
    start_info.extend_from_slice(&PVH_MEMMAP_ADDR.to_le_bytes()); // memmap_paddr
    start_info.extend_from_slice(&(input.memmap.len() as u32).to_le_bytes()); // memmap_entries
    start_info.extend_from_slice(&0u32.to_le_bytes()); // reserved
    debug_assert_eq!(start_info.len(), START_INFO_LEN);

    let mut blobs = vec![(PVH_START_INFO_ADDR, start_info)];
    if let Some((addr, size)) = input.initrd {
        let mut module = Vec::with_capacity(MODLIST_ENTRY_LEN);
        for word in [addr, size, 0, 0] {
            // paddr, size, cmdline_paddr, reserved
            module.extend_from_slice(&word.to_le_bytes());
        }
        blobs.push((PVH_MODLIST_ADDR, module));
    }
    let mut memmap = Vec::with_capacity(input.memmap.len() * MEMMAP_ENTRY_LEN);
    for entry in input.memmap {
        memmap.extend_from_slice(&entry.addr.to_le_bytes());
        memmap.extend_from_slice(&entry.size.to_le_bytes());
        memmap.extend_from_slice(&entry.kind.to_le_bytes());
        memmap.extend_from_slice(&0u32.to_le_bytes());
    }
    blobs.push((PVH_MEMMAP_ADDR, memmap));
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }
    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn start_info_lays_out_as_xen_defines_it() {
        let memmap = [
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: 1,
            },
            E820Entry {
                addr: 0x10_0000,
                size: 0x700_0000,
                kind: 1,
            },
        ];
        let blobs = start_info_blobs(&StartInfoInput {
            cmdline_addr: 0x2_0000,
            initrd: Some((0x7f0_0000, 0x1234)),
            acpi_rsdp: Some(0xe_0000),
            memmap: &memmap,
        })
        .unwrap();
        let (at, info) = &blobs[0];
        assert_eq!(*at, PVH_START_INFO_ADDR);
        assert_eq!(info.len(), 56);
        assert_eq!(u32_at(info, 0), 0x336e_c578);
        assert_eq!(u32_at(info, 4), 1);
        assert_eq!(u32_at(info, 12), 1, "nr_modules");
        assert_eq!(u64_at(info, 16), PVH_MODLIST_ADDR);
        assert_eq!(u64_at(info, 24), 0x2_0000);
        assert_eq!(u64_at(info, 32), 0xe_0000);
        assert_eq!(u64_at(info, 40), PVH_MEMMAP_ADDR);
        assert_eq!(u32_at(info, 48), 2);
        let (at, module) = &blobs[1];
        assert_eq!(*at, PVH_MODLIST_ADDR);
        assert_eq!((u64_at(module, 0), u64_at(module, 8)), (0x7f0_0000, 0x1234));
        let (at, map) = &blobs[2];
        assert_eq!(*at, PVH_MEMMAP_ADDR);
        assert_eq!(map.len(), 48);
        assert_eq!(
            (u64_at(map, 24), u64_at(map, 32), u32_at(map, 40)),
            (0x10_0000, 0x700_0000, 1)
        );

        let without = start_info_blobs(&StartInfoInput {
            cmdline_addr: 0x2_0000,
            initrd: None,
            acpi_rsdp: None,
            memmap: &memmap,
        })
        .unwrap();
        assert_eq!(without.len(), 2, "no module list");
        assert_eq!(
            (u32_at(&without[0].1, 12), u64_at(&without[0].1, 16)),
            (0, 0)
        );
    }
}
