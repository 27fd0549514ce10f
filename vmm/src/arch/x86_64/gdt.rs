//! The boot GDT and the segment registers loaded from it.

use kvm_bindings::kvm_segment;

/// Flags of a 64-bit code segment: granularity 4 KiB, long mode, present, ring 0,
/// execute/read, accessed.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of a 32-bit code segment: granularity 4 KiB, 32-bit, present, ring 0,
/// execute/read, accessed.
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Flags of a data segment: granularity 4 KiB, 32-bit, present, ring 0, read/write, accessed.
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of a 64-bit TSS: present, ring 0, busy TSS.
pub const TSS_FLAGS: u16 = 0x808b;

/// GDT index of the code segment (selector 0x08).
pub const CODE_INDEX: u8 = 1;
/// GDT index of the data segment (selector 0x10).
pub const DATA_INDEX: u8 = 2;
/// GDT index of the TSS (selector 0x18).
pub const TSS_INDEX: u8 = 3;

/// Encodes one segment descriptor.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT: null, code, data, TSS; flat, as the 64-bit boot protocol asks
/// (`__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18 are not required for the 64-bit entry).
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(CODE64_FLAGS, 0, 0xfffff),
    gdt_entry(DATA_FLAGS, 0, 0xfffff),
    gdt_entry(TSS_FLAGS, 0, 0xfffff),
];

/// The GDT of the PVH entry, which starts in 32-bit protected mode: the same layout with a
/// 32-bit code segment.
pub const PVH_GDT: [u64; 4] = [
    0,
    gdt_entry(CODE32_FLAGS, 0, 0xfffff),
    gdt_entry(DATA_FLAGS, 0, 0xfffff),
    gdt_entry(TSS_FLAGS, 0, 0xfffff),
];

/// The segment register KVM loads for descriptor `entry` at GDT index `index`.
pub fn segment_from_entry(entry: u64, index: u8) -> kvm_segment {
    let granular = (entry >> 55) & 1 == 1;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_encode_as_the_sdm_lays_them_out() {
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
        assert_eq!(gdt_entry(0x9b, 0x1234_5678, 0xabcde), 0x120a_9b34_5678_bcde);
    }

    #[test]
    fn segments_decode_from_descriptors() {
        let code = segment_from_entry(BOOT_GDT[1], CODE_INDEX);
        assert_eq!(code.selector, 0x08);
        assert_eq!((code.base, code.limit), (0, 0xffff_ffff));
        assert_eq!((code.type_, code.s, code.present, code.dpl), (0xb, 1, 1, 0));
        assert_eq!((code.l, code.db, code.g, code.unusable), (1, 0, 1, 0));

        let data = segment_from_entry(BOOT_GDT[2], DATA_INDEX);
        assert_eq!(data.selector, 0x10);
        assert_eq!((data.type_, data.l, data.db), (0x3, 0, 1));

        let code32 = segment_from_entry(PVH_GDT[1], CODE_INDEX);
        assert_eq!(PVH_GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!((code32.l, code32.db, code32.type_), (0, 1, 0xb));

        let tss = segment_from_entry(BOOT_GDT[3], TSS_INDEX);
        assert_eq!((tss.selector, tss.type_, tss.s), (0x18, 0xb, 0));

        let odd = segment_from_entry(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 5);
        assert_eq!((odd.base, odd.limit, odd.g), (0x1234_5678, 0xabcde, 0));
        assert_eq!(segment_from_entry(0, 0).unusable, 1);
    }
}
